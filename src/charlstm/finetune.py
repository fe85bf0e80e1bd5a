"""Fine-tuning: a new run that starts from a checkpoint's weights and architecture, on a text that
may hold characters the checkpoint never saw.

The vocabulary becomes the union of the checkpoint's characters and the new text's, sorted (the
project's one rule for ids), so an old character usually gets a new id. Weights are therefore
moved by character, never by id: an old character keeps its embedding row (or, for one-hot
input, its column of the first layer's input weights) and its output-layer row and bias, and the
recurrent layers are copied as they are. A model widened this way gives every old character
exactly the logit it gave before. A new character starts as a typical but rare one:

- input: a row (one-hot: a column) drawn per dimension from the normal distribution with the
  mean and standard deviation of the old rows, so it looks to the network like some character;
- output: a weight row drawn with a tenth of the old rows' standard deviation around zero, and
  the smallest old bias, so it starts as unlikely as the rarest character the model knew.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import WEIGHTS_FILE, load_checkpoint, resolve_checkpoint
from .data import Corpus, ids_dtype
from .errors import CharLSTMError
from .model import CharRNN
from .presets import auto_learning_rate
from .vocab import Vocab, describe_chars

# The options that shape the weights: they come from the checkpoint and may not be changed.
ARCHITECTURE = ("cell", "hidden_size", "num_layers", "embedding_size")
# Fine-tuning starts near a good solution: a third of the rate `auto` gives a model of the
# checkpoint's size moves it without first undoing what it learned (docs/finetune.md).
LEARNING_RATE_FRACTION = 1 / 3
OUTPUT_ROW_SCALE = 0.1  # new output rows: this fraction of the old rows' spread


@dataclass
class InitFrom:
    """The checkpoint a fine-tuning run starts from: its weights, characters and where it lies."""

    path: Path
    sha256: str
    model: CharRNN  # on the CPU, in the checkpoint's vocabulary
    vocab: Vocab

    @property
    def architecture(self) -> dict[str, Any]:
        """The checkpoint's architecture with the input size made explicit: a default embedding
        size (min(vocabulary, hidden)) would otherwise change as the vocabulary grows."""
        config = self.model.config
        return {
            "cell": config.cell,
            "hidden_size": config.hidden_size,
            "num_layers": config.num_layers,
            "embedding_size": 0 if config.one_hot else config.input_size,
        }

    @property
    def learning_rate(self) -> float:
        """The default learning rate of the fine-tuning run."""
        return float(f"{auto_learning_rate(self.model.config.hidden_size) * LEARNING_RATE_FRACTION:.3g}")

    def facts(self) -> dict[str, str]:
        """What config.json records of the start: the folder and the hash of its weights."""
        return {"path": str(self.path.resolve()), "sha256": self.sha256}

    def model_options(self, given: dict[str, Any]) -> dict[str, Any]:
        """The run's model options: the checkpoint's architecture and dropout, with a given
        --dropout winning; a given architecture option that contradicts the checkpoint is refused."""
        architecture = self.architecture
        conflicts = [
            f"--{name.replace('_', '-')} {given[name]} (it has {architecture[name]})"
            for name in ARCHITECTURE
            if name in given and given[name] != architecture[name]
        ]
        if conflicts:
            raise CharLSTMError(
                f"--init-from {self.path}: the architecture comes from the checkpoint, and "
                f"{'; '.join(conflicts)} contradicts it; drop those options"
            )
        return {**architecture, "dropout": given.get("dropout", self.model.config.dropout)}

    def notes(self, chosen: dict[str, Any], given: set[str], preset: str) -> list[str]:
        """The `chosen:` lines of a fine-tuning run (the preset's own would describe a model it
        did not build): where the architecture, the learning rate and the schedule came from."""
        c = self.model.config
        lines = [f"architecture from {self.path}: {c.num_layers} x {c.hidden_size} {c.cell.upper()}"]
        if "learning_rate" not in given:
            lines.append(
                f"learning rate {self.learning_rate}: a third of what auto gives {c.hidden_size} units"
            )
        names = {"batch_size": "batch", "seq_len": "seq", "epochs": "epochs"}
        from_preset = [f"{names[k]} {chosen[k]}" for k in names if k in chosen and k not in given]
        if from_preset:
            lines.append(f"{', '.join(from_preset)}: from --preset {preset} for this text")
        return lines

    def added(self, vocab: Vocab) -> list[str]:
        """Characters of `vocab` the checkpoint did not have."""
        return [c for c in vocab.chars if c not in self.vocab]

    def widened_state(self, vocab: Vocab, seed: int) -> dict[str, torch.Tensor]:
        """The checkpoint's weights for a model over `vocab` (a superset of its characters)."""
        return widen_state(self.model, self.vocab, vocab, seed)


