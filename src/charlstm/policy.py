"""What happens after each training step: validate, save, stop, or fail on a non-finite loss.

Each of these decisions leads to a collective under data parallelism (validation sums over
ranks, a save gathers every rank's state), so every rank must take the same decision at the same
step. `Policy.decide` is the one place they are taken: the inputs that can differ between ranks
(a signal, the clock, a loss that is NaN on one rank only) are combined with one all-reduce.
Step-based decisions (the validation and checkpoint intervals, the last step) are the same on
every rank by construction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .config import TrainConfig
from .distributed import DistContext

# A forward pass costs about a third of a training step; validating every
# EVAL_COST_FACTOR x (validation windows) steps keeps validation near 10% of the time.
EVAL_COST_FACTOR = 3.5
MIN_EVAL_STEPS = 50
# On an accelerator, reading a flag back waits for the queued work: the clock, signals and the
# loss are looked at every this many steps (and at every validation or save) instead of every step.
ACCELERATOR_POLL_STEPS = 20


def default_eval_interval(num_val_windows: int, steps_per_epoch: int = 1) -> int:
    """Validation near 10% of the time, and no more often than every `MIN_EVAL_STEPS` steps
    (or once an epoch when epochs are shorter), so that plateau patience measures progress
    rather than noise on a tiny validation text."""
    floor = min(steps_per_epoch, MIN_EVAL_STEPS)
    return max(1, floor, math.ceil(EVAL_COST_FACTOR * num_val_windows))


@dataclass(frozen=True)
class Decision:
    validate: bool = False
    partial: bool = False  # validate on the first part of the held-out text only (early in a run)
    save: bool = False
    stop: bool = False  # asked to stop (a signal): save and end without validating
    out_of_time: bool = False  # --max-time reached: validate, save and end
    non_finite: bool = False  # the loss is NaN or infinite on some rank: fail

    @property
    def ends_run(self) -> bool:
        return self.stop or self.out_of_time


class Policy:
    def __init__(
        self,
        config: TrainConfig,
        total_steps: int,
        eval_interval: int,
        device: torch.device,
        dist_context: DistContext | None = None,
        clock: Callable[[], float] = time.perf_counter,
        early_evals: frozenset[int] = frozenset(),
    ) -> None:
        self.config = config
        self.total_steps = total_steps
        self.eval_interval = eval_interval
        self.early_evals = early_evals
        self.device = device
        self.dist = dist_context or DistContext()
        self.clock = clock
        self.poll_steps = 1 if device.type == "cpu" else ACCELERATOR_POLL_STEPS
        self.start(0.0)

    def start(self, elapsed_s: float) -> None:
        """Start the clock, `elapsed_s` into the run (a resumed run keeps its time)."""
        self._started, self._offset = self.clock(), elapsed_s
        self._last_save = self._started
        # The time every rank agrees on at the last decision: what the learning-rate schedule
        # reads, so that no rank steps at a different rate.
        self.agreed_elapsed = elapsed_s

    def elapsed(self) -> float:
        return self._offset + self.clock() - self._started

    def saved(self) -> None:
        self._last_save = self.clock()

    def decide(self, step: int, loss: torch.Tensor, stop_requested: bool) -> Decision:
        """The decision after optimizer step `step` (counted from 1) whose loss was `loss`."""
        config = self.config
        validate = step % self.eval_interval == 0 or step in self.early_evals
        last = step >= self.total_steps
        interval_save = bool(config.checkpoint_interval) and step % config.checkpoint_interval == 0
        if not (validate or interval_save or last or step % self.poll_steps == 0):
            return Decision()
        now = self.clock()
        elapsed = self._offset + now - self._started
        late = config.max_time is not None and elapsed >= config.max_time
        save_due = config.checkpoint_seconds > 0 and now - self._last_save >= config.checkpoint_seconds
        flags = torch.stack(
            [
                torch.tensor(float(stop_requested), device=loss.device),
                torch.tensor(float(late), device=loss.device),
                torch.tensor(float(save_due), device=loss.device),
                (~torch.isfinite(loss.detach())).float().reshape(()),
                torch.tensor(elapsed, device=loss.device),
            ]
        )
        *agreed, self.agreed_elapsed = self.dist.all_reduce(
            flags, dist.ReduceOp.MAX
        ).tolist()  # one read back
        stop, late, save_due, non_finite = (bool(f) for f in agreed)
        ends = stop or late or last
        # An early validation scores part of the held-out text: it shows progress, never a best.
        partial = step in self.early_evals and not ends
        return Decision(
            validate=(validate or late or last) and not stop,
            partial=partial,
            save=(validate and not partial) or interval_save or save_due or ends,
            stop=stop,
            out_of_time=late,
            non_finite=non_finite,
        )
