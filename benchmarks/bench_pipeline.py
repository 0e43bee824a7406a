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

from datasets import load_from_disk

from crescent_distilabel import load_recipe, run_recipe
from crescent_distilabel.backends import build_llm
from crescent_distilabel.llms import derive_seed
from crescent_distilabel.steps._llm import generate

DEFAULTS = [
    "bait.num_calls=6",
    "bait.samples_per_call=5",
    "sampling.max_new_tokens=192",
    "consensus.k=3",
    "seed=3",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", nargs="?")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(args.recipe, [*DEFAULTS, *args.overrides, f"output_dir={tmp}/run"])
        result = run_recipe(recipe, overwrite=True)
        s = result.summary
        rows = (
            load_from_disk(f"{tmp}/run/default/train").to_list() + load_from_disk(f"{tmp}/run/dropped/train").to_list()
        )

        llm = build_llm(recipe.question_model, recipe.sampling, seed=recipe.seed)
        llm.load()
        seed, tokens = recipe.seed, 0
        start = time.perf_counter()
        for call in range(recipe.bait.num_calls):
            out = generate(llm, [recipe.bait.prompt], recipe.bait.samples_per_call, [derive_seed(seed, "bait", call)])
            tokens += sum(out[0].tokens)
        for row in rows:
            for round_ in range(row["rewrites"] or 0):  # approximate: the neighbour of each round is not kept
                prompt = recipe.diversify.rewrite_prompt.format(
                    question=row["original_question"], neighbour=row["nearest_question"] or ""
                )
                out = generate(llm, [prompt], 1, [derive_seed(seed, "rewrite", row["original_question"], round_)])
                tokens += sum(out[0].tokens)
            if row["chains"]:
                prompt = recipe.consensus.answer_prompt.format(question=row["question"])
                out = generate(
                    llm,
                    [prompt],
                    recipe.consensus.k,
                    [derive_seed(seed, "answer", row["question"], row["bait_call"], row["bait_sample"])],
                )
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
