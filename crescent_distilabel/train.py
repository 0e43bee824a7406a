"""Fine-tuning with TRL (SFT on the kept pairs, DPO on the preference pairs), behind one module.

A training recipe is a TRL config file (``recipes/<Model>/sft/config_<variant>.yaml`` or ``.../dpo/...``): the
same dataclasses as ``trl sft --config`` / ``trl dpo --config`` (``ScriptArguments``, ``SFTConfig`` or
``DPOConfig``, ``ModelConfig``, ``DatasetMixtureConfig``), parsed by TRL's own parser, so a recipe runs
unchanged with either command; the folder (``sft``, ``dpo``) says which trainer. What
``crescent train`` adds: checks that fail in seconds instead of after loading a model (dataset columns, model
existence, GPU-only options on a CPU machine), CRESCENT data from a run directory or a Hub repo with the
``messages`` view converted when ``prompt``/``completion`` are missing, a merged copy of LoRA models for
generation and evaluation, and a model card that links the dataset, the recipe and the evaluation results.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

SFT_COLUMNS = ("prompt", "completion")
DPO_COLUMNS = ("prompt", "chosen", "rejected")
METHODS = ("sft", "dpo")
DEFAULT_CONFIG = {"sft": "default", "dpo": "preference"}
"""The CRESCENT dataset config each method trains on."""
MERGED_DIR = "merged"
TRAIN_RECORD = "crescent_train.json"


class TrainError(ValueError):
    """Training cannot start as configured; the message says what to change. Raised before any long work."""


@dataclass
class TrainRecipe:
    """A parsed training recipe: TRL's four argument dataclasses, the file they came from, and the method."""

    path: str | None
    script: Any  # trl.ScriptArguments
    training: Any  # trl.SFTConfig or trl.DPOConfig
    model: Any  # trl.ModelConfig
    data: Any  # trl.DatasetMixtureConfig
    base_label: str | None = None  # the model as the user named it (before ``smollm2`` became a local path)
    method: str = "sft"


SFTRecipe = TrainRecipe  # the name before DPO recipes existed


def method_of(path: str | Path) -> str:
    """The trainer a recipe is for, from its folder in the open-r1 layout (``.../dpo/config_x.yaml``); sft
    otherwise."""
    folder = Path(path).parent.name
    return folder if folder in METHODS else "sft"


def _parser(method: str = "sft"):  # returns trl.TrlParser, imported lazily (TRL is an optional extra)
    try:
        from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser
    except ImportError:
        raise TrainError("training needs TRL: pip install 'crescent-distilabel[train]'") from None
    return TrlParser((ScriptArguments, DPOConfig if method == "dpo" else SFTConfig, ModelConfig, DatasetMixtureConfig))


