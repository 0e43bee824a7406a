"""A long CPU run with and without turns (``question_model.cpu_turns``): output tokens/s and kept pairs.

The shape the default recipe hides: bait has many calls (``--calls``), so it keeps running while consensus
answers, and both steps' embedded llama.cpp models want every core. Each mode runs ``crescent generate`` on the
recipe for the same ``--window`` seconds from its start (model loads included), then is stopped with one Ctrl-C
(and must stop within seconds: a resumable run). Printed per mode: output tokens/s over the window, stored bait
samples and answered questions, kept pairs, the first kept pair's time, and the load average; then the ratio.

    python benchmarks/bench_cpu_turns.py                        # qwen2.5-coder-0.5b, 2 x 6 min
    python benchmarks/bench_cpu_turns.py --model smollm2 --window 180
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes/Qwen2.5-Coder-0.5B-Instruct/generate/config_cpu.yaml"


def window_figures(db: Path, start: float, end: float) -> dict:
    """What the run stored between ``start`` and ``end`` (epoch seconds)."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT stage, tokens FROM generations WHERE created BETWEEN ? AND ?", (start, end)
        ).fetchall()
        kept = con.execute(
            "SELECT created FROM decisions WHERE stage = 'consensus' AND outcome = 'kept' AND created BETWEEN ? AND ?"
            " ORDER BY created",
            (start, end),
        ).fetchall()
    finally:
        con.close()
    tokens = sum(sum(json.loads(t)) for _, t in rows)
    return {
        "tok_s": tokens / (end - start),
        "bait_calls": sum(1 for stage, _ in rows if stage == "bait"),
        "answered": sum(1 for stage, _ in rows if stage == "answer"),
        "kept": len(kept),
        "first_kept_s": kept[0][0] - start if kept else None,
    }


def run(recipe: Path, turns: bool, model: str | None, calls: int, window: float, out: Path) -> dict:
    args = [sys.executable, "-m", "crescent_distilabel.cli", "generate", str(recipe), "--output-dir", str(out)]
    settings = [f"bait.num_calls={calls}", f"question_model.cpu_turns={str(turns).lower()}"]
    if model:
        settings.append(f"question_model.model={model}")
    for item in settings:
        args += ["--set", item]
    start = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    loads = []
    while time.time() - start < window and proc.poll() is None:
        time.sleep(5)
        loads.append(os.getloadavg()[0])
    end = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.communicate(timeout=120)
        stopped_s = time.time() - end
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stopped_s = None
    figures = window_figures(out / ".crescent" / "progress.sqlite", start, end)
    return {"turns": turns, **figures, "load": sum(loads) / max(1, len(loads)), "stopped_s": stopped_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--model", help="question_model.model (default: the recipe's)")
    parser.add_argument("--calls", type=int, default=100, help="bait.num_calls: enough that bait never finishes")
    parser.add_argument("--window", type=float, default=360.0, help="seconds per mode, from the command's start")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_cpu_turns_") as tmp:
        for turns in (False, True):
            result = run(args.recipe, turns, args.model, args.calls, args.window, Path(tmp) / f"turns-{turns}")
            results.append(result)
            first = f"{result['first_kept_s']:.0f} s" if result["first_kept_s"] is not None else "none"
            stop = f"{result['stopped_s']:.1f} s" if result["stopped_s"] is not None else "did not stop"
            print(
                f"cpu_turns={str(turns).lower():5}  {result['tok_s']:6.1f} tok/s  bait calls {result['bait_calls']:3}"
                f"  answered {result['answered']:3}  kept {result['kept']:3} (first {first})"
                f"  load {result['load']:.1f}  Ctrl-C stopped it in {stop}",
                flush=True,
            )
    off, on = results
    print(f"tokens/s with turns / without: {on['tok_s'] / off['tok_s']:.2f}")
    print(f"kept pairs with turns / without: {on['kept']} / {off['kept']}")


if __name__ == "__main__":
    main()
