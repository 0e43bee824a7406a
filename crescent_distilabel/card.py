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


CONFIG_DESCRIPTIONS = {
    "default": "the kept question-answer pairs; `messages` is the SFT view (user question, assistant chain), "
    "`prompt`/`completion` the same turns for `trl sft` (loss on the answer only).",
    "preference": "DPO pairs from the kept questions whose vote was not unanimous: `chosen` a chain with the "
    "winning answer, `rejected` one with a losing answer (or none), in TRL's conversational preference format; "
    "`margin` is the difference in votes. Chains cut off at max tokens are never used.",
    "dropped": "every other sample, with its `drop_reason` (the intermediate stages: raw and original questions, "
    "rewrites, all k chains and votes).",
    "reviewed": "the kept pairs after human review in Argilla: rejected ones removed, corrections applied, "
    "reviewer verdicts in the `review_*` columns.",
    "reviewed_preference": "the DPO pairs of the reviewed pairs: questions the reviewers rejected give none, and "
    "where they corrected the answer, chains reaching the correction are chosen over the vote's winner.",
    "review_rejected": "pairs the reviewers rejected, with their verdicts.",
    "contaminated": "kept pairs removed before training because they match an evaluation question "
    "(see Decontamination).",
}


def data_path(config: str, hub: bool) -> str:
    """Where a config's train split lives: Arrow shards on disk (``save_to_disk``) or Parquet on the Hub."""
    # data-*: save_to_disk's shards, not the cache-*.arrow files that a .map() on the loaded dataset may add
    return f"{config}/train-*.parquet" if hub else f"{config}/train/data-*.arrow"


def models_in(*datasets: Any) -> tuple[str | None, str | None]:
    """(question model, answer model) as recorded in the ``model_name``/``answer_model`` columns of the data."""
    found: dict[str, str | None] = {"model_name": None, "answer_model": None}
    for rows in datasets:
        for column in found:
            if found[column] is None and column in rows.column_names:
                found[column] = next((name for name in rows[column] if name), None)
    return found["model_name"], found["answer_model"]


def dataset_card(
    recipe: Recipe,
    summary: dict[str, Any],
    kept_agreements: list[float | None],
    *,
    configs: tuple[str, ...] = ("default", "dropped"),
    hub: bool = False,
    review: dict[str, Any] | None = None,
    decontamination: dict[str, Any] | None = None,
    diversity: dict[str, Any] | None = None,
    calibration: dict[str, Any] | None = None,
    models: tuple[str | None, str | None] = (None, None),
) -> str:
    """A Hub dataset card (README.md) for a run's Distiset: settings, counts, agreement, review, citation.

    Args:
        configs: the configs the card lists (in its YAML header, so ``load_dataset`` finds them).
        hub: paths for the Hub's Parquet layout instead of the local Arrow one.
        review: an :class:`~crescent_distilabel.review.AccuracyReport` as a dict, once reviews came back.
        decontamination: benchmark overlap results, when a decontamination was run.
        diversity: question diversity after bait and after diversification (benchmarks/bench_questions.py).
        calibration: how often the vote is right per agreement level, on gold-labelled questions
            (benchmarks/bench_consensus.py --save).
        models: the models that actually wrote the questions and answers (from the data), which differ from
            the recipe's when a Python caller passed its own LLMs.
    """
    meta = {
        "tags": ["synthetic", "distilabel", "crescent", "self-improvement", "math"],
        "configs": [
            {"config_name": c, "data_files": [{"split": "train", "path": data_path(c, hub)}]} for c in configs
        ],
    }
    listed = "\n".join(f"- `{c}`: {CONFIG_DESCRIPTIONS.get(c, '')}" for c in configs)
    q = recipe.question_model
    a = recipe.answer_model or q
    d, c = recipe.diversify, recipe.consensus
    s = recipe.sampling
    rows = {
        "preset": recipe.preset,
        "question model": models[0] or f"{q.backend}: {q.model}",
        "answer model": models[1] or f"{a.backend}: {a.model}",
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
        "answer kind": c.answer_kind,
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

{listed}

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
| cleaned questions | {summary["cleaned"]}{_rate(summary)} |
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
{_throughput_section(summary)}{_diversity_section(diversity)}{_calibration_section(calibration)}{_review_section(review)}{_decontamination_section(decontamination)}
## Citation

```bibtex
{CITATION}
```
"""


def gpu_hours_text(summary: dict[str, Any]) -> str:
    """GPU-hours as the card and CLI show them: "0 (CPU run)" when no GPU was used."""
    return f"{summary['gpu_hours']:.2f} ({summary['gpus']} GPUs)" if summary.get("gpus") else "0 (CPU run)"


def _throughput_section(summary: dict[str, Any]) -> str:
    """This run's LLM work per stage (runs recorded before throughput was measured have none)."""
    stages = summary.get("stages")
    if not stages:
        return ""
    rows = "\n".join(
        f"| {name} | {st['calls']} | {st['output_tokens']} | {st['tokens_per_s']:.1f} |" for name, st in stages.items()
    )
    per_kept = summary["calls_per_kept_pair"]
    reused = sum(st["reused"] for st in stages.values())
    resumed = f" Generations reused from an earlier run (not counted): {reused}." if reused else ""
    return f"""
## Throughput

| stage | LLM calls | output tokens | tokens/s |
|---|---:|---:|---:|
{rows}

Tokens/s per stage is over the time the stage had requests in flight. LLM calls per kept pair:
{"n/a (none kept)" if per_kept is None else f"{per_kept:.2f}"}. GPU-hours: {gpu_hours_text(summary)}.{resumed}
"""


def _review_section(review: dict[str, Any] | None) -> str:
    if not review:
        return ""
    from crescent_distilabel.review import AccuracyReport, Estimate

    report = AccuracyReport(
        overall=Estimate(**review["overall"]),
        by_agreement={k: Estimate(**v) for k, v in review["by_agreement"].items()},
        reviewed=review["reviewed"],
        rejected_questions=review["rejected_questions"],
        rows=review["rows"],
        statuses=review.get("statuses", {}),
    )
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.statuses.items()))
    return f"""
## Human review (Argilla)

{report.reviewed} of {report.rows} kept pairs were reviewed; {report.rejected_questions} questions were judged
not well-posed. Reviewed accuracy of the consensus answers (95% Wilson intervals), by agreement level:

{report.table()}

Review outcome per pair: {statuses}.
"""


