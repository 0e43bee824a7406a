"""The `crescent` command as a user runs it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CPU_RECIPE = REPO / "recipes" / "SmolLM2-135M-Instruct" / "generate" / "config_cpu.yaml"


def crescent(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_show_recipe_applies_overrides() -> None:
    done = crescent("show-recipe", str(CPU_RECIPE), "--set", "consensus.k=5", "--set", "preset=paper")
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["consensus"]["k"] == 5 and shown["consensus"]["tie_policy"] == "first"
    assert shown["bait"]["num_calls"] == 4


def test_bad_recipe_exits_2_naming_the_key(tmp_path: Path) -> None:
    done = crescent("generate", str(CPU_RECIPE), "--set", "consensus.k=0", "--output-dir", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "consensus.k:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_unreachable_endpoint_exits_1_with_the_url(tmp_path: Path) -> None:
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    done = crescent(
        "generate", "--set", "question_model.backend=openai", "--set", f"question_model.base_url={url}",
        "--output-dir", str(tmp_path / "o"), timeout=60,
    )  # fmt: skip
    assert done.returncode == 1 and url in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow
def test_generate_runs_the_cpu_recipe_and_prints_the_summary(tmp_path: Path) -> None:
    out = tmp_path / "o"
    args = ["--set", "bait.num_calls=1", "--set", "bait.samples_per_call=3", "--set", "sampling.max_new_tokens=64"]
    done = crescent("generate", str(CPU_RECIPE), *args, "--set", "consensus.k=2", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith(str(out))
    for row in (
        "raw samples (bait prompting)",
        "kept (consensus)",
        "tokens/s",
        "wall time",
        "cut off",
        "generations (stored",
        "answer: LLM calls / tokens / tokens/s",
        "LLM calls per kept pair",
        "0 (CPU run)",
    ):
        assert row in done.stderr
    assert (out / "default").is_dir() and (out / "dropped").is_dir() and (out / "README.md").is_file()
    again = crescent("generate", str(CPU_RECIPE), *args, "--set", "consensus.k=2", "--output-dir", str(out))
    assert again.returncode == 0 and "(resumed)" in again.stderr  # a finished run is rewritten, not redone
    changed = crescent("generate", str(CPU_RECIPE), *args, "--output-dir", str(out))  # k back to 3
    assert changed.returncode == 1 and "consensus.k: 2 -> 3" in changed.stderr and "--overwrite" in changed.stderr
