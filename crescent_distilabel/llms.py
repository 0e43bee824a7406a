"""Our two thin distilabel LLMs: per-prompt seeds, and exactly n samples from servers that ignore ``n``.

Seeds make a run reproducible whatever the batching or the order in which prompts are sent: each prompt's
samples depend only on the recipe seed and what is asked (see :func:`derive_seed`).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.models.llms import LlamaCppLLM, OpenAILLM
from distilabel.typing import FormattedInput, GenerateOutput
from pydantic import Field, FilePath

MAX_SEED = 2**31 - 1


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed for one prompt, from the run seed and what identifies the prompt."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % MAX_SEED


def _output(texts: list[str | None], input_tokens: list[int], output_tokens: list[int], truncated: list[bool]):
    return {
        "generations": texts,
        "statistics": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        "truncated": truncated,
    }


class LlamaCppChatLLM(LlamaCppLLM):
    """llama.cpp in process (CPU by default), with its own sampler seed for every sample.

    Sample ``j`` of a prompt with seed ``s`` uses seed ``s + j``, so results do not depend on the order
    of calls. distilabel leaves the machine-specific ``model_path`` out of ``pipeline.yaml``; ``model``
    (``smollm2``, a path, or ``<repo_id>/<file>.gguf``) is kept there and resolved at load time, so a dumped
    pipeline runs again as it is.

    Attributes:
        model: what to load when ``model_path`` is not given; also the model's name in the data.
    """

    model: str | None = None
    model_path: RuntimeParameter[FilePath] | None = Field(  # optional here: ``model`` can stand in for it
        default=None, description="The path to the GGUF model; default: resolved from `model`.", exclude=True
    )

    def load(self) -> None:
        if self.model_path is None and self.model:
            from crescent_distilabel.backends import resolve_gguf

            self.model_path = resolve_gguf(self.model)
        super().load()

    @property
    def model_name(self) -> str:
        return self.model or Path(str(self.model_path)).stem

    def generate(  # type: ignore[override]
        self,
        inputs: list[FormattedInput],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seeds: list[int] | None = None,
    ) -> list[GenerateOutput]:
        outputs = []
        for i, chat in enumerate(inputs):
            texts, in_tok, out_tok, truncated = [], [], [], []
            for j in range(num_generations):
                extra: dict[str, Any] = {}
                if seeds is not None:
                    extra["seed"] = (seeds[i] + j) % MAX_SEED
                completion = self._model.create_chat_completion(  # type: ignore[union-attr]
                    messages=chat,  # type: ignore[arg-type]
                    max_tokens=max_new_tokens,
                    temperature=temperature,
                    top_p=top_p,
                    **extra,
                )
                choice = completion["choices"][0]  # type: ignore[index]
                texts.append(choice["message"]["content"])
                truncated.append(choice.get("finish_reason") == "length")
                in_tok.append(completion["usage"]["prompt_tokens"])  # type: ignore[index]
                out_tok.append(completion["usage"]["completion_tokens"])  # type: ignore[index]
            outputs.append(_output(texts, in_tok, out_tok, truncated))
        return outputs


class OpenAICompatibleLLM(OpenAILLM):
    """Any OpenAI-compatible endpoint (``vllm serve``, TGI, ``llama_cpp.server``, OpenAI).

    Asks for ``n`` samples in one request and tops up with further requests when a server returns fewer
    (llama.cpp's server ignores ``n``); sends a per-prompt ``seed``. Retries with backoff on timeouts, 5xx
    and dropped connections come from the OpenAI client (``max_retries``, ``timeout``).
    """

    async def agenerate(  # type: ignore[override]
        self,
        input: FormattedInput,  # noqa: A002 - distilabel's signature
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> GenerateOutput:
        texts: list[str | None] = []
        in_tok: list[int] = []
        out_tok: list[int] = []
        truncated: list[bool] = []
        request = 0
        while len(texts) < num_generations:
            need = num_generations - len(texts)
            kwargs: dict[str, Any] = {
                "model": self.model,
                "messages": input,
                "n": need,
                "max_tokens": max_new_tokens,
                "temperature": temperature,
                "top_p": top_p,
            }
            if seed is not None:
                kwargs["seed"] = (seed + request) % MAX_SEED
            completion = await self._aclient.chat.completions.create(**kwargs)  # type: ignore[union-attr]
            request += 1
            choices = list(completion.choices or [])[:need]
            if not choices:
                break
            usage = completion.usage
            per_choice = (usage.completion_tokens // len(choices)) if usage else 0
            for choice in choices:
                texts.append(choice.message.content if choice.message else None)
                truncated.append(choice.finish_reason == "length")
                in_tok.append(usage.prompt_tokens if usage else 0)
                out_tok.append(per_choice)
        return _output(texts, in_tok, out_tok, truncated)

    def generate(  # type: ignore[override]
        self,
        inputs: list[FormattedInput],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seeds: list[int] | None = None,
    ) -> list[GenerateOutput]:
        async def run() -> list[GenerateOutput]:
            return await asyncio.gather(
                *(
                    self.agenerate(
                        chat,
                        num_generations=num_generations,
                        max_new_tokens=max_new_tokens,
                        temperature=temperature,
                        top_p=top_p,
                        seed=None if seeds is None else seeds[i],
                    )
                    for i, chat in enumerate(inputs)
                )
            )

        return self.event_loop.run_until_complete(run())