def parse_train_recipe(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    method: str | None = None,
    hardware_check: bool = True,
) -> TrainRecipe:
    """Parse a recipe exactly as ``trl sft --config path [overrides]`` (or ``trl dpo``) would, but reject
    unknown keys.

    Args:
        path: the YAML recipe.
        overrides: TRL command-line flags, e.g. ``["--max_steps", "3"]``.
        method: ``sft`` or ``dpo``; default: from the recipe's folder (:func:`method_of`).
        hardware_check: False validates a GPU recipe on a CPU machine (adds ``--use_cpu true``, which
            transformers requires before it accepts ``bf16`` without a GPU); keys and values are still checked.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"training recipe {path} does not exist")
    method = method or method_of(path)
    if method not in METHODS:
        raise TrainError(f"unknown training method {method!r}: use one of {', '.join(METHODS)}")
    parser = _parser(method)
    extra = [] if hardware_check or torch.cuda.is_available() else ["--use_cpu", "true"]
    try:
        script, training, model, data = parser.parse_args_and_config(
            args=["--config", str(path), *overrides, *extra], fail_with_unknown_args=True
        )
    except SystemExit as err:  # argparse reports the bad flag on stderr, then exits
        raise TrainError(f"{path}: invalid setting (see the message above) [{err}]") from None
    except (ValueError, TypeError) as err:
        if "bf16" in str(err) or "fp16" in str(err):
            raise TrainError(
                f"{path} asks for bf16/fp16 mixed precision, which needs a GPU here: pass --bf16 false "
                "(and --fp16 false), or use the CPU recipe recipes/SmolLM2-135M-Instruct/sft/config_cpu.yaml"
            ) from None
        raise TrainError(f"{path}: {err}") from None
    return TrainRecipe(str(path), script, training, model, data, method=method)


def parse_sft_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, hardware_check: bool = True
) -> TrainRecipe:
    """:func:`parse_train_recipe` for an SFT recipe, wherever it lives."""
    return parse_train_recipe(path, overrides, method="sft", hardware_check=hardware_check)


def gpu_only_settings(recipe: TrainRecipe) -> list[str]:
    """Settings in the recipe that need a CUDA GPU (checked only when none is present)."""
    t, m = recipe.training, recipe.model
    found = []
    if t.fp16:
        found.append("fp16: true (use bf16 or fp32 on CPU: --fp16 false)")
    if getattr(m, "load_in_4bit", False) or getattr(m, "load_in_8bit", False):
        found.append("load_in_4bit/load_in_8bit (bitsandbytes quantisation needs CUDA)")
    if t.use_liger_kernel:
        found.append("use_liger_kernel: true (Triton kernels need CUDA)")
    if (m.attn_implementation or "").startswith("flash_attention"):
        found.append(f"attn_implementation: {m.attn_implementation} (use sdpa or eager on CPU)")
    optim = str(getattr(t.optim, "value", t.optim))
    if any(s in optim for s in ("bnb", "8bit", "paged")):
        found.append(f"optim: {optim} (bitsandbytes optimisers need CUDA; use adamw_torch)")
    if t.deepspeed:
        found.append("deepspeed (needs CUDA)")
    if t.tf32:
        found.append("tf32: true (an Ampere GPU setting)")
    return found


def check_model(model: str) -> None:
    """The base model is a local transformers directory or an existing Hub model (checked before loading)."""
    from crescent_distilabel.evaluation import EvalError
    from crescent_distilabel.evaluation import check_model as check

    try:
        check(model)
    except EvalError as err:
        raise TrainError(str(err)) from None


def to_prompt_completion(dataset: Dataset, source: str) -> Dataset:
    """The ``prompt``/``completion`` columns TRL trains on (loss on the completion only), nothing else.

    CRESCENT data has them; data with only a ``messages`` column is split before its last assistant turn.
    """
    columns = set(dataset.column_names)
    if set(SFT_COLUMNS) <= columns:
        return dataset.select_columns(list(SFT_COLUMNS))
    if "messages" in columns:

        def split(row: dict[str, Any]) -> dict[str, Any]:
            turns = row["messages"] or []
            if not turns or turns[-1].get("role") != "assistant":
                return {"prompt": None, "completion": None}
            return {"prompt": turns[:-1], "completion": turns[-1:]}

        converted = dataset.map(split, remove_columns=dataset.column_names, desc="messages -> prompt/completion")
        return converted.filter(lambda row: row["completion"] is not None)
    raise TrainError(
        f"dataset {source} has columns {sorted(columns)}; training needs 'prompt' and 'completion' "
        "(conversational) or 'messages' ending in an assistant turn, as CRESCENT datasets have"
    )


def to_preference(dataset: Dataset, source: str) -> Dataset:
    """The ``prompt``/``chosen``/``rejected`` columns DPO trains on, as CRESCENT's ``preference`` config has."""
    missing = [c for c in DPO_COLUMNS if c not in dataset.column_names]
    if missing:
        raise TrainError(
            f"dataset {source} has columns {sorted(dataset.column_names)}; DPO needs {', '.join(DPO_COLUMNS)} "
            "(a CRESCENT run's 'preference' config has them)"
        )
    return dataset.select_columns(list(DPO_COLUMNS))


def _load_one(path: str, name: str | None, split: str, **kwargs: Any) -> Dataset:
    from crescent_distilabel.run_dir import RUN_FILE, RunDir

    if (Path(path) / RUN_FILE).is_file():  # a local run directory: read its saved config directly
        return RunDir(Path(path)).load(name or "default", in_memory=True)
    from datasets import load_dataset

    try:
        return load_dataset(path, name=name, split=split, **kwargs)
    except Exception as err:
        raise TrainError(f"cannot load dataset {path!r} (config {name}, split {split}): {err}") from None


