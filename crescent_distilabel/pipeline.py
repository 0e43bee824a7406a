"""Build and run the CRESCENT pipeline from a recipe: bait prompting >> diversify >> consensus.

Every stage keeps every row; a dropped row carries its ``drop_reason`` to the end. The run then splits the
rows into the ``default`` config (the kept question-answer pairs, SFT-ready) and the ``dropped`` config
(everything else, with reasons), so every loss is counted and can be audited; the ``preference`` config pairs
winning and losing chains of the kept questions for DPO.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distilabel.models.llms.base import AsyncLLM
from distilabel.pipeline import Pipeline

from crescent_distilabel import ray_cluster
from crescent_distilabel.backends import BackendError, LocalServer, build_llm, proc_stat
from crescent_distilabel.cleaning import DROP_REASONS
from crescent_distilabel.embeddings import SentenceEmbeddings
from crescent_distilabel.recipe import Recipe, changed_settings, dump_recipe
from crescent_distilabel.run_dir import (
    DECONTAMINATION,
    RUN_FILE,
    RUN_MARKER,
    STATE_DIR,
    RunDir,
    atomic_write,
    clear_run,
    preference_config,
    save_config,
)
from crescent_distilabel.steps import BaitCalls, BaitPrompting, BaitSampling, Consensus, Diversify
from crescent_distilabel.steps._llm import ABORT, STOP, WORKER
from crescent_distilabel.store import ProgressStore, StageStats, stage_throughput
from crescent_distilabel.vllm_backend import engine_plan_error, needs_server, serve_models, visible_gpus

logger = logging.getLogger("crescent_distilabel")

if TYPE_CHECKING:
    from datasets import Dataset
    from distilabel.distiset import Distiset
    from distilabel.models.embeddings.base import Embeddings
    from distilabel.models.llms.base import LLM

    from crescent_distilabel.argilla_io import PushResult
    from crescent_distilabel.hub import PublishResult

BAIT_REASONS = (*DROP_REASONS, "rejected")
CONSENSUS_REASONS = ("no_answer", "tie", "low_agreement", "answer_rejected")
LOCAL_BACKENDS = ("llamacpp", "transformers")


class OutputExistsError(FileExistsError):
    """The output directory holds something that is not a CRESCENT run."""


class StepLoadError(RuntimeError):
    """A step could not load (its model, its embedding model); nothing was generated."""


def build_pipeline(
    recipe: Recipe,
    *,
    question_llm: LLM | None = None,
    answer_llm: LLM | None = None,
    check_endpoints: bool = True,
    progress_db: str | Path | None = None,
    embeddings: Embeddings | None = None,
    consensus_step: type[Consensus] = Consensus,
) -> Pipeline:
    """The distilabel Pipeline for a recipe (run it as is, or on Ray with ``ray_cluster.to_ray``).

    With ``recipe.ray.enabled`` bait prompting is split into ``bait_calls`` (a generator of call indices)
    >> ``bait_prompting`` (a normal step), because distilabel runs generator steps as one replica only; the
    rows are the same either way.

    Args:
        recipe: the run's settings.
        question_llm: any distilabel LLM to ask and rewrite questions; default: from ``recipe.question_model``.
        answer_llm: any distilabel LLM to answer; default: ``recipe.answer_model`` or the question model.
        check_endpoints: contact OpenAI-compatible endpoints now, so a wrong URL fails before any work.
        progress_db: the run's progress store; every step keeps its results there and reuses them on a re-run.
        embeddings: the diversification embedding model instead of the recipe's (e.g. a variant to benchmark).
        consensus_step: a :class:`Consensus` subclass to answer and vote (e.g. another voting rule).
    """
    db = str(progress_db) if progress_db is not None else None
    if question_llm is None:
        question_llm = build_llm(recipe.question_model, recipe.sampling, seed=recipe.seed, check=check_endpoints)
    if answer_llm is None:
        answer_llm = (
            build_llm(recipe.answer_model, recipe.sampling, seed=recipe.seed + 1, check=check_endpoints)
            if recipe.answer_model is not None
            else question_llm.model_copy(deep=True)
        )
    bait_cfg, div_cfg, con_cfg = recipe.bait, recipe.diversify, recipe.consensus
    samples = bait_cfg.num_calls * bait_cfg.samples_per_call  # rows every later step receives
    with Pipeline(
        name=f"crescent-{recipe.name}",
        description="CRESCENT: bait prompting, diversification and consensus (arXiv 2502.13441)",
        cache_dir=Path(recipe.output_dir) / ".distilabel",
    ) as pipeline:
        bait_kwargs: dict[str, Any] = dict(
            name="bait_prompting",
            llm=question_llm,
            bait_prompt=bait_cfg.prompt,
            samples_per_call=bait_cfg.samples_per_call,
            min_chars=bait_cfg.min_chars,
            max_chars=bait_cfg.max_chars,
            require_digits=bait_cfg.require_digits,
            min_options=bait_cfg.min_options,
            seed=recipe.seed,
            progress_db=db,
        )
        last: Any
        if recipe.ray.enabled:  # one call per batch, so the replicas share the calls
            last = BaitCalls(name="bait_calls", num_calls=bait_cfg.num_calls, batch_size=1) >> BaitSampling(
                **bait_kwargs, input_batch_size=1, resources=ray_cluster.step_resources(recipe.ray, "bait")
            )
        else:
            last = BaitPrompting(
                **bait_kwargs,
                num_calls=bait_cfg.num_calls,
                calls_in_flight=bait_cfg.calls_in_flight,
                batch_size=bait_cfg.samples_per_call * max(1, 50 // bait_cfg.samples_per_call),
            )
        if div_cfg.enabled:
            diversify = Diversify(
                name="diversify",
                llm=question_llm.model_copy(deep=True),
                embeddings=embeddings or SentenceEmbeddings(model=div_cfg.embedding_model),
                within_batch_threshold=div_cfg.within_batch_threshold,
                history_threshold=div_cfg.history_threshold,
                max_rewrites=div_cfg.max_rewrites,
                recheck_rewrites=div_cfg.recheck_rewrites,
                rewrite_template=div_cfg.rewrite_prompt,
                exact_limit=div_cfg.exact_limit,
                min_chars=bait_cfg.min_chars,
                max_chars=bait_cfg.max_chars,
                require_digits=bait_cfg.require_digits,
                min_options=bait_cfg.min_options,
                seed=recipe.seed,
                progress_db=db,
                input_batch_size=div_cfg.batch_size or bait_cfg.samples_per_call,
                rewrite_lag=div_cfg.rewrite_lag,
                expected_rows=samples if div_cfg.rewrite_lag else None,
                resources=ray_cluster.step_resources(recipe.ray, "diversify"),  # always 1 replica (RayReplicas)
            )
            last = last >> diversify
        # a server: questions stay in flight across batches (not on Ray: replicas see part of the rows each)
        rolling = isinstance(answer_llm, AsyncLLM) and not recipe.ray.enabled
        consensus = consensus_step(
            name="consensus",
            llm=answer_llm,
            num_answers=con_cfg.k if con_cfg.enabled else 1,
            min_agreement=con_cfg.min_agreement if con_cfg.enabled else 0.0,
            tie_policy=con_cfg.tie_policy,
            no_answer_policy=con_cfg.no_answer_policy,
            answer_kind=con_cfg.answer_kind,
            answer_template=con_cfg.answer_prompt,
            seed=recipe.seed,
            progress_db=db,
            input_batch_size=min(con_cfg.batch_size, 50) if rolling else con_cfg.batch_size,
            window=con_cfg.batch_size if rolling else None,
            expected_rows=samples if rolling else None,
            resources=ray_cluster.step_resources(recipe.ray, "consensus"),
        )
        last >> consensus
    return pipeline


@dataclass
class RunSummary:
    """What a run did, stage by stage."""

    raw_samples: int = 0
    cleaned: int = 0
    accepted: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    rewrites: int = 0
    rewritten_questions: int = 0
    question_tokens: int = 0
    rewrite_tokens: int = 0
    answer_tokens: int = 0
    truncated_questions: int = 0
    truncated_chains: int = 0
    wall_time_s: float = 0.0
    generated_tokens: int | None = None  # by this run's LLM calls; None: all of ``tokens``
    stages: dict[str, StageStats] = field(default_factory=dict)  # this run's LLM work per stage
    gpus: int = 0  # GPUs the run's models occupied (see gpus_used)

    @property
    def tokens(self) -> int:
        return self.question_tokens + self.rewrite_tokens + self.answer_tokens

    @property
    def tokens_per_s(self) -> float:
        """Output tokens generated by this run per second (a resumed run reuses stored ones)."""
        generated = self.tokens if self.generated_tokens is None else self.generated_tokens
        return generated / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def well_formed_rate(self) -> float | None:
        """The share of bait samples that cleaned into a question (the rest: see ``dropped``)."""
        return self.cleaned / self.raw_samples if self.raw_samples else None

    @property
    def llm_calls(self) -> int:
        """LLM requests this run made, all stages."""
        return sum(stage.calls for stage in self.stages.values())

    @property
    def calls_per_kept_pair(self) -> float | None:
        """This run's LLM requests per kept pair: the cost of one training pair (None when nothing was kept)."""
        return self.llm_calls / self.kept if self.kept else None

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.wall_time_s / 3600

    def to_dict(self) -> dict[str, Any]:
        per_kept = self.calls_per_kept_pair
        return {
            **asdict(self),
            "stages": {name: stage.to_dict() for name, stage in self.stages.items()},
            "tokens": self.tokens,
            "tokens_per_s": round(self.tokens_per_s, 2),
            "well_formed_rate": None if self.well_formed_rate is None else round(self.well_formed_rate, 4),
            "llm_calls": self.llm_calls,
            "calls_per_kept_pair": None if per_kept is None else round(per_kept, 3),
            "gpu_hours": round(self.gpu_hours, 4),
        }


