"""The real distilabel Pipeline around scripted FakeLLMs: garbage and failures are counted, never fatal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk
from fakes import FakeLLM

from crescent_distilabel import build_pipeline, load_recipe, run_recipe
from crescent_distilabel.backends import BackendError
from crescent_distilabel.pipeline import RUN_FILE, OutputExistsError

APPLES = "Tom has 3 apples and buys 5 more. How many apples does Tom have now?"
APPLES_AGAIN = "Tom has 3 apples and buys 6 more. How many apples does Tom have now?"
TRAIN = "A train travels 60 km per hour for 3 hours. How far does it travel?"
AREA = "A rectangle is 8 cm long and 5 cm wide. What is its area?"

BAIT_REPLIES = [
    f"Sure! Here's a problem:\n\n{APPLES}",
    "",  # empty
    "I'm a creative model and I love unique and diverse problems!",  # no digits
    TRAIN,
    f"Problem: {APPLES_AGAIN}",  # near-duplicate of an accepted question -> rewrite
    AREA,
]
ANSWERS = {
    "apples": ["3 + 5 = 8\n#### Answer: 8", "#### Answer: 8", "#### Answer: 9"],
    "train": ["60 * 3 = 180\n#### Answer: 180", "#### 180 km", "So 180."],
    "rectangle": ["no idea", "", "none"],
}


def recipe(tmp_path: Path, **sections) -> object:
    data = {"output_dir": str(tmp_path / "run"), "bait": {"num_calls": 2, "samples_per_call": 3}}
    data.update(sections)
    return load_recipe(data)


def rows(tmp_path: Path, config: str) -> list[dict]:
    return load_from_disk(str(tmp_path / "run" / config / "train")).to_list()


def test_garbage_is_counted_and_dropped_and_the_run_goes_on(tmp_path: Path) -> None:
    question_llm = FakeLLM(rules={"creativity": BAIT_REPLIES, "very similar": ["Sorry, no."]})
    run = recipe(tmp_path)
    result = run_recipe(run, question_llm=question_llm, answer_llm=FakeLLM(rules=ANSWERS))
    s = result.summary
    assert (s.raw_samples, s.cleaned, s.kept) == (6, 4, 2)
    assert s.dropped == {"empty": 1, "no_digits": 1, "rewrite_too_short": 1, "no_answer": 1}
    kept = rows(tmp_path, "default")
    assert {r["question"]: r["final_answer"] for r in kept} == {APPLES: "8", TRAIN: "180"}
    dropped = {r["raw_question"]: r["drop_reason"] for r in rows(tmp_path, "dropped")}
    assert dropped[f"Problem: {APPLES_AGAIN}"] == "rewrite_too_short"
    record = json.loads((tmp_path / "run" / RUN_FILE).read_text())
    assert record["summary"] == s.to_dict() and record["fingerprint"] == run.fingerprint()
    card = (tmp_path / "run" / "README.md").read_text()
    assert "Use your creativity" in card and "| kept after consensus | 2 |" in card and "2502.13441" in card
    # throughput: every LLM call of the run, per stage, adds up to what the rows say
    bait, rewrite, answer = (s.stages[stage] for stage in ("bait", "rewrite", "answer"))
    assert (bait.calls, rewrite.calls, answer.calls) == (2, s.rewrites, s.accepted) == (2, 1, 3)
    assert (bait.output_tokens, rewrite.output_tokens, answer.output_tokens) == (
        s.question_tokens, s.rewrite_tokens, s.answer_tokens
    )  # fmt: skip
    assert s.generated_tokens == s.tokens > 0 and s.llm_calls == 6 and s.calls_per_kept_pair == 3.0
    assert all(0 < st.active_s <= s.wall_time_s and st.reused == 0 for st in (bait, rewrite, answer))
    assert bait.tokens_per_s == pytest.approx(bait.output_tokens / bait.active_s)
    assert s.gpus == 0 and s.gpu_hours == 0.0
    assert record["summary"]["stages"]["answer"]["calls"] == 3 and record["summary"]["calls_per_kept_pair"] == 3.0
    assert f"| answer | 3 | {s.answer_tokens} |" in card and "LLM calls per kept pair:\n3.00" in card
    assert "GPU-hours: 0 (CPU run)" in card


def test_a_failing_backend_stops_cleanly_and_the_re_run_continues(tmp_path: Path) -> None:
    run = recipe(tmp_path, bait={"num_calls": 1, "samples_per_call": 3}, consensus={"batch_size": 1})
    question_llm = FakeLLM(rules={"creativity": [APPLES, TRAIN, AREA]})
    first = run_recipe(run, question_llm=question_llm, answer_llm=FakeLLM(rules=ANSWERS, fail_on="rectangle"))
    assert not first.complete and "re-run the same command" in first.message and "rectangle" in first.message
    assert first.summary.dropped == {"generation_failed": 1} and first.summary.kept == 2

    answer_llm = FakeLLM(rules={**ANSWERS, "rectangle": ["8 * 5 = 40\n#### Answer: 40"]})
    second = run_recipe(run, question_llm=FakeLLM(rules={"creativity": ["never asked"]}), answer_llm=answer_llm)
    assert second.complete and second.resumed and second.summary.kept == 3
    assert second.new_generations == 1 and second.reused_generations == first.new_generations
    stages = second.summary.stages  # only what the re-run generated counts as its work
    assert (stages["bait"].calls, stages["bait"].reused, stages["answer"].calls, stages["answer"].reused) == (
        0,
        1,
        1,
        2,
    )
    assert (
        second.summary.generated_tokens
        == stages["answer"].output_tokens
        == len("8 * 5 = 40 #### Answer: 40".split()) * 3
    )
    assert {r["question"] for r in rows(tmp_path, "default")} == {APPLES, TRAIN, AREA}


def test_finished_run_is_rewritten_identically_without_llm_calls(tmp_path: Path) -> None:
    run = recipe(tmp_path)
    question_llm = FakeLLM(rules={"creativity": BAIT_REPLIES, "very similar": ["Sorry, no."]})
    first = run_recipe(run, question_llm=question_llm, answer_llm=FakeLLM(rules=ANSWERS))
    before = {c: rows(tmp_path, c) for c in ("default", "dropped")}
    failing = FakeLLM(fail_on=" ")  # every prompt has a space: any call would fail
    again = run_recipe(run, question_llm=failing, answer_llm=failing.model_copy())
    assert again.complete and again.new_generations == 0 and again.reused_generations == first.new_generations
    assert again.summary.llm_calls == 0 and again.summary.calls_per_kept_pair == 0.0
    assert again.summary.generated_tokens == 0 and again.summary.tokens == first.summary.tokens
    assert sum(st.reused for st in again.summary.stages.values()) == first.new_generations
    assert "Generations reused from an earlier run (not counted): 6." in (tmp_path / "run" / "README.md").read_text()
    assert {c: rows(tmp_path, c) for c in ("default", "dropped")} == before


def test_preference_pairs_come_from_the_votes_losers_and_follow_their_policy_without_new_calls(
    tmp_path: Path,
) -> None:
    answers = {
        "apples": ["3 + 5 = 8\n#### Answer: 8", "#### Answer: 9", "5 + 3 = 8\n#### Answer: 8"],  # 2-1: a pair
        "train": ["60 * 3 = 180\n#### Answer: 180", "#### 180 km", "So 180."],  # unanimous: none
        # the loser was cut at max tokens: its "answer" 5 is a fragment, so it is never rejected by default
        "rectangle": ["8 * 5 = 40\n#### Answer: 40", "#### Answer: 40", "The area is 8 times 5 [cut]"],
    }
    question_llm = FakeLLM(rules={"creativity": [APPLES, TRAIN, AREA]})
    sections = {"bait": {"num_calls": 1, "samples_per_call": 3}}
    result = run_recipe(
        recipe(tmp_path, **sections),
        question_llm=question_llm,
        answer_llm=FakeLLM(rules=answers, cut_marker="[cut]"),
    )
    assert result.complete and result.summary.kept == 3
    kept = {row["question"]: row for row in rows(tmp_path, "default")}
    assert kept[AREA]["chain_truncated"] == [False, False, True]
    (pair,) = rows(tmp_path, "preference")
    assert pair["prompt"] == [{"role": "user", "content": APPLES}]
    assert pair["chosen"] == [{"role": "assistant", "content": answers["apples"][0]}]
    assert pair["rejected"] == [{"role": "assistant", "content": "#### Answer: 9"}]
    assert (pair["chosen_answer"], pair["rejected_answer"], pair["margin"], pair["k"]) == ("8", "9", 1, 3)
    card = (tmp_path / "run" / "README.md").read_text()
    assert "config_name: preference" in card and "DPO pairs" in card

    failing = FakeLLM(fail_on=" ")  # any call would fail: the pairs are rebuilt from the stored votes
    run_recipe(
        recipe(tmp_path, **sections, preference={"reject_truncated": True}),
        question_llm=failing,
        answer_llm=failing.model_copy(),
    )
    assert [p["rejected_answer"] for p in rows(tmp_path, "preference")] == ["9", "5"]
    run_recipe(
        recipe(tmp_path, **sections, preference={"enabled": False}),
        question_llm=failing,
        answer_llm=failing.model_copy(),
    )
    assert not (tmp_path / "run" / "preference").exists()
    assert "preference" not in (tmp_path / "run" / "README.md").read_text().split("---")[1]


def test_changed_settings_are_refused_by_name(tmp_path: Path) -> None:
    from crescent_distilabel.pipeline import RecipeChangedError

    llm = FakeLLM(rules={"creativity": [TRAIN]}, default="#### 180")
    run_recipe(recipe(tmp_path, bait={"num_calls": 1, "samples_per_call": 1}), question_llm=llm, answer_llm=llm)
    changed = recipe(tmp_path, bait={"num_calls": 1, "samples_per_call": 1}, consensus={"k": 5})
    with pytest.raises(RecipeChangedError, match=r"consensus\.k: 3 -> 5") as err:
        run_recipe(changed, question_llm=llm, answer_llm=llm)
    assert "--overwrite" in str(err.value)
    same_but_elsewhere = recipe(
        tmp_path, bait={"num_calls": 1, "samples_per_call": 1}, consensus={"batch_size": 3}, name="other"
    )
    assert run_recipe(same_but_elsewhere, question_llm=llm, answer_llm=llm).resumed  # no result changes
    assert run_recipe(changed, question_llm=llm, answer_llm=llm, overwrite=True).summary.raw_samples == 1


def test_rebuild_makes_a_changed_run_again_from_its_stored_outputs(tmp_path: Path) -> None:
    """--rebuild: a run made with other settings is made again with these, without one LLM call, and equals a
    fresh run with them; the user's own files in the directory stay."""
    import sqlite3

    from crescent_distilabel.pipeline import RecipeChangedError, progress_path

    def llms() -> tuple[FakeLLM, FakeLLM]:
        return FakeLLM(rules={"creativity": BAIT_REPLIES, "very similar": ["Sorry, no."]}), FakeLLM(rules=ANSWERS)

    question_llm, answer_llm = llms()
    first = run_recipe(recipe(tmp_path), question_llm=question_llm, answer_llm=answer_llm)
    assert {r["question"] for r in rows(tmp_path, "default")} == {APPLES, TRAIN}  # 2 of 3 and 3 of 3 agree
    (tmp_path / "run" / "notes.txt").write_text("mine")
    unanimous = recipe(tmp_path, consensus={"min_agreement": 1.0})
    failing = FakeLLM(fail_on=" ")  # any call would fail
    with pytest.raises(RecipeChangedError, match="--rebuild"):
        run_recipe(unanimous, question_llm=failing, answer_llm=failing.model_copy())
    again = run_recipe(unanimous, rebuild=True, question_llm=failing, answer_llm=failing.model_copy())
    assert again.complete and not again.resumed and again.new_generations == 0
    assert again.reused_generations == first.new_generations
    rebuilt = {c: rows(tmp_path, c) for c in ("default", "dropped")}
    assert [r["question"] for r in rebuilt["default"]] == [TRAIN]
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"
    con = sqlite3.connect(progress_path(tmp_path / "run"))
    outcomes = dict(con.execute("SELECT item, outcome FROM decisions WHERE stage = 'consensus'").fetchall())
    con.close()
    assert outcomes[APPLES] == "low_agreement" and outcomes[TRAIN] == "kept"  # the old decisions are gone

    fresh_dir = tmp_path / "fresh"
    fresh_dir.mkdir()
    question_llm, answer_llm = llms()
    run_recipe(unanimous, question_llm=question_llm, answer_llm=answer_llm)  # again: resumes the rebuilt run
    run_recipe(
        load_recipe({**unanimous.model_dump(), "output_dir": str(fresh_dir / "run")}),
        question_llm=question_llm,
        answer_llm=answer_llm,
    )
    assert {c: rows(fresh_dir, c) for c in ("default", "dropped")} == rebuilt


