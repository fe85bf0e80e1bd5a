"""The training loop: truncated BPTT over contiguous streams, Adam, clipping, periodic validation.

`Trainer` owns no paths and prints nothing: progress, metrics and checkpoints happen in hooks,
so the same loop serves the CLI, the Python API and the tests. Everything a resumed run needs
(optimizer, RNGs, data position, carried state, history) comes out of `state_dict()` as plain
tensors plus JSON, so it can be stored without pickle.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .config import TrainConfig
from .data import StreamBatches
from .distributed import DistContext
from .errors import CharLSTMError
from .model import CharRNN, State, detach_state

# A forward pass costs about a third of a training step; validating every
# EVAL_COST_FACTOR x (validation windows) steps keeps validation near 10% of the time.
EVAL_COST_FACTOR = 3.5
MIN_EVAL_STEPS = 50
# Under data parallelism on a GPU, ranks agree on stopping every this many steps (a sync).
DIST_POLL_STEPS = 20
# Adam's hyperparameters restored on resume; its implementation flags (fused, foreach)
# stay those of the device the run resumes on.
ADAM_NUMERIC = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


@dataclass
class Progress:
    """Where the run is; with the tensors of `Trainer.state_dict` this is all a resume needs."""

    step: int = 0
    epoch: int = 0
    window: int = 0  # next window of the current epoch
    elapsed_s: float = 0.0
    best_val_loss: float = math.inf
    evals_since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Hooks:
    """Callbacks, each receiving the trainer.

    `on_step` gets the step's loss tensor (call `.item()` only when needed: on a GPU it waits);
    `on_eval` gets the metrics record and whether it is the best validation loss so far;
    `on_save` is asked to write the resumable checkpoint; `should_stop` is polled every step.
    """

    on_step: Callable[[Trainer, torch.Tensor], None] | None = None
    on_eval: Callable[[Trainer, dict[str, float], bool], None] | None = None
    on_save: Callable[[Trainer], None] | None = None
    should_stop: Callable[[], bool] | None = None


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
    return torch.device(name)


def default_eval_interval(num_val_windows: int, steps_per_epoch: int = 1) -> int:
    """Validation near 10% of the time, and no more often than every `MIN_EVAL_STEPS` steps
    (or once an epoch when epochs are shorter), so that plateau patience measures progress
    rather than noise on a tiny validation text."""
    floor = min(steps_per_epoch, MIN_EVAL_STEPS)
    return max(1, floor, math.ceil(EVAL_COST_FACTOR * num_val_windows))


def _state_tensors(state: State | None) -> list[torch.Tensor]:
    if state is None:
        return []
    return list(state) if isinstance(state, tuple) else [state]


class Trainer:
    def __init__(
        self,
        model: CharRNN,
        config: TrainConfig,
        train_batches: StreamBatches,
        val_batches: StreamBatches,
        hooks: Hooks | None = None,
        dist: DistContext | None = None,
    ) -> None:
        self.model = model
        self.dist = dist or DistContext()
        self.config = config
        self.train_batches = train_batches
        self.val_batches = val_batches
        self.hooks = hooks or Hooks()
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
        self.eval_interval = config.eval_interval or default_eval_interval(
            len(val_batches), len(train_batches)
        )
        # The default schedule also validates a quarter and half-way into the first interval,
        # so a run shows where it is heading within its first minute; an explicit
        # --eval-interval means exactly that interval.
        early = {self.eval_interval // 4, self.eval_interval // 2} - {0}
        self.early_evals = frozenset(early) if config.eval_interval is None else frozenset()
        self.stopped_early = False
        self.converged = False
        self._clock = (time.perf_counter(), 0.0)
        self._last_save = time.perf_counter()
        self._saved_step = -1

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
        with self._autocast():
            logits, state = self.train_model(inputs, detach_state(self.state))
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        self.state = state
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip, foreach=True)
        self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, batches: StreamBatches | None = None) -> float:
        """Mean loss (nats/char) over every window, carrying the state as in training
        (summed over all ranks' streams when data-parallel)."""
        batches = batches or self.val_batches
        self.model.eval()
        state = None
        total = torch.zeros(2, device=self.device, dtype=torch.float64)  # (nats, chars)
        total[1] = batches.num_chars
        for window in batches:
            with self._autocast():
                logits, state = self.model(window.inputs, state)
            total[0] += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), window.targets.reshape(-1), reduction="sum"
            )
        nats, chars = self.dist.all_reduce(total).tolist()
        return nats / chars

    def _autocast(self) -> torch.autocast:
        enabled = self.config.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _elapsed(self) -> float:
        started, offset = self._clock
        return offset + time.perf_counter() - started

    def _out_of_time(self) -> bool:
        return self.config.max_time is not None and self._elapsed() >= self.config.max_time

    def _poll(self, loss: torch.Tensor | None) -> tuple[bool, bool]:
        """(stop asked, time is up). Under data parallelism every rank agrees, so all stop at
        the same step, and a non-finite `loss` on any rank stops every rank with an error."""
        stop = bool(self.hooks.should_stop and self.hooks.should_stop())
        late = self._out_of_time()
        if not self.dist.enabled:
            return stop, late
        if loss is None and self.progress.step % DIST_POLL_STEPS:
            return False, False
        bad = loss is not None and not bool(torch.isfinite(loss))
        flags = torch.tensor([stop, late, bad], dtype=torch.float32, device=self.device)
        stop, late, bad = (bool(f) for f in self.dist.all_reduce(flags, op=dist.ReduceOp.MAX).tolist())
        if bad:
            self._check_finite(torch.tensor(math.nan))
        return stop, late

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).item():
            raise CharLSTMError(
                f"training diverged: the loss became {loss.item()} by step {self.progress.step}; "
                "nothing from after the last good checkpoint was saved; resume with a lower "
                "--learning-rate or --grad-clip"
            )

    def _save_due(self) -> bool:
        interval, seconds = self.config.checkpoint_interval, self.config.checkpoint_seconds
        if interval and self.progress.step % interval == 0:
            return True
        return seconds > 0 and time.perf_counter() - self._last_save >= seconds

    def _save(self) -> None:
        for p in self.model.parameters():
            if not torch.isfinite(p).all():
                raise CharLSTMError(
                    f"training diverged: the weights hold NaN or inf at step {self.progress.step}; "
                    "the last good checkpoint was kept; resume with a lower --learning-rate"
                )
        self._last_save = time.perf_counter()
        self._saved_step = self.progress.step
        if self.hooks.on_save:
            self.hooks.on_save(self)

    def fit(self) -> Progress:
        """Train until the epochs, `max_steps` or `max_time` run out, or `should_stop` says so."""
        progress = self.progress
        self._clock = (time.perf_counter(), progress.elapsed_s)
        self._last_save = time.perf_counter()
        self._saved_step = progress.step
        check_every_step = self.device.type == "cpu"  # on a GPU, reading the loss would sync
        pending = _Interval(self.device, self.train_batches)
        loss = torch.zeros((), device=self.device)
        while progress.step < self.total_steps and not self.converged:
            stop, out_of_time = self._poll(loss if check_every_step else None)
            if stop:
                self.stopped_early = True
                break
            if out_of_time:
                break
            if progress.window >= self.steps_per_epoch:
                progress.epoch += 1
                progress.window = 0
                self.state = None
            window = self.train_batches[progress.window]
            loss = self.train_step(window.inputs, window.targets)
            if check_every_step and not self.dist.enabled:
                self._check_finite(loss)
            progress.step += 1
            progress.window += 1
            pending.add(loss)
            if self.hooks.on_step:
                self.hooks.on_step(self, loss)
            if progress.step % self.eval_interval == 0 or progress.step in self.early_evals:
                self._record(pending)
                self._save()
            elif self._save_due():
                self._check_finite(pending.loss)
                self._save()
        if pending.steps and not self.stopped_early:
            self._record(pending)
        progress.elapsed_s = self._elapsed()
        if self._saved_step != progress.step:
            self._check_finite(pending.loss)
            self._save()
        return progress

    def _record(self, pending: _Interval) -> None:
        self.dist.all_reduce(pending.loss)
        pending.loss /= self.dist.world_size
        self._check_finite(pending.loss)
        train_seconds = time.perf_counter() - pending.started
        val_loss = self.evaluate()
        progress = self.progress
        progress.elapsed_s = self._elapsed()
        record = {
            "step": progress.step,
            "epoch": round(progress.epoch + progress.window / self.steps_per_epoch, 4),
            "train_loss": round(pending.loss.item() / pending.steps, 5),
            "val_loss": round(val_loss, 5),
            "val_bpc": round(val_loss / math.log(2), 5),
            "chars_per_sec": round(pending.chars * self.dist.world_size / max(train_seconds, 1e-9), 1),
            "elapsed_s": round(progress.elapsed_s, 2),
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }
        pending.reset()
        progress.history.append(record)
        is_best = val_loss < progress.best_val_loss
        if is_best:
            progress.best_val_loss, progress.evals_since_best = val_loss, 0
        else:
            self._on_plateau()
        if self.hooks.on_eval:
            self.hooks.on_eval(self, record, is_best)

    def _on_plateau(self) -> None:
        """No new best: halve the learning rate every `lr_patience` such validations, and end
        the run after `stop_patience` of them in a row."""
        progress, config = self.progress, self.config
        progress.evals_since_best += 1
        if config.lr_patience and progress.evals_since_best % config.lr_patience == 0:
            for group in self.optimizer.param_groups:
                group["lr"] *= 0.5
        if config.stop_patience and progress.evals_since_best >= config.stop_patience:
            self.converged = True

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(tensors, JSON-able facts) holding all a resumed run needs besides the weights.

        Collective under data parallelism: every rank must call it (the streams' states and
        the ranks' random generators are gathered so one process can resume the run)."""
        rngs = self.dist.all_gather_bytes(torch.get_rng_state())
        tensors: dict[str, torch.Tensor] = {"rng.torch": rngs[0]}
        tensors.update({f"rng.torch.rank{r}": rng for r, rng in enumerate(rngs) if r})
        if torch.cuda.is_available() and self.device.type == "cuda":
            for i, rng in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = rng
        for i, tensor in enumerate(_state_tensors(self.state)):
            tensors[f"hidden.{i}"] = self.dist.all_gather_rows(tensor)
        optimizer = self.optimizer.state_dict()
        for index, slots in optimizer["state"].items():
            for name, value in slots.items():
                tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
        numpy_state = np.random.get_state()
        tensors["rng.numpy"] = torch.from_numpy(numpy_state[1].astype(np.int64))
        meta = {
            "progress": asdict(self.progress),
            "optimizer": [{k: g[k] for k in ADAM_NUMERIC if k in g} for g in optimizer["param_groups"]],
            "rng_python": _to_json(random.getstate()),
            "rng_numpy": [numpy_state[0], *(_to_json(x) for x in numpy_state[2:])],
            "hidden_parts": len(_state_tensors(self.state)),
        }
        return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Restore what `state_dict` gave; call after the weights are loaded."""
        self.progress = Progress(**meta["progress"])
        rows = self.dist.row_slice(self.train_batches.batch_size * self.dist.world_size)
        parts = [tensors[f"hidden.{i}"][:, rows].to(self.device) for i in range(meta["hidden_parts"])]
        self.state = None if not parts else (tuple(parts) if len(parts) == 2 else parts[0])  # type: ignore[assignment]
        optimizer = self.optimizer.state_dict()
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value
        optimizer["state"] = slots
        for group, saved in zip(optimizer["param_groups"], meta["optimizer"], strict=True):
            group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
        self.optimizer.load_state_dict(optimizer)
        torch.set_rng_state(tensors.get(f"rng.torch.rank{self.dist.rank}", tensors["rng.torch"]))
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states and torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
        random.setstate(_from_json(meta["rng_python"]))
        name, *rest = meta["rng_numpy"]
        np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), *rest))


class _Interval:
    """Loss and throughput accumulated since the last validation, kept on the device."""

    def __init__(self, device: torch.device, batches: StreamBatches) -> None:
        self.device = device
        self.chars_per_step = batches.batch_size * batches.seq_len
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.steps = 0
        self.chars = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss
        self.steps += 1
        self.chars += self.chars_per_step


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, tuple | list) else value


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value
