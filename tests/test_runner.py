"""The run folder, option handling and resume checks behind `charlstm.train`."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TEXT, TINY_TRAIN_OPTIONS, fn_hooks

from charlstm.errors import CharLSTMError
from charlstm.lr_schedule import decay_factor
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
    out = train(
        [tiny_text_file], tmp_path / "run", **{**TINY_TRAIN_OPTIONS, "max_steps": 3, "lr_decay": "cosine"}
    )
    rates: list[float] = []
    hooks = fn_hooks(on_step=lambda t, _loss: rates.append(t.optimizer.param_groups[0]["lr"]))
    train([], out, resume=True, max_steps=5, learning_rate=1e-5, hooks=hooks)
    # the new rate is the schedule's peak: the cosine goes on from where the run was (5 steps in all)
    assert rates == pytest.approx([1e-5 * decay_factor(step / 5, "cosine") for step in (3, 4)])


def test_a_run_saved_before_lr_final_resumes_decaying_to_a_tenth(tmp_path, tiny_text_file):
    options = {**TINY_TRAIN_OPTIONS, "max_steps": 3, "lr_decay": "linear", "learning_rate": 0.01}
    out = train([tiny_text_file], tmp_path / "run", **options)
    config_path = out / "last" / "config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    del saved["training"]["config"]["lr_final"]
    config_path.write_text(json.dumps(saved), encoding="utf-8")
    rates: list[float] = []
    hooks = fn_hooks(on_step=lambda t, _loss: rates.append(t.optimizer.param_groups[0]["lr"]))
    train([], out, resume=True, max_steps=5, hooks=hooks)
    peak = options["learning_rate"]
    assert rates == pytest.approx([peak * decay_factor(step / 5, "linear", 0.1) for step in (3, 4)])


def test_batch_must_divide_among_processes(tmp_path, tiny_text_file, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(CharLSTMError, match="multiple of 3"):
        train([tiny_text_file], tmp_path / "run", **TINY_TRAIN_OPTIONS)
    assert not (tmp_path / "run").exists()


def _run_once(tmp_path, text_file, name="run", hooks=None, **options):
    return train([text_file], tmp_path / name, hooks=hooks, **{**TINY_TRAIN_OPTIONS, **options})


def _state_files(run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / "last").iterdir())}


def _converged_run(tmp_path, text_file):
    """A run ended by --stop-patience: a learning rate so high that the loss gets no better."""
    out = _run_once(
        tmp_path, text_file, max_steps=400, eval_interval=1, stop_patience=2, lr_patience=1, learning_rate=5.0
    )
    from charlstm.checkpoint import load_trainer_state

    _, meta = load_trainer_state(out / "last")
    assert meta["progress"]["converged"] and meta["progress"]["step"] < 400
    return out, meta


def test_resuming_an_early_stopped_run_says_so_and_trains_nothing(tmp_path, tiny_text_file):
    """Issue 11, defect 6: resume lost the converged flag, trained again and halved the rate again."""
    out, _ = _converged_run(tmp_path, tiny_text_file)
    before = _state_files(out)
    steps: list[int] = []
    with pytest.raises(CharLSTMError, match="already stopped early") as info:
        train([], out, resume=True, max_steps=800, hooks=fn_hooks(on_step=lambda t, _: steps.append(1)))
    assert "--stop-patience" in str(info.value)
    assert steps == []
    assert _state_files(out) == before, "nothing saved, the learning rate not halved again"


def test_an_early_stopped_run_trains_on_with_a_larger_stop_patience(tmp_path, tiny_text_file):
    """The error above says to pass a larger --stop-patience: doing so must train on."""
    out, meta = _converged_run(tmp_path, tiny_text_file)
    steps: list[int] = []
    hooks = fn_hooks(on_step=lambda t, _: steps.append(t.progress.step))
    step = meta["progress"]["step"]
    train([], out, resume=True, max_steps=step + 3, stop_patience=100, hooks=hooks)
    assert steps == [step + 1, step + 2, step + 3]


def test_resuming_a_run_that_used_its_max_time_says_so(tmp_path, tiny_text_file):
    out = _run_once(tmp_path, tiny_text_file, max_steps=100_000, epochs=100_000, eval_interval=10_000,
                    max_time=0.3)  # fmt: skip
    from charlstm.checkpoint import load_trainer_state

    _, meta = load_trainer_state(out / "last")
    step = meta["progress"]["step"]
    assert step < 100_000 and meta["progress"]["elapsed_s"] >= 0.3
    before = _state_files(out)
    with pytest.raises(CharLSTMError, match="--max-time") as info:
        train([], out, resume=True)
    assert "already used" in str(info.value)
    assert _state_files(out) == before
    steps: list[int] = []
    train(
        [], out, resume=True, max_time=0.6, hooks=fn_hooks(on_step=lambda t, _: steps.append(t.progress.step))
    )
    assert steps and steps[0] == step + 1


def test_overwrite_removes_checkpoints_set_aside_so_recovery_cannot_bring_them_back(tmp_path, tiny_text_file):
    import shutil

    from charlstm.checkpoint import resolve_checkpoint

    out = _run_once(tmp_path, tiny_text_file)
    for name in ("best", "last"):  # as an interrupted save leaves them
        shutil.copytree(out / name, out / f".{name}.old")
        shutil.rmtree(out / name)
    with pytest.raises(CharLSTMError, match="already holds a run"):
        _run_once(tmp_path, tiny_text_file)
    calls: list[int] = []

    def stop_at_once():
        calls.append(1)
        return True

    _run_once(tmp_path, tiny_text_file, overwrite=True, hooks=fn_hooks(should_stop=stop_at_once))
    assert not (out / ".best.old").exists() and not (out / ".last.old").exists()
    assert not (out / "best").exists(), "the new run stopped before its first validation"
    assert resolve_checkpoint(out) == out / "last"


def test_an_occupied_out_is_refused_before_the_corpus_is_read(tmp_path, tiny_text_file, monkeypatch):
    from charlstm import runner

    (tmp_path / "run" / "best").mkdir(parents=True)

    def never(*args, **kwargs):
        raise AssertionError("the corpus was read before --out was checked")

    monkeypatch.setattr(runner, "prepare_corpus", never)
    with pytest.raises(CharLSTMError, match="already holds a run"):
        _run_once(tmp_path, tiny_text_file)


def test_resume_from_another_folder_with_relative_data_paths(tmp_path, monkeypatch):
    from charlstm.checkpoint import read_config

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    train(["data/tiny.txt"], "run", **{**TINY_TRAIN_OPTIONS, "max_steps": 3})
    sources = read_config(tmp_path / "run" / "last")["training"]["data"]
    assert sources == [str(tmp_path / "data" / "tiny.txt")], "stored absolute"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    steps: list[int] = []
    train(
        [], tmp_path / "run", resume=True, max_steps=5, hooks=fn_hooks(on_step=lambda t, _: steps.append(1))
    )
    assert len(steps) == 2


def test_the_auto_preset_sizes_windows_from_the_training_fraction(tmp_path):
    """With --val-frac 0.5 half the text is left to train on: the windows must fit that half."""
    from charlstm.presets import auto_options
    from charlstm.vocab import Vocab

    text = (TINY_TEXT * 12)[:12_000]
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    vocab_size = len(Vocab.from_text(text))
    with_half = auto_options(len(text), vocab_size, "cpu", 0.5)[0]
    with_tenth = auto_options(len(text), vocab_size, "cpu", 0.1)[0]
    assert (with_half["batch_size"], with_half["seq_len"]) != (
        with_tenth["batch_size"],
        with_tenth["seq_len"],
    )
    starts: list[dict] = []
    train([path], tmp_path / "run", device="cpu", max_steps=1, val_frac=0.5, sample_length=0,
          hooks=fn_hooks(on_start=starts.append))  # fmt: skip
    config = starts[0]["config"]
    assert (config["batch_size"], config["seq_len"]) == (with_half["batch_size"], with_half["seq_len"])


def test_chars_per_sec_leaves_out_the_time_spent_saving(tmp_path, tiny_text_file, monkeypatch):
    """Each save here takes 1000 s on the trainer's clock; none of it may count as training."""
    import time
    import types

    from charlstm import runner, trainer

    jump = [0.0]
    monkeypatch.setattr(
        trainer, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + jump[0])
    )
    save = runner.RunFolder.on_save

    def slow_save(self, trainer):
        save(self, trainer)
        jump[0] += 1000.0

    monkeypatch.setattr(runner.RunFolder, "on_save", slow_save)
    records: list[dict] = []
    _run_once(tmp_path, tiny_text_file, checkpoint_interval=1, max_steps=9,
              hooks=fn_hooks(on_eval=lambda t, record, best: records.append(record)))  # fmt: skip
    assert [r["step"] for r in records] == [3, 6, 9]
    assert jump[0] >= 9000.0, "every step saved"
    chars = 3 * TINY_TRAIN_OPTIONS["batch_size"] * TINY_TRAIN_OPTIONS["seq_len"]
    for record in records:
        assert record["chars_per_sec"] > chars / 10.0, record  # 1000 s of saving would give < 0.2


