"""The ``crescent`` command line.

- ``crescent generate RECIPE --set key=value``: run a recipe (and its ``publish`` section).
- ``crescent publish OUTPUT_DIR REPO_ID``: publish a run to the Hugging Face Hub.
- ``crescent review push OUTPUT_DIR`` / ``crescent review pull OUTPUT_DIR``: spot-checks in Argilla and back.

Exit codes: 0 finished; 1 cannot run (endpoint, output directory, changed settings, Hub or Argilla refused);
2 invalid recipe; 3 stopped early (a backend failed after its retries, or an interrupt) with everything so far
saved: re-run the same command to continue; 4 the dataset is complete and saved, but publishing it failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from crescent_distilabel.recipe import RecipeError, dump_recipe, load_recipe

if TYPE_CHECKING:
    from crescent_distilabel.pipeline import RunResult


def _summary_table(result: RunResult) -> None:
    from rich.console import Console
    from rich.table import Table

    s = result.summary.to_dict()
    title = f"CRESCENT run -> {result.output_dir}" + (" (resumed)" if result.resumed else "")
    table = Table(title=title, show_header=True)
    table.add_column("stage / count")
    table.add_column("value", justify="right")
    table.add_row("raw samples (bait prompting)", str(s["raw_samples"]))
    table.add_row("cleaned questions", str(s["cleaned"]))
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
    Console(stderr=True).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crescent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="run a recipe: bait prompting -> diversification -> consensus")
    show = sub.add_parser("show-recipe", help="print a recipe with every default filled in, after --set")
    for p in (gen, show):
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
        help="delete what output_dir holds and start over (default: continue a run)",
    )
    _add_publish_commands(sub)
    args = parser.parse_args(argv)
    if args.command in ("publish", "review"):
        return _publish_or_review(args)

    overrides = list(args.overrides)
    if getattr(args, "output_dir", None):
        overrides.append(f"output_dir={args.output_dir}")
    try:
        recipe = load_recipe(args.recipe, overrides)
    except RecipeError as err:
        print(f"crescent: {err}", file=sys.stderr)
        return 2
    if args.command == "show-recipe":
        print(dump_recipe(recipe), end="")
        return 0

    from crescent_distilabel.backends import BackendError
    from crescent_distilabel.pipeline import OutputExistsError, RecipeChangedError, run_recipe

    try:
        result = run_recipe(recipe, overwrite=args.overwrite)
    except (BackendError, OutputExistsError, RecipeChangedError) as err:
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


if __name__ == "__main__":
    sys.exit(main())
