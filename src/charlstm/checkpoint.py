"""Checkpoints: a folder with `model.safetensors` and `config.json`, written atomically.

Loading never unpickles: weights come from safetensors (a JSON header and raw bytes) and the
JSON is checked against the expected schema and the model's shapes before any tensor is used.
A folder is replaced by renaming, so a crash leaves the old checkpoint or the new one, never a
mix: the new one is written beside it under a temporary name first.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import CharLSTMError
from .model import CharRNN
from .vocab import Vocab

FORMAT = "charlstm"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TRAINER_TENSORS_FILE = "trainer.safetensors"
TRAINER_META_FILE = "trainer.json"
BUNDLED_MODEL = "pretrained"
# Weights may be stored in a smaller float type (the bundled model is fp16); they load as fp32.
STORED_FLOATS = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class Checkpoint:
    model: CharRNN
    vocab: Vocab
    training: dict[str, Any]
    path: Path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")


def recover_interrupted_write(path: Path) -> None:
    """A crash between the two renames leaves only the old folder aside: put it back."""
    old = _sidecars(path)[1]
    if not path.exists() and (old / CONFIG_FILE).is_file():
        os.replace(old, path)


def write_folder_atomically(path: Path, files: dict[str, bytes | Path]) -> Path:
    """Create `path` holding `files` (name -> bytes, or a file to move in), replacing it whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_write(path)
    tmp, old = _sidecars(path)
    if old.exists() and path.exists():
        shutil.rmtree(old)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, content in files.items():
        target = tmp / name
        if isinstance(content, Path):
            os.replace(content, target)
        else:
            target.write_bytes(content)
        _fsync(target)
    _fsync(tmp)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync(path.parent)
    if old.exists():
        shutil.rmtree(old)
    return path


def save_checkpoint(
    path: str | Path,
    model: CharRNN,
    vocab: Vocab,
    training: dict[str, Any],
    trainer_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Save weights (as CPU tensors), hyperparameters, vocabulary and training facts; with
    `trainer_state` also what resuming needs (optimizer, RNGs, position), likewise pickle-free."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CharLSTMError(f"{path}: exists and is not a folder; choose another --out")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "vocab": list(vocab.chars),
        "training": training,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes | Path] = {CONFIG_FILE: _json_bytes(config)}
    weights = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    try:
        files[WEIGHTS_FILE] = _save_tensors(path, WEIGHTS_FILE, weights)
        if trainer_state is not None:
            tensors, meta = trainer_state
            files[TRAINER_TENSORS_FILE] = _save_tensors(path, TRAINER_TENSORS_FILE, tensors)
            files[TRAINER_META_FILE] = _json_bytes(meta)
        return write_folder_atomically(path, files)
    except OSError as exc:
        raise CharLSTMError(
            f"{path}: could not save the checkpoint ({exc.strerror or exc}); the previous one is kept"
        ) from None
    finally:
        _discard_staged(path, files)


def _discard_staged(path: Path, files: dict[str, bytes | Path]) -> None:
    """After a save (a no-op when it succeeded): put a previous folder moved aside back and
    remove what was staged, so a failed save (a full disk) leaves the old checkpoint as it was."""
    try:
        recover_interrupted_write(path)
    except OSError:
        pass  # still found by resolve_checkpoint, and put back by the next save
    shutil.rmtree(_sidecars(path)[0], ignore_errors=True)
    for content in files.values():
        if isinstance(content, Path):
            content.unlink(missing_ok=True)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=False, allow_nan=True).encode("utf-8")


def _save_tensors(folder: Path, name: str, tensors: dict[str, torch.Tensor]) -> Path:
    staged = folder.with_name(f".{folder.name}.{name}")
    try:
        save_file(tensors, str(staged), metadata={"format": FORMAT})
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise CharLSTMError(
            f"{folder}: could not save the checkpoint ({exc.strerror or exc}); the previous one is kept"
        ) from None
    return staged


