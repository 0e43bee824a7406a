"""The one helper the steps use to call their LLM: seeds, durable caching, and failure handling.

Three kinds of failure, treated differently:

- **transient** (timeouts, dropped connections, HTTP 408/409/429/5xx, and 401/403/404, which name a server or
  key problem rather than a prompt): the client retries; if it still fails, the run stops resumably
  (:class:`BackendFailure`, exit code 3, "re-run the same command").
- **rejected** (any other HTTP 4xx, e.g. a prompt over the context length or a content filter; for in-process
  backends, an error raised for one prompt): a retry cannot change it, so the request is recorded in the
  progress store with the server's message, its row is dropped with a ``*rejected`` reason, a re-run never
  sends it again, and the rest of the batch goes on. If a whole stage is rejected (every bait call: they all
  send the same prompt), the run stops with the server's message instead, and nothing is recorded.
- **a fault in a step's own code**: recorded, so the run stops as incomplete instead of passing broken rows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from distilabel.models.llms.base import AsyncLLM

from crescent_distilabel.cpu_turns import cpu_turn, turns_path
from crescent_distilabel.llms import Interrupted, interrupted
from crescent_distilabel.store import ProgressStore, generation_key

if TYPE_CHECKING:
    from distilabel.models.llms.base import LLM

ABORT = "abort"
"""State key set when the run must stop (a backend failed after its retries, a stage was rejected, a step
raised): later batches skip their LLM calls."""
STOP = "stop"
"""State key set when the user stopped the run (Ctrl-C): no further LLM calls, and no failure to report."""
WORKER = "worker:"
"""State key prefix: ``worker:<pid>`` names the step a process runs, so a dead process can be named."""
NOT_PER_PROMPT = {401, 403, 404, 408, 409, 429}
"""HTTP 4xx answers that are not about one prompt: a bad key or model name (401/403/404) stops the run; a
timeout, conflict or rate limit (408/409/429) is retried."""


class Samples(NamedTuple):
    """One prompt's samples: texts (None where the backend gave none), output tokens, cut off at max tokens, and
    the server's message when it rejected the request (then there are no texts)."""

    texts: list[str | None]
    tokens: list[int]
    truncated: list[bool]
    rejected: str | None = None


class BackendFailure(RuntimeError):
    """The backend failed after its retries, or rejected a whole stage; everything finished so far is stored."""


def stopping(store: ProgressStore | None) -> bool:
    """Whether the user stopped the run: then queued batches make no LLM calls and go by in moments."""
    return interrupted() or (store is not None and store.get_state(STOP) is not None)


def user_turn(content: str) -> list[dict[str, str]]:
    """A one-message chat: the method uses user turns only, never a system prompt."""
    return [{"role": "user", "content": content}]


def empty_samples(n: int, rejected: str | None = None) -> Samples:
    return Samples([None] * n, [0] * n, [False] * n, rejected)


def _samples(output: dict[str, Any], n: int) -> Samples:
    pad = lambda values, fill: (list(values or []) + [fill] * n)[:n]  # noqa: E731 - a backend may return fewer
    stats = output.get("statistics") or {}
    return Samples(
        texts=pad(output.get("generations"), None),
        tokens=[int(t or 0) for t in pad(stats.get("output_tokens"), 0)],
        truncated=[bool(t) for t in pad(output.get("truncated"), False)],
    )


def _takes(func: Any, name: str) -> bool:
    return name in inspect.signature(func).parameters


def _server_message(err: BaseException) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        if text:
            return str(text)
    return str(getattr(err, "message", None) or err)


def refusal(err: BaseException, *, in_process: bool) -> str | None:
    """The message of a rejection that no retry can change, or None for a transient failure (see the module)."""
    import openai

    status = getattr(err, "status_code", None)
    if isinstance(status, int):
        if 400 <= status < 500 and status not in NOT_PER_PROMPT:
            return f"HTTP {status}: {_server_message(err)}"[:500]
        return None
    transient = (openai.APIConnectionError, openai.APITimeoutError, ConnectionError, TimeoutError, Interrupted)
    if isinstance(err, transient) or not in_process:
        return None
    return f"{type(err).__name__}: {err}"[:500]