def test_bf16_off_cuda_is_a_note_in_the_run_summary(tmp_path, tiny_text_file):
    starts: list[dict] = []
    _run_once(tmp_path, tiny_text_file, precision="bf16", hooks=fn_hooks(on_start=starts.append))
    assert any("bf16" in note and "cpu" in note for note in starts[0]["chosen"]), starts[0]["chosen"]


def test_several_files_are_joined_with_a_line_break(tmp_path):
    from charlstm.checkpoint import read_config

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TINY_TEXT.replace("\n", " "), encoding="utf-8")
    b.write_text(TINY_TEXT.replace("\n", " "), encoding="utf-8")
    out = train([a, b], tmp_path / "run", **TINY_TRAIN_OPTIONS)
    config = read_config(out / "best")
    assert config["training"]["num_chars"] == 2 * len(TINY_TEXT) + 1
    assert "\n" in config["vocab"]


def test_validation_uses_the_val_file(tmp_path, tiny_text_file):
    import charlstm
    from charlstm.metrics import MetricsLog

    val = tmp_path / "val.txt"
    val.write_text("How quick the lazy dog jumps over the brown fox.\n" * 8, encoding="utf-8")
    out = _run_once(tmp_path, tiny_text_file, val_file=str(val))
    records = MetricsLog(out / "metrics.jsonl").read()
    best = charlstm.load(out)
    assert best.evaluate(val.read_text())["loss"] == pytest.approx(
        min(r["val_loss"] for r in records), abs=1e-4
    )
    assert best.training["num_chars"] == len(TINY_TEXT), "the whole training text is trained on"


