"""Recipes: one YAML file is one reproducible generation run.

A recipe maps onto these pydantic models, so the CLI (``--set key=value``), the Python API and the YAML
files take the same settings, and a mistake is reported with the key that holds it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from crescent_distilabel.answers import EXTRACTION_VERSION, AnswerKind
from crescent_distilabel.cleaning import CLEANING_VERSION
from crescent_distilabel.prompts import ANSWER_TEMPLATE, BAIT_PROMPT, REWRITE_TEMPLATE, check_template
from crescent_distilabel.similarity import DEFAULT_EMBEDDING_MODEL, HISTORY_THRESHOLD, WITHIN_BATCH_THRESHOLD
from crescent_distilabel.voting import required_votes


class RecipeError(ValueError):
    """A recipe that cannot run; the message names every offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which model writes (or answers) and how to reach it."""

    backend: Literal["llamacpp", "openai", "transformers", "vllm", "vllm_serve"] = "llamacpp"
    model: str = Field(
        "qwen2.5-coder-0.5b",
        description="llamacpp: 'qwen2.5-coder-0.5b' (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, does grade-school math), "
        "'smollm2' (SmolLM2-135M, fast, for trying the pipeline), a .gguf path or <repo>/<file>.gguf; openai: "
        "served name; transformers, vllm, vllm_serve: a local directory or Hub id (an alias: its transformers copy)",
    )
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    n_ctx: PositiveInt = 2048
    n_threads: PositiveInt | None = None
    parallel: PositiveInt = Field(
        1,
        description="llamacpp: sequences decoded together in one context (continuous batching; 2.4x the "
        "tokens/s at 18 on 2 cores); 1: llama-cpp-python's one-at-a-time path. Same sampler either way",
    )
    cpu_turns: bool = Field(
        True,
        description="llamacpp: the run's steps take turns decoding, each with every core, later stages first "
        "(two llama.cpp processes on the same cores slow each other down 7x); false: all decode at once",
    )
    timeout: float = Field(120.0, gt=0)
    max_retries: int = Field(6, ge=0)
    # vllm / vllm_serve
    tensor_parallel_size: PositiveInt = Field(1, description="vllm, vllm_serve: GPUs per engine")
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="vllm, vllm_serve: None = 0.8 (the embedding model shares the GPU)"
    )
    kv_cache_gb: float | None = Field(None, gt=0.0, description="vllm, vllm_serve: KV cache size; None: 1 on CPU")
    dtype: str = Field("auto", description="vllm, vllm_serve: auto = the checkpoint's on GPU, float32 on CPU")
    enforce_eager: bool | None = Field(None, description="vllm, vllm_serve: None = eager on CPU only")
    vllm_python: str | None = Field(
        None, description="vllm_serve: the Python of the environment where vLLM is installed; None: this one"
    )
    startup_timeout: float = Field(900.0, gt=0, description="vllm_serve: seconds to wait for the server")


class SamplingConfig(_Section):
    """Sampling for every call; the paper uses temperature 1.0, top_p 1.0 and 2048 new tokens."""

    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: PositiveInt = 2048


class BaitConfig(_Section):
    """Stage 1: the bait prompt and how many samples to draw from it."""

    prompt: str = BAIT_PROMPT
    num_calls: PositiveInt = 10
    samples_per_call: PositiveInt = 10
    min_chars: int = Field(20, ge=0)
    max_chars: PositiveInt = 1500
    require_digits: bool = True
    min_options: int = Field(0, ge=0, description="multiple choice: distinct lettered options a question needs")
    calls_in_flight: PositiveInt = Field(
        1,
        description="servers only: bait calls in flight, ahead of what the later stages have taken (results do not"
        " change); 1 suits a server that runs one request at a time (llama.cpp), a GPU server wants 10-20",
    )


class DiversifyConfig(_Section):
    """Stage 2: rejection-sampling self-deduplication."""

    enabled: bool = True
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    within_batch_threshold: float = Field(WITHIN_BATCH_THRESHOLD, ge=0.0, le=1.0)
    history_threshold: float = Field(HISTORY_THRESHOLD, ge=0.0, le=1.0)
    max_rewrites: int = Field(2, ge=0)
    recheck_rewrites: bool = True
    rewrite_prompt: str = REWRITE_TEMPLATE
    batch_size: PositiveInt | None = Field(None, description="rows per dedup batch; default: samples_per_call")
    exact_limit: PositiveInt | None = 100_000
    rewrite_lag: int = Field(
        0,
        ge=0,
        description="batches a rewrite may take before it is checked: 0 is the paper (the later stages wait "
        "for each batch's slowest rewrite); 4-8 keeps a GPU server busy (changes which questions are kept)",
    )

    @field_validator("rewrite_prompt")
    @classmethod
    def _template(cls, value: str) -> str:
        check_template(value, ("question", "neighbour"))
        return value


class ConsensusConfig(_Section):
    """Stage 3: k answers per question and the vote."""

    enabled: bool = True
    k: PositiveInt = 3
    min_agreement: float | Literal["majority"] = "majority"
    tie_policy: Literal["drop", "first"] = "drop"
    no_answer_policy: Literal["abstain", "vote"] = "abstain"
    answer_kind: AnswerKind = Field(
        "auto",
        description="what the answers are: auto (numbers, LaTeX, a letter or a few words), numeric, choice (a "
        "letter A-E), text (a short phrase, normalised), symbolic (math-verify equivalence)",
    )
    answer_prompt: str = ANSWER_TEMPLATE
    batch_size: PositiveInt = Field(
        10,
        description="questions answered together: one batch in process; with a server, the questions kept in "
        "flight across batches (results do not change)",
    )

    @field_validator("min_agreement")
    @classmethod
    def _agreement(cls, value: float | str) -> float | str:
        required_votes(1, value)  # type: ignore[arg-type]
        return value

    @field_validator("answer_prompt")
    @classmethod
    def _template(cls, value: str) -> str:
        check_template(value, ("question",))
        return value


class PreferenceConfig(_Section):
    """The ``preference`` config: DPO pairs from the vote's losers (see :mod:`crescent_distilabel.preference`).

    Built from the kept rows each time a run is written, so changing these settings and re-running the same
    recipe rebuilds the pairs without a single new generation (not part of the fingerprint). At k = 3 every
    pair has the same 2-1 margin; ``min_margin`` and margin weighting need k >= 4.
    """

    enabled: bool = True
    pairs_per_question: PositiveInt = Field(1, description="pairs per non-unanimous kept question, widest first")
    min_margin: PositiveInt = Field(1, description="votes of the chosen answer minus the rejected one's")
    reject_no_answer: bool = Field(True, description="a chain without a readable answer may be rejected")
    reject_truncated: bool = Field(False, description="a chain cut off at max tokens may be rejected")


class PublishConfig(_Section):
    """After a complete run: publish to the Hub and/or push for review in Argilla (never changes results).

    Tokens are never recipe keys: the Hub token comes from ``HF_TOKEN`` or ``hf auth login``, the Argilla key
    from ``ARGILLA_API_KEY``.
    """

    hub_repo: str | None = Field(None, description="namespace/name of a Hub dataset repo; None: do not publish")
    private: bool = False
    include_dropped: bool = False
    exist_ok: bool = Field(False, description="publish a new revision of an existing repo")
    argilla_dataset: str | None = Field(None, description="Argilla dataset for review; None: do not push")
    argilla_workspace: str | None = None
    argilla_api_url: str | None = Field(None, description="default: $ARGILLA_API_URL")
    review_sample: PositiveInt | None = Field(None, description="push this many pairs; None: all")
    review_strategy: Literal["stratified", "random"] = "stratified"


class RayReplicas(_Section):
    """Replicas (Ray actors) per stage.

    Bait prompting and consensus seed every request by its call or question, so their results do not depend
    on which replica made them. Diversify stays one replica: whether it accepts a question depends on every
    question it accepted before, and that history lives in the memory of one process.
    """

    bait: PositiveInt = 1
    diversify: PositiveInt = 1
    consensus: PositiveInt = 1

    @field_validator("diversify")
    @classmethod
    def _one_diversify(cls, value: int) -> int:
        if value != 1:
            raise ValueError(
                "must be 1: diversify accepts or rejects each question against every question accepted before "
                "it, a history kept in one process; replicas would each see part of it and keep near-duplicates"
            )
        return value


class RayConfig(_Section):
    """Run the pipeline on a Ray cluster (distilabel's RayPipeline); never changes results.

    ``address``: None starts a private local Ray instance for the run; ``auto`` joins the cluster started on
    this machine with ``ray start``; ``HOST:PORT`` or ``ray://HOST:10001`` joins that head node. Every node
    needs this package installed, and for several machines ``output_dir`` must be on a shared filesystem.
    """

    enabled: bool = False
    address: str | None = Field(None, description="None: a local Ray instance; 'auto', 'HOST:PORT' or 'ray://...'")
    replicas: RayReplicas = Field(default_factory=RayReplicas)
    cpus_per_replica: PositiveInt | None = Field(None, description="CPUs reserved per replica; None: Ray default")
    gpus_per_replica: int = Field(0, ge=0, description="GPUs per replica of the LLM steps (whole GPUs: distilabel)")


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "crescent": {},
    # The released scripts: one rewrite round accepted unchecked, every question kept whatever its votes,
    # ties to the first sample, "no answer" voting like an answer.
    "paper": {
        "diversify": {"max_rewrites": 1, "recheck_rewrites": False},
        "consensus": {"min_agreement": 0.0, "tie_policy": "first", "no_answer_policy": "vote"},
    },
}


class Recipe(_Section):
    """A whole generation run.

    ``preset`` fills the defaults of the other sections (``crescent``: this project's; ``paper``: the released
    scripts' settings); keys written in the recipe override it. Ablations: ``diversify.enabled: false``
    (no diversification) and ``consensus.enabled: false`` (k = 1, the first answer is kept unvoted).
    """

    name: str = "crescent"
    preset: Literal["crescent", "paper"] = "crescent"
    seed: int = 42
    output_dir: str = "outputs/crescent"
    question_model: ModelConfig = Field(default_factory=ModelConfig)
    answer_model: ModelConfig | None = Field(None, description="None: the question model answers too")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    bait: BaitConfig = Field(default_factory=BaitConfig)
    diversify: DiversifyConfig = Field(default_factory=DiversifyConfig)
    consensus: ConsensusConfig = Field(default_factory=ConsensusConfig)
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig)
    publish: PublishConfig = Field(default_factory=PublishConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = PRESETS.get(data.get("preset", "crescent"), {})
        merged = dict(data)
        for section, defaults in preset.items():
            given = merged.get(section) or {}
            if isinstance(given, dict):
                merged[section] = {**defaults, **given}
        return merged

    def llm_steps(self) -> dict[str, list[str]]:
        """The LLM steps each model section serves: ``{"question_model": ["bait", "diversify", ...], ...}``."""
        asking = ["bait"] + (["diversify"] if self.diversify.enabled else [])
        if self.answer_model is None:
            return {"question_model": [*asking, "consensus"]}
        return {"question_model": asking, "answer_model": ["consensus"]}

    def result_settings(self) -> dict[str, Any]:
        """Every setting that changes results, flattened (``consensus.k``: 3, ...); not where results are
        written, how a server is reached, nor batch sizes that do not change results."""
        flat = _flatten(self.model_dump(mode="json"))
        settings = {key: value for key, value in flat.items() if not _operational(key)}
        return {**settings, **CODE_VERSIONS}

    def fingerprint(self) -> str:
        """A hash of :meth:`result_settings`: equal fingerprints mean a run can be resumed with this recipe. A
        setting added later counts only when it differs from what runs did before it (:data:`ADDED_SETTINGS`), so
        a recipe's fingerprint does not change when the code learns a new setting."""
        settings = {k: v for k, v in self.result_settings().items() if ADDED_SETTINGS.get(k, object()) != v}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


CODE_VERSIONS = {"answer_extraction": EXTRACTION_VERSION, "question_cleaning": CLEANING_VERSION}
"""Versions of the code that reads the model's text: a run continues only with the ones it was made with."""
CODE_VERSIONS_CHANGED = {
    "answer_extraction": "this version reads answers differently: the votes would change",
    "question_cleaning": "this version cleans questions differently: other questions would be kept",
}

# answers are seeded per question and bait calls per index: neither depends on batching or concurrency
_OPERATIONAL = {"name", "output_dir", "consensus.batch_size", "bait.calls_in_flight"}
_OPERATIONAL_MODEL_KEYS = {
    "base_url",
    "api_key_env",
    "timeout",
    "max_retries",
    "n_threads",
    "cpu_turns",
    "parallel",  # the same sampler: like a server's batching, it changes the last bits of logits, not the method
    "tensor_parallel_size",  # hardware: a run may continue on a machine with more or fewer GPUs
    "gpu_memory_utilization",
    "kv_cache_gb",
    "enforce_eager",
    "vllm_python",
    "startup_timeout",
}


def _operational(key: str) -> bool:
    """Settings that say where results go or how a model is reached, not what the results are."""
    section, _, name = key.partition(".")
    # ray: a run may resume locally or on Ray; preference: pairs are rebuilt from the kept rows at every write
    if key in _OPERATIONAL or section in ("publish", "ray", "preference"):
        return True
    return section in ("question_model", "answer_model") and name in _OPERATIONAL_MODEL_KEYS


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


ADDED_SETTINGS: dict[str, Any] = {"consensus.answer_kind": "auto", "bait.min_options": 0}
"""Settings added after runs were made, with the value that reproduces what those runs did: a run made
before a setting existed continues under it."""


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two :meth:`Recipe.result_settings`."""
    old = {**dict.fromkeys(CODE_VERSIONS, 1), **ADDED_SETTINGS, **old}  # versions were not recorded at first
    changes = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            line = f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
            changes.append(line + (f" ({CODE_VERSIONS_CHANGED[key]})" if key in CODE_VERSIONS_CHANGED else ""))
    return changes


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-")) or "<recipe>"
        key = key.replace(".literal['majority']", "").replace(".float", "")
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        if e["type"] != "extra_forbidden" and "input" in e and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def parse_override(item: str, model: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value), read by the field's type: a text field takes the text as written
    (``bait.prompt="... Problem:"``, ``api_key_env=NO``; ``null`` clears an optional one), anything else is read
    as YAML (numbers, booleans, null, lists)."""
    if "=" not in item:
        raise RecipeError(f"--set takes key=value, got {item!r}")
    key, raw = item.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise RecipeError(f"--set takes key=value, got {item!r}")
    annotation = _field_annotation(model or Recipe, path)
    if annotation is not None and _is_text(annotation):
        optional = type(None) in get_args(annotation)
        return path, None if optional and raw.strip() in ("null", "~") else raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def _field_annotation(model: type[BaseModel], path: list[str]) -> Any:
    """The type annotation of a nested field (``["consensus", "k"]``), or None for an unknown key (which
    validation then reports)."""
    for i, key in enumerate(path):
        field = model.model_fields.get(key)
        if field is None:
            return None
        if i == len(path) - 1:
            return field.annotation
        options = get_args(field.annotation) or (field.annotation,)
        sub = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return None


def _is_text(annotation: Any) -> bool:
    """A field whose values are all text: ``str``, ``str | None``, or a Literal of strings (``drop``/``first``),
    where YAML would turn ``no`` into False and ``a: b`` into a mapping."""
    options = [a for a in (get_args(annotation) if get_origin(annotation) is not Literal else (annotation,))]
    options = options or [annotation]
    options = [a for a in options if a is not type(None)]

    def text(option: Any) -> bool:
        if get_origin(option) is Literal:
            return all(isinstance(v, str) for v in get_args(option))
        return option is str

    return bool(options) and all(text(a) for a in options)


def read_mapping(path: Path, error: type[Exception], what: str) -> dict[str, Any]:
    """A YAML file that must hold a non-empty mapping; anything else (empty, ``null``, ``0``, a list) is an
    ``error`` naming the file, never a run with every default."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"cannot read {what} file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise error(f"{path} is not valid YAML: {err}") from None
    if data is None or data == {}:
        raise error(f"{what} file {path} is empty: write its keys (see `crescent show-recipe`)")
    if not isinstance(data, dict):
        raise error(f"{what} file {path} must be a mapping of keys to values, but holds a {type(data).__name__}")
    return data


def load_recipe(source: str | Path | dict[str, Any] | None = None, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe from a YAML file (or a dict), then apply ``key=value`` overrides.

    Raises:
        RecipeError: naming each unknown key, wrong type or impossible value.
    """
    if source is None:
        data: Any = {}
    elif isinstance(source, dict):
        data = json.loads(json.dumps(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise RecipeError(f"recipe file not found: {path}")
        data = read_mapping(path, RecipeError, "recipe")
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe is a mapping of keys to values, got {type(data).__name__}")
    for item in overrides or []:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        where = f" in {source}" if isinstance(source, (str, Path)) else ""
        raise RecipeError(f"invalid recipe{where}:\n{_format_errors(err)}") from None


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every setting spelled out (no secrets: keys are named by variable only)."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=1000)
