"""Preference pairs from the vote's losers (self-consistency preference optimisation, arXiv 2411.04109).

CRESCENT keeps one winning chain per question and throws the rest away. When the k chains disagree, the vote
has also labelled the losing chains: by the model's own consensus they reached a wrong answer (or none). ScPO
trains on exactly those pairs (chosen: a chain with the most-voted answer, rejected: one with the least-voted)
and weights each by its vote margin. Here the pairs are built from a run's kept rows, after the fact: the
policy changes which pairs come out, never what the model generated, so it is not part of a run's fingerprint.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from crescent_distilabel.answers import AnswerKind, answer_key, format_key

NO_ANSWER = "no answer"
"""How a rejected chain without a readable answer is labelled in ``rejected_answer``."""


@dataclass(frozen=True)
class PairPolicy:
    """Which losing chains become rejected answers.

    Attributes:
        pairs_per_question: at most this many pairs per question, each with a different rejected chain (the
            least-voted answers first, so the first pair has the widest margin); chosen chains are used in
            sample order, repeating when the losers outnumber them.
        min_margin: the least vote margin (chosen answer's votes minus the rejected answer's) a pair needs.
            At k = 3 every kept non-unanimous question is 2-1, margin 1: margins only differ from k = 4 on.
        reject_no_answer: a chain without a readable answer may be rejected (it disagrees with the consensus
            as much as a wrong number); False keeps only chains with a competing answer.
        reject_truncated: a chain cut off at max tokens may be rejected. Off by default: it did not lose the
            vote by reasoning, it ran out of room, and its last number is a fragment, not an answer. A cut
            chain is never chosen either: it would teach the model to stop mid-sentence.
    """

    pairs_per_question: int = 1
    min_margin: int = 1
    reject_no_answer: bool = True
    reject_truncated: bool = False


def question_pairs(
    question: str,
    chains: Sequence[str | None],
    extracted: Sequence[str | None],
    truncated: Sequence[bool],
    final_answer: str,
    policy: PairPolicy = PairPolicy(),
    kind: AnswerKind = "auto",
) -> list[dict[str, Any]]:
    """One kept question's preference pairs: TRL's conversational preference format (``prompt``, ``chosen``,
    ``rejected``) with the answers and the vote margin beside them. A unanimous vote gives none.

    Args:
        question: the bare question, as the SFT view asks it.
        chains: the k sampled chains (None for a sample the backend did not return).
        extracted: each chain's final answer as written (the consensus step's ``extracted_answers``).
        truncated: which chains hit max tokens; same length as ``chains``.
        final_answer: the winning answer, formatted (``final_answer``).
        kind: the run's answer kind, so answers are keyed as the vote keyed them.
    """
    if not (len(chains) == len(extracted) == len(truncated)):
        raise ValueError(f"{len(chains)} chains, {len(extracted)} answers and {len(truncated)} truncation flags")
    answers = [format_key(answer_key(answer, kind)) for answer in extracted]
    votes = Counter(answers)
    winners = [i for i, a in enumerate(answers) if a == final_answer and chains[i] and not truncated[i]]
    losers = [
        i
        for i, a in enumerate(answers)
        if a != final_answer
        and chains[i]
        and (policy.reject_truncated or not truncated[i])
        and (policy.reject_no_answer or a is not None)
        and votes[final_answer] - votes[a] >= policy.min_margin
    ]
    losers.sort(key=lambda i: votes[answers[i]])  # stable: least-voted answers first, then sample order
    user = [{"role": "user", "content": question}]
    pairs = []
    for n, loser in enumerate(losers[: policy.pairs_per_question] if winners else []):
        winner = winners[n % len(winners)]
        pairs.append(
            {
                "prompt": user,
                "chosen": [{"role": "assistant", "content": chains[winner]}],
                "rejected": [{"role": "assistant", "content": chains[loser]}],
                "question": question,
                "chosen_answer": final_answer,
                "rejected_answer": answers[loser] if answers[loser] is not None else NO_ANSWER,
                "margin": votes[final_answer] - votes[answers[loser]],
                "k": len(chains),
            }
        )
    return pairs


def preference_pairs(
    rows: Iterable[Mapping[str, Any]], policy: PairPolicy = PairPolicy(), kind: AnswerKind = "auto"
) -> list[dict[str, Any]]:
    """The pairs of a run's kept rows (the ``default`` config, or ``reviewed`` after human review), in row
    order, each with the row's ``answer_model`` and agreement. Rows without per-chain truncation flags (written
    before they were kept) give no pairs, as a cut chain could not be told apart.

    A reviewed row whose answer a reviewer corrected (``review_status`` "corrected_answer", ``final_answer`` the
    correction) outranks the vote: chains with the corrected answer are chosen over the others, the former
    winner's included, whatever the margin (negative where the correction had fewer votes)."""
    out: list[dict[str, Any]] = []
    for row in rows:
        flags = row.get("chain_truncated")
        if flags is None or row.get("final_answer") is None:
            continue
        corrected = row.get("review_status") == "corrected_answer"
        row_policy = replace(policy, min_margin=-len(row["chains"])) if corrected else policy
        for pair in question_pairs(
            row["question"], row["chains"], row["extracted_answers"], flags, row["final_answer"], row_policy, kind
        ):
            out.append({**pair, "agreement": row.get("agreement"), "answer_model": row.get("answer_model")})
    return out
