"""Embedded CPU backends of one run take turns: one step process decodes at a time, with every core.

distilabel runs bait prompting, diversification and consensus as separate processes, each with its own
embedded llama.cpp model. llama.cpp's threads spin-wait for each other, so two steps decoding at once on the
same cores (bait runs ahead while consensus answers) do not share the machine: they collapse it. Measured on
2 cores, SmolLM2 fell from 104 to 14 tokens/s the moment consensus started beside bait. With turns, each call
gets the whole machine, and the later stages go first, so kept pairs keep coming while bait runs ahead.

A turn is an exclusive ``flock`` on a file beside the run's progress store: the kernel drops it when a process
dies, so a crashed step never blocks the others. The later stages (``urgent``) announce that they wait with a
shared lock on a second file; bait takes a free turn only when nobody urgent waits, and gives it back when one
announces itself within :data:`GRACE_S` (the moment between two consensus batches).
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crescent_distilabel.llms import Interrupted, interrupted

GRACE_S = 0.3
"""How long bait holds a free turn before using it, so a later stage between two batches gets it first."""
POLL_S = 0.05

LOCK_NAME = "cpu_turns.lock"


def turns_path(store_path: str | Path) -> Path:
    """The lock file of a run: beside its progress store, so it is one of the run's own files."""
    return Path(store_path).parent / LOCK_NAME


@contextmanager
def cpu_turn(path: str | Path | None, *, urgent: bool) -> Iterator[None]:
    """Hold the run's CPU for one call. ``urgent`` (diversify, consensus) waits in line; the rest (bait)
    yields to any urgent waiter. None: no turns (the call runs at once)."""
    if path is None:
        yield
        return
    with open(path, "a+") as lock, open(f"{path}.wait", "a+") as wait:
        if urgent:
            fcntl.flock(wait, fcntl.LOCK_SH)  # announce: bait does not take the next turn
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
            finally:
                fcntl.flock(wait, fcntl.LOCK_UN)
        else:
            _yielding_acquire(lock, wait)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _yielding_acquire(lock: object, wait: object) -> None:
    while True:
        if interrupted():
            raise Interrupted("the run is stopping")
        if _try(lock, fcntl.LOCK_EX):
            time.sleep(GRACE_S)  # an urgent step that comes back now finds the turn taken and announces itself
            if _try(wait, fcntl.LOCK_EX):  # nobody urgent waits
                fcntl.flock(wait, fcntl.LOCK_UN)
                return
            fcntl.flock(lock, fcntl.LOCK_UN)
        time.sleep(POLL_S)


def _try(file: object, mode: int) -> bool:
    try:
        fcntl.flock(file, mode | fcntl.LOCK_NB)  # type: ignore[call-overload]
    except BlockingIOError:
        return False
    return True
