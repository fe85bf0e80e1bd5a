"""`--preset auto`: the model sized for the corpus, capped by the device, windows that fit the text."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import fn_hooks
from hypothesis import example, given, settings
from hypothesis import strategies as st

import charlstm
from charlstm.config import ModelConfig, TrainConfig
from charlstm.errors import CharLSTMError
from charlstm.model import CharRNN
from charlstm.presets import (
    AUTO_CHOSEN,
    DEVICE_MAX_HIDDEN,
    DEVICE_WINDOW,
    HIDDEN_SIZES,
    MEMORISING_EXPOSURE,
    MIN_WINDOWS,
    NUM_LAYERS,
    auto_options,
    lstm_parameters,
    preset_options,
)

DEVICES = sorted(DEVICE_MAX_HIDDEN)
FLAGS_DOC = Path(__file__).resolve().parents[1] / "docs" / "flags.md"
BUNDLED_CHARS, BUNDLED_VOCAB = 1_985_223, 83

num_chars = st.integers(min_value=2_000, max_value=10_000_000)
vocab_sizes = st.integers(min_value=2, max_value=400)
devices = st.sampled_from(DEVICES)


def windows(options: dict, chars: int) -> float:
    return 0.9 * chars // (options["batch_size"] * options["seq_len"])


# ---------------------------------------------------------------- parameter count


@pytest.mark.parametrize("vocab_size", [2, 65, 83, 256, 300, 1000])
@pytest.mark.parametrize("hidden_size", [1, 16, 64, 128, 300])
def test_lstm_parameters_counts_the_real_model(vocab_size, hidden_size):
    model = CharRNN(ModelConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=NUM_LAYERS))
    assert lstm_parameters(hidden_size, vocab_size) == model.num_parameters()


@pytest.mark.parametrize("num_layers", [1, 3])
def test_lstm_parameters_counts_other_depths(num_layers):
    model = CharRNN(ModelConfig(vocab_size=50, hidden_size=24, num_layers=num_layers))
    assert lstm_parameters(24, 50, num_layers) == model.num_parameters()


# ---------------------------------------------------------------- hidden size


@settings(max_examples=200, deadline=None)
@given(num_chars, vocab_sizes, devices)
def test_hidden_size_is_the_largest_that_fits_the_text_and_the_device(chars, vocab_size, device):
    options, _ = auto_options(chars, vocab_size, device)
    hidden, cap = options["hidden_size"], DEVICE_MAX_HIDDEN[device]
    assert hidden in HIDDEN_SIZES
    assert options["num_layers"] == NUM_LAYERS

    def fits(size: int) -> bool:
        return lstm_parameters(size, vocab_size) <= 2 * chars and size <= cap

    if fits(hidden):
        larger = [size for size in HIDDEN_SIZES if size > hidden]
        if larger:
            assert not fits(larger[0]), f"{larger[0]} would also fit"
    else:
        # Nothing fits: the smallest size, never a larger one.
        assert hidden == HIDDEN_SIZES[0]
        assert not any(fits(size) for size in HIDDEN_SIZES)


@pytest.mark.parametrize("device", DEVICES)
def test_a_huge_text_gets_the_device_cap(device):
    options, _ = auto_options(10**10, 83, device)
    assert options["hidden_size"] == DEVICE_MAX_HIDDEN[device]


def test_an_unknown_device_is_treated_like_a_cpu():
    assert auto_options(10**10, 83, "xpu")[0] == auto_options(10**10, 83, "cpu")[0]


def test_a_larger_text_never_gets_a_smaller_model():
    sizes = [auto_options(chars, 83, "cuda")[0]["hidden_size"] for chars in (10**3, 10**5, 10**6, 10**7)]
    assert sizes == sorted(sizes)
    assert sizes[0] < sizes[-1]


# ---------------------------------------------------------------- dropout


@settings(max_examples=200, deadline=None)
@given(st.lists(num_chars, min_size=2, max_size=6), vocab_sizes, devices)
def test_dropout_grows_with_parameters_per_character(many_chars, vocab_size, device):
    points = []
    for chars in many_chars:
        options, _ = auto_options(chars, vocab_size, device)
        ratio = lstm_parameters(options["hidden_size"], vocab_size) / chars
        points.append((ratio, options["epochs"], options["dropout"]))
    points.sort()
    dropouts = [dropout for _, _, dropout in points]
    assert dropouts == sorted(dropouts)
    for ratio, epochs, dropout in points:
        assert 0.0 <= dropout < 1.0
        too_long_to_memorise = ratio * epochs < MEMORISING_EXPOSURE
        assert (dropout == 0.0) == too_long_to_memorise


CPU_SIZE = DEVICE_MAX_HIDDEN["cpu"]


@pytest.mark.parametrize(
    ("chars", "dropout"),
    [
        (10**9, 0.0),
        (lstm_parameters(CPU_SIZE, 83) * 12, 0.0),  # 20 passes x 1/12 parameter per character
        (lstm_parameters(CPU_SIZE, 83) * 5, 0.1),  # 20 passes x 1/5
        (lstm_parameters(CPU_SIZE, 83) * 10 // 9, 0.1),  # 0.9: the bundled novel's regime
        (lstm_parameters(CPU_SIZE, 83) * 2 // 3, 0.2),
    ],
)
def test_dropout_bands(chars, dropout):
    options, _ = auto_options(chars, 83, "cpu")
    assert options["hidden_size"] == CPU_SIZE
    assert options["dropout"] == dropout


def test_a_model_much_larger_than_the_text_gets_the_most_dropout():
    options, _ = auto_options(2_000, 83, "cpu")  # 64 units: ~50k parameters for 2k characters
    assert options["dropout"] == 0.3


# ---------------------------------------------------------------- batch and window


# Down to 72 characters: the fewest that give 8 windows of the smallest window (1 x 8).
window_chars = st.one_of(st.integers(min_value=72, max_value=5_000), num_chars)


@settings(max_examples=300, deadline=None)
@given(window_chars, devices)
@example(72, "cpu")
@example(1_000, "cuda")
def test_windows_shrink_only_as_far_as_a_short_text_needs(chars, device):
    options, _ = auto_options(chars, 83, device)
    batch, seq = options["batch_size"], options["seq_len"]
    default_batch, default_seq = DEVICE_WINDOW[device]
    assert windows(options, chars) >= MIN_WINDOWS
    assert 1 <= batch <= default_batch and 1 <= seq <= default_seq
    if windows({"batch_size": default_batch, "seq_len": default_seq}, chars) >= MIN_WINDOWS:
        assert (batch, seq) == (default_batch, default_seq)
    # The batch is halved first, then the window; each only as far as needed.
    if seq < default_seq:
        assert batch == 1
        assert windows({"batch_size": batch, "seq_len": seq * 2}, chars) < MIN_WINDOWS
    elif batch < default_batch:
        assert windows({"batch_size": batch * 2, "seq_len": seq}, chars) < MIN_WINDOWS


def test_the_chosen_options_are_exactly_auto_chosen_and_valid():
    options, why = auto_options(50_000, 60, "cpu")
    assert set(options) == set(AUTO_CHOSEN)
    assert len(set(AUTO_CHOSEN)) == len(AUTO_CHOSEN)
    model = {k: v for k, v in options.items() if k in ("hidden_size", "num_layers", "dropout")}
    train = {k: v for k, v in options.items() if k not in model}
    ModelConfig(vocab_size=60, **model)  # both accept what auto chose
    TrainConfig(**train)
    assert why and all(isinstance(line, str) and line for line in why)
    assert str(options["hidden_size"]) in why[0]


def short_text(length: int = 3_000) -> str:
    base = "A short text, still long enough to learn from; it has some lines.\n"
    return (base * (length // len(base) + 1))[:length]


def test_auto_trains_on_a_short_text_that_the_tutorial_preset_refuses(tmp_path):
    text_file = tmp_path / "short.txt"
    text_file.write_text(short_text(), encoding="utf-8")
    seen = {}
    out = charlstm.train(
        [text_file],
        tmp_path / "auto",
        max_steps=2,
        eval_interval=1,
        device="cpu",
        hooks=fn_hooks(on_start=seen.update),
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records and all(record["val_loss"] > 0 for record in records)
    assert seen["config"]["batch_size"] * seen["config"]["seq_len"] <= 0.9 * 3_000 / MIN_WINDOWS
    assert seen["chosen"], "auto explains its choices"
    assert (out / "best").is_dir()

    with pytest.raises(CharLSTMError, match="batch") as info:
        charlstm.train([text_file], tmp_path / "tutorial", preset="tutorial", max_steps=2, device="cpu")
    assert "too short" in str(info.value)


# ---------------------------------------------------------------- the bundled corpus and the docs


def test_bundled_corpus_on_a_cpu_and_on_cuda():
    cpu, _ = auto_options(BUNDLED_CHARS, BUNDLED_VOCAB, "cpu")
    assert (cpu["hidden_size"], cpu["batch_size"], cpu["seq_len"], cpu["dropout"]) == (384, 16, 64, 0.1)
    assert (cpu["learning_rate"], cpu["lr_decay"]) == (0.003, "cosine")
    cuda, _ = auto_options(BUNDLED_CHARS, BUNDLED_VOCAB, "cuda")
    assert cuda["hidden_size"] == 512


def test_the_tutorial_preset_keeps_a_constant_rate_without_warm_up():
    options, _ = preset_options("tutorial", BUNDLED_CHARS, BUNDLED_VOCAB, "cpu")
    config = TrainConfig(**{k: v for k, v in options.items() if k in TrainConfig.__dataclass_fields__})
    assert (config.lr_decay, config.warmup_steps, config.learning_rate) == ("none", 0, 0.001)


def describe(options: dict) -> str:
    return (
        f"{options['num_layers']} x {options['hidden_size']}, dropout {options['dropout']:g}, "
        f"batch {options['batch_size']} x {options['seq_len']}, lr {options['learning_rate']:g}"
    )


def test_docs_state_what_auto_chooses_for_the_bundled_corpus():
    doc = " ".join(FLAGS_DOC.read_text(encoding="utf-8").split())
    assert f"{BUNDLED_CHARS:,} characters" in doc
    for device, where in (("cpu", "on a CPU"), ("cuda", "on a CUDA GPU")):
        options, _ = auto_options(BUNDLED_CHARS, BUNDLED_VOCAB, device)
        assert f"{describe(options)} {where}" in doc, device
    assert "2 x 384, dropout 0.1, batch 16 x 64" in doc
    assert re.search(r"2 x 512, dropout [\d.]+, batch 128 x 128", doc)


def test_docs_state_the_device_caps_and_windows():
    doc = " ".join(FLAGS_DOC.read_text(encoding="utf-8").split())
    assert "CPU {cpu}, Apple MPS {mps}, CUDA {cuda}".format(**DEVICE_MAX_HIDDEN) in doc
    windows_text = "CPU {} x {}, MPS {} x {}, CUDA {} x {}".format(
        *DEVICE_WINDOW["cpu"], *DEVICE_WINDOW["mps"], *DEVICE_WINDOW["cuda"]
    )
    assert windows_text in doc
    assert ", ".join(str(size) for size in HIDDEN_SIZES) in doc
    assert f"at least {MIN_WINDOWS} windows" in doc