def open_init_from(path: str | Path) -> InitFrom:
    """Load the checkpoint (or run folder: its best, else its last) a fine-tuning run starts from;
    anything that is not a readable charlstm checkpoint is one CharLSTMError line."""
    folder = resolve_checkpoint(path)
    checkpoint = load_checkpoint(folder, "cpu")  # checks the config and the weights' header first
    weights = folder / WEIGHTS_FILE
    try:
        sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    except OSError as exc:
        raise CharLSTMError(f"--init-from {weights}: cannot read ({exc.strerror or exc})") from None
    return InitFrom(folder, sha256, checkpoint.model.float(), checkpoint.vocab)


def union_vocab(old: Vocab, new: Vocab) -> Vocab:
    """Every character of both, sorted: old characters keep their rows, not their ids."""
    return Vocab(sorted(set(old.chars) | set(new.chars)))


def reencode(corpus: Corpus, vocab: Vocab) -> Corpus:
    """`corpus` with its ids in `vocab`, which must hold each of its characters."""
    if vocab == corpus.vocab:
        return corpus
    missing = [c for c in corpus.vocab.chars if c not in vocab]
    if missing:
        raise CharLSTMError(f"the text has characters the run does not know: {describe_chars(missing)}")
    # Mapped into memory whole: texts fine-tuned on are small (a memory-mapped corpus is read here).
    table = np.array([vocab.index[c] for c in corpus.vocab.chars], dtype=ids_dtype(len(vocab)))
    return replace(corpus, vocab=vocab, ids=table[np.asarray(corpus.ids)])


def _fresh_rows(old: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` rows drawn per column from a normal with the old rows' mean and spread."""
    std, mean = torch.std_mean(old, dim=0)  # a vocabulary has at least 2 characters
    noise = torch.randn((count, old.shape[1]), generator=generator, dtype=old.dtype)
    return mean + std * noise


def _by_char(old_rows: torch.Tensor, fresh: torch.Tensor, old: Vocab, vocab: Vocab) -> torch.Tensor:
    """Rows in `vocab`'s order: a known character's old row, the next fresh row otherwise."""
    fresh_rows = iter(fresh)
    return torch.stack([old_rows[old.index[c]] if c in old else next(fresh_rows) for c in vocab.chars])


def widen_state(model: CharRNN, old: Vocab, vocab: Vocab, seed: int) -> dict[str, torch.Tensor]:
    """`model`'s state dict re-indexed from `old` to `vocab` by character, new characters given
    fresh rows (the module docstring says how); the same seed gives the same rows."""
    if any(c not in vocab for c in old.chars):
        raise CharLSTMError("the new vocabulary must hold every character of the checkpoint")
    generator = torch.Generator().manual_seed(seed)
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    count = len(vocab) - len(old)
    if model.config.one_hot:  # a character's input vector is its column of the first layer
        columns = state["rnn.weight_ih_l0"].T
        state["rnn.weight_ih_l0"] = _by_char(columns, _fresh_rows(columns, count, generator), old, vocab).T
    else:
        rows = state["embedding.weight"]
        state["embedding.weight"] = _by_char(rows, _fresh_rows(rows, count, generator), old, vocab)
    head = state["head.weight"]
    spread = OUTPUT_ROW_SCALE * head.std()
    fresh_head = spread * torch.randn((count, head.shape[1]), generator=generator)
    state["head.weight"] = _by_char(head, fresh_head, old, vocab)
    bias = state["head.bias"]
    state["head.bias"] = _by_char(bias[:, None], bias.min().expand(count, 1), old, vocab)[:, 0]
    return {k: v.contiguous() for k, v in state.items()}

