"""A run directory: --overwrite touches only what runs write, configs are replaced atomically, and what was
applied on top of a run (decontamination) survives re-running it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from datasets import Dataset, load_from_disk
from fakes import FakeLLM

from crescent_distilabel import load_recipe, run_recipe
from crescent_distilabel.pipeline import OutputExistsError
from crescent_distilabel.run_dir import RUN_MARKER, RunDirError, clear_run, replace_dir, save_config

APPLES = "Tom has 3 apples and buys 5 more. How many apples does Tom have now?"
TRAIN = "A train travels 60 km per hour for 3 hours. How far does it travel?"


def small_run(out: Path, questions: list[str], **kwargs) -> object:
    recipe = load_recipe({"output_dir": str(out), "bait": {"num_calls": 1, "samples_per_call": len(questions)}})
    return run_recipe(
        recipe,
        question_llm=FakeLLM(rules={"creativity": questions}),
        answer_llm=FakeLLM(default="So the result is 12.\n#### Answer: 12"),
        **kwargs,
    )


def test_overwrite_refuses_a_directory_that_holds_no_run_and_touches_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "README.md").write_text("my project")
    (repo / "src" / "main.py").write_text("print(1)")
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError) as err:
            small_run(repo, [APPLES], overwrite=overwrite)
        message = str(err.value)
        assert str(repo) in message and RUN_MARKER in message and "README.md" in message
        assert "--overwrite" not in message
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before
    assert (repo / "README.md").read_text() == "my project"


def test_overwrite_of_a_run_removes_only_what_runs_write(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert small_run(out, [APPLES, TRAIN]).summary.kept == 2
    (out / "notes.txt").write_text("my notes")  # the user's own file in the run directory
    (out / "analysis").mkdir()
    (out / "analysis" / "plot.png").write_bytes(b"png")
    again = small_run(out, [APPLES], overwrite=True)
    assert again.complete and not again.resumed and again.summary.raw_samples == 1
    assert (out / "notes.txt").read_text() == "my notes" and (out / "analysis" / "plot.png").read_bytes() == b"png"
    assert load_from_disk(str(out / "default"))["train"]["question"] == [APPLES]


def test_clear_run_refuses_a_directory_without_the_marker(tmp_path: Path) -> None:
    (tmp_path / "default").mkdir()  # looks like a config, but no run marker
    with pytest.raises(RunDirError, match="holds no CRESCENT run"):
        clear_run(tmp_path)
    assert (tmp_path / "default").is_dir()


def test_a_config_is_replaced_whole_and_never_missing(tmp_path: Path) -> None:
    (tmp_path / ".crescent").mkdir()
    save_config(tmp_path, "default", Dataset.from_dict({"x": [1, 2]}))
    inode = os.stat(tmp_path / "default").st_ino
    save_config(tmp_path, "default", Dataset.from_dict({"x": [3]}))
    assert load_from_disk(str(tmp_path / "default"))["train"]["x"] == [3]
    assert os.stat(tmp_path / "default").st_ino != inode  # a new directory took the old one's place
    assert sorted(p.name for p in (tmp_path / ".crescent").iterdir()) == []  # no leftovers
    new, target = tmp_path / "new", tmp_path / "target"
    new.mkdir()
    (new / "a").write_text("new")
    target.mkdir()
    (target / "a").write_text("old")
    replace_dir(new, target)
    assert (target / "a").read_text() == "new" and not new.exists()


def test_decontamination_survives_rerunning_the_run(tmp_path: Path) -> None:
    from crescent_distilabel.decontamination import decontaminate_run
    from crescent_distilabel.eval_data import load_questions

    gsm8k = load_questions("gsm8k")[0]  # a benchmark question the model "wrote"
    out = tmp_path / "run"
    first = small_run(out, [gsm8k, APPLES, TRAIN])
    assert first.summary.kept == 3
    report = decontaminate_run(str(out), ["gsm8k"], drop=True, similarity_threshold=None)
    assert report.contaminated == 1
    kept = load_from_disk(str(out / "default"))["train"].to_list()
    assert [r["question"] for r in kept] == [APPLES, TRAIN]
    again = small_run(out, [gsm8k, APPLES, TRAIN])  # the same command again (as `crescent loop` does after a crash)
    assert again.complete and again.resumed
    assert load_from_disk(str(out / "default"))["train"].to_list() == kept  # the contaminated row stays out
    assert load_from_disk(str(out / "contaminated"))["train"]["question"] == [gsm8k]
    card = (out / "README.md").read_text()
    assert "## Decontamination" in card and "config_name: contaminated" in card


def test_question_diversity_of_a_run_goes_into_its_card(run_copy: Path) -> None:
    """benchmarks/bench_questions.py on a finished run: the cleaned and the accepted questions, measured with the
    real embedder, saved beside the run and shown in its card."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_questions import measure, question_sets
    from conftest import REVIEW_QUESTIONS

    from crescent_distilabel.run_dir import DIVERSITY, RunDir

    sets = question_sets(RunDir(run_copy))
    questions = [q for q, _ in REVIEW_QUESTIONS.values()]  # in bait order; the 7th sample asks nothing
    assert sets == {"after bait (cleaned)": questions, "after diversification": questions}
    result = measure(run_copy, reference=False)
    six = result["sets"]["after diversification"]
    assert six["questions"] == 6 and six["distinct_rate"] == 1.0 and 0.1 < six["mean_nearest"] < 0.875
    run = RunDir(run_copy)
    run.write_report(DIVERSITY, result)
    run.write_card()
    card = (run_copy / "README.md").read_text()
    assert (
        "## Question diversity" in card
        and f"| after diversification | 6 | 100.0% | {six['mean_nearest']:.3f} |" in card
    )


def test_vote_calibration_goes_into_the_card_with_figures_that_follow_from_the_votes(run_copy: Path) -> None:
    """benchmarks/bench_consensus.py's report on chains whose scores are known, saved beside a run: the card
    shows accuracy per agreement level and per min_agreement."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_consensus import report

    from crescent_distilabel.run_dir import CALIBRATION, RunDir

    rows = [{"answer": "... #### 8"}, {"answer": "... #### 12"}, {"answer": "... #### 5"}]
    chains = [
        ["So 8.\n#### Answer: 8"] * 3,  # 3/3, right
        ["#### Answer: 12", "#### Answer: 12", "#### Answer: 13"],  # 2/3, right
        ["#### Answer: 1", "#### Answer: 2", "#### Answer: 3"],  # 1/3, wrong
    ]
    result = {"model": "m", "temperature": 1.0, "max_tokens": 512} | report(rows, chains, 3)
    assert result["single_sample"]["accuracy"] == round(5 / 9, 3)
    run = RunDir(run_copy)
    run.write_report(CALIBRATION, result)
    run.write_card()
    card = (run_copy / "README.md").read_text()
    assert "## How often the vote is right" in card and "3 GSM8K train questions" in card
    assert "| 3/3 | 1 | 100.0% [" in card and "| 2/3 | 1 | 100.0% [" in card and "| 1/3 | 1 | 0.0% [" in card
    assert "| >=2/3 | 67% | 100.0% [" in card and "| >=1/3 | 100% | 66.7% [" in card
