"""Runs on a real Ray cluster: a head and two worker nodes on 127.0.0.1, SmolLM2 through embedded llama.cpp.

The same recipe and seed, run locally and on the cluster with two replicas for bait prompting and consensus,
must give the same rows; a re-run on Ray into a finished run's directory makes no LLM call.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from datasets import load_from_disk

from crescent_distilabel import load_recipe, run_recipe
from crescent_distilabel.ray_cluster import RayClusterError

# no usage reports; a loopback test cluster without token auth (a token in ~/.ray would otherwise be half-used)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
os.environ.update(RAY_ENV)

SMALL = {
    "seed": 7,
    "question_model": {"model": "smollm2", "n_threads": 1},
    "sampling": {"max_new_tokens": 96},
    "bait": {"num_calls": 4, "samples_per_call": 3},
    "consensus": {"k": 2, "batch_size": 2},
}
ON_RAY = {"enabled": True, "replicas": {"bait": 2, "consensus": 2}}


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _own_leftovers(marker: str) -> list[int]:
    """PIDs of processes whose command line names this cluster's temp dir (ours, and only ours)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def ray_cluster():
    """``ray start --block`` for a head and two workers (2 CPUs each), on 127.0.0.1 with their own temp dir;
    stopped by the PIDs of those commands (SIGTERM drains and stops each node's processes), never with
    ``ray stop``, which would stop every Ray node of this user on the machine."""
    from conftest import free_port

    pytest.importorskip("ray")
    tmp = tempfile.mkdtemp(prefix="crray", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    port = free_port()
    env = {**os.environ, **RAY_ENV, "HF_HUB_OFFLINE": "1"}
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--block"]
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        with open(Path(tmp) / f"{name}.log", "wb") as log:
            procs.append(
                subprocess.Popen([_ray_bin(), "start", *args, *common], stdout=log, stderr=subprocess.STDOUT, env=env)
            )

    import ray

    try:
        head = ["--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false", "--temp-dir", tmp]
        start("head", [*head, "--dashboard-host", "127.0.0.1"])
        address = f"127.0.0.1:{port}"
        _wait_for_nodes(address, 1, procs, tmp)
        for i in (1, 2):  # one at a time: two raylets starting at once time out on a loaded 2-core machine
            start(f"worker{i}", ["--address", address, "--num-cpus", "2"])
            _wait_for_nodes(address, 1 + i, procs, tmp)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        deadline = time.monotonic() + 20
        while _own_leftovers(tmp) and time.monotonic() < deadline:
            time.sleep(0.5)
        leftovers = _own_leftovers(tmp)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"Ray processes still running after stop: {leftovers}"


def _wait_for_nodes(address: str, n: int, procs: list[subprocess.Popen], tmp: str) -> None:
    """Poll until the cluster has ``n`` live nodes (each check connects and disconnects a driver)."""
    import ray

    deadline = time.monotonic() + 120
    while True:
        for proc in procs:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text()[-1500:] for p in Path(tmp).glob("*.log"))
                pytest.fail(f"ray start exited with {proc.returncode}:\n{logs}")
        try:
            ray.init(address=address, configure_logging=False, log_to_driver=False)
            alive = sum(1 for node in ray.nodes() if node["Alive"])
        except Exception:
            alive = 0
        finally:
            if ray.is_initialized():
                ray.shutdown()
        if alive >= n:
            assert alive == n
            return
        if time.monotonic() > deadline:
            pytest.fail(f"Ray cluster at {address} has {alive} of {n} nodes after 120 s")
        time.sleep(1)


def rows(output_dir: Path) -> dict[str, list[dict]]:
    return {c: load_from_disk(str(output_dir / c / "train")).to_list() for c in ("default", "dropped")}


def assert_same_rows(got: dict[str, list[dict]], want: dict[str, list[dict]]) -> None:
    """Equal rows; embedding similarities may differ in the last float bits (torch uses one thread in a Ray
    actor, OMP_NUM_THREADS=1, and several in a local step process)."""
    for config in want:
        assert len(got[config]) == len(want[config]), config
        for a, b in zip(got[config], want[config]):
            for key in b:
                if isinstance(b[key], float):
                    assert math.isclose(a[key], b[key], rel_tol=1e-5), (config, key, a[key], b[key])
                else:
                    assert a[key] == b[key], (config, key)


@pytest.mark.slow
def test_ray_run_matches_local_and_resumes(ray_cluster: str, smollm2_path: Path, tmp_path: Path) -> None:
    local = run_recipe(load_recipe({**SMALL, "output_dir": str(tmp_path / "local")}))
    assert local.complete and local.new_generations > 0
    want = rows(tmp_path / "local")
    assert len(want["default"]) + len(want["dropped"]) == 12

    out = tmp_path / "ray"
    on_ray = run_recipe(load_recipe({**SMALL, "output_dir": str(out), "ray": {**ON_RAY, "address": ray_cluster}}))
    assert on_ray.complete, on_ray.message
    assert on_ray.new_generations == local.new_generations  # every bait call and answer made once
    assert_same_rows(rows(out), want)
    log = (out / "distiset_configs" / "pipeline.log").read_text()
    assert "'bait_prompting' replicas: 2/2" in log and "'consensus' replicas: 2/2" in log

    # resume on Ray: a finished run is rewritten from the progress store, with no LLM call
    again = run_recipe(load_recipe({**SMALL, "output_dir": str(out), "ray": {**ON_RAY, "address": ray_cluster}}))
    assert again.complete and again.resumed and again.new_generations == 0
    assert json.loads((out / "crescent_run.json").read_text())["new_generations"] == 0
    assert_same_rows(rows(out), want)


def test_unreachable_head_fails_before_touching_output_dir(tmp_path: Path) -> None:
    from conftest import free_port

    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    address = f"127.0.0.1:{free_port()}"
    recipe = load_recipe({**SMALL, "output_dir": str(out), "ray": {"enabled": True, "address": address}})
    with pytest.raises(RayClusterError, match=address):
        run_recipe(recipe, overwrite=True)
    assert (out / "keep.txt").read_text() == "precious"


def test_cli_without_ray_installed_names_the_extra(tmp_path: Path) -> None:
    """A subprocess where ``import ray`` fails (sys.modules['ray'] = None), as on an install without [ray]."""
    code = (
        "import sys; sys.modules['ray'] = None; from crescent_distilabel.cli import main; "
        f"sys.exit(main(['generate', '--ray', '--output-dir', {str(tmp_path / 'o')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "pip install 'crescent-distilabel[ray]'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_ray_section_does_not_change_the_fingerprint() -> None:
    plain = load_recipe(SMALL)
    on_ray = load_recipe({**SMALL, "ray": {**ON_RAY, "address": "auto", "gpus_per_replica": 1}})
    assert plain.fingerprint() == on_ray.fingerprint()


def test_diversify_replicas_are_refused_with_the_reason() -> None:
    from crescent_distilabel.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"ray.replicas.diversify: .*must be 1.*history"):
        load_recipe({"ray": {"enabled": True, "replicas": {"diversify": 2}}})
