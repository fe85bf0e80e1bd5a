"""The run folder, option handling and resume checks behind `charlstm.train`."""

from __future__ import annotations

import pytest
from conftest import TINY_TEXT, TINY_TRAIN_OPTIONS, fn_hooks

from charlstm.errors import CharLSTMError
from charlstm.runner import (
    MODEL_OPTIONS,
    RESUMABLE_CHANGES,
    TRAIN_OPTIONS,
    prepare_out_dir,
    split_options,
    train,
)


def test_split_options_sorts_model_and_training_fields():
    model, training = split_options({"hidden_size": 8, "cell": "gru", "batch_size": 2, "max_steps": None})
    assert model == {"hidden_size": 8, "cell": "gru"}
    assert training == {"batch_size": 2}  # None means "the default", as from an untyped CLI flag


def test_split_options_refuses_unknown_names():
    with pytest.raises(CharLSTMError, match="hidden_sise"):
        split_options({"hidden_sise": 8})
    with pytest.raises(CharLSTMError, match="vocab_size"):
        split_options({"vocab_size": 3})  # comes from the text, never from the caller


def test_option_names_do_not_overlap():
    assert not set(MODEL_OPTIONS) & set(TRAIN_OPTIONS)
    assert RESUMABLE_CHANGES <= set(TRAIN_OPTIONS)


def test_prepare_out_dir_creates_the_folder(tmp_path):
    prepare_out_dir(tmp_path / "a" / "b", overwrite=False)
    assert (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []


def test_prepare_out_dir_refuses_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(CharLSTMError, match="not a folder"):
        prepare_out_dir(tmp_path / "taken", overwrite=True)


def test_prepare_out_dir_never_silently_replaces_a_run(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CharLSTMError, match="--overwrite") as info:
        prepare_out_dir(tmp_path, overwrite=False)
    assert "--resume" in str(info.value)
    assert (tmp_path / "best").exists()
    prepare_out_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # only the run's own files go


def test_resume_refuses_options_that_contradict_the_run(trained_run):
    with pytest.raises(CharLSTMError, match="--hidden-size 64") as info:
        train([], trained_run, resume=True, hidden_size=64)
    assert "the run has 32" in str(info.value)
    with pytest.raises(CharLSTMError, match="--batch-size"):
        train([], trained_run, resume=True, batch_size=8)


def test_resume_refuses_other_data(tmp_path, trained_run):
    other = tmp_path / "other.txt"
    other.write_text(TINY_TEXT)
    with pytest.raises(CharLSTMError, match="trained on"):
        train([other], trained_run, resume=True)


def test_resume_refuses_a_changed_text(tmp_path, tiny_text_file):
    out = train([tiny_text_file], tmp_path / "run", **{**TINY_TRAIN_OPTIONS, "max_steps": 3})
    tiny_text_file.write_text(TINY_TEXT + "more text", encoding="utf-8")
    with pytest.raises(CharLSTMError, match="text has changed"):
        train([], out, resume=True, max_steps=6)


def test_resume_needs_a_run(tmp_path, tiny_text_file):
    with pytest.raises(CharLSTMError, match="no run to resume"):
        train([tiny_text_file], tmp_path / "fresh", resume=True)


def test_resume_of_a_finished_run_with_more_steps_continues_it(tmp_path, tiny_text_file):
    out = train([tiny_text_file], tmp_path / "run", **{**TINY_TRAIN_OPTIONS, "max_steps": 3})
    steps: list[int] = []
    starts: list[dict] = []
    hooks = fn_hooks(on_start=starts.append, on_step=lambda t, _loss: steps.append(t.progress.step))
    train([], out, resume=True, max_steps=5, hooks=hooks)
    assert starts[0]["resumed"] is True and starts[0]["start_step"] == 3
    assert steps == [4, 5]


def test_resume_may_lower_the_learning_rate(tmp_path, tiny_text_file):
    """After a divergence the advice is to resume with a lower rate: it must take effect."""
    out = train([tiny_text_file], tmp_path / "run", **{**TINY_TRAIN_OPTIONS, "max_steps": 3})
    rates: list[float] = []
    hooks = fn_hooks(on_step=lambda t, _loss: rates.append(t.optimizer.param_groups[0]["lr"]))
    train([], out, resume=True, max_steps=5, learning_rate=1e-5, hooks=hooks)
    assert rates == [1e-5, 1e-5]


def test_batch_must_divide_among_processes(tmp_path, tiny_text_file, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(CharLSTMError, match="multiple of 3"):
        train([tiny_text_file], tmp_path / "run", **TINY_TRAIN_OPTIONS)
    assert not (tmp_path / "run").exists()
