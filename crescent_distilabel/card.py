"""The dataset card: what a CRESCENT dataset is, how it was made, and the numbers of the run."""

from __future__ import annotations

from collections import Counter
from typing import Any

import yaml

from crescent_distilabel.citation import CITATION
from crescent_distilabel.recipe import Recipe


def agreement_histogram(agreements: list[float | None]) -> dict[str, int]:
    """Kept questions per agreement level, e.g. {"2/3": 10, "3/3": 4} (levels as fractions of k)."""
    counts = Counter(round(a, 4) for a in agreements if a is not None)
    return {f"{a:.2f}": n for a, n in sorted(counts.items())}


def dataset_card(recipe: Recipe, summary: dict[str, Any], kept_agreements: list[float | None]) -> str:
    """A Hub dataset card (README.md) for a run's Distiset."""
    meta = {
        "tags": ["synthetic", "distilabel", "crescent", "self-improvement", "math"],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "default/train/*.arrow"}]},
            {"config_name": "dropped", "data_files": [{"split": "train", "path": "dropped/train/*.arrow"}]},
        ],
    }
    q = recipe.question_model
    a = recipe.answer_model or q
    d, c = recipe.diversify, recipe.consensus
    s = recipe.sampling
    rows = {
        "preset": recipe.preset,
        "question model": f"{q.backend}: {q.model}",
        "answer model": f"{a.backend}: {a.model}",
        "sampling": f"temperature {s.temperature}, top_p {s.top_p}, max_new_tokens {s.max_new_tokens}",
        "bait calls x samples per call": f"{recipe.bait.num_calls} x {recipe.bait.samples_per_call}",
        "diversification": "on" if d.enabled else "off (ablation)",
        "embedding model": d.embedding_model,
        "thresholds (within batch / history)": f"cosine >= {d.within_batch_threshold} / > {d.history_threshold}",
        "rewrites": f"up to {d.max_rewrites}, re-checked: {d.recheck_rewrites}",
        "consensus": "on" if c.enabled else "off (ablation, k = 1)",
        "k": c.k if c.enabled else 1,
        "min_agreement": c.min_agreement,
        "ties / no answer": f"{c.tie_policy} / {c.no_answer_policy}",
    }
    settings = "\n".join(f"| {key} | {value} |" for key, value in rows.items())
    dropped = "\n".join(f"| dropped: {reason} | {n} |" for reason, n in summary["dropped"].items())
    histogram = "\n".join(f"| {level} | {n} |" for level, n in agreement_histogram(kept_agreements).items())
    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {recipe.name}: a CRESCENT self-generated dataset

Questions and answers written by a chat model with no seed data, teacher or labels, using CRESCENT
([arXiv 2502.13441](https://arxiv.org/abs/2502.13441)): bait prompting, rejection-sampling
self-deduplication, and majority-vote consensus. Made with
[crescent-distilabel](https://github.com/crescent-distilabel/crescent-distilabel) on distilabel.

- `default`: the kept question-answer pairs; `messages` is the SFT view (user question, assistant chain).
- `dropped`: every other sample, with its `drop_reason`.

## CRESCENT settings

Bait prompt (verbatim):

```text
{recipe.bait.prompt}
```

| setting | value |
|---|---|
{settings}
| seed | {recipe.seed} |

## Counts per stage

| stage | count |
|---|---|
| raw samples | {summary["raw_samples"]} |
| cleaned questions | {summary["cleaned"]} |
| accepted after diversification | {summary["accepted"]} |
| kept after consensus | {summary["kept"]} |
| rewrites | {summary["rewrites"]} |
{dropped}

Agreement of kept answers (winner votes / k):

| agreement | questions |
|---|---|
{histogram}

Token usage: {summary["question_tokens"]} question, {summary["rewrite_tokens"]} rewrite and
{summary["answer_tokens"]} answer tokens; {summary["wall_time_s"]:.0f} s wall time.

## Citation

```bibtex
{CITATION}
```
"""