def use_dataset(recipe: TrainRecipe, path: str, config: str | None = None) -> None:
    """Train on this dataset (a run directory or a Hub repo id) instead of the one the recipe names; the config
    defaults to the method's (``default`` for SFT, ``preference`` for DPO)."""
    from trl.scripts.utils import DatasetConfig

    columns = list(DPO_COLUMNS if recipe.method == "dpo" else SFT_COLUMNS)
    name = config or DEFAULT_CONFIG[recipe.method]
    recipe.data.datasets = [DatasetConfig(path=path, name=name, columns=columns)]
    recipe.script.dataset_name = None


def load_training_data(recipe: TrainRecipe) -> Dataset:
    """The training rows: the recipe's ``datasets`` mixture or ``dataset_name``, as prompt/completion pairs."""
    from datasets import concatenate_datasets

    specs = recipe.data.datasets or []
    columns = to_preference if recipe.method == "dpo" else to_prompt_completion
    parts = []
    if specs:
        for spec in specs:
            ds = _load_one(spec.path, spec.name, spec.split, data_dir=spec.data_dir, data_files=spec.data_files)
            parts.append(columns(ds, spec.path))
    elif recipe.script.dataset_name:
        s = recipe.script
        ds = _load_one(s.dataset_name, s.dataset_config, s.dataset_train_split)
        parts.append(columns(ds, s.dataset_name))
    else:
        raise TrainError("the recipe names no dataset: set dataset_name, or a datasets: list")
    data = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if len(data) == 0:
        what = "no kept pairs?"
        if recipe.method == "dpo":
            what = "no preference pairs: was every kept vote unanimous? a larger k gives more"
        raise TrainError(f"the training data is empty ({what})")
    return data


def check_recipe(recipe: TrainRecipe, cuda: bool | None = None) -> None:
    """GPU-only settings on a machine without one, and the model's existence (``smollm2`` resolved here)."""
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if not cuda:
        bad = gpu_only_settings(recipe)
        if bad:
            raise TrainError(
                "this machine has no CUDA GPU, but the recipe asks for: " + "; ".join(bad) + ". Use a CPU recipe "
                "(recipes/SmolLM2-135M-Instruct/sft/config_cpu.yaml) or override those settings."
            )
    if not recipe.model.model_name_or_path:
        raise TrainError("the recipe names no model: set model_name_or_path")
    from crescent_distilabel.backends import HUB_IDS, resolve_hf_model

    name = recipe.model.model_name_or_path
    recipe.base_label = recipe.base_label or HUB_IDS.get(name, name)
    recipe.model.model_name_or_path = resolve_hf_model(name)
    check_model(recipe.model.model_name_or_path)


def preflight(recipe: TrainRecipe, cuda: bool | None = None) -> Dataset:
    """Every check that can fail, before a model is loaded: GPU-only settings, the model, the data."""
    check_recipe(recipe, cuda)
    return load_training_data(recipe)


@dataclass
class TrainResult:
    """A finished training run: where the model is, and what training did."""

    output_dir: str
    model_dir: str  # full weights for generation/evaluation (the merged copy for LoRA)
    base_model: str
    peft: bool
    rows: int
    steps: int
    train_loss: float | None
    runtime_s: float
    dataset: str
    metrics: dict[str, Any] = field(default_factory=dict)
    method: str = "sft"

    def save(self) -> None:
        Path(self.output_dir, TRAIN_RECORD).write_text(json.dumps(self.__dict__, indent=2) + "\n")


def dataset_id(recipe: TrainRecipe) -> str:
    specs = recipe.data.datasets or []
    return specs[0].path if specs else str(recipe.script.dataset_name)


