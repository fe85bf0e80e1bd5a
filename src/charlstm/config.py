"""Frozen, typed configuration with validation that explains itself.

`ModelConfig` is what a checkpoint needs to rebuild the network; `TrainConfig` is how it was
trained. The CLI derives its flags from the fields (see `cli.py`), so each field's `help`
metadata is the single place an option is documented in code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import CharLSTMError

CELLS = ("lstm", "gru", "rnn")
# Past this a "character" vocabulary is almost surely not text (or wants subwords), and the
# output layer alone would dwarf any model worth training on a character level.
MAX_VOCAB = 1 << 16
DEVICES = ("auto", "cpu", "cuda", "mps")
BACKENDS = ("auto", "gloo", "nccl")
PRECISIONS = ("fp32", "bf16")
LR_DECAYS = ("none", "cosine", "linear")
# Bounds on sizes read from files a user may not trust: past these a config.json asks for more
# memory than any character model needs, so loading it could exhaust the machine.
MAX_HIDDEN = 1 << 14
MAX_LAYERS = 64
MAX_EMBEDDING = MAX_VOCAB


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CharLSTMError(message)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    cell: str = _opt("lstm", "recurrent cell", choices=CELLS)
    hidden_size: int = _opt(512, "units per recurrent layer")
    num_layers: int = _opt(2, "stacked recurrent layers")
    dropout: float = _opt(0.5, "dropout between layers and before the output layer")
    embedding_size: int | None = _opt(
        None,
        "size of the character embedding (default: min(vocabulary, hidden size)); "
        "0 feeds one-hot vectors, as the tutorial does",
    )

    def __post_init__(self) -> None:
        _require(
            self.vocab_size >= 2,
            f"the text must hold at least 2 distinct characters, not {self.vocab_size}",
        )
        _require(
            self.vocab_size <= MAX_VOCAB,
            f"the text has {self.vocab_size:,} distinct characters, more than the {MAX_VOCAB:,} a "
            "character model can take; is it really text in the --encoding given?",
        )
        _require(self.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, not {self.cell!r}")
        _require(
            1 <= self.hidden_size <= MAX_HIDDEN,
            f"--hidden-size must be between 1 and {MAX_HIDDEN:,}, not {self.hidden_size}",
        )
        _require(
            1 <= self.num_layers <= MAX_LAYERS,
            f"--num-layers must be between 1 and {MAX_LAYERS}, not {self.num_layers}",
        )
        _require(0.0 <= self.dropout < 1.0, f"--dropout must be in [0, 1), not {self.dropout}")
        if self.embedding_size is not None:
            _require(
                0 <= self.embedding_size <= MAX_EMBEDDING,
                f"--embedding-size must be 0 (one-hot) to {MAX_EMBEDDING:,}, not {self.embedding_size}",
            )

    @property
    def one_hot(self) -> bool:
        return self.embedding_size == 0

    @property
    def input_size(self) -> int:
        if self.embedding_size == 0:
            return self.vocab_size
        if self.embedding_size is not None:
            return self.embedding_size
        return min(self.vocab_size, self.hidden_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = _opt(100, "parallel streams (rows the text is cut into)")
    seq_len: int = _opt(100, "characters per truncated-BPTT window")
    learning_rate: float = _opt(0.001, "Adam learning rate")
    grad_clip: float = _opt(5.0, "clip the gradient norm to this (0 turns clipping off)")
    val_frac: float = _opt(0.1, "fraction of the text, taken from its end, held out for validation")
    val_file: str | None = _opt(None, "validate on this text file instead of the last --val-frac")
    wrap_targets: bool = _opt(
        False,
        "the last target of each stream wraps to its first character (the tutorial's get_batches); "
        "off: the true next character",
    )
    epochs: int = _opt(20, "passes over the training text")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps")
    max_time: float | None = _opt(None, "stop after this many seconds of training")
    eval_interval: int | None = _opt(
        None, "steps between validations (default: keeps validation near 10%% of the time)"
    )
    checkpoint_interval: int | None = _opt(None, "also save DIR/last every this many steps")
    checkpoint_seconds: float = _opt(
        300.0, "also save DIR/last when this many seconds passed since the last save (0: never)"
    )
    warmup_steps: int = _opt(0, "raise the learning rate linearly from zero over this many steps")
    lr_decay: str = _opt(
        "none",
        "lower the learning rate to --lr-final over the run: its steps, or --max-time when that comes first",
        choices=LR_DECAYS,
    )
    lr_final: float = _opt(0.0, "where --lr-decay ends, as a fraction of --learning-rate")
    lr_patience: int = _opt(
        0, "halve the learning rate after this many validations without a new best (0: never)"
    )
    stop_patience: int = _opt(0, "stop after this many validations without a new best (0: never)")
    sample_length: int = _opt(100, "characters sampled and shown with each validation (0: none)")
    precision: str = _opt("fp32", "arithmetic on CUDA: fp32, or bf16 autocast", choices=PRECISIONS)
    seed: int = _opt(1, "seed for weights, dropout and sampling")
    device: str = _opt("auto", "where to train", choices=DEVICES)
    backend: str = _opt(
        "auto", "process-group backend under torchrun (auto: nccl on CUDA, gloo otherwise)", choices=BACKENDS
    )
    dist_timeout: float = _opt(600.0, "seconds a rank waits for the others before the job fails")

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, f"--batch-size must be at least 1, not {self.batch_size}")
        _require(self.seq_len >= 1, f"--seq-len must be at least 1, not {self.seq_len}")
        _require(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"--learning-rate must be a positive number, not {self.learning_rate}",
        )
        _require(
            math.isfinite(self.grad_clip) and self.grad_clip >= 0,
            f"--grad-clip must be zero (off) or positive, not {self.grad_clip}",
        )
        _require(0.0 < self.val_frac < 1.0, f"--val-frac must be between 0 and 1, not {self.val_frac}")
        _require(self.epochs >= 1, f"--epochs must be at least 1, not {self.epochs}")
        if self.max_steps is not None:
            _require(self.max_steps >= 1, f"--max-steps must be at least 1, not {self.max_steps}")
        if self.max_time is not None:
            _require(self.max_time > 0, f"--max-time must be positive, not {self.max_time}")
        if self.eval_interval is not None:
            _require(self.eval_interval >= 1, f"--eval-interval must be at least 1, not {self.eval_interval}")
        if self.checkpoint_interval is not None:
            _require(
                self.checkpoint_interval >= 1,
                f"--checkpoint-interval must be at least 1, not {self.checkpoint_interval}",
            )
        _require(
            math.isfinite(self.checkpoint_seconds) and self.checkpoint_seconds >= 0,
            f"--checkpoint-seconds must be 0 (off) or positive, not {self.checkpoint_seconds}",
        )
        _require(self.warmup_steps >= 0, f"--warmup-steps must be 0 (off) or more, not {self.warmup_steps}")
        _require(
            self.lr_decay in LR_DECAYS,
            f"--lr-decay must be one of {', '.join(LR_DECAYS)}, not {self.lr_decay!r}",
        )
        _require(0.0 <= self.lr_final <= 1.0, f"--lr-final must be in [0, 1], not {self.lr_final}")
        _require(self.lr_patience >= 0, f"--lr-patience must be 0 (off) or more, not {self.lr_patience}")
        _require(
            self.stop_patience >= 0, f"--stop-patience must be 0 (off) or more, not {self.stop_patience}"
        )
        _require(
            self.sample_length >= 0, f"--sample-length must be 0 (off) or more, not {self.sample_length}"
        )
        _require(self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}")
        _require(self.backend in BACKENDS, f"--backend must be one of {', '.join(BACKENDS)}")
        _require(self.dist_timeout > 0, f"--dist-timeout must be positive, not {self.dist_timeout}")
        _require(self.device in DEVICES, f"--device must be one of {', '.join(DEVICES)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**_known_fields(cls, data))


def _known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}
