from __future__ import annotations

import itertools
import math

import pytest
from conftest import fn_hooks
from test_trainer import FakeClock, make_trainer

from charlstm.config import TrainConfig
from charlstm.errors import CharLSTMError
from charlstm.lr_schedule import decay_factor, fraction_done, halving_due, warmup_factor

TEXT = "the cat sat on the mat. " * 40


def test_warmup_rises_linearly_to_the_full_rate_and_stays():
    assert [warmup_factor(s, 4) for s in range(1, 7)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(1, 0) == 1.0, "0 turns the warm-up off"


@pytest.mark.parametrize("final", [0.0, 0.1])
@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_decay_runs_from_the_peak_to_its_final_fraction_and_never_rises(decay, final):
    values = [decay_factor(i / 100, decay, final) for i in range(101)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(final)
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert decay_factor(1.7, decay, final) == pytest.approx(final), "past the end it stays at the floor"
    assert decay_factor(1.0, decay) == 0.0, "to zero unless told otherwise"


def test_the_cosine_is_halfway_at_half_the_run_and_none_is_constant():
    assert decay_factor(0.5, "cosine", 0.1) == pytest.approx(0.55)
    assert decay_factor(0.5, "linear", 0.1) == pytest.approx(0.55)
    assert decay_factor(0.25, "cosine") > decay_factor(0.25, "linear"), "the cosine stays high for longer"
    assert {decay_factor(f, "none") for f in (0.0, 0.5, 1.0)} == {1.0}


def test_the_run_is_as_far_as_its_steps_or_its_clock_whichever_is_further():
    assert fraction_done(50, 200, 10.0, None) == 0.25
    assert fraction_done(50, 200, 30.0, 60.0) == 0.5, "a time budget half used"
    assert fraction_done(150, 200, 30.0, 60.0) == 0.75, "the steps run out first"


def test_halvings_come_after_every_lr_patience_validations_without_a_best():
    assert [n for n in range(1, 9) if halving_due(n, 3)] == [3, 6]
    assert not any(halving_due(n, 0) for n in range(10))


def test_bad_schedule_options_are_one_clear_error():
    with pytest.raises(CharLSTMError, match="--lr-decay must be one of none, cosine, linear"):
        TrainConfig(lr_decay="step")
    with pytest.raises(CharLSTMError, match="--warmup-steps must be 0"):
        TrainConfig(warmup_steps=-1)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(CharLSTMError, match=r"--lr-final must be in \[0, 1\]"):
            TrainConfig(lr_final=bad)


def rates_of(trainer) -> list[float]:
    rates: list[float] = []
    trainer.hooks = fn_hooks(on_step=lambda t, _: rates.append(t.optimizer.param_groups[0]["lr"]))
    trainer.fit()
    return rates


def test_the_trainer_steps_at_the_scheduled_rate():
    trainer = make_trainer(
        TEXT, learning_rate=0.01, warmup_steps=4, lr_decay="linear", max_steps=20, epochs=100
    )
    rates = rates_of(trainer)
    assert len(rates) == 20
    assert rates[0] == pytest.approx(0.0025), "a quarter of the rate on the first of 4 warm-up steps"
    expected = [0.01 * min(1, (s + 1) / 4) * decay_factor(s / 20, "linear") for s in range(20)]
    assert rates == pytest.approx(expected)
    assert trainer.progress.history[-1]["learning_rate"] == pytest.approx(expected[-1])


def test_lr_final_sets_where_the_decay_ends():
    trainer = make_trainer(
        TEXT, learning_rate=0.01, lr_decay="linear", lr_final=0.2, max_steps=20, epochs=100
    )
    rates = rates_of(trainer)
    assert rates == pytest.approx([0.01 * decay_factor(s / 20, "linear", 0.2) for s in range(20)])
    assert rates[-1] > 0.01 * 0.2, "the last step is still above the floor it was heading for"


def test_with_max_time_the_rate_decays_by_the_clock():
    """A run told its budget ends at the low rate however few steps it managed."""
    clock = FakeClock()  # every reading one second on
    trainer = make_trainer(
        TEXT,
        learning_rate=0.01,
        lr_decay="cosine",
        max_time=40.0,
        epochs=1000,
        eval_interval=1000,
        clock=clock.perf_counter,
    )
    rates = rates_of(trainer)
    assert trainer.progress.step < trainer.total_steps / 100, "the budget, not the steps, ended the run"
    assert rates[0] == pytest.approx(0.01)
    assert rates[-1] < 0.01 * 0.1, "near zero when the time is used up"
    assert all(a >= b for a, b in itertools.pairwise(rates))
    assert not math.isclose(
        rates[-1], 0.01 * decay_factor(trainer.progress.step / trainer.total_steps, "cosine")
    )
