"""Reading what a model learned: units that track simple features of the text, the training text
behind a checkpoint, and how much of a sample is copied from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .api import CharModel, held_out_text
from .api import training_text as api_training_text
from .gates import GATES, Inspection

OPENING_QUOTES = {'"': '"', "\u201c": "\u201d", "\u00ab": "\u00bb"}
OPENING_BRACKETS = {"(": ")", "[": "]", "{": "}"}
NOVELTY_LENGTHS = (10, 20, 40)
PARAGRAPH_SEARCH = 2000
_HASH_BASE = np.uint64(1_000_003)


def inside_quotes(text: str) -> np.ndarray:
    """1 while a quotation is open after reading each character (so 1 at the opening quote, 0 at
    the closing one, as a unit's state after that character would be); straight quotes alternate."""
    out = np.zeros(len(text), dtype=np.float32)
    closing: str | None = None
    for t, char in enumerate(text):
        if closing is not None and char == closing:
            closing = None
        elif closing is None and char in OPENING_QUOTES:
            closing = OPENING_QUOTES[char]
        out[t] = closing is not None
    return out


def bracket_depth(text: str) -> np.ndarray:
    """How many brackets are open at each character (an unmatched closing one counts as none)."""
    out = np.zeros(len(text), dtype=np.float32)
    depth = 0
    closers = set(OPENING_BRACKETS.values())
    for t, char in enumerate(text):
        if char in OPENING_BRACKETS:
            depth += 1
        elif char in closers:
            depth = max(0, depth - 1)
        out[t] = depth
    return out


def _count_since(text: str, resets: Callable[[str], bool]) -> np.ndarray:
    """Characters since the last one for which `resets` holds (0 at that character)."""
    out = np.zeros(len(text), dtype=np.float32)
    count = 0
    for t, char in enumerate(text):
        count = 0 if resets(char) else count + 1
        out[t] = count
    return out


def text_features(text: str) -> dict[str, np.ndarray]:
    """The simple signals Karpathy et al. found single cells tracking, one value per character."""
    return {
        "inside quotes": inside_quotes(text),
        "position in line": _count_since(text, lambda c: c == "\n"),
        "bracket depth": bracket_depth(text),
        "position in word": _count_since(text, lambda c: not c.isalnum()),
    }


@dataclass(frozen=True)
class UnitScore:
    layer: int
    kind: str  # "tanh_c", "h", a gate name, ...
    unit: int
    feature: str  # a key of text_features, or "variance"
    score: float  # |correlation| with the feature, or the activation's variance

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "kind": self.kind,
            "unit": self.unit,
            "feature": self.feature,
            "score": round(self.score, 4),
        }