def train(recipe: TrainRecipe, data: Dataset | None = None) -> TrainResult:
    """Fine-tune as ``trl sft`` (or ``trl dpo``) does, then save (LoRA: also a merged copy) and write a model
    card. DPO with LoRA needs no second model in memory: the reference is the base with the adapter off.

    Pushing is separate (:func:`crescent_distilabel.hub.publish_model`), after evaluation, so the card
    carries the results; ``push_to_hub`` in the recipe is honoured there, not mid-training.
    """
    from trl import DPOTrainer, SFTTrainer, get_peft_config, get_quantization_config

    data = preflight(recipe) if data is None else data
    t, m = recipe.training, recipe.model
    t.push_to_hub = False
    init = {"revision": m.model_revision, "trust_remote_code": t.trust_remote_code, "dtype": m.dtype}
    if m.attn_implementation:
        init["attn_implementation"] = m.attn_implementation
    t.model_init_kwargs = {**init, **(t.model_init_kwargs or {})}
    trainer_class = DPOTrainer if recipe.method == "dpo" else SFTTrainer
    trainer = trainer_class(
        model=m.model_name_or_path,
        args=t,
        train_dataset=data,
        quantization_config=get_quantization_config(m),
        peft_config=get_peft_config(m),
    )
    output = trainer.train(resume_from_checkpoint=t.resume_from_checkpoint)
    out = Path(t.output_dir)
    trainer.save_model(str(out))
    trainer.processing_class.save_pretrained(str(out))
    model_dir = out
    if m.use_peft:
        merged = trainer.model.merge_and_unload()
        model_dir = out / MERGED_DIR
        merged.save_pretrained(str(model_dir))
        trainer.processing_class.save_pretrained(str(model_dir))
    if recipe.path:
        shutil.copyfile(recipe.path, out / "recipe.yaml")
    result = TrainResult(
        output_dir=str(out),
        model_dir=str(model_dir),
        base_model=recipe.base_label or m.model_name_or_path,
        peft=bool(m.use_peft),
        rows=len(data),
        steps=int(output.global_step),
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        runtime_s=round(float(output.metrics.get("train_runtime", 0.0)), 2),
        dataset=dataset_id(recipe),
        metrics={k: v for k, v in output.metrics.items() if isinstance(v, (int, float))},
        method=recipe.method,
    )
    result.save()
    write_model_card(result)
    return result


def model_card(result: TrainResult, evaluation: str | None = None, hub_repo: str | None = None) -> str:
    """The trained model's README: base model, dataset, recipe, training figures and evaluation results."""
    from crescent_distilabel.citation import CITATION

    dataset = result.dataset
    is_hub = dataset.count("/") == 1 and not Path(dataset).exists()
    datasets_meta = f"datasets:\n- {dataset}\n" if is_hub else ""
    dataset_link = f"[{dataset}](https://huggingface.co/datasets/{dataset})" if is_hub else f"`{dataset}` (local)"
    base = result.base_model
    base_meta = f"base_model: {base}\n" if base.count("/") == 1 and not Path(base).exists() else ""
    library = "peft" if result.peft else "transformers"
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    how = (
        "`DPOTrainer` on self-consistency preference pairs (chosen: a chain with the answer the model's vote "
        "agreed on; rejected: a chain that lost the vote)"
        if result.method == "dpo"
        else "`SFTTrainer`, loss on the assistant turn only (prompt/completion data)"
    )
    return f"""---
{base_meta}{datasets_meta}library_name: {library}
tags:
- crescent
- self-improvement
- trl
- {result.method}
---

# {hub_repo or Path(result.output_dir).name}

Fine-tuned from `{base}` on {dataset_link}: questions the model invented itself, diversified and answered
by self-consistency with [CRESCENT](https://arxiv.org/abs/2502.13441) (no seed data, teacher or labels),
generated with [crescent-distilabel](https://github.com/crescent-distilabel/crescent-distilabel).

## Training

{"LoRA (adapter in this repo; merged weights were used for evaluation)" if result.peft else "Full fine-tune"}
with TRL {how}, the model's own chat template. The exact recipe is `recipe.yaml` in this repo
(`trl {result.method} --config recipe.yaml` reruns it).

| rows | steps | final train loss | runtime |
|---:|---:|---:|---:|
| {result.rows} | {result.steps} | {loss} | {result.runtime_s} s |

## Evaluation

{evaluation or "Not evaluated yet: `crescent evaluate --model <this repo>`."}

## Citation

```bibtex
{CITATION}
```
"""


def write_model_card(result: TrainResult, evaluation: str | None = None, hub_repo: str | None = None) -> None:
    from crescent_distilabel.run_dir import atomic_write

    atomic_write(Path(result.output_dir) / "README.md", model_card(result, evaluation, hub_repo))


def load_result(output_dir: str | Path) -> TrainResult:
    path = Path(output_dir) / TRAIN_RECORD
    if not path.is_file():
        raise TrainError(f"{output_dir} holds no finished training run ({TRAIN_RECORD} missing)")
    return TrainResult(**json.loads(path.read_text()))
