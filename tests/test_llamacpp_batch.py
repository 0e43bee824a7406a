"""Continuous batching in embedded llama.cpp (``parallel`` > 1), on the real SmolLM2 GGUF."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import worker_threads

from crescent_distilabel.llamacpp_batch import BatchedLlamaCpp
from crescent_distilabel.llms import LlamaCppChatLLM, chat_tokens
from crescent_distilabel.recipe import ModelConfig, SamplingConfig

QUESTIONS = [
    "What is 12 times 7? End with #### N.",
    "Janet has 3 apples and buys 5 more. How many apples does she have?",
    "Write a short math word problem.",
]


@pytest.fixture(scope="module")
def llm(smollm2_path: Path) -> LlamaCppChatLLM:
    """The one-at-a-time LLM; its loaded model also backs the batched contexts below."""
    llm = LlamaCppChatLLM(model="smollm2", model_path=smollm2_path, n_ctx=512, seed=1,
                          extra_kwargs={"n_threads": worker_threads()})  # fmt: skip
    llm.load()
    return llm


def tokens(llm: LlamaCppChatLLM) -> list[list[int]]:
    return [chat_tokens(llm._model, [{"role": "user", "content": q}]) for q in QUESTIONS]


def test_more_jobs_than_slots_all_finish_in_order_and_again_the_same(llm: LlamaCppChatLLM) -> None:
    """9 sequences through 4 slots: slots are refilled as sequences end, each result belongs to its prompt, and
    the KV cells of one call never leak into the next (the same call gives the same samples)."""
    batched = BatchedLlamaCpp(llm._model, parallel=4, n_ctx=512, n_threads=worker_threads())
    prompts = tokens(llm)
    first = batched.generate(prompts, 3, [10, 20, 30], max_new_tokens=48, temperature=1.0, top_p=1.0)
    assert [len(row) for row in first] == [3, 3, 3]
    for prompt, row in zip(prompts, first):
        assert all(s.prompt_tokens == len(prompt) for s in row)
        assert all(s.text and 0 < s.output_tokens <= 48 for s in row)
    assert len({s.text for row in first for s in row}) > 3  # seeded per sample, not one draw copied
    again = batched.generate(prompts, 3, [10, 20, 30], max_new_tokens=48, temperature=1.0, top_p=1.0)
    assert [[s.text for s in row] for row in again] == [[s.text for s in row] for row in first]
    batched.close()


def test_sample_j_is_seeded_seed_plus_j(llm: LlamaCppChatLLM) -> None:
    """One slot, so every sequence decodes alone and draws are comparable bit for bit."""
    batched = BatchedLlamaCpp(llm._model, parallel=1, n_ctx=512, n_threads=worker_threads())
    prompt = tokens(llm)[2]
    two = batched.generate([prompt], 2, [100], max_new_tokens=32, temperature=1.0, top_p=1.0)[0]
    second = batched.generate([prompt], 1, [101], max_new_tokens=32, temperature=1.0, top_p=1.0)[0]
    assert two[1].text == second[0].text != two[0].text
    batched.close()


def test_greedy_siblings_share_one_prefill(llm: LlamaCppChatLLM) -> None:
    """The samples of a prompt start from one prefill copied to their sequences: greedy, they must agree with
    each other and with the prompt decoded alone (a failed copy would decode from an empty cache)."""
    prompt = tokens(llm)[0]
    alone = BatchedLlamaCpp(llm._model, parallel=1, n_ctx=512, n_threads=worker_threads())
    expected = alone.generate([prompt], 1, [0], max_new_tokens=24, temperature=0.0, top_p=1.0)[0][0].text
    alone.close()
    batched = BatchedLlamaCpp(llm._model, parallel=3, n_ctx=512, n_threads=worker_threads())
    row = batched.generate([prompt], 3, [0], max_new_tokens=24, temperature=0.0, top_p=1.0)[0]
    assert [s.text for s in row] == [expected] * 3
    batched.close()


def test_max_tokens_cuts_and_says_so_and_a_long_prompt_is_refused(llm: LlamaCppChatLLM) -> None:
    batched = BatchedLlamaCpp(llm._model, parallel=2, n_ctx=64, n_threads=worker_threads())
    prompt = tokens(llm)[2]
    row = batched.generate([prompt], 2, [5], max_new_tokens=8, temperature=1.0, top_p=1.0)[0]
    assert all(s.truncated and s.output_tokens == 8 for s in row)
    with pytest.raises(ValueError, match="does not fit a context of 64"):
        batched.generate([prompt * 3], 1, [5], max_new_tokens=8, temperature=1.0, top_p=1.0)
    batched.close()


def test_the_recipe_setting_reaches_the_llm_and_a_call_is_one_batch(smollm2_path: Path) -> None:
    """``question_model.parallel`` builds the batched LLM; its output has distilabel's shape, with truncation."""
    from crescent_distilabel.backends import build_llm

    config = ModelConfig(model=str(smollm2_path), n_ctx=512, parallel=4, n_threads=worker_threads())
    llm = build_llm(config, SamplingConfig(max_new_tokens=16), seed=3)
    assert llm.parallel == 4 and llm.batched_generation and "parallel" in llm.dump()
    llm.load()
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS[:2]]
    outputs = llm.generate(chats, num_generations=2, seeds=[1, 2], **llm.get_generation_kwargs())
    assert [len(o["generations"]) for o in outputs] == [2, 2]
    assert all(len(o["truncated"]) == len(o["statistics"]["output_tokens"]) == 2 for o in outputs)
    assert all(n <= 16 for o in outputs for n in o["statistics"]["output_tokens"])
    llm.unload()
    single = build_llm(ModelConfig(model="smollm2"), SamplingConfig(), seed=3)
    assert single.parallel == 1 and not single.batched_generation
