"""The whole loop for real on CPU: SmolLM2 generates (llama.cpp), is fine-tuned with LoRA (TRL), evaluated on
GSM8K problems (lm-eval, local data) before and after, and round 2 generates with the fine-tuned model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import hub_env
from datasets import load_from_disk

from crescent_distilabel.loop import LoopError, load_loop_recipe

ROOT = Path(__file__).resolve().parents[1]


def loop_recipe(tmp_path: Path, **changes) -> Path:
    data = {
        "name": "loop-test",
        "output_dir": str(tmp_path / "loop"),
        "iterations": 2,
        "generate": str(ROOT / "recipes/SmolLM2-135M-Instruct/generate/config_cpu.yaml"),
        "generate_overrides": [
            "bait.num_calls=2", "bait.samples_per_call=4", "sampling.max_new_tokens=96",
            "consensus.k=2", "consensus.min_agreement=0.5", "consensus.tie_policy=first",
        ],
        "train": str(ROOT / "recipes/SmolLM2-135M-Instruct/sft/config_cpu_lora.yaml"),
        "train_overrides": ["--model_name_or_path", "smollm2", "--max_steps", "2"],
        "evaluate": {"tasks": ["gsm8k_0shot"], "limit": 2, "max_gen_toks": 48, "batch_size": 2},
        "decontaminate": {"benchmarks": ["gsm8k"]},
    } | changes  # fmt: skip
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_published_loop_recipes_load():
    for path in ROOT.glob("recipes/*/loop/*.yaml"):
        recipe = load_loop_recipe(path)
        assert recipe.path(recipe.generate).is_file() and recipe.path(recipe.train).is_file()


def test_bad_loop_recipes_are_refused_before_any_work(tmp_path):
    with pytest.raises(LoopError, match=r"unknown evaluation task.*gsm9k"):
        load_loop_recipe(loop_recipe(tmp_path, evaluate={"tasks": ["gsm9k"]}))
    with pytest.raises(LoopError, match=r"stage recipe .*missing.yaml does not exist"):
        load_loop_recipe(loop_recipe(tmp_path, train=str(tmp_path / "missing.yaml")))
    with pytest.raises(LoopError, match="iteration"):
        load_loop_recipe(loop_recipe(tmp_path, iteration=2))  # a typo'd key


@pytest.mark.slow
def test_two_rounds_generate_train_evaluate_publish(tmp_path, smollm2_hf, hub):
    path = loop_recipe(tmp_path, push={"dataset_repo": "alice/loop-data", "model_repo": "alice/loop-model"})
    done = subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", "loop", str(path)],
        env=hub_env(hub, tmp_path), capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    out = tmp_path / "loop"
    rows = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert all(0.0 <= r["gsm8k_0shot/strict-match"] <= 1.0 for r in rows)
    assert all(r["kept_pairs"] > 0 and r["train_steps"] == 2 for r in rows[1:])
    table = (out / "metrics.md").read_text()
    assert table.startswith("| round | kept_pairs | contamination_rate | train_loss | gsm8k_0shot/strict-match |")
    assert len(table.strip().splitlines()) == 5 and (out / "metrics.png").stat().st_size > 1000

    # round 1 generated with llama.cpp, round 2 with the model trained in round 1 (transformers backend)
    merged_1 = str(out / "round-1" / "model" / "merged")
    round_2 = load_from_disk(str(out / "round-2" / "data" / "default"))["train"]
    assert set(round_2["model_name"]) == {merged_1} and set(round_2["answer_model"]) == {merged_1}
    record_2 = json.loads((out / "round-2" / "model" / "crescent_train.json").read_text())
    assert record_2["base_model"] == merged_1  # round 2 fine-tunes the round-1 model further
    for r in (1, 2):
        report = json.loads((out / f"round-{r}" / "eval.json").read_text())
        assert report["scores"]["gsm8k_0shot"]["flexible-extract"]["n"] == 2
        assert (out / f"round-{r}" / "data" / "decontamination.json").is_file()

    # each round's dataset and model on the (FAKE) Hub, the model card with the before/after table
    assert hub.file("dataset", "alice/loop-data-round1", "README.md")
    assert hub.file("dataset", "alice/loop-data-round2", "default/train-00000-of-00001.parquet")
    card = hub.file("model", "alice/loop-model-round2", "README.md").decode()
    assert "# alice/loop-model-round2" in card and "| gsm8k_0shot | strict-match |" in card and "pts |" in card
    assert "## Decontamination" in hub.file("dataset", "alice/loop-data-round1", "README.md").decode()
    assert not hub.unknown_routes


@pytest.mark.parametrize("text", ["", "null\n", "[1, 2]\n", "7\n"])
def test_an_empty_or_non_mapping_loop_recipe_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(LoopError) as err:
        load_loop_recipe(path)
    assert str(path) in str(err.value) and "AttributeError" not in str(err.value)
