"""Loss curves from runs' `metrics.jsonl`: training and validation loss (nats/char, with a
bits/char axis) of one or several runs overlaid, learning-rate changes and the best point marked.
matplotlib (the [plot] extra) is imported only when a figure is drawn, with the Agg backend."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CharLSTMError
from .metrics import MetricsLog

X_AXES = {"step": "step", "time": "training time (s)", "chars": "characters trained on"}


@dataclass
class Curve:
    """One run's points as drawn: x and the losses (nats/char) at each evaluation."""

    name: str
    x: list[float]
    train_loss: list[float]
    val_loss: list[float]
    lr_changes: list[tuple[float, float]] = field(default_factory=list)  # (x, new learning rate)
    best: tuple[float, float] | None = None  # (x, val loss)


def _chars_per_step(run_dir: Path) -> int:
    """Characters one optimiser step consumes, from the run's saved training facts."""
    for name in ("last", "best"):
        path = run_dir / name / "config.json"
        if path.exists():
            training = json.loads(path.read_text(encoding="utf-8")).get("training", {})
            config = training.get("config", {})
            if "batch_size" in config and "seq_len" in config:
                return int(config["batch_size"] * config["seq_len"] * training.get("world_size", 1))
    raise CharLSTMError(f"{run_dir}: no checkpoint says the batch size; use --x step or --x time")


def read_curve(run_dir: str | Path, x: str = "step", name: str | None = None) -> Curve:
    run_dir = Path(run_dir)
    if x not in X_AXES:
        raise CharLSTMError(f"--x must be one of {', '.join(X_AXES)}, not {x!r}")
    records = MetricsLog(run_dir / "metrics.jsonl").read()
    if not records:
        raise CharLSTMError(f"{run_dir}: no metrics.jsonl with evaluations; is it a training run folder?")
    scale = _chars_per_step(run_dir) if x == "chars" else 1
    key = "elapsed_s" if x == "time" else "step"
    xs = [float(r[key]) * scale for r in records]
    curve = Curve(
        name or run_dir.name,
        xs,
        [float(r.get("train_loss", math.nan)) for r in records],
        [float(r.get("val_loss", math.nan)) for r in records],
    )
    for i in range(1, len(records)):
        if records[i].get("learning_rate") != records[i - 1].get("learning_rate"):
            curve.lr_changes.append((xs[i], float(records[i]["learning_rate"])))
    finite = [(v, at) for at, v in zip(xs, curve.val_loss, strict=True) if math.isfinite(v)]
    if finite:
        best_loss, best_x = min(finite)
        curve.best = (best_x, best_loss)
    return curve


def _names(run_dirs: list[Path]) -> list[str]:
    """Run folder names, with the parent added where two runs share a name."""
    names = [p.name for p in run_dirs]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in run_dirs]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise CharLSTMError("plotting needs matplotlib: pip install 'charlstm[plot]'") from None
    matplotlib.use("Agg")  # no display on servers and in tests; must precede pyplot
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dirs: list[str | Path], out: str | Path, x: str = "step") -> list[Curve]:
    """Draw the runs' curves into the PNG `out`; returns the data each line was drawn from."""
    plt = _pyplot()
    paths = [Path(p) for p in run_dirs]
    curves = [read_curve(p, x, name) for p, name in zip(paths, _names(paths), strict=True)]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    try:
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for number, curve in enumerate(curves):
            colour = colours[number % len(colours)]
            ax.plot(
                curve.x,
                curve.train_loss,
                color=colour,
                alpha=0.55,
                linestyle="--",
                label=f"{curve.name} train",
            )
            ax.plot(
                curve.x,
                curve.val_loss,
                color=colour,
                marker="." if len(curve.x) < 40 else None,
                label=f"{curve.name} val" + (f" (best {curve.best[1]:.3f})" if curve.best else ""),
            )
            for at, rate in curve.lr_changes:
                ax.axvline(at, color=colour, linestyle=":", linewidth=1)
                ax.annotate(
                    f"lr {rate:.2g}",
                    (at, 1.0),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    rotation=90,
                    va="top",
                    ha="right",
                    color=colour,
                )
            if curve.best is not None:
                ax.plot(*curve.best, marker="*", markersize=12, color=colour, linestyle="none")
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel("loss (nats/char)")
        bits = ax.secondary_yaxis("right", functions=(lambda v: v / math.log(2), lambda v: v * math.log(2)))
        bits.set_ylabel("bits/char")
        ax.grid(True, alpha=0.3)
        ax.spines["top"].set_visible(False)
        ax.legend(fontsize=8, frameon=False)
        ax.set_title(
            "training (dashed) and validation (solid) loss; best validation point starred", fontsize=10
        )
        fig.tight_layout()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return curves


def write_curves(run_dir: str | Path) -> Path:
    """Write `run_dir/curves.png` from its metrics so far (a fraction of a second); a training
    runner can call it at each save and at the end."""
    out = Path(run_dir) / "curves.png"
    plot_curves([run_dir], out)
    return out
