from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from conftest import make_model
from safetensors.torch import load_file

from charlstm import checkpoint
from charlstm.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_checkpoint,
    load_trainer_state,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
from charlstm.errors import CharLSTMError
from charlstm.vocab import Vocab

PICKLE_MAGIC = b"\x80"  # protocol 2+ pickles start with PROTO
ZIP_MAGIC = b"PK\x03\x04"  # torch.save archives


class CreatesFile:
    """Unpickling this creates `path`: the canary for "loading never unpickles"."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def edit_config(checkpoint: Path, change) -> None:
    config = json.loads((checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
    change(config)
    (checkpoint / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_save_then_load_gives_identical_tensors_and_logits(tmp_path, cell):
    vocab = Vocab.from_text("hello, 세계 🙂\n")
    model = make_model(len(vocab), cell, num_layers=2, dropout=0.2)
    path = save_checkpoint(tmp_path / "ckpt", model, vocab, {"step": 7, "note": "한국어"})
    loaded = load_checkpoint(path)
    assert loaded.vocab == vocab
    assert loaded.training == {"step": 7, "note": "한국어"}
    assert loaded.path == path
    assert loaded.model.config == model.config
    assert not loaded.model.training, "a loaded model is ready to sample (eval mode)"
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for name, tensor in original.items():
        assert restored[name].dtype == tensor.dtype
        assert torch.equal(restored[name], tensor), name
    idx = torch.randint(0, len(vocab), (2, 9))
    with torch.no_grad():
        assert torch.equal(model(idx)[0], loaded.model(idx)[0])


def test_folder_holds_exactly_weights_and_config_and_no_pickle(tiny_checkpoint):
    assert sorted(p.name for p in tiny_checkpoint.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    for file in tiny_checkpoint.iterdir():
        head = file.read_bytes()[:4]
        assert not head.startswith(PICKLE_MAGIC) and head != ZIP_MAGIC, file
    config = json.loads((tiny_checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["format"] == "charlstm"
    assert isinstance(config["vocab"], list)
    assert config["model"]["vocab_size"] == len(config["vocab"])
    assert set(load_file(str(tiny_checkpoint / WEIGHTS_FILE))) >= {"embedding.weight", "head.weight"}


def test_vocabulary_is_stored_readably(tmp_path):
    vocab = Vocab.from_text("안녕\n")
    path = save_checkpoint(tmp_path / "ckpt", make_model(len(vocab)), vocab, {})
    text = (path / CONFIG_FILE).read_text(encoding="utf-8")
    assert "안" in text  # not \uc548: the vocabulary can be read in the file
    assert read_config(path)["vocab"] == ["\n", "녕", "안"]


def test_trainer_state_is_saved_beside_the_weights_without_pickle(tmp_path, tiny_model, tiny_vocab):
    tensors = {"rng.torch": torch.get_rng_state(), "optimizer.0.step": torch.tensor(3.0)}
    meta = {"progress": {"step": 3}, "hidden_parts": 0}
    path = save_checkpoint(tmp_path / "last", tiny_model, tiny_vocab, {}, (tensors, meta))
    assert {p.name for p in path.iterdir()} == {
        CONFIG_FILE,
        WEIGHTS_FILE,
        "trainer.safetensors",
        "trainer.json",
    }
    for file in path.iterdir():
        assert not file.read_bytes()[:4].startswith(PICKLE_MAGIC), file
    loaded_tensors, loaded_meta = load_trainer_state(path)
    assert loaded_meta == meta
    assert torch.equal(loaded_tensors["rng.torch"], tensors["rng.torch"])


def test_trainer_state_missing_is_a_clear_error(tiny_checkpoint):
    with pytest.raises(CharLSTMError, match="no training state"):
        load_trainer_state(tiny_checkpoint)


def test_run_folder_resolves_to_best_then_last(tmp_path, tiny_vocab):
    run = tmp_path / "run"
    best_model, last_model = make_model(len(tiny_vocab), seed=1), make_model(len(tiny_vocab), seed=2)
    save_checkpoint(run / "last", last_model, tiny_vocab, {"which": "last"})
    assert resolve_checkpoint(run) == run / "last"
    save_checkpoint(run / "best", best_model, tiny_vocab, {"which": "best"})
    assert resolve_checkpoint(run) == run / "best"
    loaded = load_checkpoint(run)
    assert loaded.training == {"which": "best"}
    assert torch.equal(loaded.model.head.weight, best_model.head.weight)
    assert resolve_checkpoint(run / "best" / CONFIG_FILE) == run / "best"


def test_missing_and_non_checkpoint_folders_are_clear_errors(tmp_path):
    with pytest.raises(CharLSTMError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CharLSTMError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "empty")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda c: c["vocab"].pop(), "characters but the model expects", id="vocab-length-mismatch"
        ),
        pytest.param(lambda c: c.update(format="pytorch"), "not a charlstm config", id="wrong-format"),
        pytest.param(lambda c: c.pop("format"), "not a charlstm config", id="no-format"),
        pytest.param(lambda c: c.update(format_version=99), "newer", id="future-version"),
        pytest.param(lambda c: c.update(vocab="abc"), "single characters", id="vocab-string"),
        pytest.param(lambda c: c["vocab"].__setitem__(0, "ab"), "single characters", id="vocab-multichar"),
        pytest.param(lambda c: c.update(model=[1, 2]), "'model' must be an object", id="model-list"),
        pytest.param(lambda c: c["model"].pop("hidden_size"), "hidden_size", id="no-hidden-size"),
        pytest.param(lambda c: c["model"].update(num_layers="2"), "num_layers", id="num-layers-string"),
        pytest.param(lambda c: c["model"].update(num_layers=True), "num_layers", id="num-layers-bool"),
        pytest.param(lambda c: c.update(training=[]), "'training' must be an object", id="training-list"),
    ],
)
def test_tampered_config_is_refused(tiny_checkpoint, change, message):
    edit_config(tiny_checkpoint, change)
    with pytest.raises(CharLSTMError, match=message):
        load_checkpoint(tiny_checkpoint)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda c: c["model"].update(cell="transformer"), id="unknown-cell"),
        pytest.param(lambda c: c["model"].update(hidden_size=-3), id="negative-hidden-size"),
        pytest.param(lambda c: c["model"].update(dropout=1.5), id="dropout-above-1"),
        pytest.param(lambda c: c["model"].update(embedding_size="8"), id="embedding-size-string"),
        pytest.param(lambda c: c["model"].update(embedding_size=[8]), id="embedding-size-list"),
        pytest.param(lambda c: c["model"].update(embedding_size=0), id="embedding-size-zero"),
    ],
)
def test_impossible_model_settings_in_a_config_are_refused(tiny_checkpoint, change):
    edit_config(tiny_checkpoint, change)
    with pytest.raises(CharLSTMError):
        load_checkpoint(tiny_checkpoint)


def test_config_that_is_not_json_is_refused(tiny_checkpoint):
    (tiny_checkpoint / CONFIG_FILE).write_bytes(b"{not json")
    with pytest.raises(CharLSTMError, match="unreadable"):
        load_checkpoint(tiny_checkpoint)


def test_weights_that_disagree_with_the_config_are_refused(tiny_checkpoint):
    edit_config(tiny_checkpoint, lambda c: c["model"].update(hidden_size=c["model"]["hidden_size"] * 2))
    with pytest.raises(CharLSTMError, match="implies"):
        load_checkpoint(tiny_checkpoint)


def test_weights_of_another_cell_are_refused(tiny_checkpoint):
    edit_config(tiny_checkpoint, lambda c: c["model"].update(cell="gru"))
    with pytest.raises(CharLSTMError):
        load_checkpoint(tiny_checkpoint)


def test_truncated_weights_are_refused(tiny_checkpoint):
    weights = tiny_checkpoint / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CharLSTMError, match="safetensors"):
        load_checkpoint(tiny_checkpoint)


def test_missing_weights_are_refused(tiny_checkpoint):
    (tiny_checkpoint / WEIGHTS_FILE).unlink()
    with pytest.raises(CharLSTMError, match="missing"):
        load_checkpoint(tiny_checkpoint)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_posing_as_weights_is_refused_and_never_unpickled(tmp_path, tiny_checkpoint, how):
    canary = tmp_path / "canary-control"
    pickle.loads(pickle.dumps(CreatesFile(canary)))
    assert canary.exists(), "the payload works: unpickling it creates a file"

    target = tmp_path / "pwned"
    weights = tiny_checkpoint / WEIGHTS_FILE
    if how == "pickle":
        weights.write_bytes(pickle.dumps({"embedding.weight": CreatesFile(target)}))
    else:
        torch.save({"embedding.weight": CreatesFile(target)}, weights)
    with pytest.raises(CharLSTMError):
        load_checkpoint(tiny_checkpoint)
    assert not target.exists()


def test_overwriting_leaves_only_the_new_checkpoint(tmp_path, tiny_vocab):
    old_model, new_model = make_model(len(tiny_vocab), seed=1), make_model(len(tiny_vocab), seed=2)
    path = tmp_path / "ckpt"
    save_checkpoint(path, old_model, tiny_vocab, {"version": 1})
    save_checkpoint(path, new_model, tiny_vocab, {"version": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no .ckpt.tmp, .ckpt.old, staged weights
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])
    loaded = load_checkpoint(path)
    assert loaded.training == {"version": 2}
    assert torch.equal(loaded.model.head.weight, new_model.head.weight)


def test_overwriting_a_checkpoint_that_had_trainer_state_drops_it(tmp_path, tiny_model, tiny_vocab):
    path = tmp_path / "last"
    state = ({"rng.torch": torch.get_rng_state()}, {"progress": {"step": 1}, "hidden_parts": 0})
    save_checkpoint(path, tiny_model, tiny_vocab, {}, state)
    save_checkpoint(path, tiny_model, tiny_vocab, {})
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])


def test_a_crash_between_renames_still_leaves_a_loadable_checkpoint(tmp_path, tiny_model, tiny_vocab):
    """If the new folder never got renamed in, the old one (moved aside to .NAME.old) is found."""
    path = save_checkpoint(tmp_path / "run" / "best", tiny_model, tiny_vocab, {"kept": True})
    path.rename(path.with_name(".best.old"))
    assert load_checkpoint(tmp_path / "run").training == {"kept": True}


def test_saving_over_a_file_is_refused(tmp_path, tiny_model, tiny_vocab):
    target = tmp_path / "taken"
    target.write_text("a file")
    with pytest.raises(CharLSTMError, match="not a folder"):
        save_checkpoint(target, tiny_model, tiny_vocab, {})
    assert target.read_text() == "a file"


def assert_same_weights(path: Path, model) -> None:
    loaded = load_checkpoint(path)
    expected = model.state_dict()
    restored = loaded.model.state_dict()
    assert restored.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(restored[name], tensor), name


def full_disk() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_tensor_write(number: int):
    def patch(monkeypatch) -> None:
        """The `number`-th safetensors file of the save (weights, then trainer state) is
        written part-way, then the disk is full."""
        real, calls = checkpoint.save_file, []

        def save_file(tensors, filename, metadata=None):
            calls.append(filename)
            if len(calls) == number:
                Path(filename).write_bytes(b"\x00" * 100)
                raise full_disk()
            return real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(checkpoint, "save_file", save_file)

    return patch


def fail_folder_writes(monkeypatch) -> None:
    """Writing a file into the staging folder stops part-way with a full disk."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.parent.name.endswith(".tmp"):
            real(self, data[: len(data) // 2])
            raise full_disk()
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def fail_rename(number: int):
    def patch(monkeypatch) -> None:
        """The `number`-th rename of the save fails with a full disk (moving the staged weights
        in, moving the old folder aside, moving the new one into place)."""
        real, calls = os.replace, []

        def replace(src, dst, **kwargs):
            calls.append((src, dst))
            if len(calls) == number:
                raise full_disk()
            return real(src, dst, **kwargs)

        monkeypatch.setattr(checkpoint.os, "replace", replace)

    return patch


FULL_DISK_AT = {
    "weights": fail_tensor_write(1),
    "trainer-tensors": fail_tensor_write(2),
    "config": fail_folder_writes,
    "rename-weights-in": fail_rename(1),
    "rename-old-aside": fail_rename(2),
    "rename-new-in": fail_rename(3),
}


@pytest.mark.parametrize(
    ("where", "with_state"),
    [
        pytest.param(where, with_state, id=f"{where}-{'last' if with_state else 'best'}")
        for with_state in (False, True)
        for where in FULL_DISK_AT
        if with_state or where != "trainer-tensors"  # best/ has no trainer state to write
    ],
)
def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, tiny_vocab, monkeypatch, where, with_state):
    old_model, new_model = make_model(len(tiny_vocab), seed=1), make_model(len(tiny_vocab), seed=2)
    state = ({"rng.torch": torch.get_rng_state()}, {"progress": {"step": 1}, "hidden_parts": 0})
    trainer_state = state if with_state else None
    path = save_checkpoint(tmp_path / "ckpt", old_model, tiny_vocab, {"version": 1}, trainer_state)

    with monkeypatch.context() as patch:
        FULL_DISK_AT[where](patch)
        with pytest.raises(CharLSTMError) as info:
            save_checkpoint(path, new_model, tiny_vocab, {"version": 2}, trainer_state)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert "previous one is kept" in message
    assert os.strerror(errno.ENOSPC) in message

    loaded = load_checkpoint(path)
    assert loaded.training == {"version": 1}
    assert_same_weights(path, old_model)
    if with_state:
        assert load_trainer_state(path)[1]["progress"] == {"step": 1}
    # Nothing staged is left behind to fill the disk further or to be mistaken for a checkpoint.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    # Once there is room again, the next save goes through.
    save_checkpoint(path, new_model, tiny_vocab, {"version": 3}, trainer_state)
    assert load_checkpoint(path).training == {"version": 3}
    assert_same_weights(path, new_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


# Run in a child process whose address space is capped a few GiB above what it holds after
# importing torch: if loading ever builds the model a config asks for before checking it, the
# child fails to allocate instead of exhausting this machine's memory.
HUGE_CONFIG_PROBE = """
import json, resource, sys
from charlstm.checkpoint import load_checkpoint
from charlstm.errors import CharLSTMError

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

small, crafted = sys.argv[1], sys.argv[2:]
load_checkpoint(small)  # the first load imports and allocates what every load needs
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + (4 << 30), resource.RLIM_INFINITY))
results = []
for path in crafted:
    before = status("VmRSS")
    try:
        load_checkpoint(path)
        outcome = "loaded"
    except CharLSTMError as exc:
        outcome = "CharLSTMError: " + str(exc)
    except BaseException as exc:
        outcome = type(exc).__name__ + ": " + str(exc)
    results.append({"outcome": outcome, "grew": status("VmRSS") - before})
print(json.dumps(results))
"""


@pytest.mark.slow
def test_a_config_asking_for_a_huge_model_is_refused_without_allocating_it(tmp_path, tiny_checkpoint):
    """Issue 11, defect 4: a 200-byte config.json beside small real weights must not make loading
    build the model it describes (here about 550 GB of LSTM), nor one past the bounds."""
    import shutil
    import subprocess
    import sys

    crafted = {
        "huge": {"hidden_size": 16384, "num_layers": 64},
        "wide": {"hidden_size": 16384},
        "hidden-past-bound": {"hidden_size": 1 << 15},
        "layers-past-bound": {"num_layers": 65},
        "embedding-past-bound": {"embedding_size": (1 << 16) + 1},
    }
    paths = []
    for name, change in crafted.items():
        path = tmp_path / name
        shutil.copytree(tiny_checkpoint, path)
        edit_config(path, lambda c, change=change: c["model"].update(change))
        paths.append(str(path))
    probe = subprocess.run(
        [sys.executable, "-c", HUGE_CONFIG_PROBE, str(tiny_checkpoint), *paths],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    results = dict(zip(crafted, json.loads(probe.stdout), strict=True))
    for name, result in results.items():
        assert result["outcome"].startswith("CharLSTMError: "), (name, result["outcome"])
        assert "\n" not in result["outcome"]
        assert len(result["outcome"]) < 500, f"{name}: not a line one reads: {result['outcome'][:300]}..."
        assert result["grew"] < 50 << 20, f"{name}: memory grew by {result['grew']:,} bytes"
    assert "implies" in results["wide"]["outcome"], "the shapes are checked against the weights"
    assert "--hidden-size must be between" in results["hidden-past-bound"]["outcome"]
    assert "--num-layers must be between" in results["layers-past-bound"]["outcome"]
    assert "--embedding-size" in results["embedding-past-bound"]["outcome"]
