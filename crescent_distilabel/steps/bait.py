"""Stage 1, bait prompting: the model invents questions from one fixed prompt, with no seed data."""

from distilabel.steps.tasks import GeneratorTask
from distilabel.typing import ChatType, GeneratorStepOutput, StepColumns
from pydantic import Field, PositiveInt, PrivateAttr

from crescent_distilabel.citation import with_citation
from crescent_distilabel.cleaning import clean_question
from crescent_distilabel.llms import derive_seed
from crescent_distilabel.prompts import BAIT_PROMPT
from crescent_distilabel.steps._llm import (
    BackendFailure,
    Samples,
    generate,
    open_store,
    user_turn,
)
from crescent_distilabel.store import ProgressStore


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
        seed: the run seed; each call's samples get a seed derived from it and the call index.
        progress_db: a progress store (SQLite) that keeps every generation as it finishes, so a re-run
            reuses it; None keeps nothing.

    Runtime parameters:
        - `batch_size`: rows per output batch, rounded to whole calls.

    Input columns:
        - None: a generator.

    Output columns:
        - question (`str | None`): the cleaned question, None when dropped.
        - raw_question (`str | None`): the sample as generated.
        - drop_reason (`str | None`): why the sample was dropped (a cleaning reason, or
          ``generation_failed`` when the backend failed after its retries), None when kept.
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
    seed: int = 0
    progress_db: str | None = None

    _store: ProgressStore | None = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        self._store = open_store(self.progress_db)

    @property
    def outputs(self) -> StepColumns:
        return [
            "question",
            "raw_question",
            "drop_reason",
            "bait_call",
            "bait_sample",
            "question_tokens",
            "question_truncated",
            "model_name",
        ]

    def format_input(self, input: dict | None = None) -> ChatType:  # noqa: A002 - distilabel's signature
        return user_turn(self.bait_prompt)

    def format_output(self, output: str | None, input: dict | None = None) -> dict:  # noqa: A002
        cleaned = clean_question(
            output, min_chars=self.min_chars, max_chars=self.max_chars, require_digits=self.require_digits
        )
        return {"question": cleaned.question, "raw_question": output, "drop_reason": cleaned.drop_reason}

    def process(self, offset: int = 0) -> GeneratorStepOutput:
        """Yield ``(rows, last_batch)``; ``offset`` counts rows already produced (whole calls)."""
        calls_per_batch = max(1, self.batch_size // self.samples_per_call)
        first_call = offset // self.samples_per_call
        for start in range(first_call, self.num_calls, calls_per_batch):
            calls = range(start, min(start + calls_per_batch, self.num_calls))
            seeds = [derive_seed(self.seed, "bait", call) for call in calls]
            failed = False
            try:
                results = generate(
                    self.llm, [self.bait_prompt] * len(calls), self.samples_per_call, seeds,
                    store=self._store, stage="bait",
                )  # fmt: skip
            except BackendFailure as err:
                self._logger.warning(f"bait calls {calls.start}-{calls.stop - 1} failed: {err}")
                failed = True
            if failed:
                n = self.samples_per_call
                results = [Samples([None] * n, [0] * n, [False] * n) for _ in calls]
            rows = []
            for call, samples in zip(calls, results):
                for sample, (text, n_tokens, cut) in enumerate(zip(*samples)):
                    row = {
                        **self.format_output(text),
                        "bait_call": call,
                        "bait_sample": sample,
                        "question_tokens": n_tokens,
                        "question_truncated": cut,
                        "model_name": self.llm.model_name,
                    }
                    if failed:
                        row["drop_reason"] = "generation_failed"
                    rows.append(row)
            if self._store is not None:
                self._store.record_decisions(
                    "bait", ((f"{r['bait_call']}/{r['bait_sample']}", r["drop_reason"] or "kept", None) for r in rows)
                )
            yield rows, calls[-1] == self.num_calls - 1