def load_trainer_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The resumable state saved beside a checkpoint's weights (only `last` has it)."""
    path = Path(path)
    meta_path, tensors_path = path / TRAINER_META_FILE, path / TRAINER_TENSORS_FILE
    if not meta_path.is_file() or not tensors_path.is_file():
        raise CharLSTMError(f"{path}: holds no training state to resume from (is it a run's last/?)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensors_path), device="cpu")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SafetensorError, ValueError) as exc:
        raise CharLSTMError(f"{path}: training state unreadable ({exc}); the checkpoint is damaged") from None
    progress = meta.get("progress") if isinstance(meta, dict) else None
    if not isinstance(progress, dict) or not isinstance(progress.get("step"), int):
        raise CharLSTMError(f"{meta_path}: not charlstm training state; the checkpoint is damaged")
    if "rng.torch" not in tensors or tensors["rng.torch"].dtype != torch.uint8:
        raise CharLSTMError(f"{tensors_path}: the random-number state is missing or damaged")
    return tensors, meta


def bundled_model_path() -> Path:
    """The pretrained model that ships in the package (trained on the bundled novel)."""
    return Path(str(resources.files("charlstm").joinpath(BUNDLED_MODEL)))


def resolve_checkpoint(path: str | Path | None) -> Path:
    """A checkpoint folder, or a run folder (meaning its `best`, else its `last`); None means the
    bundled pretrained model."""
    if path is None:
        path = bundled_model_path()
        if not (path / CONFIG_FILE).is_file():
            raise CharLSTMError("this install has no bundled model; give a checkpoint or run folder")
        return path
    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    candidates = [path, path / "best", path / "last"]
    for candidate in candidates + [_sidecars(c)[1] for c in candidates]:
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    if not path.exists():
        raise CharLSTMError(f"{path}: no such checkpoint or run folder")
    raise CharLSTMError(f"{path}: not a checkpoint (no {CONFIG_FILE} in it, nor in best/ or last/)")


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CharLSTMError(f"{path / CONFIG_FILE}: unreadable ({exc})") from None
    _check_schema(path, config)
    return config


def _check_schema(path: Path, config: Any) -> None:
    def fail(what: str) -> None:
        raise CharLSTMError(f"{path / CONFIG_FILE}: {what}; the checkpoint is damaged or not charlstm's")

    if not isinstance(config, dict) or config.get("format") != FORMAT:
        fail("not a charlstm config")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        fail(f"format version {version!r} is newer than this charlstm reads ({FORMAT_VERSION}); upgrade")
    vocab, model = config.get("vocab"), config.get("model")
    if not isinstance(vocab, list) or not all(isinstance(c, str) and len(c) == 1 for c in vocab):
        fail("'vocab' must be a list of single characters")
    if not isinstance(model, dict):
        fail("'model' must be an object")
    if model.get("vocab_size") != len(vocab):
        fail(f"'vocab' has {len(vocab)} characters but the model expects {model.get('vocab_size')}")
    expected = {"cell": str, "hidden_size": int, "num_layers": int, "dropout": (int, float)}
    for key, kind in expected.items():
        if not isinstance(model.get(key), kind) or isinstance(model.get(key), bool):
            fail(f"'model.{key}' is missing or of the wrong type")
    embedding = model.get("embedding_size")
    if embedding is not None and (not isinstance(embedding, int) or isinstance(embedding, bool)):
        fail("'model.embedding_size' must be a whole number or null")
    if not isinstance(config.get("training", {}), dict):
        fail("'training' must be an object")


def _check_weights_header(weights_path: Path, model_config: ModelConfig) -> None:
    """Compare the tensors' names, shapes and types in the safetensors header with what the
    config implies, before anything is allocated: the expected shapes come from a model built on
    the meta device (no memory), so a config asking for a huge model fails here, cheaply."""
    with torch.device("meta"):
        expected = CharRNN(model_config).state_dict()
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            slices = {name: f.get_slice(name) for name in f.keys()}
            found = {name: (tuple(s.get_shape()), s.get_dtype()) for name, s in slices.items()}
    except FileNotFoundError:
        raise CharLSTMError(f"{weights_path}: missing; the checkpoint is incomplete") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CharLSTMError(f"{weights_path}: not a valid safetensors file ({exc})") from None
    if set(found) != set(expected):
        missing = _some(sorted(set(expected) - set(found)))
        extra = _some(sorted(set(found) - set(expected)))
        raise CharLSTMError(
            f"{weights_path}: tensors do not match {CONFIG_FILE} (missing {missing}; unexpected {extra})"
        )
    for name, (shape, dtype) in found.items():
        want = tuple(expected[name].shape)
        if shape != want or dtype not in STORED_FLOATS:
            raise CharLSTMError(
                f"{weights_path}: {name} is {shape} {dtype}, but {CONFIG_FILE} implies {want} "
                f"in one of {', '.join(STORED_FLOATS)}"
            )


def _some(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit]) or "none"
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def load_checkpoint(path: str | Path | None, device: torch.device | str = "cpu") -> Checkpoint:
    """Rebuild the model from a checkpoint (or run) folder, onto `device`."""
    path = resolve_checkpoint(path)
    config = read_config(path)
    model_config = ModelConfig.from_dict(config["model"])
    vocab = Vocab(config["vocab"])
    weights_path = path / WEIGHTS_FILE
    _check_weights_header(weights_path, model_config)
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CharLSTMError(f"{weights_path}: not a valid safetensors file ({exc})") from None
    model = CharRNN(model_config)
    model.load_state_dict({name: tensor.float() for name, tensor in tensors.items()})
    model.to(device).eval()
    return Checkpoint(model=model, vocab=vocab, training=config.get("training", {}), path=path)
