"""Without torchrun every helper is a no-op; under it, ranks split the streams evenly."""

from __future__ import annotations

import pytest
import torch

from charlstm.distributed import DistContext, context_from_env, setup, teardown
from charlstm.errors import CharLSTMError


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_without_torchrun_there_is_one_process(no_torchrun):
    ctx = context_from_env()
    assert ctx == DistContext()
    assert not ctx.enabled and ctx.is_main
    assert setup("auto", "cpu", 10.0) == ctx
    teardown(ctx)
    assert not torch.distributed.is_initialized()


def test_context_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    ctx = context_from_env()
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (2, 4, 0)
    assert ctx.enabled and not ctx.is_main


def test_bad_torchrun_variables_are_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(CharLSTMError, match="WORLD_SIZE"):
        context_from_env()


def test_row_slices_cover_the_batch_once():
    world = 4
    rows = list(range(12))
    shares = [rows[DistContext(rank=r, world_size=world).row_slice(12)] for r in range(world)]
    assert shares == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]


def test_collectives_are_identities_in_one_process():
    ctx = DistContext()
    tensor = torch.arange(6.0).view(1, 2, 3)
    assert ctx.all_reduce(tensor) is tensor
    assert ctx.all_gather_rows(tensor) is tensor
    assert ctx.all_gather_bytes(tensor) == [tensor]
