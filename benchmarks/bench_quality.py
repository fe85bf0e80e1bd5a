"""Time to quality: validation loss against wall time for the tutorial, a small GPT and charlstm.

Runs benchmarks/tutorial_baseline.py, benchmarks/gpt_baseline.py and `charlstm train` with its
defaults (the auto preset, on the CPU) one after the other, each for --minutes in its own process
with the same thread count, and collects their (elapsed_s, val_loss) curves. Every curve's
elapsed_s is wall time since training started and includes validation (and, for charlstm, saving
checkpoints); process start-up and reading the text are not counted for any of them.
Progress goes to stderr; one JSON object goes to stdout (and to --out-json); the plot goes to
--plot-out unless --no-plot.

    python benchmarks/bench_quality.py                     # 3 x 10 minutes, 2 threads
    python benchmarks/bench_quality.py --minutes 2 --methods charlstm tutorial
    python benchmarks/bench_quality.py --quick             # smoke test: 20k chars, 20 steps each
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchutil import HERE, ROOT, bundled_text_light, child_env, log, run_json

METHODS = ("tutorial", "gpt", "charlstm")
MILESTONES_MIN = (1, 2, 5, 10, 20, 30)
TARGET_LOSS = 2.0
CLI = "import sys, torch; torch.set_num_threads(int(sys.argv[1])); from charlstm.cli import main; " \
      "sys.exit(main(sys.argv[2:]))"


Curve = list[dict[str, Any]]


def run_baseline(name: str, args: argparse.Namespace, tmp: Path) -> tuple[Curve, dict[str, Any]]:
    curve_path = tmp / f"{name}_curve.json"
    script = HERE / ("tutorial_baseline.py" if name == "tutorial" else "gpt_baseline.py")
    cmd: list[Any] = [script, "--minutes", args.minutes, "--threads", args.threads, "--seed", args.seed,
                      "--curve-out", curve_path, *(["--quick"] if args.quick else [])]
    out = run_json(cmd, args.threads, timeout=args.minutes * 90 + 300)
    keep = ("steps", "wall_s", "train_chars_per_sec", "val_passes", "val_pass_s", "eval_fraction_of_wall")
    summary = {k: out.get(k) for k in keep}
    config = out["config"]
    summary["params"] = config["params"]
    if name == "tutorial":
        summary["label"] = (f"tutorial char-rnn (2x{config['n_hidden']} LSTM, "
                            f"batch {config['batch_size']}x{config['seq_length']})")
    else:
        summary["label"] = f"nanoGPT-style char transformer ({config['n_layer']}x{config['n_embd']})"
    return json.loads(curve_path.read_text(encoding="utf-8")), summary


def run_charlstm(args: argparse.Namespace, tmp: Path) -> tuple[Curve, dict[str, Any]]:
    out_dir = tmp / "charlstm_run"
    minutes = method_minutes("charlstm", args)
    cmd: list[Any] = [sys.executable, "-c", CLI, args.threads, "train", "--out", out_dir, "--device", "cpu",
                      "--max-time", minutes * 60, "--seed", args.seed]
    if args.quick:  # the baselines' --quick: 20k characters, 20 steps, validation every 10
        data = tmp / "quick.txt"
        data.write_text(bundled_text_light()[:20_000], encoding="utf-8")
        cmd += [data, "--max-steps", 20, "--eval-interval", 10]
    proc = subprocess.run([str(c) for c in cmd], stdout=sys.stderr, env=child_env(args.threads), cwd=ROOT,
                          timeout=minutes * 90 + 300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"charlstm train exited with {proc.returncode}")
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    saved = json.loads((out_dir / "last" / "config.json").read_text(encoding="utf-8"))
    training = saved.get("training", {})
    model, config = saved.get("model", {}), training.get("config", {})
    label = (f"charlstm defaults (auto: {model.get('num_layers')}x{model.get('hidden_size')} "
             f"{model.get('cell', '').upper()}, batch {config.get('batch_size')}x{config.get('seq_len')})")
    summary = {"label": label, "steps": training.get("step"), "wall_s": training.get("elapsed_s"),
               "train_chars_per_sec": records[-1]["chars_per_sec"] if records else None,
               "val_passes": len(records), "model": model,
               "eval_interval_steps": records[0]["step"] if records else None,
               "config": {k: config.get(k) for k in
                          ("batch_size", "seq_len", "learning_rate", "lr_patience", "stop_patience")}}
    return records, summary


def method_minutes(name: str, args: argparse.Namespace) -> float:
    """charlstm may run longer than the baselines (one run then also gives the long-run figure)."""
    return args.charlstm_minutes if name == "charlstm" and args.charlstm_minutes else args.minutes


def analyse(curve: Curve, minutes: float) -> dict[str, Any]:
    points = [{"step": p["step"], "elapsed_s": p["elapsed_s"], "val_loss": p["val_loss"]} for p in curve]
    at: dict[str, float | None] = {}
    for m in MILESTONES_MIN:
        before = [p["val_loss"] for p in points if p["elapsed_s"] <= m * 60]
        at[str(m)] = before[-1] if before and m <= minutes else None
    return {
        "val_loss_at_minutes": at,
        "time_to_val_2_0_s": next((p["elapsed_s"] for p in points if p["val_loss"] <= TARGET_LOSS), None),
        "best_val_loss": min((p["val_loss"] for p in points), default=None),
        "final_val_loss": points[-1]["val_loss"] if points else None,
        "curve": points,
    }


def plot(methods: dict[str, dict[str, Any]], threads: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for data in methods.values():
        xs, ys = [p["elapsed_s"] / 60 for p in data["curve"]], [p["val_loss"] for p in data["curve"]]
        ax.plot(xs, ys, marker=".", markersize=3, label=data["summary"]["label"])
    ax.axhline(TARGET_LOSS, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall time (minutes, validation included)")
    ax.set_ylabel("validation loss (nats/char)")
    plural = "s" if threads != 1 else ""
    ax.set_title(f"Time to quality on {os.cpu_count()} CPU cores ({threads} torch thread{plural} each)")
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per method")
    ap.add_argument("--charlstm-minutes", type=float, help="charlstm's budget, if not --minutes (e.g. 30)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--out-json", type=Path, help="default: docs/time_to_quality.json (none with --quick)")
    ap.add_argument("--plot-out", type=Path, help="default: docs/time_to_quality.png (none with --quick)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: each method 20 steps on 20k chars (at most 0.5 min); writes no docs/")
    args = ap.parse_args()
    if args.quick:
        args.minutes = min(args.minutes, 0.5)
        args.charlstm_minutes = None
    else:
        args.out_json = args.out_json or ROOT / "docs" / "time_to_quality.json"
        args.plot_out = args.plot_out or ROOT / "docs" / "time_to_quality.png"

    methods: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        for name in args.methods:
            log(f"--- {name}: {method_minutes(name, args)} min, {args.threads} threads")
            if name == "charlstm":
                curve, summary = run_charlstm(args, Path(tmp))
            else:
                curve, summary = run_baseline(name, args, Path(tmp))
            methods[name] = {"summary": summary, **analyse(curve, method_minutes(name, args))}
            log(f"{name}: best val {methods[name]['best_val_loss']}, "
                f"val <= {TARGET_LOSS} at {methods[name]['time_to_val_2_0_s']} s")
    plotted = None
    if args.plot_out and not args.no_plot:
        plot(methods, args.threads, args.plot_out)
        plotted = str(args.plot_out)
    result = {"config": {"minutes": args.minutes, "charlstm_minutes": method_minutes("charlstm", args),
                         "threads": args.threads, "seed": args.seed,
                         "cpu_count": os.cpu_count(), "quick": args.quick, "target_loss": TARGET_LOSS},
              "methods": methods, "plot": plotted}
    if args.out_json:
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
