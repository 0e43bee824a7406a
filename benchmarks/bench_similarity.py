"""Diversification search speed: questions/s against a growing history of 10k, 100k and 1M accepted questions,
and agreement with exact search on which questions are near-duplicates. Also MiniLM embedding speed.

Embeddings at a million questions cannot be computed here (MiniLM runs ~100 questions/s on 2 cores), so the
history is synthetic but shaped like real data: real all-MiniLM-L6-v2 embeddings of the 7,473 GSM8K train
questions, perturbed with noise drawn from their own covariance. The query stream mixes 30% planted
near-duplicates of accepted questions (cosine 0.80-0.99) with 70% fresh questions, checked in batches of 100
(one bait call) exactly as the Diversify step does (search, then in-batch check, then add the accepted).
"search" is the history search alone; "accept" the whole per-batch check including adding accepted questions.

    python benchmarks/bench_similarity.py [--sizes 10000 100000 1000000] [--queries 10000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before numpy/FAISS load OpenMP (see similarity.py)

from _data import gsm8k

from crescent_distilabel.embeddings import SentenceEmbeddings
from crescent_distilabel.similarity import HISTORY_THRESHOLD, SimilarityIndex, accept_against_history

CACHE = Path(__file__).parent / ".cache" / "gsm8k_train_minilm.npy"


def real_embeddings() -> np.ndarray:
    """MiniLM embeddings of GSM8K train, computed once (and timed) then cached."""
    questions = [row["question"] for row in gsm8k("train")]
    model = SentenceEmbeddings()
    model.load()
    start = time.perf_counter()
    for q in questions[:200]:
        model.encode_array([q])
    single = 200 / (time.perf_counter() - start)
    if CACHE.exists():
        batched_sample = questions[:2000]
        start = time.perf_counter()
        model.encode_array(batched_sample)
        batched = len(batched_sample) / (time.perf_counter() - start)
        vectors = np.load(CACHE)
    else:
        start = time.perf_counter()
        vectors = model.encode_array(questions)
        batched = len(questions) / (time.perf_counter() - start)
        CACHE.parent.mkdir(exist_ok=True)
        np.save(CACHE, vectors)
    print(
        f"embedding (all-MiniLM-L6-v2, CPU): {batched:,.0f} questions/s batched (64), {single:,.0f}/s one at a time"
        f" ({batched / single:.1f}x)"
    )
    return vectors


class Synthetic:
    """Vectors around real embeddings, with noise from the real embeddings' covariance."""

    def __init__(self, real: np.ndarray, seed: int = 0) -> None:
        self.real = real.astype(np.float32)
        self.rng = np.random.default_rng(seed)
        eigvals, eigvecs = np.linalg.eigh(np.cov((real - real.mean(0)).T))
        self.noise = (eigvecs * np.sqrt(np.clip(eigvals, 0, None))).astype(np.float32)

    def fresh(self, n: int) -> np.ndarray:
        base = self.real[self.rng.integers(0, len(self.real), n)]
        x = base + self.rng.standard_normal((n, base.shape[1]), dtype=np.float32) @ self.noise.T
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def near(self, v: np.ndarray, lo: float, hi: float) -> np.ndarray:
        noise = self.rng.standard_normal(v.shape, dtype=np.float32)
        noise -= (noise * v).sum(1, keepdims=True) * v
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        cos = self.rng.uniform(lo, hi, (len(v), 1)).astype(np.float32)
        return cos * v + np.sqrt(1 - cos**2) * noise


def stream(index: SimilarityIndex, queries: np.ndarray, batch: int = 100) -> tuple[list[bool], float]:
    start = time.perf_counter()
    accepted = [
        d.accepted
        for s in range(0, len(queries), batch)
        for d in accept_against_history(queries[s : s + batch], index)
    ]
    return accepted, len(queries) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--nprobe", type=int, default=4, help="IVF cells scanned per query")
    args = parser.parse_args()

    synth = Synthetic(real_embeddings())
    print(f"threshold: cosine > {HISTORY_THRESHOLD}; {args.queries} queries in batches of 100; nprobe {args.nprobe}")
    print(
        f"{'history':>9} | {'index':>5} | {'search q/s':>10} | {'accept q/s':>10} | {'exact q/s':>9} | "
        f"{'speed-up':>8} | {'agreement':>9} | {'dup recall':>10} | dup rate"
    )
    for size in args.sizes:
        history = np.vstack([synth.fresh(min(100_000, size - s)) for s in range(0, size, 100_000)])
        planted = synth.near(history[synth.rng.integers(0, size, args.queries * 3 // 10)], 0.80, 0.99)
        queries = np.vstack([planted, synth.fresh(args.queries - len(planted))])[synth.rng.permutation(args.queries)]
        ours = SimilarityIndex(history.shape[1], nprobe=args.nprobe)
        for s in range(0, size, 100_000):
            ours.add(history[s : s + 100_000])
        start = time.perf_counter()
        for s in range(0, len(queries), 100):
            ours.search(queries[s : s + 100])
        search_rate = len(queries) / (time.perf_counter() - start)
        got, rate = stream(ours, queries)
        exact = SimilarityIndex(history.shape[1], exact_limit=None)
        exact.add(history)
        want, exact_rate = stream(exact, queries)
        got_dup, want_dup = ~np.array(got), ~np.array(want)
        agreement = np.mean(got_dup == want_dup)
        recall = np.mean(got_dup[want_dup])
        print(
            f"{size:>9,} | {'IVF' if ours.approximate else 'exact':>5} | {search_rate:>10,.0f} | {rate:>10,.0f} | "
            f"{exact_rate:>9,.0f} | {rate / exact_rate:>7.1f}x | {agreement:>9.4f} | {recall:>10.4f} | "
            f"{want_dup.mean():.3f}"
        )
        del history, ours, exact


if __name__ == "__main__":
    main()
