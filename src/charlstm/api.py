"""The Python API: `train`, `load`, and `CharModel` with `generate`, `stream`, `evaluate`,
`save_pretrained`. The CLI is a thin layer over it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import BUNDLED_NAME, bundled_text, read_corpus, read_text_file
from .errors import CharLSTMError
from .evaluation import HeldOut
from .gates import Inspection, trace
from .metrics import score
from .model import CharRNN
from .runner import train
from .sample import default_prime, generate_texts, stream_text
from .trainer import pick_device
from .vocab import Vocab

__all__ = ["CharModel", "held_out_text", "load", "train"]


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

    def evaluate(self, text: str | None = None) -> dict[str, float]:
        """Loss (nats/char), bits per char and perplexity of `text`, each character predicted from
        the ones before it; characters outside the vocabulary are skipped and counted. With no
        text, the held-out validation text of the run that trained the model. The streams and
        window are the training's, so this reproduces the run's `val_loss`."""
        if text is None:
            text = held_out_text(self.training)
        unknown = sum(1 for c in text if c not in self.vocab)
        ids = torch.tensor(self.vocab.encode(text, unknown="drop"), dtype=torch.long)
        config = TrainConfig.from_dict(self.training.get("config", {}))
        held_out = HeldOut(ids, config.batch_size, config.seq_len, self.device)
        with torch.inference_mode():
            nats, chars = held_out.score(self.model)
        return {**score(nats, chars), "num_chars": len(text), "unknown_chars": unknown}

    def inspect(self, text: str, top_k: int = 5) -> Inspection:
        """Per character: the probability the model gave it and its top-k guesses for the next
        one; per layer: every state and gate as (T, hidden_size) numpy arrays (see gates.py)."""
        self.model.eval()
        return trace(self.model, self.vocab, text, top_k)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        """Save as a checkpoint folder; `dtype=torch.float16` halves the file (it loads as fp32)."""
        return save_checkpoint(path, self.model, self.vocab, self.training, dtype=dtype)

    def info(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "model": self.config.to_dict(),
            "parameters": self.model.num_parameters(),
            "vocab": "".join(self.vocab.chars),
            "training": self.training,
        }


def load(path: str | Path | None = None, device: str = "cpu") -> CharModel:
    """Load a checkpoint folder, or a run folder (its best checkpoint), onto `device`; with no
    path, the pretrained model bundled with the package."""
    checkpoint = load_checkpoint(path, pick_device(device))
    return CharModel(checkpoint.model, checkpoint.vocab, checkpoint.training, checkpoint.path)


def held_out_text(training: dict[str, Any]) -> str:
    """The validation text of the run described by a checkpoint's `training` facts: its
    --val-file, or the last --val-frac of its training text."""
    config = TrainConfig.from_dict(training.get("config", {}))
    sources, encoding = training.get("data"), training.get("encoding", "utf-8")
    if config.val_file:
        return read_text_file(Path(config.val_file), encoding)
    if not sources:
        raise CharLSTMError("the checkpoint does not say what it was trained on; give a text to score")
    if sources == [BUNDLED_NAME]:
        text = bundled_text()
    else:
        missing = [s for s in sources if not Path(s).is_file()]
        if missing:
            raise CharLSTMError(f"the run's training text {missing[0]} is gone; give a text to score")
        text, _ = read_corpus(sources, encoding)
    return text[int(len(text) * (1 - config.val_frac)) :]
