"""The prompts of the CRESCENT method (arXiv 2502.13441, sections 3.1-3.3).

The bait prompt is the only human input of the whole method: it fixes the domain. It is configurable,
and the exact text used is recorded with every run.
"""

from __future__ import annotations

BAIT_PROMPT = (
    "Use your creativity to write one unique and diverse math word problem at a high school level. "
    "Output only the problem itself, with no solution, answer or extra commentary.\n\nProblem:"
)
"""Default bait (section 3.1): one user turn, no system prompt, ending in a ``Problem:`` cue."""

REWRITE_TEMPLATE = (
    'The generated question "{question}" is very similar to the existing question "{neighbour}". '
    "Modify the generated question to make it clearly different from the existing one. "
    "Output only the modified question."
)
"""Rewrite request for a near-duplicate (section 3.2); fields ``question`` and ``neighbour``."""

ANSWER_TEMPLATE = (
    "{question}\n\n"
    "Think step by step and explain each step in detail. "
    'At the end, give the final answer as a single number after "#### Answer:".'
)
"""Answer prompt for consensus sampling (section 3.3); field ``question``."""


def check_template(template: str, fields: tuple[str, ...]) -> None:
    """Fail early, naming the missing field, when a user-supplied prompt template cannot be filled."""
    for field in fields:
        if "{" + field + "}" not in template:
            raise ValueError(f"prompt template must contain {{{field}}}; got: {template[:80]!r}")
    try:
        template.format(**{f: "" for f in fields})
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"prompt template has a placeholder other than {fields} (escape literal braces as '{{{{' "
            f"and '}}}}'): {err}"
        ) from None


def sft_views(question: str, chain: str) -> dict[str, list[dict[str, str]]]:
    """The training views of one kept pair: ``messages`` (the user asks the bare question, as in the released
    data) and the same turns split into TRL's ``prompt``/``completion``, which makes ``trl sft`` compute the loss
    on the assistant turn only with any chat template."""
    user = {"role": "user", "content": question}
    assistant = {"role": "assistant", "content": chain}
    return {"messages": [user, assistant], "prompt": [user], "completion": [assistant]}
