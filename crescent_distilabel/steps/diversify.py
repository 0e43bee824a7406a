"""Stage 2, diversification: rejection-sampling self-deduplication with rewrites."""

from collections import deque
from typing import Any, NamedTuple

import numpy as np
from distilabel.models.embeddings.base import Embeddings
from distilabel.steps import StepInput
from distilabel.steps.tasks import Task
from distilabel.typing import ChatType, StepColumns, StepOutput
from pydantic import Field, PositiveInt, PrivateAttr

from crescent_distilabel.citation import with_citation
from crescent_distilabel.cleaning import clean_question
from crescent_distilabel.embeddings import SentenceEmbeddings
from crescent_distilabel.llms import derive_seed
from crescent_distilabel.prompts import REWRITE_TEMPLATE, check_template
from crescent_distilabel.similarity import (
    HISTORY_THRESHOLD,
    WITHIN_BATCH_THRESHOLD,
    SimilarityIndex,
    accept_against_history,
    normalize_rows,
    within_batch_duplicates,
)
from crescent_distilabel.steps._llm import (
    BackendFailure,
    Pending,
    open_store,
    step_errors,
    submit,
    user_turn,
)
from crescent_distilabel.store import ProgressStore


class _Rewrites(NamedTuple):
    """Rows whose rewrite requests were sent together, and the input batch at which they are checked."""

    due: int
    rows: list[dict[str, Any]]
    pending: Pending | None