def generate(
    llm: LLM,
    prompts: list[str],
    num_generations: int,
    seeds: list[int] | None = None,
    *,
    store: ProgressStore | None = None,
    stage: str = "",
) -> list[Samples]:
    """``num_generations`` samples per prompt; a rejected prompt gets :class:`Samples` with ``rejected`` set.

    Per-prompt ``seeds`` go to LLMs that take them (ours). With a ``store``, prompts already generated (or
    rejected) are read back instead of sent, and each new result is committed as soon as it arrives
    (concurrent requests for async backends, one prompt at a time for in-process ones, the whole batch at once
    for in-process batch engines such as vLLM), so a killed run loses at most what was in flight.

    Raises:
        BackendFailure: the backend failed after its own retries, or rejected every request of a stage
            (results that arrived are stored, and the failure is recorded so later batches make no LLM call),
            or an earlier batch had failed.
    """
    return submit(llm, prompts, num_generations, seeds, store=store, stage=stage).result()


class Pending:
    """The requests of one :func:`submit`. Async backends' requests run on the process's request loop (a
    thread), so they go on while the step does other work, e.g. waits for its next batch; the rest are done
    when :func:`submit` returns."""

    def __init__(
        self,
        results: list[Samples | None],
        futures: dict[int, concurrent.futures.Future],
        settle: Callable[[], list[Samples]],
    ) -> None:
        self.results, self._futures, self._settle = results, futures, settle

    def unfinished(self) -> list[concurrent.futures.Future]:
        return [f for f in self._futures.values() if not f.done()]

    def done(self) -> bool:
        return not self.unfinished()

    def result(self) -> list[Samples]:
        """Waits for every request; then as :func:`generate`. A Ctrl-C cancels the requests still running."""
        futures = list(self._futures.values())
        while concurrent.futures.wait(futures, timeout=0.5).not_done:
            if interrupted():
                for future in futures:
                    future.cancel()
                raise BackendFailure("the run is stopping")
        return self._settle()


