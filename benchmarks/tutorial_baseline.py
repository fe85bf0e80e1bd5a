"""Yardstick: the well-known "Character-Level LSTM in PyTorch" tutorial (Udacity, after Karpathy's char-rnn).

A faithful re-implementation of the tutorial's code paths (numpy one-hot per batch, its get_batches
generator, CharRNN, its train loop with a full validation pass every 10 steps *without* torch.no_grad, and
its per-character predict/sample), instrumented to measure speed and the validation curve.
Progress goes to stderr; one JSON object goes to stdout at the end.

    python benchmarks/tutorial_baseline.py --minutes 10 --threads 2 --curve-out curve.json
    python benchmarks/tutorial_baseline.py --sample-only        # sampling speed with random weights
    python benchmarks/tutorial_baseline.py --quick              # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charlstm.data import bundled_text

Hidden = tuple[torch.Tensor, torch.Tensor]


def one_hot_encode(arr: np.ndarray, n_labels: int) -> np.ndarray:
    one_hot = np.zeros((arr.size, n_labels), dtype=np.float32)
    one_hot[np.arange(one_hot.shape[0]), arr.flatten()] = 1.0
    return one_hot.reshape((*arr.shape, n_labels))


def get_batches(arr: np.ndarray, batch_size: int, seq_length: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (x, y) windows of batch_size x seq_length, exactly as the tutorial does."""
    batch_size_total = batch_size * seq_length
    n_batches = len(arr) // batch_size_total
    arr = arr[: n_batches * batch_size_total]
    arr = arr.reshape((batch_size, -1))
    for n in range(0, arr.shape[1], seq_length):
        x = arr[:, n : n + seq_length]
        y = np.zeros_like(x)
        try:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, n + seq_length]
        except IndexError:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, 0]
        yield x, y


class CharRNN(nn.Module):
    def __init__(self, tokens: tuple[str, ...], n_hidden: int = 512, n_layers: int = 2, drop_prob: float = 0.5
                 ) -> None:
        super().__init__()
        self.n_layers, self.n_hidden = n_layers, n_hidden
        self.chars = tokens
        self.int2char = dict(enumerate(self.chars))
        self.char2int = {ch: ii for ii, ch in self.int2char.items()}
        self.lstm = nn.LSTM(len(self.chars), n_hidden, n_layers, dropout=drop_prob, batch_first=True)
        self.dropout = nn.Dropout(drop_prob)
        self.fc = nn.Linear(n_hidden, len(self.chars))

    def forward(self, x: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, Hidden]:
        r_output, hidden = self.lstm(x, hidden)
        out = self.dropout(r_output)
        out = out.contiguous().view(-1, self.n_hidden)
        return self.fc(out), hidden

    def init_hidden(self, batch_size: int) -> Hidden:
        weight = next(self.parameters()).data
        return (weight.new(self.n_layers, batch_size, self.n_hidden).zero_(),
                weight.new(self.n_layers, batch_size, self.n_hidden).zero_())


def predict(net: CharRNN, char: str, h: Hidden, top_k: int | None = None) -> tuple[str, Hidden]:
    """One character in, one sampled character out (the tutorial's predict; no torch.no_grad there either)."""
    x = one_hot_encode(np.array([[net.char2int[char]]]), len(net.chars))
    inputs = torch.from_numpy(x)
    h = tuple([each.data for each in h])  # type: ignore[assignment]
    out, h = net(inputs, h)
    p = F.softmax(out, dim=1).data
    if top_k is None:
        top_ch = np.arange(len(net.chars))
    else:
        p, top_idx = p.topk(top_k)
        top_ch = top_idx.numpy().squeeze()
    p_np = p.numpy().squeeze()
    choice = np.random.choice(top_ch, p=p_np / p_np.sum())
    return net.int2char[int(choice)], h


