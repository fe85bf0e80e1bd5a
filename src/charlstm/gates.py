"""Every layer's states and gates at every character, recomputed from the fused module's weights.

`nn.LSTM` and `nn.GRU` return only h (and c): the gates never leave the fused kernel. This module
runs the same cell written out step by step from `weight_ih_l{k}`, `weight_hh_l{k}`,
`bias_ih_l{k}`, `bias_hh_l{k}` (gate order i, f, g, o for the LSTM; r, z, n for the GRU), one
layer at a time over the whole text, so the input products of a layer are one matrix product and
only the hidden product runs per step. The tests check it against the fused modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .model import CharRNN
from .vocab import Vocab

# What a layer records at each step, per cell; each is a (T, hidden_size) array.
RECORDED: dict[str, tuple[str, ...]] = {
    "lstm": ("i", "f", "g", "o", "c", "tanh_c", "h"),
    "gru": ("r", "z", "n", "h"),
    "rnn": ("h",),
}
GATES: dict[str, tuple[str, ...]] = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "rnn": ()}


@dataclass
class Inspection:
    """What the model computed on `text`; position t has read characters 0..t.

    `next_probs[t]` is the distribution over the character after position t, so the character at
    t + 1 had probability `char_probs[t + 1]`; the first character has none (NaN), as nothing
    came before it.
    """

    text: str
    ids: np.ndarray  # (T,) int64
    vocab: tuple[str, ...]
    cell: str
    next_probs: np.ndarray  # (T, V) float32
    char_probs: np.ndarray  # (T,) float32, NaN at 0
    top_ids: np.ndarray  # (T, k) int64, likeliest next characters first
    top_probs: np.ndarray  # (T, k) float32
    layers: list[dict[str, np.ndarray]] = field(default_factory=list)  # names in RECORDED[cell]

    @property
    def surprisal(self) -> np.ndarray:
        """-ln p of each character given the ones before it (NaN for the first), in nats."""
        return -np.log(self.char_probs)

    @property
    def loss(self) -> float:
        """Mean surprisal over the predicted characters (nats/char)."""
        scored = self.surprisal[1:]
        return float(scored.mean()) if len(scored) else math.nan

    @property
    def bpc(self) -> float:
        return self.loss / math.log(2)


def _layer_weights(model: CharRNN, k: int) -> tuple[torch.Tensor, ...]:
    rnn = model.rnn
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return tuple(getattr(rnn, f"{name}_l{k}").detach() for name in names)


def _run_layer(cell: str, weights: tuple[torch.Tensor, ...], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """x (T, in) -> the layer's recorded quantities, each (T, H), from a zero initial state."""
    w_ih, w_hh, b_ih, b_hh = weights
    size = w_hh.shape[1]
    steps = x.shape[0]
    from_input = torch.addmm(b_ih, x, w_ih.t())  # (T, G): every step's input product at once
    names = RECORDED[cell]
    out = {name: torch.empty(steps, size, dtype=x.dtype) for name in names}
    h = torch.zeros(size, dtype=x.dtype)
    c = torch.zeros(size, dtype=x.dtype)
    for t in range(steps):
        from_hidden = torch.addmv(b_hh, w_hh, h)  # (G,)
        if cell == "lstm":
            pre = from_input[t] + from_hidden
            i, f, o = (torch.sigmoid(pre[j * size : (j + 1) * size]) for j in (0, 1, 3))
            g = torch.tanh(pre[2 * size : 3 * size])
            c = f * c + i * g
            tanh_c = torch.tanh(c)
            h = o * tanh_c
            values = {"i": i, "f": f, "g": g, "o": o, "c": c, "tanh_c": tanh_c, "h": h}
        elif cell == "gru":
            r_x, z_x, n_x = from_input[t].chunk(3)
            r_h, z_h, n_h = from_hidden.chunk(3)
            r, z = torch.sigmoid(r_x + r_h), torch.sigmoid(z_x + z_h)
            n = torch.tanh(n_x + r * n_h)
            h = (1 - z) * n + z * h
            values = {"r": r, "z": z, "n": n, "h": h}
        else:
            h = torch.tanh(from_input[t] + from_hidden)
            values = {"h": h}
        for name in names:
            out[name][t] = values[name]
    return out


@torch.inference_mode()
def trace(model: CharRNN, vocab: Vocab, text: str, top_k: int = 5) -> Inspection:
    """Feed `text` (characters the model knows; others dropped) from an empty state and record
    the predictions and, per layer, every state and gate (see `RECORDED`)."""
    ids = vocab.encode(text, unknown="drop")
    known = vocab.decode(ids)
    cell = model.config.cell
    weight = model.head.weight
    idx = torch.tensor(ids, dtype=torch.long, device=weight.device)
    x = model.input_vectors(idx).float().cpu()  # (T, E)
    layers = []
    for k in range(model.config.num_layers):
        weights = tuple(w.float().cpu() for w in _layer_weights(model, k))
        recorded = _run_layer(cell, weights, x)
        layers.append(recorded)
        x = recorded["h"]  # dropout is off at inference: the next layer reads h as it is
    logits = torch.addmm(model.head.bias.float().cpu(), x, model.head.weight.float().cpu().t())  # (T, V)
    probs = torch.softmax(logits, dim=-1)
    char_probs = torch.full((len(ids),), math.nan)
    if len(ids) > 1:
        char_probs[1:] = probs[:-1].gather(1, idx[1:].cpu().unsqueeze(1)).squeeze(1)
    k = min(top_k, probs.shape[1])
    top = probs.topk(k, dim=-1)
    return Inspection(
        text=known,
        ids=np.asarray(ids, dtype=np.int64),
        vocab=vocab.chars,
        cell=cell,
        next_probs=probs.numpy(),
        char_probs=char_probs.numpy(),
        top_ids=top.indices.numpy(),
        top_probs=top.values.numpy(),
        layers=[{name: value.numpy() for name, value in layer.items()} for layer in layers],
    )
