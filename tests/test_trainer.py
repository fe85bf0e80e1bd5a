from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import fn_hooks, make_model
from torch.nn import functional as F

from charlstm.config import TrainConfig
from charlstm.data import StreamBatches, encode_corpus, split_train_val
from charlstm.errors import CharLSTMError
from charlstm.evaluation import HeldOut
from charlstm.policy import EVAL_COST_FACTOR, MIN_EVAL_STEPS, default_eval_interval
from charlstm.runstate import capture, restore
from charlstm.trainer import Trainer, pick_device
from charlstm.vocab import Vocab

RECORD_KEYS = {"step", "epoch", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s"}


def make_trainer(
    text: str, *, hidden_size=32, num_layers=1, cell="lstm", dropout=0.0, hooks=None, clock=None, **options
) -> Trainer:
    options = {"batch_size": 4, "seq_len": 8, "device": "cpu", **options}
    config = TrainConfig(**options)
    vocab = Vocab.from_text(text)
    train_ids, val_ids = split_train_val(encode_corpus(text, vocab), config.val_frac)
    model = make_model(
        len(vocab), cell, seed=config.seed, hidden_size=hidden_size, num_layers=num_layers, dropout=dropout
    ).to(config.device)
    return Trainer(
        model,
        config,
        StreamBatches(train_ids, config.batch_size, config.seq_len, config.device),
        HeldOut(val_ids, config.batch_size, config.seq_len, config.device),
        hooks,
        **({"clock": clock} if clock else {}),
    )


def as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


class FakeClock:
    """Stands in for the trainer's clock: each reading is one second later than the last."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


@pytest.mark.slow
def test_tiny_model_overfits_a_repetitive_text():
    losses: list[float] = []
    trainer = make_trainer(
        "hello world " * 200,
        hidden_size=64,
        batch_size=8,
        seq_len=16,
        learning_rate=0.01,
        max_steps=100,
        epochs=1000,
        eval_interval=1000,
        hooks=fn_hooks(on_step=lambda _, loss: losses.append(loss.item())),
    )
    progress = trainer.fit()
    assert progress.step == 100
    assert abs(losses[0] - math.log(8)) < 0.15  # starts from a uniform guess over 8 characters
    assert np.mean(losses[-10:]) < 0.3
    assert progress.history[-1]["val_loss"] < 0.5


def test_train_step_lowers_the_loss_on_its_window():
    trainer = make_trainer("abcabcabd" * 30, learning_rate=0.01)
    window = trainer.train_batches[0]
    first = trainer.train_step(window.inputs, window.targets).item()
    for _ in range(20):
        trainer.state = None
        last = trainer.train_step(window.inputs, window.targets).item()
    assert last < first - 0.5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_is_carried_within_an_epoch_and_reset_at_its_start(cell):
    trainer = make_trainer("the cat sat on the mat. " * 12, cell=cell, epochs=2, eval_interval=1000)
    seen: list[tuple[tuple, tuple]] = []  # (state in, state out) of every training forward pass

    def before(module, args):
        if module.training:
            seen.append((as_tuple(args[1]), None))

    def after(module, args, output):
        if module.training:
            seen[-1] = (seen[-1][0], tuple(s.detach().clone() for s in as_tuple(output[1])))

    trainer.model.register_forward_pre_hook(before)
    trainer.model.register_forward_hook(after)
    trainer.fit()
    per_epoch = trainer.steps_per_epoch
    assert per_epoch >= 3
    assert len(seen) == 2 * per_epoch
    for step, (state_in, _) in enumerate(seen):
        if step % per_epoch == 0:
            assert all(not s.any() for s in state_in), f"step {step} starts an epoch from zeros"
        else:
            previous_out = seen[step - 1][1]
            assert all(torch.equal(a, b) for a, b in zip(state_in, previous_out, strict=True)), step
            assert all(not s.requires_grad for s in state_in), "carried state is detached"
            assert any(s.any() for s in state_in)


def test_max_steps_stops_the_run():
    trainer = make_trainer("abcdefgh " * 40, max_steps=5, epochs=100)
    assert trainer.total_steps == 5
    assert trainer.fit().step == 5


def test_epochs_bound_the_run_without_max_steps():
    trainer = make_trainer("abcdefgh " * 40, epochs=2, eval_interval=1000)
    progress = trainer.fit()
    assert progress.step == trainer.total_steps == 2 * trainer.steps_per_epoch
    assert progress.history[-1]["epoch"] == 2.0


def test_max_time_stops_the_run():
    clock = FakeClock().perf_counter
    trainer = make_trainer("abcdefgh " * 40, max_time=6.0, epochs=100, eval_interval=1000, clock=clock)
    progress = trainer.fit()
    assert 1 <= progress.step < 10
    assert progress.step < trainer.total_steps
    assert progress.elapsed_s >= 6.0
    assert len(progress.history) == 1  # the run's end is still recorded


def test_should_stop_stops_the_run_after_the_current_step_and_saves():
    steps: list[int] = []
    saved: list[int] = []
    hooks = fn_hooks(
        on_step=lambda trainer, _loss: steps.append(trainer.progress.step),
        on_save=lambda trainer: saved.append(trainer.progress.step),
        should_stop=lambda: len(steps) >= 3,
    )
    trainer = make_trainer("abcdefgh " * 40, epochs=100, eval_interval=1000, hooks=hooks)
    progress = trainer.fit()
    assert progress.step == 3
    assert trainer.stopped_early
    assert saved == [3]  # the resumable checkpoint is written for the step it stopped at


def test_a_diverged_loss_is_a_clear_error():
    trainer = make_trainer("abcdefgh " * 40, max_steps=5)
    with torch.no_grad():
        trainer.model.head.bias[0] = math.nan
    with pytest.raises(CharLSTMError, match="diverged"):
        trainer.fit()


def test_state_dict_resumes_training_exactly():
    text = "the cat sat on the mat. " * 12
    options = {"num_layers": 2, "dropout": 0.3, "eval_interval": 1000}  # dropout draws random numbers
    straight = make_trainer(text, max_steps=10, **options)
    straight.fit()

    first = make_trainer(text, max_steps=4, **options)
    first.fit()
    tensors, meta = capture(first)
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    json.dumps(meta)  # the facts are plain JSON

    second = make_trainer(text, max_steps=10, **options)
    torch.manual_seed(12345)  # whatever the generator holds now, resuming restores it
    second.model.load_state_dict(weights)
    restore(second, tensors, meta, where="test")
    assert second.progress.step == 4
    second.fit()
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_metrics_records_have_the_documented_keys_and_consistent_values():
    records: list[tuple[dict, bool]] = []
    trainer = make_trainer(
        "abcdefgh " * 40,
        max_steps=7,
        epochs=100,
        eval_interval=3,
        hooks=fn_hooks(on_eval=lambda _, record, best: records.append((record, best))),
    )
    progress = trainer.fit()
    assert [r["step"] for r, _ in records] == [3, 6, 7]
    assert [r for r, _ in records] == progress.history
    for record, _ in records:
        assert RECORD_KEYS <= set(record)
        assert record["val_bpc"] == pytest.approx(record["val_loss"] / math.log(2), abs=1e-4)
        assert record["chars_per_sec"] > 0
        assert record["elapsed_s"] >= 0
        assert record["epoch"] == pytest.approx(record["step"] / trainer.steps_per_epoch, abs=1e-3)
    assert records[0][1] is True
    assert progress.best_val_loss == pytest.approx(min(r["val_loss"] for r, _ in records), abs=1e-4)
    for i, (record, best) in enumerate(records):
        assert best == (record["val_loss"] < min([math.inf] + [r["val_loss"] for r, _ in records[:i]]))


def test_the_final_step_is_not_recorded_twice():
    trainer = make_trainer("abcdefgh " * 40, max_steps=6, epochs=100, eval_interval=3)
    assert [r["step"] for r in trainer.fit().history] == [3, 6]


def test_default_eval_interval_rule():
    assert default_eval_interval(0) == 1
    assert default_eval_interval(1) == math.ceil(EVAL_COST_FACTOR) == 4
    assert default_eval_interval(2) == 7
    assert default_eval_interval(10) == 35
    # never more often than once an epoch, nor than every MIN_EVAL_STEPS steps
    assert default_eval_interval(1, steps_per_epoch=11) == 11
    assert default_eval_interval(1, steps_per_epoch=1000) == MIN_EVAL_STEPS
    assert default_eval_interval(100, steps_per_epoch=1000) == 350


def test_default_schedule_also_validates_early_but_an_explicit_interval_is_exact():
    trainer = make_trainer("abcdefgh " * 2000, eval_interval=None, max_steps=20)
    interval = trainer.eval_interval
    assert trainer.policy.early_evals == {interval // 4, interval // 2} - {0}
    explicit = make_trainer("abcdefgh " * 2000, eval_interval=8, max_steps=20)
    assert explicit.policy.early_evals == frozenset()
    explicit.fit()
    assert [r["step"] for r in explicit.progress.history] == [8, 16, 20]


def test_trainer_uses_the_default_eval_interval_unless_given():
    trainer = make_trainer("abcdefgh " * 200)
    assert trainer.eval_interval == default_eval_interval(len(trainer.held_out), trainer.steps_per_epoch)
    assert make_trainer("abcdefgh " * 200, eval_interval=2).eval_interval == 2


def test_evaluate_equals_one_pass_over_each_validation_stream():
    trainer = make_trainer("the quick brown fox jumps over the lazy dog " * 20, batch_size=3, seq_len=5)
    held_out = trainer.held_out
    assert len(held_out) >= 2
    total, count = 0.0, 0
    with torch.no_grad():
        for start in held_out.row_starts.tolist():
            row = held_out.ids[start : min(start + held_out.width, held_out.pairs) + 1].long()
            logits, _ = trainer.model.eval()(row[None, :-1])
            total += F.cross_entropy(logits[0], row[1:], reduction="sum").item()
            count += len(row) - 1
    assert count == held_out.pairs
    assert trainer.evaluate() == pytest.approx(total / count, abs=1e-5)


def test_grad_clip_bounds_the_update():
    """With clipping at a tiny norm, one Adam step barely changes the loss; the clip is applied."""
    clipped = make_trainer("abcabcabd" * 30, grad_clip=1e-12, learning_rate=0.5)
    weights = [p.detach().clone() for p in clipped.model.parameters()]
    window = clipped.train_batches[0]
    clipped.train_step(window.inputs, window.targets)
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in clipped.model.parameters()]))
    assert grad_norm.item() <= 1e-11
    assert any(not torch.equal(a, b) for a, b in zip(weights, clipped.model.parameters(), strict=True))


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(CharLSTMError, match="--device cpu"):
            pick_device("cuda")


@pytest.mark.gpu
def test_tiny_model_overfits_on_cuda():
    trainer = make_trainer(
        "hello world " * 200,
        hidden_size=64,
        batch_size=8,
        seq_len=16,
        learning_rate=0.01,
        max_steps=100,
        epochs=1000,
        eval_interval=50,
        device="cuda",
    )
    progress = trainer.fit()
    assert progress.step == 100
    assert progress.history[-1]["train_loss"] < 0.3


TEXT_FOR_STATE = "the cat sat on the mat. " * 12


def unstable_trainer(**options) -> Trainer:
    """Validating every step at a learning rate so high that the validation loss often gets worse."""
    return make_trainer("the cat sat on the mat. " * 12, learning_rate=5.0, eval_interval=1, **options)


def test_the_learning_rate_halves_after_lr_patience_validations_without_a_new_best():
    records: list[tuple[dict, bool]] = []
    on_eval = fn_hooks(on_eval=lambda _, record, best: records.append((record, best)))
    trainer = unstable_trainer(lr_patience=1, max_steps=12, hooks=on_eval)
    trainer.fit()
    rates = [r["learning_rate"] for r, _ in records]
    halvings = 0
    for (record, best), following in zip(records, rates[1:], strict=False):
        expected = record["learning_rate"] if best else record["learning_rate"] / 2
        assert following == pytest.approx(expected), records
        halvings += not best
    assert halvings >= 1, "the schedule was never exercised"
    _, meta = capture(trainer)
    every_halving = sum(not best for _, best in records)
    assert meta["progress"]["lr_scale"] == 0.5**every_halving, "the halvings are kept for a resume"
    assert meta["optimizer"][0]["lr"] == trainer.optimizer.param_groups[0]["lr"]


def test_a_run_state_saved_before_the_schedule_resumes_at_the_rate_it_had_reached():
    trainer = make_trainer(TEXT_FOR_STATE, learning_rate=0.01, max_steps=3)
    trainer.fit()
    tensors, meta = capture(trainer)
    meta["progress"].pop("lr_scale")
    meta["optimizer"][0]["lr"], meta["scheduler"] = 0.0025, {"num_bad_epochs": 1}  # two halvings
    again = make_trainer(TEXT_FOR_STATE, learning_rate=0.01, max_steps=3)
    restore(again, tensors, meta, "old")
    assert again.progress.lr_scale == 0.25 and again.learning_rate() == pytest.approx(0.0025)


def test_stop_patience_marks_the_run_converged_and_ends_it():
    trainer = unstable_trainer(stop_patience=2, max_steps=200, epochs=100)
    progress = trainer.fit()
    assert progress.converged and progress.step < 200
    assert progress.evals_since_best == 2
    assert trainer.fit().step == progress.step, "a converged run trains no further"


def test_early_validations_score_the_first_eighth_and_never_make_a_best():
    records: list[tuple[dict, bool]] = []
    saves: list[int] = []
    hooks = fn_hooks(
        on_eval=lambda _, record, best: records.append((record, best)),
        on_save=lambda t: saves.append(t.progress.step),
    )
    text = "the cat sat on the mat. " * 300
    interval = make_trainer(text).eval_interval
    trainer = make_trainer(text, learning_rate=0.01, hooks=hooks, epochs=100, max_steps=interval)
    trainer.fit()
    steps = [r["step"] for r, _ in records]
    assert steps == [interval // 4, interval // 2, interval]
    early, full = [r for r, _ in records[:2]], records[2][0]
    whole = trainer.held_out.pairs
    assert all(r["val_chars"] < whole / 7 for r in early) and "val_chars" not in full
    assert [best for _, best in records] == [False, False, True]
    assert saves == [interval], "nothing is saved at a partial validation"
    assert trainer.progress.best_val_loss == pytest.approx(full["val_loss"], abs=1e-5)
    assert trainer.progress.evals_since_best == 0
