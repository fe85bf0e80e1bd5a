"""Fine-tuning (`--init-from`): the vocabulary grown by character, weights moved by character, the
start recorded, bad starts refused before anything is written, and that it pays."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_TEXT, TINY_TRAIN_OPTIONS, fn_hooks, make_model
from safetensors.torch import load_file

from charlstm import load, train
from charlstm.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from charlstm.cli import main
from charlstm.config import ModelConfig
from charlstm.data import Corpus, encode_corpus
from charlstm.errors import CharLSTMError
from charlstm.finetune import InitFrom, reencode, union_vocab, widen_state
from charlstm.model import CharRNN
from charlstm.vocab import Vocab

# Characters the tiny text never has, spread over the sorted order (before, inside and after it).
NEW_CHARS = "<[é\u2014"
NEW_TEXT = (
    TINY_TEXT.replace("quick", "quïck").replace(" dog.", " dog <é>.") + "[Zebras \u2014 they jump.]\n" * 6
)
BASE_OPTIONS = {**TINY_TRAIN_OPTIONS, "max_steps": 40, "eval_interval": 20, "sample_length": 0}
RUN_OPTIONS = {k: v for k, v in TINY_TRAIN_OPTIONS.items() if k not in ("hidden_size", "num_layers")}
RUN_OPTIONS["sample_length"] = 0


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model that has learnt a little of the tiny text (read only)."""
    root = tmp_path_factory.mktemp("base")
    text = root / "tiny.txt"
    text.write_text(TINY_TEXT, encoding="utf-8")
    return train([text], root / "run", **BASE_OPTIONS)


@pytest.fixture
def new_text(tmp_path: Path) -> Path:
    path = tmp_path / "new.txt"
    path.write_text(NEW_TEXT, encoding="utf-8")
    return path


def widened(model: CharRNN, old: Vocab, new: Vocab, seed: int = 0) -> CharRNN:
    start = InitFrom(Path("ckpt"), "", model, old)
    bigger = CharRNN(ModelConfig(vocab_size=len(new), dropout=model.config.dropout, **start.architecture))
    bigger.load_state_dict(widen_state(model, old, new, seed))
    return bigger.eval()


@pytest.mark.parametrize(
    "cell, options",
    [
        ("lstm", {}),
        ("gru", {"embedding_size": 0}),  # one-hot: the first layer's columns move
        ("rnn", {"embedding_size": 5}),
        ("lstm", {"hidden_size": 64}),  # the default embedding size min(V, H) must not grow with V
    ],
)
def test_a_widened_model_gives_old_characters_the_same_logits(cell, options):
    old = Vocab.from_text(TINY_TEXT)
    new = union_vocab(old, Vocab.from_text(NEW_CHARS))
    model = make_model(len(old), cell, seed=4, **options)
    bigger = widened(model, old, new)
    assert bigger.config.input_size == model.config.input_size or model.config.one_hot
    text = TINY_TEXT[:200]
    with torch.no_grad():
        before, _ = model(torch.tensor([old.encode(text)]))
        after, _ = bigger(torch.tensor([new.encode(text)]))
    old_ids_in_new = [new.index[c] for c in old.chars]
    assert old_ids_in_new != list(range(len(old)))  # ids did move: a copy by id would fail here
    torch.testing.assert_close(after[..., old_ids_in_new], before, rtol=0, atol=1e-6)


def test_new_characters_start_rare_and_differ_from_each_other():
    old = Vocab.from_text(TINY_TEXT)
    new = union_vocab(old, Vocab.from_text(NEW_CHARS))
    model = make_model(len(old), seed=1)
    state = widen_state(model, old, new, seed=7)
    fresh = [new.index[c] for c in NEW_CHARS]
    assert torch.equal(state["head.bias"][fresh], model.head.bias.min().expand(len(fresh)).detach())
    embeddings = state["embedding.weight"][fresh]
    assert torch.isfinite(embeddings).all() and len({tuple(r.tolist()) for r in embeddings}) == len(fresh)
    assert state["head.weight"][fresh].abs().max() < model.head.weight.abs().max()
    with torch.no_grad():
        probs = widened(model, old, new, seed=7)(torch.tensor([new.encode(TINY_TEXT[:300])]))[0].softmax(-1)
    known = [new.index[c] for c in old.chars]
    assert probs[0, :, fresh].mean(0).max() <= probs[0, :, known].mean(0).max()
    assert torch.equal(widen_state(model, old, new, seed=7)["embedding.weight"], state["embedding.weight"])


