"""The learning rate at each step: a warm-up, a decay over the run, and halvings on a plateau.

    rate = learning_rate x warm-up(step) x decay(fraction of the run done) x 0.5 ** halvings

The warm-up keeps Adam's first, badly estimated steps small. The decay ends a run at `final` times
its peak rate (0 by default; nanoGPT stops at a tenth, which ends within noise of 0 on the bundled
novel over ten minutes, docs/benchmarks.md), where the loss settles lower than at a constant rate; a
run told its budget (`--max-time`) measures how far it is by the clock when that comes before its
last step, so it ends at the low rate whatever the machine's speed. The halvings (`--lr-patience`)
answer a plateau the schedule did not foresee.
"""

from __future__ import annotations

import math


def warmup_factor(step: int, warmup_steps: int) -> float:
    """For optimizer step `step` (counted from 1): linear from 1/warmup_steps to 1."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def decay_factor(fraction_done: float, decay: str, final: float = 0.0) -> float:
    """1 at the start of the run, `final` at its end."""
    done = min(1.0, max(0.0, fraction_done))
    if decay == "cosine":
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * done))
    if decay == "linear":
        return final + (1 - final) * (1 - done)
    return 1.0


def fraction_done(step: int, total_steps: int, elapsed_s: float, max_time: float | None) -> float:
    """How far a run is: by its steps, or by its clock when it has a time budget and that is further."""
    done = step / max(1, total_steps)
    return max(done, elapsed_s / max_time) if max_time else done


def halving_due(evals_since_best: int, lr_patience: int) -> bool:
    """Halve after every `lr_patience` validations in a row without a new best (0: never)."""
    return lr_patience > 0 and evals_since_best > 0 and evals_since_best % lr_patience == 0
