"""Decontamination: are generated questions copies or paraphrases of evaluation questions?

A model that writes its own training data may reproduce benchmark questions it memorised; training on them
would inflate the very scores that show the gain. Two checks, both against every question of the chosen
evaluation sets (:mod:`crescent_distilabel.eval_data`):

- word n-gram containment: the share of a generated question's word n-grams (lower-cased, punctuation
  stripped) that occur in one benchmark question; catches copies and light edits.
- embedding similarity: cosine of sentence embeddings (the diversification model); catches paraphrases.

A question is contaminated when either score reaches its threshold. Plain functions: the embedding model is
passed in as a callable so the logic is tested without one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

NGRAM_SIZE = 8
NGRAM_THRESHOLD = 0.5
SIMILARITY_THRESHOLD = 0.9
_WORD = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)*")

Embed = Callable[[list[str]], np.ndarray]


def words(text: str) -> list[str]:
    """Lower-cased word tokens; numbers keep their decimal point or thousands comma."""
    return _WORD.findall(text.lower())


def ngrams(text: str, n: int = NGRAM_SIZE) -> set[tuple[str, ...]]:
    """The word n-grams of a text; a text shorter than ``n`` words is one n-gram of all its words."""
    tokens = words(text)
    if not tokens:
        return set()
    if len(tokens) < n:
        return {tuple(tokens)}
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass
class Match:
    """The benchmark question closest to one generated question, by each measure."""

    index: int
    benchmark: str
    benchmark_index: int
    benchmark_question: str
    ngram_overlap: float
    similarity: float | None
    reasons: list[str] = field(default_factory=list)


@dataclass
class Report:
    """What a decontamination pass found; ``to_dict`` is what ``decontamination.json`` and the card hold."""

    checked: int
    benchmarks: dict[str, int]
    ngram_size: int
    ngram_threshold: float
    similarity_threshold: float | None
    matches: list[Match]
    dropped: bool = False

    @property
    def contaminated(self) -> int:
        return len(self.matches)

    @property
    def rate(self) -> float:
        return self.contaminated / self.checked if self.checked else 0.0

    def by_benchmark(self) -> dict[str, int]:
        counts = dict.fromkeys(self.benchmarks, 0)
        for m in self.matches:
            counts[m.benchmark] += 1
        return counts

    def to_dict(self) -> dict:
        return {
            "checked": self.checked,
            "contaminated": self.contaminated,
            "rate": round(self.rate, 6),
            "benchmarks": self.benchmarks,
            "by_benchmark": self.by_benchmark(),
            "ngram_size": self.ngram_size,
            "ngram_threshold": self.ngram_threshold,
            "similarity_threshold": self.similarity_threshold,
            "dropped": self.dropped,
            "matches": [asdict(m) for m in self.matches],
        }


class NgramIndex:
    """Benchmark questions indexed by word n-gram, for containment of a query's n-grams in any one of them."""

    def __init__(self, questions: Sequence[str], n: int = NGRAM_SIZE) -> None:
        self.n = n
        self.postings: dict[tuple[str, ...], list[int]] = {}
        for i, q in enumerate(questions):
            for gram in ngrams(q, n):
                self.postings.setdefault(gram, []).append(i)

    def best(self, text: str) -> tuple[int, float]:
        """(benchmark index, containment) of the benchmark question sharing most of ``text``'s n-grams."""
        grams = ngrams(text, self.n)
        if not grams:
            return -1, 0.0
        hits: dict[int, int] = {}
        for gram in grams:
            for i in self.postings.get(gram, ()):
                hits[i] = hits.get(i, 0) + 1
        if not hits:
            return -1, 0.0
        i = max(hits, key=lambda j: (hits[j], -j))
        return i, hits[i] / len(grams)