def test_union_is_sorted_and_reencoding_keeps_the_text():
    old, text = Vocab("zab"), "abc<a"
    vocab = union_vocab(old, Vocab.from_text(text))
    assert vocab.chars == ("<", "a", "b", "c", "z")
    own = Vocab.from_text(text)
    corpus = reencode(Corpus(own, encode_corpus(text, own), ["x"], "utf-8"), vocab)
    assert vocab.decode(corpus.ids.tolist()) == text
    with pytest.raises(CharLSTMError, match="does not know"):
        reencode(Corpus(own, encode_corpus(text, own), ["x"], "utf-8"), Vocab("ab"))


def test_init_from_grows_the_vocabulary_reports_it_and_records_the_start(tmp_path, base_run, new_text):
    starts: list[dict] = []
    out = train(
        [new_text], tmp_path / "ft", init_from=base_run, hooks=fn_hooks(on_start=starts.append), **RUN_OPTIONS
    )
    base = load(base_run)
    assert starts[0]["init_from"]["added"] == sorted(set(NEW_TEXT) - set(TINY_TEXT))
    assert set(NEW_CHARS) <= set(starts[0]["init_from"]["added"])
    assert starts[0]["model"]["hidden_size"] == base.config.hidden_size  # auto did not resize it
    assert starts[0]["config"]["learning_rate"] == pytest.approx(0.00167)  # a third of auto's 0.005
    weights = base_run / "best" / WEIGHTS_FILE
    for folder in ("best", "last"):
        config = json.loads((out / folder / CONFIG_FILE).read_text(encoding="utf-8"))
        assert config["training"]["init_from"] == {
            "path": str((base_run / "best").resolve()),
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        }
        assert config["vocab"] == sorted(set(NEW_TEXT) | set(base.vocab.chars))


def test_an_explicit_learning_rate_and_dropout_win(tmp_path, base_run, new_text):
    starts: list[dict] = []
    options = {**RUN_OPTIONS, "learning_rate": 0.0042, "dropout": 0.25, "max_steps": 1}
    train([new_text], tmp_path / "ft", init_from=base_run, hooks=fn_hooks(on_start=starts.append), **options)
    assert starts[0]["config"]["learning_rate"] == 0.0042 and starts[0]["model"]["dropout"] == 0.25


@pytest.mark.slow
def test_fine_tuning_lowers_the_loss_faster_than_training_from_scratch(tmp_path, base_run, new_text):
    options = {**RUN_OPTIONS, "hidden_size": 32, "num_layers": 1, "max_steps": 12, "eval_interval": 12}
    scratch = train([new_text], tmp_path / "scratch", **options)
    options.pop("hidden_size"), options.pop("num_layers")
    tuned = train([new_text], tmp_path / "tuned", init_from=base_run, **options)
    scratch_loss = load(scratch).training["best_val_loss"]
    tuned_loss = load(tuned).training["best_val_loss"]
    assert tuned_loss < scratch_loss - 0.2, (tuned_loss, scratch_loss)


