"""Our thin distilabel LLMs (llama.cpp, OpenAI-compatible servers, transformers): per-prompt seeds, and
exactly n samples from servers that ignore ``n``.

Seeds make a run reproducible whatever the batching or the order in which prompts are sent: each prompt's
samples depend only on the recipe seed and what is asked (see :func:`derive_seed`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

from distilabel.mixins.runtime_parameters import RuntimeParameter
from distilabel.models.llms import LLM, LlamaCppLLM, OpenAILLM
from distilabel.typing import FormattedInput, GenerateOutput
from pydantic import Field, FilePath, PrivateAttr

MAX_SEED = 2**31 - 1

# distilabel's LlamaCppLLM validator returns a new object, which pydantic >= 2.12 warns about at every
# construction; harmless, and nothing a user can act on.
warnings.filterwarnings("ignore", message="A custom validator is returning a value other than `self`")


class Interrupted(RuntimeError):
    """An in-process backend gave up a call because the run is stopping (the calls finished before are stored)."""


def interrupted() -> bool:
    """Whether this process got a Ctrl-C: distilabel's step processes note it in an environment variable (a
    run forwards a Ctrl-C sent to its main process alone to them, see :func:`pipeline._execute`)."""
    from distilabel.constants import SIGINT_HANDLER_CALLED_ENV_NAME

    return os.environ.get(SIGINT_HANDLER_CALLED_ENV_NAME) is not None


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 31-bit seed for one prompt, from the run seed and what identifies the prompt."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") % MAX_SEED


def generation_output(
    texts: list[str | None], input_tokens: list[int], output_tokens: list[int], truncated: list[bool]
) -> dict[str, Any]:
    """One prompt's samples in distilabel's output shape, plus which were cut off at max tokens."""
    return {
        "generations": texts,
        "statistics": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        "truncated": truncated,
    }


def merge_output(into: dict[str, Any], part: dict[str, Any]) -> None:
    """Append one request's samples (texts, token counts, truncation flags) to another's."""
    into["generations"] += part["generations"]
    for stat in ("input_tokens", "output_tokens"):
        into["statistics"][stat] += part["statistics"][stat]
    into["truncated"] += part["truncated"]


class LlamaCppChatLLM(LlamaCppLLM):
    """llama.cpp in process (CPU by default), with its own sampler seed for every sample.

    Sample ``j`` of a prompt with seed ``s`` uses seed ``s + j``, so results do not depend on the order
    of calls. With ``parallel`` > 1 a call's samples decode together in one context (continuous batching,
    :mod:`crescent_distilabel.llamacpp_batch`): same sampler chain, about 3x the tokens per second on 2
    cores (2.4x at 18); the whole call is one unit of work (``batched_generation``). distilabel leaves the
    machine-specific ``model_path`` out of ``pipeline.yaml``; ``model``
    (``smollm2``, a path, or ``<repo_id>/<file>.gguf``) is kept there and resolved at load time, so a dumped
    pipeline runs again as it is.

    Attributes:
        model: what to load when ``model_path`` is not given; also the model's name in the data.
        parallel: sequences decoded together; 1: llama-cpp-python's own one-at-a-time path.
        cpu_turns: in a run with a progress store, take turns with the run's other embedded CPU models
            (:mod:`crescent_distilabel.cpu_turns`); False: decode whenever called (cores of its own).
    """

    model: str | None = None
    parallel: int = Field(default=1, ge=1)
    cpu_turns: bool = True
    _batched: Any = PrivateAttr(None)
    model_path: RuntimeParameter[FilePath] | None = Field(  # optional here: ``model`` can stand in for it
        default=None, description="The path to the GGUF model; default: resolved from `model`.", exclude=True
    )

    def load(self) -> None:
        if self.model_path is None and self.model:
            from crescent_distilabel.backends import resolve_gguf

            self.model_path = resolve_gguf(self.model)
        super().load()
        if self.parallel > 1:
            from crescent_distilabel.llamacpp_batch import BatchedLlamaCpp

            threads = (self.extra_kwargs or {}).get("n_threads") or os.cpu_count() or 1
            self._batched = BatchedLlamaCpp(self._model, self.parallel, self.n_ctx, threads)

    def unload(self) -> None:
        if self._batched is not None:
            self._batched.close()
            self._batched = None
        super().unload()

    @property
    def batched_generation(self) -> bool:
        """A call's prompts decode together, so :func:`steps._llm.submit` sends them as one call."""
        return self.parallel > 1

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
        if self._batched is not None:
            return self._generate_batched(inputs, num_generations, max_new_tokens, temperature, top_p, seeds)
        outputs = []
        for i, chat in enumerate(inputs):
            texts, in_tok, out_tok, truncated = [], [], [], []
            for j in range(num_generations):
                if interrupted():  # between samples: one takes seconds, a call of many takes minutes
                    raise Interrupted("the run is stopping")
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
            outputs.append(generation_output(texts, in_tok, out_tok, truncated))
        return outputs

    def _generate_batched(
        self,
        inputs: list[FormattedInput],
        num_generations: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seeds: list[int] | None,
    ) -> list[GenerateOutput]:
        assert self._batched is not None and self._model is not None
        prompts = [chat_tokens(self._model, chat) for chat in inputs]  # type: ignore[arg-type]
        if seeds is None:
            seeds = [derive_seed(self.seed, i) for i in range(len(inputs))]
        rows = self._batched.generate(
            prompts, num_generations, [s % MAX_SEED for s in seeds], max_new_tokens, temperature, top_p,
            should_stop=interrupted,
        )  # fmt: skip
        return [
            generation_output(
                [s.text for s in row],
                [s.prompt_tokens for s in row],
                [s.output_tokens for s in row],
                [s.truncated for s in row],
            )
            for row in rows
        ]


