"""Threads on a busy machine: training speed with 1 and 2 torch threads, idle and beside another program.

The model and window are what `--preset auto` picks for the bundled novel on a CPU. The "busy" runs
share the cores with a second process doing the same training with 2 threads (as another charlstm
run, a build or a browser would). Thread counts alternate (1, 2, 1, 2, ...) within each condition
so that a change in the machine's load hits both alike. Prints one JSON object, also written (not
with --quick) to docs/bench/threads.json:
    python benchmarks/bench_threads.py [--repeats 3] [--steps 40] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from benchutil import auto_cpu_sizes, bundled_text_light, log, write_result
from harness import alternate, setup_charlstm

COMPETITOR = """
import sys, time, torch
sys.path[:0] = sys.argv[1:3]
from benchutil import bundled_text_light
from harness import setup_charlstm
torch.set_num_threads(2)
method = setup_charlstm(bundled_text_light()[:200_000], **{options})
print("ready", flush=True)
while True:
    method.step(0.0)
"""


def measure(method, steps: int, repeats: int) -> dict[str, list[float]]:
    def at(threads: int):
        def run() -> None:
            torch.set_num_threads(threads)
            for _ in range(steps):
                method.step(0.0)
        return run
    seconds = alternate({"1": at(1), "2": at(2)}, repeats, log=log)
    return {k: [steps * method.chars_per_step / s for s in v] for k, v in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="smoke test: a tiny model, a few steps")
    args = parser.parse_args()
    text = bundled_text_light()
    options = {**auto_cpu_sizes(text), "seed": 1}
    if args.quick:
        args.repeats, args.steps = 1, 3
        options.update(hidden=32, batch=4, seq=16)
    method = setup_charlstm(text[:200_000], **options)
    here = os.path.dirname(os.path.abspath(__file__))
    src = os.path.join(os.path.dirname(here), "src")
    result: dict[str, object] = {"config": {**options, "steps": args.steps, "repeats": args.repeats,
                                            "cores": os.cpu_count()}}
    log("idle")
    result["idle"] = measure(method, args.steps, args.repeats)
    log("beside a second training process with 2 threads")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    script = COMPETITOR.replace("{options}", repr(options))
    competitor = subprocess.Popen([sys.executable, "-c", script, here, src], env=env, stdout=subprocess.PIPE,
                                  text=True)
    try:
        assert competitor.stdout is not None and competitor.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        result["busy"] = measure(method, args.steps, args.repeats)
    finally:
        competitor.kill()
        competitor.wait()
    for condition in ("idle", "busy"):
        speeds = result[condition]
        result[condition] = {k: {"chars_per_sec": [round(v, 1) for v in vs],
                                 "median": round(statistics.median(vs), 1)} for k, vs in speeds.items()}
        log(f"{condition}: " + ", ".join(f"{k} thread(s) {v['median']:,.0f} chars/s"
                                         for k, v in result[condition].items()))
    write_result(result, "threads", 2, args.quick)


if __name__ == "__main__":
    main()