def submit(
    llm: LLM,
    prompts: list[str],
    num_generations: int,
    seeds: list[int] | None = None,
    *,
    store: ProgressStore | None = None,
    stage: str = "",
) -> Pending:
    """Start :func:`generate`'s requests and return at once for async backends (their requests run on
    :func:`request_loop`); in-process backends generate before it returns. ``Pending.result()`` gives what
    :func:`generate` returns and raises what it raises."""
    if not prompts:
        return Pending([], {}, list)
    if aborted(store):
        raise BackendFailure(
            "the run is stopping" if stopping(store) else "an earlier batch failed; no more LLM calls in this run"
        )
    kwargs = llm.get_generation_kwargs()
    seeded = seeds is not None and _takes(llm.generate, "seeds")
    keys: list[str | None] = [None] * len(prompts)
    results: list[Samples | None] = [None] * len(prompts)
    if store is not None:
        for i, prompt in enumerate(prompts):
            # the seed identifies the request (which call, which question) even for LLMs that cannot take it
            keys[i] = generation_key(llm.model_name, prompt, num_generations, kwargs, seeds[i] if seeds else i)
        for i, (texts, tokens, truncated) in _cached(store, keys).items():
            results[i] = Samples(texts, tokens, truncated)
        known = store.get_rejections([k for i, k in enumerate(keys) if k is not None and results[i] is None])
        for i, key in enumerate(keys):
            if key in known:
                results[i] = empty_samples(num_generations, known[key])
    todo = [i for i, r in enumerate(results) if r is None]
    rejected: dict[int, str] = {}
    errors: list[BaseException] = []

    def settle() -> list[Samples]:
        failures = [f.exception() for f in futures.values() if f.exception() is not None]
        if errors or failures:
            err = (errors + failures)[0]
            if isinstance(err, Interrupted) or stopping(store):  # the user stopped the run: not a failure
                raise BackendFailure("the run is stopping") from err
            failure = BackendFailure(f"{type(err).__name__}: {err}")
            record_failure(store, stage, str(failure))
            raise failure from err
        if rejected:
            _settle_rejections(store, stage, keys, rejected, sent=len(todo))
            for i, message in rejected.items():
                results[i] = empty_samples(num_generations, message)
        return [r if r is not None else empty_samples(num_generations) for r in results]

    futures: dict[int, concurrent.futures.Future] = {}
    if todo and isinstance(llm, AsyncLLM):
        writer = None if store is None else store.path
        loop = request_loop()
        for i in todo:
            coroutine = _request_async(
                llm, prompts[i], num_generations, seeds[i] if seeded and seeds is not None else None,
                kwargs, writer, keys[i], stage,
            )  # fmt: skip
            futures[i] = asyncio.run_coroutine_threadsafe(_one(coroutine, i, results, rejected), loop)
        return Pending(results, futures, settle)

    def done(i: int, output: dict[str, Any], started: float) -> None:
        results[i] = samples = _samples(output, num_generations)
        if store is not None and keys[i] is not None and any(t is not None for t in samples.texts):
            store.put_generation(keys[i], stage, *samples[:3], started=started, requests=1)

    # embedded CPU backends of a run take turns (see cpu_turns); the later stages first
    turns = turns_path(store.path) if store is not None and getattr(llm, "cpu_turns", False) else None
    urgent = stage != "bait"

    def one_by_one(indices: list[int]) -> None:
        """In-process, one prompt per call: an error raised for a prompt rejects that prompt only."""
        for i in indices:
            if stopping(store):
                raise Interrupted("the run is stopping")
            extra = {"seeds": [seeds[i]]} if seeded and seeds is not None else {}
            try:
                with cpu_turn(turns, urgent=urgent):
                    started = time.time()
                    output = llm.generate_outputs([user_turn(prompts[i])], num_generations, **kwargs, **extra)[0]
            except Exception as err:
                if (message := refusal(err, in_process=True)) is None:
                    raise
                rejected[i] = message
                continue
            done(i, output, started)

    # our one-at-a-time in-process backends store every prompt as it finishes
    singly = (store is not None and seeded and not getattr(llm, "batched_generation", False)) or len(todo) == 1
    try:
        if todo and singly:
            one_by_one(todo)
        elif todo:
            extra = {"seeds": [seeds[i] for i in todo]} if seeded and seeds is not None else {}
            chats = [user_turn(prompts[i]) for i in todo]
            try:
                with cpu_turn(turns, urgent=urgent):
                    started = time.time()
                    outputs = llm.generate_outputs(chats, num_generations, **kwargs, **extra)
            except Exception as err:
                if refusal(err, in_process=True) is None:
                    raise
                one_by_one(todo)  # a batch engine refused the batch: find the prompts it refuses, keep the rest
            else:
                for i, output in zip(todo, outputs):
                    done(i, output, started)
    except Exception as err:
        errors.append(err)
    return Pending(results, futures, settle)


def _settle_rejections(
    store: ProgressStore | None, stage: str, keys: list[str | None], rejected: dict[int, str], sent: int
) -> None:
    """Record per-prompt rejections, or stop the run when the server refuses the stage as a whole: every bait
    call (one prompt for all), or every request of a stage that has never had one accepted."""
    first = next(iter(rejected.values()))
    never_accepted = store is None or store.count_generations(stage) == 0
    if len(rejected) == sent and never_accepted and (stage == "bait" or sent >= 2):
        failure = BackendFailure(
            f"the server rejected every {stage or 'LLM'} request ({first}); nothing retries a rejected request, "
            "so fix the cause (e.g. max_new_tokens against the model's context length, the prompt) and re-run"
        )
        record_failure(store, stage, str(failure))
        raise failure
    if store is not None:
        store.put_rejections(stage, [(keys[i], m) for i, m in rejected.items() if keys[i] is not None])


def _cached(store: ProgressStore, keys: list[str | None]) -> dict[int, tuple[list, list, list]]:
    found = store.get_generations([k for k in keys if k is not None])
    return {i: found[k] for i, k in enumerate(keys) if k in found}


_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_writers: dict[str, ProgressStore] = {}