def chat_tokens(llama: Any, messages: list[dict[str, str]]) -> list[int]:
    """A chat as the prompt tokens ``create_chat_completion`` would decode: the GGUF's own Jinja template,
    tokenised the way llama-cpp-python's template handler does."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ValueError("parallel > 1 needs a GGUF with a chat template (tokenizer.chat_template); set parallel: 1")
    eos, bos = llama.token_eos(), llama.token_bos()
    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
    )
    result = formatter(messages=messages)
    return llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)


class OpenAICompatibleLLM(OpenAILLM):
    """Any OpenAI-compatible endpoint (``vllm serve``, TGI, ``llama_cpp.server``, OpenAI).

    Asks for ``n`` samples in one request and tops up with further requests when a server returns fewer
    (llama.cpp's server ignores ``n``); sends a per-prompt ``seed``. Retries with backoff on timeouts, 5xx
    and dropped connections come from the OpenAI client (``max_retries``, ``timeout``).
    """

    async def arequest(
        self,
        input: FormattedInput,  # noqa: A002 - distilabel's signature
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> GenerateOutput:
        """One request for ``num_generations`` samples; the server may return fewer."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": input,
            "n": num_generations,
            "max_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if seed is not None:
            kwargs["seed"] = seed % MAX_SEED
        completion = await self._aclient.chat.completions.create(**kwargs)  # type: ignore[union-attr]
        choices = list(completion.choices or [])[:num_generations]
        usage = completion.usage
        per_choice = (usage.completion_tokens // len(choices)) if usage and choices else 0
        return generation_output(
            [c.message.content if c.message else None for c in choices],
            [usage.prompt_tokens if usage else 0] * len(choices),
            [per_choice] * len(choices),
            [c.finish_reason == "length" for c in choices],
        )

    async def agenerate(  # type: ignore[override]
        self,
        input: FormattedInput,  # noqa: A002 - distilabel's signature
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> GenerateOutput:
        """``num_generations`` samples: request ``r`` asks for what is still missing with seed ``seed + r``."""
        merged = generation_output([], [], [], [])
        request = 0
        while len(merged["generations"]) < num_generations:
            part = await self.arequest(
                input,
                num_generations - len(merged["generations"]),
                max_new_tokens,
                temperature,
                top_p,
                None if seed is None else seed + request,
            )
            if not part["generations"]:
                break
            merge_output(merged, part)
            request += 1
        return merged

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


class TransformersChatLLM(LLM):
    """A transformers model in process: what the self-improvement loop generates with after a round of training
    (a fine-tuned directory has no GGUF or server yet). GPU when present (``device_map="auto"``), else CPU fp32.

    The ``n`` samples of one prompt are one batch (``num_return_sequences``), seeded per prompt, so results do
    not depend on batching.

    Attributes:
        model: a local transformers directory or a Hub model id.
        dtype: torch dtype name; ``auto`` uses the checkpoint's on GPU and float32 on CPU.
    """

    model: str
    dtype: str = "auto"
    _model: Any = PrivateAttr(None)
    _tokenizer: Any = PrivateAttr(None)

    def load(self) -> None:
        super().load()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        cuda = torch.cuda.is_available()
        dtype = self.dtype if cuda or self.dtype != "auto" else "float32"
        self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        self._model = AutoModelForCausalLM.from_pretrained(
            self.model, dtype=dtype, device_map="auto" if cuda else None
        ).eval()

    @property
    def model_name(self) -> str:
        return self.model

    def generate(  # type: ignore[override]
        self,
        inputs: list[FormattedInput],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seeds: list[int] | None = None,
    ) -> list[GenerateOutput]:
        import torch

        outputs = []
        for i, chat in enumerate(inputs):
            encoded = self._tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self._model.device)
            if seeds is not None:
                torch.manual_seed(seeds[i] % MAX_SEED)
            sample = temperature > 0
            with torch.inference_mode():
                generated = self._model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=sample,
                    temperature=temperature if sample else None,
                    top_p=top_p if sample else None,
                    num_return_sequences=num_generations,
                    pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                )
            prompt_len = encoded["input_ids"].shape[1]
            texts, out_tok, truncated = [], [], []
            eos = self._tokenizer.eos_token_id
            for row in generated[:, prompt_len:]:
                ids = row.tolist()
                n = next((j + 1 for j, t in enumerate(ids) if t == eos), len(ids))
                texts.append(self._tokenizer.decode(ids[:n], skip_special_tokens=True).strip())
                out_tok.append(n)
                truncated.append(n == max_new_tokens and (not ids or ids[n - 1] != eos))
            outputs.append(generation_output(texts, [prompt_len] * num_generations, out_tok, truncated))
        return outputs
