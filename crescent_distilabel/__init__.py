"""CRESCENT (arXiv 2502.13441) for distilabel: a chat model writes, diversifies and self-verifies its own data.

The public names load on first use (PEP 562), so ``crescent --help`` and ``crescent show-recipe`` start without
distilabel, datasets or torch.
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

# distilabel 1.5.3's Step model trips a harmless pydantic >= 2.12 warning on import; hide only that one.
warnings.filterwarnings("ignore", message=r"The 'default' attribute with value None was provided to the `Field\(\)`")

__version__ = "0.1.0"

_EXPORTS = {
    "BaitPrompting": "crescent_distilabel.steps",
    "Consensus": "crescent_distilabel.steps",
    "Diversify": "crescent_distilabel.steps",
    "Recipe": "crescent_distilabel.recipe",
    "RecipeError": "crescent_distilabel.recipe",
    "RunResult": "crescent_distilabel.pipeline",
    "RunSummary": "crescent_distilabel.pipeline",
    "build_pipeline": "crescent_distilabel.pipeline",
    "load_recipe": "crescent_distilabel.recipe",
    "run_recipe": "crescent_distilabel.pipeline",
}
__all__ = [
    "BaitPrompting",
    "Consensus",
    "Diversify",
    "Recipe",
    "RecipeError",
    "RunResult",
    "RunSummary",
    "build_pipeline",
    "load_recipe",
    "run_recipe",
]

if TYPE_CHECKING:
    from crescent_distilabel.pipeline import RunResult, RunSummary, build_pipeline, run_recipe
    from crescent_distilabel.recipe import Recipe, RecipeError, load_recipe
    from crescent_distilabel.steps import BaitPrompting, Consensus, Diversify


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crescent_distilabel' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
