from __future__ import annotations

import dataclasses
import math

import pytest

from charlstm.config import CELLS, MAX_VOCAB, ModelConfig, TrainConfig
from charlstm.errors import CharLSTMError


def test_defaults_are_valid():
    config = TrainConfig()
    assert config.batch_size == 100 and config.seq_len == 100
    assert ModelConfig(vocab_size=65).cell == "lstm"


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"vocab_size": 1}, "at least 2"),
        ({"vocab_size": 10, "cell": "transformer"}, "--cell"),
        ({"vocab_size": 10, "hidden_size": 0}, "--hidden-size"),
        ({"vocab_size": 10, "num_layers": 0}, "--num-layers"),
        ({"vocab_size": 10, "dropout": 1.0}, "--dropout"),
        ({"vocab_size": 10, "dropout": -0.1}, "--dropout"),
        ({"vocab_size": 10, "embedding_size": -1}, "--embedding-size"),
    ],
)
def test_model_config_rejects_bad_values_naming_the_flag(options, flag):
    with pytest.raises(CharLSTMError, match=flag):
        ModelConfig(**options)


@pytest.mark.parametrize(
    ("options", "flag"),
    [
        ({"batch_size": 0}, "--batch-size"),
        ({"seq_len": 0}, "--seq-len"),
        ({"learning_rate": 0.0}, "--learning-rate"),
        ({"learning_rate": math.nan}, "--learning-rate"),
        ({"learning_rate": math.inf}, "--learning-rate"),
        ({"grad_clip": -1.0}, "--grad-clip"),
        ({"val_frac": 0.0}, "--val-frac"),
        ({"val_frac": 1.0}, "--val-frac"),
        ({"epochs": 0}, "--epochs"),
        ({"max_steps": 0}, "--max-steps"),
        ({"max_time": 0.0}, "--max-time"),
        ({"eval_interval": 0}, "--eval-interval"),
        ({"device": "tpu"}, "--device"),
    ],
)
def test_train_config_rejects_bad_values_naming_the_flag(options, flag):
    with pytest.raises(CharLSTMError, match=flag):
        TrainConfig(**options)


def test_grad_clip_zero_means_off_and_is_allowed():
    assert TrainConfig(grad_clip=0.0).grad_clip == 0.0


@pytest.mark.parametrize("cell", CELLS)
def test_model_config_round_trips_through_a_dict(cell):
    config = ModelConfig(
        vocab_size=30, cell=cell, hidden_size=16, num_layers=3, dropout=0.25, embedding_size=7
    )
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_train_config_round_trips_through_a_dict():
    config = TrainConfig(batch_size=3, seq_len=5, max_steps=9, max_time=1.5, eval_interval=2, seed=7)
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_from_dict_ignores_keys_it_does_not_know():
    data = {**ModelConfig(vocab_size=5).to_dict(), "added_in_a_later_version": 1}
    assert ModelConfig.from_dict(data) == ModelConfig(vocab_size=5)


def test_input_size_defaults_to_the_smaller_of_vocabulary_and_hidden_size():
    assert ModelConfig(vocab_size=10, hidden_size=64).input_size == 10
    assert ModelConfig(vocab_size=300, hidden_size=64).input_size == 64
    assert ModelConfig(vocab_size=300, hidden_size=64, embedding_size=5).input_size == 5


def test_configs_are_frozen():
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batch_size = 3  # type: ignore[misc]


@pytest.mark.parametrize("vocab_size", [MAX_VOCAB + 1, 200_000])
def test_a_vocabulary_too_large_for_a_character_model_is_refused(vocab_size):
    assert MAX_VOCAB == 65_536
    with pytest.raises(CharLSTMError, match="distinct characters") as info:
        ModelConfig(vocab_size=vocab_size)
    message = str(info.value)
    assert f"{vocab_size:,}" in message  # how many the text has
    assert f"{MAX_VOCAB:,}" in message  # and the limit
    assert "--encoding" in message


def test_the_largest_vocabulary_is_accepted():
    assert ModelConfig(vocab_size=MAX_VOCAB, hidden_size=4, num_layers=1).vocab_size == MAX_VOCAB


@pytest.mark.parametrize("vocab_size", [1, 0, -5])
def test_fewer_than_two_characters_is_refused(vocab_size):
    with pytest.raises(CharLSTMError, match="at least 2 distinct characters") as info:
        ModelConfig(vocab_size=vocab_size)
    assert str(vocab_size) in str(info.value)