def gpus_used(recipe: Recipe) -> int:
    """GPUs the run occupies on this machine, for GPU-hours (0 without CUDA or with a remote server).

    In-process llamacpp/transformers take every visible GPU; in-process vLLM one engine of
    ``tensor_parallel_size`` GPUs per LLM step; a managed ``vllm serve`` ``tensor_parallel_size`` GPUs per
    server; never more than are visible. On Ray, the GPUs reserved for the LLM steps' replicas cluster-wide.
    """
    if recipe.ray.enabled:
        replicas = recipe.ray.replicas
        steps = replicas.bait + replicas.consensus + (replicas.diversify if recipe.diversify.enabled else 0)
        return recipe.ray.gpus_per_replica * steps
    visible = visible_gpus()
    if not visible:
        return 0
    used, servers = 0, set()
    for name, names in recipe.llm_steps().items():
        model, n_steps = getattr(recipe, name), len(names)
        if model.backend in LOCAL_BACKENDS:
            return visible
        if model.backend == "vllm":
            used += model.tensor_parallel_size * n_steps
        elif model.backend == "vllm_serve" and model.model_dump_json() not in servers:
            servers.add(model.model_dump_json())
            used += model.tensor_parallel_size
    return min(used, visible)


def final_reason(row: dict[str, Any]) -> str | None:
    """Why a final row is not a training pair (None when it is); a batch that failed inside distilabel
    leaves its output columns empty and counts as ``generation_failed``."""
    if row.get("drop_reason"):
        return row["drop_reason"]
    if not row.get("messages"):
        return "generation_failed"
    return None


