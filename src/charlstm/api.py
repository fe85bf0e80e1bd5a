"""The Python API: `train`, `load`, and `CharModel` with `generate`, `stream`, `evaluate`,
`save_pretrained`. The CLI is a thin layer over it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from . import runner
from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig
from .errors import CharLSTMError
from .gates import Inspection, trace
from .metrics import score
from .model import CharRNN
from .runner import Callbacks
from .sample import default_prime, generate_texts, stream_text
from .trainer import Trainer, pick_device
from .vocab import Vocab

EVAL_MAX_STREAMS = 64
EVAL_CHUNK = 512


def train(
    paths: Iterable[str | Path] = (),
    out_dir: str | Path = "runs/charlstm",
    *,
    encoding: str = "utf-8",
    overwrite: bool = False,
    resume: bool = False,
    preset: str = "auto",
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[Trainer, torch.Tensor], None] | None = None,
    on_eval: Callable[[Trainer, dict[str, float], bool], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> Path:
    """Train on the text files or folders in `paths` (none: the bundled novel); returns `out_dir`.

    `options` are the fields of `ModelConfig` and `TrainConfig` (`hidden_size=256`,
    `max_time=60`, ...); see docs/flags.md. Those not given come from `preset`: "auto" sizes
    the model and batch for the corpus and the device, "tutorial" is the tutorial's settings.
    Writes `out_dir/best`, `out_dir/last` and `out_dir/metrics.jsonl`. `resume=True`
    continues the run in `out_dir` exactly where its `last` checkpoint stopped. The callbacks
    see the run summary, each step and each evaluation; `should_stop` is polled every step
    (the CLI sets it on Ctrl-C).
    """
    callbacks = Callbacks(on_start, on_step, on_eval, should_stop)
    return runner.train(
        paths,
        out_dir,
        encoding=encoding,
        overwrite=overwrite,
        resume=resume,
        preset=preset,
        callbacks=callbacks,
        **options,
    )


@dataclass
class CharModel:
    """A trained model with its vocabulary, ready to generate and score text."""

    model: CharRNN
    vocab: Vocab
    training: dict[str, Any]
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def encode_prime(self, prime: str | None, drop_unknown: bool = False) -> tuple[str, list[int]]:
        prime = default_prime(self.vocab) if prime is None or prime == "" else prime
        ids = self.vocab.encode(prime, unknown="drop" if drop_unknown else "error", what="prime")
        return prime, ids

    def generate(
        self,
        prime: str | None = None,
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        num_samples: int = 1,
        seed: int | None = None,
        drop_unknown: bool = False,
    ) -> str | list[str]:
        """The prime followed by `length` sampled characters; a list when `num_samples` > 1.

        `temperature=0` is greedy. With no prime, sampling starts after a line break.
        """
        given = prime
        prime, ids = self.encode_prime(prime, drop_unknown)
        texts = generate_texts(
            self.model,
            self.vocab,
            ids,
            length,
            num_samples=num_samples,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        shown = given or ""
        texts = [shown + text for text in texts]
        return texts[0] if num_samples == 1 else texts

    def stream(
        self,
        prime: str | None = None,
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        drop_unknown: bool = False,
    ) -> Iterator[str]:
        """The sampled characters one at a time, as they are produced (the prime not repeated)."""
        _, ids = self.encode_prime(prime, drop_unknown)
        return stream_text(
            self.model,
            self.vocab,
            ids,
            length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )

    @torch.inference_mode()
    def evaluate(self, text: str) -> dict[str, float]:
        """Loss (nats/char), bits per char and perplexity of `text`, predicting each character
        from the ones before it. Unknown characters are skipped and counted. Long texts are
        scored as up to 64 contiguous streams, each starting from an empty state."""
        unknown = sum(1 for c in text if c not in self.vocab)
        ids = self.vocab.encode(text, unknown="drop")
        if len(ids) < 2:
            raise CharLSTMError("the text needs at least 2 characters the model knows to be scored")
        pairs = len(ids) - 1
        rows = max(1, min(EVAL_MAX_STREAMS, pairs // 1024))
        width = math.ceil(pairs / rows)
        seq = torch.tensor(ids, device=self.device)
        inputs = torch.zeros(rows * width, dtype=torch.long, device=self.device)
        targets = torch.full((rows * width,), -100, dtype=torch.long, device=self.device)
        inputs[:pairs], targets[:pairs] = seq[:-1], seq[1:]
        inputs, targets = inputs.view(rows, width), targets.view(rows, width)
        self.model.eval()
        state, total = None, 0.0
        for start in range(0, width, EVAL_CHUNK):
            logits, state = self.model(inputs[:, start : start + EVAL_CHUNK], state)
            chunk_targets = targets[:, start : start + EVAL_CHUNK]
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                chunk_targets.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            ).item()
        return {**score(total, pairs), "num_chars": len(text), "unknown_chars": unknown}

    def inspect(self, text: str, top_k: int = 5) -> Inspection:
        """Per character: the probability the model gave it and its top-k guesses for the next
        one; per layer: every state and gate as (T, hidden_size) numpy arrays (see gates.py)."""
        self.model.eval()
        return trace(self.model, self.vocab, text, top_k)

    def save_pretrained(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.model, self.vocab, self.training)

    def info(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "model": self.config.to_dict(),
            "parameters": self.model.num_parameters(),
            "vocab": "".join(self.vocab.chars),
            "training": self.training,
        }


def load(path: str | Path, device: str = "cpu") -> CharModel:
    """Load a checkpoint folder, or a run folder (its best checkpoint), onto `device`."""
    checkpoint = load_checkpoint(path, pick_device(device))
    return CharModel(checkpoint.model, checkpoint.vocab, checkpoint.training, checkpoint.path)
