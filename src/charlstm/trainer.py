"""The training loop: truncated BPTT over contiguous streams, Adam, clipping, periodic validation.

`fit` reads top to bottom: take a window, `train_step`, ask the policy what follows (validate,
save, stop), do it. The trainer owns no paths and prints nothing: its caller sees the run through
one `Hooks` object (progress, validations, saves), so the same loop serves the CLI, the Python API
and the tests. What a resumed run needs is serialised by `runstate.py`, beside the checkpoints.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig
from .data import StreamBatches
from .distributed import DistContext
from .errors import CharLSTMError
from .evaluation import HeldOut
from .lr_schedule import decay_factor, fraction_done, halving_due, warmup_factor
from .model import CharRNN, State, detach_state
from .policy import Decision, Policy, default_eval_interval

# The share of the held-out text the early validations score.
EARLY_VALIDATION_SHARE = 1 / 8


@dataclass
class Progress:
    """Where the run is; with the optimizer, RNGs and carried state, all a resume needs."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # next window of the current epoch
    elapsed_s: float = 0.0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    converged: bool = False  # stopped by --stop-patience: no new best for that many validations
    lr_scale: float = 1.0  # 0.5 ** the halvings --lr-patience has made
    history: list[dict[str, float]] = field(default_factory=list)


