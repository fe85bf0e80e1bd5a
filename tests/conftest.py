"""Shared fixtures: a tiny text, a tiny random model, a saved checkpoint and a short trained run.

Every model here is a few thousand parameters so the whole suite runs in well under two minutes
on two CPU cores. PyTorch is limited to one thread: tiny models gain nothing from more, and on a
busy machine several threads per process slow each step down by an order of magnitude.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from charlstm.checkpoint import save_checkpoint
from charlstm.config import ModelConfig
from charlstm.model import CharRNN
from charlstm.trainer import Hooks
from charlstm.vocab import Vocab

torch.set_num_threads(1)

TINY_TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "Pack my box with five dozen liquor jugs!\n"
    "How vexingly quick daft zebras jump; sphinx of black quartz, judge my vow.\n"
) * 12

# The options every fast training run in the suite uses (a few steps of a very small LSTM).
TINY_TRAIN_OPTIONS = {
    "hidden_size": 32,
    "num_layers": 1,
    "dropout": 0.0,
    "batch_size": 4,
    "seq_len": 16,
    "max_steps": 6,
    "eval_interval": 3,
    "device": "cpu",
    "seed": 3,
    # A constant rate: many tests stop a run at a small --max-steps and resume it with a larger one,
    # which under a decay would (as documented) stretch the schedule; tests of the decay ask for it.
    "lr_decay": "none",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip themselves where PyTorch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def fn_hooks(**functions: Any) -> Hooks:
    """Training hooks from plain functions (instance attributes shadow the no-op methods)."""
    hooks = Hooks()
    for name, function in functions.items():
        setattr(hooks, name, function)
    return hooks


def make_model(vocab_size: int, cell: str = "lstm", seed: int = 0, **options) -> CharRNN:
    """A random model in eval mode, the same weights for the same seed."""
    options = {"hidden_size": 32, "num_layers": 2, "dropout": 0.0, **options}
    torch.manual_seed(seed)
    model = CharRNN(ModelConfig(vocab_size=vocab_size, cell=cell, **options))
    return model.eval()


@pytest.fixture
def tiny_text() -> str:
    return TINY_TEXT


@pytest.fixture
def tiny_vocab() -> Vocab:
    return Vocab.from_text(TINY_TEXT)


@pytest.fixture
def tiny_model(tiny_vocab: Vocab) -> CharRNN:
    return make_model(len(tiny_vocab))


@pytest.fixture
def tiny_text_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.txt"
    path.write_text(TINY_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, tiny_model: CharRNN, tiny_vocab: Vocab) -> Path:
    return save_checkpoint(tmp_path / "ckpt", tiny_model, tiny_vocab, {"step": 0, "note": "fixture"})


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (best/, last/, metrics.jsonl) from a few steps of training; shared, so read only."""
    import charlstm

    root = tmp_path_factory.mktemp("trained")
    text_file = root / "tiny.txt"
    text_file.write_text(TINY_TEXT, encoding="utf-8")
    return charlstm.train([text_file], root / "run", **TINY_TRAIN_OPTIONS)


@dataclass
class BrowserPage:
    """A headless Chromium page and the console errors and uncaught exceptions it has seen."""

    page: Any
    errors: list[str]


@pytest.fixture
def browser_page() -> Iterator[BrowserPage]:
    """A page in Debian's Chromium driven by Playwright (whose own browser download needs a network
    this project's machines lack); skips with the reason where either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium installed (apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            errors: list[str] = []
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield BrowserPage(page, errors)
        finally:
            browser.close()
