"""Majority voting: thresholds, ties and unanswered samples each follow their policy."""

from fractions import Fraction

import pytest

from crescent_distilabel.voting import majority_vote, required_votes, vote_on_chains

F = Fraction


def test_strict_majority_keeps_two_of_three() -> None:
    vote = majority_vote([F(5), F(7), F(5)])
    assert vote.kept and vote.answer == "5" and vote.winner == 0
    assert vote.counts == {"5": 2, "7": 1}
    assert vote.agreement == pytest.approx(2 / 3)


def test_three_different_answers_are_not_a_consensus() -> None:
    vote = majority_vote([F(1), F(2), F(3)])
    assert not vote.kept and vote.drop_reason == "tie"
    vote = majority_vote([F(1), F(2), F(3)], tie_policy="first")
    assert not vote.kept and vote.drop_reason == "low_agreement"
    vote = majority_vote([F(1), F(2), F(3)], tie_policy="first", min_agreement=0.0)
    assert vote.kept and vote.answer == "1" and vote.winner == 0


def test_winner_is_the_first_chain_agreeing_with_the_majority() -> None:
    vote = majority_vote([F(1), F(2), F(2), F(1), F(2)])
    assert vote.kept and vote.answer == "2" and vote.winner == 1


def test_no_answer_abstains_but_counts_in_k() -> None:
    vote = majority_vote([None, F(4), None])
    assert not vote.kept and vote.drop_reason == "low_agreement"
    assert vote.agreement == pytest.approx(1 / 3) and vote.counts == {"4": 1}
    assert majority_vote([None, None, None]).drop_reason == "no_answer"


def test_no_answer_can_win_when_it_votes_but_is_never_kept() -> None:
    vote = majority_vote([None, None, F(4)], no_answer_policy="vote", min_agreement=0.0)
    assert not vote.kept and vote.drop_reason == "no_answer"
    assert vote.counts == {"None": 2, "4": 1}


def test_even_k_tie_is_dropped_by_default() -> None:
    vote = majority_vote([F(1), F(1), F(2), F(2)], min_agreement=0.5)
    assert vote.drop_reason == "tie"
    vote = majority_vote([F(1), F(1), F(2), F(2)], min_agreement=0.5, tie_policy="first")
    assert vote.kept and vote.answer == "1"


@pytest.mark.parametrize(
    ("k", "min_agreement", "need"),
    [(3, "majority", 2), (4, "majority", 3), (5, "majority", 3), (3, 0.0, 0), (3, 1.0, 3), (5, 0.6, 3), (3, 0.5, 2)],
)
def test_required_votes(k: int, min_agreement: float | str, need: int) -> None:
    assert required_votes(k, min_agreement) == need  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_agreement_outside_unit_interval_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="min_agreement"):
        required_votes(3, bad)


def test_equal_values_written_differently_vote_together() -> None:
    chains = ["... so #### Answer: 1,200", "Total: $1200.00\n#### 1200", "I think 1200.0 dollars. The answer is 1200."]
    vote, extracted = vote_on_chains(chains)
    assert vote.kept and vote.answer == "1200" and vote.agreement == 1.0
    assert extracted == ["1,200", "1200", "1200"]


def test_the_consensus_benchmark_scores_votes_against_gold() -> None:
    """benchmarks/bench_consensus.py's figures on a scripted case whose right numbers are known."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_consensus import report, wilson

    low, high = wilson(0, 10)
    assert low == 0.0 and abs(high - 3.8416 / 13.8416) < 1e-4  # z^2 / (n + z^2)
    assert wilson(10, 10)[1] == 1.0 and abs(wilson(5, 10)[0] - (1 - wilson(5, 10)[1])) < 1e-9

    rows = [{"question": q, "answer": f"... #### {a}"} for q, a in (("q1", 7), ("q2", 5), ("q3", 2))]
    chains = [
        ["#### 7", "so 7", "The answer is 7."],  # 3/3, right
        ["#### 7", "#### 7", "#### 5"],  # 2/3, the majority is wrong
        ["#### 1", "#### 2", None],  # 1/3 each: the first sampled wins, wrong
    ]
    out = report(rows, chains, k=3)
    assert out["single_sample"]["accuracy"] == round(5 / 9, 3) and out["single_sample"]["n"] == 9
    assert out["majority@3"]["accuracy"] == round(1 / 3, 3)
    assert {level: (a["n"], a["accuracy"]) for level, a in out["by_agreement"].items()} == {
        "3/3": (1, 1.0),
        "2/3": (1, 0.0),
        "1/3": (1, 0.0),
    }
    assert out["by_min_agreement"][">=2/3"] == {"kept_share": 0.667, "accuracy": 0.5, "n": 2, "ci95": [0.095, 0.905]}
