"""Human spot-checks as plain functions: which rows to review, how reviews change the data, what they measure.

Argilla itself lives in :mod:`crescent_distilabel.argilla_io`; this module never talks to a server, so the
rules below are testable on their own and the same whatever tool collected the reviews.

Rules, per record, over the *submitted* responses of all its reviewers:
- ``well_posed`` and ``correct`` are decided by majority; a tie counts as "no" (a spot-check should not let
  a disputed item through).
- a question judged not well-posed is dropped (``review_rejected_question``);
- an answer judged incorrect is replaced by the reviewers' corrected answer when one is given (the most
  common one), else dropped (``review_rejected_answer``). With a correction, a sampled chain that reached
  the corrected answer becomes the training answer; if none did, the assistant turn states the corrected
  answer and ``answer_source`` says ``reviewer``.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from crescent_distilabel.answers import extract_answer, format_key, normalize_answer
from crescent_distilabel.prompts import sft_views

WELL_POSED, CORRECT, CORRECTED_ANSWER, COMMENT = "well_posed", "correct", "corrected_answer", "comment"
REVIEW_COLUMNS = (
    "review_status", "review_well_posed", "review_correct", "review_corrected_answer", "review_comment",
    "reviewers", "answer_source",
)  # fmt: skip


def record_id(row: dict[str, Any]) -> str:
    """A stable id for a dataset row: the same row gets the same id on every push (so nothing is duplicated)."""
    key = f"{row.get('bait_call')}:{row.get('bait_sample')}:{row.get('question')}"
    return "crescent-" + hashlib.sha1(key.encode()).hexdigest()[:20]


def agreement_bucket(agreement: float | None) -> str:
    """The agreement level as a label ("0.67", "1.00"); "n/a" without consensus."""
    return "n/a" if agreement is None else f"{agreement:.2f}"


def select_for_review(
    rows: Sequence[dict[str, Any]], sample: int | None = None, strategy: str = "stratified", seed: int = 0
) -> list[int]:
    """Indices of the rows to push: all of them, or ``sample`` of them.

    ``random`` draws uniformly; ``stratified`` spreads the sample evenly over agreement levels (a small level
    gives all its rows, the rest go to the others), so accuracy can be estimated per level and the rare
    low-agreement questions are not missed. Deterministic for a seed.
    """
    if strategy not in ("random", "stratified"):
        raise ValueError(f"strategy must be 'random' or 'stratified', got {strategy!r}")
    if sample is None or sample >= len(rows):
        return list(range(len(rows)))
    if sample < 0:
        raise ValueError(f"sample must be >= 0, got {sample}")
    rng = random.Random(seed)
    if strategy == "random":
        return sorted(rng.sample(range(len(rows)), sample))
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[agreement_bucket(row.get("agreement"))].append(i)
    quota = dict.fromkeys(groups, 0)
    left = sample
    open_groups = sorted(groups, key=lambda g: len(groups[g]))
    while left and open_groups:  # even shares; a level smaller than its share gives the rest back
        share = max(left // len(open_groups), 1)
        for g in list(open_groups):
            take = min(share, len(groups[g]) - quota[g], left)
            quota[g] += take
            left -= take
            if quota[g] == len(groups[g]):
                open_groups.remove(g)
            if not left:
                break
    chosen = [i for g, n in quota.items() for i in rng.sample(groups[g], n)]
    return sorted(chosen)


@dataclass
class Review:
    """One record's verdict, aggregated over its reviewers' submitted responses."""

    well_posed: bool | None = None
    correct: bool | None = None
    corrected_answer: str | None = None
    comment: str | None = None
    reviewers: int = 0

    @property
    def status(self) -> str:
        if self.well_posed is False:
            return "rejected_question"
        if self.correct is False:
            return "corrected_answer" if self.corrected_answer else "rejected_answer"
        if self.correct is True or self.well_posed is True:
            return "accepted"
        return "pending"


def _majority_yes(values: list[str]) -> bool | None:
    if not values:
        return None
    yes = sum(v == "yes" for v in values)
    return yes > len(values) - yes  # a tie is "no"


def aggregate(responses: Iterable[tuple[str, str, Any]]) -> Review:
    """Combine submitted responses ``(user, question_name, value)`` of one record into a :class:`Review`."""
    by_question: dict[str, list[Any]] = defaultdict(list)
    users = set()
    for user, question, value in responses:
        users.add(user)
        if value not in (None, ""):
            by_question[question].append(value)
    corrections = Counter(str(v).strip() for v in by_question[CORRECTED_ANSWER])
    comments = [str(c).strip() for c in by_question[COMMENT]]
    return Review(
        well_posed=_majority_yes(by_question[WELL_POSED]),
        correct=_majority_yes(by_question[CORRECT]),
        corrected_answer=corrections.most_common(1)[0][0] if corrections else None,
        comment=" | ".join(comments) or None,
        reviewers=len(users),
    )


def _answer_key(text: str) -> str | None:
    value = normalize_answer(extract_answer(text) or text)
    return None if value is None else format_key(value)


def apply_reviews(
    rows: Sequence[dict[str, Any]], reviews: dict[str, Review]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows kept after review, rows the reviewers rejected), every row with the ``review_*`` columns.

    Rows nobody reviewed are kept unchanged (``review_status`` "unreviewed").
    """
    kept, rejected = [], []
    for row in rows:
        review = reviews.get(record_id(row))
        out = dict(row)
        out.update(
            review_status=review.status if review else "unreviewed",
            review_well_posed=review.well_posed if review else None,
            review_correct=review.correct if review else None,
            review_corrected_answer=review.corrected_answer if review else None,
            review_comment=review.comment if review else None,
            reviewers=review.reviewers if review else 0,
            answer_source="consensus",
        )
        status = out["review_status"]
        if status in ("rejected_question", "rejected_answer"):
            out["drop_reason"] = f"review_{status}"
            rejected.append(out)
            continue
        if status == "corrected_answer":
            _apply_correction(out, review.corrected_answer)  # type: ignore[union-attr, arg-type]
        kept.append(out)
    return kept, rejected


