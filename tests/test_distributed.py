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


def _train_command(corpus, out, *prefix: str) -> list[str]:
    return [
        *prefix,
        "train",
        str(corpus),
        "--hidden-size",
        "32",
        "--num-layers",
        "1",
        "--dropout",
        "0",
        "--batch-size",
        "8",
        "--seq-len",
        "16",
        "--max-steps",
        "30",
        "--eval-interval",
        "10",
        "--seed",
        "3",
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
    ]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    """torchrun with 2 processes (gloo) gives the losses of one process on the same global batch,
    writes one ordinary checkpoint, and that checkpoint samples and resumes in one process."""
    import json
    import os
    import subprocess
    import sys

    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(words[(i * 7 + i // 3) % 8] for i in range(4000)), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    python = [sys.executable, "-m"]
    torchrun = [*python, "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "charlstm"]
    two = subprocess.run(
        _train_command(corpus, tmp_path / "two", *torchrun),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        _train_command(corpus, tmp_path / "one", *python, "charlstm"),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert one.returncode == 0, one.stderr[-3000:]

    def records(run):
        return [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    two_records, one_records = records("two"), records("one")
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == [10, 20, 30]
    for a, b in zip(two_records, one_records, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert two.stdout.count("saved ") == 1, "only rank 0 reports"

    from charlstm import load
    from charlstm.checkpoint import load_trainer_state

    tensors, _ = load_trainer_state(tmp_path / "two" / "last")
    assert tensors["hidden.0"].shape == (1, 8, 32), "the saved state holds every stream"
    assert load(tmp_path / "two").generate("alpha ", length=20, seed=1).startswith("alpha ")
    more = subprocess.run(
        [*python, "charlstm", "train", "--resume", str(tmp_path / "two"), "--max-steps", "40"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert more.returncode == 0, more.stderr[-3000:]
    assert records("two")[-1]["step"] == 40
