"""Stage 3, consensus enhancement: k answers per question, majority vote on the final answers."""

import concurrent.futures
from collections import deque
from typing import Any, Literal

from distilabel.steps import StepInput
from distilabel.steps.tasks import Task
from distilabel.typing import ChatType, StepColumns, StepOutput
from pydantic import Field, PositiveInt, PrivateAttr, field_validator

from crescent_distilabel.answers import AnswerKind
from crescent_distilabel.citation import with_citation
from crescent_distilabel.llms import derive_seed
from crescent_distilabel.prompts import ANSWER_TEMPLATE, check_template, sft_views
from crescent_distilabel.steps._llm import (
    BackendFailure,
    Pending,
    Samples,
    open_store,
    step_errors,
    submit,
    user_turn,
)
from crescent_distilabel.store import ProgressStore
from crescent_distilabel.voting import Vote, required_votes, vote_on_chains


@with_citation
class Consensus(Task):
    """Answers each question k times and keeps the answer the model agrees with itself on.

    Final answers are read from each chain (``#### Answer:``, ``####``, ``\\boxed{}``, "the answer is",
    else the last number), normalised to exact values (1,200 == 1200.00; 3/4 == 0.75) and voted on. The
    question is kept when the winner has at least ``min_agreement`` of the k votes. The training chain is
    the first sampled chain whose answer is the winner. The SFT view pairs the bare question (as the
    released data does, without the answer instruction) with that chain.

    Attributes:
        num_answers: answers sampled per question (the paper's k). Not named ``k``: distilabel 1.5.3 drops
            one-letter fields named a, e, i, k, p or y from ``pipeline.yaml`` (it excludes "api_key" as a
            string, i.e. as a set of characters).
        answer_template: the answer prompt, with ``{question}``.
        min_agreement: ``"majority"`` (more than k/2 votes) or the fraction of k the winner needs; 0 keeps
            every question with an answer, like the released scripts.
        tie_policy: ``"drop"`` tied questions, or take the ``"first"`` sampled tied answer (the scripts).
        no_answer_policy: ``"abstain"``: a chain without an answer casts no vote but counts in k;
            ``"vote"``: "no answer" competes like an answer (the scripts).
        answer_kind: what the answers are (``auto``, ``numeric``, ``choice``, ``text``, ``symbolic``; see
            :func:`crescent_distilabel.answers.answer_key`): an answer of another kind is no answer.
        seed: the run seed; each question's k samples get seeds derived from it and the question.
        progress_db: a progress store (SQLite) that keeps every question's answers as they finish, so a re-run
            reuses them; None keeps nothing.
        window: with an async backend (a server), questions kept in flight across batches: a batch's rows come
            out once answered, later batches' requests already running, so the server never waits for a
            batch's slowest chain. None: each batch is answered before the step returns. Needs
            ``expected_rows``.
        expected_rows: every row this step will receive (the run's bait samples), so it knows its last batch
            and returns every row it still holds there.

    Input columns:
        - question (`str | None`): the question (None for rows dropped upstream).
        - drop_reason (`str | None`, optional): rows with a reason are passed through untouched.

    Output columns:
        - answer (`str | None`): the chosen chain of thought.
        - final_answer (`str | None`): the winning final answer, normalised ("1200", "0.75").
        - chains (`list[str | None]`): all k sampled chains.
        - extracted_answers (`list[str | None]`): each chain's final answer as written.
        - vote_answers (`list[str]`): the distinct answers, most votes first.
        - vote_counts (`list[int]`): their votes.
        - agreement (`float | None`): winner votes / k.
        - k (`int`): chains sampled.
        - messages (`list[dict[str, str]] | None`): the SFT view, user question then assistant chain.
        - prompt, completion (`list[dict[str, str]] | None`): the same pair in TRL's prompt-completion form,
          so `trl sft` computes the loss on the assistant turn only, whatever the chat template.
        - drop_reason (`str | None`): ``no_answer``, ``tie`` or ``low_agreement`` when not kept;
          ``answer_rejected`` when the server refused the answer request; ``generation_failed`` when the
          backend failed after its retries.
        - answer_tokens (`int`): output tokens of all k chains.
        - truncated_chains (`int`): chains that hit ``max_new_tokens``.
        - chain_truncated (`list[bool]`): which chains did, one flag per chain (preference pairs never
          reject a cut chain).
        - answer_model (`str`): the model that answered.

    Categories:
        - text-generation
        - filtering

    References:
        - [The Self-Improvement Paradox: Can Language Models Bootstrap Reasoning Capabilities without External Scaffolding?](https://arxiv.org/abs/2502.13441)

    Examples:
        Answer with five samples and keep a 60% consensus:

        ```python
        from crescent_distilabel.steps import Consensus
        from distilabel.models.llms import LlamaCppLLM

        consensus = Consensus(llm=LlamaCppLLM(model_path="model.gguf"), num_answers=5, min_agreement=0.6)
        consensus.load()
        rows = next(consensus.process([{"question": "Tom has 3 apples and buys 4. How many?"}]))
        ```
    """

    num_answers: PositiveInt = 3
    answer_template: str = ANSWER_TEMPLATE
    min_agreement: float | Literal["majority"] = "majority"
    tie_policy: Literal["drop", "first"] = "drop"
    no_answer_policy: Literal["abstain", "vote"] = "abstain"
    answer_kind: AnswerKind = "auto"
    seed: int = 0
    progress_db: str | None = None
    window: PositiveInt | None = None
    expected_rows: PositiveInt | None = None

    _store: ProgressStore | None = PrivateAttr(None)
    _held: deque = PrivateAttr(default_factory=deque)  # (rows, live, Pending) in input order
    _seen: int = PrivateAttr(0)
    group_generations: bool = Field(default=True, exclude=True)

    @field_validator("min_agreement")
    @classmethod
    def _check_agreement(cls, value: float | str) -> float | str:
        required_votes(1, value)  # type: ignore[arg-type]  # raises on values outside [0, 1]
        return value

    def model_post_init(self, __context: Any) -> None:
        check_template(self.answer_template, ("question",))
        super().model_post_init(__context)

    @property
    def inputs(self) -> StepColumns:
        return {"question": True, "drop_reason": False}

    @property
    def outputs(self) -> StepColumns:
        return [
            "answer",
            "final_answer",
            "chains",
            "extracted_answers",
            "vote_answers",
            "vote_counts",
            "agreement",
            "k",
            "messages",
            "prompt",
            "completion",
            "drop_reason",
            "answer_tokens",
            "truncated_chains",
            "chain_truncated",
            "answer_model",
        ]

    def load(self) -> None:
        self._store = open_store(self.progress_db, self.name)  # first: the model load itself may crash
        super().load()
        self._held, self._seen = deque(), 0

    def format_input(self, input: dict[str, Any]) -> ChatType:  # noqa: A002 - distilabel's signature
        return user_turn(self.answer_template.format(question=input["question"]))

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:  # noqa: A002
        return {"answer": output}

    def vote(self, chains: list[str | None]) -> tuple[Vote, list[str | None]]:
        """One question's vote and each chain's extracted answer; a subclass may vote otherwise."""
        return vote_on_chains(
            chains,
            self.answer_kind,
            min_agreement=self.min_agreement,
            tie_policy=self.tie_policy,
            no_answer_policy=self.no_answer_policy,
        )

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        with step_errors(self._store, "consensus"):
            rows = self._answer_and_vote(inputs)
        yield rows

    def _answer_and_vote(self, inputs: StepInput) -> list[dict[str, Any]]:
        """This batch's rows, or with a ``window`` the rows of earlier batches whose answers are in."""
        rows, live, pending = self._start(inputs)
        if self.window is None or self.expected_rows is None:
            return self._finish(rows, live, pending)
        self._held.append((rows, live, pending))
        self._seen += len(rows)
        if self._seen > self.expected_rows:
            raise RuntimeError(f"consensus received {self._seen} rows, more than the {self.expected_rows} expected")
        last = self._seen == self.expected_rows
        while not last:  # wait only while `window` questions or more are in flight
            unfinished = [f for _, _, p in self._held if p is not None for f in p.unfinished()]
            if len(unfinished) < self.window:
                break
            concurrent.futures.wait(unfinished, return_when=concurrent.futures.FIRST_COMPLETED)
        out: list[dict[str, Any]] = []
        while self._held and (last or self._held[0][2] is None or self._held[0][2].done()):  # in input order
            out += self._finish(*self._held.popleft())
        return out

    def _start(self, inputs: StepInput) -> tuple[list[dict[str, Any]], list[int], Pending | None]:
        empty = {
            "answer": None,
            "final_answer": None,
            "chains": [],
            "extracted_answers": [],
            "vote_answers": [],
            "vote_counts": [],
            "agreement": None,
            "k": self.num_answers,
            "messages": None,
            "prompt": None,
            "completion": None,
            "answer_tokens": 0,
            "truncated_chains": 0,
            "chain_truncated": [],
            "answer_model": self.llm.model_name,
        }
        rows = [{**row, **empty, "drop_reason": row.get("drop_reason")} for row in inputs]
        live = [i for i, row in enumerate(rows) if row["drop_reason"] is None and row.get("question")]
        prompts = [self.answer_template.format(question=rows[i]["question"]) for i in live]
        # the bait sample's identity too, so repeated questions (no-diversification ablation) get fresh samples
        seeds = [
            derive_seed(self.seed, "answer", rows[i]["question"], rows[i].get("bait_call"), rows[i].get("bait_sample"))
            for i in live
        ]
        try:
            pending = submit(self.llm, prompts, self.num_answers, seeds, store=self._store, stage="answer")
        except BackendFailure:
            pending = None
        return rows, live, pending

    def _finish(self, rows: list[dict[str, Any]], live: list[int], pending: Pending | None) -> list[dict[str, Any]]:
        answers: list[Samples] = []
        try:
            if pending is None:
                raise BackendFailure("an earlier batch failed")
            answers = pending.result()
        except BackendFailure:
            for i in live:
                rows[i]["drop_reason"] = "generation_failed"
        for i, (chains, tokens, truncated, rejected) in zip(live, answers):
            if rejected:
                rows[i]["drop_reason"] = "answer_rejected"
                continue
            vote, extracted = self.vote(chains)
            row = rows[i]
            row.update(
                chains=chains,
                extracted_answers=extracted,
                vote_answers=list(vote.counts),
                vote_counts=list(vote.counts.values()),
                agreement=vote.agreement,
                answer_tokens=sum(tokens),
                truncated_chains=sum(truncated),
                chain_truncated=[bool(t) for t in truncated],
                drop_reason=vote.drop_reason,
            )
            if vote.kept and vote.winner is not None:
                chain = chains[vote.winner]
                row.update(answer=chain, final_answer=vote.answer, **sft_views(row["question"], chain))
        if self._store is not None:
            self._store.record_decisions(
                "consensus",
                (
                    (row["question"], row["drop_reason"] or "kept", {"answer": row["final_answer"]})
                    for row in rows
                    if row["question"]
                ),
            )
        return rows
