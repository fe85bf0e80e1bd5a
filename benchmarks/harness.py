"""One harness for every method the benchmarks compare: the tutorial's, the transformer's, charlstm's.

A method is set up on a text and then offers the same four things: `step` (one optimizer step on
its next training window), `evaluate` (one full pass over the held-out split, nats/char),
`sample` and its own validation during training (`own_eval`, when `eval_due` says so). On top:
the alternating timer for ratios (A, B, A, B, ...), the FLOP formula, the matmul peak, and
`train_for`, which trains a method for a wall-clock budget and reports a full validation pass at
the same wall-time points for every method (weights copied at each point, scored afterwards, the
copy excluded from the clock).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from charlstm.api import CharModel
from charlstm.config import ModelConfig, TrainConfig
from charlstm.data import StreamBatches, encode_corpus, split_train_val
from charlstm.evaluation import HeldOut
from charlstm.model import CharRNN
from charlstm.trainer import Trainer
from charlstm.vocab import Vocab

# charlstm's default schedule keeps validation near a tenth of the wall time (policy.py); the
# transformer's subset is sized to cost the same share.
EVAL_SHARE = 0.10
# Where every method's curve gets a full validation pass: dense early, where the curves differ most.
WALL_POINTS_S = (*range(5, 61, 5), 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1500, 1800)
VAL_FRAC = 0.1  # all three hold out the last tenth of the text
PRIME, TOP_K = "Anna", 5
Weights = dict[str, torch.Tensor]


@dataclass
class Method:
    """A method set up on a text; `progress` is the fraction of the run's expected length done."""

    name: str
    step: Callable[[float], torch.Tensor]
    evaluate: Callable[[], float]
    sample: Callable[[int], str]
    module: torch.nn.Module  # whose weights `train_for` copies at each wall-time point
    chars_per_step: int
    own_eval: Callable[[], float] | None = None
    eval_interval: int = 0  # own_eval after every this many steps (0: never)
    flops_per_char: int | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def lstm_flops_per_char(input_size: int, hidden: int, vocab: int, layers: int = 2) -> int:
    """Training FLOPs per character: forward 2*4H*(in+H) per layer plus the 2*H*V head, x3 for backward."""
    forward = sum(2 * 4 * hidden * ((input_size if k == 0 else hidden) + hidden) for k in range(layers))
    return 3 * (forward + 2 * hidden * vocab)


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_flops(n: int = 2048, tries: int = 5, device: str = "cpu",
                      dtype: torch.dtype = torch.float32) -> float:
    """Best FLOP/s of one n x n by n x n product on `device` (the current thread count on a CPU)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    best = math.inf
    for _ in range(tries):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def timed(fn: Callable[[], Any], times: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(times):
        fn()
    return time.perf_counter() - t0


def alternate(work: dict[str, Callable[[], Any]], repeats: int, times: int = 1,
              log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Seconds of `times` calls of each function, `repeats` times, in turn (A, B, A, B, ...), after
    one warm-up call each, so that a change in the machine's load hits every method alike."""
    for fn in work.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in work}
    for r in range(repeats):
        for name, fn in work.items():
            seconds[name].append(timed(fn, times))
            if log:
                log(f"repeat {r + 1}/{repeats} {name}: {seconds[name][-1]:.3f} s")
    return seconds


class Clock:
    """Wall time since start, less the time spent in `paused()` blocks."""

    def __init__(self) -> None:
        self.started, self.excluded = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.excluded


class Snapshots:
    """Weights copied at the wall-time points, scored by a full validation pass afterwards."""

    def __init__(self, budget_s: float) -> None:
        self.points = [p for p in WALL_POINTS_S if p < budget_s]
        self.taken: list[tuple[int, float, list[int], Weights]] = []
        self.copy_s = 0.0  # time spent copying, excluded from the elapsed times reported

    def due(self, elapsed_s: float) -> bool:
        """`elapsed_s`: the method's clock with the copies so far taken out."""
        return bool(self.points) and elapsed_s >= self.points[0]

    def take(self, step: int, elapsed_s: float, module: torch.nn.Module) -> None:
        """Copy the weights: those at every point passed since the last copy (none at the run's end)."""
        t0 = time.perf_counter()
        passed = []
        while self.points and elapsed_s >= self.points[0]:
            passed.append(self.points.pop(0))
        self.taken.append((step, round(elapsed_s, 3), passed, copy.deepcopy(module.state_dict())))
        self.copy_s += time.perf_counter() - t0

    def curve(self, module: torch.nn.Module, evaluate: Callable[[], float]) -> list[dict[str, Any]]:
        """Each snapshot loaded into `module` and scored with `evaluate`; the last weights come back."""
        last = copy.deepcopy(module.state_dict())
        points = []
        for step, elapsed, passed, weights in self.taken:
            module.load_state_dict(weights)
            loss = round(evaluate(), 5)
            points.append({"step": step, "elapsed_s": elapsed, "points_s": passed, "val_loss": loss})
        module.load_state_dict(last)
        return points


