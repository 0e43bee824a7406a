"""Answer extraction + normalisation + vote throughput on one core, and its ratio to math-verify alone.

Chains: the 7,473 GSM8K train solutions in three styles (``#### N``, "The answer is N.", ``\\boxed{N}``),
voted in groups of k = 3. Target: >= 50,000 answers/s.

    python benchmarks/bench_answers.py
"""

from __future__ import annotations

import re
import time

from _data import gsm8k

from crescent_distilabel.answers import normalize_answer
from crescent_distilabel.voting import vote_on_chains


def chains() -> tuple[list[str], list[str]]:
    rows = gsm8k("train")
    texts, gold = [], []
    for row in rows:
        body, answer = row["answer"].rsplit("####", 1)
        answer = answer.strip()
        gold.append(answer.replace(",", ""))
        body = re.sub(r"<<.*?>>", "", body).strip()
        texts += [f"{body}\n#### {answer}", f"{body}\nThe answer is {answer}.", f"{body}\nSo $\\boxed{{{answer}}}$"]
    return texts, gold


def main() -> None:
    texts, gold = chains()
    normalize_answer.cache_clear()
    start = time.perf_counter()
    votes = [vote_on_chains(texts[i : i + 3])[0] for i in range(0, len(texts), 3)]
    ours = len(texts) / (time.perf_counter() - start)
    correct = sum(v.answer == g for v, g in zip(votes, gold))

    import crescent_distilabel.voting as voting

    voting.normalize_answer = normalize_answer.__wrapped__  # no memo: every answer parsed afresh
    start = time.perf_counter()
    for i in range(0, len(texts), 3):
        vote_on_chains(texts[i : i + 3])
    uncached = len(texts) / (time.perf_counter() - start)
    voting.normalize_answer = normalize_answer

    from math_verify import parse

    sample = texts[:1500]
    start = time.perf_counter()
    for text in sample:
        parse(text, parsing_timeout=None)
    theirs = len(sample) / (time.perf_counter() - start)

    print(
        f"answers: {len(texts)} chains, {len(votes)} votes (k=3); all three styles agree with GSM8K gold: "
        f"{correct}/{len(votes)}"
    )
    print(
        f"extract+normalise+vote: {ours:,.0f} answers/s (target >= 50,000: {'met' if ours >= 50_000 else 'NOT met'})"
    )
    print(f"  without the normalisation memo: {uncached:,.0f} answers/s")
    print(f"math-verify parse alone: {theirs:,.0f} answers/s")
    print(f"ratio ours / math-verify: {ours / theirs:.1f}x")


if __name__ == "__main__":
    main()
