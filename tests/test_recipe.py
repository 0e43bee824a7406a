"""Recipes: every mistake is reported with the key that holds it; presets and overrides compose."""

from pathlib import Path

import pytest
import yaml

from crescent_distilabel.recipe import Recipe, RecipeError, dump_recipe, load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("data", "key", "text"),
    [
        ({"consensus": {"kk": 3}}, "consensus.kk", "unknown key"),
        ({"bogus": 1}, "bogus", "unknown key"),
        ({"consensus": {"k": 0}}, "consensus.k", "greater than 0"),
        ({"consensus": {"k": "three"}}, "consensus.k", "integer"),
        ({"diversify": {"history_threshold": 1.5}}, "diversify.history_threshold", "less than or equal to 1"),
        ({"diversify": {"within_batch_threshold": -0.1}}, "diversify.within_batch_threshold", "greater than or equal"),
        ({"consensus": {"min_agreement": 2}}, "consensus.min_agreement", "[0, 1]"),
        ({"consensus": {"tie_policy": "random"}}, "consensus.tie_policy", "'drop' or 'first'"),
        ({"question_model": {"backend": "tgi"}}, "question_model.backend", "'transformers', 'vllm' or 'vllm_serve'"),
        ({"sampling": {"top_p": 0}}, "sampling.top_p", "greater than 0"),
        ({"bait": {"num_calls": 0}}, "bait.num_calls", "greater than 0"),
        ({"diversify": {"rewrite_prompt": "Rewrite {question}"}}, "diversify.rewrite_prompt", "{neighbour}"),
        ({"preset": "magic"}, "preset", "'crescent' or 'paper'"),
    ],
)
def test_bad_recipes_name_the_key(data: dict, key: str, text: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(data)
    message = str(err.value)
    assert f"{key}:" in message and text in message


def test_errors_from_a_file_name_the_file_and_every_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("consensus:\n  k: 0\n  bogus: true\nseed: x\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "consensus.k:" in message and "consensus.bogus:" in message and "seed:" in message


def test_missing_file() -> None:
    with pytest.raises(RecipeError, match="not found"):
        load_recipe("/nonexistent/recipe.yaml")


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("consensus: [k: 3\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(path)


def test_overrides_are_typed_yaml_values() -> None:
    recipe = load_recipe(
        {}, ["consensus.k=5", "diversify.enabled=false", "consensus.min_agreement=0.6", "answer_model.model=big"]
    )
    assert recipe.consensus.k == 5 and recipe.diversify.enabled is False
    assert recipe.consensus.min_agreement == 0.6 and recipe.answer_model is not None
    with pytest.raises(RecipeError, match="key=value"):
        load_recipe({}, ["consensus.k"])
    with pytest.raises(RecipeError, match=r"consensus\.k:"):
        load_recipe({}, ["consensus.k=-1"])


def test_paper_preset_and_explicit_keys_override_it() -> None:
    paper = load_recipe({"preset": "paper"})
    assert paper.diversify.max_rewrites == 1 and paper.diversify.recheck_rewrites is False
    assert paper.consensus.min_agreement == 0.0 and paper.consensus.tie_policy == "first"
    assert paper.consensus.no_answer_policy == "vote"
    mixed = load_recipe({"preset": "paper", "consensus": {"min_agreement": "majority"}})
    assert mixed.consensus.min_agreement == "majority" and mixed.consensus.tie_policy == "first"
    ours = Recipe()
    assert ours.diversify.max_rewrites == 2 and ours.consensus.min_agreement == "majority"


def test_defaults_follow_the_paper_numbers() -> None:
    recipe = Recipe()
    assert recipe.sampling.temperature == 1.0 and recipe.sampling.top_p == 1.0
    assert recipe.sampling.max_new_tokens == 2048 and recipe.consensus.k == 3
    assert recipe.diversify.within_batch_threshold == 0.85 and recipe.diversify.history_threshold == 0.875
    assert recipe.diversify.embedding_model == "sentence-transformers/all-MiniLM-L6-v2"


def test_fingerprint_ignores_where_results_go_but_not_what_they_are() -> None:
    base = load_recipe({})
    assert base.fingerprint() == load_recipe({"output_dir": "elsewhere", "name": "x"}).fingerprint()
    assert base.fingerprint() != load_recipe({"consensus": {"k": 5}}).fingerprint()


def test_dump_round_trips() -> None:
    recipe = load_recipe({"preset": "paper", "consensus": {"k": 4}})
    assert load_recipe(yaml.safe_load(dump_recipe(recipe))) == recipe


def test_every_shipped_recipe_parses() -> None:
    recipes = sorted((REPO / "recipes").rglob("generate/*.yaml"))
    assert recipes, "no generation recipes found under recipes/"
    for path in recipes:
        load_recipe(path)


@pytest.mark.parametrize("text", ["", "null\n", "false\n", "0\n", "{}\n", "# only a comment\n"])
def test_an_empty_recipe_file_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_a_recipe_that_is_not_a_mapping_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- consensus\n- bait\n")
    with pytest.raises(RecipeError, match=r"list\.yaml must be a mapping of keys to values, but holds a list"):
        load_recipe(path)


def test_in_process_vllm_engines_that_need_more_gpus_than_visible_are_refused_before_anything_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crescent_distilabel import pipeline
    from crescent_distilabel.backends import BackendError
    from crescent_distilabel.vllm_backend import engine_plan_error

    generate = REPO / "recipes" / "Llama-3-8B-Instruct" / "generate"
    offline = load_recipe(generate / "config_vllm_offline.yaml")
    message = engine_plan_error(offline, 1)
    assert message and "bait (1), diversify (1), consensus (1) need 3 GPUs, and 1 is visible" in message
    assert "vllm_serve" in message and "config_vllm.yaml" in message  # the fix, named
    assert engine_plan_error(offline, 3) is None and engine_plan_error(offline, 0) is None  # 0: vLLM on CPU
    no_div = load_recipe({**offline.model_dump(mode="json"), "diversify": {"enabled": False}})
    assert engine_plan_error(no_div, 2) is None and "need 2 GPUs" in (engine_plan_error(no_div, 1) or "")
    assert engine_plan_error(load_recipe(generate / "config_vllm.yaml"), 1) is None  # one shared server
    # on a one-GPU machine the run stops at once, before the output directory or any engine exists
    monkeypatch.setattr(pipeline, "visible_gpus", lambda: 1)
    out = tmp_path / "run"
    with pytest.raises(BackendError, match="vllm_serve"):
        pipeline.run_recipe(offline.model_copy(update={"output_dir": str(out)}))
    assert not out.exists()


def test_a_run_made_by_another_answer_extractor_is_not_continued() -> None:
    from crescent_distilabel.answers import EXTRACTION_VERSION
    from crescent_distilabel.recipe import changed_settings

    new = load_recipe({}).result_settings()
    assert new["answer_extraction"] == EXTRACTION_VERSION >= 2
    old = {k: v for k, v in new.items() if k not in ("answer_extraction", "question_cleaning")}  # an older run
    changes = changed_settings(old, new)
    assert f"answer_extraction: 1 -> {EXTRACTION_VERSION} (" in changes[0] and "votes would change" in changes[0]
    assert changes[1].startswith("question_cleaning: 1 -> ") and len(changes) == 2
    assert changed_settings(new, new) == []


def test_a_run_made_before_answer_kinds_and_option_checks_continues_and_keeps_its_fingerprint() -> None:
    import hashlib
    import json

    from crescent_distilabel.recipe import ADDED_SETTINGS, changed_settings

    recipe = load_recipe({})
    new = recipe.result_settings()
    assert {"consensus.answer_kind", "bait.min_options"} <= set(ADDED_SETTINGS)
    old = {k: v for k, v in new.items() if k not in ADDED_SETTINGS}  # recorded before the settings existed
    assert changed_settings(old, new) == []
    assert recipe.fingerprint() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    choice = load_recipe({"consensus": {"answer_kind": "choice"}})
    assert changed_settings(old, choice.result_settings()) == ["consensus.answer_kind: 'auto' -> 'choice'"]
    assert choice.fingerprint() != recipe.fingerprint()


def test_set_reads_each_value_by_its_fields_type() -> None:
    recipe = load_recipe(
        {},
        [
            "bait.prompt=Write one hard problem. Problem:",  # YAML would read a mapping
            "question_model.api_key_env=NO",  # YAML would read False
            "name=2024",  # YAML would read a number
            "consensus.tie_policy=first",
            "consensus.k=5",
            "consensus.min_agreement=0.6",
            "bait.require_digits=false",
            "answer_model.model=other.gguf",  # inside an optional section
            "publish.hub_repo=null",
        ],
    )
    assert recipe.bait.prompt == "Write one hard problem. Problem:"
    assert recipe.question_model.api_key_env == "NO" and recipe.name == "2024"
    assert (recipe.consensus.tie_policy, recipe.consensus.k, recipe.consensus.min_agreement) == ("first", 5, 0.6)
    assert recipe.bait.require_digits is False and recipe.answer_model and recipe.answer_model.model == "other.gguf"
    assert recipe.publish.hub_repo is None
    assert load_recipe({}, ["consensus.min_agreement=majority"]).consensus.min_agreement == "majority"
    with pytest.raises(RecipeError, match=r"consensus\.k: Input should be a valid integer"):
        load_recipe({}, ["consensus.k=three"])
