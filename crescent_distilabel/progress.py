"""Live progress of a run, read from its progress store while the pipeline's step processes write it.

Each stage commits its results as they arrive (bait calls, rewrites, answers, per-row decisions), so a reader
in the main process sees the run move within seconds: samples generated, questions accepted and rewritten,
questions answered and kept, output tokens/s and an ETA. On a terminal it is a live panel (rich); otherwise a
plain line when something changed, at most every ``plain_every`` seconds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from crescent_distilabel.store import FORK_LOCK


@dataclass
class Snapshot:
    """What a run has done since it started (a resumed run counts what it replays, too)."""

    elapsed: float = 0.0
    bait_samples: int = 0
    bait_total: int = 0
    cleaned: int = 0
    accepted: int = 0
    rewritten: int = 0
    answered: int = 0
    kept: int = 0
    finished: int = 0  # samples whose fate is decided (dropped anywhere, or voted on)
    tokens: int = 0
    loading: tuple[str, ...] = ()

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, self.finished / self.bait_total) if self.bait_total else 0.0

    @property
    def eta_s(self) -> float | None:
        f = self.fraction
        return self.elapsed * (1 - f) / f if f > 0 else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class StoreReader:
    """Incremental reads of a progress store: counts since ``since`` (a ``time.time()``), tokens summed once."""

    def __init__(self, path: Path, since: float, *, samples_per_call: int, diversify: bool) -> None:
        self.path, self.since, self.samples_per_call, self.diversify = path, since, samples_per_call, diversify
        self._db: sqlite3.Connection | None = None
        self._last_rowid = 0
        self._tokens = 0

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is None and self.path.is_file():
            self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1, check_same_thread=False)
        return self._db

    def read(self, snap: Snapshot) -> None:
        with FORK_LOCK:  # see store.FORK_LOCK: distilabel may fork a step process at any moment
            db = self._connect()
            if db is None:
                return
            try:
                self._read(db, snap)
            except sqlite3.Error:  # a table not created yet, or a writer holding a lock: try again next time
                pass

    def _decisions(self, db: sqlite3.Connection, stage: str) -> dict[str, int]:
        sql = "SELECT outcome, COUNT(*) FROM decisions WHERE stage = ? AND created >= ? GROUP BY outcome"
        return dict(db.execute(sql, (stage, self.since)).fetchall())

    def _read(self, db: sqlite3.Connection, snap: Snapshot) -> None:
        rows = db.execute(
            "SELECT rowid, stage, tokens FROM generations WHERE rowid > ? AND created >= ?",
            (self._last_rowid, self.since),
        ).fetchall()
        for rowid, _stage, tokens in rows:
            self._last_rowid = max(self._last_rowid, rowid)
            self._tokens += sum(json.loads(tokens))
        snap.tokens = self._tokens
        stored = dict(
            db.execute(
                "SELECT stage, COUNT(*) FROM generations WHERE created >= ? GROUP BY stage", (self.since,)
            ).fetchall()
        )  # results arrive request by request; decisions come per batch (and for a resumed run's replay)
        in_parts = db.execute(  # requests answered so far, for servers that return samples one at a time
            "SELECT SUM(json_array_length(output, '$.generations')) FROM parts WHERE stage = 'bait' AND created >= ?",
            (self.since,),
        ).fetchone()[0]
        bait = self._decisions(db, "bait")
        snap.bait_samples = max(sum(bait.values()), stored.get("bait", 0) * self.samples_per_call, in_parts or 0)
        snap.cleaned = bait.get("kept", 0)
        consensus = self._decisions(db, "consensus")
        voted = sum(consensus.values())
        snap.answered = max(voted, stored.get("answer", 0))
        snap.kept = consensus.get("kept", 0)
        if self.diversify:
            div = self._decisions(db, "diversify")
            snap.accepted = div.get("accepted", 0)
            snap.rewritten = db.execute(
                "SELECT COUNT(*) FROM decisions WHERE stage = 'diversify' AND created >= ? "
                "AND json_extract(detail, '$.rewrites') > 0",
                (self.since,),
            ).fetchone()[0]
            snap.finished = sum(div.values()) - snap.accepted + voted
        else:
            snap.accepted = snap.cleaned
            snap.finished = sum(bait.values()) - snap.cleaned + voted

    def close(self) -> None:
        with FORK_LOCK:
            if self._db is not None:
                self._db.close()
                self._db = None


def render_line(snap: Snapshot) -> str:
    """The plain one-line form (logs, CI, pipes)."""
    if snap.loading and not snap.tokens:
        return f"crescent: {_duration(snap.elapsed)} loading {', '.join(snap.loading)} ..."
    parts = [
        f"crescent: {_duration(snap.elapsed)}",
        f"bait {snap.bait_samples}/{snap.bait_total} samples ({snap.cleaned} clean)",
        f"diversify {snap.accepted} accepted, {snap.rewritten} rewritten",
        f"consensus {snap.answered} answered, {snap.kept} kept",
        f"{snap.tokens_per_s:.1f} tok/s",
        f"{100 * snap.fraction:.0f}% done, ETA {_duration(snap.eta_s)}",
    ]
    return " | ".join(parts)


def render_table(snap: Snapshot) -> Table:
    """The live panel on a terminal."""
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    width = 24
    done = int(width * snap.bait_samples / snap.bait_total) if snap.bait_total else 0
    bar = f"{'━' * done}{'╺' * (width - done)}"
    table.add_row("bait", f"{bar} {snap.bait_samples}/{snap.bait_total} samples, {snap.cleaned} clean")
    table.add_row("diversify", f"{snap.accepted} questions accepted, {snap.rewritten} rewritten")
    table.add_row("consensus", f"{snap.answered} questions answered, {snap.kept} kept")
    status = f"{snap.tokens_per_s:.1f} output tok/s · {100 * snap.fraction:.0f}% of samples done"
    status += f" · ETA {_duration(snap.eta_s)} · {_duration(snap.elapsed)} elapsed"
    if snap.loading:
        status = f"loading {', '.join(snap.loading)} · " + status
    table.add_row("", status)
    return table


class ProgressDisplay:
    """A thread that shows a run's progress until stopped (``with ProgressDisplay(...):``).

    Args:
        store_path: the run's progress store.
        total: bait samples the run makes (num_calls x samples_per_call).
        samples_per_call: bait samples per call.
        diversify: whether the run diversifies.
        pipeline: the running pipeline, to show which steps are still loading (optional).
        console: where to draw (default: stderr).
        plain_every: seconds between plain lines when not on a terminal.
    """

    def __init__(
        self,
        store_path: Path,
        total: int,
        *,
        samples_per_call: int,
        diversify: bool,
        pipeline: Any = None,
        console: Console | None = None,
        plain_every: float = 10.0,
    ) -> None:
        self.start = time.time()
        self.reader = StoreReader(Path(store_path), self.start, samples_per_call=samples_per_call, diversify=diversify)
        self.snap = Snapshot(bait_total=total)
        self.pipeline, self.plain_every = pipeline, plain_every
        self.console = console or Console(stderr=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="crescent-progress", daemon=True)

    def __enter__(self) -> ProgressDisplay:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.reader.close()

    def refresh(self) -> Snapshot:
        self.snap.elapsed = time.time() - self.start
        self.reader.read(self.snap)
        self.snap.loading = self._loading()
        return self.snap

    def _loading(self) -> tuple[str, ...]:
        status = getattr(self.pipeline, "_steps_load_status", None)
        if not status:
            return ("steps",) if self.pipeline is not None and not self.snap.tokens else ()
        from distilabel.pipeline.base import _STEP_NOT_LOADED_CODE

        return tuple(name for name, replicas in dict(status).items() if replicas in (0, _STEP_NOT_LOADED_CODE))

    def _run(self) -> None:
        if self.console.is_terminal:
            with Live(render_table(self.refresh()), console=self.console, refresh_per_second=4) as live:
                while not self._stop.wait(0.5):
                    live.update(render_table(self.refresh()))
                live.update(render_table(self.refresh()))
            return
        last: tuple | None = None
        last_at = 0.0
        while True:
            stopping = self._stop.wait(0.5)
            snap = self.refresh()
            key = (snap.bait_samples, snap.accepted, snap.rewritten, snap.answered, snap.kept, snap.loading)
            now = time.monotonic()
            changed = key != last
            if (changed and (last is None or now - last_at >= self.plain_every)) or (stopping and changed):
                self.console.print(render_line(snap), highlight=False, soft_wrap=True)
                last, last_at = key, now
            if stopping:
                return
