"""The state of a run beside its weights in `last/`: progress, optimizer, learning-rate schedule,
every rank's random generators, and the carried hidden state; plain tensors plus JSON, no pickle.

`capture` is collective under data parallelism (each rank's generators and streams are gathered
so that one process can write them); `restore` gives each rank back its own.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from .errors import CharLSTMError
from .trainer import Progress, Trainer

# Adam's hyperparameters restored on resume; its implementation flags (fused, foreach) stay
# those of the device the run resumes on.
ADAM_NUMERIC = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")


def _device_rng(device: torch.device) -> torch.Tensor | None:
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def _set_device_rng(device: torch.device, state: torch.Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)


def _state_parts(trainer: Trainer) -> list[torch.Tensor]:
    state = trainer.state
    if state is None:
        return []
    return list(state) if isinstance(state, tuple) else [state]


def capture(trainer: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON-able facts) holding all a resumed run needs besides the weights."""
    dist = trainer.dist
    tensors: dict[str, torch.Tensor] = {}
    for r, rng in enumerate(dist.all_gather_bytes(torch.get_rng_state(), trainer.device)):
        tensors["rng.torch" if r == 0 else f"rng.torch.rank{r}"] = rng
    device_rng = _device_rng(trainer.device)
    if device_rng is not None:
        for r, rng in enumerate(dist.all_gather_bytes(device_rng, trainer.device)):
            tensors[f"rng.{trainer.device.type}.rank{r}"] = rng
    parts = _state_parts(trainer)
    for i, part in enumerate(parts):
        # fp32 whatever the autocast: a bf16 state would not resume on another device or precision
        tensors[f"hidden.{i}"] = dist.all_gather_rows(part.float())
    optimizer = trainer.optimizer.state_dict()
    for index, slots in optimizer["state"].items():
        for name, value in slots.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
    numpy_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(numpy_state[1].astype(np.int64))
    meta = {
        "progress": asdict(trainer.progress),
        "optimizer": [{k: g[k] for k in ADAM_NUMERIC if k in g} for g in optimizer["param_groups"]],
        "rng_python": _to_json(random.getstate()),
        "rng_numpy": [numpy_state[0], *(_to_json(x) for x in numpy_state[2:])],
        "hidden_parts": len(parts),
        "world_size": dist.world_size,
    }
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, meta


def restore(trainer: Trainer, tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str) -> None:
    """Give `trainer` (weights already loaded) the state `capture` saved; damage in it is one
    clear error naming `where`."""
    try:
        _restore(trainer, tensors, meta)
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise CharLSTMError(
            f"{where}: the training state is damaged ({type(exc).__name__}: {exc}); "
            "resume cannot continue exactly: start a new run from its best/ weights"
        ) from None


def _restore(trainer: Trainer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    trainer.progress = Progress(**meta["progress"])
    dist, model = trainer.dist, trainer.model
    rows = dist.row_slice(trainer.train_batches.batch_size * dist.world_size)
    config = model.config
    expected = (config.num_layers, trainer.train_batches.batch_size * dist.world_size, config.hidden_size)
    parts = []
    for i in range(int(meta["hidden_parts"])):
        part = tensors[f"hidden.{i}"]
        if tuple(part.shape) != expected:
            raise ValueError(f"hidden.{i} is {tuple(part.shape)}, expected {expected}")
        parts.append(part[:, rows].to(trainer.device, model.head.weight.dtype))
    if len(parts) not in (0, 2 if model.config.cell == "lstm" else 1):
        raise ValueError(f"{len(parts)} hidden-state parts for a {model.config.cell} model")
    trainer.state = None if not parts else (tuple(parts) if len(parts) == 2 else parts[0])  # type: ignore[assignment]

    optimizer = trainer.optimizer.state_dict()
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    shapes = [p.shape for p in model.parameters()]
    for index, slot in slots.items():
        for name, value in slot.items():
            if name != "step" and value.shape != shapes[index]:
                shape, want = tuple(value.shape), tuple(shapes[index])
                raise ValueError(f"optimizer.{index}.{name} is {shape}, not {want}")
    optimizer["state"] = slots
    for group, saved in zip(optimizer["param_groups"], meta["optimizer"], strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    trainer.optimizer.load_state_dict(optimizer)
    if meta.get("scheduler"):  # saved before the schedule: the rate reached held the halvings
        trainer.progress.lr_scale = float(meta["optimizer"][0]["lr"]) / trainer.config.learning_rate

    rank = dist.rank if meta.get("world_size", 1) == dist.world_size else 0
    torch.set_rng_state(tensors.get(f"rng.torch.rank{rank}", tensors["rng.torch"]))
    device_rng = tensors.get(f"rng.{trainer.device.type}.rank{rank}")
    if device_rng is not None:
        _set_device_rng(trainer.device, device_rng)
    random.setstate(_from_json(meta["rng_python"]))
    name, *rest = meta["rng_numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), *rest))


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, tuple | list) else value


def _from_json(value: Any) -> Any:
    return tuple(_from_json(v) for v in value) if isinstance(value, list) else value
