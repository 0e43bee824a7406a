"""Similarity search for rejection-sampling self-deduplication (CRESCENT section 3.2).

Embeddings are unit-normalised, so cosine similarity is a dot product. The released scripts embed and
search one question at a time against a flat FAISS index; here a whole batch is searched at once, and past
``exact_limit`` accepted questions the history moves to an HNSW graph (usearch) so a search stays fast at a
million questions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WITHIN_BATCH_THRESHOLD = 0.85
"""Default: a question is dropped when a later question of the same batch has cosine >= this."""
HISTORY_THRESHOLD = 0.875
"""Default: a question is a near-duplicate when its nearest accepted question has cosine > this (the scripts'
squared L2 < 0.25 on unit vectors)."""


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-normalise rows as float32 (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a 2-d array of embeddings, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def within_batch_duplicates(embeddings: np.ndarray, threshold: float = WITHIN_BATCH_THRESHOLD) -> np.ndarray:
    """Mask of questions dropped because a later question in the same batch has cosine >= threshold."""
    n = len(embeddings)
    if n < 2:
        return np.zeros(n, dtype=bool)
    sims = embeddings @ embeddings.T
    return np.triu(sims >= threshold, k=1).any(axis=1)


class SimilarityIndex:
    """The accepted questions' embeddings, searched for each new question's nearest neighbour.

    Exact (one matrix product per batch) up to ``exact_limit`` vectors, then an HNSW graph.

    Args:
        dim: embedding size.
        exact_limit: history size at which search switches from exact to HNSW; None keeps it exact.
        ef_search: HNSW search breadth (higher is more accurate and slower).
    """

    def __init__(self, dim: int, *, exact_limit: int | None = 50_000, ef_search: int = 64) -> None:
        self.dim = dim
        self.exact_limit = exact_limit
        self.ef_search = ef_search
        self._chunks: list[np.ndarray] = []
        self._matrix = np.empty((0, dim), dtype=np.float32)
        self._hnsw = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def approximate(self) -> bool:
        """Whether searches go through the HNSW graph."""
        return self._hnsw is not None

    def _exact_matrix(self) -> np.ndarray:
        if self._chunks:
            self._matrix = np.concatenate([self._matrix, *self._chunks])
            self._chunks = []
        return self._matrix

    def add(self, vectors: np.ndarray) -> None:
        """Add unit-normalised vectors; ids continue from the current size."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return
        if vectors.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of size {self.dim}, got {vectors.shape[1]}")
        if self._hnsw is None and self.exact_limit is not None and self._size + len(vectors) > self.exact_limit:
            self._to_hnsw()
        if self._hnsw is not None:
            keys = np.arange(self._size, self._size + len(vectors), dtype=np.uint64)
            self._hnsw.add(keys, vectors, threads=0)
        else:
            self._chunks.append(vectors)
        self._size += len(vectors)

    def _to_hnsw(self) -> None:
        from usearch.index import Index

        existing = self._exact_matrix()
        self._hnsw = Index(ndim=self.dim, metric="ip", dtype="f16", connectivity=16, expansion_add=64)
        self._hnsw.expansion_search = self.ef_search
        if len(existing):
            self._hnsw.add(np.arange(len(existing), dtype=np.uint64), existing, threads=0)
        self._matrix = np.empty((0, self.dim), dtype=np.float32)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest accepted neighbour of each query: (cosine, id); (-1.0, -1) when the index is empty."""
        n = len(queries)
        best_sim = np.full(n, -1.0, dtype=np.float32)
        best_id = np.full(n, -1, dtype=np.int64)
        if n == 0 or self._size == 0:
            return best_sim, best_id
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._hnsw is not None:
            matches = self._hnsw.search(queries, 1, threads=0)
            keys = np.asarray(matches.keys).reshape(n, -1)[:, 0]
            dist = np.asarray(matches.distances).reshape(n, -1)[:, 0]
            found = np.asarray(matches.counts).reshape(n) > 0
            best_id[found] = keys[found].astype(np.int64)
            best_sim[found] = 1.0 - dist[found]  # usearch "ip" distance is 1 - dot
            return best_sim, best_id
        matrix = self._exact_matrix()
        for start in range(0, n, 1024):  # bound the n x history similarity block's memory
            block = queries[start : start + 1024] @ matrix.T
            idx = block.argmax(axis=1)
            best_id[start : start + 1024] = idx
            best_sim[start : start + 1024] = block[np.arange(len(idx)), idx]
        return best_sim, best_id


@dataclass(frozen=True)
class Decision:
    """How one question fared against the history: accepted or a near-duplicate of ``neighbour``."""

    accepted: bool
    neighbour: int  # id of the nearest accepted question (history id), -1 if none
    similarity: float  # cosine to it, -1.0 if none


def accept_against_history(
    embeddings: np.ndarray, index: SimilarityIndex, threshold: float = HISTORY_THRESHOLD
) -> list[Decision]:
    """Check a batch in order against the history; accepted questions join it at once.

    One search covers the whole history; later questions of the batch are also compared with those of the
    batch accepted before them (a small in-batch similarity matrix), as if added one by one.
    """
    n = len(embeddings)
    hist_sim, hist_id = index.search(embeddings)
    batch_sims = embeddings @ embeddings.T if n else np.empty((0, 0), dtype=np.float32)
    base = len(index)
    accepted: list[int] = []
    decisions: list[Decision] = []
    for i in range(n):
        sim, neighbour = float(hist_sim[i]), int(hist_id[i])
        if accepted:
            row = batch_sims[i, accepted]
            j = int(row.argmax())
            if row[j] > sim:
                sim, neighbour = float(row[j]), base + j
        is_new = sim <= threshold
        if is_new:
            accepted.append(i)
        decisions.append(Decision(is_new, neighbour, sim))
    index.add(embeddings[accepted])
    return decisions
