"""The `crescent` command as a user runs it (a real subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import worker_threads

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


HEAVY = ("distilabel", "datasets", "torch", "transformers", "llama_cpp")
IMPORTS_AFTER = """
import contextlib, io, json, sys
from crescent_distilabel.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


@pytest.mark.parametrize("args", [["--help"], ["show-recipe"], ["show-recipe", str(CPU_RECIPE), "--set", "seed=1"]])
def test_help_and_show_recipe_load_no_heavy_library(args: list[str]) -> None:
    """Every CLI call used to import distilabel and datasets first (about 1.7 s): now only the commands that
    need them do."""
    code = IMPORTS_AFTER.format(heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    light = "import crescent_distilabel as c, sys; c.load_recipe({}); print('distilabel' in sys.modules)"
    public = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, timeout=300)
    assert public.stdout.strip() == "False", public.stderr[-2000:]


def test_the_public_names_still_import_from_the_package() -> None:
    import crescent_distilabel

    for name in crescent_distilabel.__all__:
        assert getattr(crescent_distilabel, name).__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        crescent_distilabel.nope  # noqa: B018


def test_bad_recipe_exits_2_naming_the_key(tmp_path: Path) -> None:
    done = crescent("generate", str(CPU_RECIPE), "--set", "consensus.k=0", "--output-dir", str(tmp_path / "o"))
    assert done.returncode == 2
    assert "consensus.k:" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_overwrite_and_rebuild_together_exit_2_touching_nothing(tmp_path: Path) -> None:
    out = tmp_path / "o"
    done = crescent("generate", str(CPU_RECIPE), "--overwrite", "--rebuild", "--output-dir", str(out))
    assert done.returncode == 2 and "--rebuild keeps the LLM outputs" in done.stderr, done.stderr
    assert not out.exists()


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
    args += ["--set", f"question_model.n_threads={worker_threads()}"]
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
    assert "crescent: " in done.stderr and "3/3 samples" in done.stderr  # plain progress lines off a terminal
    assert "INFO" not in done.stdout + done.stderr and "Warning" not in done.stderr  # no log or warning noise
    assert "INFO" in (out / "distiset_configs" / "pipeline.log").read_text()  # the log is in the run's file
    again = crescent("generate", str(CPU_RECIPE), *args, "--set", "consensus.k=2", "--output-dir", str(out))
    assert again.returncode == 0 and "(resumed)" in again.stderr  # a finished run is rewritten, not redone
    changed = crescent("generate", str(CPU_RECIPE), *args, "--output-dir", str(out))  # k back to 3
    assert changed.returncode == 1 and "consensus.k: 2 -> 3" in changed.stderr and "--overwrite" in changed.stderr


def test_doctor_checks_the_cpu_recipe_for_real() -> None:
    done = crescent("doctor", str(CPU_RECIPE), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    out = done.stdout
    assert "[ok  ] question model: llama.cpp smollm2: generated a token" in out
    assert "[ok  ] embedding model sentence-transformers/all-MiniLM-L6-v2: 384-d" in out
    assert "[ok  ] llama.cpp build: portable" in out and "AVX2" in out
    assert "llama-cpp-python: 0.3.36" in out and "ready: every check passed" in out


def test_doctor_names_each_failure_and_its_fix(tmp_path: Path) -> None:
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    done = crescent(
        "doctor", "--set", "question_model.backend=openai", "--set", f"question_model.base_url={url}",
        "--set", f"answer_model.model={broken}", "--set", "diversify.enabled=false", timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert f"[FAIL] question model: {url}: cannot reach the OpenAI-compatible endpoint {url}" in done.stdout
    assert "[FAIL] answer model: llama.cpp" in done.stdout and "the GGUF may be damaged" in done.stdout
    assert "check(s) failed" in done.stdout and "Traceback" not in done.stdout


@pytest.mark.slow
def test_progress_shows_on_a_terminal_before_the_first_stage_ends(llamacpp_server: str, tmp_path: Path) -> None:
    """The CLI on a pseudo-terminal draws live progress as bait samples arrive, not after a stage."""
    import os
    import pty
    import re
    import select
    import time

    from conftest import cli_args, count_rows

    out = tmp_path / "run"
    master, slave = pty.openpty()
    proc = subprocess.Popen(cli_args(llamacpp_server, out), stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    seen, bait_calls_then = b"", None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
            if bait_calls_then is None and re.search(rb"\b([1-9]|1[01])/12 samples", seen):  # part of bait is in
                db = out / ".crescent" / "progress.sqlite"
                bait_calls_then = count_rows(db, "SELECT COUNT(*) FROM generations WHERE stage = 'bait'")
        while select.select([master], [], [], 1)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)
    text = seen.decode(errors="replace")
    assert bait_calls_then is not None and bait_calls_then < 3, text[-3000:]  # shown before bait ended
    assert "\x1b[" in text  # drawn as a live display (ANSI), not plain lines
    assert "12/12 samples" in text and "consensus" in text and "kept" in text
    assert "distilabel.pipeline" not in text  # distilabel's INFO log goes to pipeline.log only
    assert proc.returncode == 0
