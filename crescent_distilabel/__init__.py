"""CRESCENT (arXiv 2502.13441) for distilabel: a chat model writes, diversifies and self-verifies its own data."""

import warnings

# distilabel 1.5.3's Step model trips a harmless pydantic >= 2.12 warning on import; hide only that one.
warnings.filterwarnings("ignore", message=r"The 'default' attribute with value None was provided to the `Field\(\)`")

from crescent_distilabel.pipeline import RunResult, RunSummary, build_pipeline, run_recipe  # noqa: E402
from crescent_distilabel.recipe import Recipe, RecipeError, load_recipe  # noqa: E402
from crescent_distilabel.steps import BaitPrompting, Consensus, Diversify  # noqa: E402

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
