"""The whole self-improvement loop from one recipe: generate -> decontaminate -> (push) -> train -> evaluate.

With ``iterations: N`` the loop repeats, and round ``r`` generates with the model trained in round ``r-1``
and fine-tunes that model further: the paper's open question of repeated self-improvement (does it keep
improving, plateau, or collapse?). Every round's figures go into ``metrics.json``, a Markdown table and a
plot. Each stage leaves its result on disk, so re-running the same command continues where it stopped.

Layout of ``output_dir``: ``baseline_eval.json``; ``round-<r>/data`` (a run directory), ``round-<r>/model``
(``crescent train`` output: the round's final model; with ``method: sft+dpo`` the SFT model DPO started from
is ``round-<r>/model-sft``), ``round-<r>/eval.json``; ``metrics.json``, ``metrics.md``, ``metrics.png``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from crescent_distilabel.evaluation import DEFAULT_TASKS, TASKS, EvalReport


class LoopError(ValueError):
    """A loop recipe or a stage of the loop cannot run; the message says what to change."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvaluateSection(_Section):
    """Benchmarks after every round (and of the base model once)."""

    tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_TASKS))
    limit: PositiveInt | None = Field(None, description="problems per task; None: all")
    max_gen_toks: PositiveInt = 512
    batch_size: PositiveInt = Field(8, description="generation batch (transformers) or requests at a time (vllm)")
    server: Literal["transformers", "vllm"] = Field(
        "transformers", description="vllm: serve each model with `vllm serve` to evaluate it (continuous batching)"
    )
    vllm_python: str | None = Field(None, description="server vllm: the Python that has vLLM (default: this one)")


class DecontaminateSection(_Section):
    """Check generated questions against evaluation sets before training."""

    enabled: bool = True
    benchmarks: list[Literal["gsm8k", "svamp", "asdiv", "math500"]] = Field(
        default_factory=lambda: ["gsm8k", "svamp", "asdiv"]
    )
    drop: bool = True
    similarity_threshold: float | None = Field(0.9, description="None: n-gram check only")


class PushSection(_Section):
    """Hub repos; a round suffix ``-round<r>`` is added when ``iterations > 1``."""

    dataset_repo: str | None = None
    model_repo: str | None = None
    private: bool = False
    exist_ok: bool = False


Method = Literal["sft", "dpo", "sft+dpo"]
"""How a round trains: on the kept pairs (SFT), on the preference pairs (DPO), or SFT then DPO from the SFT
model (both on the round's own data)."""


class LoopRecipe(_Section):
    """One recipe for the loop; ``generate``, ``train`` and ``dpo`` name the stage recipes (paths relative to
    this file)."""

    name: str = "crescent-loop"
    output_dir: str = "outputs/crescent-loop"
    iterations: PositiveInt = 1
    generate: str
    generate_overrides: list[str] = Field(default_factory=list, description="KEY=VALUE, as crescent generate --set")
    train: str | None = Field(None, description="the SFT recipe; needed when a round trains SFT")
    train_overrides: list[str] = Field(default_factory=list, description="TRL flags, e.g. ['--max_steps', '10']")
    dpo: str | None = Field(None, description="the DPO recipe; needed when a round trains DPO")
    dpo_overrides: list[str] = Field(default_factory=list, description="TRL flags for the DPO recipe")
    method: Method | list[Method] = Field("sft", description="one for every round, or a list with one per round")
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    decontaminate: DecontaminateSection = Field(default_factory=DecontaminateSection)
    push: PushSection = Field(default_factory=PushSection)
    base_dir: str = Field(".", exclude=True)

    @model_validator(mode="after")
    def _methods_have_recipes(self) -> LoopRecipe:
        if isinstance(self.method, list) and len(self.method) != self.iterations:
            raise ValueError(f"method lists {len(self.method)} rounds but iterations is {self.iterations}")
        steps = {step for r in range(1, self.iterations + 1) for step in self.steps(r)}
        if "sft" in steps and not self.train:
            raise ValueError("a round trains SFT: set train to an SFT recipe (recipes/<Model>/sft/...)")
        if "dpo" in steps and not self.dpo:
            raise ValueError("a round trains DPO: set dpo to a DPO recipe (recipes/<Model>/dpo/...)")
        return self

    def steps(self, r: int) -> list[str]:
        """Round ``r``'s trainings in order (``["sft", "dpo"]`` for ``sft+dpo``)."""
        method = self.method[r - 1] if isinstance(self.method, list) else self.method
        return method.split("+")

    def stage_recipes(self) -> dict[str, tuple[Path, list[str]]]:
        """The training recipes this loop uses, by method: (path, TRL flags)."""
        used = {step for r in range(1, self.iterations + 1) for step in self.steps(r)}
        recipes = {"sft": (self.train, self.train_overrides), "dpo": (self.dpo, self.dpo_overrides)}
        return {m: (self.path(p), list(flags)) for m, (p, flags) in recipes.items() if m in used and p}

    def path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


