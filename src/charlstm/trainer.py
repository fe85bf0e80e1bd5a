"""The training loop: truncated BPTT over contiguous streams, Adam, clipping, periodic validation.

`Trainer` owns no paths and prints nothing: progress, metrics and checkpoints happen in hooks,
so the same loop serves the CLI, the Python API and the tests.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig
from .data import StreamBatches
from .model import CharRNN, State, detach_state

# A forward pass costs about a third of a training step; validating every
# EVAL_COST_FACTOR x (validation windows) steps keeps validation near 10% of the time.
EVAL_COST_FACTOR = 3.5


@dataclass
class Progress:
    """Where the run is; everything here is what a resumed run needs besides tensors."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # next window of the current epoch
    elapsed_s: float = 0.0
    best_val_loss: float = math.inf
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Hooks:
    """Callbacks; each receives the trainer. `on_step` also gets the step's loss tensor
    (read it with `.item()` only when needed: on a GPU that waits for the device);
    `on_eval` gets the metrics record and whether it is the best validation loss so far."""

    on_step: Callable[[Trainer, torch.Tensor], None] | None = None
    on_eval: Callable[[Trainer, dict[str, float], bool], None] | None = None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from .errors import CharLSTMError

        raise CharLSTMError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(name)


def default_eval_interval(num_val_windows: int) -> int:
    return max(1, math.ceil(EVAL_COST_FACTOR * num_val_windows))


class Trainer:
    def __init__(
        self,
        model: CharRNN,
        config: TrainConfig,
        train_batches: StreamBatches,
        val_batches: StreamBatches,
        hooks: Hooks | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.hooks = hooks or Hooks()
        self.device = model.head.weight.device
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=config.learning_rate, fused=fused, foreach=None if fused else True
        )
        self.progress = Progress()
        self.state: State | None = None
        self.eval_interval = config.eval_interval or default_eval_interval(len(val_batches))
        self.stop_requested = False
        self._clock = (time.perf_counter(), 0.0)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)

    @property
    def total_steps(self) -> int:
        total = self.config.epochs * self.steps_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One optimizer step on one window; the carried state is detached, never reset."""
        self.model.train()
        if self.state is None:
            self.state = self.model.init_state(inputs.shape[0])
        logits, state = self.model(inputs, detach_state(self.state))
        self.state = state
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip, foreach=True)
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, batches: StreamBatches | None = None) -> float:
        """Mean loss (nats/char) over every window, carrying the state as in training."""
        batches = batches or self.val_batches
        self.model.eval()
        state = None
        total = torch.zeros((), device=self.device, dtype=torch.float64)
        for window in batches:
            logits, state = self.model(window.inputs, state)
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), window.targets.reshape(-1), reduction="sum"
            )
        return total.item() / batches.num_chars

    def _elapsed(self) -> float:
        started, offset = self._clock
        return offset + time.perf_counter() - started

    def _out_of_time(self) -> bool:
        return self.config.max_time is not None and self._elapsed() >= self.config.max_time

    def fit(self) -> Progress:
        """Train until the epochs, `max_steps` or `max_time` run out (or `stop_requested`)."""
        progress = self.progress
        self._clock = (time.perf_counter(), progress.elapsed_s)
        since_eval_loss = torch.zeros((), device=self.device)
        since_eval_steps, since_eval_chars, since_eval_time = 0, 0, time.perf_counter()
        chars_per_step = self.train_batches.batch_size * self.train_batches.seq_len
        evaluated_at = -1
        while progress.step < self.total_steps and not self.stop_requested:
            if self._out_of_time():
                break
            if progress.window >= self.steps_per_epoch:
                progress.epoch += 1
                progress.window = 0
                self.state = None
            window = self.train_batches[progress.window]
            loss = self.train_step(window.inputs, window.targets)
            progress.step += 1
            progress.window += 1
            since_eval_loss += loss
            since_eval_steps += 1
            since_eval_chars += chars_per_step
            if self.hooks.on_step:
                self.hooks.on_step(self, loss)
            if progress.step % self.eval_interval == 0:
                self._record(since_eval_loss / since_eval_steps, since_eval_chars, since_eval_time)
                evaluated_at = progress.step
                since_eval_loss = torch.zeros((), device=self.device)
                since_eval_steps, since_eval_chars, since_eval_time = 0, 0, time.perf_counter()
        if since_eval_steps and evaluated_at != progress.step:
            self._record(since_eval_loss / since_eval_steps, since_eval_chars, since_eval_time)
        progress.elapsed_s = self._elapsed()
        return progress

    def _record(self, train_loss: torch.Tensor, chars: int, since: float) -> None:
        train_seconds = time.perf_counter() - since
        val_loss = self.evaluate()
        progress = self.progress
        progress.elapsed_s = self._elapsed()
        record = {
            "step": progress.step,
            "epoch": round(progress.epoch + progress.window / self.steps_per_epoch, 4),
            "train_loss": round(train_loss.item(), 5),
            "val_loss": round(val_loss, 5),
            "val_bpc": round(val_loss / math.log(2), 5),
            "chars_per_sec": round(chars / max(train_seconds, 1e-9), 1),
            "elapsed_s": round(progress.elapsed_s, 2),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }
        progress.history.append(record)
        is_best = val_loss < progress.best_val_loss
        if is_best:
            progress.best_val_loss = val_loss
        if self.hooks.on_eval:
            self.hooks.on_eval(self, record, is_best)