class Hooks:
    """What a caller sees of a run; override what you need. Every rank calls `on_save` (saving
    gathers state from all of them); the caller decides which rank writes."""

    def on_start(self, summary: dict[str, Any]) -> None:
        """The data, model and schedule about to be trained (sent by the runner)."""

    def on_step(self, trainer: Trainer, loss: torch.Tensor) -> None:
        """After each optimizer step; `.item()` on the loss waits for an accelerator."""

    def on_eval(self, trainer: Trainer, record: dict[str, Any], is_best: bool) -> None:
        """After each validation, with its metrics record."""

    def on_save(self, trainer: Trainer) -> None:
        """Write the resumable checkpoint now (the runner writes `last/`, then tells its caller)."""

    def should_stop(self) -> bool:
        """Polled after each step: True saves and ends the run (Ctrl-C)."""
        return False


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CharLSTMError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise CharLSTMError("--device mps asked for, but this PyTorch has no MPS; use --device cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise CharLSTMError(f"--device must be one of auto, cpu, cuda, mps, not {name!r}")
    return torch.device(name)


class Trainer:
    def __init__(
        self,
        model: CharRNN,
        config: TrainConfig,
        train_batches: StreamBatches,
        held_out: HeldOut,
        hooks: Hooks | None = None,
        dist: DistContext | None = None,
        clock: Any = time.perf_counter,
    ) -> None:
        self.model, self.config = model, config
        self.train_batches, self.held_out = train_batches, held_out
        self.hooks = hooks or Hooks()
        self.dist = dist or DistContext()
        self.device = model.head.weight.device
        # DDP averages gradients across ranks; evaluation and saving use the bare model.
        self.train_model: nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=config.learning_rate, fused=fused, foreach=None if fused else True
        )
        self.progress = Progress()
        self.state: State | None = None
        self.eval_interval = config.eval_interval or default_eval_interval(len(held_out), len(train_batches))
        # The default schedule also validates a quarter and half-way into the first interval, on
        # the first part of the held-out text, so a run shows early where it is heading at little
        # cost (not when that part would be the whole of a short text).
        self.early_held_out = held_out.head(EARLY_VALIDATION_SHARE)
        early = {self.eval_interval // 4, self.eval_interval // 2} - {0}
        if self.early_held_out is held_out:
            early = set()
        self.policy = Policy(
            config,
            self.total_steps,
            self.eval_interval,
            self.device,
            self.dist,
            clock,
            frozenset(early) if config.eval_interval is None else frozenset(),
        )
        self.stopped_early = False  # by should_stop (a signal), not by the schedule

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_batches)

    @property
    def total_steps(self) -> int:
        total = self.config.epochs * self.steps_per_epoch
        return min(total, self.config.max_steps) if self.config.max_steps else total

    def learning_rate(self) -> float:
        """The rate for the next step (lr_schedule.py)."""
        config, progress = self.config, self.progress
        done = fraction_done(progress.step, self.total_steps, self.policy.agreed_elapsed, config.max_time)
        return (
            config.learning_rate
            * progress.lr_scale
            * warmup_factor(progress.step + 1, config.warmup_steps)
            * decay_factor(done, config.lr_decay, config.lr_final)
        )

    def autocast(self) -> torch.autocast:
        enabled = self.config.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One optimizer step on one window; the carried state is detached, never reset."""
        self.model.train()
        if self.state is None:
            self.state = self.model.init_state(inputs.shape[0])
        with self.autocast():
            logits, state = self.train_model(inputs, detach_state(self.state))  # (B, T, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        self.state = state
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip, foreach=True)
        self.optimizer.step()
        return loss.detach()

    def evaluate(self) -> float:
        """Mean validation loss (nats/char) over all ranks' streams."""
        return self.held_out.loss(self.model, self.autocast)

    def fit(self) -> Progress:
        """Train until the epochs, `max_steps` or `max_time` run out, the validation loss stops
        improving (`stop_patience`), or `should_stop` says so."""
        progress = self.progress
        self.policy.start(progress.elapsed_s)
        interval = _Interval(self.device, self.train_batches)
        while progress.step < self.total_steps and not progress.converged:
            if progress.window >= self.steps_per_epoch:
                progress.epoch, progress.window, self.state = progress.epoch + 1, 0, None
            window = self.train_batches[progress.window]
            rate = self.learning_rate()
            for group in self.optimizer.param_groups:
                group["lr"] = rate
            loss = self.train_step(window.inputs, window.targets)
            progress.step += 1
            progress.window += 1
            interval.add(loss)
            self.hooks.on_step(self, loss)
            decision = self.policy.decide(progress.step, loss, self.hooks.should_stop())
            self._act(decision, interval)
            if decision.ends_run:
                self.stopped_early = decision.stop
                break
        return progress

    def _act(self, decision: Decision, interval: _Interval) -> None:
        if decision.non_finite:
            self._diverged(f"the loss became non-finite by step {self.progress.step}")
        if not (decision.validate or decision.save):
            return
        interval.pause()
        self.progress.elapsed_s = self.policy.elapsed()  # what a best/ saved while validating records
        if decision.validate and interval.steps:
            self._validate(interval, decision.partial)
            self.progress.elapsed_s = self.policy.elapsed()
        if decision.save:
            if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                self._diverged(f"the weights hold NaN or inf at step {self.progress.step}")
            self.hooks.on_save(self)
            self.policy.saved()
        interval.resume()

    def _validate(self, interval: _Interval, partial: bool = False) -> None:
        train_loss = self.dist.all_reduce(interval.loss.clone()).item() / self.dist.world_size
        if not math.isfinite(train_loss):
            self._diverged(f"the loss became {train_loss} by step {self.progress.step}")
        held_out = self.early_held_out if partial else self.held_out
        val_loss = held_out.loss(self.model, self.autocast)
        progress = self.progress
        record = {
            "step": progress.step,
            "epoch": round(progress.epoch + progress.window / self.steps_per_epoch, 4),
            "train_loss": round(train_loss / interval.steps, 5),
            "val_loss": round(val_loss, 5),
            "val_bpc": round(val_loss / math.log(2), 5),
            "chars_per_sec": round(interval.chars * self.dist.world_size / max(interval.seconds, 1e-9), 1),
            "elapsed_s": round(self.policy.elapsed(), 2),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }
        if partial:
            record["val_chars"] = held_out.pairs  # part of the held-out text: not a candidate for best
        interval.reset()
        progress.history.append(record)
        is_best = not partial and val_loss < progress.best_val_loss
        if is_best:
            progress.best_val_loss, progress.evals_since_best = val_loss, 0
        elif not partial:
            progress.evals_since_best += 1
            if halving_due(progress.evals_since_best, self.config.lr_patience):
                progress.lr_scale /= 2
        stop_patience = self.config.stop_patience
        progress.converged = bool(stop_patience) and progress.evals_since_best >= stop_patience
        self.hooks.on_eval(self, record, is_best)

    def _diverged(self, what: str) -> None:
        raise CharLSTMError(
            f"training diverged: {what}; the last good checkpoint was kept; resume with a lower "
            "--learning-rate or --grad-clip"
        )


class _Interval:
    """Loss and throughput since the last validation; the loss stays on the device, and the
    clock runs only while training (not while validating or saving)."""

    def __init__(self, device: torch.device, batches: StreamBatches) -> None:
        self.device = device
        self.chars_per_step = batches.batch_size * batches.seq_len
        self.reset()
        self.resume()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.steps = self.chars = 0
        self.seconds = 0.0

    def pause(self) -> None:
        self.seconds += time.perf_counter() - self._started

    def resume(self) -> None:
        self._started = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1
        self.chars += self.chars_per_step
