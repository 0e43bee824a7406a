"""Durable progress: every finished generation, embedding and stage decision, kept in one SQLite file.

distilabel 1.5.3's own cache cannot resume (the re-run hangs; a kill can leave an empty pipeline.yaml), so
crash safety lives here. Each LLM result is committed as soon as it arrives, keyed by what determines it
(model, prompt, number of samples, sampling parameters, seed): a re-run of the same recipe finds it and does
not call the LLM again. SQLite in WAL mode makes each commit atomic and durable against a killed process,
and lets the pipeline's step processes write concurrently.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generations (
    key TEXT PRIMARY KEY, stage TEXT NOT NULL, texts TEXT NOT NULL, tokens TEXT NOT NULL,
    truncated TEXT NOT NULL, created REAL NOT NULL, started REAL, requests INTEGER NOT NULL DEFAULT 1);
CREATE TABLE IF NOT EXISTS parts (
    key TEXT NOT NULL, idx INTEGER NOT NULL, output TEXT NOT NULL, PRIMARY KEY (key, idx));
CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, vector BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    stage TEXT NOT NULL, item TEXT NOT NULL, outcome TEXT NOT NULL, detail TEXT, created REAL NOT NULL,
    PRIMARY KEY (stage, item));
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rejections (
    key TEXT PRIMARY KEY, stage TEXT NOT NULL, message TEXT NOT NULL, created REAL NOT NULL);
"""
FORK_LOCK = threading.Lock()
"""Held by the run's background threads (progress, watchdog) while they use SQLite, and taken before any fork.

distilabel forks its step processes while those threads run; a child forked while another thread is inside
SQLite inherits SQLite's mutex locked and hangs at its first connect. With this lock a fork waits for the read
to finish, and no read starts during a fork."""
os.register_at_fork(before=FORK_LOCK.acquire, after_in_parent=FORK_LOCK.release, after_in_child=FORK_LOCK.release)

_CHUNK = 500  # SQLite host parameters per query stay well under its limit
# added after the first release: stores written before lack them (started NULL: unknown; requests: 1)
_ADDED_COLUMNS = {
    "generations": {"started": "started REAL", "requests": "requests INTEGER NOT NULL DEFAULT 1"},
    "parts": {"stage": "stage TEXT", "created": "created REAL"},  # for live progress (see progress.py)
}
STAGES = ("bait", "rewrite", "answer")
"""The LLM stages, in pipeline order, as the steps name them in the store."""


