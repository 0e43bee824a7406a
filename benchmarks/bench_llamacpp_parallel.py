"""Embedded llama.cpp: output tokens/s of one-at-a-time decoding vs continuous batching (``parallel``).

The workload is the consensus step's: GSM8K train questions in the recipe's answer prompt, k samples each, the
paper's sampling (temperature 1.0, top_p 1.0), as one ``generate`` call of the LLM the recipe builds. Printed:
tokens/s for ``parallel: 1`` (llama-cpp-python's ``create_chat_completion``, one sequence at a time) and for each
``--parallel`` value, and their ratio to the first. Different batch shapes draw different (equally likely)
chains, so the token counts differ a little; tokens/s is what compares.

    python benchmarks/bench_llamacpp_parallel.py                     # qwen2.5-coder-0.5b, 2 cores: ~10 min
    python benchmarks/bench_llamacpp_parallel.py --model smollm2 --questions 4
"""

from __future__ import annotations

import argparse
import os
import time

from _data import gsm8k

from crescent_distilabel.backends import build_llm
from crescent_distilabel.llms import derive_seed
from crescent_distilabel.prompts import ANSWER_TEMPLATE
from crescent_distilabel.recipe import ModelConfig, SamplingConfig


def run(model: str, parallel: int, questions: list[str], k: int, max_tokens: int, threads: int) -> dict:
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=max_tokens)
    config = ModelConfig(model=model, n_ctx=max_tokens + 512, parallel=parallel, n_threads=threads)
    llm = build_llm(config, sampling, seed=0)
    llm.load()
    chats = [[{"role": "user", "content": ANSWER_TEMPLATE.format(question=q)}] for q in questions]
    seeds = [derive_seed(0, "bench_llamacpp_parallel", q) for q in questions]
    start = time.perf_counter()
    outputs = llm.generate(chats, num_generations=k, seeds=seeds, **llm.get_generation_kwargs())
    wall = time.perf_counter() - start
    llm.unload()
    tokens = sum(sum(o["statistics"]["output_tokens"]) for o in outputs)
    truncated = sum(sum(o["truncated"]) for o in outputs)
    return {"parallel": parallel, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall, "truncated": truncated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="a llama.cpp model (alias, .gguf)")
    parser.add_argument("--questions", type=int, default=6, help="GSM8K train questions (the first n)")
    parser.add_argument("--k", type=int, default=3, help="samples per question")
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--parallel", type=int, nargs="+", default=[4, 18])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    questions = [row["question"] for row in gsm8k("train")[: args.questions]]
    jobs = args.questions * args.k
    print(f"{args.model}: {args.questions} questions x k={args.k} ({jobs} chains), max {args.max_tokens} tokens")
    base = None
    for parallel in [1, *args.parallel]:
        r = run(args.model, parallel, questions, args.k, args.max_tokens, args.threads)
        base = base or r["tok_s"]
        print(
            f"parallel {parallel:>3}: {r['tokens']:>6} tokens in {r['wall_s']:7.1f} s = {r['tok_s']:6.1f} tok/s "
            f"({r['tok_s'] / base:.2f}x parallel 1; {r['truncated']} of {jobs} at max tokens)",
            flush=True,
        )


if __name__ == "__main__":
    main()
