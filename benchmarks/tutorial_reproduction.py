"""The tutorial reproduced exactly, then each improvement measured on its own.

    python benchmarks/tutorial_reproduction.py            # about 30 minutes on a 2-core CPU
    python benchmarks/tutorial_reproduction.py --quick    # a smoke run (seconds), writes nothing to docs/

Every run is `charlstm train` on the bundled novel, one thread, seed 1, validated every
--eval-interval steps. The first is `--preset tutorial` (one-hot input, wrapped last targets, the
tutorial's hyperparameters); each other run changes one thing from it. The validation curves go to
docs/tutorial_reproduction.json and docs/tutorial_curve.png, and the tables into
docs/tutorial_reproduction.md between its generated markers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchutil import ROOT, child_env, log, machine_info, render_between_markers

# The tutorial's published validation losses (nats/char) by step: its notebook's printed log.
PUBLISHED = {20: 3.121, 40: 3.107, 60: 3.102, 80: 3.085}
RUNS: dict[str, tuple[str, list[str]]] = {
    "tutorial": ("charlstm --preset tutorial (exact)", []),
    "embedding": ("input layer: learned embedding (83)", ["--embedding-size", "83"]),
    "learning_rate": ("learning rate 0.002", ["--learning-rate", "0.002"]),
    "model_size": ("model size: 2 x 256, batch 32 x 64", ["--hidden-size", "256", "--batch-size", "32",
                                                            "--seq-len", "64"]),
}
DOC = ROOT / "docs" / "tutorial_reproduction.md"


def train(out: Path, extra: list[str], steps: int, eval_interval: int, quick: bool) -> list[dict[str, Any]]:
    command = [sys.executable, "-m", "charlstm", "--threads", "1", "train", "--preset", "tutorial",
               "--out", str(out), "--max-steps", str(steps), "--eval-interval", str(eval_interval),
               "--seed", "1", "--sample-length", "0", "--checkpoint-seconds", "0", "--quiet", *extra]
    if quick:
        command += ["--hidden-size", "32", "--batch-size", "8", "--seq-len", "16"]
    log("running: " + " ".join(command[2:]))
    subprocess.run(command, check=True, env=child_env(1), cwd=ROOT, stdout=sys.stderr)  # stdout: the JSON
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def validation_share(records: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds a training step and a validation pass (with its save) took in this run: each
    record's chars/s covers the training steps since the previous one, and the rest of the
    elapsed time went to validating and saving."""
    train_s, previous = 0.0, 0
    for record in records:
        train_s += (record["step"] - previous) * record["step_chars"] / record["chars_per_sec"]
        previous = record["step"]
    validate_s = (records[-1]["elapsed_s"] - train_s) / len(records)
    return {"step_s": train_s / previous, "validation_s": validate_s}


def render(result: dict[str, Any]) -> str:
    curves = result["curves"]
    steps = sorted({r["tutorial_step"] for recs in curves.values() for r in recs} | set(PUBLISHED))
    labels = ["published log"] + [RUNS[name][0] for name in curves]
    lines = ["| characters seen (tutorial steps of 100 x 100) | " + " | ".join(labels) + " |",
             "| --- |" + " --- |" * len(labels)]
    for step in steps:
        cells = [f"{PUBLISHED[step]:.3f}" if step in PUBLISHED else ""]
        for records in curves.values():
            found = [r["val_loss"] for r in records if r["tutorial_step"] == step]
            cells.append(f"{found[0]:.3f}" if found else "")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", "| run | steps | characters seen | wall time (s) | last validation loss |",
              "| --- | --- | --- | --- | --- |"]
    for name, records in curves.items():
        last = records[-1]
        lines.append(f"| {RUNS[name][0]} | {last['step']} | {last['step'] * last['step_chars']:,} | "
                     f"{last['elapsed_s']:.0f} | {last['val_loss']:.3f} |")
    share = validation_share(curves[next(iter(curves))])
    every_ten = share["validation_s"] / (share["validation_s"] + 10 * share["step_s"])
    lines += ["", "Validation cadence, from the exact run: a training step took "
              f"{share['step_s']:.2f} s and a full validation pass {share['validation_s']:.2f} s. "
              f"The tutorial validates every 10 steps: {every_ten:.0%} of its wall time; "
              "charlstm's default interval keeps it near 10%.",
              "", f"Measured on {result['machine']['cpu']} ({result['machine']['cores']} cores), "
              f"torch {result['machine']['torch']}, commit {result['machine']['commit']}, {result['date']}."]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    ax.plot([s * 1e-2 for s in PUBLISHED], list(PUBLISHED.values()), "k--", marker="s", markersize=4,
            label="tutorial's published log")
    for name, records in result["curves"].items():
        chars = [r["step"] * r["step_chars"] * 1e-6 for r in records]
        ax.plot(chars, [r["val_loss"] for r in records], marker="o", markersize=3, label=RUNS[name][0])
    ax.set_xlabel("training characters seen (millions; 0.01 M = one tutorial step)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_title("Anna Karenina: the tutorial reproduced, and one change at a time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-interval", type=int, default=20)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 steps; writes nothing to docs/")
    parser.add_argument("--threads", type=int, default=1, help="accepted for the smoke test; runs use 1")
    parser.add_argument(
        "--render-only", action="store_true", help="train nothing: re-render the page from the saved JSON"
    )
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads((ROOT / "docs" / "tutorial_reproduction.json").read_text(encoding="utf-8"))
        plot(saved, ROOT / "docs" / "tutorial_curve.png")
        render_between_markers(DOC, "reproduction", render(saved))
        return
    steps, interval = (4, 2) if args.quick else (args.steps, args.eval_interval)
    curves: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.runs:
            size = 8 * 16 if args.quick else 32 * 64 if name == "model_size" else 100 * 100
            scale = 1 if args.quick else 100 * 100 / size  # the same characters between validations
            records = train(Path(tmp) / name, RUNS[name][1], round(steps * scale), round(interval * scale),
                            args.quick)
            curves[name] = [{**r, "step_chars": size, "tutorial_step": round(r["step"] / scale)}
                            for r in records]
    result = {"curves": curves, "published": PUBLISHED, **machine_info(1)}
    if not args.quick:
        (ROOT / "docs" / "tutorial_reproduction.json").write_text(json.dumps(result, indent=1) + "\n")
        plot(result, ROOT / "docs" / "tutorial_curve.png")
        render_between_markers(DOC, "reproduction", render(result))
    print(json.dumps({"runs": list(curves), "last": {k: v[-1]["val_loss"] for k, v in curves.items()},
                      "table": render(result)}))


if __name__ == "__main__":
    main()
