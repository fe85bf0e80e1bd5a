"""Training throughput at the tutorial configuration: charlstm's Trainer vs the tutorial's loop.

2 x 512 LSTM, batch 100 x seq 100, Adam 1e-3, clip 5, dropout 0.5, the bundled novel (V = 83).
Repeats alternate (charlstm, tutorial, charlstm, ...) after one warm-up step each, so a change in
the machine's load hits both alike. Also: this CPU's fp32 matmul peak (torch.mm 2048^2, same
threads), achieved GFLOP/s, peak RSS of each method in its own subprocess, one validation pass of
each, and the share of wall time validation takes under each one's default schedule.
Progress goes to stderr; one JSON object goes to stdout and (not with --quick) docs/bench/train.json.

    python benchmarks/bench_train.py                   # default: 5 repeats of 5 steps, 2 threads
    python benchmarks/bench_train.py --quick           # smoke test, width 128, batch 10 x 50
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from benchutil import finish_json, log, peak_rss_bytes, ratio, set_threads, spread, start_json, write_result
from harness import Method, alternate, matmul_peak_flops, setup_charlstm, timed
from tutorial_baseline import setup as setup_tutorial

from charlstm.data import bundled_text

METHODS = ("charlstm", "tutorial")


def setup(method: str, text: str, args: argparse.Namespace) -> Method:
    """The method at the tutorial's configuration (2 layers, dropout 0.5, Adam 1e-3, clip 5)."""
    if method == "charlstm":
        return setup_charlstm(text, args.hidden, 2, args.batch, args.seq, 1e-3, 0.5, args.seed)
    return setup_tutorial(text, args.hidden, 2, args.batch, args.seq, 1e-3, 0.5, seed=args.seed)


def load_text(args: argparse.Namespace) -> str:
    text = bundled_text()
    return text[:50_000] if args.quick else text


def child(args: argparse.Namespace) -> None:
    """--child METHOD: set up, train --steps steps, report peak RSS (run in a fresh process)."""
    method = setup(args.child, load_text(args), args)
    setup_rss = peak_rss_bytes()
    for _ in range(args.steps + 1):
        method.step(0.0)
    print(json.dumps({"method": args.child, "setup_peak_rss_bytes": setup_rss,
                      "peak_rss_bytes": peak_rss_bytes()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch threads, here and in the children")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per method, alternating")
    ap.add_argument("--steps", type=int, default=5, help="training steps per timed repeat")
    ap.add_argument("--eval-repeats", type=int, default=3, help="timed validation passes per method")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 50k chars, width 128, batch 10 x 50, 2 repeats of 2 steps, mm 512")
    ap.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.batch, args.seq = 128, 10, 50
        args.repeats, args.steps, args.eval_repeats = min(args.repeats, 2), min(args.steps, 2), 1
    set_threads(args.threads)
    if args.child:
        child(args)
        return

    mm_n = 512 if args.quick else 2048
    peaks = [matmul_peak_flops(mm_n) / 1e9]
    log(f"matmul peak {peaks[0]:.1f} GFLOP/s ({mm_n}^2, {args.threads} threads)")
    text = load_text(args)
    methods = {name: setup(name, text, args) for name in METHODS}
    vocab_size = len(set(text))
    chars_per_step = args.batch * args.seq
    # Warm-up (allocator, Adam state, first-call costs), then alternating repeats of --steps steps.
    step_s = alternate({m: lambda m=m: methods[m].step(0.0) for m in METHODS}, args.repeats, args.steps, log)
    rates = {m: [args.steps * chars_per_step / s for s in step_s[m]] for m in METHODS}
    val_times: dict[str, list[float]] = {m: [] for m in METHODS}  # a pass is long: no warm-up
    for r in range(args.eval_repeats):
        for m in METHODS:
            val_times[m].append(timed(methods[m].evaluate))
            log(f"val pass {r + 1}/{args.eval_repeats} {m}: {val_times[m][-1]:.2f}s")
    peaks.append(matmul_peak_flops(mm_n) / 1e9)
    peak = max(peaks)

    result: dict[str, Any] = {
        "config": {"hidden": args.hidden, "layers": 2, "batch": args.batch, "seq": args.seq,
                   "vocab_size": vocab_size, "lr": 1e-3, "clip": 5.0, "dropout": 0.5, "text_chars": len(text),
                   "steps_per_repeat": args.steps, "repeats": args.repeats, "eval_repeats": args.eval_repeats,
                   "seed": args.seed, "quick": args.quick},
        "matmul_peak_gflops": round(peak, 1), "matmul_n": mm_n,
        "matmul_peak_runs": [round(p, 1) for p in peaks],
    }
    log(f"peak RSS of each method ({args.steps + 1} steps, each in its own process)...")
    common = ["--threads", args.threads, "--steps", args.steps, "--hidden", args.hidden,
              "--batch", args.batch, "--seq", args.seq, "--seed", args.seed]
    common += ["--quick"] if args.quick else []
    procs = {m: start_json([__file__, "--child", m, *common], args.threads) for m in METHODS}
    for method in METHODS:
        median_rate = statistics.median(rates[method])
        flops = methods[method].flops_per_char or 0
        achieved = median_rate * flops / 1e9
        step_s = chars_per_step / median_rate
        val_s = statistics.median(val_times[method])
        rss = finish_json(procs[method], timeout=1800)
        result[method] = {
            "chars_per_sec": spread(rates[method]),
            "step_s_median": round(step_s, 4),
            "flops_per_char": flops,
            "gflops": round(achieved, 2),
            "fraction_of_peak": round(achieved / peak, 4),
            "val_pass_s": spread(val_times[method], 3),
            "eval_interval": methods[method].eval_interval,
            "eval_fraction_of_wall": round(val_s / (val_s + methods[method].eval_interval * step_s), 4),
            "peak_rss_mb": round(rss["peak_rss_bytes"] / 2**20, 1),
            "setup_peak_rss_mb": round(rss["setup_peak_rss_bytes"] / 2**20, 1),
        }
    a, b = result["charlstm"], result["tutorial"]
    result["speedup_chars_per_sec"] = ratio(a["chars_per_sec"]["median"], b["chars_per_sec"]["median"])
    result["speedup_val_pass"] = ratio(b["val_pass_s"]["median"], a["val_pass_s"]["median"])
    write_result(result, "train", args.threads, args.quick)


if __name__ == "__main__":
    main()