def summarize(rows: list[dict[str, Any]], wall_time_s: float = 0.0) -> RunSummary:
    """Counts per stage and per drop reason, and token usage, from the final rows."""
    reasons = Counter(final_reason(row) for row in rows)
    kept = reasons.pop(None, 0)
    bait_drops = sum(n for r, n in reasons.items() if r in BAIT_REASONS)
    consensus_drops = sum(n for r, n in reasons.items() if r in CONSENSUS_REASONS or r == "generation_failed")
    return RunSummary(
        raw_samples=len(rows),
        cleaned=len(rows) - bait_drops,
        accepted=kept + consensus_drops,
        kept=kept,
        dropped=dict(reasons.most_common()),
        rewrites=sum(row.get("rewrites") or 0 for row in rows),
        rewritten_questions=sum(1 for row in rows if row.get("rewrites")),
        question_tokens=sum(row.get("question_tokens") or 0 for row in rows),
        rewrite_tokens=sum(row.get("rewrite_tokens") or 0 for row in rows),
        answer_tokens=sum(row.get("answer_tokens") or 0 for row in rows),
        truncated_questions=sum(1 for row in rows if row.get("question_truncated")),
        truncated_chains=sum(row.get("truncated_chains") or 0 for row in rows),
        wall_time_s=wall_time_s,
    )


def sort_rows(rows: Dataset) -> Dataset:
    """Rows in bait order: the last step's replicas (on Ray) finish batches in any order."""
    if len(rows) and {"bait_call", "bait_sample"} <= set(rows.column_names):
        with warnings.catch_warnings():  # pyarrow >= 25 deprecates an option datasets' sort passes
            warnings.filterwarnings("ignore", message=".*null_placement", category=FutureWarning)
            return rows.sort(["bait_call", "bait_sample"])
    return rows


def split_rows(rows: Dataset) -> tuple[Dataset, Dataset]:
    """(kept training pairs, dropped rows with their final reasons)."""
    reasons = [final_reason(row) for row in rows]
    if len(rows):
        rows = rows.remove_columns(["drop_reason"]).add_column("drop_reason", reasons)
    kept = rows.select([i for i, r in enumerate(reasons) if r is None])
    return kept, rows.select([i for i, r in enumerate(reasons) if r is not None])