def test_unknown_characters_in_the_val_file_are_a_clear_error(tmp_path, tiny_text_file):
    val = tmp_path / "val.txt"
    val.write_text("Ωmega " * 100, encoding="utf-8")
    with pytest.raises(CharLSTMError, match="training text lacks"):
        _run_once(tmp_path, tiny_text_file, val_file=str(val))


def _samples(tmp_path, text_file, name, **options) -> list[tuple[int, str | None]]:
    records: list[dict] = []
    hooks = fn_hooks(on_eval=lambda t, record, best: records.append(record))
    _run_once(tmp_path, text_file, name=name, hooks=hooks, **options)
    return [(r["step"], r.get("sample")) for r in records]


def test_validation_records_carry_a_seeded_sample_of_the_length_asked(tmp_path, tiny_text_file):
    first = _samples(tmp_path, tiny_text_file, "a", sample_length=37)
    assert [step for step, _ in first] == [3, 6]
    assert all(sample is not None and len(sample) == 37 for _, sample in first)
    assert first[0][1] != first[1][1]
    assert _samples(tmp_path, tiny_text_file, "b", sample_length=37) == first, "seeded: the same samples"
    assert _samples(tmp_path, tiny_text_file, "c", sample_length=0) == [(3, None), (6, None)]


def test_a_resumed_run_with_samples_is_bit_identical_to_an_uninterrupted_one(tmp_path, tiny_text_file):
    from safetensors.torch import load_file

    options = {"sample_length": 50, "dropout": 0.3, "num_layers": 2, "max_steps": 9, "lr_decay": "cosine"}
    straight = _samples(tmp_path, tiny_text_file, "straight", **options)
    # Interrupted (as by Ctrl-C) after step 4, between two validations; the same --max-steps, so
    # the learning-rate schedule is the same.
    records: list[dict] = []
    steps: list[int] = []
    hooks = fn_hooks(
        on_eval=lambda t, record, best: records.append(record),
        on_step=lambda t, _: steps.append(t.progress.step),
        should_stop=lambda: bool(steps) and steps[-1] >= 4,
    )
    _run_once(tmp_path, tiny_text_file, name="resumed", hooks=hooks, **options)
    first = [(r["step"], r.get("sample")) for r in records]
    assert [step for step, _ in first] == [3] and steps[-1] == 4
    records = []
    train([], tmp_path / "resumed", resume=True, max_steps=9,
          hooks=fn_hooks(on_eval=lambda t, record, best: records.append(record)))  # fmt: skip
    assert first + [(r["step"], r.get("sample")) for r in records] == straight
    for folder in ("last", "best"):
        a = load_file(str(tmp_path / "straight" / folder / "model.safetensors"))
        b = load_file(str(tmp_path / "resumed" / folder / "model.safetensors"))
        assert all(a[k].equal(b[k]) for k in a), folder


