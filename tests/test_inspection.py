"""Unit ranking finds a planted quote cell; the text features, saturation, training text and
novelty are what they claim to be."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, make_model

from charlstm.api import CharModel
from charlstm.data import BUNDLED_NAME
from charlstm.errors import CharLSTMError
from charlstm.gates import trace
from charlstm.inspection import (
    bracket_depth,
    inside_quotes,
    novelty,
    rank_units,
    saturation,
    text_features,
    training_text,
    validation_text,
)
from charlstm.model import CharRNN
from charlstm.vocab import Vocab

QUOTED = (
    'He said "yes, of course" and left. She asked "why?" quietly; then "no" came back.\n'
    'Nobody spoke. "Fine," said Anna, "go then." The train was late again that night.\n'
) * 4
PLANTED_UNIT = 5


def plant_quote_cell(model: CharRNN, vocab: Vocab, unit: int) -> None:
    """Make LSTM layer 0's `unit` flip its cell between +1 and -1 at every straight quote:
    the input gate opens and the forget gate shuts only on a quote, and the candidate g is minus
    the unit's own previous h, so the cell alternates (quote parity)."""
    size = model.config.hidden_size
    quote = vocab.index['"']
    rnn = model.rnn
    with torch.no_grad():
        model.embedding.weight[:, 0] = 0.0
        model.embedding.weight[quote, 0] = 1.0  # input dimension 0 says "this is a quote"
        rows = [gate * size + unit for gate in range(4)]  # i, f, g, o of the unit
        rnn.weight_ih_l0[rows] = 0.0
        rnn.weight_hh_l0[rows] = 0.0
        rnn.bias_hh_l0[rows] = 0.0
        rnn.weight_hh_l0[:, unit] = 0.0  # no other unit copies it
        rnn.weight_ih_l1[:, unit] = 0.0
        i, f, g, o = rows
        rnn.weight_ih_l0[i, 0], rnn.bias_ih_l0[i] = 20.0, -10.0
        rnn.weight_ih_l0[f, 0], rnn.bias_ih_l0[f] = -20.0, 10.0
        rnn.weight_hh_l0[g, unit], rnn.bias_ih_l0[g] = -10.0, 1.0
        rnn.bias_ih_l0[o] = 10.0


def test_a_planted_quote_cell_ranks_first():
    vocab = Vocab.from_text(QUOTED)
    model = make_model(len(vocab), "lstm", hidden_size=16, num_layers=2)
    plant_quote_cell(model, vocab, PLANTED_UNIT)
    result = trace(model, vocab, QUOTED)
    quotes = [s for s in rank_units(result) if s.feature == "inside quotes"]
    best = quotes[0]
    assert (best.layer, best.unit) == (0, PLANTED_UNIT)
    assert best.kind in ("tanh_c", "h")
    assert best.score > 0.95
    assert all(s.score < best.score for s in quotes if (s.layer, s.unit) != (0, PLANTED_UNIT))


def test_without_the_plant_no_unit_tracks_quotes_that_well():
    vocab = Vocab.from_text(QUOTED)
    result = trace(make_model(len(vocab), "lstm", hidden_size=16, num_layers=2), vocab, QUOTED)
    quotes = [s for s in rank_units(result) if s.feature == "inside quotes"]
    assert quotes[0].score < 0.9


def test_ranking_has_each_varying_feature_and_variance_sorted():
    vocab = Vocab.from_text(TINY_TEXT)
    result = trace(make_model(len(vocab), "gru", hidden_size=8), vocab, TINY_TEXT[:300])
    ranked = rank_units(result, per_feature=3)
    features = [s.feature for s in ranked]
    assert "inside quotes" not in features  # the text has no quotes: a constant feature is skipped
    assert features.count("variance") == 3
    variances = [s for s in ranked if s.feature == "variance"]
    top = variances[0]
    assert top.score == pytest.approx(float(result.layers[top.layer]["h"][:, top.unit].var()), rel=1e-5)
    assert [s.score for s in variances] == sorted((s.score for s in variances), reverse=True)


