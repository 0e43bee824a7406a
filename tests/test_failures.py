"""A run never hangs and never lies: dead step processes, dead servers, refused requests, faults in a step.

Real processes die here for real: the CLI's step processes are sent SIGSEGV and SIGKILL while they work against
the real llama.cpp server; ``CrashingLLM`` (a named fake, tests/fakes.py) ends its own process with
``os._exit`` or ``abort()`` inside a real distilabel pipeline; a real llama.cpp server is killed mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli_args, count_rows, dataset, differences, openai_recipe, worker_threads
from fakes import CrashingLLM, FakeLLM
from fault_proxy import FaultProxy

from crescent_distilabel import load_recipe, run_recipe
from crescent_distilabel.pipeline import progress_path
from crescent_distilabel.steps import Consensus
from crescent_distilabel.store import ProgressStore

REPO = Path(__file__).resolve().parents[1]

APPLES = "Tom has 3 apples and buys 5 more. How many apples does Tom have now?"
TRAIN = "A train travels 60 km per hour for 3 hours. How far does it travel?"
AREA = "A rectangle is 8 cm long and 5 cm wide. What is its area?"
ANSWERS = {
    "apples": ["3 + 5 = 8\n#### Answer: 8"],
    "train": ["60 * 3 = 180\n#### Answer: 180"],
    "rectangle": ["8 * 5 = 40\n#### Answer: 40"],
}


def fake_recipe(out: Path, **sections) -> object:
    return load_recipe({"output_dir": str(out), "bait": {"num_calls": 1, "samples_per_call": 3}, **sections})


def worker_pid(db: Path, step: str, deadline: float) -> int:
    """The PID of the process running ``step``, as the step registered it in the progress store."""
    while time.monotonic() < deadline:
        if db.exists():
            store = ProgressStore(db)
            try:
                found = [int(k.split(":")[1]) for k, v in store.states("worker:").items() if v == step]
            finally:
                store.close()
            if found:
                return found[0]
        time.sleep(0.05)
    raise AssertionError(f"step {step} never registered")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("step", "sig", "stage_sql"),
    [
        ("bait_prompting", signal.SIGSEGV, "SELECT COUNT(*) FROM generations WHERE stage = 'bait' AND created > ?"),
        ("consensus", signal.SIGKILL, "SELECT COUNT(*) FROM generations WHERE stage = 'answer' AND created > ?"),
    ],
)
def test_a_step_process_killed_mid_run_stops_the_cli_with_exit_3_and_the_rerun_completes(
    llamacpp_server: str, reference, tmp_path: Path, step: str, sig: signal.Signals, stage_sql: str
) -> None:
    out = tmp_path / "run"
    args = cli_args(llamacpp_server, out)
    started = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid = worker_pid(progress_path(out), step, time.monotonic() + 120)
        deadline = time.monotonic() + 300
        while count_rows(progress_path(out), stage_sql, started) < 1:  # the stage is at work
            assert proc.poll() is None and time.monotonic() < deadline, "the stage never produced a result"
            time.sleep(0.05)
        os.kill(pid, sig)
        killed_at = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, err[-3000:]
    assert took < 30, f"the run took {took:.0f} s to notice the dead process"
    assert f"'{step}' step's process" in err and sig.name in err, err[-3000:]
    assert "re-run the same command to continue" in err
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (diff := differences(dataset(out), reference[0])), "\n".join(diff)  # nothing lost or duplicated


@pytest.mark.parametrize(("how", "code", "text"), [("exit", 7, "exited with code 7"), ("abort", -6, "SIGABRT")])
def test_a_step_that_exits_or_aborts_ends_the_run_incomplete_and_the_rerun_completes(
    tmp_path: Path, how: str, code: int, text: str
) -> None:
    out = tmp_path / "run"
    bait = FakeLLM(rules={"creativity": [APPLES, TRAIN, AREA]})
    start = time.monotonic()
    first = run_recipe(
        fake_recipe(out), question_llm=bait, answer_llm=CrashingLLM(rules=ANSWERS, crash_on="train", how=how)
    )
    assert time.monotonic() - start < 60
    assert not first.complete and "'consensus' step's process" in first.message and text in first.message
    assert "re-run the same command to continue" in first.message
    second = run_recipe(fake_recipe(out), question_llm=bait, answer_llm=FakeLLM(rules=ANSWERS))
    assert second.complete and second.resumed and second.summary.kept == 3
    assert {r["final_answer"] for r in dataset(out)["default"]} == {"8", "180", "40"}


def test_a_model_file_that_cannot_load_is_a_clear_error_within_seconds(tmp_path: Path) -> None:
    """The real llama.cpp backend fails to load a corrupt GGUF inside its step process. distilabel sends the
    failed step back with its error; our step's open progress store did not pickle, the error was lost and the
    run hung for good. Now: exit 1 with the loader's message, nothing written but the run's own files."""
    import sys

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(1 << 16))
    out = tmp_path / "run"
    recipe = REPO / "recipes" / "SmolLM2-135M-Instruct" / "generate" / "config_cpu.yaml"
    args = [sys.executable, "-m", "crescent_distilabel.cli", "generate", str(recipe), "--set", f"output_dir={out}"]
    start = time.monotonic()
    done = subprocess.run([*args, "--set", f"question_model.model={bad}"], capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 60
    assert done.returncode == 1, done.stderr[-2000:]
    assert "a step could not load" in done.stderr and str(bad) in done.stderr
    assert "nothing was generated" in done.stderr
    assert "Traceback" not in done.stderr  # not even distilabel's log listener dying at exit
    assert progress_path(out).exists()  # the run got as far as its store, and wrote no generation in it
    assert count_rows(progress_path(out), "SELECT COUNT(*) FROM generations WHERE created > ?") == 0


def test_a_store_sent_to_another_process_carries_only_its_path(tmp_path: Path) -> None:
    import pickle

    store = ProgressStore(tmp_path / "p.sqlite")
    copy = pickle.loads(pickle.dumps(store))
    assert copy.path == store.path
    with pytest.raises(RuntimeError, match="sent to another process"):
        copy.count_generations()
    assert store.count_generations() == 0  # the original is untouched
    store.close()


class BrokenConsensus(Consensus):
    """A consensus step whose own code fails (a bug, not a backend failure)."""

    def vote(self, chains):  # type: ignore[no-untyped-def]
        raise KeyError("a bug in the vote")


def test_an_exception_in_a_steps_own_code_is_an_error_not_a_complete_run(tmp_path: Path) -> None:
    bait = FakeLLM(rules={"creativity": [APPLES, TRAIN, AREA]})
    result = run_recipe(
        fake_recipe(tmp_path / "run"),
        question_llm=bait,
        answer_llm=FakeLLM(rules=ANSWERS),
        consensus_step=BrokenConsensus,
    )
    assert not result.complete
    assert "consensus: the step raised KeyError" in result.message and "a bug in the vote" in result.message


def test_an_in_process_refusal_drops_that_row_only_and_is_never_asked_again(tmp_path: Path) -> None:
    out = tmp_path / "run"
    bait = FakeLLM(rules={"creativity": [APPLES, TRAIN, AREA]})
    refusing = FakeLLM(rules=ANSWERS, fail_on="train", refuse=True)
    first = run_recipe(fake_recipe(out), question_llm=bait, answer_llm=refusing)
    assert first.complete and first.summary.kept == 2 and first.summary.dropped == {"answer_rejected": 1}
    again = FakeLLM(rules=ANSWERS)  # would answer now: a rejection is final, so it must not be asked
    second = run_recipe(fake_recipe(out), question_llm=bait, answer_llm=again)
    assert second.complete and second.summary.dropped == {"answer_rejected": 1} and second.summary.kept == 2
    assert second.summary.llm_calls == 0


@pytest.mark.slow
def test_a_400_for_one_prompt_drops_that_row_with_its_reason_and_a_rerun_never_resends_it(
    llamacpp_server: str, reference, tmp_path: Path
) -> None:
    want, _ = reference
    out = tmp_path / "run"
    proxy = FaultProxy(llamacpp_server, reject_first="#### Answer").start()  # the first answer request
    try:
        first = run_recipe(load_recipe(openai_recipe(proxy.url, out)))
        assert first.complete, first.message
        assert sum(proxy.rejected.values()) == 1 and first.summary.dropped.get("answer_rejected") == 1
        second = run_recipe(load_recipe(openai_recipe(proxy.url, out)))
    finally:
        proxy.stop()
    assert second.complete and second.summary.llm_calls == 0 and sum(proxy.rejected.values()) == 1
    got = dataset(out)
    refused = [r for r in got["dropped"] if r["drop_reason"] == "answer_rejected"]
    assert len(refused) == 1
    question = refused[0]["question"]
    # every other row is exactly what an unrefused run gives
    assert [r for r in got["default"] if r["question"] != question] == [
        r for r in want["default"] if r["question"] != question
    ]
    other = lambda rows: [r for r in rows if r["question"] != question]  # noqa: E731
    assert other(got["dropped"]) == other(want["dropped"])
    store = ProgressStore(progress_path(out))
    assert store.count_rejections("answer") == 1
    store.close()


@pytest.mark.slow
def test_a_server_that_refuses_the_bait_prompt_stops_the_run_with_its_message(
    llamacpp_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    proxy = FaultProxy(llamacpp_server, reject_all="creativity").start()
    try:
        first = run_recipe(load_recipe(openai_recipe(proxy.url, out)))
    finally:
        proxy.stop()
    assert not first.complete
    assert "rejected every bait request" in first.message and "maximum context length" in first.message
    store = ProgressStore(progress_path(out))
    assert store.count_rejections() == 0  # nothing recorded: once the cause is fixed, a re-run asks again
    store.close()


@pytest.mark.slow
def test_a_server_killed_mid_run_is_a_clear_error_within_seconds_and_resumable(
    smollm2_path: Path, reference, tmp_path: Path
) -> None:
    from crescent_distilabel.backends import serve_llamacpp

    out = tmp_path / "run"
    with serve_llamacpp(smollm2_path, tmp_path / "server.log", n_threads=worker_threads()) as url:
        recipe = load_recipe(openai_recipe(url, out))
        from crescent_distilabel.backends import LocalServer

        (server,) = [s for s in LocalServer.running() if s.base_url == url]
        killer = _kill_when(progress_path(out), server, "SELECT COUNT(*) FROM generations WHERE stage = 'answer'")
        start = time.monotonic()
        first = run_recipe(recipe)
        took = time.monotonic() - killer.result()
        assert not first.complete and "llama_cpp.server" in first.message and "SIGKILL" in first.message
        assert took < 15, f"{took:.0f} s to notice the dead server"
        assert time.monotonic() - start < 600
    with serve_llamacpp(smollm2_path, tmp_path / "server2.log", n_threads=worker_threads()) as url:
        second = run_recipe(load_recipe(openai_recipe(url, out)))
    assert second.complete and second.resumed
    assert dataset(out) == reference[0]


def _kill_when(db: Path, server, sql: str):  # type: ignore[no-untyped-def]
    """SIGKILL the server (from a thread) once ``sql`` counts a row; the future gives when it was killed."""
    from concurrent.futures import ThreadPoolExecutor

    def kill() -> float:
        deadline = time.monotonic() + 300
        while count_rows(db, sql + " AND created > ?", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server._proc.pid, signal.SIGKILL)
        return time.monotonic()

    return ThreadPoolExecutor(1).submit(kill)
