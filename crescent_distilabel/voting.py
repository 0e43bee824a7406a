"""Majority voting over k sampled answers (CRESCENT section 3.3, consensus enhancement).

The released scripts keep every question whatever its votes, let "no answer" win, and break ties by sample
order. Here the agreement threshold, ties and unanswered samples each follow an explicit policy, and the
whole vote is returned so reviewers and filters can use it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from crescent_distilabel.answers import AnswerKey, AnswerKind, answer_key, extract_answer, format_key

TiePolicy = Literal["drop", "first"]
NoAnswerPolicy = Literal["abstain", "vote"]
MinAgreement = float | Literal["majority"]


@dataclass(frozen=True)
class Vote:
    """The outcome of one question's vote.

    Attributes:
        kept: whether the question has an answer the samples agree on.
        drop_reason: why it was not kept (``no_answer``, ``tie``, ``low_agreement``), else None.
        answer: the winning answer, formatted (``"1200"``, ``"0.75"``, ``"3/7"``).
        winner: index of the first sample whose answer is the winner (the training chain).
        counts: votes per formatted answer, most votes first.
        agreement: votes for the winner divided by k.
        k: samples cast.
    """

    kept: bool
    drop_reason: str | None
    answer: str | None
    winner: int | None
    counts: dict[str, int] = field(default_factory=dict)
    agreement: float = 0.0
    k: int = 0


def required_votes(k: int, min_agreement: MinAgreement) -> int:
    """How many votes the winner needs: a strict majority of k, or ``ceil(min_agreement * k)``."""
    if min_agreement == "majority":
        return k // 2 + 1
    if not 0.0 <= float(min_agreement) <= 1.0:
        raise ValueError(f"min_agreement must be 'majority' or a fraction in [0, 1], got {min_agreement!r}")
    need = float(min_agreement) * k
    return max(int(need) + (need > int(need) + 1e-9), 0)


def majority_vote(
    keys: Sequence[AnswerKey | None],
    *,
    min_agreement: MinAgreement = "majority",
    tie_policy: TiePolicy = "drop",
    no_answer_policy: NoAnswerPolicy = "abstain",
) -> Vote:
    """Vote on normalised answer keys, one per sample.

    Args:
        keys: one key per sample; None for a sample with no readable answer.
        min_agreement: "majority" (more than k/2 votes), or a fraction of k the winner needs;
            0 keeps every question with an answer, as the released scripts do.
        tie_policy: "drop" a question whose top answers tie, or take the "first" sampled of them (the
            scripts' behaviour).
        no_answer_policy: "abstain": a sample without an answer casts no vote but still counts in k;
            "vote": "no answer" is a candidate like any other (the scripts' behaviour). A question whose
            winner is "no answer" is never kept, as there is nothing to train on.
    """
    k = len(keys)
    ballots = [(i, key) for i, key in enumerate(keys) if key is not None or no_answer_policy == "vote"]
    tally = Counter(key for _, key in ballots)
    counts = {str(format_key(key)): n for key, n in tally.most_common()}
    if not tally:
        return Vote(False, "no_answer", None, None, counts, 0.0, k)
    top = max(tally.values())
    # Counter keeps first-seen order, so the first leader is the earliest-sampled answer among the tied.
    leaders = [key for key, n in tally.items() if n == top]
    winner_key = leaders[0]
    winner = next(i for i, key in ballots if key == winner_key)
    agreement = top / k
    answer = format_key(winner_key)
    if winner_key is None:
        return Vote(False, "no_answer", None, None, counts, agreement, k)
    if len(leaders) > 1 and tie_policy == "drop":
        return Vote(False, "tie", answer, winner, counts, agreement, k)
    if top < required_votes(k, min_agreement):
        return Vote(False, "low_agreement", answer, winner, counts, agreement, k)
    return Vote(True, None, answer, winner, counts, agreement, k)


def vote_on_chains(
    chains: Sequence[str | None], kind: AnswerKind = "auto", **policy: object
) -> tuple[Vote, list[str | None]]:
    """Extract, key (by the declared answer ``kind``) and vote on k answer chains; also returns each chain's
    extracted answer."""
    extracted = [extract_answer(chain, kind) for chain in chains]
    keys = [answer_key(answer, kind) for answer in extracted]
    return majority_vote(keys, **policy), extracted  # type: ignore[arg-type]
