"""The authors' approach as benchmark-local variants of our steps, so its pipeline overhead can be measured.

Their released scripts embed questions one text at a time with sentence-transformers, and vote with a
``collections.Counter`` over the raw extracted answer strings (no normalisation: "1,200" and "1200" differ),
keeping the most common one (first sampled on ties) whatever its agreement. A module of its own, not the
benchmark script, so the pipeline's step processes can import these classes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from crescent_distilabel.answers import extract_answer
from crescent_distilabel.embeddings import SentenceEmbeddings
from crescent_distilabel.steps import Consensus
from crescent_distilabel.voting import Vote


class OneAtATimeEmbeddings(SentenceEmbeddings):
    """Embeds each text with its own model call, as the authors' scripts do."""

    def encode_array(self, inputs: list[str]) -> np.ndarray:
        if len(inputs) <= 1:
            return super().encode_array(inputs)
        return np.vstack([SentenceEmbeddings.encode_array(self, [text]) for text in inputs])


def counter_vote(chains: list[str | None]) -> tuple[Vote, list[str | None]]:
    """The scripts' vote: the most common raw extracted string wins (first seen on ties), even "no answer"."""
    extracted = [extract_answer(chain) for chain in chains]
    tally = Counter(extracted)
    answer, top = tally.most_common(1)[0]  # most_common keeps first-seen order among equal counts
    counts = {str(a): n for a, n in tally.most_common()}
    k = len(chains)
    if answer is None:
        return Vote(False, "no_answer", None, None, counts, top / k, k), extracted
    return Vote(True, None, answer, extracted.index(answer), counts, top / k, k), extracted


class CounterConsensus(Consensus):
    """Our Consensus step voting as the authors' scripts do."""

    def vote(self, chains: list[str | None]) -> tuple[Vote, list[str | None]]:
        return counter_vote(chains)
