"""Default hyperparameters chosen from the corpus and the device (`--preset auto`).

The tutorial's settings (a 2 x 512 LSTM, batch 100 x 100, Adam 0.001, dropout 0.5) are the
dataclass defaults in `config.py` and stay one flag away (`--preset tutorial`). They are a
poor fit for a laptop CPU: a step costs ~2 s there. `auto` follows char-rnn's advice that the
parameter count and the number of training characters be of the same order, then caps the
size by what the device can train quickly. docs/flags.md explains the rule.
"""

from __future__ import annotations

import math
from typing import Any

PRESETS = ("auto", "tutorial")
# What `tutorial` sets beyond the dataclass defaults: one-hot input vectors (an embedding
# learns a different curve) and the last target of each stream wrapping to its first character.
TUTORIAL_OPTIONS = {"embedding_size": 0, "wrap_targets": True}
HIDDEN_SIZES = (64, 128, 256, 384, 512, 1024)
# The largest hidden size each device trains at a useful pace (2 layers).
DEVICE_MAX_HIDDEN = {"cpu": 384, "mps": 512, "cuda": 1024}
# (batch_size, seq_len) per device: small windows keep CPU steps short; a GPU wants volume.
DEVICE_WINDOW = {"cpu": (16, 64), "mps": (64, 128), "cuda": (128, 128)}
NUM_LAYERS = 2
# Adam's rate by the widest hidden size it suits; wider models than the last take WIDEST_LEARNING_RATE.
LEARNING_RATE_UP_TO = ((256, 5e-3), (384, 3e-3), (512, 2e-3))
WIDEST_LEARNING_RATE = 1e-3
# The options `auto` chooses; every other option has the same default in both presets.
AUTO_CHOSEN = (
    "hidden_size",
    "num_layers",
    "dropout",
    "batch_size",
    "seq_len",
    "learning_rate",
    "lr_decay",
    "lr_patience",
    "stop_patience",
    "epochs",
)
# A short text needs many passes before it is learnt; plateau stopping ends the run in time.
MIN_EPOCHS, MAX_EPOCHS, EPOCH_CHARS = 20, 200, 20_000_000
MIN_WINDOWS = 8
# Parameters per character x passes below which a run sees too little of its text to memorise it:
# no dropout. The bundled novel on a CPU is 0.98 x 20 epochs: dropout 0.1, within noise of dropout 0
# over ten minutes (docs/benchmarks.md) and there for the longer runs.
MEMORISING_EXPOSURE = 2.0


def lstm_parameters(hidden_size: int, vocab_size: int, num_layers: int = NUM_LAYERS) -> int:
    """Parameters of CharRNN(LSTM) with the default embedding size min(V, H)."""
    embed = min(vocab_size, hidden_size)
    first = 4 * hidden_size * (embed + hidden_size + 2)
    rest = (num_layers - 1) * 4 * hidden_size * (2 * hidden_size + 2)
    return vocab_size * embed + first + rest + hidden_size * vocab_size + vocab_size


def auto_learning_rate(hidden_size: int) -> float:
    """Adam's rate for a model of this width: wider models want smaller steps."""
    return next((rate for width, rate in LEARNING_RATE_UP_TO if hidden_size <= width), WIDEST_LEARNING_RATE)


def auto_dropout(params_per_char: float, epochs: int) -> float:
    """Dropout for a model with `params_per_char` parameters per character of its text, trained
    for up to `epochs` passes: more parameters per character, and more passes, overfit sooner."""
    if params_per_char * epochs < MEMORISING_EXPOSURE:
        return 0.0
    return 0.1 if params_per_char < 1 else 0.2 if params_per_char < 2 else 0.3


def preset_options(
    preset: str, num_chars: int, vocab_size: int, device_type: str, val_frac: float = 0.1
) -> tuple[dict[str, Any], list[str]]:
    """The options `preset` chooses for this corpus and device, and why."""
    if preset == "tutorial":
        return dict(TUTORIAL_OPTIONS), ["the tutorial's settings: one-hot input, wrapped last targets"]
    return auto_options(num_chars, vocab_size, device_type, val_frac)


def auto_options(
    num_chars: int, vocab_size: int, device_type: str, val_frac: float = 0.1
) -> tuple[dict[str, Any], list[str]]:
    """Options for a corpus of `num_chars` characters on `device_type`, and why each was chosen."""
    cap = DEVICE_MAX_HIDDEN.get(device_type, DEVICE_MAX_HIDDEN["cpu"])
    fitting = [h for h in HIDDEN_SIZES if lstm_parameters(h, vocab_size) <= 2 * num_chars and h <= cap]
    hidden = fitting[-1] if fitting else HIDDEN_SIZES[0]
    params = lstm_parameters(hidden, vocab_size)
    ratio = params / num_chars
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(EPOCH_CHARS / num_chars)))
    dropout = auto_dropout(ratio, epochs)
    batch, seq = DEVICE_WINDOW.get(device_type, DEVICE_WINDOW["cpu"])
    # A short text still needs several windows per epoch and one window of validation text.
    train_chars = (1 - val_frac) * num_chars
    while batch > 1 and train_chars // (batch * seq) < MIN_WINDOWS:
        batch //= 2
    while seq > 8 and train_chars // (batch * seq) < MIN_WINDOWS:
        seq //= 2
    learning_rate = auto_learning_rate(hidden)
    options = {
        "hidden_size": hidden,
        "num_layers": NUM_LAYERS,
        "dropout": dropout,
        "batch_size": batch,
        "seq_len": seq,
        "learning_rate": learning_rate,
        "lr_decay": "cosine",
        "lr_patience": 2,
        "stop_patience": 8,
        "epochs": epochs,
    }
    why = [
        f"hidden size {hidden}: the largest whose {params / 1e6:.2f}M parameters stay within twice the "
        f"{num_chars / 1e6:.2f}M characters (char-rnn's advice) and within {device_type}'s cap of {cap}",
        f"dropout {dropout}: {ratio:.2f} parameters per character, up to {epochs} passes over the text",
        f"batch {batch} x seq {seq}, learning rate {learning_rate}: sized for {device_type}",
        f"the learning rate lowered to zero along a cosine over the run (up to {epochs} epochs, "
        "or --max-time when given)",
        "the learning rate halves after 2 validations without a new best, and the run stops after 8",
    ]
    return options, why
