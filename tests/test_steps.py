"""The three steps on a handful of rows with a scripted FakeLLM (tests/fakes.py) and the real MiniLM model."""

from __future__ import annotations

import copy

import pytest
from fakes import FakeLLM

from crescent_distilabel.prompts import BAIT_PROMPT
from crescent_distilabel.steps import BaitPrompting, Consensus, Diversify

APPLES = "Tom has 3 apples and buys 5 more. How many apples does Tom have now?"
APPLES_AGAIN = "Tom has 3 apples and buys 6 more. How many apples does Tom have now?"
TRAIN = "A train travels 60 km per hour for 3 hours. How far does it travel?"
AREA = "A rectangle is 8 cm long and 5 cm wide. What is its area?"
PENCILS = "Sara has 12 pencils and gives 4 to her friend. How many pencils are left?"


def loaded(step):
    step.load()
    return step


def test_bait_prompting_cleans_counts_and_indexes_every_sample() -> None:
    llm = FakeLLM(
        rules={
            "creativity": [
                f"Sure! Here's one:\n\nProblem: {APPLES}",
                "A unique and diverse word problem about apples.",
                TRAIN,
                "",
            ]
        }
    )
    bait = loaded(BaitPrompting(llm=llm, num_calls=3, samples_per_call=2, batch_size=4))
    batches = list(bait.process())
    assert [last for _, last in batches] == [False, True]
    rows = [row for batch, _ in batches for row in batch]
    assert [(r["bait_call"], r["bait_sample"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert [r["question"] for r in rows] == [APPLES, None, TRAIN, None, APPLES, None]
    assert [r["drop_reason"] for r in rows] == [None, "no_digits", None, "empty", None, "no_digits"]
    assert rows[0]["raw_question"].startswith("Sure!")
    assert llm.prompts == [BAIT_PROMPT] * 3
    assert rows[2]["question_tokens"] == len(TRAIN.split())


def test_bait_prompting_resumes_from_an_offset_in_whole_calls() -> None:
    bait = loaded(BaitPrompting(llm=FakeLLM(default=TRAIN), num_calls=4, samples_per_call=3, batch_size=3))
    rows = [row for batch, _ in bait.process(offset=6) for row in batch]
    assert [r["bait_call"] for r in rows] == [2, 2, 2, 3, 3, 3]


def test_custom_bait_prompt_and_domain() -> None:
    bait = loaded(
        BaitPrompting(
            llm=FakeLLM(default="Which gas do plants absorb from the air during photosynthesis?"),
            bait_prompt="Write one unique biology quiz question.",
            num_calls=1,
            samples_per_call=1,
            require_digits=False,
        )
    )
    rows = next(bait.process())[0]
    assert rows[0]["question"].startswith("Which gas") and bait.llm.prompts == [
        "Write one unique biology quiz question."
    ]


def test_diversify_rewrites_a_near_duplicate_and_rechecks_the_rewrite(embeddings) -> None:
    llm = FakeLLM(rules={"very similar": [APPLES_AGAIN, AREA]})  # first rewrite is still a duplicate
    step = loaded(Diversify(llm=llm, embeddings=embeddings, max_rewrites=2))
    out = next(step.process([{"question": APPLES}, {"question": TRAIN}]))
    assert [r["question"] for r in out] == [APPLES, TRAIN] and all(r["drop_reason"] is None for r in out)
    out = next(step.process([{"question": APPLES_AGAIN}, {"question": None, "drop_reason": "no_digits"}]))
    row, passed = out
    assert row["question"] == AREA and row["original_question"] == APPLES_AGAIN
    assert row["rewrites"] == 2 and row["drop_reason"] is None
    assert row["nearest_question"] is not None and row["nearest_similarity"] < 0.875
    assert passed["drop_reason"] == "no_digits" and passed["question"] is None
    assert len(llm.prompts) == 2 and APPLES_AGAIN in llm.prompts[0] and APPLES in llm.prompts[0]
    assert row["rewrite_tokens"] == len(APPLES_AGAIN.split()) + len(AREA.split())


def test_diversify_with_rewrite_lag_hands_on_accepted_rows_and_checks_rewrites_later(embeddings) -> None:
    llm = FakeLLM(rules={"very similar": [APPLES_AGAIN, AREA]})
    step = loaded(Diversify(llm=llm, embeddings=embeddings, max_rewrites=2, rewrite_lag=1, expected_rows=4))
    assert [r["question"] for r in next(step.process([{"question": APPLES}, {"question": TRAIN}]))] == [APPLES, TRAIN]
    assert next(step.process([{"question": APPLES_AGAIN}])) == []  # its rewrite is out: checked at the next batch
    assert len(llm.prompts) == 1
    out = next(step.process([{"question": PENCILS}]))  # the last batch: every rewrite is checked before it returns
    assert [r["question"] for r in out] == [PENCILS, AREA]
    assert out[1]["original_question"] == APPLES_AGAIN and out[1]["rewrites"] == 2 and len(llm.prompts) == 2
    with pytest.raises(ValueError, match="expected_rows"):
        Diversify(llm=llm, embeddings=embeddings, rewrite_lag=1)


def test_diversify_drops_after_max_rewrites(embeddings) -> None:
    llm = FakeLLM(rules={"very similar": [APPLES_AGAIN]})
    step = loaded(Diversify(llm=llm, embeddings=embeddings, max_rewrites=1))
    next(step.process([{"question": APPLES}]))
    row = next(step.process([{"question": APPLES_AGAIN}]))[0]
    assert row["drop_reason"] == "duplicate" and row["question"] is None and row["rewrites"] == 1
    assert row["nearest_question"] == APPLES and row["nearest_similarity"] > 0.875


def test_diversify_paper_mode_accepts_the_first_rewrite_unchecked(embeddings) -> None:
    llm = FakeLLM(rules={"very similar": [APPLES_AGAIN]})
    step = loaded(Diversify(llm=llm, embeddings=embeddings, max_rewrites=1, recheck_rewrites=False))
    next(step.process([{"question": APPLES}]))
    row = next(step.process([{"question": APPLES_AGAIN}]))[0]
    assert row["drop_reason"] is None and row["question"] == APPLES_AGAIN and row["rewrites"] == 1


def test_diversify_within_batch_keeps_the_later_question_and_counts_bad_rewrites(embeddings) -> None:
    llm = FakeLLM(rules={"very similar": ["Sorry, I cannot think of anything different."]})
    step = loaded(Diversify(llm=llm, embeddings=embeddings))
    out = next(step.process([{"question": APPLES}, {"question": PENCILS}, {"question": APPLES_AGAIN}]))
    assert [r["drop_reason"] for r in out] == ["batch_duplicate", None, None]
    assert llm.prompts == []
    row = next(step.process([{"question": APPLES}]))[0]
    assert row["drop_reason"] == "rewrite_no_digits" and row["rewrites"] == 1


def test_consensus_votes_and_builds_the_sft_view() -> None:
    llm = FakeLLM(
        rules={
            "apples": ["3 + 5 = 8.\n#### Answer: 8", "I get 9.\n#### Answer: 9", "Adding gives 8.0\n#### 8.0"],
            "train": ["60 * 3 = 180", "It is 120 km", "#### Answer: 200"],
            "area": ["", "no idea", "blah"],
        }
    )
    step = loaded(Consensus(llm=llm, num_answers=3))
    rows = next(
        step.process(
            [
                {"question": APPLES},
                {"question": TRAIN},
                {"question": AREA},
                {"question": None, "drop_reason": "duplicate"},
            ]
        )
    )
    apples, train, area, passed = rows
    assert apples["final_answer"] == "8" and apples["drop_reason"] is None
    assert apples["answer"] == "3 + 5 = 8.\n#### Answer: 8" and apples["agreement"] == pytest.approx(2 / 3)
    assert apples["vote_answers"] == ["8", "9"] and apples["vote_counts"] == [2, 1]
    assert apples["extracted_answers"] == ["8", "9", "8.0"] and len(apples["chains"]) == 3
    assert apples["messages"] == [
        {"role": "user", "content": APPLES},
        {"role": "assistant", "content": "3 + 5 = 8.\n#### Answer: 8"},
    ]
    assert train["drop_reason"] == "tie" and train["messages"] is None and train["final_answer"] is None
    assert area["drop_reason"] == "no_answer" and area["vote_answers"] == []
    assert passed["drop_reason"] == "duplicate" and passed["chains"] == []
    assert len(llm.prompts) == 3 and all("#### Answer:" in p for p in llm.prompts)


def test_consensus_keep_everything_setting() -> None:
    llm = FakeLLM(rules={"train": ["60 * 3 = 180", "It is 120 km", "#### Answer: 200"]})
    step = loaded(Consensus(llm=llm, num_answers=3, min_agreement=0.0, tie_policy="first"))
    row = next(step.process([{"question": TRAIN}]))[0]
    assert row["drop_reason"] is None and row["final_answer"] == "180"


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (Consensus, {"answer_template": "Solve it step by step."}, "question"),
        (Consensus, {"min_agreement": 1.5}, "min_agreement"),
        (Diversify, {"rewrite_template": "Rewrite {question}."}, "neighbour"),
        (Diversify, {"history_threshold": 1.2}, "history_threshold"),
    ],
)
def test_bad_settings_fail_at_construction(cls, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        cls(llm=FakeLLM(), **kwargs)


def test_steps_serialise_and_round_trip() -> None:
    from crescent_distilabel.embeddings import SentenceEmbeddings

    steps = [
        BaitPrompting(name="bait", llm=FakeLLM(default="x"), num_calls=7, samples_per_call=3, bait_prompt="Ask {x}"),
        Diversify(name="div", llm=FakeLLM(), embeddings=SentenceEmbeddings(), max_rewrites=1, history_threshold=0.9),
        Consensus(name="con", llm=FakeLLM(rules={"a": ["b"]}), num_answers=5, min_agreement=0.6, tie_policy="first"),
    ]
    expected = [
        {"num_calls": 7, "samples_per_call": 3, "bait_prompt": "Ask {x}"},
        {"max_rewrites": 1, "history_threshold": 0.9, "recheck_rewrites": True, "within_batch_threshold": 0.85},
        {"num_answers": 5, "min_agreement": 0.6, "tie_policy": "first", "no_answer_policy": "abstain"},
    ]
    for step, fields in zip(steps, expected):
        dump = step.dump()
        assert {key: dump[key] for key in fields} == fields
        assert dump["type_info"]["module"] == type(step).__module__
        assert dump["llm"]["type_info"]["name"] == "FakeLLM"
        again = type(step).from_dict(copy.deepcopy(dump))  # from_dict consumes its argument
        assert again.dump() == dump
    assert steps[1].dump()["embeddings"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert steps[2].dump()["llm"]["rules"] == {"a": ["b"]}
