"""The three CRESCENT stages as distilabel steps."""

from crescent_distilabel.steps.bait import BaitPrompting
from crescent_distilabel.steps.consensus import Consensus
from crescent_distilabel.steps.diversify import Diversify

__all__ = ["BaitPrompting", "Consensus", "Diversify"]
