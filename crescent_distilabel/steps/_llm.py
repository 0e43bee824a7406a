"""The one helper the steps use to call their LLM."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from distilabel.models.llms.base import LLM


class Samples(NamedTuple):
    """One prompt's samples: texts (None where the backend gave none), output tokens, cut off at max tokens."""

    texts: list[str | None]
    tokens: list[int]
    truncated: list[bool]


def user_turn(content: str) -> list[dict[str, str]]:
    """A one-message chat: the method uses user turns only, never a system prompt."""
    return [{"role": "user", "content": content}]


def generate(llm: LLM, prompts: list[str], num_generations: int, seeds: list[int] | None = None) -> list[Samples]:
    """``num_generations`` samples per prompt; per-prompt ``seeds`` go to LLMs that take them (ours)."""
    if not prompts:
        return []
    kwargs = llm.get_generation_kwargs()
    if seeds is not None and "seeds" in inspect.signature(llm.generate).parameters:
        kwargs["seeds"] = seeds
    outputs = llm.generate_outputs(inputs=[user_turn(p) for p in prompts], num_generations=num_generations, **kwargs)
    results = []
    for output in outputs:
        pad = lambda values, fill: (list(values or []) + [fill] * num_generations)[:num_generations]  # noqa: E731
        stats = output.get("statistics") or {}
        results.append(
            Samples(
                texts=pad(output.get("generations"), None),  # a backend may return fewer than asked
                tokens=[int(t or 0) for t in pad(stats.get("output_tokens"), 0)],
                truncated=[bool(t) for t in pad(output.get("truncated"), False)],
            )
        )
    return results
