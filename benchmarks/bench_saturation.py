"""How much of a GPU-like server's throughput does a whole ``crescent generate`` use? (issue: saturation)

Against ``tests/cb_server.py`` (a FAKE continuous-batching server shaped like vLLM on one GPU: ``--slots``
sequences decode together, one token each per ``--step-time``, long-tailed seeded output lengths), in one run:

1. the server's ceiling: tokens/s that a client keeping more than ``slots`` sequences queued gets from it;
2. ``crescent generate`` with the paper's sampling settings (n = 100 samples per bait call, k = 3,
   temperature 1.0, top_p 1.0, max 2,048 tokens), timed as a user runs it: the whole command, start-up
   included; the server counts the tokens it generated meanwhile;
3. the ratio of the two, plus: requests in flight over time (from the server), the run's own per-stage mean
   sequences in flight, and the embedder's throughput.

    python benchmarks/bench_saturation.py --slots 256 --calls 30          # S = 256
    python benchmarks/bench_saturation.py --slots 64 --calls 15            # S = 64
    python benchmarks/bench_saturation.py --slots 256 --step-time 0 ...    # the pipeline's own ceiling
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def start_server(slots: int, step_time: float, workdir: Path) -> tuple[subprocess.Popen, str]:
    port_file = workdir / "port"
    cmd = [sys.executable, str(ROOT / "tests" / "cb_server.py"), "--slots", str(slots), "--step-time", str(step_time),
           "--port-file", str(port_file)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(workdir / "server.log", "wb"))
    deadline = time.monotonic() + 30
    while not (port_file.is_file() and port_file.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the fake server did not start: {(workdir / 'server.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port_file.read_text()}"


def stats(base: str) -> dict:
    return requests.get(f"{base}/stats", timeout=30).json()


async def _keep_queued(base: str, sequences: int, seconds: float) -> None:
    """A client that always keeps ``sequences`` sequences outstanding (requests of n = 3 answer prompts)."""
    import httpx

    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=4096)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        deadline = time.monotonic() + seconds
        rng = random.Random(0)

        async def worker() -> None:
            while time.monotonic() < deadline:
                body = {
                    "model": "fake",
                    "n": 3,
                    "max_tokens": 2048,
                    "seed": rng.randrange(2**31),
                    "messages": [{"role": "user", "content": "Q?\n\n#### Answer"}],
                }
                await client.post(f"{base}/v1/chat/completions", json=body)

        await asyncio.gather(*(worker() for _ in range(sequences // 3)))


def ceiling(base: str, slots: int, step_time: float, seconds: float) -> float:
    """Tokens/s while a client keeps 2 x slots sequences queued, measured after the slots have filled."""
    import threading

    runner = threading.Thread(target=lambda: asyncio.run(_keep_queued(base, 2 * slots, seconds)), daemon=True)
    runner.start()
    time.sleep(min(10.0, seconds / 4))  # let every slot fill
    first = stats(base)
    time.sleep(seconds * 0.6)
    last = stats(base)
    runner.join()
    return (last["tokens"] - first["tokens"]) / (last["elapsed"] - first["elapsed"])


def run_generate(base: str, out: Path, calls: int, consensus_window: int, extra: list[str]) -> tuple[float, int]:
    """``crescent generate`` as a user runs it; returns (wall seconds, exit code)."""
    sets = {
        "question_model.backend": "openai",
        "question_model.model": "fake",
        "question_model.base_url": f"{base}/v1",
        "question_model.timeout": 3600,
        "sampling.temperature": 1.0,
        "sampling.top_p": 1.0,
        "sampling.max_new_tokens": 2048,
        "bait.num_calls": calls,
        "bait.samples_per_call": 100,
        "consensus.k": 3,
        "consensus.batch_size": consensus_window,
    }
    cmd = [sys.executable, "-m", "crescent_distilabel.cli", "generate", "--output-dir", str(out), "--no-progress"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    for item in extra:
        cmd += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
    return wall, done.returncode


def embedder_rate(run_dir: Path, limit: int = 2000) -> float:
    """Questions per second the default embedder (all-MiniLM-L6-v2, as Diversify loads it) embeds here."""
    from datasets import load_from_disk

    from crescent_distilabel.embeddings import SentenceEmbeddings

    texts: list[str] = []
    for config in ("default", "dropped"):
        rows = load_from_disk(str(run_dir / config / "train"))
        texts += [t for t in rows["raw_question"] if t]
    texts = (texts * (limit // max(1, len(texts)) + 1))[:limit]
    model = SentenceEmbeddings()
    model.load()
    model.encode_array(texts[:64])  # warm up
    start = time.perf_counter()
    for i in range(0, len(texts), 256):  # Diversify embeds a batch at a time
        model.encode_array(texts[i : i + 256])
    return len(texts) / (time.perf_counter() - start)


def plot(results: list[dict], path: Path) -> None:
    """Sequences running on the server over time, one line per result (``--plot``; several ``--json`` files
    from earlier runs can be overlaid with ``--overlay``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2), dpi=100)
    for result in results:
        timeline = result["timeline"]
        if not timeline:
            continue
        t0 = timeline[0][0]
        label = f"{result.get('label') or 'run'}: ratio {result['ratio']}"
        ax.plot([t - t0 for t, _, _ in timeline], [running for _, running, _ in timeline], lw=1, label=label)
    slots = results[0]["slots"]
    ax.axhline(slots, color="grey", ls="--", lw=0.8, label=f"slots (S = {slots})")
    ax.set_xlabel("seconds since `crescent generate` started")
    ax.set_ylabel("sequences running")
    ax.set_ylim(0, slots * 1.1)
    ax.legend(loc="lower center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--step-time", type=float, default=0.03)
    parser.add_argument("--calls", type=int, default=10, help="bait calls of 100 samples")
    parser.add_argument("--ceiling-seconds", type=float, default=40.0)
    parser.add_argument("--window", type=int, default=256, help="consensus.batch_size: questions in flight")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="more recipe overrides")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--label", default="", help="this run's name in --json and --plot")
    parser.add_argument("--plot", type=Path, help="draw sequences running over time (PNG)")
    parser.add_argument("--overlay", type=Path, action="append", default=[], help="--json of earlier runs to draw too")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    workdir = Path(tempfile.mkdtemp(prefix="bench-saturation-"))
    proc, base = start_server(args.slots, args.step_time, workdir)
    try:
        ceil = ceiling(base, args.slots, args.step_time, args.ceiling_seconds) if args.step_time > 0 else None
        before = stats(base)
        wall, code = run_generate(base, workdir / "run", args.calls, args.window, args.extra)
        after = stats(base)
    finally:
        proc.terminate()
        proc.wait()
    tokens = after["tokens"] - before["tokens"]
    record = json.loads((workdir / "run" / "crescent_run.json").read_text()) if code in (0, 3) else {}
    summary = record.get("summary", {})
    result = {
        "label": args.label,
        "slots": args.slots,
        "step_time": args.step_time,
        "bait_samples": args.calls * 100,
        "consensus_window": args.window,
        "settings": args.extra,
        "exit_code": code,
        "wall_s": round(wall, 1),
        "server_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "ceiling_tokens_per_s": None if ceil is None else round(ceil, 1),
        "theoretical_ceiling": None if args.step_time == 0 else round(args.slots / args.step_time, 1),
        "ratio": None if ceil is None else round(tokens / wall / ceil, 3),
        "kept": summary.get("kept"),
        "pipeline_wall_s": summary.get("wall_time_s"),
        "stages": summary.get("stages"),
        "timeline": [t for t in after["timeline"] if t[0] >= before["elapsed"]],
    }
    if code == 0 and ceil:
        # what Diversify must embed per second if the run went at the server's full ceiling: every bait sample
        # and every rewrite, over the time the server would need for the run's tokens
        stages = summary.get("stages", {})
        embedded = args.calls * 100 + stages.get("rewrite", {}).get("calls", 0)
        result["embed_needed_per_s"] = round(embedded / (tokens / ceil), 1)
        result["embed_per_s_here"] = round(embedder_rate(workdir / "run"), 1)
    if result["ratio"]:
        # the paper's run (550 x 100 bait samples) at this run's tokens per bait sample, on this server
        per_sample = tokens / (args.calls * 100)
        result["paper_run_output_tokens_M"] = round(55_000 * per_sample / 1e6, 1)
        result["paper_run_hours"] = round(55_000 * per_sample / (result["ratio"] * ceil) / 3600, 2)  # type: ignore[operator]
    shown = {k: v for k, v in result.items() if k not in ("timeline", "stages")}
    print(json.dumps(shown, indent=2))
    if summary.get("stages"):
        print(json.dumps(summary["stages"], indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot([json.loads(p.read_text()) for p in args.overlay] + [result], args.plot)
    if args.keep:
        print(f"run kept in {workdir / 'run'}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