def load_loop_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> LoopRecipe:
    from crescent_distilabel.recipe import read_mapping

    path = Path(path)
    if not path.is_file():
        raise LoopError(f"loop recipe file not found: {path}")
    data = read_mapping(path, LoopError, "loop recipe")
    for key, value in (overrides or {}).items():  # a section's override changes only the keys it names
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    try:
        recipe = LoopRecipe(**data, base_dir=str(path.parent))
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise LoopError(f"{path}: {problems}") from None
    unknown = [t for t in recipe.evaluate.tasks if t not in TASKS]
    if unknown:
        raise LoopError(f"{path}: unknown evaluation task(s) {unknown}; choose from {', '.join(TASKS)}")
    stages = [recipe.path(recipe.generate)] + [p for p, _ in recipe.stage_recipes().values()]
    for stage in stages:
        if not stage.is_file():
            raise LoopError(f"{path}: stage recipe {stage} does not exist")
    return recipe


def _suffix(recipe: LoopRecipe, repo: str, r: int) -> str:
    return f"{repo}-round{r}" if recipe.iterations > 1 else repo


def _evaluate(recipe: LoopRecipe, model: str, path: Path, log: Any) -> EvalReport:
    from crescent_distilabel.evaluation import evaluate

    if path.is_file():
        return EvalReport.load(path)
    log(f"evaluating {model} on {', '.join(recipe.evaluate.tasks)}")
    report = evaluate(
        model,
        recipe.evaluate.tasks,
        limit=recipe.evaluate.limit,
        batch_size=recipe.evaluate.batch_size,
        max_gen_toks=recipe.evaluate.max_gen_toks,
        server=recipe.evaluate.server,
        vllm_python=recipe.evaluate.vllm_python,
        server_log=path.with_suffix(".vllm.log"),
    )
    report.save(path)
    return report


def run_loop(recipe: LoopRecipe, log: Any = print) -> list[dict[str, Any]]:
    """Run (or continue) the loop; returns one metrics row per round (round 0 = the base model)."""
    from crescent_distilabel.decontamination import decontaminate_run
    from crescent_distilabel.hub import publish, publish_model
    from crescent_distilabel.recipe import load_recipe
    from crescent_distilabel.run_dir import RunDir
    from crescent_distilabel.train import check_recipe, parse_train_recipe

    # what can fail fast does so before any work: every stage recipe, GPU-only settings, the base model
    # (the data's columns are checked as each round's training starts)
    gen_recipe = load_recipe(recipe.path(recipe.generate), recipe.generate_overrides)
    stages = recipe.stage_recipes()
    first = recipe.steps(1)[0]  # its recipe names the base model; the other recipe trains what came before
    trainer = parse_train_recipe(*stages[first], method=first)
    check_recipe(trainer)  # resolves ``smollm2`` to its transformers directory
    base_model = trainer.model.model_name_or_path
    for method, (path, flags) in stages.items():
        if method != first:
            check_recipe(parse_train_recipe(path, [*flags, "--model_name_or_path", base_model], method=method))
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    baseline = _evaluate(recipe, base_model, out / "baseline_eval.json", log)
    rows = [_metrics_row(0, base_model, None, None, baseline)]
    model = base_model
    for r in range(1, recipe.iterations + 1):
        round_dir = out / f"round-{r}"
        data_dir, model_dir = round_dir / "data", round_dir / "model"
        overrides = [*recipe.generate_overrides, f"output_dir={data_dir}", f"seed={gen_recipe.seed + r - 1}"]
        if r > 1:  # the fine-tuned model writes the next round's data
            overrides += ["question_model.backend=transformers", f"question_model.model={model}"]
            overrides += ["answer_model=null"]
        load_recipe(recipe.path(recipe.generate), overrides)  # a bad override fails here, not in the child
        log(f"round {r}: generating with {model if r > 1 else gen_recipe.question_model.model}")
        _generate(recipe.path(recipe.generate), overrides, r)
        run = RunDir(data_dir)
        contamination = None
        if recipe.decontaminate.enabled:
            d = recipe.decontaminate
            if run.report("decontamination.json") is None:
                report = decontaminate_run(
                    str(data_dir), d.benchmarks, drop=d.drop, similarity_threshold=d.similarity_threshold
                )
                log(f"round {r}: {report.contaminated} of {report.checked} questions match an evaluation set")
            contamination = run.report("decontamination.json")
        if recipe.push.dataset_repo:
            url = _publish(publish, data_dir, _suffix(recipe, recipe.push.dataset_repo, r), recipe.push)
            log(f"round {r}: dataset published at {url}")
        trained = _train_round(recipe, r, model, data_dir, model_dir, log)
        report = _evaluate(recipe, trained.model_dir, round_dir / "eval.json", log)
        _write_model_card(trained, baseline, report, recipe, r)
        if recipe.push.model_repo:
            url = _publish(publish_model, model_dir, _suffix(recipe, recipe.push.model_repo, r), recipe.push)
            log(f"round {r}: model published at {url}")
        summary = run.record()["summary"]
        rows.append(_metrics_row(r, trained.model_dir, summary, trained, report, contamination))
        rows[-1]["method"] = "+".join(recipe.steps(r))
        rows[-1]["preference_pairs"] = len(run.load("preference")) if "preference" in run.configs() else 0
        model = trained.model_dir
    write_metrics(out, rows, recipe.evaluate.tasks)
    return rows


