"""The ``crescent`` command line: ``crescent generate RECIPE --set key=value``.

Exit codes: 0 finished; 1 cannot run (endpoint, output directory, changed settings); 2 invalid recipe;
3 stopped early (a backend failed after its retries, or an interrupt) with everything so far saved: re-run
the same command to continue.
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
    args = parser.parse_args(argv)

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