@dataclass
class RunResult:
    """A run: the Distiset written to ``output_dir``, its summary, and whether it finished.

    Attributes:
        complete: every bait call went through every stage; False after a backend failure or an interrupt.
        message: for an incomplete run, what happened and what to do.
        published: the Hub commit, when the recipe's ``publish.hub_repo`` is set.
        review_push: the Argilla push, when the recipe's ``publish.argilla_dataset`` is set.
        publish_errors: what went wrong publishing (the local dataset is complete regardless).
        resumed: the run continued an earlier one in the same output_dir.
        reused_generations: generations found in the progress store when the run started.
        new_generations: LLM requests this run made and stored.
    """

    distiset: Distiset
    summary: RunSummary
    output_dir: Path
    complete: bool = True
    message: str = ""
    resumed: bool = False
    reused_generations: int = 0
    new_generations: int = 0
    published: PublishResult | None = None
    review_push: PushResult | None = None
    publish_errors: list[str] = field(default_factory=list)


class RecipeChangedError(ValueError):
    """The output directory holds a run made with settings that change results."""


def progress_path(output_dir: Path) -> Path:
    """Where a run keeps its durable progress (see :mod:`crescent_distilabel.store`)."""
    return output_dir / STATE_DIR / "progress.sqlite"


def prepare_output_dir(output_dir: Path, recipe: Recipe, overwrite: bool, rebuild: bool = False) -> bool:
    """Start, continue or refuse: returns True when an earlier run of the same recipe is continued.

    ``rebuild`` starts over as ``overwrite`` does but keeps the LLM's stored outputs (:func:`clear_run`), so
    a run made with other settings or an older version of the code is made again without generating again.

    Raises:
        RecipeChangedError: the earlier run used settings that change results (names them).
        OutputExistsError: the directory holds something that is not a CRESCENT run.
    """
    saved = output_dir / RUN_MARKER
    resumed = False
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputExistsError(f"output_dir {output_dir} is a file; choose a directory")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not saved.is_file():  # never delete what a run did not write, --overwrite or not
            held = sorted(p.name for p in output_dir.iterdir())
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            raise OutputExistsError(
                f"{output_dir} is not empty ({shown}) and holds no CRESCENT run ({RUN_MARKER} is missing); "
                "nothing in it was touched. Choose a new or empty output_dir."
            )
        if overwrite or rebuild:  # only what runs write; the user's own files stay
            clear_run(output_dir, keep_outputs=rebuild and not overwrite)
        else:
            old = json.loads(saved.read_text())
            changes = changed_settings(old, recipe.result_settings())
            if changes:
                listed = "\n  ".join(changes)
                raise RecipeChangedError(
                    f"{output_dir} holds a run made with other settings, which would change its results:\n  {listed}\n"
                    "Re-run with the original settings to continue it, pass --rebuild to make it again with these "
                    "(reusing every stored LLM output), --overwrite to start over, or choose another output_dir."
                )
            resumed = True
    (output_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    if not resumed:
        atomic_write(saved, json.dumps(recipe.result_settings(), indent=2, sort_keys=True))
    # distilabel's own cache cannot resume and a killed run can leave a broken one (upstream #1065)
    shutil.rmtree(output_dir / ".distilabel", ignore_errors=True)
    return resumed


def run_recipe(
    recipe: Recipe,
    *,
    overwrite: bool = False,
    rebuild: bool = False,
    question_llm: LLM | None = None,
    answer_llm: LLM | None = None,
    embeddings: Embeddings | None = None,
    consensus_step: type[Consensus] = Consensus,
    show_progress: bool = True,
    verbose: bool = False,
) -> RunResult:
    """Run a recipe end to end, or continue it: write the Distiset, ``pipeline.yaml`` and ``crescent_run.json``.

    Every generation is stored as it finishes (``<output_dir>/.crescent``); running the same recipe into the
    same ``output_dir`` again reuses them, so a killed or failed run continues where it stopped, and a finished
    one is rewritten identically without calling the LLM.

    In a process that has loaded torch or llama.cpp (see :func:`fork_unsafe`) the run goes on in a fresh
    process: a script that calls this then needs the usual ``if __name__ == "__main__":`` guard, and LLM objects
    passed in must pickle (distilabel's own step processes already need that).

    Args:
        recipe: the run's settings.
        overwrite: start over: remove what earlier runs wrote in ``output_dir`` (never other files).
        rebuild: start over but keep the stored LLM outputs: for a run made with other settings or code.
        show_progress: draw live progress on stderr while the run goes.
        verbose: show distilabel's own log on the console too (it always goes to the run's pipeline.log).
        question_llm: any distilabel LLM instead of the recipe's question model.
        answer_llm: any distilabel LLM instead of the recipe's answer model.
        embeddings: the diversification embedding model instead of the recipe's (see :func:`build_pipeline`).
        consensus_step: a :class:`Consensus` subclass to answer and vote (see :func:`build_pipeline`).
    """
    kwargs = {
        "overwrite": overwrite,
        "rebuild": rebuild,
        "question_llm": question_llm,
        "answer_llm": answer_llm,
        "embeddings": embeddings,
        "consensus_step": consensus_step,
        "show_progress": show_progress,
        "verbose": verbose,
    }
    # before any process starts; only for in-process vLLM: counting GPUs imports torch, and then the run
    # could not fork its step processes from here (see fork_unsafe)
    in_process_vllm = any(getattr(recipe, name).backend == "vllm" for name in recipe.llm_steps())
    if question_llm is None and in_process_vllm and (plan := engine_plan_error(recipe, visible_gpus())):
        raise BackendError(plan)
    if not recipe.ray.enabled and (module := fork_unsafe()):
        logger.info(f"{module} is loaded in this process, so the run goes on in a fresh process (see fork_unsafe)")
        return _in_fresh_process(recipe, kwargs)
    return _run(recipe, **kwargs)


FORK_UNSAFE_MODULES = ("torch", "llama_cpp")


def fork_unsafe() -> str | None:
    """The loaded module (torch, llama_cpp) that may have started a GNU OpenMP thread pool in this process.

    distilabel forks its step processes, and a child forked after the parent ran an OpenMP parallel region (a
    notebook that trained or evaluated, a test that did) hangs at its own first one: the embedder's torch, the
    llama.cpp backend. Which of them has run cannot be read from outside, so a loaded module counts. The CLI
    never loads either in its own process, so ``crescent generate`` always forks directly.
    """
    return next((name for name in FORK_UNSAFE_MODULES if name in sys.modules), None)


def _in_fresh_process(recipe: Recipe, kwargs: dict[str, Any]) -> RunResult:
    """:func:`run_recipe` in a spawned process (a clean one, whose step processes fork safely: it forks them
    as usual, not with the spawn method it was started with). Its errors are
    raised here. A Ctrl-C reaches it too: it stops as a run stops and its (incomplete) result comes back; a
    second Ctrl-C leaves it."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    spawn = multiprocessing.get_context("spawn")
    servers = LocalServer.running()  # started here (a test's, a notebook's): the run there watches them too
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_fresh_main, initargs=(servers,)) as pool:
        future = pool.submit(_run_elsewhere, recipe, **kwargs)
        try:
            result, paths = future.result()
        except KeyboardInterrupt:  # to the run too, which may not have had it (``kill -INT`` of this process)
            _forward_sigint(pool)
            try:
                result, paths = future.result()
            except KeyboardInterrupt:
                _forward_sigint(pool)
                raise
    return replace(result, distiset=_load_distiset(result.output_dir, paths))


def _forward_sigint(pool: Any) -> None:
    """SIGINT to the fresh process (the run ignores it when the terminal sent it there too)."""
    for process in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGINT)


def _run_elsewhere(recipe: Recipe, **kwargs: Any) -> tuple[RunResult, tuple[Any, Any]]:
    """:func:`_run` in the fresh process. The Distiset stays behind (its in-memory tables may point at files a
    later run replaces): the caller reads it from the run directory, and gets its two file paths."""
    result = _run(recipe, **kwargs)
    paths = (result.distiset.pipeline_path, result.distiset.log_filename_path)
    return replace(result, distiset=None), paths


def _load_distiset(output_dir: Path, paths: tuple[Any, Any]) -> Distiset:
    from datasets import DatasetDict
    from distilabel.distiset import Distiset

    run = RunDir(output_dir)
    names = [name for name in ("default", "dropped", "preference") if name in run.configs()]
    distiset = Distiset({name: DatasetDict(train=run.load(name)) for name in names})
    distiset.pipeline_path, distiset.log_filename_path = paths
    return distiset


def _fresh_main(servers: list[LocalServer]) -> None:
    """Make the fresh process a main process to distilabel: it forks the step processes (a spawned process
    would spawn them), and it writes ``pipeline.log`` (distilabel does that only in a process named so). The
    caller's servers are watched from here."""
    import multiprocessing

    multiprocessing.set_start_method("fork", force=True)
    multiprocessing.current_process().name = "MainProcess"
    LocalServer.inherit(servers)


def _run(
    recipe: Recipe,
    *,
    overwrite: bool,
    rebuild: bool,
    question_llm: LLM | None,
    answer_llm: LLM | None,
    embeddings: Embeddings | None,
    consensus_step: type[Consensus],
    show_progress: bool,
    verbose: bool,
) -> RunResult:
    output_dir = Path(recipe.output_dir)
    db_path = progress_path(output_dir)
    parts = {
        "question_llm": question_llm,
        "answer_llm": answer_llm,
        "progress_db": db_path,
        "embeddings": embeddings,
        "consensus_step": consensus_step,
    }
    # on Ray: connect before output_dir is touched, so a missing Ray or an unreachable head loses nothing
    started_ray = ray_cluster.connect(recipe.ray) if recipe.ray.enabled else False
    try:
        with contextlib.ExitStack() as servers:
            if needs_server(recipe):  # start `vllm serve` only once the output directory is known to be usable
                resumed = prepare_output_dir(output_dir, recipe, overwrite, rebuild)
                served = servers.enter_context(serve_models(recipe, output_dir / STATE_DIR))
                pipeline = build_pipeline(served, **parts)
            else:  # a wrong endpoint fails here, before --overwrite deletes anything
                pipeline = build_pipeline(recipe, **parts)
                resumed = prepare_output_dir(output_dir, recipe, overwrite, rebuild)
            if recipe.ray.enabled:
                pipeline = ray_cluster.to_ray(pipeline)
            result = _execute(recipe, pipeline, output_dir, resumed, show_progress=show_progress, verbose=verbose)
    finally:
        if started_ray:
            ray_cluster.disconnect()
    if result.complete:
        publish_outputs(recipe, result)
    return result


@contextlib.contextmanager
def distilabel_hooks(verbose: bool) -> Iterator[None]:
    """Two adjustments to distilabel 1.5.3's logging while a pipeline runs.

    - Its INFO log goes to the run's log file only (errors still reach the console), unless ``verbose``:
      distilabel always adds a console handler next to its log file; this raises it to ERROR.
    - Stopping its log listener cannot hang: a step process that died while writing a log record can leave
      the log queue's lock held or half a record in its pipe, and the listener's ``stop`` then waits forever.
      After 5 s the listener (a daemon thread) is abandoned, with a warning.
    """
    import distilabel.pipeline.base as base
    import distilabel.pipeline.local as local
    import distilabel.utils.logging as dl_logging
    from rich.logging import RichHandler

    original_setup, original_stop = base.setup_logging, local.stop_logging

    def setup(*args: Any, **kwargs: Any) -> None:
        original_setup(*args, **kwargs)
        listener = dl_logging.queue_listener
        for handler in getattr(listener, "handlers", ()):
            if isinstance(handler, RichHandler) and not verbose:
                handler.setLevel(logging.ERROR)

    def stop() -> None:
        listener = dl_logging.queue_listener
        thread = getattr(listener, "_thread", None)
        if listener is None or thread is None:
            return original_stop()
        queue = listener.queue
        listener.enqueue_sentinel()
        thread.join(timeout=5)
        if thread.is_alive():
            logger.warning(
                "the log listener did not stop (a step process died while logging); pipeline.log may end early"
            )
            with contextlib.suppress(Exception):
                queue.cancel_join_thread()  # type: ignore[attr-defined]
        else:
            with contextlib.suppress(Exception):
                queue.close()  # type: ignore[attr-defined]
        listener._thread = None
        dl_logging.queue_listener = None

    base.setup_logging, local.stop_logging = setup, stop
    try:
        yield
    finally:
        base.setup_logging, local.stop_logging = original_setup, original_stop


def _execute(
    recipe: Recipe, pipeline: Pipeline, output_dir: Path, resumed: bool, *, show_progress: bool, verbose: bool
) -> RunResult:
    """Run the built pipeline and write everything a run leaves in ``output_dir``."""
    import datasets

    from crescent_distilabel.progress import ProgressDisplay
    from crescent_distilabel.watchdog import Watchdog

    db_path = progress_path(output_dir)
    store = ProgressStore(db_path)
    store.clear_state(ABORT)
    store.clear_state(STOP)
    for name in store.states(WORKER):  # PIDs of an earlier attempt's processes
        store.clear_state(name)
    before = store.count_generations()
    started_at = time.time()
    start = time.perf_counter()
    expected = recipe.bait.num_calls * recipe.bait.samples_per_call
    progress = (
        ProgressDisplay(
            db_path,
            expected,
            samples_per_call=recipe.bait.samples_per_call,
            diversify=recipe.diversify.enabled,
            pipeline=pipeline,
        )
        if show_progress
        else contextlib.nullcontext()
    )
    stop_on_ctrl_c(pipeline, db_path)
    bars = datasets.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the run shows its own progress; datasets' bars would interleave
    try:
        with distilabel_hooks(verbose), Watchdog(pipeline, db_path, LocalServer.running()) as watchdog, progress:
            try:
                raw = pipeline.run(use_cache=False)
            except RuntimeError as err:  # distilabel: "Failed to load all the steps"
                import distilabel.pipeline.local as local

                local.stop_logging()  # distilabel raises before it stops its log listener
                if watchdog.death is None:
                    cause = err.__cause__ or err
                    log = _newest(output_dir, "pipeline.log")
                    raise StepLoadError(
                        f"a step could not load: {type(cause).__name__}: {cause}; nothing was generated"
                        + (f" (the traceback is in {log})" if log else "")
                    ) from None
                raw = None
        wall = time.perf_counter() - start
        if raw:  # a Distiset with the last step's rows
            rows = sort_rows(next(iter(raw.values()))["train"])
        else:  # stopped before any row reached the last step
            from datasets import Dataset

            rows = Dataset.from_dict({"drop_reason": []})
        return _write_run(recipe, output_dir, raw, rows, store, resumed, before, started_at, wall, watchdog.death)
    finally:
        if bars:
            datasets.enable_progress_bars()


DUPLICATE_SIGINT_S = 1.0
"""A second SIGINT this soon after the first is the same Ctrl-C arriving twice (to the process group and
forwarded by the parent); a real second Ctrl-C comes later."""


def stop_on_ctrl_c(pipeline: Pipeline, db_path: Path) -> None:
    """Make the first Ctrl-C stop the run within seconds, as the second does in distilabel, but losing nothing.

    distilabel's first Ctrl-C only stops new batches; the step processes still work through every batch already
    queued for them (with bait far ahead of consensus, hours of them) and finish the call in progress. Here the
    run is also marked stopping in its progress store, so queued batches make no LLM calls, and a Ctrl-C sent to
    the main process alone (``kill -INT``) is forwarded to the step processes, whose in-process backends give up
    the call they are in (:class:`crescent_distilabel.llms.Interrupted`). Everything stored stays; the re-run
    makes the abandoned calls again. A second Ctrl-C (more than a second later) is distilabel's: it terminates
    the step processes.
    """
    original = pipeline._handle_keyboard_interrupt

    def install() -> Any:
        previous = original()  # distilabel's handler, which stops the pipeline; ours runs first
        handler = signal.getsignal(signal.SIGINT)
        first: float | None = None

        def first_stops_the_calls(signum: int, frame: Any) -> None:
            nonlocal first
            if first is not None and time.monotonic() - first < DUPLICATE_SIGINT_S:
                return  # the same Ctrl-C twice: from the terminal to the process group, and forwarded
            if first is None:
                first = time.monotonic()
                store = ProgressStore(db_path)  # its own connection: the handler may run inside another's query
                try:
                    store.set_state(STOP, "ctrl-c")
                    workers = [int(name.removeprefix(WORKER)) for name in store.states(WORKER)]
                finally:
                    store.close()
                for pid in workers:  # step processes of this run (children), never anything else
                    if (fields := proc_stat(pid)) and fields[1] == str(os.getpid()):
                        with contextlib.suppress(OSError):  # gone meanwhile
                            os.kill(pid, signal.SIGINT)
            if callable(handler):
                handler(signum, frame)

        signal.signal(signal.SIGINT, first_stops_the_calls)
        return previous

    pipeline._handle_keyboard_interrupt = install  # type: ignore[method-assign]


def _write_run(
    recipe: Recipe,
    output_dir: Path,
    raw: Distiset | None,
    rows: Dataset,
    store: ProgressStore,
    resumed: bool,
    before: int,
    started_at: float,
    wall: float,
    death: Any,
) -> RunResult:
    """The Distiset, card, recipe and run record of a finished (or stopped) run."""
    from datasets import DatasetDict
    from distilabel.distiset import Distiset

    kept, dropped = split_rows(rows)
    kept = reapply_derived(output_dir, kept)
    summary = summarize(rows.to_list(), wall)
    summary.stages = stage_throughput(store.generation_spans(), started_at, started_at + wall)
    summary.generated_tokens = sum(stage.output_tokens for stage in summary.stages.values())
    summary.gpus = gpus_used(recipe)
    expected = recipe.bait.num_calls * recipe.bait.samples_per_call
    failure = death.message() if death is not None else store.get_state(ABORT)
    complete = failure is None and summary.raw_samples == expected
    message = ""
    if not complete:
        why = failure or f"interrupted after {summary.raw_samples} of {expected} bait samples"
        message = (
            f"the run stopped early ({why}). Everything finished so far is saved in {output_dir}; "
            "re-run the same command to continue."
        )
    configs = {"default": kept, "dropped": dropped}
    if recipe.preference.enabled:
        configs["preference"] = preference_config(kept, recipe.preference, recipe.consensus.answer_kind)
    else:  # a pass with it enabled may have written one
        shutil.rmtree(output_dir / "preference", ignore_errors=True)
    distiset = Distiset({name: DatasetDict(train=data) for name, data in configs.items()})
    if raw is not None:
        pipeline_path, log_path = raw.pipeline_path, raw.log_filename_path
    else:  # stopped before distilabel made a Distiset
        pipeline_path, log_path = _newest(output_dir, "pipeline.yaml"), _newest(output_dir, "pipeline.log")
    if pipeline_path is not None:
        distiset.pipeline_path = pipeline_path
    if log_path is not None:
        distiset.log_filename_path = log_path
    save_distiset(distiset, output_dir)
    atomic_write(output_dir / "recipe.yaml", dump_recipe(recipe))
    result = RunResult(
        distiset, summary, output_dir, complete, message, resumed, before, store.count_generations() - before
    )
    atomic_write(output_dir / RUN_FILE, json.dumps(run_record(recipe, result), indent=2) + "\n")
    RunDir(output_dir).write_card()  # with the review and decontamination sections of earlier passes
    store.close()
    shutil.rmtree(output_dir / ".distilabel", ignore_errors=True)
    return result


def _newest(output_dir: Path, name: str) -> Path | None:
    """The newest file of that name in distilabel's cache of this run (its pipeline.yaml and pipeline.log)."""
    found = sorted((output_dir / ".distilabel").rglob(name), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def reapply_derived(output_dir: Path, kept: Dataset) -> Dataset:
    """Keep what was applied on top of an earlier pass of this run: rows that ``decontaminate --drop`` moved
    to the ``contaminated`` config stay out of ``default`` when the run is written again (a re-run, or the
    loop continuing after a crash), instead of silently coming back."""
    report = RunDir.report_at(output_dir, DECONTAMINATION)
    if not report or not report.get("dropped") or report.get("config", "default") != "default" or not len(kept):
        return kept
    if not (output_dir / "contaminated" / "dataset_dict.json").is_file():
        return kept
    from datasets import load_from_disk

    moved = set(load_from_disk(str(output_dir / "contaminated"))["train"]["question"])
    return kept.filter(lambda q: q not in moved, input_columns="question", keep_in_memory=True)


def publish_outputs(recipe: Recipe, result: RunResult) -> None:
    """The recipe's ``publish`` section, after the dataset is safely on disk: a failure is recorded in
    ``result.publish_errors`` with the command that retries it, never raised (nothing generated is lost)."""
    from crescent_distilabel.argilla_io import ArgillaError, push_run
    from crescent_distilabel.hub import HubError, publish

    cfg, out = recipe.publish, result.output_dir
    if cfg.hub_repo:
        try:
            result.published = publish(
                out, cfg.hub_repo, private=cfg.private, include_dropped=cfg.include_dropped, exist_ok=cfg.exist_ok
            )
        except HubError as err:
            result.publish_errors.append(f"{err}. Retry with: crescent publish {out} {cfg.hub_repo}")
    if cfg.argilla_dataset:
        try:
            result.review_push = push_run(
                out,
                cfg.argilla_dataset,
                cfg.argilla_workspace,
                api_url=cfg.argilla_api_url,
                sample=cfg.review_sample,
                strategy=cfg.review_strategy,
            )
        except ArgillaError as err:
            retry = f"crescent review push {out} --dataset-name {cfg.argilla_dataset}"
            result.publish_errors.append(f"{err}. Retry with: {retry}")
    for error in result.publish_errors:
        logger.error(error)


def save_distiset(distiset: Distiset, output_dir: Path) -> None:
    """``Distiset.save_to_disk`` without its card (which needs a non-empty sample of every config; ours is
    written separately), and with empty configs saved as one shard so ``load_from_disk`` can read them."""
    for name, dataset_dict in distiset.items():
        save_config(output_dir, name, dataset_dict["train"])
    configs = output_dir / "distiset_configs"
    configs.mkdir(exist_ok=True)
    for path in (distiset.pipeline_path, distiset.log_filename_path):
        if path is not None and Path(path).is_file():
            shutil.copy(path, configs / Path(path).name)


def run_record(recipe: Recipe, result: RunResult) -> dict[str, Any]:
    """The run's parameters, counts and software versions, as written to ``crescent_run.json``."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in ("crescent-distilabel", "distilabel", "datasets", "sentence-transformers", "llama-cpp-python"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "recipe": recipe.model_dump(mode="json"),
        "fingerprint": recipe.fingerprint(),
        "complete": result.complete,
        "message": result.message,
        "resumed": result.resumed,
        "reused_generations": result.reused_generations,
        "new_generations": result.new_generations,
        "summary": result.summary.to_dict(),
        "versions": versions,
        "python": platform.python_version(),
    }