def find_contamination(
    questions: Sequence[str],
    benchmarks: dict[str, Sequence[str]],
    *,
    embed: Embed | None = None,
    benchmark_embeddings: dict[str, np.ndarray] | None = None,
    ngram_size: int = NGRAM_SIZE,
    ngram_threshold: float = NGRAM_THRESHOLD,
    similarity_threshold: float = SIMILARITY_THRESHOLD,
) -> Report:
    """Check every generated question against every benchmark question.

    Args:
        questions: the generated questions.
        benchmarks: benchmark name -> its questions.
        embed: texts -> unit-normalised embeddings; None skips the paraphrase check.
        benchmark_embeddings: precomputed (cached) embeddings of each benchmark's questions, same order.
        ngram_size: words per n-gram.
        ngram_threshold: containment at or above which a question is a copy.
        similarity_threshold: cosine at or above which a question is a paraphrase.
    """
    query_vecs = embed(list(questions)) if embed is not None and questions else None
    best: dict[int, Match] = {}
    for name, bench in benchmarks.items():
        index = NgramIndex(bench, ngram_size)
        sims = idx = None
        if query_vecs is not None and len(bench):
            vecs = (benchmark_embeddings or {}).get(name)
            if vecs is None:
                vecs = embed(list(bench))  # type: ignore[misc]
            scores = np.asarray(query_vecs, dtype=np.float32) @ np.asarray(vecs, dtype=np.float32).T
            idx = scores.argmax(axis=1)
            sims = scores[np.arange(len(questions)), idx]
        for q_i, question in enumerate(questions):
            b_i, overlap = index.best(question)
            sim = float(sims[q_i]) if sims is not None else None
            reasons = []
            if overlap >= ngram_threshold:
                reasons.append("ngram")
            if sim is not None and sim >= similarity_threshold:
                reasons.append("embedding")
            if not reasons:
                continue
            if "ngram" not in reasons:
                b_i = int(idx[q_i])  # type: ignore[index]
            match = Match(
                q_i, name, b_i, bench[b_i], round(overlap, 4), None if sim is None else round(sim, 4), reasons
            )
            old = best.get(q_i)
            if old is None or (match.ngram_overlap, match.similarity or 0) > (old.ngram_overlap, old.similarity or 0):
                best[q_i] = match
    return Report(
        checked=len(questions),
        benchmarks={name: len(b) for name, b in benchmarks.items()},
        ngram_size=ngram_size,
        ngram_threshold=ngram_threshold,
        similarity_threshold=similarity_threshold if embed is not None else None,
        matches=[best[i] for i in sorted(best)],
    )


def _cached_embeddings(embedder, model: str, name: str, texts: list[str]) -> np.ndarray:
    """A benchmark's embeddings, computed once per model and benchmark text and kept in the cache dir."""
    import hashlib

    from crescent_distilabel.backends import cache_dir

    digest = hashlib.sha256("\n".join([model, *texts]).encode()).hexdigest()[:16]
    path = cache_dir() / "benchmark-embeddings" / f"{name}-{digest}.npy"
    if path.is_file():
        return np.load(path)
    vectors = embedder.encode_array(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp.npy")  # one per process: test workers share the cache
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors


def decontaminate_run(
    output_dir: str,
    benchmarks: Sequence[str] = ("gsm8k", "svamp", "asdiv", "math500"),
    *,
    drop: bool = False,
    config: str = "default",
    embedding_model: str | None = None,
    ngram_size: int = NGRAM_SIZE,
    ngram_threshold: float = NGRAM_THRESHOLD,
    similarity_threshold: float | None = SIMILARITY_THRESHOLD,
) -> Report:
    """Check a finished run's kept questions against evaluation sets; write ``decontamination.json`` and the card.

    Args:
        output_dir: a run directory (``crescent generate``).
        benchmarks: names from :data:`crescent_distilabel.eval_data.BENCHMARKS`.
        drop: move contaminated pairs out of ``config`` into the ``contaminated`` config (nothing is deleted).
        config: which config to check (``default``, or ``reviewed`` after a review).
        embedding_model: default: the run's diversification model.
        ngram_size: words per n-gram.
        ngram_threshold: n-gram containment that marks a copy.
        similarity_threshold: cosine that marks a paraphrase; None: n-grams only (no embedding model loaded).
    """
    from crescent_distilabel.eval_data import load_questions
    from crescent_distilabel.run_dir import DECONTAMINATION, RunDir

    run = RunDir(output_dir)
    data = run.load(config)
    questions = list(data["question"])
    bench_questions = {name: load_questions(name) for name in benchmarks}
    embed = cached = None
    if similarity_threshold is not None:
        from crescent_distilabel.embeddings import SentenceEmbeddings

        model = embedding_model or run.recipe().diversify.embedding_model
        embedder = SentenceEmbeddings(model=model)
        embedder.load()
        embed = embedder.encode_array
        cached = {name: _cached_embeddings(embedder, model, name, qs) for name, qs in bench_questions.items()}
    report = find_contamination(
        questions,
        bench_questions,
        embed=embed,
        benchmark_embeddings=cached,
        ngram_size=ngram_size,
        ngram_threshold=ngram_threshold,
        similarity_threshold=similarity_threshold if similarity_threshold is not None else 2.0,
    )
    if similarity_threshold is None:
        report.similarity_threshold = None
    if drop and report.matches:
        bad = {m.index for m in report.matches}
        reasons = {m.index: f"contaminated:{m.benchmark}" for m in report.matches}
        order = sorted(bad)
        removed = data.select(order).map(lambda row, j: {"drop_reason": reasons[order[j]]}, with_indices=True)
        run.save("contaminated", removed)
        run.save(config, data.select([i for i in range(len(data)) if i not in bad]))
        if config == "default" and "preference" in run.configs():  # its pairs come from the same questions
            moved = set(removed["question"])
            pairs = run.load("preference", in_memory=True)
            run.save("preference", pairs.filter(lambda q: q not in moved, input_columns="question"))
        report.dropped = True
    run.write_report(DECONTAMINATION, {"config": config, **report.to_dict()})
    run.write_card()
    return report