def train_for(method: Method, seconds: float, max_steps: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Train for `seconds` of wall time (own validation included) or `max_steps`; the method's own
    validations and the full-pass curve at the wall-time points."""
    clock, snapshots = Clock(), Snapshots(seconds)
    own: list[dict[str, Any]] = []
    own_s, step, loss = 0.0, 0, math.nan
    while step < max_steps and clock.elapsed() < seconds:
        progress = max(step / max_steps, clock.elapsed() / seconds)
        loss = float(method.step(progress))
        step += 1
        if method.own_eval is not None and method.eval_interval and step % method.eval_interval == 0:
            t0 = time.perf_counter()
            val = method.own_eval()
            own_s += time.perf_counter() - t0
            own.append({"step": step, "elapsed_s": round(clock.elapsed(), 3), "train_loss": round(loss, 4),
                        "val_loss": round(val, 5)})
            log(f"{method.name} step {step} {clock.elapsed():7.1f}s loss {loss:.4f} val {val:.4f}")
        if snapshots.due(clock.elapsed()):
            snapshots.take(step, clock.elapsed(), method.module)
            clock.excluded = snapshots.copy_s
    wall = clock.elapsed()
    snapshots.take(step, wall, method.module)
    train_s = wall - own_s
    return {
        "steps": step, "wall_s": round(wall, 3), "train_s": round(train_s, 3),
        "train_chars_per_sec": round(step * method.chars_per_step / train_s, 1) if step else None,
        "val_passes": len(own), "eval_fraction_of_wall": round(own_s / wall, 4) if wall > 0 else None,
        "snapshot_copy_s": round(snapshots.copy_s, 4), "own_curve": own,
        "curve": snapshots.curve(method.module, method.evaluate), "params": method.params,
    }  # fmt: skip


def setup_charlstm(text: str, hidden: int, layers: int, batch: int, seq: int, learning_rate: float,
                   dropout: float, seed: int, embedding_size: int | None = None) -> Method:
    """charlstm's Trainer on the text's first 90%, its HeldOut evaluator on the rest."""
    vocab = Vocab.from_text(text)
    train_ids, val_ids = split_train_val(encode_corpus(text, vocab), VAL_FRAC)
    config = TrainConfig(batch_size=batch, seq_len=seq, learning_rate=learning_rate, grad_clip=5.0,
                         device="cpu", seed=seed)
    model_config = ModelConfig(vocab_size=len(vocab), hidden_size=hidden, num_layers=layers, dropout=dropout,
                               embedding_size=embedding_size)
    torch.manual_seed(seed)
    batches = StreamBatches(train_ids, batch, seq)
    trainer = Trainer(CharRNN(model_config), config, batches, HeldOut(val_ids, batch, seq, "cpu"))
    position = [0]

    def step(progress: float) -> torch.Tensor:
        window = batches[position[0] % len(batches)]
        position[0] += 1
        return trainer.train_step(window.inputs, window.targets)

    generator = CharModel(trainer.model, vocab, training={})
    return Method(
        "charlstm", step, trainer.evaluate,
        lambda n: generator.generate(PRIME, length=n, top_k=TOP_K, seed=seed),
        trainer.model, batch * seq, trainer.evaluate, trainer.eval_interval,
        lstm_flops_per_char(model_config.input_size, hidden, len(vocab), layers),
        {"hidden": hidden, "layers": layers, "batch": batch, "seq": seq, "learning_rate": learning_rate,
         "dropout": dropout, "vocab_size": len(vocab)},
    )  # fmt: skip


def split_text(text: str) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Sorted characters and the ids of the first 90% and the last 10% (the split all three use)."""
    chars = tuple(sorted(set(text)))
    index = {ch: i for i, ch in enumerate(chars)}
    ids = np.array([index[ch] for ch in text], dtype=np.int64)
    cut = int(len(ids) * (1 - VAL_FRAC))
    return chars, ids[:cut], ids[cut:]