def sample(net: CharRNN, size: int, prime: str = "The", top_k: int | None = None) -> str:
    net.eval()
    chars = list(prime)
    h = net.init_hidden(1)
    for ch in prime:
        char, h = predict(net, ch, h, top_k=top_k)
    chars.append(char)
    for _ in range(size):
        char, h = predict(net, chars[-1], h, top_k=top_k)
        chars.append(char)
    return "".join(chars)


def validate(net: CharRNN, val_data: np.ndarray, batch_size: int, seq_length: int, criterion: nn.Module
             ) -> float:
    """The tutorial's validation pass: eval mode, fresh hidden, no torch.no_grad, mean of per-batch losses."""
    val_h = net.init_hidden(batch_size)
    val_losses = []
    net.eval()
    for x, y in get_batches(val_data, batch_size, seq_length):
        inputs, targets = torch.from_numpy(one_hot_encode(x, len(net.chars))), torch.from_numpy(y)
        val_h = tuple([each.data for each in val_h])  # type: ignore[assignment]
        output, val_h = net(inputs, val_h)
        val_losses.append(criterion(output, targets.view(batch_size * seq_length)).item())
    net.train()
    return float(np.mean(val_losses))


def train_step(net: CharRNN, opt: torch.optim.Optimizer, criterion: nn.Module, x: np.ndarray, y: np.ndarray,
               h: Hidden, clip: float = 5.0) -> tuple[torch.Tensor, Hidden]:
    """One step of the tutorial's loop: one-hot the batch, detach h, forward, backward, clip, Adam."""
    inputs, targets = torch.from_numpy(one_hot_encode(x, len(net.chars))), torch.from_numpy(y)
    h = tuple([each.data for each in h])  # type: ignore[assignment]
    net.zero_grad()
    output, h = net(inputs, h)
    loss = criterion(output, targets.view(x.size))
    loss.backward()
    nn.utils.clip_grad_norm_(net.parameters(), clip)
    opt.step()
    return loss, h


def encode_text(text: str) -> tuple[tuple[str, ...], np.ndarray]:
    """The tutorial's vocabulary and int array (sorted rather than set order; see main)."""
    chars = tuple(sorted(set(text)))
    char2int = {ch: ii for ii, ch in enumerate(chars)}
    return chars, np.array([char2int[ch] for ch in text])


