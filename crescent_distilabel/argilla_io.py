"""Argilla, behind one module: push a CRESCENT dataset for human spot-checks and read the reviews back.

The review rules (sampling, aggregation, corrections, accuracy) are plain functions in
:mod:`crescent_distilabel.review`; this module only maps rows to Argilla records and back, and turns every
client failure into an :class:`ArgillaError` that says what to do.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crescent_distilabel.review import (
    COMMENT,
    CORRECT,
    CORRECTED_ANSWER,
    WELL_POSED,
    AccuracyReport,
    Review,
    accuracy_report,
    aggregate,
    apply_reviews,
    record_id,
    select_for_review,
)
from crescent_distilabel.run_dir import REVIEW_REPORT, STATE_DIR, RunDir, preference_config

if TYPE_CHECKING:
    import argilla as rg

API_URL_ENV, API_KEY_ENV = "ARGILLA_API_URL", "ARGILLA_API_KEY"
VECTOR_NAME = "question_embedding"

GUIDELINES = """\
# Spot-checking a CRESCENT dataset

A chat model wrote each question itself, answered it k times, and kept the answer most of its samples agreed
on. You check whether that self-made pair is usable for training.

1. **Is the question well-posed?** "yes" if it is a self-contained math word problem with one definite
   numeric answer. "no" if it is ambiguous, missing information, contradictory, or not a question.
