"""How varied are a run's questions? Distinct-question rate and mean nearest-neighbour similarity, after bait and
after diversification, with the well-formed rate of the bait samples.

Reads a finished run directory. Its cleaned bait questions (before any rewrite) and the questions diversification
accepted (rewritten or not) are embedded with the run's own embedding model; "distinct" counts a question with no
earlier question of the set above the run's history threshold (what greedy deduplication in bait order would
keep), "mean nearest" averages each question's cosine to its nearest other. The same number of human-written
GSM8K train questions is measured alongside, for scale. ``--save`` adds the figures to the run directory
(``question_diversity.json``) and its dataset card.

    python benchmarks/bench_questions.py outputs/qwen2.5-coder-0.5b-cpu --save
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crescent_distilabel.embeddings import SentenceEmbeddings
from crescent_distilabel.pipeline import CONSENSUS_REASONS
from crescent_distilabel.run_dir import DIVERSITY, RunDir
from crescent_distilabel.similarity import spread


def question_sets(run: RunDir) -> dict[str, list[str]]:
    """The cleaned bait questions and the accepted ones, each in bait order."""
    rows = [row for config in ("default", "dropped") if config in run.configs() for row in run.load(config)]
    rows.sort(key=lambda r: (int(r["bait_call"]), int(r["bait_sample"])))
    after_bait = [r["original_question"] for r in rows if r.get("original_question")]
    accepted = [
        r["question"]
        for r in rows
        if r.get("question")
        and (
            r.get("drop_reason") is None
            or r["drop_reason"] in CONSENSUS_REASONS
            or r["drop_reason"].startswith("review_")
        )
    ]
    return {"after bait (cleaned)": after_bait, "after diversification": accepted}


def measure(run_dir: Path, reference: bool = True) -> dict:
    run = RunDir(run_dir)
    recipe = run.recipe()
    model = SentenceEmbeddings(model=recipe.diversify.embedding_model)
    model.load()
    sets = question_sets(run)
    if reference:
        from _data import gsm8k

        n = len(sets["after bait (cleaned)"])
        sets["GSM8K train (human-written, same n)"] = [row["question"] for row in gsm8k("train")[:n]]
    threshold = recipe.diversify.history_threshold
    return {
        "embedding_model": recipe.diversify.embedding_model,
        "threshold": threshold,
        "well_formed_rate": run.record()["summary"].get("well_formed_rate"),
        "sets": {name: spread(model.encode_array(texts), threshold) for name, texts in sets.items()},
    }


def markdown(result: dict) -> str:
    lines = [
        f"well-formed rate of the bait samples: {result['well_formed_rate']}",
        "",
        f"| questions | n | distinct (no earlier cosine > {result['threshold']}) | mean nearest cosine |",
        "|---|---:|---:|---:|",
    ]
    for name, s in result["sets"].items():
        lines.append(f"| {name} | {s['questions']} | {s['distinct_rate']:.1%} | {s['mean_nearest']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--save", action="store_true", help="add the figures to the run directory and its card")
    parser.add_argument("--no-reference", action="store_true", help="skip the GSM8K train reference row")
    args = parser.parse_args()
    result = measure(args.run_dir, reference=not args.no_reference)
    print(markdown(result))
    if args.save:
        run = RunDir(args.run_dir)
        run.write_report(DIVERSITY, result)
        run.write_card()
        print(f"saved to {args.run_dir / DIVERSITY} and the dataset card")
    else:
        print(json.dumps(result["sets"]))


if __name__ == "__main__":
    main()
