"""Time to quality: validation loss against wall time for the tutorial, a small GPT and charlstm.

Runs, one after the other, each in its own process with the same thread count and for --minutes:
  tutorial       the tutorial's method at its own configuration (benchmarks/tutorial_baseline.py)
  tutorial_auto  the tutorial's method at the sizes charlstm's auto preset picks for this corpus on a
                 CPU, validating after as many training characters as the tutorial does
  gpt            a small transformer with nanoGPT's CPU recipe (benchmarks/gpt_baseline.py)
  charlstm       `charlstm.train()` with its defaults (the auto preset) on the CPU; besides its long run
                 (the curve), one run told each shorter budget (--budgets, its --max-time), since the
                 default learning rate decays over the time a run is given
Every method's clock includes its own validation during training; process start-up and reading the
text are not counted. The reported curve is a full validation pass over the held-out split at the
same wall-time points for every method (benchmarks/harness.py: weights copied at each point, the copy
excluded from the clock, scored after training).
Progress goes to stderr; one JSON object goes to stdout and (not with --quick) docs/bench/quality.json;
then `python benchmarks/report.py` renders the page and the plot.

    python benchmarks/bench_quality.py --minutes 10     # what make bench-quality runs
    python benchmarks/bench_quality.py --minutes 2 --methods charlstm tutorial_auto
    python benchmarks/bench_quality.py --quick             # smoke test: 20k chars, 20 steps each
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from benchutil import auto_cpu_sizes, bundled_text_light, log, run_json, set_threads, write_result

METHODS = ("tutorial", "tutorial_auto", "gpt", "charlstm")
MILESTONES_MIN = (1, 2, 5, 10, 20, 30)
BUDGETS_MIN = (1, 2, 5)  # charlstm's runs told a budget, besides its long run
TARGET_LOSS = 2.0
TUTORIAL_CHARS_PER_EVAL = 10 * 100 * 100  # the tutorial validates every 10 steps of 100 x 100
CURVE_KIND = ("a full validation pass over the held-out split at the same wall-time points for every "
              "method (scored after training; not in any method's clock)")
QUICK_STEPS = 20


def method_minutes(name: str, args: argparse.Namespace) -> float:
    """charlstm may run longer than the baselines (one run then also gives the long-run figure)."""
    return args.charlstm_minutes if name == "charlstm" and args.charlstm_minutes else args.minutes


def load_text(quick: bool) -> str:
    text = bundled_text_light()
    return text[:20_000] if quick else text


def child_baseline(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import gpt_baseline
    import tutorial_baseline
    from harness import train_for

    text = load_text(args.quick)
    if name == "gpt":
        method = gpt_baseline.setup(text, args.seed, 10 if args.quick else 250)
        shape = f"{method.config['n_layer']}x{method.config['n_embd']}"
        label = f"small transformer, nanoGPT's CPU recipe ({shape})"
    else:
        size = {"hidden": 512, "layers": 2, "batch": 100, "seq": 100, "learning_rate": 0.001, "dropout": 0.5}
        if name == "tutorial_auto":
            size = auto_cpu_sizes(text)
        if args.quick:
            size.update(hidden=32, batch=8, seq=16)
        every = 10 if args.quick else max(1, round(TUTORIAL_CHARS_PER_EVAL / (size["batch"] * size["seq"])))
        method = tutorial_baseline.setup(text, print_every=every, seed=args.seed, **size)
        where = "at auto's sizes" if name == "tutorial_auto" else "at its own sizes"
        label = (f"tutorial's method {where} ({size['layers']}x{size['hidden']} LSTM, batch "
                 f"{size['batch']}x{size['seq']}, lr {size['learning_rate']:g}, validation every "
                 f"{every} steps)")
    max_steps = QUICK_STEPS if args.quick else 10**9
    run = train_for(method, method_minutes(name, args) * 60, max_steps, log)
    return {"label": label, "config": method.config, **run}


def child_charlstm(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    return train_charlstm(method_minutes("charlstm", args) * 60, args.seed, tmp, args.quick)


def train_charlstm(seconds: float, seed: int, tmp: Path, quick: bool = False,
                   options: dict[str, Any] | None = None) -> dict[str, Any]:
    """`charlstm.train()` on the bundled novel told `seconds` (its defaults, less `options`), with
    the weights copied at the wall-time points."""
    from harness import Snapshots

    import charlstm
    from charlstm.trainer import Hooks, Trainer

    snapshots = Snapshots(seconds)
    seen: list[Trainer] = []

    class SnapshotHooks(Hooks):
        def on_step(self, trainer: Trainer, loss: Any) -> None:
            if not seen:
                seen.append(trainer)
            elapsed = trainer.policy.elapsed() - snapshots.copy_s
            if snapshots.due(elapsed):
                snapshots.take(trainer.progress.step, elapsed, trainer.model)

    paths: list[Path] = []
    options = dict(options or {})
    if quick:
        paths = [tmp / "quick.txt"]
        paths[0].write_text(load_text(True), encoding="utf-8")
        options.update(max_steps=QUICK_STEPS, eval_interval=10)
    out = charlstm.train(paths, tmp / "run", device="cpu", max_time=seconds, seed=seed,
                         hooks=SnapshotHooks(), **options)
    trainer = seen[0]
    progress = trainer.progress
    snapshots.take(progress.step, trainer.policy.elapsed() - snapshots.copy_s, trainer.model)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    model, config = trainer.model.config, trainer.config
    chars_per_step = config.batch_size * config.seq_len
    steps = [0] + [r["step"] for r in records]
    # Training time alone, from each interval's characters and speed; the rest is validating and saving.
    intervals = zip(steps, steps[1:], records, strict=False)
    train_s = sum((b - a) * chars_per_step / r["chars_per_sec"] for a, b, r in intervals)
    wall = progress.elapsed_s
    return {
        "label": (f"charlstm defaults (auto: {model.num_layers}x{model.hidden_size} {model.cell.upper()}, "
                  f"batch {config.batch_size}x{config.seq_len}, lr {config.learning_rate:g}, "
                  f"dropout {model.dropout:g})"),
        "config": {"model": model.to_dict(), "train": config.to_dict(),
                   "eval_interval": trainer.eval_interval},
        "steps": progress.step, "wall_s": round(wall, 3), "train_s": round(train_s, 3),
        "train_chars_per_sec": round(progress.step * chars_per_step / train_s, 1) if train_s else None,
        "val_passes": len(records), "eval_fraction_of_wall": round(1 - train_s / wall, 4) if wall else None,
        "snapshot_copy_s": round(snapshots.copy_s, 4), "params": trainer.model.num_parameters(),
        "own_curve": [{k: r[k] for k in ("step", "elapsed_s", "train_loss", "val_loss")} for r in records],
        "curve": snapshots.curve(trainer.model, trainer.evaluate),
    }  # fmt: skip


def analyse(run: dict[str, Any], minutes: float) -> dict[str, Any]:
    """Milestones read off the full-pass curve: the point taken at each minute mark (the run's last
    point for the mark that ends it)."""
    curve = run["curve"]
    at: dict[str, float | None] = {}
    for m in MILESTONES_MIN:
        found = [p["val_loss"] for p in curve if m * 60 in p["points_s"]]
        if m == minutes and curve:
            found = [curve[-1]["val_loss"]]
        at[str(m)] = found[0] if found else None
    keep = ("label", "steps", "wall_s", "train_s", "train_chars_per_sec", "val_passes",
            "eval_fraction_of_wall", "snapshot_copy_s", "params", "config")
    return {
        "summary": {k: run.get(k) for k in keep},
        "val_loss_at_minutes": at,
        "time_to_val_2_0_s": next((p["elapsed_s"] for p in curve if p["val_loss"] <= TARGET_LOSS), None),
        "own_time_to_val_2_0_s": next((p["elapsed_s"] for p in run["own_curve"]
                                       if p["val_loss"] <= TARGET_LOSS), None),
        "best_val_loss": min((p["val_loss"] for p in curve), default=None),
        "final_val_loss": curve[-1]["val_loss"] if curve else None,
        "curve": curve,
        "own_curve": run["own_curve"],
    }


def budget_entry(minutes: float, analysed: dict[str, Any]) -> dict[str, Any]:
    """What a run told `minutes` reached: its last full pass (at the end of its budget)."""
    summary = analysed["summary"]
    return {"minutes": minutes, "final_val_loss": analysed["final_val_loss"],
            "best_val_loss": analysed["best_val_loss"], "time_to_val_2_0_s": analysed["time_to_val_2_0_s"],
            "steps": summary["steps"], "wall_s": summary["wall_s"],
            "eval_fraction_of_wall": summary["eval_fraction_of_wall"]}


def run_child(name: str, minutes: float, args: argparse.Namespace) -> dict[str, Any]:
    log(f"--- {name}: {minutes} min, {args.threads} threads")
    cmd: list[Any] = [__file__, "--child", name, "--minutes", args.minutes, "--threads", args.threads,
                      "--seed", args.seed, *(["--quick"] if args.quick else [])]
    if name == "charlstm":
        cmd += ["--charlstm-minutes", minutes]
    # The full passes at the wall-time points come after training: allow for them generously.
    return run_json(cmd, args.threads, timeout=minutes * 60 * 3 + 600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget per method")
    ap.add_argument("--charlstm-minutes", type=float, help="charlstm's budget, if not --minutes (e.g. 30)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--budgets", nargs="*", type=float, default=list(BUDGETS_MIN),
                    help="minutes: charlstm also runs told each budget shorter than its own (default 1 2 5)")
    ap.add_argument("--out-json", type=Path, help="default: docs/bench/quality.json (none with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke test: each method {QUICK_STEPS} steps of a tiny model on 20k chars")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick and not args.child:  # the parent passes each child its minutes
        args.minutes, args.charlstm_minutes, args.budgets = min(args.minutes, 0.5), None, [0.1]
    if args.child:
        set_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
            if args.child == "charlstm":
                run = child_charlstm(args, Path(tmp))
            else:
                run = child_baseline(args.child, args)
        print(json.dumps(run))
        return

    methods: dict[str, dict[str, Any]] = {}
    budgets: dict[str, dict[str, Any]] = {}
    for name in args.methods:
        minutes = method_minutes(name, args)
        methods[name] = analyse(run_child(name, minutes, args), minutes)
        log(f"{name}: best val {methods[name]['best_val_loss']}, "
            f"val <= {TARGET_LOSS} at {methods[name]['time_to_val_2_0_s']} s")
        if name == "charlstm":
            for budget in sorted(b for b in args.budgets if b < minutes):
                budgets[f"{budget:g}"] = budget_entry(budget, analyse(run_child(name, budget, args), budget))
                log(f"charlstm told {budget:g} min: {budgets[f'{budget:g}']['final_val_loss']}")
            budgets[f"{minutes:g}"] = budget_entry(minutes, methods[name])
    result = {"config": {"minutes": args.minutes, "charlstm_minutes": method_minutes("charlstm", args),
                         "threads": args.threads, "seed": args.seed, "quick": args.quick,
                         "target_loss": TARGET_LOSS},
              "curve_kind": CURVE_KIND, "methods": methods, "charlstm_budgets": budgets}
    write_result(result, "quality", args.threads, args.quick and not args.out_json, args.out_json)


if __name__ == "__main__":
    main()