def request_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop for async backends' requests, running in a daemon thread so requests go on
    between a step's batches. One per process (a forked step makes its own); its store writes use their own
    SQLite connections (see :func:`_writer`)."""
    global _loop, _loop_pid
    if _loop is None or _loop_pid != os.getpid():
        _writers.clear()
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="crescent-requests", daemon=True).start()
        _loop, _loop_pid = loop, os.getpid()
    return _loop


def _writer(path: Any) -> ProgressStore:
    """The request loop's own connection to a store (only ever used on that loop's thread)."""
    key = str(path)
    if key not in _writers:
        _writers[key] = ProgressStore(path)
    return _writers[key]


async def _one(coroutine: Any, i: int, results: list[Samples | None], rejected: dict[int, str]) -> None:
    try:
        results[i] = await coroutine
    except Exception as err:
        if (message := refusal(err, in_process=False)) is None:
            raise
        rejected[i] = message


async def _request_async(
    llm: AsyncLLM,
    prompt: str,
    n: int,
    seed: int | None,
    kwargs: dict[str, Any],
    store_path: Any,
    key: str | None,
    stage: str,
) -> Samples:
    """One prompt's samples from an async backend. With our client and a store, each answered request is
    committed at once, so a prompt whose samples take several requests (servers that ignore ``n``) resumes
    mid-way."""
    from crescent_distilabel.llms import OpenAICompatibleLLM, merge_output

    chat = user_turn(prompt)
    started = time.time()
    store = None if store_path is None or key is None else _writer(store_path)
    if seed is None or store is None or key is None or not isinstance(llm, OpenAICompatibleLLM):
        extra = {"seed": seed} if seed is not None and _takes(llm.agenerate, "seed") else {}
        samples = _samples(await llm.agenerate(input=chat, num_generations=n, **kwargs, **extra), n)
        made = 1
    else:
        merged: dict[str, Any] = {
            "generations": [],
            "statistics": {"input_tokens": [], "output_tokens": []},
            "truncated": [],
        }
        parts = store.get_parts(key)
        for part in parts:
            merge_output(merged, part)
        index, made = len(parts), 0  # made: requests sent by this run
        while len(merged["generations"]) < n:  # the same seeds, request by request, as OpenAICompatibleLLM.agenerate
            part = await llm.arequest(chat, n - len(merged["generations"]), **kwargs, seed=seed + index)
            made += 1
            if not part["generations"]:
                break
            store.put_part(key, index, part, stage)
            merge_output(merged, part)
            index += 1
        samples = _samples(merged, n)
    if store is not None and key is not None and any(t is not None for t in samples.texts):
        store.put_generation(key, stage, *samples[:3], started=started, requests=made)
    return samples


def open_store(path: str | None, step: str | None = None) -> ProgressStore | None:
    """The run's progress store when the step was given one (steps also work without). With ``step``, this
    process is registered as running it, so the run can name the step if the process dies."""
    if not path:
        return None
    store = ProgressStore(path)
    if step:
        store.set_state(f"{WORKER}{os.getpid()}", step)
    return store


def aborted(store: ProgressStore | None) -> bool:
    """Whether the run must stop (a failure, see :data:`ABORT`, or the user): then no further LLM calls are made."""
    return (store is not None and store.get_state(ABORT) is not None) or stopping(store)


def record_failure(store: ProgressStore | None, stage: str, message: str) -> None:
    """Remember the first failure so the run stops cleanly and tells the user what happened."""
    if store is not None and store.get_state(ABORT) is None:
        store.set_state(ABORT, f"{stage or 'generation'}: {message}")


@contextmanager
def step_errors(store: ProgressStore | None, stage: str) -> Iterator[None]:
    """Around a step's ``process``: an exception from the step's own code (not a backend failure, which the
    step turns into rows) is recorded, so the run ends incomplete with its message instead of exiting 0 with
    the batch's rows silently blanked by distilabel."""
    try:
        yield
    except BackendFailure:
        raise
    except Exception as err:
        record_failure(store, stage, f"the step raised {type(err).__name__}: {err} (traceback in pipeline.log)")
        raise