def test_resume_after_init_from_is_exact_and_keeps_the_record(tmp_path, base_run, new_text):
    options = {**RUN_OPTIONS, "max_steps": 6, "eval_interval": 3}
    whole = train([new_text], tmp_path / "whole", init_from=base_run, **options)
    split = train([new_text], tmp_path / "split", init_from=base_run, **{**options, "max_steps": 3})
    train([], split, resume=True, max_steps=6)
    a, b = load_file(str(whole / "last" / WEIGHTS_FILE)), load_file(str(split / "last" / WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((split / "last" / CONFIG_FILE).read_text(encoding="utf-8"))
    assert config["training"]["init_from"]["path"] == str((base_run / "best").resolve())


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--hidden-size", "64"], "--hidden-size 64 (it has 32)"),
        (["--cell", "gru", "--num-layers", "2"], "--cell gru (it has lstm); --num-layers 2 (it has 1)"),
        (["--embedding-size", "0"], "--embedding-size 0"),
    ],
)
def test_architecture_flags_that_contradict_the_checkpoint_are_one_line(
    tmp_path, base_run, new_text, capsys, flags, named
):
    out = tmp_path / "ft"
    code, err = run_cli(
        ["train", str(new_text), "--init-from", str(base_run), "--out", str(out), *flags], capsys
    )
    assert code == 1 and named in err
    assert err.startswith("charlstm: error: ") and err.count("\n") == 1
    assert not out.exists()


def test_flags_that_agree_with_the_checkpoint_are_accepted(tmp_path, base_run, new_text):
    model = load(base_run).config
    agreeing = {"cell": model.cell, "hidden_size": model.hidden_size, "embedding_size": model.input_size}
    options = {**RUN_OPTIONS, **agreeing, "max_steps": 1}
    assert (train([new_text], tmp_path / "ft", init_from=base_run, **options) / "best").is_dir()


def test_init_from_with_resume_is_refused(tmp_path, base_run, new_text, capsys):
    code, err = run_cli(["train", "--resume", str(base_run), "--init-from", str(base_run)], capsys)
    assert code == 1 and "give only one" in err and err.count("\n") == 1


def _truncate(folder: Path) -> None:
    weights = folder / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-100])


def _garble_config(folder: Path) -> None:
    (folder / CONFIG_FILE).write_text("{not json", encoding="utf-8")


def _garble_weights(folder: Path) -> None:
    (folder / WEIGHTS_FILE).write_bytes(b"\x00" * 64)


def _drop_weights(folder: Path) -> None:
    (folder / WEIGHTS_FILE).unlink()


def _shrink_vocab(folder: Path) -> None:
    config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    config["vocab"] = config["vocab"][:-1]
    config["model"]["vocab_size"] -= 1
    (folder / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize(
    "damage, named",
    [
        (_truncate, "safetensors"),
        (_garble_config, "unreadable"),
        (_garble_weights, "safetensors"),
        (_drop_weights, "missing"),
        (_shrink_vocab, "implies"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_and_writes_nothing(
    tmp_path, tiny_checkpoint, new_text, capsys, damage, named
):
    damage(tiny_checkpoint)
    out = tmp_path / "ft"
    code, err = run_cli(
        ["train", str(new_text), "--init-from", str(tiny_checkpoint), "--out", str(out)], capsys
    )
    assert code == 1 and named in err, err
    assert err.startswith("charlstm: error: ") and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize("where", ["empty", "missing", "file"])
def test_init_from_something_that_is_not_a_checkpoint(tmp_path, new_text, capsys, where):
    target = tmp_path / where
    if where == "empty":
        target.mkdir()
    elif where == "file":
        target.write_text("hello", encoding="utf-8")
    out = tmp_path / "ft"
    code, err = run_cli(["train", str(new_text), "--init-from", str(target), "--out", str(out)], capsys)
    assert code == 1 and str(target) in err and err.count("\n") == 1
    assert not out.exists()


def test_the_cli_prints_the_added_characters_and_info_the_start(tmp_path, base_run, new_text, capsys):
    args = ["train", str(new_text), "--init-from", str(base_run), "--out", str(tmp_path / "ft")]
    args += ["--max-steps", "1", "--batch-size", "4", "--seq-len", "16", "--device", "cpu"]
    code, err = run_cli(args, capsys)
    assert code == 0, err
    line = next(line for line in err.splitlines() if line.startswith("init from:"))
    assert "new characters" in line and all(repr(c) in line for c in NEW_CHARS)
    assert main(["info", str(tmp_path / "ft")]) == 0
    assert f"fine-tuned from: {(base_run / 'best').resolve()} (weights sha256 " in capsys.readouterr().out
