"""Resume cost: how long the steps take to skip 100,000 generations already in the progress store.

Fills a store with 100,000 finished generations (answer-sized texts, k = 3 samples each), then asks for all
of them again through the same code path the steps use (``steps._llm.generate``, batches of 100 prompts)
with an LLM that is never loaded: any generation not found would fail the run. Target: <= 5 s.

    python benchmarks/bench_resume.py [--generations 100000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from crescent_distilabel.llms import LlamaCppChatLLM, derive_seed
from crescent_distilabel.steps._llm import generate
from crescent_distilabel.store import ProgressStore, generation_key

CHAIN = "Step 1: 12 apples cost 12 * 0.5 = 6 dollars. Step 2: she pays 10 - 6 = 4 dollars back. " * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generations", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    llm = LlamaCppChatLLM(
        model="smollm2", generation_kwargs={"max_new_tokens": 2048, "temperature": 1.0, "top_p": 1.0}
    )
    kwargs = llm.get_generation_kwargs()
    prompts = [
        f"Question {i}: Tom buys {i} apples at 50 cents each. How much does he pay?" for i in range(args.generations)
    ]
    seeds = [derive_seed(42, "answer", p) for p in prompts]
    with tempfile.TemporaryDirectory() as tmp:
        store = ProgressStore(Path(tmp) / "progress.sqlite")
        start = time.perf_counter()
        rows = [
            (generation_key(llm.model_name, p, 3, kwargs, s), "answer", f'["{CHAIN}", "{CHAIN}", "{CHAIN}"]',
             "[180, 180, 180]", "[false, false, false]", 0.0)
            for p, s in zip(prompts, seeds)
        ]  # fmt: skip
        with store._db:
            store._db.execute("BEGIN")
            columns = "key, stage, texts, tokens, truncated, created"
            store._db.executemany(f"INSERT INTO generations ({columns}) VALUES (?, ?, ?, ?, ?, ?)", rows)
        fill = time.perf_counter() - start
        size = (Path(tmp) / "progress.sqlite").stat().st_size + (Path(tmp) / "progress.sqlite-wal").stat().st_size

        start = time.perf_counter()
        found = 0
        for b in range(0, len(prompts), args.batch):
            out = generate(llm, prompts[b : b + args.batch], 3, seeds[b : b + args.batch], store=store, stage="answer")
            found += sum(1 for samples in out if samples.texts[0] == CHAIN)
        skip = time.perf_counter() - start
        store.close()
    assert found == args.generations, found
    print(f"store: {args.generations:,} generations x 3 samples, {size / 2**20:.0f} MiB, filled in {fill:.1f} s")
    print(
        f"skipping them on resume: {skip:.2f} s ({args.generations / skip:,.0f} generations/s); "
        f"target <= 5 s: {'met' if skip <= 5 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
