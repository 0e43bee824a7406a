"""Fakes for tests where determinism is the point. Named fakes: they are not the real thing.

``FakeLLM`` answers from a script instead of a model, so a step's exact output can be asserted. The real
paths (llama.cpp SmolLM2, an OpenAI-compatible server) are tested in ``test_end_to_end.py``.
"""

from __future__ import annotations

from typing import Any

from distilabel.models.llms.base import LLM
from distilabel.typing import GenerateOutput
from pydantic import Field, PrivateAttr


class FakeLLM(LLM):
    """A scripted stand-in for an LLM: each prompt containing a ``rules`` key gets that rule's replies in turn.

    Attributes:
        rules: substring of the last user message -> replies, handed out in order (cycling).
        default: the reply when no rule matches.
        fail_on: prompts containing this raise an error: ``ConnectionError`` (a backend going down mid-run,
            transient) or, with ``refuse=True``, ``ValueError`` (an in-process backend refusing that prompt).
        cut_marker: replies containing this are reported cut off at max tokens, as real backends flag them.
    """

    rules: dict[str, list[str]] = Field(default_factory=dict)
    default: str = ""
    fail_on: str | None = None
    refuse: bool = False
    cut_marker: str | None = None
    _cursor: dict[str, int] = PrivateAttr(default_factory=dict)
    _prompts: list[str] = PrivateAttr(default_factory=list)

    def load(self) -> None:
        super().load()
        self._cursor = {}
        self._prompts = []

    @property
    def model_name(self) -> str:
        return "fake-llm"

    @property
    def prompts(self) -> list[str]:
        """Every prompt received, in order (for assertions)."""
        return self._prompts

    def _reply(self, prompt: str) -> str:
        for key, replies in self.rules.items():
            if key in prompt:
                n = self._cursor.get(key, 0)
                self._cursor[key] = n + 1
                return replies[n % len(replies)]
        return self.default

    def generate(  # type: ignore[override]
        self,
        inputs: list[Any],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[GenerateOutput]:
        outputs = []
        for chat in inputs:
            prompt = chat[-1]["content"]
            self._prompts.append(prompt)
            if self.fail_on and self.fail_on in prompt:
                error = ValueError if self.refuse else ConnectionError
                raise error(f"FakeLLM fails on purpose for a prompt containing {self.fail_on!r}")
            texts = [self._reply(prompt) for _ in range(num_generations)]
            outputs.append(
                {
                    "generations": texts,
                    "truncated": [bool(self.cut_marker) and self.cut_marker in t for t in texts],
                    "statistics": {
                        "input_tokens": [len(prompt.split())] * num_generations,
                        "output_tokens": [len(t.split()) for t in texts],
                    },
                }
            )
        return outputs


class CrashingLLM(FakeLLM):
    """A FakeLLM that ends its own process when it gets a prompt containing ``crash_on``: ``os._exit(7)`` or
    ``abort()`` (SIGABRT, as a native library that aborts), like a backend taking its step process down.

    Attributes:
        crash_on: the prompt substring that kills the process.
        how: ``"exit"`` or ``"abort"``.
    """

    crash_on: str = ""
    how: str = "exit"

    def generate(  # type: ignore[override]
        self,
        inputs: list[Any],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
    ) -> list[GenerateOutput]:
        import os

        if self.crash_on and any(self.crash_on in chat[-1]["content"] for chat in inputs):
            if self.how == "abort":
                import faulthandler

                faulthandler.disable()  # pytest's handler would print every thread's stack into the test log
                os.abort()
            os._exit(7)
        return super().generate(inputs, num_generations, max_new_tokens, temperature, top_p)
