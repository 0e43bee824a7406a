"""The three CRESCENT stages as distilabel steps, and the step that sends kept pairs to Argilla for review."""

from crescent_distilabel.steps.bait import BaitCalls, BaitPrompting, BaitSampling
from crescent_distilabel.steps.consensus import Consensus
from crescent_distilabel.steps.diversify import Diversify
from crescent_distilabel.steps.review import CrescentToArgilla

__all__ = ["BaitCalls", "BaitPrompting", "BaitSampling", "Consensus", "CrescentToArgilla", "Diversify"]