def test_targets_outside_the_tutorial_are_the_true_next_character(tmp_path, tiny_text_file):
    from charlstm.data import prepare_corpus, split_train_val

    seen = []
    _run_once(tmp_path, tiny_text_file, hooks=fn_hooks(on_step=lambda t, _: seen.append(t)))
    batches = seen[0].train_batches
    assert not batches.wrap_targets
    ids = split_train_val(prepare_corpus([tiny_text_file]).ids, 0.1)[0]
    length = len(batches) * batches.seq_len
    last = batches[len(batches) - 1]
    for row in range(batches.batch_size):
        assert last.targets[row, -1].item() == ids[(row + 1) * length], row


@pytest.mark.slow
def test_the_tutorial_preset_feeds_one_hot_vectors_and_wraps_targets(tmp_path):
    """The tutorial's settings in full (2 x 512, batch 100 x 100) for one step."""
    from charlstm.checkpoint import read_config

    path = tmp_path / "long.txt"
    path.write_text(TINY_TEXT * 10, encoding="utf-8")
    out = train([path], tmp_path / "run", preset="tutorial", device="cpu", max_steps=1, sample_length=0)
    config = read_config(out / "last")
    assert config["model"]["embedding_size"] == 0
    assert config["model"]["hidden_size"] == 512 and config["training"]["config"]["batch_size"] == 100
    assert config["training"]["config"]["wrap_targets"] is True
    from charlstm import load

    assert load(out).model.embedding is None, "one-hot input: no embedding table"
    auto = train([path], tmp_path / "auto", device="cpu", max_steps=1, sample_length=0, hidden_size=32)
    assert read_config(auto / "last")["training"]["config"]["wrap_targets"] is False
    assert read_config(auto / "last")["model"]["embedding_size"] is None


def test_a_run_draws_its_loss_curves(tmp_path, tiny_text_file):
    out = train([tiny_text_file], tmp_path / "run", **TINY_TRAIN_OPTIONS)
    png = (out / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG"), "curves.png is drawn at the end of every run"


def test_a_failing_plot_never_stops_training(tmp_path, tiny_text_file, monkeypatch):
    from charlstm import runfolder

    def broken(run_dir):
        raise CharLSTMError("plotting needs matplotlib")

    monkeypatch.setattr(runfolder, "write_curves", broken)
    out = train([tiny_text_file], tmp_path / "run", **TINY_TRAIN_OPTIONS)
    assert (out / "best").is_dir() and not (out / "curves.png").exists()
