"""The step-by-step cell must reproduce the fused nn.LSTM / nn.GRU / nn.RNN exactly (to float
tolerance), layer by layer, and its predictions must be the model's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, make_model

from charlstm.gates import RECORDED, trace
from charlstm.model import CharRNN
from charlstm.vocab import Vocab

TEXT = TINY_TEXT[:150]
ATOL = 1e-5


def first_layers(model: CharRNN, count: int) -> torch.nn.RNNBase:
    """A fused module holding the model's first `count` layers: an independent oracle for layer
    count - 1's h at every step."""
    config = model.config
    fused = type(model.rnn)(config.input_size, config.hidden_size, count, batch_first=True)
    weights = model.rnn.state_dict()
    fused.load_state_dict({k: v for k, v in weights.items() if int(k.rsplit("l", 1)[1]) < count})
    return fused.eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize(("num_layers", "embedding_size"), [(1, None), (3, None), (2, 0)])  # 0: one-hot
def test_recomputed_states_equal_the_fused_module(cell, num_layers, embedding_size):
    vocab = Vocab.from_text(TINY_TEXT)
    model = make_model(
        len(vocab),
        cell,
        seed=num_layers,
        hidden_size=12,
        num_layers=num_layers,
        embedding_size=embedding_size,
    )
    result = trace(model, vocab, TEXT)
    idx = torch.tensor([vocab.encode(TEXT)])
    with torch.no_grad():
        logits, final = model(idx)
        embedded = model.input_vectors(idx)
        for k in range(num_layers):
            out, _ = first_layers(model, k + 1)(embedded)
            np.testing.assert_allclose(result.layers[k]["h"], out[0].numpy(), atol=ATOL)
    assert set(result.layers[0]) == set(RECORDED[cell])
    np.testing.assert_allclose(result.next_probs, torch.softmax(logits[0], -1).numpy(), atol=ATOL)
    if cell == "lstm":
        _, c_n = final
        for k, layer in enumerate(result.layers):
            np.testing.assert_allclose(layer["c"][-1], c_n[k, 0].numpy(), atol=ATOL)
            np.testing.assert_allclose(layer["h"], layer["o"] * np.tanh(layer["c"]), atol=ATOL)
            np.testing.assert_allclose(layer["tanh_c"], np.tanh(layer["c"]), atol=ATOL)
    else:
        for k, layer in enumerate(result.layers):
            np.testing.assert_allclose(layer["h"][-1], final[k, 0].numpy(), atol=ATOL)


def test_gates_are_the_ones_the_cell_used():
    """Rebuild one LSTM step from the recorded gates: c_t = f c_{t-1} + i g and h = o tanh(c)."""
    vocab = Vocab.from_text(TINY_TEXT)
    layer = trace(make_model(len(vocab), "lstm", hidden_size=8), vocab, TEXT).layers[1]
    for name in ("i", "f", "o"):
        assert 0.0 < layer[name].min() and layer[name].max() < 1.0
    assert layer["g"].min() < 0.0 < layer["g"].max()
    rebuilt = layer["f"][1:] * layer["c"][:-1] + layer["i"][1:] * layer["g"][1:]
    np.testing.assert_allclose(rebuilt, layer["c"][1:], atol=ATOL)


def test_predictions_and_surprisal_follow_the_text():
    vocab = Vocab.from_text(TINY_TEXT)
    result = trace(make_model(len(vocab), "gru"), vocab, TEXT, top_k=5)
    assert math.isnan(result.char_probs[0])
    ids = vocab.encode(TEXT)
    assert result.char_probs[7] == pytest.approx(result.next_probs[6, ids[7]])
    assert result.top_ids.shape == (len(TEXT), 5)
    assert (np.diff(result.top_probs, axis=1) <= 0).all()
    np.testing.assert_array_equal(result.top_ids[:, 0], result.next_probs.argmax(1))
    expected_loss = -np.log(result.char_probs[1:]).mean()
    assert result.loss == pytest.approx(expected_loss)
    assert result.bpc == pytest.approx(expected_loss / math.log(2))


def test_unknown_characters_are_dropped():
    vocab = Vocab.from_text(TINY_TEXT)
    result = trace(make_model(len(vocab), "rnn"), vocab, "The\u00e9 fox")
    assert result.text == "The fox"
    assert result.layers[0]["h"].shape == (7, 32)


@pytest.mark.gpu
def test_a_model_on_cuda_gives_the_same_trace():
    vocab = Vocab.from_text(TINY_TEXT)
    model = make_model(len(vocab), "lstm", hidden_size=8)
    on_cpu = trace(model, vocab, TEXT)
    on_gpu = trace(model.to("cuda"), vocab, TEXT)
    np.testing.assert_allclose(on_gpu.next_probs, on_cpu.next_probs, atol=1e-4)
    np.testing.assert_allclose(on_gpu.layers[1]["f"], on_cpu.layers[1]["f"], atol=1e-4)
