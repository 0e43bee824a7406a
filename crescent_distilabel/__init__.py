"""CRESCENT (arXiv 2502.13441) for distilabel: a chat model writes, diversifies and self-verifies its own data."""

from crescent_distilabel.pipeline import RunResult, RunSummary, build_pipeline, run_recipe
from crescent_distilabel.recipe import Recipe, RecipeError, load_recipe
from crescent_distilabel.steps import BaitPrompting, Consensus, Diversify

__version__ = "0.1.0"

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
