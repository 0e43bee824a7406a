"""Concurrency never changes results: the same run against the FAKE continuous-batching server
(tests/cb_server.py) with one request at a time and with many in flight (bait calls ahead, consensus questions
kept in flight across batches) gives the same rows. The saturation ratio itself is measured by
benchmarks/bench_saturation.py, not here."""

from __future__ import annotations

from pathlib import Path

import pytest
from cb_server import FakeContinuousBatchingServer
from conftest import dataset


@pytest.fixture(scope="module")
def server():
    return FakeContinuousBatchingServer(slots=64, step_time=0.001).start()


def run(server: FakeContinuousBatchingServer, out: Path, calls_in_flight: int, window: int, lag: int):  # type: ignore[no-untyped-def]
    from crescent_distilabel import load_recipe, run_recipe

    recipe = {
        "seed": 5,
        "output_dir": str(out),
        "question_model": {"backend": "openai", "model": "fake", "base_url": server.url},
        "sampling": {"max_new_tokens": 300},
        "bait": {"num_calls": 6, "samples_per_call": 20, "calls_in_flight": calls_in_flight},
        "diversify": {"batch_size": 20, "rewrite_lag": lag},
        "consensus": {"k": 3, "batch_size": window},
    }
    return run_recipe(load_recipe(recipe))


@pytest.mark.parametrize("lag", [0, 2], ids=["paper", "rewrite_lag=2"])
def test_many_requests_in_flight_give_the_same_rows_as_one_at_a_time(
    server: FakeContinuousBatchingServer, tmp_path: Path, lag: int
) -> None:
    slow = run(server, tmp_path / "one", calls_in_flight=1, window=1, lag=lag)
    fast = run(server, tmp_path / "many", calls_in_flight=6, window=200, lag=lag)
    assert slow.complete and fast.complete
    assert slow.summary.raw_samples == fast.summary.raw_samples == 120
    one, many = dataset(tmp_path / "one"), dataset(tmp_path / "many")
    assert len(one["default"]) > 10 and len(one["dropped"]) > 0  # the fake's popular questions get deduplicated
    columns = ["bait_call", "bait_sample", "question", "final_answer", "chains", "drop_reason", "rewrites"]
    for config in ("default", "dropped"):
        assert [[r[c] for c in columns] for r in one[config]] == [[r[c] for c in columns] for r in many[config]]
    # and the concurrency was real: many more answer sequences in flight on average
    slow_answers, fast_answers = slow.summary.stages["answer"], fast.summary.stages["answer"]
    assert fast_answers.mean_in_flight > 3 * slow_answers.mean_in_flight
    assert slow_answers.mean_in_flight <= 3.5  # one question (k = 3 chains) at a time