def train(net: CharRNN, data: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    bs, sl = args.batch_size, args.seq_length
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    criterion = nn.CrossEntropyLoss()
    val_idx = int(len(data) * (1 - 0.1))
    data, val_data = data[:val_idx], data[val_idx:]
    if len(data) < bs * sl or len(val_data) < bs * sl:
        sys.exit("text too short for one training and one validation batch")
    step_times: list[float] = []
    val_times: list[float] = []
    curve: list[dict[str, Any]] = []
    counter = 0
    t_start = time.perf_counter()
    deadline = t_start + args.minutes * 60
    done = False
    for epoch in count(1):
        h = net.init_hidden(bs)  # the tutorial resets the hidden state at each epoch
        for x, y in get_batches(data, bs, sl):
            done = counter >= args.max_steps or time.perf_counter() >= deadline
            if done:
                break
            t0 = time.perf_counter()
            counter += 1
            loss, h = train_step(net, opt, criterion, x, y, h)
            step_times.append(time.perf_counter() - t0)
            if counter % args.print_every == 0:
                tv = time.perf_counter()
                val_loss = validate(net, val_data, bs, sl, criterion)
                now = time.perf_counter()
                val_times.append(now - tv)
                curve.append({"step": counter, "epoch": epoch, "elapsed_s": round(now - t_start, 3),
                              "train_loss": round(loss.item(), 4), "val_loss": round(val_loss, 4)})
                print(f"step {counter} epoch {epoch} {now - t_start:7.1f}s loss {loss.item():.4f} "
                      f"val {val_loss:.4f} (val pass {now - tv:.2f}s)", file=sys.stderr)
        if done:
            break
    wall = time.perf_counter() - t_start
    train_s = wall - sum(val_times)
    return {
        "steps": counter,
        "wall_s": round(wall, 3),
        "train_s": round(train_s, 3),
        "train_chars_per_sec": round(counter * bs * sl / train_s, 1) if counter else None,
        "mean_step_s": round(statistics.fmean(step_times), 4) if step_times else None,
        "median_step_s": round(statistics.median(step_times), 4) if step_times else None,
        "val_passes": len(val_times),
        "val_pass_s": round(statistics.fmean(val_times), 3) if val_times else None,
        "eval_fraction_of_wall": round(sum(val_times) / wall, 4) if wall > 0 else None,
        "curve": curve,
        "final_val_loss": curve[-1]["val_loss"] if curve else None,
        "val_loss_at": {str(p["step"]): p["val_loss"] for p in curve if p["step"] in (100, 200)},
        "time_to_val_2_0_s": next((p["elapsed_s"] for p in curve if p["val_loss"] <= 2.0), None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="UTF-8 text file (default: bundled Anna Karenina)")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget incl. validation")
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=100, help="the published notebook uses 128")
    ap.add_argument("--seq-length", type=int, default=100)
    ap.add_argument("--hidden", type=int, help="LSTM width (default 512; 128 with --quick)")
    ap.add_argument("--print-every", type=int, default=10, help="validation pass every N steps")
    ap.add_argument("--sample-chars", type=int, default=2000)
    ap.add_argument("--sample-only", action="store_true", help="skip training; time sampling, random weights")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 20k chars, width 128, batch 10x50, 20 steps, 100 samples, 1 thread")
    ap.add_argument("--curve-out", type=Path, help="also write the list of eval points here as JSON")
    args = ap.parse_args()
    if args.quick:  # one thread unless told: two OpenMP threads on a busy 2-core box can be 10x slower
        args.threads = args.threads or 1
        args.hidden = args.hidden or 128
        args.batch_size, args.seq_length, args.max_steps = 10, 50, min(args.max_steps, 20)
        args.sample_chars = min(args.sample_chars, 100)
    args.hidden = args.hidden or 512
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    text = args.data.read_text(encoding="utf-8") if args.data else bundled_text()
    if args.quick:
        text = text[:20_000]
    # The tutorial uses tuple(set(text)), whose order changes from run to run (string hashing is randomised);
    # we sort it so runs are reproducible. Only the id assignment differs; nothing else depends on it.
    chars, encoded = encode_text(text)

    net = CharRNN(chars, n_hidden=args.hidden, n_layers=2, drop_prob=0.5)
    config = {
        "impl": "udacity char-rnn tutorial", "data": str(args.data or "bundled: Anna Karenina"),
        "text_chars": len(text), "vocab_size": len(chars), "params": sum(p.numel() for p in net.parameters()),
        "n_hidden": args.hidden, "n_layers": 2, "drop_prob": 0.5, "lr": 0.001, "clip": 5, "val_frac": 0.1,
        "batch_size": args.batch_size, "seq_length": args.seq_length, "print_every": args.print_every,
        "minutes": args.minutes, "max_steps": args.max_steps, "seed": args.seed, "quick": args.quick,
        "sample_only": args.sample_only, "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    result: dict[str, Any] = {"config": config}
    result.update(train(net, encoded, args) if not args.sample_only else {"steps": 0, "curve": []})

    prime, top_k = "Anna", 5  # timed: len(prime) + sample_chars forward passes, one char each
    t0 = time.perf_counter()
    text_out = sample(net, args.sample_chars, prime=prime, top_k=top_k)
    sample_s = time.perf_counter() - t0
    result.update({
        "sample_chars": args.sample_chars, "sample_prime": prime, "sample_top_k": top_k,
        "sample_s": round(sample_s, 3), "sample_chars_per_sec": round(args.sample_chars / sample_s, 1),
        "sample_head": text_out[:160],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    })
    if args.curve_out:
        args.curve_out.write_text(json.dumps(result["curve"], indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
