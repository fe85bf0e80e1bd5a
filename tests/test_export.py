"""ONNX export: onnxruntime must generate what PyTorch generates, for every cell type."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT, make_model

from charlstm.api import CharModel, load
from charlstm.checkpoint import save_checkpoint
from charlstm.cli import main
from charlstm.errors import CharLSTMError
from charlstm.vocab import Vocab

ort = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
pytest.importorskip("onnx", reason="the export extra is not installed")

from charlstm import export  # noqa: E402
from charlstm.export import VOCAB_FILE, export_onnx  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs" / "export.md"
PRIME = "The quick"
STEPS = 500


def tiny_char_model(cell: str, seed: int = 0) -> CharModel:
    vocab = Vocab.from_text(TINY_TEXT)
    return CharModel(make_model(len(vocab), cell, seed=seed), vocab, {"step": 7, "device": "cpu"})


def fitted_char_model(cell: str) -> CharModel:
    """A model that has learned the tiny text (60 full-batch Adam steps, about a second): its greedy
    text repeats the text, so a wrong gate or bias in the export shows at once. A random model's
    greedy text soon repeats a single character and would hide it."""
    model = tiny_char_model(cell)
    ids = torch.tensor(model.vocab.encode(TINY_TEXT))
    usable = (len(ids) - 1) // 64 * 64
    inputs, targets = ids[:usable].view(-1, 64), ids[1 : usable + 1].view(-1, 64)  # (rows, 64)
    net = model.model.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        logits, _ = net(inputs)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    return model


def state_feeds(names: list[str], layers: int, batch: int, hidden: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((layers, batch, hidden)).astype(np.float32) for name in names}


def onnx_greedy(session: ort.InferenceSession, model: CharModel) -> tuple[str, list[np.ndarray]]:
    """Feed the prime a character at a time, then pick the likeliest character STEPS times."""
    config = model.config
    names = [i.name for i in session.get_inputs()][1:]
    feeds = state_feeds(names, config.num_layers, 1, config.hidden_size, 0)
    feeds = {name: np.zeros_like(value) for name, value in feeds.items()}
    all_logits, text = [], ""
    ids = model.vocab.encode(PRIME)
    for position in range(len(ids) + STEPS - 1):
        char_id = ids[position] if position < len(ids) else int(all_logits[-1].argmax())
        if position >= len(ids):
            text += model.vocab.chars[char_id]
        logits, *new_state = session.run(None, {"ids": np.array([char_id], np.int64), **feeds})
        feeds.update(zip(names, new_state, strict=True))
        all_logits.append(logits[0])
    text += model.vocab.chars[int(all_logits[-1].argmax())]
    return text, all_logits


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_onnxruntime_generates_what_pytorch_generates(tmp_path, cell):
    model = fitted_char_model(cell)
    assert model.config.num_layers == 2
    path = export_onnx(model, tmp_path / "model.onnx")
    text, onnx_logits = onnx_greedy(ort.InferenceSession(str(path)), model)

    expected = model.generate(PRIME, STEPS, temperature=0)
    assert PRIME + text == expected
    assert len(set(text)) > 20  # the comparison means something only if the text is varied
    with torch.no_grad():  # PyTorch's logits for the same characters, every step
        ids = torch.tensor([model.vocab.encode(expected[:-1])])
        torch_logits = model.model(ids)[0][0].numpy()
    np.testing.assert_allclose(np.stack(onnx_logits), torch_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_one_step_matches_pytorch_for_batches_of_one_and_three(tmp_path, cell):
    model = tiny_char_model(cell, seed=1)
    config = model.config
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "model.onnx")))
    names = [i.name for i in session.get_inputs()][1:]
    assert names == (["h", "c"] if cell == "lstm" else ["h"])
    assert [o.name for o in session.get_outputs()] == ["logits", *(f"{n}_next" for n in names)]
    feeds = state_feeds(names, config.num_layers, 3, config.hidden_size, seed=2)
    ids = np.array([3, 0, len(model.vocab) - 1], np.int64)

    batch = session.run(None, {"ids": ids, **feeds})
    state = tuple(torch.from_numpy(feeds[n]) for n in names)
    with torch.no_grad():
        logits, new_state = model.model(torch.from_numpy(ids)[:, None], state if cell == "lstm" else state[0])
    expected = [logits[:, 0], *(new_state if cell == "lstm" else (new_state,))]
    for got, want in zip(batch, expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    for row in range(3):
        one_row = {name: value[:, row : row + 1] for name, value in feeds.items()}
        single = session.run(None, {"ids": ids[row : row + 1], **one_row})
        np.testing.assert_allclose(single[0][0], batch[0][row], atol=1e-6, rtol=0)
        for got, whole in zip(single[1:], batch[1:], strict=True):
            np.testing.assert_allclose(got[:, 0], whole[:, row], atol=1e-6, rtol=0)


def test_metadata_and_vocab_json_round_trip(tiny_checkpoint, tmp_path):
    path = export_onnx(tiny_checkpoint, tmp_path / "out" / "model.onnx")
    session = ort.InferenceSession(str(path))
    facts = json.loads(session.get_modelmeta().custom_metadata_map["charlstm"])
    assert json.loads((path.parent / VOCAB_FILE).read_text(encoding="utf-8")) == facts
    model = load(tiny_checkpoint)
    assert Vocab(facts["vocab"]) == model.vocab
    assert facts["model"] == model.config.to_dict()
    assert facts["training"] == model.training
    assert facts["inputs"] == [i.name for i in session.get_inputs()]
    assert facts["outputs"] == [o.name for o in session.get_outputs()]
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", VOCAB_FILE]  # no temp files


def test_existing_output_needs_overwrite(tmp_path):
    lstm, gru = tiny_char_model("lstm"), tiny_char_model("gru")
    path = export_onnx(lstm, tmp_path / "model.onnx")
    before = path.read_bytes()
    with pytest.raises(CharLSTMError, match="exists; pass --overwrite"):
        export_onnx(gru, path)
    assert path.read_bytes() == before
    with pytest.raises(CharLSTMError, match="another model"):  # vocab.json of another model beside it
        export_onnx(gru, tmp_path / "other.onnx")
    assert not (tmp_path / "other.onnx").exists()
    export_onnx(gru, path, overwrite=True)
    assert [i.name for i in ort.InferenceSession(str(path)).get_inputs()] == ["ids", "h"]
    export_onnx(gru, tmp_path / "again.onnx")  # the same model's vocab.json may be shared


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_exports_a_run_folder(trained_run, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    code, stdout, stderr = run_cli(["export", str(trained_run), "--format", "onnx", "-o", str(out)], capsys)
    assert code == 0, stderr
    assert f"wrote {out}" in stdout
    model = load(trained_run)
    text, _ = onnx_greedy(ort.InferenceSession(str(out)), model)
    assert PRIME + text == model.generate(PRIME, STEPS, temperature=0)


def damage(kind: str, checkpoint: Path) -> Path:
    if kind == "not a checkpoint":
        (checkpoint / "config.json").unlink()
    elif kind == "corrupted":
        (checkpoint / "config.json").write_text("{not json", encoding="utf-8")
    elif kind == "truncated":
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind == "missing":
        return checkpoint.parent / "nowhere"
    return checkpoint


@pytest.mark.parametrize("kind", ["not a checkpoint", "corrupted", "truncated", "missing"])
def test_cli_bad_checkpoint_is_one_line_and_writes_nothing(tiny_checkpoint, tmp_path, capsys, kind):
    source = damage(kind, tiny_checkpoint)
    out_dir = tmp_path / "exported"
    code, stdout, stderr = run_cli(["export", str(source), "-o", str(out_dir / "model.onnx")], capsys)
    assert code == 1
    assert stderr.startswith("charlstm: error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert not out_dir.exists()


def test_cli_refuses_an_existing_output_without_overwrite(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"precious")
    code, _, stderr = run_cli(["export", str(tiny_checkpoint), "-o", str(out)], capsys)
    assert code == 1 and "--overwrite" in stderr
    assert out.read_bytes() == b"precious"
    code, _, stderr = run_cli(["export", str(tiny_checkpoint), "-o", str(out), "--overwrite"], capsys)
    assert code == 0, stderr
    assert ort.InferenceSession(str(out)).get_outputs()[0].name == "logits"


def test_cli_names_the_supported_formats(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.tflite"
    code, _, stderr = run_cli(["export", str(tiny_checkpoint), "--format", "tflite", "-o", str(out)], capsys)
    assert code == 1
    assert "'tflite'" in stderr and "supported: onnx" in stderr
    assert not out.exists()


def test_cli_without_onnx_says_how_to_install_it(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    out = tmp_path / "model.onnx"
    code, _, stderr = run_cli(["export", str(tiny_checkpoint), "-o", str(out)], capsys)
    assert code == 1
    assert "pip install 'charlstm[export]'" in stderr and stderr.count("\n") == 1
    assert not out.exists()


def docs_example() -> str:
    """The one Python block of docs/export.md's numpy section."""
    section = DOCS.read_text(encoding="utf-8").split("## Generate with onnxruntime and numpy alone", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "docs/export.md: expected one python block in the numpy section"
    return blocks[0]


@pytest.mark.slow
def test_the_docs_example_runs_as_pasted_without_torch(tmp_path):
    model = tiny_char_model("lstm")
    export_onnx(model, tmp_path / "model.onnx")
    script = tmp_path / "example.py"
    script.write_text(docs_example(), encoding="utf-8")
    # `import torch` fails in the child: the example must need onnxruntime and numpy alone.
    runner = f"import sys, runpy; sys.modules['torch'] = None; runpy.run_path({str(script)!r})"
    result = subprocess.run(
        [sys.executable, "-c", runner], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    text = result.stdout[:-1]  # print's line break
    prime = re.search(r'^text = "(.*)"$', docs_example(), flags=re.MULTILINE).group(1)
    generated = int(re.search(r"range\((\d+)\)", docs_example()).group(1))
    assert text.startswith(prime) and len(text) == len(prime) + generated
    assert set(text) <= set(model.vocab.chars)


def test_a_saved_checkpoint_exports_like_the_model_it_came_from(tmp_path):
    model = tiny_char_model("gru", seed=4)
    checkpoint = save_checkpoint(tmp_path / "ckpt", model.model, model.vocab, model.training)
    from_model = export_onnx(model, tmp_path / "a" / "model.onnx")
    from_checkpoint = export_onnx(checkpoint, tmp_path / "b" / "model.onnx")
    assert from_model.read_bytes() == from_checkpoint.read_bytes()


def test_a_failed_write_leaves_the_old_files_and_no_new_ones(tmp_path, monkeypatch):
    old = export_onnx(tiny_char_model("lstm"), tmp_path / "model.onnx")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    opened = []

    def open_then_fail(file, mode="r", *args, **kwargs):  # the .onnx is staged, vocab.json cannot be
        opened.append(file)
        if len(opened) == 2:
            raise OSError(28, "No space left on device", str(file))
        return open(file, mode, *args, **kwargs)

    monkeypatch.setattr(export, "open", open_then_fail, raising=False)
    with pytest.raises(CharLSTMError, match=r"could not write the export \(No space left"):
        export_onnx(tiny_char_model("gru"), old, overwrite=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    opened.clear()
    with pytest.raises(CharLSTMError, match="could not write"):
        export_onnx(tiny_char_model("gru"), tmp_path / "new" / "model.onnx")
    assert list((tmp_path / "new").iterdir()) == []
