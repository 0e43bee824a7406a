"""No hang, ever: stop a run within seconds when a step's process or a server it started dies.

distilabel 1.5.3 runs each step in a ``multiprocessing`` pool worker and waits for its batches forever: a worker
killed by a signal (a segfault in llama.cpp, the OOM killer, ``os._exit``, a library calling ``abort()``) is
silently replaced by the pool, and the run hangs. The :class:`Watchdog` thread keeps every worker's process
object, notices an exit while the pipeline is running, names the step (steps register their PID in the
progress store when they load) and unblocks distilabel's loops, so ``pipeline.run`` tears the pool down and
returns, and the run ends incomplete (exit code 3) with everything finished so far kept in the progress store.
Servers the run started (:class:`~crescent_distilabel.backends.LocalServer`) are watched the same way.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crescent_distilabel.steps._llm import WORKER
from crescent_distilabel.store import FORK_LOCK, ProgressStore

if TYPE_CHECKING:
    from distilabel.pipeline import Pipeline

logger = logging.getLogger("crescent_distilabel")

HINTS = {
    signal.SIGSEGV: "a crash in native code; with llama.cpp this is usually a build for another CPU (run "
    "`crescent doctor`, and reinstall llama-cpp-python with the portable CMAKE_ARGS from the README)",
    signal.SIGILL: "an instruction this CPU does not have: a build for another CPU (run `crescent doctor`, and "
    "reinstall llama-cpp-python with the portable CMAKE_ARGS from the README)",
    signal.SIGBUS: "a crash in native code (run `crescent doctor`)",
    signal.SIGABRT: "a library aborted the process (the end of pipeline.log may say why)",
    signal.SIGKILL: "killed from outside, most often by the kernel's out-of-memory killer (see `dmesg`): lower "
    "n_ctx or the batch sizes, or use a smaller model",
}


def describe_exit(code: int) -> str:
    """``-11`` -> "was killed by SIGSEGV (Segmentation fault)"; ``1`` -> "exited with code 1"."""
    if code < 0:
        try:
            sig = signal.Signals(-code)
        except ValueError:
            return f"was killed by signal {-code}"
        return f"was killed by {sig.name} ({signal.strsignal(sig)})"
    return f"exited with code {code}"


def hint(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return HINTS.get(signal.Signals(-code), "")
    return "the end of pipeline.log may say why" if code else ""


@dataclass
class Death:
    """A process the run depended on that died: what it was, how, and what to try."""

    what: str
    code: int
    detail: str = ""

    def message(self) -> str:
        text = f"{self.what} {describe_exit(self.code)}"
        tip = hint(self.code)
        if tip:
            text += f": {tip}"
        return text + (f"\n{self.detail}" if self.detail else "")


class Watchdog:
    """Watches a local :class:`distilabel.pipeline.Pipeline`'s step processes and the run's servers.

    Use it around ``pipeline.run``: ``with Watchdog(pipeline, store_path, servers) as dog: pipeline.run()``;
    afterwards ``dog.death`` says what died (None when nothing did).

    Args:
        pipeline: the pipeline about to run (its pool exists only while it runs).
        store_path: the run's progress store, where steps register the PID they run in.
        servers: objects with ``name`` and ``exit_code()`` (``LocalServer``), watched from the start.
        interval: seconds between checks.
    """

    def __init__(
        self, pipeline: Pipeline, store_path: Path | None, servers: Sequence[Any] = (), interval: float = 0.2
    ) -> None:
        self.pipeline, self.store_path, self.servers, self.interval = pipeline, store_path, list(servers), interval
        self.death: Death | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crescent-watchdog", daemon=True)
        self._workers: dict[int, Any] = {}

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                death = self._check()
            except Exception as err:  # never let the watchdog itself take the run down
                logger.debug(f"watchdog check failed: {err}")
                continue
            if death is not None:
                self.death = death
                logger.error(f"crescent: {death.message()}")
                self._halt()
                return

    def _running(self) -> bool:
        """Whether the pipeline is between starting its workers and finishing its output loop (distilabel
        terminates the pool only after that loop has ended, so an exit seen while it runs is a death)."""
        thread = getattr(self.pipeline, "_output_queue_thread", None)
        return thread is not None and thread.is_alive()

    def _check(self) -> Death | None:
        for server in self.servers:
            code = server.exit_code()
            if code is not None:
                return Death(f"the {server.name} server at {server.base_url}", code, server.log_tail(8))
        running = self._running()  # read before the exit codes: see _running
        pool = getattr(self.pipeline, "_pool", None)
        for proc in list(getattr(pool, "_pool", None) or []):
            self._workers.setdefault(proc.pid, proc)
        if not running:
            return None
        for pid, proc in self._workers.items():
            code = proc.exitcode
            if code is not None:
                return Death(self._step_of(pid), code)
        return None

    def _step_of(self, pid: int) -> str:
        if self.store_path is not None and Path(self.store_path).is_file():
            with FORK_LOCK:  # see store.FORK_LOCK
                store = ProgressStore(self.store_path)
                try:
                    name = store.get_state(f"{WORKER}{pid}")
                finally:
                    store.close()
            if name:
                return f"the '{name}' step's process (pid {pid})"
        return f"a step process (pid {pid})"

    def _halt(self) -> None:
        """Let distilabel's loops end: every step counts as failed, so neither the load wait nor the end-of-run
        wait blocks, and the output loop gets its stop signal. distilabel's teardown then terminates the pool,
        which stops the steps still at work (what they finished is stored).

        The watchdog never signals pool workers itself: an idle worker waits for its next task holding the
        pool's queue lock, and killing it would make the pool's own teardown wait for that lock forever.
        """
        from distilabel.pipeline.base import _STEP_LOAD_FAILED_CODE

        pipeline: Any = self.pipeline
        with pipeline._steps_load_status_lock:
            for name in pipeline._steps_load_status:
                pipeline._steps_load_status[name] = _STEP_LOAD_FAILED_CODE
        with contextlib.suppress(Exception):
            pipeline._output_queue.put(None)