def test_ablations_change_the_pipeline(tmp_path: Path) -> None:
    no_div = build_pipeline(
        recipe(tmp_path, diversify={"enabled": False}), question_llm=FakeLLM(), answer_llm=FakeLLM()
    )
    assert "diversify" not in no_div.dag and "consensus" in no_div.dag
    no_con = build_pipeline(
        recipe(tmp_path, consensus={"enabled": False}), question_llm=FakeLLM(), answer_llm=FakeLLM()
    )
    step = no_con.dag.get_step("consensus")["step"]
    assert step.num_answers == 1 and step.min_agreement == 0.0


def test_a_variant_embedding_model_and_consensus_step_can_be_passed_in(tmp_path: Path) -> None:
    from distilabel.constants import STEP_ATTR_NAME

    from crescent_distilabel.embeddings import SentenceEmbeddings
    from crescent_distilabel.steps import Consensus

    class AlwaysFirst(Consensus):
        def vote(self, chains):
            return super().vote(chains[:1])

    embeddings = SentenceEmbeddings(batch_size=1)
    pipeline = build_pipeline(
        recipe(tmp_path),
        question_llm=FakeLLM(),
        answer_llm=FakeLLM(),
        embeddings=embeddings,
        consensus_step=AlwaysFirst,
    )
    assert pipeline.dag.get_step("diversify")[STEP_ATTR_NAME].embeddings is embeddings
    consensus = pipeline.dag.get_step("consensus")[STEP_ATTR_NAME]
    assert type(consensus) is AlwaysFirst and consensus.vote(["#### 1", "#### 2", "#### 2"])[0].answer == "1"
    default = build_pipeline(recipe(tmp_path), question_llm=FakeLLM(), answer_llm=FakeLLM())
    assert default.dag.get_step("consensus")[STEP_ATTR_NAME].vote(["#### 1", "#### 2", "#### 2"])[0].answer == "2"


