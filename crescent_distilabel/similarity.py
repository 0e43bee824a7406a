"""Similarity search for rejection-sampling self-deduplication (CRESCENT section 3.2).

Embeddings are unit-normalised, so cosine similarity is a dot product. The released scripts embed and
search one question at a time against a flat FAISS index; here a whole batch is searched at once, and past
``exact_limit`` accepted questions the history moves to a FAISS inverted-file index over a PCA projection
(k-means cells; the ``nprobe`` nearest cells are scanned and the best candidates re-scored exactly), so a
search stays fast at a million questions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The paper's embedding model for the similarity checks (a Hub id; a PyPI copy stands in offline)."""
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


def spread(embeddings: np.ndarray, threshold: float = HISTORY_THRESHOLD, block: int = 2048) -> dict[str, float]:
    """How varied a set of questions is, exactly (blocked matrix products; fine for tens of thousands).

    ``distinct_rate``: the share of questions with no near-duplicate (cosine > ``threshold``) earlier in the set,
    i.e. what a greedy deduplication in this order would keep. ``mean_nearest``: each question's cosine to its
    nearest other question, averaged (lower is more varied).
    """
    vectors = normalize_rows(embeddings)
    n = len(vectors)
    if n < 2:
        return {"questions": n, "distinct_rate": 1.0 if n else 0.0, "mean_nearest": 0.0}
    nearest = np.empty(n, dtype=np.float32)
    duplicate = np.empty(n, dtype=bool)
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf  # a question is not its own neighbour
        nearest[start : start + len(sims)] = sims.max(axis=1)
        earlier = np.arange(n)[None, :] < (start + rows)[:, None]
        duplicate[start : start + len(sims)] = (np.where(earlier, sims, -np.inf) > threshold).any(axis=1)
    return {
        "questions": n,
        "distinct_rate": round(float(1 - duplicate.mean()), 4),
        "mean_nearest": round(float(nearest.mean()), 4),
    }


class SimilarityIndex:
    """The accepted questions' embeddings, searched for each new question's nearest neighbour.

    Exact (one matrix product per batch) up to ``exact_limit`` vectors; then a FAISS IVF index trained on
    the history so far, searched in a ``pca_dim`` projection; its ``refine`` best candidates are re-scored
    with the full vectors, so reported similarities are exact. Near-duplicates at cosine > 0.875 sit in the
    same or a neighbouring cell (benchmarks/bench_similarity.py measures the agreement with exact search).

    Args:
        dim: embedding size.
        exact_limit: history size at which search switches from exact to IVF; None keeps it exact.
        nlist: most IVF cells (fewer when the history is small: at least 39 vectors per cell to train).
        nprobe: cells scanned per query (more is more accurate and slower).
        pca_dim: dimensions the cells are searched in (no projection when ``dim`` is not larger).
        refine: candidates re-scored exactly per query.
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_limit: int | None = 100_000,
        nlist: int = 4096,
        nprobe: int = 4,
        pca_dim: int = 96,
        refine: int = 4,
    ) -> None:
        self.dim = dim
        self.exact_limit = exact_limit
        self.nlist = nlist
        self.nprobe = nprobe
        self.pca_dim = pca_dim
        self.refine = refine
        self._buffer = np.empty((1024, dim), dtype=np.float32)  # exact history, grown by doubling
        self._ivf = None
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def approximate(self) -> bool:
        """Whether searches go through the IVF index."""
        return self._ivf is not None

    def _exact_matrix(self) -> np.ndarray:
        return self._buffer[: self._size]

    def add(self, vectors: np.ndarray) -> None:
        """Add unit-normalised vectors; ids continue from the current size."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) == 0:
            return
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected embeddings of size {self.dim}, got shape {vectors.shape}")
        if self._ivf is not None:
            self._ivf.add(vectors)
        else:
            needed = self._size + len(vectors)
            if needed > len(self._buffer):
                grown = np.empty((max(needed, 2 * len(self._buffer)), self.dim), dtype=np.float32)
                grown[: self._size] = self._buffer[: self._size]
                self._buffer = grown
            self._buffer[self._size : needed] = vectors
        self._size += len(vectors)
        if self._ivf is None and self.exact_limit is not None and self._size >= self.exact_limit:
            self._to_ivf()

    def _to_ivf(self) -> None:
        # Idle OpenMP threads otherwise spin between small batched searches and starve the next step's work
        # (2x slower on 2 cores); only effective if set before FAISS loads its OpenMP runtime.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import faiss

        history = self._exact_matrix()
        nlist = max(1, min(self.nlist, len(history) // 39))
        pca = f"PCA{self.pca_dim}," if self.pca_dim < self.dim else ""
        base = faiss.index_factory(self.dim, f"{pca}IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(base)
        ivf.cp.min_points_per_centroid = 1  # the history is what it is; do not warn about it
        ivf.nprobe = min(self.nprobe, nlist)
        index = faiss.IndexRefineFlat(base)
        index.k_factor = self.refine
        index.train(history)
        index.add(history)
        self._ivf, self._base = index, base  # keep the wrapped index alive alongside its wrapper
        self._buffer = np.empty((0, self.dim), dtype=np.float32)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest accepted neighbour of each query: (cosine, id); (-1.0, -1) when none is found."""
        n = len(queries)
        best_sim = np.full(n, -1.0, dtype=np.float32)
        best_id = np.full(n, -1, dtype=np.int64)
        if n == 0 or self._size == 0:
            return best_sim, best_id
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self._ivf is not None:
            sims, ids = self._ivf.search(queries, 1)
            found = ids[:, 0] >= 0
            best_sim[found], best_id[found] = sims[found, 0], ids[found, 0]
            return best_sim, best_id
        matrix = self._exact_matrix()
        rows = max(1, min(1024, 2**26 // len(matrix)))  # keep each similarity block under 256 MB
        for start in range(0, n, rows):
            block = queries[start : start + rows] @ matrix.T
            idx = block.argmax(axis=1)
            best_id[start : start + rows] = idx
            best_sim[start : start + rows] = block[np.arange(len(idx)), idx]
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
    sims, ids = hist_sim.tolist(), hist_id.tolist()
    base = len(index)
    batch_sims = embeddings @ embeddings.T if n else np.empty((0, 0), dtype=np.float32)
    # best similarity to an accepted question of this batch so far, and which one (as a history id)
    in_batch = np.full(n, -np.inf, dtype=np.float32)
    in_batch_id = np.full(n, -1, dtype=np.int64)
    accepted: list[int] = []
    decisions: list[Decision] = []
    for i in range(n):
        sim, neighbour = sims[i], ids[i]
        if in_batch[i] > sim:
            sim, neighbour = float(in_batch[i]), int(in_batch_id[i])
        is_new = sim <= threshold
        if is_new:
            later = batch_sims[i + 1 :, i]
            closer = later > in_batch[i + 1 :]
            in_batch[i + 1 :][closer] = later[closer]
            in_batch_id[i + 1 :][closer] = base + len(accepted)
            accepted.append(i)
        decisions.append(Decision(is_new, neighbour, sim))
    index.add(embeddings[accepted])
    return decisions
