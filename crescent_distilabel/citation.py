"""The paper's citation, in one place: dataset cards, and the steps' docstrings (which distilabel reads for
the cards it writes, instead of scraping arXiv over the network)."""

from __future__ import annotations

import textwrap
from typing import TypeVar

CITATION = """@inproceedings{sun2025selfimprovement,
  title     = {The Self-Improvement Paradox: Can Language Models Bootstrap Reasoning Capabilities without
               External Scaffolding?},
  author    = {Sun and Chen and Zhao and Xu and Zhang and Yin},
  booktitle = {Findings of the Association for Computational Linguistics: ACL 2025},
  pages     = {6501--6512},
  year      = {2025},
  eprint    = {2502.13441},
  archivePrefix = {arXiv}
}"""

T = TypeVar("T", bound=type)


def with_citation(cls: T) -> T:
    """Append a Google-style ``Citations:`` section with :data:`CITATION` to a step's docstring."""
    block = textwrap.indent(f"```\n{CITATION}\n```", " " * 8)
    cls.__doc__ = f"{(cls.__doc__ or '').rstrip()}\n\n    Citations:\n{block}\n    "
    return cls
