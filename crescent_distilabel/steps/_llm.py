"""The one helper the steps use to call their LLM: seeds, durable caching, and failure handling."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from distilabel.models.llms.base import AsyncLLM

from crescent_distilabel.store import ProgressStore, generation_key

if TYPE_CHECKING:
    from distilabel.models.llms.base import LLM

ABORT = "abort"
"""State key set when a backend failed after its retries: later batches skip their LLM calls."""


class Samples(NamedTuple):
    """One prompt's samples: texts (None where the backend gave none), output tokens, cut off at max tokens."""

    texts: list[str | None]
    tokens: list[int]
    truncated: list[bool]


class BackendFailure(RuntimeError):
    """The backend failed after its retries; everything finished so far is stored."""


def user_turn(content: str) -> list[dict[str, str]]:
    """A one-message chat: the method uses user turns only, never a system prompt."""
    return [{"role": "user", "content": content}]


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


def generate(
    llm: LLM,
    prompts: list[str],
    num_generations: int,
    seeds: list[int] | None = None,
    *,
    store: ProgressStore | None = None,
    stage: str = "",
) -> list[Samples]:
    """``num_generations`` samples per prompt.

    Per-prompt ``seeds`` go to LLMs that take them (ours). With a ``store``, prompts already generated are
    read back instead of sent, and each new result is committed as soon as it arrives (concurrent requests
    for async backends, one prompt at a time for in-process ones, the whole batch at once for in-process
    batch engines such as vLLM), so a killed run loses at most what was in flight.

    Raises:
        BackendFailure: the backend failed after its own retries (results that arrived are stored, and the
            failure is recorded so later batches make no LLM call), or an earlier batch had failed.
    """
    if not prompts:
        return []
    if aborted(store):
        raise BackendFailure("an earlier batch failed; no more LLM calls in this run")
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
    todo = [i for i, r in enumerate(results) if r is None]

    def done(i: int, output: dict[str, Any], started: float, requests: int = 1) -> None:
        results[i] = samples = _samples(output, num_generations)
        if store is not None and keys[i] is not None and any(t is not None for t in samples.texts):
            store.put_generation(keys[i], stage, *samples, started=started, requests=requests)

    try:
        if todo and isinstance(llm, AsyncLLM):
            _generate_async(llm, prompts, num_generations, seeds if seeded else None, kwargs, todo, done, store, keys)
        elif todo and store is not None and seeded and not getattr(llm, "batched_generation", False):
            # our one-at-a-time in-process backends: store every prompt as it finishes
            for i in todo:
                started = time.time()
                output = llm.generate_outputs([user_turn(prompts[i])], num_generations, **kwargs, seeds=[seeds[i]])[0]
                done(i, output, started)
        elif todo:
            extra = {"seeds": [seeds[i] for i in todo]} if seeded else {}
            started = time.time()
            outputs = llm.generate_outputs([user_turn(prompts[i]) for i in todo], num_generations, **kwargs, **extra)
            for i, output in zip(todo, outputs):
                done(i, output, started)
    except Exception as err:
        failure = BackendFailure(f"{type(err).__name__}: {err}")
        record_failure(store, stage, failure)
        raise failure from err
    return [
        r if r is not None else Samples([None] * num_generations, [0] * num_generations, [False] * num_generations)
        for r in results
    ]


def _cached(store: ProgressStore, keys: list[str | None]) -> dict[int, tuple[list, list, list]]:
    found = store.get_generations([k for k in keys if k is not None])
    return {i: found[k] for i, k in enumerate(keys) if k in found}


def _generate_async(
    llm: AsyncLLM,
    prompts: list[str],
    n: int,
    seeds: list[int] | None,
    kwargs: dict[str, Any],
    todo: list[int],
    done: Any,
    store: ProgressStore | None,
    keys: list[str | None],
) -> None:
    """All prompts concurrently. With our client and a store, each answered request is committed at once,
    so a prompt whose samples take several requests (servers that ignore ``n``) resumes mid-way."""
    from crescent_distilabel.llms import OpenAICompatibleLLM, merge_output

    async def one(i: int) -> None:
        chat = user_turn(prompts[i])
        started = time.time()
        if seeds is None or store is None or keys[i] is None or not isinstance(llm, OpenAICompatibleLLM):
            extra = {"seed": seeds[i]} if seeds is not None and _takes(llm.agenerate, "seed") else {}
            done(i, await llm.agenerate(input=chat, num_generations=n, **kwargs, **extra), started)
            return
        merged: dict[str, Any] = {
            "generations": [],
            "statistics": {"input_tokens": [], "output_tokens": []},
            "truncated": [],
        }
        parts = store.get_parts(keys[i])
        for part in parts:
            merge_output(merged, part)
        request, made = len(parts), 0  # made: requests sent by this run
        while len(merged["generations"]) < n:  # the same seeds, request by request, as OpenAICompatibleLLM.agenerate
            part = await llm.arequest(chat, n - len(merged["generations"]), **kwargs, seed=seeds[i] + request)
            made += 1
            if not part["generations"]:
                break
            store.put_part(keys[i], request, part)
            merge_output(merged, part)
            request += 1
        done(i, merged, started, made)

    async def run() -> list[Any]:
        return await asyncio.gather(*(one(i) for i in todo), return_exceptions=True)

    errors = [e for e in llm.event_loop.run_until_complete(run()) if isinstance(e, BaseException)]
    if errors:
        raise errors[0]


def open_store(path: str | None) -> ProgressStore | None:
    """The run's progress store when the step was given one (steps also work without)."""
    return ProgressStore(path) if path else None


def aborted(store: ProgressStore | None) -> bool:
    """Whether an earlier batch hit a backend failure: then no further LLM calls are made."""
    return store is not None and store.get_state(ABORT) is not None


def record_failure(store: ProgressStore | None, stage: str, err: BackendFailure) -> None:
    """Remember the first backend failure so the run stops cleanly and tells the user to re-run."""
    if store is not None and store.get_state(ABORT) is None:
        store.set_state(ABORT, f"{stage or 'generation'}: {err}")
