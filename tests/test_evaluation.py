"""HeldOut: the one evaluator, for validation during training and for `charlstm eval`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_model
from torch.nn import functional as F

from charlstm.distributed import DistContext
from charlstm.errors import CharLSTMError
from charlstm.evaluation import IGNORE, HeldOut


class LocalRank(DistContext):
    """Rank `rank` of `world_size` without a process group: its all-reduce is this rank's sum only."""

    def all_reduce(self, tensor, op=None):
        return tensor


def pairs_scored(held_out: HeldOut) -> list[tuple[int, int]]:
    """Every (input, target) pair the windows score, in order."""
    pairs = []
    for index in range(len(held_out)):
        inputs, targets = held_out.window_at(index)
        keep = targets != IGNORE
        pairs += list(zip(inputs[keep].tolist(), targets[keep].tolist(), strict=True))
    return pairs


@pytest.mark.parametrize(("length", "streams", "window"), [(100, 4, 8), (101, 3, 5), (40, 10, 8), (9, 4, 8)])
def test_every_character_after_the_first_is_scored_once(length, streams, window):
    ids = np.arange(length) % 251
    held_out = HeldOut(ids.astype(np.uint8), streams, window)
    assert held_out.pairs == length - 1
    assert sorted(pairs_scored(held_out)) == sorted((i % 251, (i + 1) % 251) for i in range(length - 1))


def test_the_loss_is_the_mean_over_each_row_scored_in_one_pass():
    ids = torch.tensor(np.random.default_rng(0).integers(0, 7, 203))
    model = make_model(7, num_layers=1)
    held_out = HeldOut(ids, streams=3, window=8)
    total = 0.0
    with torch.no_grad():
        for start in held_out.row_starts.tolist():
            row = ids[start : min(start + held_out.width, held_out.pairs) + 1]
            logits, _ = model(row[None, :-1])
            total += F.cross_entropy(logits[0], row[1:], reduction="sum").item()
    assert held_out.loss(model) == pytest.approx(total / 202, abs=1e-5)


def test_ranks_share_the_rows_and_their_sums_make_the_whole():
    ids = torch.tensor(np.random.default_rng(1).integers(0, 5, 400))
    model = make_model(5, num_layers=1)
    nats, chars = HeldOut(ids, streams=4, window=16).score(model)
    shares = [HeldOut(ids, 4, 16, dist=LocalRank(rank=r, world_size=2)).score(model) for r in range(2)]
    assert sum(c for _, c in shares) == chars == 399
    assert sum(n for n, _ in shares) == pytest.approx(nats, rel=1e-6)
    assert all(c > 0 for _, c in shares)


def test_a_text_too_short_to_share_among_the_processes_is_a_clear_error():
    with pytest.raises(CharLSTMError, match="too short to share among 4 processes"):
        HeldOut(np.arange(20), streams=8, window=8, dist=LocalRank(rank=0, world_size=4))


def test_fewer_than_two_known_characters_cannot_be_scored():
    with pytest.raises(CharLSTMError, match="at least 2 characters"):
        HeldOut(np.arange(1), streams=4, window=8)


def test_the_state_is_carried_across_windows_of_a_row():
    """Scoring in windows of 4 equals scoring each row whole: the state crosses windows."""
    ids = torch.tensor(np.random.default_rng(2).integers(0, 6, 97))
    model = make_model(6, num_layers=2)
    whole = HeldOut(ids, streams=2, window=48).loss(model)  # two rows of 48, one window each
    windowed = HeldOut(ids, streams=2, window=4)
    assert len(windowed) > 1
    assert windowed.loss(model) == pytest.approx(whole, abs=1e-5)
    assert math.isfinite(whole)
