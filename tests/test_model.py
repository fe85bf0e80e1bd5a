from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model
from torch.nn import functional as F

from charlstm.config import ModelConfig
from charlstm.model import CharRNN, detach_state

CELLS = ["lstm", "gru", "rnn"]


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("cell", CELLS)
def test_logits_have_shape_batch_time_vocab(cell):
    model = make_model(11, cell)
    idx = torch.randint(0, 11, (3, 7))
    logits, state = model(idx)
    assert logits.shape == (3, 7, 11)
    states = state if isinstance(state, tuple) else (state,)
    assert len(states) == (2 if cell == "lstm" else 1)
    for s in states:
        assert s.shape == (2, 3, 32)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("vocab_size", [10, 83])
def test_loss_at_initialisation_is_close_to_ln_vocab(cell, vocab_size):
    torch.manual_seed(1)
    model = CharRNN(ModelConfig(vocab_size=vocab_size, cell=cell, hidden_size=64, num_layers=2))
    idx = torch.randint(0, vocab_size, (8, 50))
    targets = torch.randint(0, vocab_size, (8, 50))
    model.train()  # with dropout on, as at the first training step
    logits, _ = model(idx)
    loss = F.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1)).item()
    assert abs(loss - math.log(vocab_size)) < 0.1


@pytest.mark.parametrize("cell", CELLS)
def test_two_chunks_with_carried_state_equal_one_pass(cell):
    model = make_model(13, cell, num_layers=2, dropout=0.3)  # eval mode: dropout is off
    idx = torch.randint(0, 13, (4, 20))
    with torch.no_grad():
        whole, whole_state = model(idx)
        first, state = model(idx[:, :8])
        second, end_state = model(idx[:, 8:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=0)
    for a, b in zip(as_tuple(end_state), as_tuple(whole_state), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_changes_the_output(cell):
    """The state argument is used: a different history gives different logits."""
    model = make_model(13, cell)
    idx = torch.randint(0, 13, (2, 5))
    with torch.no_grad():
        _, state = model(torch.randint(0, 13, (2, 9)))
        fresh, _ = model(idx)
        carried, _ = model(idx, state)
    assert not torch.allclose(fresh, carried)


@pytest.mark.parametrize("cell", CELLS)
def test_init_state_is_zeros_and_equals_no_state(cell):
    model = make_model(9, cell, num_layers=3, hidden_size=16)
    state = model.init_state(5)
    states = state if isinstance(state, tuple) else (state,)
    assert len(states) == (2 if cell == "lstm" else 1)
    for s in states:
        assert s.shape == (3, 5, 16)
        assert s.dtype == model.head.weight.dtype
        assert not s.any()
    if cell == "lstm":
        assert state[0].data_ptr() != state[1].data_ptr()
    idx = torch.randint(0, 9, (5, 4))
    with torch.no_grad():
        torch.testing.assert_close(model(idx, state)[0], model(idx)[0])


def test_streams_of_a_batch_are_independent():
    model = make_model(9)
    idx = torch.randint(0, 9, (3, 6))
    with torch.no_grad():
        batched, _ = model(idx)
        alone, _ = model(idx[1:2])
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=0)


def test_forward_is_embedding_then_rnn_then_linear():
    model = make_model(7, "gru", num_layers=1, hidden_size=8)
    idx = torch.randint(0, 7, (2, 4))
    with torch.no_grad():
        one_hot = F.one_hot(idx, 7).float()
        embedded = one_hot @ model.embedding.weight  # the tutorial's one-hot input, projected
        out, _ = model.rnn(embedded)
        expected = out @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(idx)[0], expected, atol=1e-5, rtol=0)


def test_embedding_size_follows_the_config():
    assert make_model(100, hidden_size=16).embedding.weight.shape == (100, 16)
    assert make_model(10, hidden_size=16).embedding.weight.shape == (10, 10)
    assert make_model(10, hidden_size=16, embedding_size=4).embedding.weight.shape == (10, 4)


def test_dropout_only_between_layers_when_stacked():
    assert make_model(5, num_layers=1, dropout=0.5).rnn.dropout == 0.0
    assert make_model(5, num_layers=2, dropout=0.5).rnn.dropout == 0.5


@pytest.mark.parametrize("cell", CELLS)
def test_detach_state_keeps_values_and_cuts_the_graph(cell):
    model = make_model(5, cell).train()
    _, state = model(torch.randint(0, 5, (2, 3)))
    detached = detach_state(state)
    pairs = zip(state, detached, strict=True) if cell == "lstm" else [(state, detached)]
    for original, cut in pairs:
        assert original.requires_grad and not cut.requires_grad
        assert torch.equal(original, cut)


def test_num_parameters_counts_every_weight():
    model = make_model(10, "rnn", num_layers=1, hidden_size=4)
    # embedding 10x4, rnn (4x4 + 4x4 + 4 + 4), head 4x10 + 10
    assert model.num_parameters() == 40 + 40 + 50
