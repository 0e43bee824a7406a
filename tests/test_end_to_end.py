"""The real thing: distilabel Pipeline + SmolLM2-135M-Instruct (llama.cpp) + all-MiniLM-L6-v2, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import worker_threads
from datasets import load_from_disk

from crescent_distilabel import load_recipe, run_recipe
from crescent_distilabel.pipeline import RUN_FILE

pytestmark = pytest.mark.slow

# Small but real: 2 calls x 4 samples, 3 answers each. A lower temperature than the paper's 1.0 so the
# 135M model agrees with itself often enough for kept pairs; the seed fixes llama.cpp's sampling.
SMALL = {
    "seed": 7,
    # the fast model: these tests check the pipeline, not data quality
    "question_model": {"model": "smollm2", "n_threads": worker_threads()},
    "bait": {"num_calls": 2, "samples_per_call": 4},
    "sampling": {"max_new_tokens": 160, "temperature": 0.3},
    "consensus": {"k": 3, "batch_size": 4},
}


def check_run(output_dir: Path, raw_samples: int) -> dict:
    """The Distiset on disk: kept pairs are complete, every other sample is accounted for by a reason."""
    record = json.loads((output_dir / RUN_FILE).read_text())
    summary = record["summary"]
    kept = load_from_disk(str(output_dir / "default" / "train"))
    dropped = load_from_disk(str(output_dir / "dropped" / "train"))
    assert summary["raw_samples"] == raw_samples == len(kept) + len(dropped)
    assert summary["kept"] == len(kept) and sum(summary["dropped"].values()) == len(dropped)
    assert len(kept) > 0, summary
    for row in kept:
        assert row["question"] and row["final_answer"] and row["drop_reason"] is None
        assert row["agreement"] >= 2 / 3 and row["k"] == 3 and len(row["chains"]) == 3
        assert row["messages"][0] == {"role": "user", "content": row["question"]}
        assert row["messages"][1]["content"] == row["answer"] and row["answer"] in row["chains"]
        assert row["final_answer"] == row["vote_answers"][0]
    assert all(reason for reason in dropped["drop_reason"])
    assert summary["tokens"] > 0 and summary["answer_tokens"] > 0
    stages = summary["stages"]  # a fresh run: its LLM calls made every token of the data
    assert sum(st["output_tokens"] for st in stages.values()) == summary["tokens"] == summary["generated_tokens"]
    assert stages["answer"]["output_tokens"] == summary["answer_tokens"] and stages["answer"]["tokens_per_s"] > 0
    assert stages["bait"]["calls"] >= 2 and stages["answer"]["calls"] >= summary["accepted"]  # more if n is ignored
    assert summary["calls_per_kept_pair"] == round(summary["llm_calls"] / summary["kept"], 3)
    assert summary["gpus"] == 0 and summary["gpu_hours"] == 0
    assert (output_dir / "distiset_configs" / "pipeline.yaml").is_file()
    assert yaml.safe_load((output_dir / "recipe.yaml").read_text())["seed"] == SMALL["seed"]
    return summary


@pytest.mark.parametrize("parallel", [1, 4])
def test_embedded_llamacpp_pipeline_end_to_end(tmp_path: Path, parallel: int) -> None:
    """One sequence at a time, and continuous batching (a call's sequences decode together in one context)."""
    model = {**SMALL["question_model"], "parallel": parallel}
    recipe = load_recipe({**SMALL, "question_model": model, "output_dir": str(tmp_path / "run")})
    result = run_recipe(recipe)
    assert result.complete, result.message
    summary = check_run(tmp_path / "run", raw_samples=8)
    assert summary == result.summary.to_dict()
    dumped = yaml.safe_load((tmp_path / "run" / "distiset_configs" / "pipeline.yaml").read_text())
    llms = [s["step"]["llm"] for s in dumped["pipeline"]["steps"] if s["step"].get("llm")]
    assert llms and {llm["parallel"] for llm in llms} == {parallel}


def test_openai_compatible_server_end_to_end(tmp_path: Path, llamacpp_server: str) -> None:
    recipe = load_recipe(
        {
            **SMALL,
            "output_dir": str(tmp_path / "run"),
            "question_model": {"backend": "openai", "model": "smollm2", "base_url": llamacpp_server},
        }
    )
    result = run_recipe(recipe)
    assert result.complete, result.message
    check_run(tmp_path / "run", raw_samples=8)


def test_pipeline_yaml_round_trip_runs_with_distilabel_cli(tmp_path: Path) -> None:
    """The pipeline.yaml a run writes is enough for `distilabel pipeline run --config` to run it again."""
    tiny = {
        "question_model": {"model": "smollm2", "n_threads": worker_threads()},
        "bait": {"num_calls": 1, "samples_per_call": 2},
        "sampling": {"max_new_tokens": 48},
    }
    first = run_recipe(load_recipe({**tiny, "output_dir": str(tmp_path / "run"), "consensus": {"k": 2}}))
    assert first.complete, first.message
    config = tmp_path / "run" / "distiset_configs" / "pipeline.yaml"
    dumped = yaml.safe_load(config.read_text())
    steps = {s["step"]["name"]: s["step"] for s in dumped["pipeline"]["steps"]}
    assert steps["consensus"]["num_answers"] == 2 and steps["bait_prompting"]["num_calls"] == 1
    env = {**os.environ, "DISTILABEL_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-m", "distilabel", "pipeline", "run", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outputs = list((tmp_path / "cache").rglob("steps_outputs/consensus/*.parquet"))
    assert outputs, done.stdout[-2000:]
    table = pq.read_table(outputs[0])
    assert table.num_rows == 2 and {"question", "chains", "drop_reason", "messages"} <= set(table.column_names)
    assert set(table.column("k").to_pylist()) == {2}


def test_ready_pipeline_script_runs(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[1] / "pipelines" / "crescent_pipeline.py"
    args = ["--num-calls", "1", "--samples-per-call", "2", "--k", "2", "--max-new-tokens", "48"]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = load_from_disk(str(tmp_path / "out" / "default" / "train"))
    assert len(rows) == 2 and set(rows["k"]) == {2} and "messages" in rows.column_names
