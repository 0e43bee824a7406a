"""Push kept CRESCENT pairs to Argilla for review from inside a distilabel pipeline."""

from typing import Any

from distilabel.errors import DistilabelUserError
from distilabel.steps.argilla.base import ArgillaBase
from distilabel.steps.base import StepInput
from distilabel.typing import StepColumns, StepOutput

from crescent_distilabel.argilla_io import ArgillaError, connect, get_or_create_dataset, to_record
from crescent_distilabel.citation import with_citation


@with_citation
class CrescentToArgilla(ArgillaBase):
    """Sends the kept question-answer pairs of a CRESCENT pipeline to an Argilla review dataset.

    The dataset gets the CRESCENT review settings (question, chosen chain and final answer; "is the question
    well-posed?", "is the final answer correct?", a corrected answer and a comment; agreement, votes, rewrites
    and similarity as metadata; reviewer guidelines). Rows dropped upstream are not sent. Record ids are stable,
    so running the pipeline again updates records instead of duplicating them. Rows pass through unchanged.

    Attributes:
        dataset_name: the Argilla dataset (created if missing).
        dataset_workspace: its workspace (default: the only one).
        api_url: the Argilla server (default ``$ARGILLA_API_URL``).
        api_key: the API key (default ``$ARGILLA_API_KEY``); never written to ``pipeline.yaml``.

    Input columns:
        - question (`str | None`): the question.
        - answer (`str | None`): the chosen chain.
        - final_answer (`str | None`): the consensus answer.
        - agreement, vote_counts, k, rewrites, nearest_similarity (optional): review metadata.
        - drop_reason (`str | None`, optional): rows with a reason are not sent.

    Categories:
        - save

    Examples:
        Review what the pipeline keeps:

        ```python
        from crescent_distilabel.steps import CrescentToArgilla

        review = CrescentToArgilla(dataset_name="crescent-review", api_url="http://localhost:6900")
        consensus >> review  # the API key comes from ARGILLA_API_KEY
        ```
    """

    def _client_init(self) -> None:
        try:
            key = self.api_key.get_secret_value() if self.api_key is not None else None  # type: ignore[union-attr]
            self._client = connect(self.api_url, key)
        except ArgillaError as err:
            raise DistilabelUserError(str(err)) from None

    def load(self) -> None:
        super().load()
        try:
            self._dataset = get_or_create_dataset(self._client, self.dataset_name, self.dataset_workspace, None)
        except ArgillaError as err:
            raise DistilabelUserError(str(err)) from None

    @property
    def inputs(self) -> StepColumns:
        return {"question": True, "answer": True, "final_answer": True}

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        kept: list[dict[str, Any]] = [row for row in inputs if row.get("question") and not row.get("drop_reason")]
        if kept:
            # a batch size the SDK need not normalise: it would print (rich) from a forked step process
            records = [to_record(row) for row in kept]
            self._dataset.records.log(records, batch_size=min(len(records), 200))  # type: ignore[union-attr]
            self._logger.info(f"Sent {len(kept)} pairs to Argilla dataset {self.dataset_name!r}")
        yield inputs
