"""Preference pairs from the vote's losers: which chains are chosen and rejected, margins, and the policy."""

from __future__ import annotations

import pytest

from crescent_distilabel.preference import NO_ANSWER, PairPolicy, preference_pairs, question_pairs

Q = "A shop sells pens at $3 each. Tom buys 4 pens and pays with a $20 bill. How much change does he get?"
RIGHT = "4 pens cost 4 * 3 = 12 dollars. 20 - 12 = 8.\n#### Answer: 8"
RIGHT_BOXED = "Cost: $12. Change: 20 - 12 = \\boxed{8}"
WRONG = "4 + 3 = 7 dollars. 20 - 7 = 13.\n#### Answer: 13"
WRONG_OTHER = "Tom pays 20 * 4 = 80.\n#### Answer: 80"
RAMBLE = "Let us think about what change means in a shop."
CUT = "First, the pens cost 4 * 3 = 12. Then the change is 20 -"


def pairs(chains, truncated=None, final="8", policy=None):
    from crescent_distilabel.answers import extract_answer

    extracted = [extract_answer(c) for c in chains]
    return question_pairs(Q, chains, extracted, truncated or [False] * len(chains), final, policy or PairPolicy())


def test_a_two_to_one_vote_gives_one_pair_in_trl_conversational_form() -> None:
    (pair,) = pairs([WRONG, RIGHT, RIGHT_BOXED])
    assert pair["prompt"] == [{"role": "user", "content": Q}]
    assert pair["chosen"] == [{"role": "assistant", "content": RIGHT}]  # the first winning chain
    assert pair["rejected"] == [{"role": "assistant", "content": WRONG}]
    assert (pair["chosen_answer"], pair["rejected_answer"], pair["margin"], pair["k"]) == ("8", "13", 1, 3)


def test_a_unanimous_vote_gives_no_pair() -> None:
    assert pairs([RIGHT, RIGHT_BOXED, RIGHT]) == []


def test_the_least_voted_answer_is_rejected_first_with_its_margin() -> None:
    chains = [RIGHT, WRONG, WRONG_OTHER, RIGHT, RIGHT, WRONG]  # 8: 3 votes, 13: 2, 80: 1
    first, second = pairs(chains, policy=PairPolicy(pairs_per_question=2))
    assert (first["rejected_answer"], first["margin"]) == ("80", 2)
    assert (second["rejected_answer"], second["margin"]) == ("13", 1)
    assert first["chosen"][0]["content"] == RIGHT and second["chosen"][0]["content"] == RIGHT  # chains 0 and 3
    assert len(pairs(chains, policy=PairPolicy(pairs_per_question=5))) == 3  # every loser once
    (wide,) = pairs(chains, policy=PairPolicy(pairs_per_question=5, min_margin=2))
    assert wide["rejected_answer"] == "80"


def test_a_chain_without_an_answer_is_rejected_unless_the_policy_says_no() -> None:
    (pair,) = pairs([RIGHT, RAMBLE, RIGHT_BOXED])
    assert pair["rejected_answer"] == NO_ANSWER and pair["rejected"][0]["content"] == RAMBLE
    assert pairs([RIGHT, RAMBLE, RIGHT_BOXED], policy=PairPolicy(reject_no_answer=False)) == []


def test_a_chain_cut_at_max_tokens_is_never_rejected_or_chosen_by_default() -> None:
    chains = [RIGHT, CUT, RIGHT_BOXED]  # the cut chain "votes" 20, a fragment
    assert pairs(chains, truncated=[False, True, False]) == []
    (pair,) = pairs(chains, truncated=[False, True, False], policy=PairPolicy(reject_truncated=True))
    assert pair["rejected"][0]["content"] == CUT
    # a cut winner is not chosen: the uncut one is
    (pair,) = pairs([RIGHT, WRONG, RIGHT_BOXED], truncated=[True, False, False])
    assert pair["chosen"][0]["content"] == RIGHT_BOXED
    assert pairs([RIGHT, WRONG, RIGHT_BOXED], truncated=[True, False, True]) == []


def run_row(chains: list[str], **extra: object) -> dict:
    """A kept row as the run writes it, answers read from its chains."""
    from crescent_distilabel.answers import extract_answer

    return {
        "question": Q,
        "chains": chains,
        "extracted_answers": [extract_answer(c) for c in chains],
        "chain_truncated": [False] * len(chains),
        "final_answer": "8",
    } | extra


def test_run_rows_give_pairs_and_rows_without_truncation_flags_give_none() -> None:
    row = run_row([WRONG, RIGHT, RIGHT_BOXED], agreement=2 / 3, answer_model="m")
    (pair,) = preference_pairs([row, {**row, "chain_truncated": None}, {**row, "final_answer": None}])
    assert pair["answer_model"] == "m" and pair["agreement"] == pytest.approx(2 / 3)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="truncation flags"):
        question_pairs(Q, [RIGHT, WRONG], ["8", "13"], [False], "8")


def test_a_reviewers_correction_outranks_the_vote() -> None:
    """Reviewed rows: where a reviewer corrected the answer to the minority's, the minority chain is chosen over
    the former winners (margin -1, below any min_margin); an unreviewed row keeps the margin rule."""
    row = run_row([WRONG, WRONG, RIGHT], review_status="corrected_answer")  # the vote said 13; a reviewer: 8
    (pair,) = preference_pairs([row])
    assert pair["chosen"][0]["content"] == RIGHT and pair["rejected"][0]["content"] == WRONG
    assert (pair["chosen_answer"], pair["rejected_answer"], pair["margin"]) == ("8", "13", -1)
    assert preference_pairs([{**row, "review_status": "unreviewed"}]) == []
