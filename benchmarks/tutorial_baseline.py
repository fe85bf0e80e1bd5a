"""Yardstick: the well-known "Character-Level LSTM in PyTorch" tutorial (Udacity, after Karpathy's char-rnn).

A faithful re-implementation of the tutorial's code paths (numpy one-hot per batch, its get_batches
generator, CharRNN, its train loop with a full validation pass every 10 steps *without* torch.no_grad, and
its per-character predict/sample), set up as a harness method (benchmarks/harness.py) to measure speed
and the validation curve. Its sizes are flags, so the same method also runs at other configurations
(e.g. the auto preset's: --hidden-size 256 --batch-size 32 --seq-len 64 --learning-rate 0.003 --dropout 0).
Progress goes to stderr; one JSON object goes to stdout at the end.

    python benchmarks/tutorial_baseline.py --minutes 10 --threads 2
    python benchmarks/tutorial_baseline.py --sample-only        # sampling speed with random weights
    python benchmarks/tutorial_baseline.py --quick              # smoke test, a few seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from benchutil import log, peak_rss_bytes
from harness import PRIME, TOP_K, Method, lstm_flops_per_char, split_text, train_for
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


def setup(text: str, hidden: int = 512, layers: int = 2, batch: int = 100, seq: int = 100,
          learning_rate: float = 0.001, dropout: float = 0.5, print_every: int = 10, seed: int = 1) -> Method:
    """The tutorial's method on the text's first 90%, validated on the rest, as a harness method."""
    # The tutorial uses tuple(set(text)), whose order changes from run to run (string hashing is
    # randomised); sorting makes runs reproducible. Only the id assignment differs.
    chars, data, val_data = split_text(text)
    if len(data) < batch * seq or len(val_data) < batch * seq:
        sys.exit("text too short for one training and one validation batch")
    torch.manual_seed(seed)
    np.random.seed(seed)
    net = CharRNN(chars, n_hidden=hidden, n_layers=layers, drop_prob=dropout)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
    criterion = nn.CrossEntropyLoss()

    def windows() -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        while True:  # epochs; the tutorial resets the hidden state at each
            for i, (x, y) in enumerate(get_batches(data, batch, seq)):
                yield x, y, i == 0

    source, hidden_state = windows(), [net.init_hidden(batch)]

    def step(progress: float) -> torch.Tensor:
        x, y, new_epoch = next(source)
        if new_epoch:
            hidden_state[0] = net.init_hidden(batch)
        loss, hidden_state[0] = train_step(net, opt, criterion, x, y, hidden_state[0])
        return loss.detach()

    def own_eval() -> float:
        return validate(net, val_data, batch, seq, criterion)  # as the tutorial: no torch.no_grad

    @torch.no_grad()
    def evaluate() -> float:  # the same pass and value; no_grad only saves the reporting its time
        value = validate(net, val_data, batch, seq, criterion)
        net.train()
        return value

    def sample_text(n: int) -> str:
        text_out = sample(net, n, prime=PRIME, top_k=TOP_K)
        net.train()
        return text_out

    config = {"impl": "udacity char-rnn tutorial", "vocab_size": len(chars), "n_hidden": hidden,
              "n_layers": layers, "drop_prob": dropout, "lr": learning_rate, "clip": 5, "val_frac": 0.1,
              "batch_size": batch, "seq_length": seq, "print_every": print_every, "seed": seed}
    return Method("tutorial", step, evaluate, sample_text, net, batch * seq, own_eval, print_every,
                  lstm_flops_per_char(len(chars), hidden, len(chars), layers), config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, help="UTF-8 text file (default: bundled Anna Karenina)")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget incl. validation")
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's own choice)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hidden-size", type=int, help="LSTM width (default 512; 128 with --quick)")
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, help="default 100 (the notebook: 128); 10 with --quick")
    ap.add_argument("--seq-len", type=int, help="default 100; 50 with --quick")
    ap.add_argument("--learning-rate", type=float, default=0.001)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--print-every", type=int, default=10, help="validation pass every N steps")
    ap.add_argument("--sample-chars", type=int, default=2000)
    ap.add_argument("--sample-only", action="store_true", help="skip training; time sampling, random weights")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 20k chars, 20 steps, 100 samples, 1 thread; unless given, width 128, "
                    "batch 10x50")
    args = ap.parse_args()
    if args.quick:  # one thread unless told: two OpenMP threads on a busy 2-core box can be 10x slower
        args.threads = args.threads or 1
        args.hidden_size, args.batch_size = args.hidden_size or 128, args.batch_size or 10
        args.seq_len, args.max_steps = args.seq_len or 50, min(args.max_steps, 20)
        args.sample_chars = min(args.sample_chars, 100)
    if args.threads:
        torch.set_num_threads(args.threads)
    text = args.data.read_text(encoding="utf-8") if args.data else bundled_text()
    if args.quick:
        text = text[:20_000]
    method = setup(text, args.hidden_size or 512, args.num_layers, args.batch_size or 100,
                   args.seq_len or 100, args.learning_rate, args.dropout, args.print_every, args.seed)
    result: dict[str, Any] = {"config": {**method.config, "data": str(args.data or "bundled: Anna Karenina"),
                                         "text_chars": len(text), "params": method.params,
                                         "minutes": args.minutes, "max_steps": args.max_steps,
                                         "quick": args.quick, "threads": torch.get_num_threads()}}
    if not args.sample_only:
        result.update(train_for(method, args.minutes * 60, args.max_steps, log))
    t0 = time.perf_counter()  # timed: len(prime) + sample_chars forward passes, one char each
    text_out = method.sample(args.sample_chars)
    sample_s = time.perf_counter() - t0
    result.update({
        "sample_chars": args.sample_chars, "sample_prime": PRIME, "sample_top_k": TOP_K,
        "sample_s": round(sample_s, 3), "sample_chars_per_sec": round(args.sample_chars / sample_s, 1),
        "sample_head": text_out[:160], "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),
    })  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
