"""Stage 1, bait prompting: the model invents questions from one fixed prompt, with no seed data."""

from collections import deque

from distilabel.models.llms.base import AsyncLLM
from distilabel.steps import GeneratorStep, StepInput
from distilabel.steps.tasks import GeneratorTask, Task
from distilabel.typing import ChatType, GeneratorStepOutput, StepColumns, StepOutput
from pydantic import Field, PositiveInt, PrivateAttr

from crescent_distilabel.citation import with_citation
from crescent_distilabel.cleaning import clean_question
from crescent_distilabel.llms import derive_seed
from crescent_distilabel.prompts import BAIT_PROMPT
from crescent_distilabel.steps._llm import (
    BackendFailure,
    Pending,
    empty_samples,
    open_store,
    step_errors,
    submit,
    user_turn,
)
from crescent_distilabel.store import ProgressStore

BAIT_COLUMNS = [
    "question",
    "raw_question",
    "drop_reason",
    "bait_call",
    "bait_sample",
    "question_tokens",
    "question_truncated",
    "model_name",
]


@with_citation
class BaitPrompting(GeneratorTask):
    """Samples raw questions from a bait prompt and cleans them, keeping every sample with its fate.

    The bait prompt is the method's only human input: it fixes the domain. Each call sends the same
    prompt and asks for ``samples_per_call`` samples (one request with ``n`` on OpenAI-compatible
    servers). Cleaning removes chat preambles, labels and solutions without touching the problem's own
    numbers, symbols, units or LaTeX; a sample that cannot be cleaned keeps ``question=None`` and a
    ``drop_reason`` so every loss is counted. Later stages pass dropped rows through untouched.

    Attributes:
        bait_prompt: the single user turn sent on every call.
        num_calls: how many times the bait prompt is sent.
        samples_per_call: samples requested per call.
        min_chars: shorter cleaned questions are dropped (``too_short``).
        max_chars: longer cleaned questions are dropped (``too_long``).
        require_digits: drop questions without a digit (``no_digits``); right for math, not for every domain.
        min_options: drop questions with fewer distinct lettered options (``no_options``); 0: no options needed.
        seed: the run seed; each call's samples get a seed derived from it and the call index.
        progress_db: a progress store (SQLite) that keeps every generation as it finishes, so a re-run
            reuses it; None keeps nothing.
        calls_in_flight: with an async backend (a server), calls kept running ahead of the batches handed on,
            so the server works while the later stages take the last batch (distilabel asks a generator for its
            next batch only when the next step needs rows). 1: only the call being waited for; more only wait
            in a server that runs one request at a time, and may time out there. Results do not depend on it.

    Runtime parameters:
        - `batch_size`: rows per output batch, rounded to whole calls.

    Input columns:
        - None: a generator.

    Output columns:
        - question (`str | None`): the cleaned question, None when dropped.
        - raw_question (`str | None`): the sample as generated.
        - drop_reason (`str | None`): why the sample was dropped (a cleaning reason; ``rejected`` when the
          server refused the call; ``generation_failed`` when the backend failed after its retries), None when
          kept.
        - bait_call (`int`): index of the call that produced the sample.
        - bait_sample (`int`): index of the sample within its call.
        - question_tokens (`int`): output tokens of the sample.
        - question_truncated (`bool`): the sample hit ``max_new_tokens``.
        - model_name (`str`): the model that wrote the question.

    Categories:
        - text-generation

    References:
        - [The Self-Improvement Paradox: Can Language Models Bootstrap Reasoning Capabilities without External Scaffolding?](https://arxiv.org/abs/2502.13441)

    Examples:
        Invent ten raw questions with SmolLM2 on CPU:

        ```python
        from crescent_distilabel.backends import smollm2_gguf_path
        from crescent_distilabel.steps import BaitPrompting
        from distilabel.models.llms import LlamaCppLLM

        bait = BaitPrompting(llm=LlamaCppLLM(model_path=smollm2_gguf_path()), num_calls=2, samples_per_call=5)
        bait.load()
        rows = next(bait.process())[0]
        ```
    """

    bait_prompt: str = BAIT_PROMPT
    num_calls: PositiveInt = 10
    samples_per_call: PositiveInt = 10
    min_chars: int = Field(default=20, ge=0)
    max_chars: PositiveInt = 1500
    require_digits: bool = True
    min_options: int = Field(default=0, ge=0)
    seed: int = 0
    progress_db: str | None = None
    calls_in_flight: PositiveInt = 1

    _store: ProgressStore | None = PrivateAttr(None)
    _early: "_InFlight | None" = PrivateAttr(None)

    def load(self) -> None:
        self._store = open_store(self.progress_db, self.name)  # first: the model load itself may crash
        super().load()
        if self._store is not None and isinstance(self.llm, AsyncLLM):
            # distilabel asks for the first batch only once every step has loaded (the embedding model takes
            # seconds): start the first calls now, so the server works meanwhile. Stored as they finish, so
            # on a re-run that starts later (offset > 0) they are cache hits, never repeated requests.
            self._early = self._in_flight(0)
            self._early.top_up()

    @property
    def outputs(self) -> StepColumns:
        return BAIT_COLUMNS

    def format_input(self, input: dict | None = None) -> ChatType:  # noqa: A002 - distilabel's signature
        return user_turn(self.bait_prompt)

    def format_output(self, output: str | None, input: dict | None = None) -> dict:  # noqa: A002
        cleaned = clean_question(
            output,
            min_chars=self.min_chars,
            max_chars=self.max_chars,
            require_digits=self.require_digits,
            min_options=self.min_options,
        )
        return {"question": cleaned.question, "raw_question": output, "drop_reason": cleaned.drop_reason}

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        """Yield ``(rows, last_batch)``; ``offset`` counts rows already produced (whole calls)."""
        first_call = offset // self.samples_per_call
        early, self._early = self._early, None
        flight = early if early is not None and early.first_call == first_call else self._in_flight(first_call)
        while flight.remaining:
            with step_errors(self._store, "bait"):
                flight.top_up()
                calls, pending = flight.started.popleft()
                rows = bait_rows(self, calls, self._store, pending)
            yield rows, calls[-1] == self.num_calls - 1

    def _in_flight(self, first_call: int) -> "_InFlight":
        calls_per_batch = max(1, self.batch_size // self.samples_per_call)
        batches = [
            list(range(start, min(start + calls_per_batch, self.num_calls)))
            for start in range(first_call, self.num_calls, calls_per_batch)
        ]
        ahead = self.calls_in_flight if isinstance(self.llm, AsyncLLM) else 0  # in-process: nothing to overlap
        return _InFlight(self, first_call, deque(batches), ahead)


class _InFlight:
    """Bait batches still to hand on, and the calls started for the first of them (``ahead`` calls at most
    beyond the batch being waited for)."""

    def __init__(self, step: BaitPrompting, first_call: int, batches: deque[list[int]], ahead: int) -> None:
        self.step, self.first_call, self.batches, self.ahead = step, first_call, batches, ahead
        self.started: deque[tuple[list[int], Pending | None]] = deque()

    @property
    def remaining(self) -> bool:
        return bool(self.started or self.batches)

    def top_up(self) -> None:
        while self.batches and (not self.started or sum(len(c) for c, _ in self.started) < self.ahead):
            calls = self.batches.popleft()
            self.started.append((calls, start_calls(self.step, calls, self.step._store)))


def start_calls(step: "BaitPrompting | BaitSampling", calls: list[int], store: ProgressStore | None) -> Pending | None:
    """Start some bait calls, each seeded by its index (so any process may make it); None when the run is
    stopping."""
    seeds = [derive_seed(step.seed, "bait", call) for call in calls]
    try:
        prompts = [step.bait_prompt] * len(calls)
        return submit(step.llm, prompts, step.samples_per_call, seeds, store=store, stage="bait")
    except BackendFailure:
        return None


def bait_rows(
    step: "BaitPrompting | BaitSampling", calls: list[int], store: ProgressStore | None, pending: Pending | None = None
) -> list[dict]:
    """The cleaned samples of some bait calls (started by :func:`start_calls` unless ``pending`` is given)."""
    if pending is None:
        pending = start_calls(step, calls, store)
    failed = False
    try:
        if pending is None:
            raise BackendFailure("an earlier batch failed; no more LLM calls in this run")
        results = pending.result()
    except BackendFailure as err:
        step._logger.warning(f"bait calls {calls[0]}-{calls[-1]} failed: {err}")
        failed = True
        results = [empty_samples(step.samples_per_call) for _ in calls]
    rows = []
    for call, samples in zip(calls, results):
        if samples.rejected:
            step._logger.warning(f"bait call {call} rejected by the server: {samples.rejected}")
        for sample, (text, n_tokens, cut) in enumerate(zip(*samples[:3])):
            row = {
                **step.format_output(text),
                "bait_call": call,
                "bait_sample": sample,
                "question_tokens": n_tokens,
                "question_truncated": cut,
                "model_name": step.llm.model_name,
            }
            if failed:
                row["drop_reason"] = "generation_failed"
            elif samples.rejected:
                row["drop_reason"] = "rejected"
            rows.append(row)
    if store is not None:
        store.record_decisions(
            "bait", ((f"{r['bait_call']}/{r['bait_sample']}", r["drop_reason"] or "kept", None) for r in rows)
        )
    return rows


class BaitCalls(GeneratorStep):
    """The bait call indices, ``calls_per_batch`` per batch: the generator in front of :class:`BaitSampling`.

    distilabel runs a generator step as a single replica; moving the LLM calls into a normal step lets Ray
    spread them over replicas. Output batches carry sequence numbers, which distilabel's batch manager uses to
    hand the next step rows in call order whichever replica finishes first.

    Output columns:
        - bait_call (`int`): index of the bait call.
    """

    num_calls: PositiveInt = 10

    @property
    def outputs(self) -> StepColumns:
        return ["bait_call"]

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        for start in range(offset, self.num_calls, self.batch_size):
            stop = min(start + self.batch_size, self.num_calls)
            yield [{"bait_call": call} for call in range(start, stop)], stop == self.num_calls


@with_citation
class BaitSampling(Task):
    """:class:`BaitPrompting` as a normal step, so it can run as several (Ray) replicas: it makes the bait calls
    whose indices it receives (from :class:`BaitCalls`); the rows are the same as BaitPrompting's.

    Input columns:
        - bait_call (`int`): index of the bait call to make.

    Output columns: as :class:`BaitPrompting`.
    """

    bait_prompt: str = BAIT_PROMPT
    samples_per_call: PositiveInt = 10
    min_chars: int = Field(default=20, ge=0)
    max_chars: PositiveInt = 1500
    require_digits: bool = True
    min_options: int = Field(default=0, ge=0)
    seed: int = 0
    progress_db: str | None = None

    _store: ProgressStore | None = PrivateAttr(None)

    def load(self) -> None:
        self._store = open_store(self.progress_db, self.name)  # first: the model load itself may crash
        super().load()

    @property
    def inputs(self) -> StepColumns:
        return ["bait_call"]

    @property
    def outputs(self) -> StepColumns:
        return BAIT_COLUMNS

    def format_input(self, input: dict) -> ChatType:  # noqa: A002 - distilabel's signature
        return user_turn(self.bait_prompt)

    format_output = BaitPrompting.format_output

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        with step_errors(self._store, "bait"):
            rows = bait_rows(self, [int(row["bait_call"]) for row in inputs], self._store)
        yield rows
