"""Validation loss against training step: the tutorial's method and charlstm, side by side.

    python benchmarks/tutorial_baseline.py --max-steps 200 --curve-out /tmp/tutorial_curve.json
    charlstm train --preset tutorial --max-steps 200 --eval-interval 20 --seed 1 --out /tmp/tut
    charlstm train --max-steps 200 --eval-interval 20 --seed 1 --out /tmp/tut_auto
    python benchmarks/tutorial_curve.py /tmp/tutorial_curve.json /tmp/tut/metrics.jsonl \
        /tmp/tut_auto/metrics.jsonl --plot docs/tutorial_curve.png

Prints a Markdown table (step, then each curve's validation loss) and draws the plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LABELS = (
    "tutorial's method (benchmarks/tutorial_baseline.py)",
    "charlstm --preset tutorial",
    "charlstm, auto preset (2 x 256, batch 32 x 64)",
)


def read_curve(path: Path) -> dict[int, float]:
    text = path.read_text(encoding="utf-8")
    points = json.loads(text) if path.suffix == ".json" else [json.loads(x) for x in text.splitlines() if x]
    return {int(p["step"]): float(p["val_loss"]) for p in points}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("curves", nargs=3, type=Path, help="baseline curve JSON, then two metrics.jsonl")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    curves = [read_curve(p) for p in args.curves]
    steps = sorted(set(curves[1]) | set(curves[2]))
    print("| step | " + " | ".join(LABELS) + " |")
    print("| --- |" + " --- |" * len(LABELS))
    for step in steps:
        cells = [f"{c[step]:.3f}" if step in c else "" for c in curves]
        print(f"| {step} | " + " | ".join(cells) + " |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for label, curve in zip(LABELS, curves, strict=True):
            xs = sorted(curve)
            ax.plot(xs, [curve[x] for x in xs], marker="o", markersize=3, label=label)
        ax.axhline(3.08, color="grey", linestyle=":", linewidth=1)
        ax.annotate("tutorial's published log: 3.08 at step 80", (5, 3.12), fontsize=8, color="grey")
        ax.set_xlabel("training step")
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_title("Anna Karenina: validation loss by step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
