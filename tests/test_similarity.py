"""Similarity search: exact and HNSW agree, and the sequential accept logic matches a one-by-one loop."""

import numpy as np
import pytest

from crescent_distilabel.similarity import (
    SimilarityIndex,
    accept_against_history,
    normalize_rows,
    spread,
    within_batch_duplicates,
)


def unit(rng: np.random.Generator, n: int, dim: int = 32) -> np.ndarray:
    return normalize_rows(rng.standard_normal((n, dim)))


def near(v: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector with exactly the given cosine to unit vector v."""
    noise = rng.standard_normal(v.shape)
    noise -= noise @ v * v
    noise /= np.linalg.norm(noise)
    return (cos * v + np.sqrt(1 - cos**2) * noise).astype(np.float32)


def test_within_batch_drops_the_earlier_of_a_similar_pair() -> None:
    rng = np.random.default_rng(0)
    a, b = unit(rng, 2)
    batch = np.stack([a, b, near(a, 0.9, rng), near(b, 0.84, rng)])
    assert within_batch_duplicates(batch, 0.85).tolist() == [True, False, False, False]
    assert within_batch_duplicates(batch[:1], 0.85).tolist() == [False]


def test_history_threshold_is_strict_and_accepted_join_at_once() -> None:
    rng = np.random.default_rng(1)
    index = SimilarityIndex(32)
    base = unit(rng, 1)[0]
    assert accept_against_history(base[None], index, 0.875)[0].accepted
    same_batch = np.stack([near(base, 0.80, rng), near(base, 0.95, rng), unit(rng, 1)[0]])
    new = unit(rng, 1)[0]
    same_batch = np.vstack([same_batch, near(new, 0.99, rng)[None]])
    same_batch[2] = new
    decisions = accept_against_history(same_batch, index, 0.875)
    assert [d.accepted for d in decisions] == [True, False, True, False]
    assert decisions[1].neighbour == 0 and decisions[1].similarity == pytest.approx(0.95, abs=1e-5)
    assert decisions[3].neighbour == 2  # the in-batch question accepted before it (history id 2)
    assert len(index) == 3


def test_batched_accept_equals_one_by_one() -> None:
    rng = np.random.default_rng(2)
    seeds = unit(rng, 40)
    vectors = np.stack([near(seeds[rng.integers(40)], rng.uniform(0.7, 1.0), rng) for _ in range(300)])
    batched = SimilarityIndex(32)
    got = [
        d.accepted for start in range(0, 300, 64) for d in accept_against_history(vectors[start : start + 64], batched)
    ]
    single = SimilarityIndex(32)
    want = [accept_against_history(v[None], single)[0].accepted for v in vectors]
    assert got == want
    assert 0 < sum(want) < 300


def test_ivf_matches_exact_search() -> None:
    rng = np.random.default_rng(3)
    centres = unit(rng, 50, 64)
    history = np.stack([near(centres[i % 50], 0.6, rng) for i in range(5000)])
    queries = np.stack([near(history[i], 0.9, rng) for i in rng.integers(0, 5000, 200)] + list(unit(rng, 200, 64)))
    exact = SimilarityIndex(64, exact_limit=None)
    exact.add(history)
    approx = SimilarityIndex(64, exact_limit=2000, nlist=32, nprobe=4, pca_dim=32)
    approx.add(history[:1500])
    assert not approx.approximate
    approx.add(history[1500:])
    assert approx.approximate and len(approx) == 5000
    e_sim, e_id = exact.search(queries)
    a_sim, a_id = approx.search(queries)
    assert np.mean((e_sim > 0.875) == (a_sim > 0.875)) >= 0.99
    assert np.mean(e_id[:200] == a_id[:200]) >= 0.99
    same = e_id[:200] == a_id[:200]
    assert np.allclose(e_sim[:200][same], a_sim[:200][same], atol=1e-5)  # scanned cells are exact
    ids = approx.search(history[4990:])[1]  # ids continue across the switch to IVF
    assert ids.tolist() == list(range(4990, 5000))


def test_empty_index_and_dimension_errors() -> None:
    index = SimilarityIndex(8)
    sim, ids = index.search(np.ones((2, 8), dtype=np.float32))
    assert sim.tolist() == [-1.0, -1.0] and ids.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="size 8"):
        index.add(np.ones((1, 4), dtype=np.float32))


def test_spread_counts_questions_with_an_earlier_near_duplicate() -> None:
    rng = np.random.default_rng(3)
    a, b, c = unit(rng, 3, dim=256)  # random unit vectors in 256-d: pairwise cosine near 0
    vectors = np.stack([a, b, near(a, 0.95, rng), c, near(b, 0.80, rng), c])
    # the 3rd (0.95 to the 1st) and the 6th (a copy of the 4th) have an earlier near-duplicate; 0.80 does not count
    got = spread(vectors, threshold=0.875, block=4)  # blocks smaller than the set: the same as one block
    assert got["questions"] == 6 and got["distinct_rate"] == round(4 / 6, 4)
    nearest = [0.95, 0.80, 0.95, 1.0, 0.80, 1.0]
    assert abs(got["mean_nearest"] - sum(nearest) / 6) < 0.02
    assert spread(vectors, threshold=0.875) == got
    assert spread(vectors[:1]) == {"questions": 1, "distinct_rate": 1.0, "mean_nearest": 0.0}
