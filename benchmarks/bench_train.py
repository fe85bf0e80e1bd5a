"""Training throughput at the tutorial configuration: charlstm's Trainer vs the tutorial's loop.

2 x 512 LSTM, batch 100 x seq 100, Adam 1e-3, clip 5, dropout 0.5, the bundled novel (V = 83).
Repeats alternate (charlstm, tutorial, charlstm, ...) after one warm-up step each, so a change in
the machine's load hits both alike. Also: this CPU's fp32 matmul peak (torch.mm 2048^2, same
threads), achieved GFLOP/s, peak RSS of each method in its own subprocess, one validation pass of
each, and the share of wall time validation takes under each one's default schedule.
Progress goes to stderr; one JSON object goes to stdout.

    python benchmarks/bench_train.py                   # default: 5 repeats of 5 steps, 2 threads
    python benchmarks/bench_train.py --quick           # smoke test, width 128, batch 10 x 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from benchutil import (
    finish_json,
    log,
    machine,
    matmul_peak_gflops,
    peak_rss_bytes,
    ratio,
    set_threads,
    spread,
    start_json,
)
from torch import nn
from tutorial_baseline import CharRNN as TutorialRNN
from tutorial_baseline import encode_text, get_batches, train_step, validate

from charlstm.config import ModelConfig, TrainConfig
from charlstm.data import StreamBatches, bundled_text, encode_corpus, split_train_val
from charlstm.evaluation import HeldOut
from charlstm.model import CharRNN
from charlstm.trainer import Trainer
from charlstm.vocab import Vocab

METHODS = ("charlstm", "tutorial")
TUTORIAL_EVAL_EVERY = 10  # the tutorial validates every print_every = 10 steps


@dataclass
class Bench:
    """One method set up on the text: `step()` trains one window, `evaluate()` one full val pass."""

    step: Callable[[], None]
    evaluate: Callable[[], float]
    eval_interval: int
    input_size: int


def setup_charlstm(text: str, args: argparse.Namespace) -> Bench:
    vocab = Vocab.from_text(text)
    train_ids, val_ids = split_train_val(encode_corpus(text, vocab), 0.1)
    config = TrainConfig(batch_size=args.batch, seq_len=args.seq, learning_rate=1e-3, grad_clip=5.0,
                         device="cpu", seed=args.seed)
    model_config = ModelConfig(vocab_size=len(vocab), hidden_size=args.hidden, num_layers=2, dropout=0.5)
    torch.manual_seed(args.seed)
    batches = StreamBatches(train_ids, args.batch, args.seq)
    trainer = Trainer(CharRNN(model_config), config, batches,
                      HeldOut(val_ids, args.batch, args.seq, "cpu"))
    position = iter(range(10**12))

    def step() -> None:
        window = batches[next(position) % len(batches)]
        trainer.train_step(window.inputs, window.targets)

    return Bench(step, trainer.evaluate, trainer.eval_interval, model_config.input_size)


def setup_tutorial(text: str, args: argparse.Namespace) -> Bench:
    chars, encoded = encode_text(text)
    cut = int(len(encoded) * 0.9)
    data, val_data = encoded[:cut], encoded[cut:]
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    net = TutorialRNN(chars, n_hidden=args.hidden, n_layers=2, drop_prob=0.5)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    criterion = nn.CrossEntropyLoss()

    def windows() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:  # epochs, as the tutorial's loop walks them (it resets h at each; harmless here)
            yield from get_batches(data, args.batch, args.seq)

    source = windows()
    hidden = [net.init_hidden(args.batch)]

    def step() -> None:
        x, y = next(source)
        _, hidden[0] = train_step(net, opt, criterion, x, y, hidden[0], clip=5.0)

    return Bench(step, lambda: validate(net, val_data, args.batch, args.seq, criterion), TUTORIAL_EVAL_EVERY,
                 len(chars))


def load_text(args: argparse.Namespace) -> str:
    text = bundled_text()
    return text[:50_000] if args.quick else text


def flops_per_char(input_size: int, hidden: int, vocab: int, layers: int = 2) -> int:
    """Training FLOPs per character: forward 2*4H*(in+H) per layer plus the 2*H*V head, x3 for backward."""
    forward = sum(2 * 4 * hidden * ((input_size if k == 0 else hidden) + hidden) for k in range(layers))
    return 3 * (forward + 2 * hidden * vocab)


def child(args: argparse.Namespace) -> None:
    """--child METHOD: set up, train --steps steps, report peak RSS (run in a fresh process)."""
    bench = (setup_charlstm if args.child == "charlstm" else setup_tutorial)(load_text(args), args)
    setup_rss = peak_rss_bytes()
    for _ in range(args.steps + 1):
        bench.step()
    print(json.dumps({"method": args.child, "setup_peak_rss_bytes": setup_rss,
                      "peak_rss_bytes": peak_rss_bytes()}))


def timed(fn: Callable[[], Any], times: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(times):
        fn()
    return time.perf_counter() - t0


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
    peaks = [matmul_peak_gflops(mm_n)]
    log(f"matmul peak {peaks[0]:.1f} GFLOP/s ({mm_n}^2, {args.threads} threads)")
    text = load_text(args)
    benches = {"charlstm": setup_charlstm(text, args), "tutorial": setup_tutorial(text, args)}
    vocab_size = len(set(text))
    chars_per_step = args.batch * args.seq
    for bench in benches.values():
        bench.step()  # warm-up: allocator, Adam state, first-call costs
    rates: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.repeats):
        for method in METHODS:
            seconds = timed(benches[method].step, args.steps)
            rates[method].append(args.steps * chars_per_step / seconds)
            log(f"repeat {r + 1}/{args.repeats} {method}: {rates[method][-1]:,.0f} chars/s")
    val_times: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(args.eval_repeats):
        for method in METHODS:
            val_times[method].append(timed(benches[method].evaluate))
            log(f"val pass {r + 1}/{args.eval_repeats} {method}: {val_times[method][-1]:.2f}s")
    peaks.append(matmul_peak_gflops(mm_n))
    peak = max(peaks)

    result: dict[str, Any] = {
        "config": {"hidden": args.hidden, "layers": 2, "batch": args.batch, "seq": args.seq,
                   "vocab_size": vocab_size, "lr": 1e-3, "clip": 5.0, "dropout": 0.5, "text_chars": len(text),
                   "steps_per_repeat": args.steps, "repeats": args.repeats, "eval_repeats": args.eval_repeats,
                   "seed": args.seed, "quick": args.quick, **machine(args.threads)},
        "matmul_peak_gflops": round(peak, 1), "matmul_n": mm_n,
        "matmul_peak_runs": [round(p, 1) for p in peaks],
    }
    log(f"peak RSS of each method ({args.steps + 1} steps, each in its own process)...")
    common = ["--threads", args.threads, "--steps", args.steps, "--hidden", args.hidden,
              "--batch", args.batch, "--seq", args.seq, "--seed", args.seed]
    common += ["--quick"] if args.quick else []
    procs = {m: start_json([__file__, "--child", m, *common], args.threads) for m in METHODS}
    for method in METHODS:
        bench = benches[method]
        median_rate = statistics.median(rates[method])
        flops = flops_per_char(bench.input_size, args.hidden, vocab_size)
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
            "eval_interval": bench.eval_interval,
            "eval_fraction_of_wall": round(val_s / (val_s + bench.eval_interval * step_s), 4),
            "peak_rss_mb": round(rss["peak_rss_bytes"] / 2**20, 1),
            "setup_peak_rss_mb": round(rss["setup_peak_rss_bytes"] / 2**20, 1),
        }
    a, b = result["charlstm"], result["tutorial"]
    result["speedup_chars_per_sec"] = ratio(a["chars_per_sec"]["median"], b["chars_per_sec"]["median"])
    result["speedup_val_pass"] = ratio(b["val_pass_s"]["median"], a["val_pass_s"]["median"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