def test_text_features():
    text = 'a "b c" (d (e) f) "g\nhi'
    np.testing.assert_array_equal(inside_quotes('x"ab"y'), [0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(inside_quotes("\u201cab\u201d\u201d"), [1, 1, 1, 0, 0])
    assert bracket_depth(text)[text.index("e")] == 2
    assert bracket_depth(")a")[1] == 0
    features = text_features(text)
    assert features["position in line"][text.index("i")] == 2
    assert features["position in word"][text.index("i")] == 2
    assert features["position in word"][text.index(" ")] == 0


def test_saturation_fractions():
    vocab = Vocab.from_text(TINY_TEXT)
    result = trace(make_model(len(vocab), "lstm", hidden_size=4), vocab, TINY_TEXT[:100])
    layers = saturation(result)
    assert len(layers) == 2 and set(layers[0]) == {"i", "f", "o"}
    forget = result.layers[1]["f"]
    assert layers[1]["f"]["high"] == pytest.approx((forget > 0.9).mean(axis=0), abs=1e-4)
    assert layers[1]["f"]["low"] == pytest.approx((forget < 0.1).mean(axis=0), abs=1e-4)


def naive_novelty(sample: str, reference: str, n: int) -> float:
    windows = [sample[i : i + n] for i in range(len(sample) - n + 1)]
    return sum(w in reference for w in windows) / len(windows)


def test_novelty_matches_a_naive_search():
    rng = random.Random(0)
    reference = "".join(rng.choice("ab c\u00e9") for _ in range(3000))
    copied = reference[100:160]
    sample = copied + "".join(rng.choice("ab c\u00e9") for _ in range(60))
    shares = novelty(sample, reference, (3, 10, 20, 40, 200))
    for n in (3, 10, 20, 40):
        assert shares[n] == pytest.approx(naive_novelty(sample, reference, n))
    assert shares[200] is None
    assert novelty(copied, reference)[40] == 1.0
    assert novelty("zzzzzzzzzzzz", reference)[10] == 0.0


def charmodel(training: dict) -> CharModel:
    vocab = Vocab.from_text(TINY_TEXT)
    return CharModel(make_model(len(vocab)), vocab, training)


def test_training_and_validation_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("0123456789" * 10, encoding="utf-8")
    model = charmodel({"data": [str(path)], "encoding": "utf-8", "config": {"val_frac": 0.2}})
    assert training_text(model) == "0123456789" * 10
    assert validation_text(model) == "0123456789" * 2
    path.write_text("a" * 80 + 'b"c\n\nd' + "e" * 14, encoding="utf-8")
    assert validation_text(model) == "d" + "e" * 14  # from the first paragraph break
    assert validation_text(model, align=False) == 'b"c\n\nd' + "e" * 14
    bundled = training_text(charmodel({"data": [BUNDLED_NAME]}))
    assert len(bundled) > 1_000_000
    with pytest.raises(CharLSTMError, match="gone"):
        training_text(charmodel({"data": [str(tmp_path / "missing.txt")]}))
    with pytest.raises(CharLSTMError, match="does not say"):
        training_text(charmodel({}))


def test_cli_sample_novelty(trained_run, capsys):
    from charlstm.cli import main

    assert main(["sample", str(trained_run), "--length", "80", "--seed", "2", "--novelty"]) == 0
    captured = capsys.readouterr()
    sample = captured.out[:-1]  # the sampled characters, then a line break
    shares = novelty(sample, TINY_TEXT)
    expected = f"10-char {100 * shares[10]:.1f}%, 20-char {100 * shares[20]:.1f}%"
    assert expected in captured.err
    assert main(["sample", str(trained_run), "--length", "30", "--num-samples", "2", "--novelty"]) == 0
    err = capsys.readouterr().err
    assert "sample 2:" in err and "40-char -" in err  # 30 characters hold no 40-character substring
