"""CPU turns between a run's step processes (crescent_distilabel.cpu_turns), with real processes and locks."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
from distilabel.constants import SIGINT_HANDLER_CALLED_ENV_NAME

from crescent_distilabel.cpu_turns import GRACE_S, cpu_turn
from crescent_distilabel.llms import Interrupted

fork = multiprocessing.get_context("fork")


def _take_turns(lock: str, log: str, name: str, urgent: bool, turns: int, hold: float) -> None:
    for _ in range(turns):
        with cpu_turn(lock, urgent=urgent):
            start = time.time()
            time.sleep(hold)
            with open(log, "a") as f:
                f.write(json.dumps([name, start, time.time()]) + "\n")


def _turns(log: Path) -> list[tuple[str, float, float]]:
    return sorted((tuple(json.loads(line)) for line in log.read_text().splitlines()), key=lambda t: t[1])


def test_no_two_processes_hold_a_turn_at_once(tmp_path: Path) -> None:
    lock, log = str(tmp_path / "cpu_turns.lock"), tmp_path / "log"
    procs = [
        fork.Process(target=_take_turns, args=(lock, str(log), name, urgent, 6, 0.05))
        for name, urgent in (("bait", False), ("diversify", True), ("consensus", True))
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    turns = _turns(log)
    assert len(turns) == 18 and {t[0] for t in turns} == {"bait", "diversify", "consensus"}
    for (_, _, end), (_, start, _) in itertools.pairwise(turns):
        assert start >= end, "two processes decoded at once"


def test_a_later_stage_that_waits_goes_before_bait(tmp_path: Path) -> None:
    """Bait holds a turn; consensus and a second bait call then wait: consensus gets the next turn, although
    the second bait call asked first."""
    lock, log = str(tmp_path / "cpu_turns.lock"), tmp_path / "log"
    first = fork.Process(target=_take_turns, args=(lock, str(log), "bait-1", False, 1, 1.5))
    first.start()
    time.sleep(GRACE_S + 0.5)  # bait-1 holds its turn
    second = fork.Process(target=_take_turns, args=(lock, str(log), "bait-2", False, 1, 0.1))
    second.start()
    time.sleep(0.3)
    answer = fork.Process(target=_take_turns, args=(lock, str(log), "consensus", True, 1, 0.1))
    answer.start()
    for p in (first, second, answer):
        p.join(60)
        assert p.exitcode == 0
    assert [t[0] for t in _turns(log)] == ["bait-1", "consensus", "bait-2"]


def test_consensus_between_two_batches_keeps_the_cpu(tmp_path: Path) -> None:
    """Consensus comes back for its next batch a moment after its last: bait, waiting meanwhile, lets it."""
    lock, log = str(tmp_path / "cpu_turns.lock"), tmp_path / "log"
    answer = fork.Process(target=_take_turns, args=(lock, str(log), "consensus", True, 4, 0.3))
    answer.start()
    time.sleep(0.1)
    bait = fork.Process(target=_take_turns, args=(lock, str(log), "bait", False, 1, 0.1))
    bait.start()
    for p in (answer, bait):
        p.join(60)
        assert p.exitcode == 0
    assert [t[0] for t in _turns(log)] == ["consensus"] * 4 + ["bait"]


def _hold_forever(lock: str) -> None:
    with cpu_turn(lock, urgent=True):
        time.sleep(600)


def test_a_process_killed_holding_its_turn_frees_it(tmp_path: Path) -> None:
    lock = str(tmp_path / "cpu_turns.lock")
    holder = fork.Process(target=_hold_forever, args=(lock,))
    holder.start()
    time.sleep(0.5)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    start = time.monotonic()
    with cpu_turn(lock, urgent=False):
        waited = time.monotonic() - start
    assert waited < 5


def test_bait_waiting_for_a_turn_gives_up_when_the_run_stops(tmp_path: Path, monkeypatch) -> None:
    lock = str(tmp_path / "cpu_turns.lock")
    holder = fork.Process(target=_hold_forever, args=(lock,))
    holder.start()
    try:
        time.sleep(0.5)
        monkeypatch.setenv(SIGINT_HANDLER_CALLED_ENV_NAME, "1")  # what distilabel's step processes do on Ctrl-C
        with pytest.raises(Interrupted), cpu_turn(lock, urgent=False):
            pass
    finally:
        holder.kill()
        holder.join(10)


def test_no_path_means_no_turns(tmp_path: Path) -> None:
    with cpu_turn(None, urgent=False), cpu_turn(None, urgent=True):
        pass
    assert not list(tmp_path.iterdir())