def generation_key(model: str, prompt: str, n: int, sampling: dict[str, Any], seed: int | None) -> str:
    """What determines a generation, hashed: the same key means the same request."""
    payload = json.dumps([model, prompt, n, sampling, seed], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def text_key(model: str, text: str) -> str:
    return hashlib.sha256(json.dumps([model, text], ensure_ascii=False).encode()).hexdigest()


class _Detached:
    """The connection of a store copied to another process: none; any use says so."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"a copy of the progress store {self.path} sent to another process; open it there")


class ProgressStore:
    """One run's durable progress (``<output_dir>/.crescent/progress.sqlite``).

    Args:
        path: the SQLite file; created with its folder when missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._set_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process; fast commits
        # the step processes open a new store at the same moment: create and migrate under one write lock, so
        # two of them never both add the same column ("duplicate column name")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            for table, columns in _ADDED_COLUMNS.items():
                have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                for name, column in columns.items():
                    if name not in have:
                        self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _set_wal(self, wait: float = 60.0) -> None:
        """Switch to WAL; SQLite answers "database is locked" at once, not after its busy timeout, while another
        process switches, so retry."""
        deadline = time.monotonic() + wait
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self._db.close()

    def __getstate__(self) -> dict[str, Any]:
        """Only the path travels: distilabel pickles a step that failed (with its store) into the error it sends
        to the main process, and an unpicklable connection there lost the error and hung the run."""
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._db = _Detached(self.path)  # type: ignore[assignment]

    def _select(self, sql: str, keys: Sequence[str]) -> list[tuple]:
        rows: list[tuple] = []
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            rows += self._db.execute(sql.format(",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    # generations
    def get_generations(self, keys: Sequence[str]) -> dict[str, tuple[list, list, list]]:
        """Stored generations by key: (texts, output tokens, truncated flags)."""
        rows = self._select("SELECT key, texts, tokens, truncated FROM generations WHERE key IN ({})", keys)
        return {k: (json.loads(t), json.loads(n), json.loads(c)) for k, t, n, c in rows}

    def put_generation(
        self,
        key: str,
        stage: str,
        texts: list,
        tokens: list,
        truncated: list,
        *,
        started: float | None = None,
        requests: int = 1,
    ) -> None:
        """Commit one finished generation (all its samples) at once.

        Args:
            started: when its first request of this run was sent (time.time()), so stage spans are exact.
            requests: LLM requests this run made for it (more than 1 when a server ignores ``n``).
        """
        self._db.execute(
            "INSERT OR REPLACE INTO generations (key, stage, texts, tokens, truncated, created, started, requests) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, stage, json.dumps(texts), json.dumps(tokens), json.dumps(truncated), time.time(), started, requests),
        )

    def get_parts(self, key: str) -> list[dict[str, Any]]:
        """The requests already answered for a generation still missing samples, in order."""
        rows = self._db.execute("SELECT output FROM parts WHERE key = ? ORDER BY idx", (key,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def put_part(self, key: str, idx: int, output: dict[str, Any], stage: str = "") -> None:
        """Commit one answered request of a generation (several when a server ignores ``n``)."""
        self._db.execute(
            "INSERT OR REPLACE INTO parts (key, idx, output, stage, created) VALUES (?, ?, ?, ?, ?)",
            (key, idx, json.dumps(output), stage, time.time()),
        )

    def generation_spans(self) -> list[tuple[str, float, float, int, int, int]]:
        """Every stored generation as (stage, started, created, output tokens, requests, samples); ``started``
        is ``created`` for generations stored before start times were recorded."""
        rows = self._db.execute("SELECT stage, started, created, tokens, requests FROM generations").fetchall()
        spans = []
        for stage, started, created, tokens, requests in rows:
            per_sample = json.loads(tokens)
            spans.append((stage, created if started is None else started, created, sum(per_sample), requests,
                          len(per_sample)))  # fmt: skip
        return spans

    def count_generations(self, stage: str | None = None) -> int:
        if stage is None:
            return self._db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM generations WHERE stage = ?", (stage,)).fetchone()[0]

    # requests the server refused (deterministic: never sent again)
    def get_rejections(self, keys: Sequence[str]) -> dict[str, str]:
        """The server's message for each key it rejected (an HTTP 4xx other than 429, or an in-process error)."""
        return dict(self._select("SELECT key, message FROM rejections WHERE key IN ({})", keys))

    def put_rejections(self, stage: str, rejected: Iterable[tuple[str, str]]) -> None:
        """Commit rejected requests as (key, the server's message)."""
        now = time.time()
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO rejections VALUES (?, ?, ?, ?)", [(k, stage, m, now) for k, m in rejected]
            )

    def count_rejections(self, stage: str | None = None) -> int:
        if stage is None:
            return self._db.execute("SELECT COUNT(*) FROM rejections").fetchone()[0]
        return self._db.execute("SELECT COUNT(*) FROM rejections WHERE stage = ?", (stage,)).fetchone()[0]

    # embeddings
    def get_embeddings(self, model: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored float32 embeddings by text."""
        keys = {text_key(model, t): t for t in texts}
        rows = self._select("SELECT key, vector FROM embeddings WHERE key IN ({})", list(keys))
        return {keys[k]: np.frombuffer(v, dtype=np.float32) for k, v in rows}

    def put_embeddings(self, model: str, texts: Iterable[str], vectors: np.ndarray) -> None:
        rows = [(text_key(model, t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in zip(texts, vectors)]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?)", rows)

    # decisions
    def record_decisions(self, stage: str, decisions: Iterable[tuple[str, str, dict[str, Any] | None]]) -> None:
        """Commit a batch's decisions: (item, outcome, detail) per row, e.g. ("<hash>", "duplicate", {...})."""
        now = time.time()
        rows = [
            (stage, item, outcome, json.dumps(detail) if detail else None, now) for item, outcome, detail in decisions
        ]
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO decisions VALUES (?, ?, ?, ?, ?)", rows)

    def forget_decisions(self) -> None:
        """Drop every stage decision (a rebuild makes them again from the stored generations)."""
        self._db.execute("DELETE FROM decisions")

    def count_decisions(self, stage: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM decisions WHERE stage = ?", (stage,)).fetchone()[0]

    # run state
    def get_state(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM state WHERE name = ?", (name,)).fetchone()
        return row[0] if row else None

    def set_state(self, name: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (name, value))

    def clear_state(self, name: str) -> None:
        self._db.execute("DELETE FROM state WHERE name = ?", (name,))

    def states(self, prefix: str) -> dict[str, str]:
        """Every state whose name starts with ``prefix``."""
        rows = self._db.execute("SELECT name, value FROM state WHERE name LIKE ?", (prefix.replace("%", "") + "%",))
        return dict(rows.fetchall())


@dataclass
class StageStats:
    """One LLM stage's work in one run.

    Attributes:
        calls: LLM requests this run made (one per prompt; one per request when a server ignores ``n``).
        output_tokens: output tokens those requests generated.
        active_s: seconds during which at least one of its requests was in flight (stages overlap in the
            pipeline, so their active times add up to more than the wall time).
        reused: generations found stored from an earlier run, reused without an LLM call.
        mean_in_flight: sequences (samples) of the stage in flight on average over the run: summed over the
            stages, what the server had to work on; far below its slots means the server starved.
    """

    calls: int = 0
    output_tokens: int = 0
    active_s: float = 0.0
    reused: int = 0
    mean_in_flight: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        """Output tokens per active second: the stage's own throughput, unaffected by the other stages."""
        return self.output_tokens / self.active_s if self.active_s > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "calls": self.calls,
            "output_tokens": self.output_tokens,
            "active_s": round(self.active_s, 3),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "reused": self.reused,
            "mean_in_flight": round(self.mean_in_flight, 1),
        }


def busy_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: concurrent requests count once."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(spans):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def stage_throughput(
    spans: Iterable[tuple[str, float, float, int, int, int]], since: float, until: float | None = None
) -> dict[str, StageStats]:
    """Per-stage :class:`StageStats` of the generations stored after ``since`` (a time.time() value); those
    stored before are counted as reused. ``spans`` as from :meth:`ProgressStore.generation_spans`; ``until``:
    the run's end (default: the last generation's), for the mean sequences in flight."""
    stats = {stage: StageStats() for stage in STAGES}
    intervals: dict[str, list[tuple[float, float]]] = {}
    sequence_s: dict[str, float] = {}
    last = since
    for stage, started, created, tokens, requests, samples in spans:
        st = stats.setdefault(stage, StageStats())
        if created <= since:
            st.reused += 1
            continue
        st.calls += requests
        st.output_tokens += tokens
        intervals.setdefault(stage, []).append((max(started, since), created))
        sequence_s[stage] = sequence_s.get(stage, 0.0) + samples * (created - max(started, since))
        last = max(last, created)
    span = (until if until is not None else last) - since
    for stage, found in intervals.items():
        stats[stage].active_s = busy_seconds(found)
        stats[stage].mean_in_flight = sequence_s[stage] / span if span > 0 else 0.0
    return stats