@with_citation
class Diversify(Task):
    """Keeps a question only if it is not too similar to one already accepted; near-duplicates are rewritten.

    Within each input batch, a question is dropped when a later question of the batch has cosine
    >= ``within_batch_threshold``. Each remaining question is compared with every accepted question so far
    (those of the same batch included); if its nearest neighbour has cosine > ``history_threshold`` the
    LLM is asked to rewrite it away from that neighbour. The rewrite is cleaned and checked again, up to
    ``max_rewrites`` rounds, then the question is dropped. The released scripts accept the first rewrite
    unchecked: ``recheck_rewrites=False`` with ``max_rewrites=1`` reproduces that. The accepted history
    lives in the step, so this step must run as a single replica.

    Attributes:
        embeddings: the sentence-embedding model (all-MiniLM-L6-v2 by default).
        within_batch_threshold: cosine at which a question loses to a later one of its batch.
        history_threshold: cosine above which a question is a near-duplicate of an accepted one.
        max_rewrites: rewrite rounds before a near-duplicate is dropped (0 drops at once).
        recheck_rewrites: check each rewrite again; False accepts it unchecked (the scripts' behaviour).
        rewrite_template: the rewrite request, with ``{question}`` and ``{neighbour}``.
        exact_limit: accepted questions searched exactly; past it the history moves to a FAISS IVF index.
        min_chars: rewrites shorter than this are dropped.
        max_chars: rewrites longer than this are dropped.
        require_digits: drop rewrites without a digit.
        min_options: drop rewrites with fewer distinct lettered options.
        seed: the run seed; each rewrite request gets a seed derived from it, the question and the round.
        progress_db: a progress store (SQLite) for rewrites, embeddings and decisions, so a re-run replays
            this stage without calling the LLM or the embedding model again; None keeps nothing.
        rewrite_lag: input batches a rewrite may take: 0 (the paper) checks a batch's rewrites before the step
            returns, so the later stages wait for its slowest rewrite; ``L`` hands the batch's accepted rows on
            at once and checks its rewrites when batch ``b + L`` arrives, against the history as it is then.
            Deterministic for a given ``L`` (a result setting), whatever the timing. Needs ``expected_rows``.
        expected_rows: every row this step will receive (the run's bait samples), so it knows its last batch
            and checks every rewrite still out there.

    Input columns:
        - question (`str | None`): the cleaned question (None for rows dropped upstream).
        - drop_reason (`str | None`, optional): rows with a reason are passed through untouched.

    Output columns:
        - question (`str | None`): the accepted question (possibly rewritten), None when dropped.
        - original_question (`str | None`): the question before any rewrite.
        - rewrites (`int | None`): rewrite rounds it took.
        - nearest_question (`str | None`): the most similar question accepted before it.
        - nearest_similarity (`float | None`): their cosine similarity.
        - drop_reason (`str | None`): ``batch_duplicate``, ``duplicate``, ``rewrite_<cleaning reason>``,
          ``rewrite_rejected`` when the server refused the rewrite request, or ``generation_failed`` when the
          backend failed after its retries.
        - rewrite_tokens (`int`): output tokens spent on rewrites.

    Categories:
        - filtering
        - text-generation

    References:
        - [The Self-Improvement Paradox: Can Language Models Bootstrap Reasoning Capabilities without External Scaffolding?](https://arxiv.org/abs/2502.13441)

    Examples:
        Deduplicate questions, rewriting near-duplicates with the same model:

        ```python
        from crescent_distilabel.steps import Diversify
        from distilabel.models.llms import LlamaCppLLM

        diversify = Diversify(llm=LlamaCppLLM(model_path="model.gguf"), max_rewrites=2)
        diversify.load()
        rows = next(diversify.process([{"question": "Tom has 3 apples. How many ...?"}]))
        ```
    """

    embeddings: Embeddings = Field(default_factory=SentenceEmbeddings)
    within_batch_threshold: float = Field(default=WITHIN_BATCH_THRESHOLD, ge=0.0, le=1.0)
    history_threshold: float = Field(default=HISTORY_THRESHOLD, ge=0.0, le=1.0)
    max_rewrites: int = Field(default=2, ge=0)
    recheck_rewrites: bool = True
    rewrite_template: str = REWRITE_TEMPLATE
    exact_limit: PositiveInt | None = 100_000
    min_chars: int = Field(default=20, ge=0)
    max_chars: PositiveInt = 1500
    require_digits: bool = True
    min_options: int = Field(default=0, ge=0)
    seed: int = 0
    progress_db: str | None = None
    rewrite_lag: int = Field(default=0, ge=0)
    expected_rows: PositiveInt | None = None

    _store: ProgressStore | None = PrivateAttr(None)
    _index: SimilarityIndex | None = PrivateAttr(None)
    _texts: list[str] = PrivateAttr(default_factory=list)
    _waiting: deque = PrivateAttr(default_factory=deque)  # _Rewrites, by due batch
    _batch: int = PrivateAttr(-1)
    _seen: int = PrivateAttr(0)

    def model_post_init(self, __context: Any) -> None:
        check_template(self.rewrite_template, ("question", "neighbour"))
        if self.rewrite_lag and self.expected_rows is None:
            raise ValueError("rewrite_lag > 0 needs expected_rows: the step must know its last batch")
        super().model_post_init(__context)

    @property
    def inputs(self) -> StepColumns:
        return {"question": True, "drop_reason": False}

    @property
    def outputs(self) -> StepColumns:
        return [
            "question",
            "original_question",
            "rewrites",
            "nearest_question",
            "nearest_similarity",
            "drop_reason",
            "rewrite_tokens",
        ]

    def load(self) -> None:
        self._store = open_store(self.progress_db, self.name)  # first: a model load itself may crash
        super().load()
        self.embeddings.load()
        self._index = None
        self._texts = []
        self._waiting, self._batch, self._seen = deque(), -1, 0

    def unload(self) -> None:
        self.embeddings.unload()
        super().unload()

    def format_input(self, input: dict[str, Any]) -> ChatType:  # noqa: A002 - distilabel's signature
        return user_turn(self.rewrite_template.format(question=input["question"], neighbour=input["neighbour"]))

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:  # noqa: A002
        cleaned = clean_question(
            output,
            min_chars=self.min_chars,
            max_chars=self.max_chars,
            require_digits=self.require_digits,
            min_options=self.min_options,
        )
        return {"question": cleaned.question, "drop_reason": cleaned.drop_reason}

    def _encode(self, texts: list[str]) -> np.ndarray:
        encode_array = getattr(self.embeddings, "encode_array", None)  # ours skips a list round trip
        return encode_array(texts) if encode_array else np.asarray(self.embeddings.encode(texts), dtype=np.float32)

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings; with a progress store, computed once per text and model across re-runs."""
        if self._store is None:
            vectors = normalize_rows(self._encode(texts))
        else:
            model = self.embeddings.model_name
            known = self._store.get_embeddings(model, texts)
            missing = list(dict.fromkeys(t for t in texts if t not in known))
            if missing:
                fresh = normalize_rows(self._encode(missing))
                self._store.put_embeddings(model, missing, fresh)
                known.update(zip(missing, fresh))
            vectors = np.stack([known[t] for t in texts]).astype(np.float32)
        if self._index is None:
            self._index = SimilarityIndex(vectors.shape[1], exact_limit=self.exact_limit)
        return vectors

    def _accept(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> list[dict[str, Any]]:
        """Check rows against the history (which takes the accepted ones); returns the rows to rewrite."""
        assert self._index is not None
        decisions = accept_against_history(vectors, self._index, self.history_threshold)
        self._texts.extend(row["question"] for row, d in zip(rows, decisions) if d.accepted)
        to_rewrite = []
        for row, decision in zip(rows, decisions):
            if decision.neighbour >= 0:  # history ids: earlier batches first, then this batch's accepted
                row["nearest_similarity"] = decision.similarity
                row["nearest_question"] = self._texts[decision.neighbour]
            if decision.accepted:
                continue
            if row["rewrites"] < self.max_rewrites:
                to_rewrite.append(row)
            else:
                row["drop_reason"] = "duplicate"
        assert len(self._texts) == len(self._index), "history texts and index out of step"
        return to_rewrite

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        with step_errors(self._store, "diversify"):
            rows = self._diversify(inputs)
        yield rows

    def _diversify(self, inputs: StepInput) -> list[dict[str, Any]]:
        """This batch's finished rows, after the rewrites due now (see ``rewrite_lag``) are checked."""
        self._batch += 1
        self._seen += len(inputs)
        if self.expected_rows is not None and self._seen > self.expected_rows:
            raise RuntimeError(f"diversify received {self._seen} rows, more than the {self.expected_rows} expected")
        last = self.expected_rows is not None and self._seen == self.expected_rows
        finished = self._check_rewrites(until=self._batch)  # earlier batches' rewrites first, as they were sent
        rows = [
            {
                **row,
                "original_question": row.get("question"),
                "rewrites": 0,
                "nearest_question": None,
                "nearest_similarity": None,
                "rewrite_tokens": 0,
                "drop_reason": row.get("drop_reason") or (None if row.get("question") else "empty"),
            }
            for row in inputs
        ]
        live = [row for row in rows if row["drop_reason"] is None]
        if live:
            vectors = self._embed([row["question"] for row in live])
            batch_dup = within_batch_duplicates(vectors, self.within_batch_threshold)
            for row, dup in zip(live, batch_dup):
                if dup:
                    row["drop_reason"] = "batch_duplicate"
            live, vectors = [row for row, d in zip(live, batch_dup) if not d], vectors[~batch_dup]
        waiting = self._send(self._accept(live, vectors)) if live else set()
        later = self._check_rewrites(until=float("inf") if last else self._batch)
        resolved, ours = {id(row) for row in later}, {id(row) for row in rows}
        finished += [row for row in rows if id(row) not in waiting or id(row) in resolved]  # in input order
        finished += [row for row in later if id(row) not in ours]
        for row in finished:
            if row["drop_reason"] is not None:
                row["question"] = None
        if self._store is not None:
            self._store.record_decisions(
                "diversify", ((_item(r), r["drop_reason"] or "accepted", _detail(r)) for r in finished)
            )
        return finished

    def _send(self, rows: list[dict[str, Any]]) -> set[int]:
        """Start rewrite requests for rows, due at batch ``now + rewrite_lag``; returns the rows' ids."""
        if not rows:
            return set()
        prompts = [self.rewrite_template.format(question=r["question"], neighbour=r["nearest_question"]) for r in rows]
        seeds = [derive_seed(self.seed, "rewrite", r["question"], r["rewrites"]) for r in rows]
        try:
            pending = submit(self.llm, prompts, 1, seeds, store=self._store, stage="rewrite")
        except BackendFailure:
            pending = None
        self._waiting.append(_Rewrites(self._batch + self.rewrite_lag, rows, pending))
        return {id(r) for r in rows}

    def _check_rewrites(self, until: float) -> list[dict[str, Any]]:
        """Check the rewrites due by batch ``until``, in the order sent: a rewrite still too similar is sent
        again (due ``rewrite_lag`` batches later); returns the rows that are finished."""
        finished: list[dict[str, Any]] = []
        while self._waiting and self._waiting[0].due <= until:
            _, rows, pending = self._waiting.popleft()
            try:
                if pending is None:
                    raise BackendFailure("an earlier batch failed")
                rewrites = pending.result()
            except BackendFailure:
                for row in rows:
                    row["drop_reason"] = "generation_failed"
                finished += rows
                continue
            live = []
            for row, samples in zip(rows, rewrites):
                if samples.rejected:
                    row["drop_reason"] = "rewrite_rejected"
                    continue
                row["rewrites"] += 1
                row["rewrite_tokens"] += samples.tokens[0]
                cleaned = self.format_output(samples.texts[0])
                if cleaned["question"] is None:
                    row["drop_reason"] = f"rewrite_{cleaned['drop_reason']}"
                    continue
                row["question"] = cleaned["question"]
                live.append(row)
            waiting: set[int] = set()
            if live:
                vectors = self._embed([row["question"] for row in live])
                if self.recheck_rewrites:
                    waiting = self._send(self._accept(live, vectors))
                else:  # the released scripts: a rewrite is accepted as it is
                    assert self._index is not None
                    self._index.add(vectors)
                    self._texts.extend(row["question"] for row in live)
            finished += [row for row in rows if id(row) not in waiting]
        return finished


def _item(row: dict[str, Any]) -> str:
    if row.get("bait_call") is not None:
        return f"{row['bait_call']}/{row.get('bait_sample')}"
    return str(row.get("original_question"))


def _detail(row: dict[str, Any]) -> dict[str, Any]:
    return {"rewrites": row["rewrites"], "similarity": row["nearest_similarity"]}
