"""The one helper the steps use to call their LLM."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distilabel.models.llms.base import LLM


def user_turn(content: str) -> list[dict[str, str]]:
    """A one-message chat: the method uses user turns only, never a system prompt."""
    return [{"role": "user", "content": content}]


def generate(llm: LLM, prompts: list[str], num_generations: int) -> list[tuple[list[str | None], list[int]]]:
    """``num_generations`` samples per prompt: each prompt's texts and each text's output tokens."""
    if not prompts:
        return []
    outputs = llm.generate_outputs(
        inputs=[user_turn(p) for p in prompts],
        num_generations=num_generations,
        **llm.get_generation_kwargs(),
    )
    results = []
    for output in outputs:
        texts = list(output.get("generations") or [])
        texts += [None] * (num_generations - len(texts))  # a backend may return fewer than asked
        tokens = [int(t or 0) for t in (output.get("statistics") or {}).get("output_tokens") or []]
        tokens += [0] * (num_generations - len(tokens))
        results.append((texts[:num_generations], tokens[:num_generations]))
    return results
