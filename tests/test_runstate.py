"""The run state saved beside `last/`: captured in fp32 whatever the autocast, restored exactly, and
refused with one clear line when it is damaged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_cli import TINY_FLAGS, one_error_line
from test_trainer import make_trainer

from charlstm.checkpoint import TRAINER_META_FILE, TRAINER_TENSORS_FILE, load_trainer_state, save_checkpoint
from charlstm.cli import main
from charlstm.errors import CharLSTMError
from charlstm.runstate import capture, restore
from charlstm.vocab import Vocab

TEXT = "the cat sat on the mat. " * 12


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_bf16_hidden_state_is_saved_in_fp32_and_resumes(tmp_path, cell):
    """Under bf16 autocast the carried state is bf16 (issue 11, defect 5): stored as such, it would
    not resume on another device or precision."""
    first = make_trainer(TEXT, cell=cell, max_steps=3, eval_interval=1000)
    first.fit()
    parts = first.state if isinstance(first.state, tuple) else (first.state,)
    bf16 = tuple(p.to(torch.bfloat16) for p in parts)
    first.state = bf16 if cell == "lstm" else bf16[0]
    tensors, meta = capture(first)
    hidden = [tensors[f"hidden.{i}"] for i in range(meta["hidden_parts"])]
    assert len(hidden) == (2 if cell == "lstm" else 1)
    assert all(h.dtype == torch.float32 for h in hidden)
    assert all(torch.equal(h, p.float()) for h, p in zip(hidden, bf16, strict=True))

    last = save_checkpoint(tmp_path / "last", first.model, Vocab.from_text(TEXT), {}, (tensors, meta))
    second = make_trainer(TEXT, cell=cell, max_steps=6, eval_interval=1000)
    second.model.load_state_dict(first.model.state_dict())
    restore(second, *load_trainer_state(last), where=str(last))
    restored = second.state if isinstance(second.state, tuple) else (second.state,)
    assert all(s.dtype == torch.float32 for s in restored)
    assert second.fit().step == 6


def test_restore_of_a_damaged_state_names_where_it_came_from():
    trainer = make_trainer(TEXT, max_steps=2, eval_interval=1000)
    trainer.fit()
    tensors, meta = capture(trainer)
    del tensors["hidden.0"]
    with pytest.raises(CharLSTMError, match=r"^somewhere/last: the training state is damaged"):
        restore(make_trainer(TEXT, max_steps=4), tensors, meta, where="somewhere/last")


def _first_optimizer_slot(tensors: dict[str, torch.Tensor]) -> str:
    return next(k for k in sorted(tensors) if k.startswith("optimizer.") and k.endswith(".exp_avg"))


def _wrong_hidden_shape(tensors, meta):
    tensors["hidden.0"] = tensors["hidden.0"][:, :2].contiguous()


def _missing_hidden_part(tensors, meta):
    del tensors["hidden.1"]


def _optimizer_slot_of_another_shape(tensors, meta):
    tensors[_first_optimizer_slot(tensors)] = torch.zeros(3)


def _optimizer_slot_past_the_parameters(tensors, meta):
    tensors["optimizer.99.exp_avg"] = torch.zeros(3)


def _numpy_generator_truncated(tensors, meta):
    tensors["rng.numpy"] = tensors["rng.numpy"][:10].contiguous()


def _missing_meta_key(tensors, meta):
    del meta["hidden_parts"]


def _unknown_progress_field(tensors, meta):
    meta["progress"]["bogus"] = 1


def _optimizer_groups_missing(tensors, meta):
    meta["optimizer"] = []


DAMAGE = [
    _wrong_hidden_shape,
    _missing_hidden_part,
    _optimizer_slot_of_another_shape,
    _optimizer_slot_past_the_parameters,
    _numpy_generator_truncated,
    _missing_meta_key,
    _unknown_progress_field,
    _optimizer_groups_missing,
]


@pytest.fixture(scope="module")
def cli_last(tmp_path_factory) -> Path:
    """A run trained through the CLI; tests copy it before damaging it."""
    root = tmp_path_factory.mktemp("runstate")
    text = root / "tiny.txt"
    text.write_text(TEXT, encoding="utf-8")
    assert main(["train", str(text), "--out", str(root / "run"), *TINY_FLAGS]) == 0
    return root / "run"


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__.strip("_") for d in DAMAGE])
def test_a_damaged_training_state_is_one_line_through_resume(tmp_path, cli_last, capsys, damage):
    """Issue 11, defect 4: not a raw IndexError or KeyError, but the usual one-line error."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cli_last, run)
    last = run / "last"
    tensors = load_file(str(last / TRAINER_TENSORS_FILE))
    meta = json.loads((last / TRAINER_META_FILE).read_text())
    damage(tensors, meta)
    save_file(tensors, str(last / TRAINER_TENSORS_FILE))
    (last / TRAINER_META_FILE).write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "20", "--quiet"]) == 1
    line = one_error_line(capsys)
    assert "damaged" in line and str(last) in line
    assert (last / TRAINER_TENSORS_FILE).is_file(), "the checkpoint is left as it was"
