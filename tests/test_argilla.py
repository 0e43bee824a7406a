"""Human spot-checks in the real Argilla: push, reviewers answer through the SDK, pull applies their verdicts.

The server is the real argilla-server 2.8 with Redis and an Elasticsearch-API search engine on 127.0.0.1
(``tests/argilla_service.py``); reviewers are real annotator users with their own API keys.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import argilla as rg
import pytest
import requests
from argilla.records._resource import Record
from conftest import REVIEW_QUESTIONS, hub_env
from datasets import load_from_disk

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def env_for(server, api_key: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")}
    env.update(ARGILLA_API_URL=server.api_url, ARGILLA_API_KEY=api_key or server.api_key)
    return env


def crescent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crescent_distilabel.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def owner(server) -> rg.Argilla:
    return rg.Argilla(api_url=server.api_url, api_key=server.api_key)


class Reviewer:
    """An annotator user in the workspace, answering through the SDK with their own key as the UI would."""

    def __init__(self, server, name: str) -> None:
        admin = owner(server)
        user = rg.User(username=unique(name), password="reviewer-password-1", role="annotator", client=admin).create()
        admin.workspaces("argilla").add_user(user)
        headers = {"X-Argilla-Api-Key": server.api_key}
        key = requests.get(f"{server.api_url}/api/v1/users/{user.id}", headers=headers, timeout=30).json()["api_key"]
        self.client = rg.Argilla(api_url=server.api_url, api_key=key)
        self.user_id = self.client.me.id

    def records(self, dataset_name: str) -> list[Record]:
        """The records this reviewer is shown (annotators search their own queue)."""
        dataset = self.client.datasets(dataset_name, workspace="argilla")
        found = self.client.api.http_client.post(
            f"/api/v1/me/datasets/{dataset.id}/records/search", json={"query": {}}, params={"limit": 100}
        )
        found.raise_for_status()
        models = [self.client.api.records._model_from_json(item["record"]) for item in found.json()["items"]]
        return [Record.from_model(model, dataset=dataset) for model in models]

    def answer(self, dataset_name: str, verdicts: dict[str, dict[str, str]], status: str = "submitted") -> None:
        """``verdicts``: a word of the question (a REVIEW_QUESTIONS key) -> {question name: value}."""
        for record in self.records(dataset_name):
            key = next((k for k, (q, _) in REVIEW_QUESTIONS.items() if q == record.fields["question"]), None)
            if key not in verdicts:
                continue
            for question, value in verdicts[key].items():
                record.responses.add(rg.Response(question, value, user_id=self.user_id, status=status))
            self.client.api.records.create_record_responses(record.api_model())


def tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + file.read_bytes())
    return digest.hexdigest()


def test_push_review_pull_round_trip(argilla_server, hub, run_copy: Path, tmp_path: Path) -> None:
    name = unique("crescent-review")
    env = env_for(argilla_server)
    pushed = crescent(env, "review", "push", str(run_copy), "--dataset-name", name)
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert "6 of 6 pairs" in pushed.stderr and "with question vectors" in pushed.stderr
    again = crescent(env, "review", "push", str(run_copy), "--dataset-name", name)  # stable ids: no duplicates
    assert again.returncode == 0, again.stderr[-3000:]

    dataset = owner(argilla_server).datasets(name, workspace="argilla")
    records = list(dataset.records(with_vectors=True))
    assert len(records) == 6
    assert {q.name for q in dataset.settings.questions} == {"well_posed", "correct", "corrected_answer", "comment"}
    assert "well-posed" in dataset.settings.guidelines
    by_question = {r.fields["question"]: r for r in records}
    pencil = by_question[REVIEW_QUESTIONS["pencil"][0]]
    assert pencil.fields["final_answer"] == "14" and "#### Answer: 14" in pencil.fields["answer"]
    assert pencil.metadata["agreement"] == pytest.approx(2 / 3) and pencil.metadata["winner_votes"] == 2
    assert pencil.metadata["k"] == 3 and pencil.metadata["rewrites"] == 0 and "nearest_similarity" in pencil.metadata
    assert len(pencil.vectors["question_embedding"]) == 384  # all-MiniLM-L6-v2, as diversification stored it

    first, second = Reviewer(argilla_server, "ann"), Reviewer(argilla_server, "bob")
    assert len(first.records(name)) == 6
    yes = {"well_posed": "yes", "correct": "yes"}
    first.answer(
        name,
        {
            "apples": yes,
            "rectangle": yes,
            "train": yes,
            "cookies": {"well_posed": "no", "correct": "yes", "comment": "boxes of what size?"},
            "pencil": {"well_posed": "yes", "correct": "no", "corrected_answer": "15"},
            "pages": {"well_posed": "yes", "correct": "no"},
        },
    )
    second.answer(name, {"apples": yes})
    second.answer(name, {"rectangle": {"well_posed": "yes", "correct": "no"}}, status="draft")  # not submitted

    pulled = crescent(env, "review", "pull", str(run_copy), "--dataset-name", name)
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    assert "| 1.00 | 2 | 2 | 100.0% |" in pulled.stdout and "| 0.67 | 3 | 1 | 33.3% |" in pulled.stdout
    assert "| all | 5 | 3 | 60.0% | 23.1% - 88.2% |" in pulled.stdout  # Wilson 95% for 3/5
    reviewed = load_from_disk(str(run_copy / "reviewed"))["train"].to_list()
    rejected = load_from_disk(str(run_copy / "review_rejected"))["train"].to_list()
    words = {q: k for k, (q, _) in REVIEW_QUESTIONS.items()}
    assert sorted(words[r["question"]] for r in reviewed) == ["apples", "pencil", "rectangle", "train"]
    assert {words[r["question"]]: r["drop_reason"] for r in rejected} == {
        "cookies": "review_rejected_question",
        "pages": "review_rejected_answer",
    }
    rows = {words[r["question"]]: r for r in reviewed}
    assert rows["apples"]["reviewers"] == 2 and rows["rectangle"]["review_correct"] is True  # the draft is ignored
    pencil_row = rows["pencil"]
    assert pencil_row["final_answer"] == "15" and pencil_row["review_status"] == "corrected_answer"
    assert pencil_row["answer"].endswith("#### Answer: 15") and pencil_row["answer"] in pencil_row["chains"]
    assert pencil_row["messages"][1]["content"] == pencil_row["answer"]
    assert (
        "boxes of what size?" in rejected[[words[r["question"]] for r in rejected].index("cookies")]["review_comment"]
    )
    # the DPO pairs follow the review: "pages" (rejected) gives none, "pencil" (corrected to 15) prefers 15 to 14
    before = load_from_disk(str(run_copy / "preference"))["train"].to_list()
    assert {words[p["question"]]: (p["chosen_answer"], p["rejected_answer"]) for p in before} == {
        "train": ("180", "170"), "pencil": ("14", "15"), "pages": ("60", "50"),
    }  # fmt: skip
    pairs = load_from_disk(str(run_copy / "reviewed_preference"))["train"].to_list()
    assert {words[p["question"]]: (p["chosen_answer"], p["rejected_answer"], p["margin"]) for p in pairs} == {
        "train": ("180", "170", 1), "pencil": ("15", "14", -1),
    }  # fmt: skip
    assert pairs[1]["chosen"][0]["content"].endswith("#### Answer: 15")
    report = json.loads((run_copy / "review_report.json").read_text())
    assert report["overall"]["correct"] == 3 and report["overall"]["judged"] == 5 and report["rejected_questions"] == 1
    card = (run_copy / "README.md").read_text()
    assert "## Human review (Argilla)" in card and "config_name: reviewed" in card
    assert load_from_disk(str(run_copy / "default"))["train"].num_rows == 6  # the original data is kept as is
    # re-running the generation does not undo the review: the card keeps its section, the configs stay
    from conftest import make_review_run

    assert make_review_run(run_copy).resumed
    assert "## Human review (Argilla)" in (run_copy / "README.md").read_text()
    assert load_from_disk(str(run_copy / "reviewed"))["train"].to_list() == reviewed

    # ... and the reviewed dataset goes to the Hub as its own config (the real clients, the FAKE Hub)
    both = {**env, **hub_env(hub, tmp_path)}
    published = crescent(both, "review", "pull", str(run_copy), "--dataset-name", name, "--push-to-hub", "alice/rv")
    assert published.returncode == 0, published.stderr[-3000:]
    loaded = subprocess.run(
        [sys.executable, "-c", "import json; from datasets import load_dataset; "
         "print(json.dumps(load_dataset('alice/rv', 'reviewed', split='train').to_list()))"],
        env=both, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert json.loads(loaded.stdout.strip().splitlines()[-1]) == reviewed
    card = hub.file("dataset", "alice/rv", "README.md").decode()
    assert "config_name: reviewed" in card and "| all | 5 | 3 | 60.0% |" in card
    assert "config_name: reviewed_preference" in card
    assert argilla_server.api_key.encode() not in hub.all_bytes()


def test_stratified_sample_covers_every_agreement_level(argilla_server, run_copy: Path) -> None:
    name = unique("crescent-sample")
    done = crescent(env_for(argilla_server), "review", "push", str(run_copy), "--dataset-name", name, "--sample", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    records = list(owner(argilla_server).datasets(name, workspace="argilla").records)
    assert sorted(r.metadata["agreement_level"] for r in records) == ["0.67", "1.00"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreachable", "cannot reach the Argilla server at http://127.0.0.1:9"),
        ("bad-key", "refused the API key"),
        ("missing-key", "no Argilla API key: set ARGILLA_API_KEY"),
        ("missing-workspace", "workspace 'nope' does not exist"),
        ("foreign-dataset", "is not a CRESCENT review dataset"),
        ("pull-unknown", "push it first"),
    ],
)
def test_argilla_failures_say_what_to_do_and_keep_local_data(
    argilla_server, run_copy: Path, case: str, expected: str
) -> None:
    env = env_for(argilla_server)
    args = ["review", "push", str(run_copy), "--dataset-name", unique("crescent-err")]
    if case == "unreachable":
        env["ARGILLA_API_URL"] = "http://127.0.0.1:9"
    elif case == "bad-key":
        env["ARGILLA_API_KEY"] = "not-a-key"
    elif case == "missing-key":
        del env["ARGILLA_API_KEY"]
    elif case == "missing-workspace":
        args += ["--workspace", "nope"]
    elif case == "foreign-dataset":
        foreign = unique("someone-elses")
        settings = rg.Settings(fields=[rg.TextField("text")], questions=[rg.TextQuestion("label")])
        rg.Dataset(name=foreign, workspace="argilla", settings=settings, client=owner(argilla_server)).create()
        args[3:5] = ["--dataset-name", foreign]
    elif case == "pull-unknown":
        args[1] = "pull"
    before = tree_digest(run_copy)
    done = crescent(env, *args)
    assert done.returncode == 1 and expected in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and argilla_server.api_key not in done.stderr
    assert tree_digest(run_copy) == before


def test_distilabel_step_pushes_kept_rows(argilla_server, review_run: Path, tmp_path: Path) -> None:
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    from crescent_distilabel.steps import CrescentToArgilla

    rows = load_from_disk(str(review_run / "default"))["train"].to_list()
    rows.append({**rows[0], "question": "dropped upstream", "drop_reason": "duplicate"})
    name = unique("crescent-step")
    with Pipeline(name="review-step", cache_dir=str(tmp_path / "cache")) as pipeline:
        load = LoadDataFromDicts(data=rows)
        review = CrescentToArgilla(
            dataset_name=name, dataset_workspace="argilla", api_url=argilla_server.api_url,
            api_key=argilla_server.api_key,
        )  # fmt: skip
        load >> review
    pipeline.run(use_cache=False)
    records = list(owner(argilla_server).datasets(name, workspace="argilla").records)
    assert len(records) == 6 and "dropped upstream" not in {r.fields["question"] for r in records}
    dumped = (tmp_path / "cache").rglob("pipeline.yaml")
    assert all(argilla_server.api_key not in p.read_text() for p in dumped)


def test_recipe_pushes_for_review_at_the_end_of_a_run(argilla_server, tmp_path: Path, monkeypatch) -> None:
    from fakes import FakeLLM

    from crescent_distilabel import load_recipe, run_recipe

    monkeypatch.setenv("ARGILLA_API_KEY", argilla_server.api_key)
    questions = [q for q, _ in REVIEW_QUESTIONS.values()][:3]
    name = unique("crescent-recipe")
    recipe = load_recipe(
        {
            "output_dir": str(tmp_path / "run"),
            "bait": {"num_calls": 1, "samples_per_call": 3},
            "publish": {"argilla_dataset": name, "argilla_api_url": argilla_server.api_url, "review_sample": 2},
        }
    )
    llms = {"question_llm": FakeLLM(rules={"creativity": questions}), "answer_llm": FakeLLM(default="#### Answer: 7")}
    result = run_recipe(recipe, **llms)
    assert result.complete and not result.publish_errors
    assert result.review_push is not None and (result.review_push.pushed, result.review_push.total) == (2, 3)
    assert len(list(owner(argilla_server).datasets(name, workspace="argilla").records)) == 2

    broken = recipe.model_copy(deep=True)
    broken.publish.argilla_api_url = "http://127.0.0.1:9"
    again = run_recipe(broken, **llms)  # a finished run: nothing is generated again; the push fails, the data stays
    assert again.complete and again.new_generations == 0
    assert "cannot reach the Argilla server" in again.publish_errors[0]
    assert "crescent review push" in again.publish_errors[0]
    assert load_from_disk(str(tmp_path / "run" / "default"))["train"].num_rows == 3
