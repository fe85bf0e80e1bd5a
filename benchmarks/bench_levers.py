"""What each default of `--preset auto` on a CPU buys: charlstm told the same budget with one choice changed.

Each variant is `charlstm.train()` on the bundled novel with `--max-time` the budget, the defaults
less the options named, in its own process, one after the other, with the same thread count. The
curve is a full validation pass at the same wall-time points as bench_quality.py (weights copied at
each point, scored after training, not in the clock); each run's own validation is in its clock.
Prints one JSON object, also written (not with --quick) to docs/bench/levers.json (levers_10min.json
for --minutes 10, whose table sets the variants beside bench_quality.py's 10-minute run); then
`python benchmarks/report.py` renders the table in docs/benchmarks.md.

    python benchmarks/bench_levers.py                 # 1 minute per variant, about 15 minutes
    python benchmarks/bench_levers.py --minutes 10 --variants hidden_256 dropout_0   # levers_10min.json
    python benchmarks/bench_levers.py --quick         # smoke test: 20 steps of a tiny model each
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench_quality import analyse, train_charlstm
from benchutil import log, run_json, set_threads, write_result

# name -> (what changes, the options given to charlstm.train beside the budget)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "defaults": ("the defaults", {}),
    "before": ("the defaults before the levers: 2 x 256, batch 32 x 64, lr 0.003, constant rate, dropout 0",
               {"hidden_size": 256, "batch_size": 32, "learning_rate": 0.003, "lr_decay": "none",
                "dropout": 0.0}),
    "hidden_256": ("2 x 256 at lr 0.005 (the CPU's size before 2 x 384)",
                   {"hidden_size": 256, "learning_rate": 0.005}),
    "batch_32": ("batch 32 x 64", {"batch_size": 32}),
    "lr_0.003": ("learning rate 0.003", {"learning_rate": 0.003}),
    "no_decay": ("a constant rate (--lr-decay none)", {"lr_decay": "none"}),
    "warmup_100": ("a warm-up over 100 steps", {"warmup_steps": 100}),
    "dropout_0": ("dropout 0", {"dropout": 0.0}),
    "dropout_0.25": ("dropout 0.25", {"dropout": 0.25}),
    "lr_final_0.1": ("the rate decays to a tenth, not to zero (nanoGPT's floor)", {"lr_final": 0.1}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0, help="the budget each variant is told")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--quick", action="store_true", help="smoke test: 20 steps of a tiny model on 20k chars")
    ap.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick and not args.child:
        args.minutes = min(args.minutes, 0.2)
    if args.child:
        set_threads(args.threads)
        with tempfile.TemporaryDirectory(prefix="bench_levers_") as tmp:
            run = train_charlstm(args.minutes * 60, args.seed, Path(tmp), args.quick, VARIANTS[args.child][1])
        print(json.dumps(run))
        return
    variants: dict[str, Any] = {}
    for name in args.variants:
        log(f"--- {name}: {args.minutes} min, {args.threads} threads")
        cmd: list[Any] = [__file__, "--child", name, "--minutes", args.minutes, "--threads", args.threads,
                          "--seed", args.seed, *(["--quick"] if args.quick else [])]
        run = run_json(cmd, args.threads, timeout=args.minutes * 60 * 3 + 600)
        analysed = analyse(run, args.minutes)
        what, options = VARIANTS[name]
        if not options:  # the defaults: say what they were on this run
            what = analysed["summary"]["label"].replace("charlstm defaults", "the defaults")
        variants[name] = {"what": what, "options": options, "label": analysed["summary"]["label"],
                          "steps": analysed["summary"]["steps"],
                          "eval_fraction_of_wall": analysed["summary"]["eval_fraction_of_wall"],
                          "time_to_val_2_0_s": analysed["time_to_val_2_0_s"],
                          "val_loss_at_1_min": analysed["val_loss_at_minutes"]["1"],
                          "final_val_loss": analysed["final_val_loss"], "curve": analysed["curve"]}
        entry = variants[name]
        log(f"{name}: {entry['final_val_loss']} at the end, 2.0 at {entry['time_to_val_2_0_s']} s")
    result = {"config": {"minutes": args.minutes, "threads": args.threads, "seed": args.seed,
                         "quick": args.quick}, "variants": variants}
    write_result(result, result_name(args.minutes), args.threads, args.quick)


def result_name(minutes: float) -> str:
    """docs/bench/levers.json for the 1-minute table; a longer budget has its own file and table."""
    return "levers" if minutes == 1 else f"levers_{minutes:g}min"


if __name__ == "__main__":
    main()