def test_no_diversification_keeps_duplicates(tmp_path: Path) -> None:
    question_llm = FakeLLM(rules={"creativity": [APPLES, APPLES_AGAIN]})
    answer_llm = FakeLLM(rules={"apples": ["#### Answer: 8"]})
    result = run_recipe(
        recipe(tmp_path, bait={"num_calls": 1, "samples_per_call": 2}, diversify={"enabled": False}),
        question_llm=question_llm,
        answer_llm=answer_llm,
    )
    assert result.summary.kept == 2


def test_unreachable_endpoint_fails_fast_with_its_url(tmp_path: Path) -> None:
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    bad = recipe(tmp_path, question_model={"backend": "openai", "model": "m", "base_url": url})
    with pytest.raises(BackendError, match=url.replace(".", r"\.")):
        build_pipeline(bad)
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_an_existing_run_is_not_overwritten_by_accident(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    llm = FakeLLM(rules={"creativity": [TRAIN]})
    with pytest.raises(OutputExistsError, match="no CRESCENT run"):
        run_recipe(recipe(tmp_path, bait={"num_calls": 1, "samples_per_call": 1}), question_llm=llm)
    assert (out / "keep.txt").read_text() == "precious"


NOTEBOOK = """
import sys

sys.path.insert(0, {tests!r})
import torch
from fakes import FakeLLM

from crescent_distilabel import load_recipe, pipeline

if __name__ == "__main__":
    torch.set_num_threads(2)
    x = torch.ones(2_000_000).exp().sum() + (torch.randn(512, 512) @ torch.randn(512, 512)).sum()  # OpenMP runs here
    recipe = load_recipe({{"output_dir": sys.argv[1], "question_model": {{"model": "smollm2"}},
                          "bait": {{"num_calls": 2, "samples_per_call": 3}}}})
    result = pipeline.run_recipe(
        recipe, question_llm=FakeLLM(rules={{"creativity": {bait!r}}}), answer_llm=FakeLLM(rules={answers!r}),
        show_progress=False,
    )
    print("kept", result.summary.kept, result.complete)
"""


def test_a_process_that_ran_torch_can_still_run_a_recipe(tmp_path: Path) -> None:
    """A notebook that trained or evaluated first: distilabel forks its steps, and a step forked after this process
    ran a GNU OpenMP parallel region hangs at its own first one (the embedder). The run goes on in a fresh process."""
    script = tmp_path / "notebook.py"
    script.write_text(NOTEBOOK.format(tests=str(Path(__file__).parent), bait=BAIT_REPLIES, answers=ANSWERS))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "kept 2 True" in done.stdout
    assert len(rows(tmp_path, "default")) == 2


def test_a_server_of_another_process_is_watched_by_pid(tmp_path: Path) -> None:
    """A run in a fresh process watches the servers its caller started: pickled, they are read from /proc."""
    import pickle
    import signal
    import time

    from crescent_distilabel.backends import LocalServer

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    server = LocalServer("fake", ["true"], 1, tmp_path / "log", ready_path="/", startup_timeout=1)
    server._proc = proc  # as __enter__ leaves it
    watched = pickle.loads(pickle.dumps(server))
    try:
        assert watched.exit_code() is None and watched.base_url == server.base_url
        proc.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while watched.exit_code() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert watched.exit_code() == -signal.SIGKILL  # a zombie until its parent reaps it
    finally:
        proc.kill()
        proc.wait()
    assert watched.exit_code() == -1  # reaped: gone, and its code with it
