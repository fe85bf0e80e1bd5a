"""Crash safety end to end: SIGKILL at random moments, then resume; SIGINT/SIGTERM save and exit.

These run the real CLI in subprocesses, the way a user's run is interrupted.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from charlstm.checkpoint import load_checkpoint, load_trainer_state

pytestmark = pytest.mark.slow

TRAIN_FLAGS = [
    "--hidden-size",
    "32",
    "--num-layers",
    "2",
    "--dropout",
    "0.2",
    "--batch-size",
    "4",
    "--seq-len",
    "16",
    "--eval-interval",
    "25",
    "--seed",
    "11",
    "--device",
    "cpu",
    "--quiet",
]


def _env() -> dict[str, str]:
    # One thread: bit-for-bit results do not depend on how busy the machine is.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "charlstm", *args]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", "home"]
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(rng.choice(words) for _ in range(6000)) + "\n", encoding="utf-8")
    return path


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "last" / "model.safetensors"))


def test_sigkill_at_random_moments_then_resume_matches_uninterrupted(corpus: Path, tmp_path: Path) -> None:
    steps = "150"
    whole = tmp_path / "whole"
    subprocess.run(
        _cli("train", str(corpus), "--out", str(whole), "--max-steps", steps, *TRAIN_FLAGS),
        check=True,
        env=_env(),
        capture_output=True,
        timeout=300,
    )

    run = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0
    first = True
    while kills < 3:
        args = ["--resume", str(run)] if not first else ["--out", str(run), *TRAIN_FLAGS]
        proc = subprocess.Popen(
            _cli("train", str(corpus), "--max-steps", steps, "--checkpoint-interval", "1", *args),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Wait until the run is training (a checkpoint exists), then kill at a random moment.
        deadline = time.monotonic() + 120
        while not (run / "last").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:
            break  # finished before we could kill it: fine, the comparison below still holds
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        kills += 1
        first = False
        # Whatever the instant, `last` (or the copy a torn rename left aside) loads cleanly.
        checkpoint = load_checkpoint(run / "last" if (run / "last").exists() else run)
        assert checkpoint.model is not None
        _, meta = load_trainer_state(checkpoint.path)
        assert 0 < meta["progress"]["step"] <= int(steps)

    finish = subprocess.run(
        _cli("train", "--resume", str(run), "--max-steps", steps),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finish.returncode == 0, finish.stderr
    assert kills >= 1
    a, b = _weights(whole), _weights(run)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    whole_val = load_checkpoint(whole / "last").training["val_loss"]
    assert load_checkpoint(run / "last").training["val_loss"] == whole_val
    assert not list(run.glob(".*.tmp")), "no temporary folder is left behind"


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_last_and_says_how_to_resume(corpus: Path, tmp_path: Path, sig: int, code: int) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _cli("train", str(corpus), "--out", str(run), "--max-steps", "100000", *TRAIN_FLAGS),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"--resume {run}" in err
    _, meta = load_trainer_state(run / "last")
    assert 25 <= meta["progress"]["step"] < 100000