def _apply_correction(row: dict[str, Any], corrected: str) -> None:
    target = _answer_key(corrected)
    row["final_answer"] = target or corrected
    chains, extracted = row.get("chains") or [], row.get("extracted_answers") or []
    chain = next(
        (c for c, a in zip(chains, extracted) if c and a and _answer_key(a) == target and target is not None), None
    )
    if chain is None:
        chain = f"The final answer is {corrected}."
        row["answer_source"] = "reviewer"
    else:
        row["answer_source"] = "consensus_chain_matching_reviewer"
    row["answer"] = chain
    row.update(sft_views(row["question"], chain))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval for a proportion: sensible at small n and at 0% or 100%, unlike p +- z*se."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Estimate:
    """Reviewed accuracy: answers judged correct out of those judged, with a 95% Wilson interval."""

    correct: int
    judged: int
    accuracy: float | None
    low: float
    high: float

    @classmethod
    def of(cls, correct: int, judged: int) -> Estimate:
        low, high = wilson_interval(correct, judged)
        return cls(correct, judged, correct / judged if judged else None, low, high)


@dataclass
class AccuracyReport:
    """How often the consensus answer is right, overall and per agreement level, as the reviewers judged."""

    overall: Estimate
    by_agreement: dict[str, Estimate]
    reviewed: int
    rejected_questions: int
    rows: int
    statuses: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def table(self) -> str:
        """A Markdown table (for the dataset card and the CLI)."""
        lines = ["| agreement | judged | correct | accuracy | 95% CI |", "|---|---|---|---|---|"]
        items = [*sorted(self.by_agreement.items()), ("all", self.overall)]
        for name, e in items:
            acc = "n/a" if e.accuracy is None else f"{e.accuracy:.1%}"
            lines.append(f"| {name} | {e.judged} | {e.correct} | {acc} | {e.low:.1%} - {e.high:.1%} |")
        return "\n".join(lines)


def accuracy_report(rows: Sequence[dict[str, Any]], reviews: dict[str, Review]) -> AccuracyReport:
    """Reviewed accuracy of the consensus answers (before corrections), overall and per agreement level.

    An answer counts as judged when its question was judged well-posed (or not judged on that) and its
    correctness was judged; questions rejected as ill-posed are reported apart.
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    statuses: Counter[str] = Counter()
    reviewed = rejected_questions = 0
    for row in rows:
        review = reviews.get(record_id(row))
        statuses[review.status if review else "unreviewed"] += 1
        if review is None or review.reviewers == 0:
            continue
        reviewed += 1
        if review.well_posed is False:
            rejected_questions += 1
            continue
        if review.correct is None:
            continue
        bucket = counts[agreement_bucket(row.get("agreement"))]
        bucket[0] += int(review.correct)
        bucket[1] += 1
    overall = Estimate.of(sum(c for c, _ in counts.values()), sum(n for _, n in counts.values()))
    return AccuracyReport(
        overall=overall,
        by_agreement={b: Estimate.of(c, n) for b, (c, n) in sorted(counts.items())},
        reviewed=reviewed,
        rejected_questions=rejected_questions,
        rows=len(rows),
        statuses=dict(statuses),
    )
