"""End-to-end tokens/s through the CRESCENT pipeline versus the same backend's raw tokens/s on the same prompts.

1. Runs a recipe through the distilabel pipeline (embedded llama.cpp SmolLM2 by default) and takes its
   output tokens / wall time (model loading and start-up included).
2. Replays every generation of that run straight on the backend, in one process, with the same prompts and
   seeds (so the same texts and token counts; rewrites approximately, as their per-round neighbours are not
   kept), and takes raw output tokens / time.
Target: ratio >= 0.9.

    python benchmarks/bench_pipeline.py [--set bait.num_calls=8 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import load_from_disk

from crescent_distilabel import load_recipe, run_recipe
from crescent_distilabel.backends import build_llm
from crescent_distilabel.llms import derive_seed
from crescent_distilabel.recipe import Recipe
from crescent_distilabel.steps._llm import generate

DEFAULTS = [
    "bait.num_calls=6",
    "bait.samples_per_call=5",
    "sampling.max_new_tokens=192",
    "consensus.k=3",
    "seed=3",
]


@dataclass(frozen=True)
class Request:
    """One generation the pipeline made; requests with equal ``batch`` were in flight together."""

    stage: str
    prompt: str
    n: int
    seed: int
    batch: tuple[Any, ...]


def run_rows(output_dir: str | Path) -> list[dict[str, Any]]:
    """Every row of a finished run (kept and dropped), in bait order, as the steps saw them."""
    rows = (
        load_from_disk(f"{output_dir}/default/train").to_list()
        + load_from_disk(f"{output_dir}/dropped/train").to_list()
    )
    return sorted(rows, key=lambda row: (row["bait_call"], row["bait_sample"]))


def replayed_requests(recipe: Recipe, rows: list[dict[str, Any]]) -> list[Request]:
    """The run's generations in pipeline order, grouped into the batches the steps sent them in.

    Bait and answer requests are exact (same prompts and seeds); rewrites are approximate, as only a row's last
    neighbour is kept (every round is replayed with it and the original question).
    """
    seed, bait, con = recipe.seed, recipe.bait, recipe.consensus
    calls_per_batch = max(1, 50 // bait.samples_per_call)  # as build_pipeline sizes the bait batches
    div_batch = recipe.diversify.batch_size or bait.samples_per_call
    requests = []
    for call in range(bait.num_calls):
        seed_ = derive_seed(seed, "bait", call)
        requests.append(Request("bait", bait.prompt, bait.samples_per_call, seed_, ("bait", call // calls_per_batch)))
    rewrites = []
    for pos, row in enumerate(rows):
        for round_ in range(row["rewrites"] or 0):
            prompt = recipe.diversify.rewrite_prompt.format(
                question=row["original_question"], neighbour=row["nearest_question"] or ""
            )
            seed_ = derive_seed(seed, "rewrite", row["original_question"], round_)
            rewrites.append(Request("rewrite", prompt, 1, seed_, ("rewrite", pos // div_batch, round_)))
    requests += sorted(rewrites, key=lambda r: r.batch)
    k = con.k if con.enabled else 1
    for pos, row in enumerate(rows):
        if row["chains"]:
            prompt = con.answer_prompt.format(question=row["question"])
            seed_ = derive_seed(seed, "answer", row["question"], row["bait_call"], row["bait_sample"])
            requests.append(Request("answer", prompt, k, seed_, ("answer", pos // con.batch_size)))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(args.recipe, [*DEFAULTS, *args.overrides, f"output_dir={tmp}/run"])
        result = run_recipe(recipe, overwrite=True)
        s = result.summary
        requests = replayed_requests(recipe, run_rows(f"{tmp}/run"))

        llm = build_llm(recipe.question_model, recipe.sampling, seed=recipe.seed)
        llm.load()
        tokens = 0
        start = time.perf_counter()
        for request in requests:  # one at a time, as the in-process backend runs them
            out = generate(llm, [request.prompt], request.n, [request.seed])
            tokens += sum(out[0].tokens)
        raw_time = time.perf_counter() - start

    pipeline_rate = s.tokens / s.wall_time_s
    raw_rate = tokens / raw_time
    print(
        f"pipeline: {s.tokens} output tokens in {s.wall_time_s:.1f} s = {pipeline_rate:.1f} tok/s "
        f"({s.raw_samples} raw samples, {s.accepted} accepted, {s.kept} kept, {s.rewrites} rewrites)"
    )
    print(f"raw backend, same prompts: {tokens} output tokens in {raw_time:.1f} s = {raw_rate:.1f} tok/s")
    ratio = pipeline_rate / raw_rate
    print(f"ratio pipeline / raw: {ratio:.2f} (target >= 0.9: {'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
