"""Per-stage throughput from the progress store: calls, tokens and active time of one run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from crescent_distilabel.recipe import load_recipe
from crescent_distilabel.store import ProgressStore, busy_seconds, stage_throughput


def test_busy_seconds_counts_concurrent_requests_once() -> None:
    assert busy_seconds([]) == 0.0
    assert busy_seconds([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4.0)  # 0-3 and 5-6
    assert busy_seconds([(5, 6), (0, 10), (2, 3)]) == pytest.approx(10.0)  # nested, any order


def test_stage_throughput_counts_this_runs_work_and_reuses_separately() -> None:
    since = 100.0
    spans = [
        ("bait", 90.0, 95.0, 50, 1, 4),  # stored by an earlier run: reused, not a call
        ("bait", 101.0, 103.0, 40, 1, 4),
        ("bait", 102.0, 105.0, 20, 3, 4),  # a server that ignored n: three requests
        ("answer", 99.0, 110.0, 30, 1, 3),  # sent before the run started (clock skew): counted from `since`
    ]
    stats = stage_throughput(spans, since)
    assert list(stats)[:3] == ["bait", "rewrite", "answer"]
    bait, rewrite, answer = stats["bait"], stats["rewrite"], stats["answer"]
    assert (bait.calls, bait.output_tokens, bait.reused) == (4, 60, 1)
    assert bait.active_s == pytest.approx(4.0) and bait.tokens_per_s == pytest.approx(15.0)
    assert (rewrite.calls, rewrite.output_tokens, rewrite.active_s, rewrite.tokens_per_s) == (0, 0, 0.0, 0.0)
    assert answer.active_s == pytest.approx(10.0) and answer.calls == 1
    # sequences in flight on average over the run (100 to 110): 4 samples for 2 s and 4 for 3 s; 3 for 10 s
    assert bait.mean_in_flight == pytest.approx((4 * 2 + 4 * 3) / 10) and answer.mean_in_flight == pytest.approx(3.0)
    assert stage_throughput(spans, since, until=120.0)["answer"].mean_in_flight == pytest.approx(1.5)


def test_the_store_records_start_times_and_requests(tmp_path: Path) -> None:
    store = ProgressStore(tmp_path / "p.sqlite")
    store.put_generation("k1", "answer", ["a", "b"], [3, 4], [False, False], started=1.0, requests=2)
    ((stage, started, created, tokens, requests, samples),) = store.generation_spans()
    assert (stage, started, tokens, requests, samples) == ("answer", 1.0, 7, 2, 2) and created > 1.0
    store.close()


def test_a_store_from_before_start_times_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE generations (key TEXT PRIMARY KEY, stage TEXT NOT NULL, texts TEXT NOT NULL, "
        "tokens TEXT NOT NULL, truncated TEXT NOT NULL, created REAL NOT NULL)"
    )
    db.execute("INSERT INTO generations VALUES ('old', 'bait', '[\"q\"]', '[5]', '[false]', 50.0)")
    db.commit()
    db.close()
    store = ProgressStore(path)
    store.put_generation("new", "bait", ["q2"], [6], [False], started=60.0)
    old, new = sorted(store.generation_spans())
    assert old == ("bait", 50.0, 50.0, 5, 1, 1)  # no start time recorded: it counts from its end
    assert new[1] == 60.0 and new[3:] == (6, 1, 1)
    assert store.get_generations(["old"])["old"] == (["q"], [5], [False])
    store.close()


def _open_store_at_barrier(path: Path, barrier) -> None:
    barrier.wait()
    ProgressStore(path).close()


def test_step_processes_opening_a_new_store_at_once_all_succeed(tmp_path: Path) -> None:
    """The pipeline's step processes open the run's store together; before the creation and the column
    upgrade ran under one write lock, two of them added the same column (a CI failure) or lost the WAL switch."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(5):
        path = tmp_path / str(trial) / "progress.sqlite"
        barrier = context.Barrier(6)
        procs = [context.Process(target=_open_store_at_barrier, args=(path, barrier)) for _ in range(6)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 6
        store = ProgressStore(path)
        assert store._db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        store.close()


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ({}, 8),  # llamacpp in process: every visible GPU
        ({"question_model": {"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1"}}, 0),
        ({"question_model": {"backend": "vllm", "tensor_parallel_size": 2}}, 6),  # 3 steps, an engine each
        ({"question_model": {"backend": "vllm"}, "diversify": {"enabled": False}}, 2),
        ({"question_model": {"backend": "vllm_serve", "tensor_parallel_size": 4}}, 4),  # one shared server
        (
            {
                "question_model": {"backend": "vllm_serve", "tensor_parallel_size": 2},
                "answer_model": {"backend": "vllm_serve", "model": "other", "tensor_parallel_size": 4},
            },
            6,
        ),
        ({"question_model": {"backend": "vllm", "tensor_parallel_size": 4}}, 8),  # 12 wanted, 8 visible
    ],
)
def test_gpus_used_counts_the_gpus_the_backends_occupy(monkeypatch, models: dict, expected: int) -> None:
    import torch

    from crescent_distilabel.pipeline import gpus_used

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert gpus_used(load_recipe(models)) == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpus_used(load_recipe(models)) == 0


def test_gpus_used_on_ray_counts_the_replicas_reservations_cluster_wide() -> None:
    from crescent_distilabel.pipeline import gpus_used

    ray = {"enabled": True, "gpus_per_replica": 2, "replicas": {"bait": 3, "consensus": 4}}
    assert gpus_used(load_recipe({"ray": ray})) == 2 * (3 + 1 + 4)  # diversify: one replica
    assert gpus_used(load_recipe({"ray": ray, "diversify": {"enabled": False}})) == 2 * (3 + 4)
    assert gpus_used(load_recipe({"ray": {**ray, "gpus_per_replica": 0}})) == 0