def _abs_correlation(values: np.ndarray, feature: np.ndarray) -> np.ndarray:
    """|Pearson correlation| of each column of values (T, H) with feature (T,); 0 for a constant unit."""
    centred = values - values.mean(axis=0)
    target = feature - feature.mean()
    spread = np.sqrt((centred**2).sum(axis=0) * (target**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(spread > 0, (target @ centred) / spread, 0.0)
    return np.abs(corr)


def ranked_kinds(cell: str) -> tuple[str, ...]:
    """The activations that rank units: the squashed cell state and h (bounded, so comparable)."""
    return ("tanh_c", "h") if cell == "lstm" else ("h",)


def rank_units(result: Inspection, per_feature: int = 5) -> list[UnitScore]:
    """For each text feature that varies in the text, the `per_feature` units best correlated with
    it; then the `per_feature` units of highest variance. Each group is sorted, best first."""
    features = {name: f for name, f in text_features(result.text).items() if f.std() > 0}
    ranked: list[UnitScore] = []
    candidates = [
        (k, kind, layer[kind]) for k, layer in enumerate(result.layers) for kind in ranked_kinds(result.cell)
    ]
    for name, feature in features.items():
        scored = [
            UnitScore(k, kind, int(u), name, float(s))
            for k, kind, values in candidates
            for u, s in enumerate(_abs_correlation(values.astype(np.float64), feature))
        ]
        ranked += sorted(scored, key=lambda s: -s.score)[:per_feature]
    by_variance = [
        UnitScore(k, kind, int(u), "variance", float(v))
        for k, kind, values in candidates
        for u, v in enumerate(values.var(axis=0))
    ]
    ranked += sorted(by_variance, key=lambda s: -s.score)[:per_feature]
    return ranked


Saturation = dict[str, dict[str, list[float]]]  # gate -> {"low": [...], "high": [...]} per unit


def saturation(result: Inspection, low: float = 0.1, high: float = 0.9) -> list[Saturation]:
    """Per layer, per gate: each unit's fraction of steps below `low` and above `high` (the 2015
    paper's left- and right-saturation)."""
    return [
        {
            gate: {
                "low": (layer[gate] < low).mean(axis=0).round(4).tolist(),
                "high": (layer[gate] > high).mean(axis=0).round(4).tolist(),
            }
            for gate in GATES[result.cell]
        }
        for layer in result.layers
    ]


def training_text(model: CharModel) -> str:
    """The text the checkpoint was trained on (the bundled novel when that was the data)."""
    return api_training_text(model.training)


def validation_text(model: CharModel, align: bool = True) -> str:
    """The run's held-out validation text (its --val-file, or the last --val-frac of its text).
    With `align`, it starts after the first paragraph break in its first 2,000 characters: the
    cut falls anywhere, often inside a quotation, which would invert a quote cell's reading."""
    held_out = held_out_text(model.training)
    paragraph = held_out.find("\n\n", 0, PARAGRAPH_SEARCH)
    return held_out[paragraph + 2 :] if align and paragraph >= 0 else held_out


class _WindowHashes:
    """64-bit polynomial hashes of every n-character window of a text (code points), built by
    doubling: the hashes of 2m-windows combine two m-windows, so any n takes about 2 log2(n)
    vectorised passes. Different windows collide with odds of about 2**-64."""

    def __init__(self, text: str) -> None:
        self.powers: dict[int, np.ndarray] = {1: _code_points(text)}  # width -> hashes

    def _combine(self, left: np.ndarray, right: np.ndarray, right_width: int, shift: int) -> np.ndarray:
        count = len(right) - shift
        with np.errstate(over="ignore"):  # wrapping modulo 2**64 is the point
            return left[:count] * (_HASH_BASE ** np.uint64(right_width)) + right[shift:]

    def _power(self, width: int) -> np.ndarray:
        if width not in self.powers:
            half = self._power(width // 2)
            self.powers[width] = self._combine(half, half, width // 2, width // 2)
        return self.powers[width]

    def of_width(self, n: int) -> np.ndarray:
        """Hashes of the windows of width n starting at 0, 1, ... (empty when the text is shorter)."""
        if len(self.powers[1]) < n:
            return np.zeros(0, dtype=np.uint64)
        hashes, width = None, 0
        for bit in reversed(range(n.bit_length())):
            if n & (1 << bit):
                part = self._power(1 << bit)
                hashes = part if hashes is None else self._combine(hashes, part, 1 << bit, width)
                width += 1 << bit
        assert hashes is not None
        return hashes


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)


def novelty(
    sample: str, reference: str, lengths: tuple[int, ...] = NOVELTY_LENGTHS
) -> dict[int, float | None]:
    """For each n in `lengths`: the share of the sample's n-character windows that occur verbatim
    in `reference` (None when the sample is shorter than n), by comparing window hashes: a
    2-million-character novel takes about a second for the three lengths."""
    sample_hashes, reference_hashes = _WindowHashes(sample), _WindowHashes(reference)
    shares: dict[int, float | None] = {}
    for n in lengths:
        windows = sample_hashes.of_width(n)
        if len(windows) == 0:
            shares[n] = None
            continue
        known = np.sort(reference_hashes.of_width(n))  # np.isin is several times slower here
        at = np.searchsorted(known, windows).clip(max=max(len(known) - 1, 0))
        found = known[at] == windows if len(known) else np.zeros(len(windows), dtype=bool)
        shares[n] = float(found.mean())
    return shares


def describe_novelty(shares: dict[int, float | None]) -> str:
    """One line: `10-char 93.1%, 20-char 41.0%, 40-char 2.5% of the substrings ...`."""
    parts = [f"{n}-char {'-' if share is None else f'{100 * share:.1f}%'}" for n, share in shares.items()]
    return f"{', '.join(parts)} of the substrings occur verbatim in the training text"