2. **Is the final answer correct?** Solve the question yourself and compare with `final_answer` (the
   chain above it is the model's reasoning; judge the final answer, not the style). Answer it even if you
   said the question is not well-posed, when you can.
3. **Corrected answer** (optional): when the final answer is wrong, write the right one as a number
   ("42", "3/4", "0.75").
4. **Comment** (optional): anything a maintainer should know.

Use the metadata filters: `agreement` (votes for the winner / k) shows how sure the model was;
low-agreement questions are where mistakes are expected. `nearest_similarity` shows how close the question
is to another accepted one.
"""


class ArgillaError(RuntimeError):
    """Argilla could not be used; the message says why and what to do. Local data is never touched."""


def connect(api_url: str | None = None, api_key: str | None = None) -> rg.Argilla:
    """A client for ``api_url`` (default ``$ARGILLA_API_URL``) with ``api_key`` (default ``$ARGILLA_API_KEY``).

    Raises:
        ArgillaError: no URL or key, server unreachable, or the key is refused.
    """
    import argilla as rg
    import httpx

    api_url = api_url or os.environ.get(API_URL_ENV)
    api_key = api_key or os.environ.get(API_KEY_ENV)
    if not api_url:
        raise ArgillaError(f"no Argilla server given: pass --api-url or set {API_URL_ENV}")
    if not api_key:
        raise ArgillaError(f"no Argilla API key: set {API_KEY_ENV} (the key of a user with access to the workspace)")
    try:
        return rg.Argilla(api_url=api_url, api_key=api_key, retries=1, timeout=30)
    except httpx.TransportError as err:
        raise ArgillaError(f"cannot reach the Argilla server at {api_url} ({err}); is it running?") from None
    except Exception as err:  # the SDK's own errors
        if type(err).__name__ == "ArgillaCredentialsError":
            raise ArgillaError(
                f"the Argilla server at {api_url} refused the API key; check {API_KEY_ENV} "
                "(My settings -> API key in the Argilla UI)"
            ) from None
        raise ArgillaError(f"cannot connect to Argilla at {api_url}: {err}") from None


def review_settings(vector_dimensions: int | None = None) -> rg.Settings:
    """Fields, questions, metadata, vectors and guidelines of a CRESCENT review dataset."""
    import argilla as rg

    return rg.Settings(
        guidelines=GUIDELINES,
        fields=[
            rg.TextField("question", title="Question"),
            rg.TextField("answer", title="Chosen answer chain", use_markdown=True),
            rg.TextField("final_answer", title="Final answer (consensus)"),
        ],
        questions=[
            rg.LabelQuestion(WELL_POSED, labels=["yes", "no"], title="Is the question well-posed?"),
            rg.LabelQuestion(CORRECT, labels=["yes", "no"], title="Is the final answer correct?"),
            rg.TextQuestion(CORRECTED_ANSWER, title="Corrected final answer (if wrong)", required=False),
            rg.TextQuestion(COMMENT, title="Comment", required=False),
        ],
        metadata=[
            rg.FloatMetadataProperty("agreement", title="Agreement (winner votes / k)"),
            rg.IntegerMetadataProperty("winner_votes", title="Votes for the final answer"),
            rg.IntegerMetadataProperty("k", title="Answers sampled (k)"),
            rg.IntegerMetadataProperty("distinct_answers", title="Distinct answers"),
            rg.IntegerMetadataProperty("rewrites", title="Rewrites"),
            rg.FloatMetadataProperty("nearest_similarity", title="Cosine to nearest accepted question"),
            rg.TermsMetadataProperty("agreement_level", title="Agreement level"),
        ],
        vectors=[rg.VectorField(VECTOR_NAME, dimensions=vector_dimensions)] if vector_dimensions else None,
    )


def to_record(row: dict[str, Any], vector: np.ndarray | None = None) -> rg.Record:
    """One kept row as an Argilla record with a stable id."""
    import argilla as rg

    counts = row.get("vote_counts") or []
    metadata = {
        "agreement": row.get("agreement"),
        "winner_votes": counts[0] if counts else None,
        "k": row.get("k"),
        "distinct_answers": len(counts),
        "rewrites": row.get("rewrites"),
        "nearest_similarity": row.get("nearest_similarity"),
        "agreement_level": None if row.get("agreement") is None else f"{row['agreement']:.2f}",
    }
    return rg.Record(
        id=record_id(row),
        fields={
            "question": row["question"],
            "answer": row.get("answer") or "",
            "final_answer": row.get("final_answer") or "",
        },
        metadata={key: value for key, value in metadata.items() if value is not None},
        vectors={VECTOR_NAME: [float(x) for x in vector]} if vector is not None else {},
    )


def _workspace(client: rg.Argilla, workspace: str | None) -> str:
    names = [w.name for w in client.workspaces]
    if workspace is None:
        if len(names) == 1:
            return names[0]
        raise ArgillaError(f"several workspaces exist ({', '.join(names)}): choose one with --workspace")
    if workspace not in names:
        raise ArgillaError(
            f"workspace {workspace!r} does not exist on {client.api_url} (available: {', '.join(names) or 'none'}); "
            "an owner can create it in the Argilla UI or with rg.Workspace(name).create()"
        )
    return workspace


def _find(client: rg.Argilla, name: str, workspace: str) -> rg.Dataset | None:
    import warnings

    with warnings.catch_warnings():  # the SDK warns when a dataset does not exist yet: expected here
        warnings.simplefilter("ignore", UserWarning)
        return client.datasets(name=name, workspace=workspace)


def get_or_create_dataset(
    client: rg.Argilla, name: str, workspace: str | None, vector_dimensions: int | None
) -> rg.Dataset:
    """The review dataset, created if missing; an existing dataset must be a CRESCENT review dataset."""
    import argilla as rg

    ws = _workspace(client, workspace)
    dataset = _find(client, name, ws)
    if dataset is not None:
        questions = {q.name for q in dataset.settings.questions}
        if not {WELL_POSED, CORRECT} <= questions or "question" not in {f.name for f in dataset.settings.fields}:
            raise ArgillaError(
                f"an Argilla dataset named {name!r} already exists in workspace {ws!r} and is not a CRESCENT "
                "review dataset; choose another --dataset-name"
            )
        return dataset
    try:
        return rg.Dataset(name=name, workspace=ws, settings=review_settings(vector_dimensions), client=client).create()
    except Exception as err:
        raise ArgillaError(f"cannot create the Argilla dataset {name!r} in workspace {ws!r}: {err}") from None


@dataclass
class PushResult:
    """What a push sent: ``pushed`` of ``total`` kept rows, into ``dataset`` (URL for reviewers)."""

    dataset: str
    workspace: str
    url: str
    pushed: int
    total: int
    vectors: bool


def push_for_review(
    client: rg.Argilla,
    rows: Sequence[dict[str, Any]],
    dataset_name: str,
    workspace: str | None = None,
    *,
    sample: int | None = None,
    strategy: str = "stratified",
    seed: int = 0,
    vectors: np.ndarray | None = None,
) -> PushResult:
    """Send kept rows (all, or a sample) to Argilla; re-pushing updates records instead of duplicating them."""
    indices = select_for_review(rows, sample, strategy, seed)
    dims = int(vectors.shape[1]) if vectors is not None and len(vectors) else None
    dataset = get_or_create_dataset(client, dataset_name, workspace, dims)
    has_vectors = dims is not None and any(v.name == VECTOR_NAME for v in (dataset.settings.vectors or []))
    records = [to_record(rows[i], vectors[i] if has_vectors else None) for i in indices]  # type: ignore[index]
    try:
        if records:
            dataset.records.log(records, batch_size=min(len(records), 200))  # no "normalised" console note
    except Exception as err:
        raise ArgillaError(f"pushing records to {dataset_name!r} failed: {err}") from None
    url = f"{client.api_url.rstrip('/')}/dataset/{dataset.id}/annotation-mode"
    return PushResult(dataset_name, dataset.workspace.name, url, len(records), len(rows), has_vectors)


def pull_reviews(client: rg.Argilla, dataset_name: str, workspace: str | None = None) -> dict[str, Review]:
    """Every record's submitted responses, aggregated per record id (drafts and discarded ones are ignored)."""
    ws = _workspace(client, workspace)
    dataset = _find(client, dataset_name, ws)
    if dataset is None:
        raise ArgillaError(f"no Argilla dataset named {dataset_name!r} in workspace {ws!r}; push it first")
    reviews: dict[str, Review] = {}
    try:
        for record in dataset.records(with_responses=True, with_suggestions=False):
            submitted = [
                (str(r.user_id), r.question_name, r.value)
                for r in record.responses
                if str(getattr(r.status, "value", r.status)) == "submitted"
            ]
            if submitted:
                reviews[str(record.id)] = aggregate(submitted)
    except Exception as err:
        raise ArgillaError(f"reading responses of {dataset_name!r} failed: {err}") from None
    return reviews


def stored_vectors(run: RunDir, questions: Sequence[str]) -> np.ndarray | None:
    """The questions' embeddings as diversification computed them (from the run's progress store), or None
    when any is missing (e.g. the no-diversification ablation): no model is loaded just to push."""
    from crescent_distilabel.store import ProgressStore

    db = run.path / STATE_DIR / "progress.sqlite"
    if not questions or not db.is_file():
        return None
    store = ProgressStore(db)
    try:
        found = store.get_embeddings(run.recipe().diversify.embedding_model, list(questions))
    finally:
        store.close()
    if any(q not in found for q in questions):
        return None
    return np.stack([found[q] for q in questions])


def push_run(
    output_dir: str | Path,
    dataset_name: str | None = None,
    workspace: str | None = None,
    *,
    api_url: str | None = None,
    api_key: str | None = None,
    sample: int | None = None,
    strategy: str = "stratified",
    seed: int | None = None,
    vectors: bool = True,
) -> PushResult:
    """Push a run's kept pairs (all, or a sample) for review; ``dataset_name`` defaults to the recipe name."""
    run = RunDir(Path(output_dir))
    rows = run.load("default").to_list()
    client = connect(api_url, api_key)
    embeddings = stored_vectors(run, [r["question"] for r in rows]) if vectors else None
    recipe = run.recipe()
    return push_for_review(
        client,
        rows,
        dataset_name or recipe.name,
        workspace,
        sample=sample,
        strategy=strategy,
        seed=recipe.seed if seed is None else seed,
        vectors=embeddings,
    )


@dataclass
class PullResult:
    """Reviews applied to a run: the accuracy report and how many rows each config now has."""

    report: AccuracyReport
    kept: int
    rejected: int
    corrected: int


def pull_run(
    output_dir: str | Path,
    dataset_name: str | None = None,
    workspace: str | None = None,
    *,
    api_url: str | None = None,
    api_key: str | None = None,
) -> PullResult:
    """Read the submitted reviews and apply them: writes the ``reviewed`` and ``review_rejected`` configs (and
    ``reviewed_preference``, the DPO pairs of the reviewed rows, when the run makes preference pairs) and
    ``review_report.json``, and adds the reviewed accuracy to the card. ``default`` is never changed."""
    from datasets import Dataset, Features, Value

    run = RunDir(Path(output_dir))
    default = run.load("default")
    rows = default.to_list()
    client = connect(api_url, api_key)
    reviews = pull_reviews(client, dataset_name or run.recipe().name, workspace)
    kept, rejected = apply_reviews(rows, reviews)
    report = accuracy_report(rows, reviews)
    features = Features(
        {
            **default.features,
            "review_status": Value("string"),
            "review_well_posed": Value("bool"),
            "review_correct": Value("bool"),
            "review_corrected_answer": Value("string"),
            "review_comment": Value("string"),
            "reviewers": Value("int64"),
            "answer_source": Value("string"),
        }
    )
    if "drop_reason" not in features:
        features["drop_reason"] = Value("string")
    reviewed = Dataset.from_list(kept, features=features)
    run.save("reviewed", reviewed)
    run.save("review_rejected", Dataset.from_list(rejected, features=features))
    recipe = run.recipe()
    if recipe.preference.enabled:  # DPO pairs of what survived review, corrections taking the vote's place
        run.save("reviewed_preference", preference_config(reviewed, recipe.preference, recipe.consensus.answer_kind))
    run.write_report(REVIEW_REPORT, report.to_dict())
    run.write_card()
    corrected = sum(1 for r in kept if r["review_status"] == "corrected_answer")
    return PullResult(report, len(kept), len(rejected), corrected)
