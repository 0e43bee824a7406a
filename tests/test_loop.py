"""The whole loop for real on CPU: SmolLM2 generates (llama.cpp), is fine-tuned with LoRA (TRL), evaluated on
GSM8K problems (lm-eval, local data) before and after, and round 2 generates with the fine-tuned model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import hub_env, worker_threads
from datasets import load_from_disk

from crescent_distilabel.loop import LoopError, load_loop_recipe

ROOT = Path(__file__).resolve().parents[1]
SFT = ROOT / "recipes/SmolLM2-135M-Instruct/sft/config_cpu_lora.yaml"
DPO = ROOT / "recipes/SmolLM2-135M-Instruct/dpo/config_cpu_lora.yaml"


def loop_recipe(tmp_path: Path, **changes) -> Path:
    data = {
        "name": "loop-test",
        "output_dir": str(tmp_path / "loop"),
        "iterations": 2,
        "generate": str(ROOT / "recipes/SmolLM2-135M-Instruct/generate/config_cpu.yaml"),
        "generate_overrides": [
            "bait.num_calls=2", "bait.samples_per_call=4", "sampling.max_new_tokens=96",
            "consensus.k=2", "consensus.min_agreement=0.5", "consensus.tie_policy=first",
            f"question_model.n_threads={worker_threads()}",
        ],
        "train": str(SFT),
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
        assert recipe.path(recipe.generate).is_file() and all(p.is_file() for p, _ in recipe.stage_recipes().values())
    assert "dpo" in load_loop_recipe(ROOT / "recipes/Qwen2.5-Coder-0.5B-Instruct/loop/config_cpu_sft_dpo.yaml").steps(
        1
    )


def test_bad_loop_recipes_are_refused_before_any_work(tmp_path):
    with pytest.raises(LoopError, match=r"unknown evaluation task.*gsm9k"):
        load_loop_recipe(loop_recipe(tmp_path, evaluate={"tasks": ["gsm9k"]}))
    with pytest.raises(LoopError, match=r"stage recipe .*missing.yaml does not exist"):
        load_loop_recipe(loop_recipe(tmp_path, train=str(tmp_path / "missing.yaml")))
    with pytest.raises(LoopError, match="iteration"):
        load_loop_recipe(loop_recipe(tmp_path, iteration=2))  # a typo'd key
    with pytest.raises(LoopError, match=r"a round trains DPO: set dpo to a DPO recipe"):
        load_loop_recipe(loop_recipe(tmp_path, method=["sft", "sft+dpo"]))
    with pytest.raises(LoopError, match=r"method lists 1 rounds but iterations is 2"):
        load_loop_recipe(loop_recipe(tmp_path, method=["dpo"], dpo=str(DPO)))
    with pytest.raises(LoopError, match=r"a round trains SFT: set train"):
        load_loop_recipe(loop_recipe(tmp_path, train=None, dpo=str(DPO)))
    with pytest.raises(LoopError, match=r"method"):
        load_loop_recipe(loop_recipe(tmp_path, method="ppo"))
    with pytest.raises(LoopError, match=r"stage recipe .*nowhere.yaml does not exist"):
        load_loop_recipe(loop_recipe(tmp_path, method="dpo", dpo=str(tmp_path / "nowhere.yaml")))


def test_an_evaluate_override_changes_only_the_keys_it_names(tmp_path):
    path = loop_recipe(tmp_path, evaluate={"tasks": ["gsm8k_0shot"], "limit": 7, "server": "vllm"})
    recipe = load_loop_recipe(path, {"evaluate": {"vllm_python": "/opt/vllm/bin/python"}})
    assert (recipe.evaluate.tasks, recipe.evaluate.limit) == (["gsm8k_0shot"], 7)
    assert (recipe.evaluate.server, recipe.evaluate.vllm_python) == ("vllm", "/opt/vllm/bin/python")
    with pytest.raises(LoopError, match=r"evaluate.server"):
        load_loop_recipe(loop_recipe(tmp_path, evaluate={"server": "sglang"}))


def test_each_round_trains_its_method_from_the_model_before(tmp_path):
    recipe = load_loop_recipe(loop_recipe(tmp_path, method=["sft", "sft+dpo", "dpo"], iterations=3, dpo=str(DPO)))
    assert [recipe.steps(r) for r in (1, 2, 3)] == [["sft"], ["sft", "dpo"], ["dpo"]]
    assert {m: p for m, (p, _) in recipe.stage_recipes().items()} == {"sft": SFT, "dpo": DPO}
    only_dpo = load_loop_recipe(loop_recipe(tmp_path, method="dpo", train=None, dpo=str(DPO)))
    assert list(only_dpo.stage_recipes()) == ["dpo"] and only_dpo.steps(2) == ["dpo"]


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
    assert [r.get("method") for r in rows] == [None, "sft", "sft"]  # preference pairs: a tiny run has few
    table = (out / "metrics.md").read_text()
    header = "| round | method | kept_pairs | preference_pairs | contamination_rate | train_loss | gsm8k_0shot/"
    assert table.startswith(header + "strict-match |")
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
    assert "# alice/loop-model-round2" in card and "| gsm8k_0shot | strict-match |" in card and " pts [" in card
    assert "## Decontamination" in hub.file("dataset", "alice/loop-data-round1", "README.md").decode()
    assert not hub.unknown_routes


@pytest.mark.parametrize("text", ["", "null\n", "[1, 2]\n", "7\n"])
def test_an_empty_or_non_mapping_loop_recipe_names_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text(text)
    with pytest.raises(LoopError) as err:
        load_loop_recipe(path)
    assert str(path) in str(err.value) and "AttributeError" not in str(err.value)


@pytest.mark.slow
def test_a_round_of_sft_then_dpo_trains_dpo_from_the_sft_model(run_copy, smollm2_hf, tmp_path):
    """Real TRL, both trainers: ``method: sft+dpo`` fine-tunes on the run's kept pairs, then runs DPO on its
    preference pairs starting from the SFT model; a re-run repeats neither. (A run of the tiny model in the
    two-round test above has too few disagreeing, uncut chains to give pairs reliably: here the run's pairs
    come from a scripted model.)"""
    from crescent_distilabel.loop import _train_round
    from crescent_distilabel.run_dir import RunDir

    recipe = load_loop_recipe(
        loop_recipe(
            tmp_path,
            method="sft+dpo",
            dpo=str(DPO),
            train_overrides=["--max_steps", "1"],
            dpo_overrides=["--max_steps", "1"],
        )
    )
    model_dir = tmp_path / "round-1" / "model"
    said: list[str] = []
    trained = _train_round(recipe, 1, str(smollm2_hf), run_copy, model_dir, said.append)
    sft = json.loads((tmp_path / "round-1" / "model-sft" / "crescent_train.json").read_text())
    assert sft["method"] == "sft" and sft["base_model"] == str(smollm2_hf) and sft["steps"] == 1
    assert trained.method == "dpo" and trained.base_model == sft["model_dir"] and trained.output_dir == str(model_dir)
    assert trained.rows == len(RunDir(run_copy).load("preference")) > 0
    assert [m.split(" (")[1].split(")")[0] for m in said] == ["SFT", "DPO"]
    again: list[str] = []
    assert _train_round(recipe, 1, str(smollm2_hf), run_copy, model_dir, again.append).model_dir == trained.model_dir
    assert again == []  # both trainings finished: nothing is trained again
