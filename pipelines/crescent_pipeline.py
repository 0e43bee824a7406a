"""A ready CRESCENT pipeline in plain distilabel code: bait prompting >> diversify >> consensus.

Runs SmolLM2-135M-Instruct on CPU by default; pass --base-url to use any OpenAI-compatible server instead
(for example `vllm serve meta-llama/Meta-Llama-3-8B-Instruct`). For recipes, resume and the summary table,
use `crescent generate` instead; this script shows the steps as ordinary distilabel components.

    python pipelines/crescent_pipeline.py --num-calls 4 --samples-per-call 5 --output outputs/pipeline-demo
"""

from __future__ import annotations

import argparse

from distilabel.pipeline import Pipeline
from distilabel.steps import StepResources

from crescent_distilabel.backends import smollm2_gguf_path
from crescent_distilabel.embeddings import SentenceEmbeddings
from crescent_distilabel.llms import LlamaCppChatLLM, OpenAICompatibleLLM
from crescent_distilabel.steps import BaitPrompting, Consensus, Diversify


def build(args: argparse.Namespace) -> Pipeline:
    """The three CRESCENT stages wired as a distilabel Pipeline."""
    sampling = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens}
    if args.base_url:
        llm = OpenAICompatibleLLM(model=args.model, base_url=args.base_url, generation_kwargs=sampling)
    else:
        llm = LlamaCppChatLLM(model="smollm2", model_path=smollm2_gguf_path(), n_ctx=2048, generation_kwargs=sampling)
    with Pipeline(name="crescent-pipeline") as pipeline:
        bait = BaitPrompting(llm=llm, num_calls=args.num_calls, samples_per_call=args.samples_per_call, seed=args.seed)
        diversify = Diversify(
            llm=llm,
            embeddings=SentenceEmbeddings(),
            input_batch_size=args.samples_per_call,
            seed=args.seed,
            resources=StepResources(replicas=1),  # the accepted history lives in one process
        )
        consensus = Consensus(llm=llm, num_answers=args.k, input_batch_size=8, seed=args.seed)
        bait >> diversify >> consensus
    return pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint; default: embedded SmolLM2 on CPU")
    parser.add_argument("--model", default="smollm2", help="model name served at --base-url")
    parser.add_argument("--num-calls", type=int, default=4)
    parser.add_argument("--samples-per-call", type=int, default=5)
    parser.add_argument("--k", type=int, default=3, help="answers per question")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="outputs/pipeline-demo", help="where to save the Distiset")
    args = parser.parse_args()
    distiset = build(args).run(use_cache=False)
    distiset.save_to_disk(args.output, save_card=False)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
