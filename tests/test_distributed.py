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
        "--lr-decay",  # a constant rate: the tests resume runs with a larger --max-steps
        "none",
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


# Loaded first by every Python process the tests start (PYTHONPATH), it logs, one JSON line each,
# the files those processes create with numpy's open_memmap and safetensors' save_file.
SPY = """
import json, os
import numpy.lib.format as _format
import safetensors.torch as _st

def _log(event, path):
    with open(os.environ["CHARLSTM_TEST_LOG"], "a") as f:
        f.write(json.dumps({"event": event, "rank": os.environ.get("RANK"), "path": str(path)}) + "\\n")

_open_memmap, _save_file = _format.open_memmap, _st.save_file

def open_memmap(filename, mode="r+", *args, **kwargs):
    if mode == "w+":
        _log("open_memmap", filename)
    return _open_memmap(filename, mode, *args, **kwargs)

def save_file(tensors, filename, *args, **kwargs):
    _log("save_file", filename)
    return _save_file(tensors, filename, *args, **kwargs)

_format.open_memmap, _st.save_file = open_memmap, save_file
"""


def _spied_env(tmp_path, **extra: str) -> dict[str, str]:
    """The environment of a process started by a test, with SPY loaded into it."""
    import os

    spy = tmp_path / "spy"
    spy.mkdir(exist_ok=True)
    (spy / "sitecustomize.py").write_text(SPY, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    path = os.pathsep.join(p for p in (str(spy), env.get("PYTHONPATH")) if p)
    log = tmp_path / "spy.jsonl"
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "CHARLSTM_TEST_LOG": str(log), **extra}


def _spied(tmp_path, event: str) -> list[dict]:
    import json

    log = tmp_path / "spy.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return [r for r in map(json.loads, lines) if r["event"] == event]


def _word_corpus(path, count: int = 4000):
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    path.write_text(" ".join(words[(i * 7 + i // 3) % 8] for i in range(count)), encoding="utf-8")
    return path


def _run(command: list[str], env: dict[str, str]):
    import subprocess

    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def _torchrun(*args: str) -> list[str]:
    import sys

    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return [*launch, "-m", "charlstm", *args]


def _records(run) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_saving_on_the_clock_often_complete_and_resume(tmp_path):
    """--checkpoint-seconds is read on each rank's own clock, and a save gathers state from every
    rank: the ranks must agree on each save (issue 11, defect 1) or the job hangs until the
    distributed timeout. Here saves fall due every few steps; the run completes and resumes."""
    corpus = _word_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    env = _spied_env(tmp_path)
    often = ["--checkpoint-seconds", "0.05", "--dist-timeout", "60"]
    first = _run(
        [*_train_command(corpus, out, *_torchrun()), *often, "--max-steps", "100", "--eval-interval", "1000"],
        env,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    state_saves = [r for r in _spied(tmp_path, "save_file") if "trainer.safetensors" in r["path"]]
    assert {r["rank"] for r in state_saves} == {"0"}, "rank 0 alone writes"
    assert len(state_saves) >= 3, f"only {len(state_saves)} saves: lower --checkpoint-seconds"

    from charlstm.checkpoint import load_trainer_state

    _, meta = load_trainer_state(out / "last")
    assert meta["progress"]["step"] == 100 and meta["world_size"] == 2
    resumed = _run(_torchrun("train", "--resume", str(out), "--max-steps", "130", "--quiet", *often), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, meta = load_trainer_state(out / "last")
    assert meta["progress"]["step"] == 130
    assert [r["step"] for r in _records(out)] == [100, 130]
    assert len(_spied(tmp_path, "save_file")) > len(state_saves) * 2 + 2, "the resumed run saved too"


@pytest.mark.slow
def test_two_processes_on_the_memory_mapped_path(tmp_path):
    """Above the memory-mapping threshold, rank 0 alone writes corpus.npy (issue 11, defect 2) and
    the other rank maps it; the run matches one process on the same global batch."""
    import sys

    import numpy as np

    from charlstm.data import prepare_corpus

    corpus = _word_corpus(tmp_path / "corpus.txt")
    env = _spied_env(tmp_path, CHARLSTM_MEMMAP_BYTES="100")
    two = _run(_train_command(corpus, tmp_path / "two", *_torchrun()), env)
    assert two.returncode == 0, two.stderr[-3000:]
    writes = _spied(tmp_path, "open_memmap")
    assert [(r["rank"], r["path"]) for r in writes] == [("0", str(tmp_path / "two" / "corpus.npy.tmp"))]
    assert np.array_equal(np.load(tmp_path / "two" / "corpus.npy"), prepare_corpus([corpus]).ids)
    assert not (tmp_path / "two" / "corpus.npy.tmp").exists()
    one = _run(
        _train_command(corpus, tmp_path / "one", sys.executable, "-m", "charlstm"), _spied_env(tmp_path)
    )
    assert one.returncode == 0, one.stderr[-3000:]
    assert not (tmp_path / "one" / "corpus.npy").exists(), "below the usual threshold: in memory"
    two_records, one_records = _records(tmp_path / "two"), _records(tmp_path / "one")
    assert [r["step"] for r in two_records] == [r["step"] for r in one_records] == [10, 20, 30]
    for a, b in zip(two_records, one_records, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


@pytest.mark.slow
def test_two_processes_resume_exactly_with_each_rank_s_own_generators(tmp_path):
    """Dropout draws different numbers on each rank: a resumed two-process run must give each
    rank back its own generator (issue 11, defect 3) to end with the uninterrupted run's weights."""
    from safetensors.torch import load_file

    corpus = _word_corpus(tmp_path / "corpus.txt")
    env = _spied_env(tmp_path)
    dropout = ["--num-layers", "2", "--dropout", "0.3", "--eval-interval", "10", "--sample-length", "20"]
    straight = _run([*_train_command(corpus, tmp_path / "straight", *_torchrun()), *dropout], env)
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = [*_train_command(corpus, tmp_path / "resumed", *_torchrun()), *dropout, "--max-steps", "20"]
    assert _run(first, env).returncode == 0
    resumed = _run(
        _torchrun("train", "--resume", str(tmp_path / "resumed"), "--max-steps", "30", "--quiet"), env
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(tmp_path / "straight" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last" / "model.safetensors"))
    assert all(a[name].equal(b[name]) for name in a), "the resumed run drifted from the straight one"
    assert _records(tmp_path / "straight") == [
        {**r, "chars_per_sec": s["chars_per_sec"], "elapsed_s": s["elapsed_s"]}
        for r, s in zip(_records(tmp_path / "resumed"), _records(tmp_path / "straight"), strict=True)
    ]
