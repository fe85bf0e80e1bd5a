"""The Python API: `train`, `load`, and `CharModel` with `generate`, `stream`, `evaluate`,
`save_pretrained`. The CLI is a thin layer over it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
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
from .sample import Completion, Token, complete, default_prime, stream_completion
from .trainer import pick_device
from .vocab import Vocab

__all__ = ["CharModel", "held_out_text", "load", "train", "training_text"]


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
        """The prime to show and the ids to feed. The ids start with a line break (where the text
        had one) unless the prime does: a model trained with carried state has rarely seen the
        empty state, and its first guesses from it are poor, so the prime reads as the start of
        a paragraph instead."""
        lead = default_prime(self.vocab)
        prime = lead if prime is None or prime == "" else prime
        ids = self.vocab.encode(prime, unknown="drop" if drop_unknown else "error", what="prime")
        if ids and not prime.startswith(lead):
            ids = self.vocab.encode(lead) + ids
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
        stop: str | Sequence[str] = (),
        echo: bool = True,
        logprobs: int | None = None,
    ) -> str | list[str] | Completion | list[Completion]:
        """The prime (unless `echo=False`) followed by up to `length` sampled characters; a list
        when `num_samples` > 1.

        `temperature=0` is greedy. With no prime, sampling starts after a line break. Generation
        ends before the first of the `stop` strings (never included). With `logprobs=N` (0-5)
        each result is a `Completion` whose `tokens` give every generated character's
        log-probability and the N likeliest alternatives (see `sample.token_logprobs`).
        """
        given = prime
        prime, ids = self.encode_prime(prime, drop_unknown)
        completions = complete(
            self.model,
            self.vocab,
            ids,
            length,
            num_samples,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            logprobs=logprobs,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        shown = (given or "") if echo else ""
        for completion in completions:
            completion.text = shown + completion.text
        results = completions if logprobs is not None else [c.text for c in completions]
        return results[0] if num_samples == 1 else results

    def stream(
        self,
        prime: str | None = None,
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        drop_unknown: bool = False,
        stop: str | Sequence[str] = (),
        echo: bool = False,
        logprobs: int | None = None,
    ) -> Iterator[str | Token]:
        """The sampled text in pieces as it is produced (the prime first only with `echo=True`).
        With `logprobs=N`, one `Token` per generated character instead (the echoed prime, if any,
        still comes first as a string). A possible start of a stop string is held back until
        it is clear it is not one."""
        _, ids = self.encode_prime(prime, drop_unknown)
        pieces = stream_completion(
            self.model,
            self.vocab,
            ids,
            length,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            logprobs=logprobs,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        return itertools.chain([prime] if echo and prime else [], pieces)

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


def training_text(training: dict[str, Any]) -> str:
    """The whole text a checkpoint was trained on, from its `training` facts (the bundled novel
    when that was the data)."""
    sources = training.get("data")
    if not sources:
        raise CharLSTMError("the checkpoint does not say what text it was trained on; give a text instead")
    if sources == [BUNDLED_NAME]:
        return bundled_text()
    missing = [s for s in sources if not Path(s).is_file()]
    if missing:
        raise CharLSTMError(f"the run's training text {missing[0]} is gone; give a text instead")
    text, _ = read_corpus(sources, training.get("encoding", "utf-8"))
    return text


def held_out_text(training: dict[str, Any]) -> str:
    """The validation text of the run described by a checkpoint's `training` facts: its
    --val-file, or the last --val-frac of its training text."""
    config = TrainConfig.from_dict(training.get("config", {}))
    if config.val_file:
        return read_text_file(Path(config.val_file), training.get("encoding", "utf-8"))
    text = training_text(training)
    return text[int(len(text) * (1 - config.val_frac)) :]
