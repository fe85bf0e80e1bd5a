"""Data parallelism on one machine: 1 process x 2 threads against 2 processes x 1 thread (gloo).

Both train the same model on the same global batch from the same seed with dropout 0, so they
must also agree on the losses; repeats alternate so the machine's load hits both alike. Prints
one JSON object, also written (not with --quick) to docs/bench/ddp.json:
    python benchmarks/bench_ddp.py [--repeats 3] [--steps 60] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchutil import ROOT, bundled_text_light, log, write_result


def train_flags(out: Path, steps: int, hidden: int, data: list[str]) -> list[str]:
    return [
        "train", *data, "--out", str(out), "--hidden-size", str(hidden), "--num-layers", "2",
        "--dropout", "0",
        "--batch-size", "32", "--seq-len", "64", "--max-steps", str(steps), "--eval-interval", str(steps),
        "--seed", "3", "--device", "cpu", "--quiet",
    ]  # fmt: skip


def run(kind: str, out: Path, steps: int, hidden: int, data: list[str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    if kind == "1x2":
        env["OMP_NUM_THREADS"] = "2"
        cmd = [sys.executable, "-m", "charlstm", "--threads", "2", *train_flags(out, steps, hidden, data)]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "charlstm", *train_flags(out, steps, hidden, data)]  # fmt: skip
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, timeout=1800)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"chars_per_sec": record["chars_per_sec"], "val_loss": record["val_loss"],
            "train_loss": record["train_loss"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny model, few steps")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.hidden = 1, 6, 32  # and 40k characters of the novel
    runs: dict[str, list[dict[str, float]]] = {"1x2": [], "2x1": []}
    with tempfile.TemporaryDirectory() as tmp:
        data: list[str] = []  # the bundled novel
        if args.quick:  # a short text: reading and validating the novel would take most of the time
            data = [str(Path(tmp) / "quick.txt")]
            Path(data[0]).write_text(bundled_text_light()[:40_000], encoding="utf-8")
        for repeat in range(args.repeats):
            for kind in runs:
                result = run(kind, Path(tmp) / f"{kind}-{repeat}", args.steps, args.hidden, data)
                log(f"{kind} #{repeat + 1}: {result}")
                runs[kind].append(result)
    speeds = {kind: [r["chars_per_sec"] for r in rs] for kind, rs in runs.items()}
    summary = {
        kind: {"median": statistics.median(v), "min": min(v), "max": max(v)} for kind, v in speeds.items()
    }
    write_result({
        "config": {"hidden": args.hidden, "layers": 2, "batch": 32, "seq": 64, "steps": args.steps,
                   "repeats": args.repeats, "quick": args.quick},
        "chars_per_sec": summary,
        "ratio_2x1_over_1x2": summary["2x1"]["median"] / summary["1x2"]["median"],
        "val_loss": {kind: rs[0]["val_loss"] for kind, rs in runs.items()},
        "train_loss": {kind: rs[0]["train_loss"] for kind, rs in runs.items()},
    }, "ddp", 2, args.quick)  # fmt: skip


if __name__ == "__main__":
    main()
