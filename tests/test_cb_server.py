"""The FAKE continuous-batching server (tests/cb_server.py) behaves like the GPU server it stands in for:
its ceiling is slots / step_time, slots are handed out first come first served, lengths are seeded and
long-tailed, and its texts are what the pipeline's stages expect."""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest
from cb_server import FakeContinuousBatchingServer, answer_of, lengths_for

from crescent_distilabel.prompts import ANSWER_TEMPLATE, BAIT_PROMPT


def chat(url: str, prompt: str, n: int = 1, seed: int = 0, max_tokens: int = 2048) -> dict:
    body = {"model": "fake", "n": n, "seed": seed, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    return httpx.post(f"{url}/chat/completions", json=body, timeout=60).json()


def test_lengths_are_seeded_long_tailed_and_capped() -> None:
    assert lengths_for(7, 5, "chain", 2048) == lengths_for(7, 5, "chain", 2048)
    assert lengths_for(7, 5, "chain", 2048) != lengths_for(8, 5, "chain", 2048)
    chains = [n for seed in range(400) for n in lengths_for(seed, 5, "chain", 2048)]
    assert 190 <= statistics.median(chains) <= 250  # median about 220 tokens
    assert max(chains) >= 4 * statistics.median(chains)  # a long tail
    questions = [n for seed in range(400) for n in lengths_for(seed, 5, "question", 2048)]
    assert statistics.median(questions) < statistics.median(chains)
    assert max(lengths_for(1, 200, "chain", 64)) == 64  # capped at max_tokens


def test_the_ceiling_is_slots_over_step_time() -> None:
    server = FakeContinuousBatchingServer(slots=16, step_time=0.01).start()

    async def keep_queued(seconds: float) -> None:  # always more than `slots` sequences waiting
        async with httpx.AsyncClient(timeout=60) as client:
            deadline = time.monotonic() + seconds

            async def worker(w: int) -> None:
                i = 0
                while time.monotonic() < deadline:
                    body = {"model": "f", "n": 3, "seed": w * 10_000 + i, "max_tokens": 60,
                            "messages": [{"role": "user", "content": "Q\n#### Answer"}]}  # fmt: skip
                    await client.post(f"{server.url}/chat/completions", json=body)
                    i += 1

            await asyncio.gather(*(worker(w) for w in range(12)))  # 36 sequences for 16 slots

    import threading

    client = threading.Thread(target=lambda: asyncio.run(keep_queued(4.0)))
    client.start()
    time.sleep(1.0)
    first = server.stats()
    time.sleep(2.0)
    last = server.stats()
    client.join()
    # every step of the window decoded one token per slot: the client got the ceiling, slots / step_time tokens/s
    busy = (last["busy_slot_steps"] - first["busy_slot_steps"]) / (16 * (last["steps"] - first["steps"]))
    assert busy >= 0.97, busy
    assert server.ceiling == 16 / 0.01 and last["steps"] == pytest.approx(last["elapsed"] / 0.01, abs=3)


def test_slots_are_first_come_first_served_and_requests_wait_for_all_n() -> None:
    server = FakeContinuousBatchingServer(slots=2, step_time=0.01).start()
    long_seed = next(s for s in range(1000) if lengths_for(s, 1, "chain", 2048)[0] > 300)
    short_seed = next(s for s in range(1000) if lengths_for(s, 1, "chain", 2048)[0] < 150)
    finished: dict[str, float] = {}

    async def go() -> None:
        async with httpx.AsyncClient(timeout=60) as client:

            async def send(name: str, seed: int, n: int, delay: float) -> None:
                await asyncio.sleep(delay)
                body = {"model": "f", "n": n, "seed": seed, "max_tokens": 2048,
                        "messages": [{"role": "user", "content": "Q\n#### Answer"}]}  # fmt: skip
                await client.post(f"{server.url}/chat/completions", json=body)
                finished[name] = time.monotonic()

            await asyncio.gather(
                send("long", long_seed, 1, 0.0), send("pair", short_seed, 2, 0.05), send("late", short_seed, 1, 0.1)
            )

    start = time.monotonic()
    asyncio.run(go())
    short = lengths_for(short_seed, 2, "chain", 2048)
    # "pair" holds the second slot and a queued place; "late" waits until a slot frees, so it ends after "pair"'s
    # first sequence at the earliest, and "pair" needs both of its samples before it answers
    assert finished["pair"] - start >= (short[0] + short[1]) * 0.01 * 0.9 or finished["pair"] > finished["late"]
    assert finished["late"] - start >= (min(short) + lengths_for(short_seed, 1, "chain", 2048)[0]) * 0.01 * 0.9
    assert server.stats()["completed_requests"] == 3


def test_texts_are_questions_and_chains_with_an_answer_marker() -> None:
    server = FakeContinuousBatchingServer(slots=64, step_time=0.001).start()
    bait = chat(server.url, BAIT_PROMPT, n=20, seed=1)
    questions = [c["message"]["content"] for c in bait["choices"]]
    assert len(questions) == 20 and all("?" in q and any(ch.isdigit() for ch in q) for q in questions)
    assert bait["usage"]["completion_tokens"] == sum(lengths_for(1, 20, "question", 2048))
    assert len(set(questions)) > 10  # varied, with some near-copies of popular questions
    question = questions[0]
    answers = chat(server.url, ANSWER_TEMPLATE.format(question=question), n=30, seed=2)
    finals = [c["message"]["content"].rsplit("#### Answer:", 1)[-1].strip() for c in answers["choices"]]
    assert all(c["message"]["content"].startswith("Let's think step by step") for c in answers["choices"])
    right = sum(f == str(answer_of(question)) for f in finals)
    assert 10 <= right <= 28  # right by a seeded draw (65%), wrong otherwise
    cut = chat(server.url, ANSWER_TEMPLATE.format(question=question), n=10, seed=3, max_tokens=50)
    for choice in cut["choices"]:
        if choice["finish_reason"] == "length":
            assert "#### Answer" not in choice["message"]["content"]
    assert any(c["finish_reason"] == "length" for c in cut["choices"])