def _diversity_section(diversity: dict[str, Any] | None) -> str:
    if not diversity:
        return ""
    rows = "\n".join(
        f"| {label} | {s['questions']} | {s['distinct_rate']:.1%} | {s['mean_nearest']:.3f} |"
        for label, s in diversity["sets"].items()
    )
    return f"""
## Question diversity

Distinct: no earlier question of the set at cosine > {diversity["threshold"]} ({diversity["embedding_model"]});
nearest: each question's cosine to its nearest other, averaged (lower is more varied).

| questions | n | distinct | mean nearest |
|---|---:|---:|---:|
{rows}
"""


def calibration_tables(result: dict[str, Any]) -> str:
    """bench_consensus.py's figures as markdown tables: accuracy of single samples and majorities, per top-answer
    vote count, and per ``min_agreement`` (the table a user tunes it with)."""

    def pct(a: dict[str, Any]) -> str:
        return "-" if a["accuracy"] is None else f"{a['accuracy']:.1%} [{a['ci95'][0]:.1%}, {a['ci95'][1]:.1%}]"

    lines = ["| measure | accuracy [95% Wilson] | n |", "|---|---|---:|"]
    for name in ["single_sample", *(key for key in result if key.startswith("majority@"))]:
        lines.append(f"| {name.replace('_', '-')} | {pct(result[name])} | {result[name]['n']} |")
    lines += ["", "| top answer's votes | questions | accuracy [95% Wilson] |", "|---|---:|---|"]
    for level, acc in result["by_agreement"].items():
        lines.append(f"| {level} | {acc['n']} | {pct(acc)} |")
    lines += ["", "| min_agreement | kept share | accuracy of kept [95% Wilson] |", "|---|---:|---|"]
    for level, acc in result["by_min_agreement"].items():
        lines.append(f"| {level} | {acc['kept_share']:.0%} | {pct(acc)} |")
    return "\n".join(lines)


def _calibration_section(calibration: dict[str, Any] | None) -> str:
    if not calibration:
        return ""
    c = calibration
    return f"""
## How often the vote is right

Measured on {c["n"]} {c.get("dataset", "GSM8K train")} questions with gold answers, answered k = {c["k"]} times by
{c["model"]} with this recipe's answer prompt (temperature {c["temperature"]}, max {c["max_tokens"]} tokens), the
answers read and voted as the consensus step does. The vote's agreement is the model's own confidence: read the
rows below before choosing `min_agreement`.

{calibration_tables(c)}
"""


def _decontamination_section(decontamination: dict[str, Any] | None) -> str:
    if not decontamination:
        return ""
    d = decontamination
    rows = "\n".join(
        f"| {name} | {size} | {d['by_benchmark'].get(name, 0)} |" for name, size in d["benchmarks"].items()
    )
    paraphrase = (
        f"or embedding cosine >= {d['similarity_threshold']} (paraphrases)"
        if d.get("similarity_threshold") is not None
        else "(embedding check off)"
    )
    fate = (
        "They were moved to the `contaminated` config before training."
        if d.get("dropped")
        else "They are still in the data (not dropped)."
    )
    examples = "\n".join(
        f"- {m['benchmark']} #{m['benchmark_index']} ({m['benchmark_question'][:80]!r}): "
        f"n-gram overlap {m['ngram_overlap']:.2f}, cosine {m['similarity']}"
        for m in d.get("matches", [])[:5]
    )
    return f"""
## Decontamination

{d["contaminated"]} of {d["checked"]} questions ({100 * d["rate"]:.2f}%) match an evaluation question: word
{d["ngram_size"]}-gram containment >= {d["ngram_threshold"]} (copies) {paraphrase}. {fate}

| benchmark | questions | matches |
|---|---:|---:|
{rows}
{examples and chr(10) + "First matches:" + chr(10) + chr(10) + examples + chr(10)}"""


def _rate(summary: dict[str, Any]) -> str:
    rate = summary.get("well_formed_rate")  # absent in runs made before it was recorded
    return f" ({rate:.0%} of raw samples well-formed)" if rate is not None else ""
