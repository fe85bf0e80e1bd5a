"""Data-parallel training under torchrun: rank and world from its environment variables.

Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) every helper here is a
no-op, so the trainer runs one code path on a laptop and on many machines.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import CharLSTMError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def row_slice(self, batch_size: int) -> slice:
        """This rank's contiguous share of the `batch_size` global streams."""
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def all_reduce(
        self, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
    ) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=op)
        return tensor

    def all_gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `tensor` along dimension 1 (the batch of a recurrent state)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=1)

    def all_gather_bytes(
        self, tensor: torch.Tensor, device: torch.device | str = "cpu"
    ) -> list[torch.Tensor]:
        """Every rank's copy of a same-shaped tensor (e.g. RNG states), rank order, on the CPU;
        exchanged on `device` (nccl moves CUDA tensors only)."""
        if not self.enabled:
            return [tensor.cpu()]
        local = tensor.to(device).contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local)
        return [part.cpu() for part in parts]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def context_from_env() -> DistContext:
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise CharLSTMError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None
    return DistContext(rank=rank, world_size=world, local_rank=local)


def setup(backend: str, device_type: str, timeout_s: float) -> DistContext:
    """Join the process group torchrun prepared; pick nccl for CUDA and gloo otherwise."""
    ctx = context_from_env()
    if not ctx.enabled:
        return ctx
    if backend == "auto":
        backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(ctx.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return ctx


def teardown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
