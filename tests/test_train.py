"""Training recipes and their checks: every recipe parses with the pinned TRL; bad input fails before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALICE, hub_env

from crescent_distilabel.train import (
    TrainError,
    gpu_only_settings,
    load_training_data,
    parse_sft_recipe,
    parse_train_recipe,
    preflight,
    to_prompt_completion,
)

ROOT = Path(__file__).resolve().parents[1]
SFT_RECIPES = sorted(ROOT.glob("recipes/*/sft/*.yaml"))
CPU_LORA = ROOT / "recipes/SmolLM2-135M-Instruct/sft/config_cpu_lora.yaml"
DPO_RECIPES = sorted(ROOT.glob("recipes/*/dpo/*.yaml"))
DPO_CPU = ROOT / "recipes/SmolLM2-135M-Instruct/dpo/config_cpu_lora.yaml"


def test_recipes_exist_in_the_open_r1_layout():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in SFT_RECIPES}
    assert {
        "Llama-3-8B-Instruct/sft/config_full.yaml",
        "Llama-3-8B-Instruct/sft/config_lora.yaml",
        "SmolLM2-135M-Instruct/sft/config_cpu.yaml",
        "SmolLM2-135M-Instruct/sft/config_cpu_lora.yaml",
    } <= names


@pytest.mark.parametrize("path", SFT_RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_every_recipe_parses_with_the_pinned_trl(path):
    recipe = parse_sft_recipe(path, hardware_check=False)  # unknown or renamed keys raise here
    t = recipe.training
    assert t.completion_only_loss is True  # loss on the assistant turn only
    assert recipe.data.datasets and recipe.data.datasets[0].columns == ["prompt", "completion"]
    assert 0 < t.warmup_steps < 1  # a ratio: transformers 5 dropped warmup_ratio
    if "Llama-3-8B" in str(path):
        assert t.learning_rate == (2e-5 if "full" in path.name else 1e-4)
        assert t.lr_scheduler_type == "linear" and t.num_train_epochs == 2 and t.max_length == 2048
        assert recipe.model.model_name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    if path.name == "config_full.yaml":  # 2 per device x 8 accumulation x 8 GPUs = 128
        assert t.per_device_train_batch_size * t.gradient_accumulation_steps * 8 == 128
    assert recipe.model.use_peft == ("lora" in path.name)


def test_trl_own_cli_accepts_the_cpu_recipe():
    """The same file through TRL's parser as `trl sft --config` uses it (help only: no training here)."""
    done = subprocess.run(
        [sys.executable, "-m", "trl.scripts.sft", "--config", str(CPU_LORA), "--help"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--completion_only_loss" in done.stdout


@pytest.mark.parametrize("path", DPO_RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_every_dpo_recipe_parses_as_trl_dpo_reads_it(path):
    recipe = parse_train_recipe(path, hardware_check=False)
    assert recipe.method == "dpo" and type(recipe.training).__name__ == "DPOConfig"
    assert recipe.data.datasets[0].name == "preference"
    assert recipe.data.datasets[0].columns == ["prompt", "chosen", "rejected"]
    assert recipe.training.beta == 0.1 and recipe.training.loss_type == ["sigmoid"] and recipe.model.use_peft
    with pytest.raises(TrainError, match="beta"):  # an SFT parser does not know DPO's keys
        parse_train_recipe(path, method="sft", hardware_check=False)


def test_the_dpo_recipes_cover_cpu_and_gpu_and_trl_dpo_accepts_the_cpu_one():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in DPO_RECIPES}
    assert {"SmolLM2-135M-Instruct/dpo/config_cpu_lora.yaml", "Llama-3-8B-Instruct/dpo/config_lora.yaml"} <= names
    done = subprocess.run(
        [sys.executable, "-m", "trl.scripts.dpo", "--config", str(DPO_CPU), "--help"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--beta" in done.stdout


def test_dpo_data_comes_from_the_preference_config_and_an_empty_one_says_why(run_copy, tmp_path):
    from datasets import load_from_disk

    from crescent_distilabel.train import use_dataset

    recipe = parse_train_recipe(DPO_CPU, ["--model_name_or_path", str(tmp_path)])
    use_dataset(recipe, str(run_copy))
    data = load_training_data(recipe)
    assert data.column_names == ["prompt", "chosen", "rejected"] and len(data) == 3
    assert (
        data.to_list()
        == load_from_disk(str(run_copy / "preference"))["train"]
        .select_columns(["prompt", "chosen", "rejected"])
        .to_list()
    )
    use_dataset(recipe, str(run_copy), "default")  # kept pairs have no chosen/rejected
    with pytest.raises(TrainError, match="DPO needs prompt, chosen, rejected"):
        load_training_data(recipe)
    pairs = load_from_disk(str(run_copy / "preference"))["train"]
    from crescent_distilabel.run_dir import RunDir

    RunDir(run_copy).save("preference", pairs.select([]))
    use_dataset(recipe, str(run_copy))
    with pytest.raises(TrainError, match="no preference pairs"):
        load_training_data(recipe)


def test_an_unknown_key_is_rejected_with_the_file_named(tmp_path):
    bad = tmp_path / "typo.yaml"
    bad.write_text(CPU_LORA.read_text() + "\nlearning_rat: 0.1\n")
    with pytest.raises(TrainError, match=r"typo.yaml.*learning_rat"):
        parse_sft_recipe(bad)


def test_gpu_only_settings_on_cpu_fail_with_a_clear_message(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this check is for machines without a GPU")
    with pytest.raises(TrainError, match=r"bf16/fp16 mixed precision, which needs a GPU.*--bf16 false"):
        parse_sft_recipe(ROOT / "recipes/Llama-3-8B-Instruct/sft/config_full.yaml")
    recipe = parse_sft_recipe(
        CPU_LORA,
        ["--attn_implementation", "flash_attention_2", "--use_liger_kernel", "true", "--optim", "paged_adamw_8bit"],
    )
    assert len(gpu_only_settings(recipe)) == 3
    with pytest.raises(TrainError, match=r"no CUDA GPU.*use_liger_kernel.*flash_attention_2.*paged_adamw_8bit"):
        preflight(recipe)


def test_a_model_that_does_not_exist_fails_before_loading(tmp_path, hub):
    recipe = parse_sft_recipe(CPU_LORA, ["--model_name_or_path", str(tmp_path / "no-such-model")])
    with pytest.raises(TrainError, match="neither an existing directory nor a Hub id"):
        preflight(recipe)
    (tmp_path / "empty").mkdir()
    recipe = parse_sft_recipe(CPU_LORA, ["--model_name_or_path", str(tmp_path / "empty")])
    with pytest.raises(TrainError, match="holds no transformers model"):
        preflight(recipe)
    # a Hub id, asked of the (fake) Hub through the real huggingface_hub client
    code = (
        "from crescent_distilabel.train import parse_sft_recipe, preflight, TrainError\n"
        f"r = parse_sft_recipe({str(CPU_LORA)!r}, ['--model_name_or_path', 'alice/no-such-model'])\n"
        "try:\n    preflight(r)\nexcept TrainError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=hub_env(hub, tmp_path), capture_output=True, text=True)
    assert "model 'alice/no-such-model' does not exist on the Hub" in done.stdout, done.stderr[-2000:]


def test_a_dataset_without_the_expected_columns_is_named(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"instruction": "2+2?", "output": "4"}) + "\n")
    recipe = parse_sft_recipe(CPU_LORA, ["--model_name_or_path", str(tmp_path)])
    recipe.data.datasets[0].path, recipe.data.datasets[0].name = "json", None
    recipe.data.datasets[0].data_files = str(data)
    with pytest.raises(TrainError, match=r"columns \['instruction', 'output'\]; training needs 'prompt' and"):
        load_training_data(recipe)


def test_messages_only_data_is_split_into_prompt_and_completion():
    from datasets import Dataset

    ds = Dataset.from_list(
        [
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "x": 1},
            {"messages": [{"role": "user", "content": "only a question"}], "x": 2},
        ]
    )
    out = to_prompt_completion(ds, "test")
    assert out.column_names == ["prompt", "completion"] and len(out) == 1
    assert out[0] == {
        "prompt": [{"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }


def test_a_missing_token_stops_before_training(run_copy, hub, tmp_path):
    out = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", "train", "--config", str(CPU_LORA), "--dataset",
         str(run_copy), "--output_dir", str(out), "--push-to-hub", "alice/x"],
        env=hub_env(hub, tmp_path, token=None), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1 and "no Hugging Face token: set HF_TOKEN" in done.stderr
    assert "nothing was trained" in done.stderr and not out.exists()


@pytest.mark.slow
def test_crescent_train_lora_evaluate_and_publish(run_copy, smollm2_hf, hub, tmp_path):
    """Real: TRL LoRA steps on the run's pairs with SmolLM2, merged copy reloaded by lm-eval on GSM8K problems,
    the before/after table in the model card, and the model published (real client, FAKE Hub)."""
    out = tmp_path / "model"
    env = hub_env(hub, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", "train", "--config", str(CPU_LORA),
         "--model_name_or_path", "smollm2", "--max_steps", "3", "--output_dir", str(out),
         "--dataset", str(run_copy),
         "--evaluate", "--tasks", "gsm8k_0shot", "--limit", "3", "--max-gen-toks", "64", "--batch-size", "3",
         "--push-to-hub", "alice/smol-crescent"],
        env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "crescent_train.json").read_text())
    assert record["steps"] == 3 and record["rows"] == 6 and record["peft"] and record["train_loss"] > 0
    assert record["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (out / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    assert (
        "| gsm8k_0shot | flexible-extract |" in done.stdout and " pts [" in done.stdout
    )  # the paired change, with its interval
    after = json.loads((out / "eval.json").read_text())
    assert after["scores"]["gsm8k_0shot"]["strict-match"]["n"] == 3 and after["model"].endswith("merged")

    card = hub.file("model", "alice/smol-crescent", "README.md").decode()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "library_name: peft" in card
    assert "| gsm8k_0shot | strict-match |" in card and "`recipe.yaml`" in card
    assert hub.file("model", "alice/smol-crescent", "recipe.yaml").decode() == CPU_LORA.read_text()
    assert hub.file("model", "alice/smol-crescent", "adapter_model.safetensors")
    with pytest.raises(KeyError):
        hub.file("model", "alice/smol-crescent", "merged/model.safetensors")  # merged weights stay local
    assert not hub.unknown_routes
    assert ALICE.encode() not in hub.all_bytes() and ALICE not in done.stdout + done.stderr  # the token stays secret


@pytest.mark.slow
def test_crescent_train_dpo_on_the_runs_preference_pairs(run_copy, smollm2_hf, tmp_path):
    """Real: TRL DPO steps (LoRA, the base as reference) with SmolLM2 on the run's preference config, picked by
    the recipe's dpo/ folder; merged copy and a model card that says DPO."""
    out = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", "train", "--config", str(DPO_CPU),
         "--model_name_or_path", "smollm2", "--max_steps", "2", "--output_dir", str(out), "--dataset", str(run_copy)],
        capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 3 preference pairs (DPO)" in done.stderr
    record = json.loads((out / "crescent_train.json").read_text())
    assert record["method"] == "dpo" and record["steps"] == 2 and record["rows"] == 3 and record["peft"]
    assert record["train_loss"] == pytest.approx(0.6931, abs=0.05)  # log 2: the policy starts as the reference
    assert (out / "adapter_model.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert "- dpo" in card and "`DPOTrainer` on self-consistency preference pairs" in card
    assert "trl dpo --config recipe.yaml" in card
