"""The hand-written single step must equal `CharRNN.forward` on a length-1 sequence."""

from __future__ import annotations

import pytest
import torch
from conftest import make_model

from charlstm.stepper import Stepper

CELLS = ["lstm", "gru", "rnn"]


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


def random_state(model, batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    zeros = as_tuple(model.init_state(batch))
    parts = tuple(torch.randn(z.shape, generator=generator) * 0.5 for z in zeros)
    return parts if len(parts) == 2 else parts[0]


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 3])
def test_one_step_equals_forward(cell, num_layers):
    model = make_model(23, cell, num_layers=num_layers, hidden_size=16, dropout=0.4)  # eval: no dropout
    ids = torch.tensor([0, 5, 22, 5])
    state = random_state(model, 4)
    logits, new_state = Stepper(model).step(ids, state)
    with torch.no_grad():
        expected, expected_state = model(ids[:, None], state)
    assert logits.shape == (4, 23)
    torch.testing.assert_close(logits, expected[:, 0], atol=1e-5, rtol=1e-5)
    for got, want in zip(as_tuple(new_state), as_tuple(expected_state), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_steps_with_carried_state_equal_one_pass(cell):
    model = make_model(11, cell, num_layers=2, hidden_size=16, embedding_size=6)
    sequence = torch.randint(0, 11, (3, 12), generator=torch.Generator().manual_seed(1))
    stepper = Stepper(model)
    state = model.init_state(3)
    outputs = []
    for t in range(sequence.shape[1]):
        logits, state = stepper.step(sequence[:, t], state)
        outputs.append(logits)
    with torch.no_grad():
        expected, _ = model(sequence)
    torch.testing.assert_close(torch.stack(outputs, dim=1), expected, atol=1e-5, rtol=1e-5)