def _train_round(recipe: LoopRecipe, r: int, model: str, data_dir: Path, model_dir: Path, log: Any) -> Any:
    """Round ``r``'s trainings in order, each from the model the one before left (``sft+dpo``: DPO starts from
    the SFT model). The round's final model is ``round-<r>/model``; an earlier one ``round-<r>/model-<method>``.
    A training that finished is not repeated on a re-run."""
    from crescent_distilabel.train import TRAIN_RECORD, TrainError, load_result, parse_train_recipe, train, use_dataset
    from crescent_distilabel.train import preflight as check

    steps = recipe.steps(r)
    trained = None
    for i, method in enumerate(steps):
        out = model_dir if i == len(steps) - 1 else model_dir.with_name(f"model-{method}")
        if not (out / TRAIN_RECORD).is_file():
            path, flags = recipe.stage_recipes()[method]
            trainer = parse_train_recipe(
                path, [*flags, "--output_dir", str(out), "--model_name_or_path", model], method=method
            )
            use_dataset(trainer, str(data_dir))
            try:
                data = check(trainer)
            except TrainError as err:
                raise LoopError(f"round {r}: cannot train {method.upper()}: {err}") from None
            what = "preference pairs" if method == "dpo" else "pairs"
            log(f"round {r}: training {model} ({method.upper()}) on {len(data)} {what}")
            train(trainer, data)
        trained = load_result(out)
        model = trained.model_dir
    return trained


def _publish(publish_fn: Any, path: Path, repo: str, push: PushSection) -> str:
    """Publish once per round; a re-run after a crash publishes a new revision of the repo it made itself."""
    marker = path / ".published"
    done = publish_fn(path, repo, private=push.private, exist_ok=marker.exists() or push.exist_ok)
    marker.write_text(done.commit)
    return done.url


def _generate(recipe_path: Path, overrides: list[str], r: int) -> None:
    """``crescent generate`` in a child process: distilabel forks its step processes, and a process that has
    already run torch (this one evaluated the base model) must not fork workers that run torch or llama.cpp
    again (GNU OpenMP is not fork-safe: they hang)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "crescent_distilabel.cli", "generate", str(recipe_path)]
    for item in overrides:
        cmd += ["--set", item]
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise LoopError(
            f"round {r}: generation stopped (exit {done.returncode}); what was generated is saved, re-run the same "
            f"command to continue:\n{tail}"
        )


def _write_model_card(trained: Any, baseline: EvalReport, report: EvalReport, recipe: LoopRecipe, r: int) -> None:
    from crescent_distilabel.evaluation import compare
    from crescent_distilabel.train import write_model_card

    text = (
        f"Greedy decoding, chat template applied, {report.limit or 'all'} problems per task, lm-evaluation-harness "
        f"(see `eval.json`). Before = the base model.\n\n{compare(baseline, report)}"
    )
    repo = _suffix(recipe, recipe.push.model_repo, r) if recipe.push.model_repo else None
    Path(trained.output_dir, "eval.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    write_model_card(trained, text, repo)


def _metrics_row(
    r: int, model: str, summary: dict | None, trained: Any, report: EvalReport, contamination: dict | None = None
) -> dict[str, Any]:
    row: dict[str, Any] = {"round": r, "model": model}
    if summary is not None:
        row |= {"kept_pairs": summary["kept"], "raw_samples": summary["raw_samples"]}
    if contamination is not None:
        row["contamination_rate"] = contamination["rate"]
    if trained is not None:
        row |= {"train_loss": trained.train_loss, "train_steps": trained.steps}
    for task, by_filter in report.scores.items():
        for name, score in by_filter.items():
            row[f"{task}/{name}"] = score.value
    return row


def write_metrics(out: Path, rows: list[dict[str, Any]], tasks: list[str]) -> None:
    """``metrics.json``, ``metrics.md`` (one row per round) and ``metrics.png`` (accuracy per round)."""
    (out / "metrics.json").write_text(json.dumps(rows, indent=2) + "\n")
    keys = ["round", "method", "kept_pairs", "preference_pairs", "contamination_rate", "train_loss"] + [
        k for k in rows[0] if "/" in k
    ]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k)
            if v is None:
                cells.append("")
            elif "/" in k or k == "contamination_rate":
                cells.append(f"{100 * v:.1f}%")
            elif isinstance(v, float):
                cells.append(f"{v:.4f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the table and JSON carry the same numbers
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in (k for k in rows[0] if "/" in k):
        ax.plot([row["round"] for row in rows], [100 * row[key] for row in rows], marker="o", label=key)
    ax.set_xlabel("round (0 = base model)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks([row["round"] for row in rows])
    ax.legend(fontsize=7)
    ax.set_title("CRESCENT self-improvement rounds")
    fig.tight_layout()
    fig.savefig(out / "metrics.png", dpi=120)
    plt.close(fig)
