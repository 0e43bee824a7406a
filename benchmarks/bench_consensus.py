"""Does the vote pick right answers? Single-sample vs majority@k accuracy, and accuracy per agreement level.

On N GSM8K *train* questions with gold answers (the test split stays for evaluation), the model answers each
question k times with the recipe's answer prompt and sampling (the paper's: temperature 1.0, top_p 1.0); answers
are read and voted exactly as the consensus step does. Printed:

- single-sample accuracy (the mean over all k samples) and majority@3, majority@k accuracy;
- accuracy per agreement level (k/k, (k-1)/k, ...), with 95% Wilson intervals: the calibration table that
  ``consensus.min_agreement`` is tuned with;
- per ``min_agreement``: the share of questions kept and the accuracy of the kept pairs.

Every answer is stored as it arrives (``--store``), so an interrupted run continues where it stopped.
``--save RUN_DIR`` adds the tables to a run made with the same model and answer prompt, and to its dataset card.

    python benchmarks/bench_consensus.py --n 100 --k 5 --parallel 20   # qwen2.5-coder-0.5b, 2 cores: ~40 min
    python benchmarks/bench_consensus.py --n 10 --k 3 --model smollm2   # a smoke run, not a figure
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from _data import gsm8k
from tqdm import tqdm

from crescent_distilabel.answers import extract_answer, normalize_answer
from crescent_distilabel.backends import build_llm
from crescent_distilabel.card import calibration_tables
from crescent_distilabel.llms import derive_seed
from crescent_distilabel.prompts import ANSWER_TEMPLATE
from crescent_distilabel.recipe import ModelConfig, SamplingConfig
from crescent_distilabel.run_dir import CALIBRATION, RunDir
from crescent_distilabel.steps._llm import generate
from crescent_distilabel.store import ProgressStore
from crescent_distilabel.voting import majority_vote


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound at small n and near 0 or 1, unlike p +- 2 se)."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def gold_key(row: dict) -> object:
    return normalize_answer(row["answer"].rsplit("####", 1)[1].strip())


def answer_all(rows: list[dict], args: argparse.Namespace) -> tuple[list[list[str | None]], list[list[bool]]]:
    """Each question's k chains, and which of them hit max tokens."""
    sampling = SamplingConfig(temperature=args.temperature, top_p=1.0, max_new_tokens=args.max_tokens)
    config = ModelConfig(model=args.model, n_ctx=args.max_tokens + 512, parallel=args.parallel)
    llm = build_llm(config, sampling, seed=args.seed)
    llm.load()
    store = ProgressStore(args.store)
    chains, truncated = [], []
    per_call = max(1, args.parallel // args.k)  # questions per call: enough chains to fill the slots
    with tqdm(total=len(rows), desc=f"answering (k={args.k})", unit="question") as bar:
        for start in range(0, len(rows), per_call):
            batch = rows[start : start + per_call]
            prompts = [ANSWER_TEMPLATE.format(question=row["question"]) for row in batch]
            seeds = [derive_seed(args.seed, "bench_consensus", row["question"]) for row in batch]
            for samples in generate(llm, prompts, args.k, seeds, store=store, stage="answer"):
                chains.append(samples.texts)
                truncated.append(samples.truncated)
            bar.update(len(batch))
    return chains, truncated


def report(rows: list[dict], chains: list[list[str | None]], k: int) -> dict:
    """The figures, with answers read and voted as the consensus step does."""
    gold = [gold_key(row) for row in rows]
    keys = [[normalize_answer(extract_answer(c)) for c in cs] for cs in chains]
    samples = [key == g for ks, g in zip(keys, gold) for key in ks]
    out: dict = {"n": len(rows), "k": k, "single_sample": _acc(sum(samples), len(samples))}
    for m in sorted({3, k}):
        votes = [majority_vote(ks[:m], min_agreement=0.0, tie_policy="first") for ks in keys]
        right = sum(v.kept and normalize_answer(v.answer) == g for v, g in zip(votes, gold))
        out[f"majority@{m}"] = _acc(right, len(rows))
    votes = [majority_vote(ks, min_agreement=0.0, tie_policy="first") for ks in keys]
    by_level: dict[int, list[bool]] = {}
    for vote, g in zip(votes, gold):
        top = max(vote.counts.values()) if vote.kept else 0
        by_level.setdefault(top, []).append(vote.kept and normalize_answer(vote.answer) == g)
    out["by_agreement"] = {f"{n}/{k}": _acc(sum(v), len(v)) for n, v in sorted(by_level.items(), reverse=True)}
    out["by_min_agreement"] = {}
    for need in range(k, 0, -1):
        kept = [ok for n, v in by_level.items() if n >= need for ok in v]
        out["by_min_agreement"][f">={need}/{k}"] = {"kept_share": round(len(kept) / len(rows), 3)} | _acc(
            sum(kept), len(kept)
        )
    return out


def markdown(result: dict) -> str:
    """The figures as the README shows them (the dataset card shows the same tables)."""
    head = (
        f"{result['model']}, {result['n']} GSM8K train questions, k = {result['k']}, temperature "
        f"{result['temperature']}, max {result['max_tokens']} tokens ({result['wall_s']:.0f} s)"
    )
    return head + "\n\n" + calibration_tables(result)


def _acc(hits: int, n: int) -> dict:
    low, high = wilson(hits, n)
    return {"accuracy": round(hits / n, 3) if n else None, "n": n, "ci95": [round(low, 3), round(high, 3)]}


def run_to_save(args: argparse.Namespace) -> RunDir | None:
    """The run ``--save`` names, checked before any work: its vote must be the one measured here."""
    if args.save is None:
        return None
    run = RunDir(args.save)
    recipe = run.recipe()
    answering = recipe.answer_model or recipe.question_model
    if recipe.consensus.answer_prompt != ANSWER_TEMPLATE or answering.model != args.model:
        prompt = "its own" if recipe.consensus.answer_prompt != ANSWER_TEMPLATE else "the default"
        raise SystemExit(
            f"--save {args.save}: that run answers with {answering.model!r} and {prompt} answer prompt; these "
            f"figures would be for {args.model!r} with the default prompt, so they would not describe its vote"
        )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b", help="a llama.cpp model (alias, .gguf)")
    parser.add_argument("--n", type=int, default=100, help="GSM8K train questions (the first n)")
    parser.add_argument("--k", type=int, default=5, help="samples per question")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--parallel", type=int, default=1, help="llama.cpp sequences decoded together (and k-chain questions per call)"
    )
    parser.add_argument("--store", type=Path, default=Path("outputs/bench_consensus.sqlite"), help="resume file")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--save", type=Path, metavar="RUN_DIR", help="add the figures to this run and its card")
    args = parser.parse_args()
    args.store.parent.mkdir(parents=True, exist_ok=True)
    run = run_to_save(args)
    rows = gsm8k("train")[: args.n]
    start = time.perf_counter()
    chains, truncated = answer_all(rows, args)
    settings = {"model": args.model, "temperature": args.temperature, "max_tokens": args.max_tokens}
    result = settings | {"parallel": args.parallel} | report(rows, chains, args.k)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["empty_samples"] = sum(1 for cs in chains for c in cs if not c)
    result["truncated_samples"] = sum(t for ts in truncated for t in ts)
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if run is not None:
        run.write_report(CALIBRATION, result)
        run.write_card()
        print(f"saved to {args.save / CALIBRATION} and the dataset card")


if __name__ == "__main__":
    main()
