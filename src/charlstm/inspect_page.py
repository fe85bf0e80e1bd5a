"""The self-contained inspection page: the text coloured by surprisal or by one unit, the top-5
next-character guesses under the pointer, ranked units, gate saturation and summary numbers.

One HTML file with the data embedded as JSON and the CSS and JavaScript inline (assets/
inspect.html), so it opens from disk with no network. Unit activations travel as one byte per
value (base64, unit-major), which keeps a 2 x 256 LSTM on 5,000 characters to tens of megabytes
and lets the page decode only the layer and kind it shows.
"""

from __future__ import annotations

import base64
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .api import CharModel
from .errors import CharLSTMError
from .gates import RECORDED, Inspection
from .inspection import novelty, rank_units, saturation

DEFAULT_MAX_CHARS = 5000
PLACEHOLDER = "__CHARLSTM_DATA__"
# Value range of each recorded quantity, for the one-byte encoding; c itself is unbounded and the
# page shows tanh(c) instead, as Karpathy et al. did.
RANGES: dict[str, tuple[float, float]] = {
    "i": (0.0, 1.0), "f": (0.0, 1.0), "o": (0.0, 1.0), "r": (0.0, 1.0), "z": (0.0, 1.0),
    "g": (-1.0, 1.0), "n": (-1.0, 1.0), "tanh_c": (-1.0, 1.0), "h": (-1.0, 1.0),
}  # fmt: skip
LABELS = {"tanh_c": "cell tanh(c)", "h": "hidden h", "i": "input gate i", "f": "forget gate f",
          "o": "output gate o", "g": "candidate g", "r": "reset gate r", "z": "update gate z",
          "n": "candidate n"}  # fmt: skip


def page_kinds(cell: str) -> list[str]:
    """What the page can colour by, most telling first."""
    first = ["tanh_c", "h"] if cell == "lstm" else ["h"]
    return first + [k for k in RECORDED[cell] if k not in first and k in RANGES]


def _quantise(values: np.ndarray, low: float, high: float) -> str:
    """(T, H) floats in [low, high] -> base64 of H x T bytes (unit-major: one unit is contiguous)."""
    scaled = np.rint((np.clip(values, low, high) - low) / (high - low) * 255).astype(np.uint8)
    return base64.b64encode(np.ascontiguousarray(scaled.T).tobytes()).decode("ascii")


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), 4)


def _training_line(training: dict[str, Any]) -> str:
    if not training:
        return "no training facts"
    best = training.get("best_val_loss")
    best_text = f"{best:.4f} nats/char" if isinstance(best, (int, float)) else "unknown"
    data = ", ".join(training.get("data") or []) or "unknown"
    return f"{training.get('step', '?')} steps, best val loss {best_text}, data: {data}"


def page_data(
    result: Inspection, model: CharModel, source: str, novelty_shares: dict[int, float | None] | None = None
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready values."""
    if len(result.text) < 2:
        raise CharLSTMError("the text needs at least 2 characters the model knows to be inspected")
    kinds = page_kinds(result.cell)
    config = model.config
    training = model.training
    return {
        "source": source,
        "text": result.text,
        "vocab": list(result.vocab),
        "surprisal": [_finite(s) for s in result.surprisal.tolist()],
        "top_ids": result.top_ids.tolist(),
        "top_probs": np.round(result.top_probs, 4).tolist(),
        "kinds": [{"name": k, "label": LABELS[k], "range": RANGES[k]} for k in kinds],
        "layers": [{k: _quantise(layer[k], *RANGES[k]) for k in kinds} for layer in result.layers],
        "hidden_size": config.hidden_size,
        "ranking": [s.to_dict() for s in rank_units(result)],
        "saturation": saturation(result),
        "summary": {
            "characters": len(result.text),
            "loss": _finite(result.loss),
            "bpc": _finite(result.bpc),
            "model": f"{config.num_layers} x {config.hidden_size} {config.cell.upper()}, "
            f"{model.model.num_parameters():,} parameters, vocabulary {len(result.vocab)}",
            "trained": _training_line(training),
            "checkpoint": str(model.path) if model.path else "",
        },
        "novelty": {str(n): share for n, share in novelty_shares.items()} if novelty_shares else None,
    }


def render_page(data: dict[str, Any]) -> str:
    template = resources.files("charlstm").joinpath("assets", "inspect.html").read_text(encoding="utf-8")
    # "<" escaped so that no "</script>" in the text can end the data block early
    payload = json.dumps(data, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    return template.replace(PLACEHOLDER, payload)


def write_page(
    model: CharModel,
    text: str,
    out: str | Path,
    source: str = "text",
    max_chars: int = DEFAULT_MAX_CHARS,
    reference: str | None = None,
) -> dict[str, Any]:
    """Inspect the first `max_chars` characters of `text` and write the page to `out`; returns
    the data the page shows. With `reference` (the training text) the summary also says how
    much of `text` is copied from it."""
    if max_chars < 2:
        raise CharLSTMError(f"--max-chars must be at least 2, not {max_chars}")
    result = model.inspect(text[:max_chars])
    shares = novelty(result.text, reference) if reference is not None else None
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = page_data(result, model, source, shares)
    out.write_text(render_page(data), encoding="utf-8")
    return data
