"""The review rules as plain functions: sampling, aggregation, corrections and the accuracy estimate."""

from __future__ import annotations

import pytest

from crescent_distilabel.review import (
    Review,
    accuracy_report,
    aggregate,
    apply_reviews,
    record_id,
    select_for_review,
    wilson_interval,
)


def row(i: int, agreement: float, final: str = "8", chains: list[str] | None = None) -> dict:
    chains = chains or [f"#### Answer: {final}"] * 3
    return {
        "bait_call": 0, "bait_sample": i, "question": f"question {i} with 3 apples?", "agreement": agreement,
        "final_answer": final, "answer": chains[0], "chains": chains,
        "extracted_answers": [c.rsplit(" ", 1)[-1] for c in chains],
        "messages": [{"role": "user", "content": f"question {i} with 3 apples?"},
                     {"role": "assistant", "content": chains[0]}],
    }  # fmt: skip


def test_record_ids_are_stable_and_distinct() -> None:
    rows = [row(i, 1.0) for i in range(50)]
    assert [record_id(r) for r in rows] == [record_id(dict(r)) for r in rows]
    assert len({record_id(r) for r in rows}) == 50
    assert record_id(rows[0]) != record_id({**rows[0], "question": "another question"})


def test_stratified_sample_spreads_over_agreement_levels() -> None:
    rows = [row(i, 1.0) for i in range(90)] + [row(90 + i, 2 / 3) for i in range(8)] + [row(98, 0.5)]
    chosen = select_for_review(rows, sample=12, strategy="stratified", seed=1)
    levels = sorted(round(rows[i]["agreement"], 2) for i in chosen)
    assert len(chosen) == 12 and levels.count(0.5) == 1  # the small level gives all it has, the rest split evenly
    assert {levels.count(0.67), levels.count(1.0)} == {5, 6}
    assert chosen == select_for_review(rows, sample=12, strategy="stratified", seed=1)  # deterministic
    assert chosen != select_for_review(rows, sample=12, strategy="stratified", seed=2)
    randomly = select_for_review(rows, sample=12, strategy="random", seed=1)
    assert len(set(randomly)) == 12 and select_for_review(rows, sample=None) == list(range(99))
    with pytest.raises(ValueError, match="strategy"):
        select_for_review(rows, sample=3, strategy="alphabetical")


def test_aggregate_takes_majorities_and_ties_count_as_no() -> None:
    review = aggregate([("a", "correct", "yes"), ("b", "correct", "yes"), ("c", "correct", "no")])
    assert review.correct is True and review.reviewers == 3 and review.well_posed is None
    tie = aggregate([("a", "correct", "yes"), ("b", "correct", "no"), ("a", "well_posed", "yes")])
    assert tie.correct is False and tie.well_posed is True
    corrected = aggregate([("a", "corrected_answer", "12"), ("b", "corrected_answer", "12"),
                           ("c", "corrected_answer", "13"), ("a", "comment", "  typo ")])  # fmt: skip
    assert corrected.corrected_answer == "12" and corrected.comment == "typo"


def test_apply_reviews_drops_rejections_and_applies_corrections() -> None:
    rows = [
        row(0, 1.0),
        row(1, 2 / 3, "9", ["#### Answer: 9", "#### Answer: 9", "Hence #### Answer: 10"]),
        row(2, 2 / 3, "5"),
        row(3, 1.0),
        row(4, 1.0, "4"),
    ]
    reviews = {
        record_id(rows[0]): Review(well_posed=False, correct=True, reviewers=1),
        record_id(rows[1]): Review(well_posed=True, correct=False, corrected_answer="10", reviewers=1),
        record_id(rows[2]): Review(well_posed=True, correct=False, corrected_answer="$6.00", reviewers=1),
        record_id(rows[3]): Review(well_posed=True, correct=False, reviewers=2),
    }
    kept, rejected = apply_reviews(rows, reviews)
    assert [r["drop_reason"] for r in rejected] == ["review_rejected_question", "review_rejected_answer"]
    by_sample = {r["bait_sample"]: r for r in kept}
    assert set(by_sample) == {1, 2, 4}
    assert by_sample[1]["final_answer"] == "10" and by_sample[1]["answer"] == "Hence #### Answer: 10"
    assert by_sample[1]["answer_source"] == "consensus_chain_matching_reviewer"
    assert by_sample[2]["final_answer"] == "6" and by_sample[2]["answer_source"] == "reviewer"  # no chain reached 6
    assert by_sample[2]["messages"][1]["content"] == "The final answer is $6.00."
    assert by_sample[4]["review_status"] == "unreviewed" and by_sample[4]["answer"] == rows[4]["answer"]
    assert rows[1]["final_answer"] == "9"  # the input rows are not modified


def test_wilson_interval_matches_published_values() -> None:
    # Reference values (Newcombe 1998; Wilson 1927), z = 1.96
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_accuracy_report_by_agreement_level() -> None:
    rows = [row(i, 1.0) for i in range(4)] + [row(4 + i, 2 / 3) for i in range(4)]
    verdicts = [True, True, True, False, True, False, None, None]
    reviews = {
        record_id(r): Review(well_posed=True, correct=v, reviewers=1) for r, v in zip(rows, verdicts) if v is not None
    }
    reviews[record_id(rows[7])] = Review(well_posed=False, correct=False, reviewers=1)
    report = accuracy_report(rows, reviews)
    assert (report.overall.correct, report.overall.judged) == (4, 6) and report.rejected_questions == 1
    assert (report.by_agreement["1.00"].correct, report.by_agreement["1.00"].judged) == (3, 4)
    assert (report.by_agreement["0.67"].correct, report.by_agreement["0.67"].judged) == (1, 2)
    assert report.reviewed == 7 and report.statuses["unreviewed"] == 1
    assert "| 1.00 | 4 | 3 | 75.0% |" in report.table() and "| all | 6 | 4 | 66.7% |" in report.table()
