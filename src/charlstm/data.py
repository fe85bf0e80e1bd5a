"""Text in, batches out: read files, encode to compact ids, split, and cut into TBPTT windows."""

from __future__ import annotations

import lzma
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .errors import CharLSTMError
from .vocab import Vocab, describe_chars

BUNDLED_CORPUS = "anna_karenina.txt.xz"
BUNDLED_NAME = "bundled: Anna Karenina"
_BINARY_PROBE_BYTES = 8192
_ENCODE_CHUNK = 1 << 20


def bundled_text() -> str:
    """The default corpus, Tolstoy's *Anna Karenina* (1,985,223 characters, LF newlines)."""
    data = resources.files("charlstm").joinpath("corpora", BUNDLED_CORPUS).read_bytes()
    return lzma.decompress(data).decode("utf-8")


def find_text_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand folders into their `*.txt` files (sorted); every path must exist."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise CharLSTMError(f"{path}: folder has no *.txt files; point at a text file instead")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise CharLSTMError(f"{path}: no such file or folder")
    return files


def read_text_file(path: Path, encoding: str = "utf-8") -> str:
    """Decode one file with universal newlines; a UTF-8 byte-order mark is dropped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CharLSTMError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if b"\x00" in raw[:_BINARY_PROBE_BYTES] and not encoding.lower().startswith("utf-16"):
        raise CharLSTMError(f"{path}: looks like a binary file (it holds NUL bytes), not text")
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        text = raw.decode(codec)
    except LookupError:
        raise CharLSTMError(f"unknown encoding {encoding!r}; try --encoding utf-8") from None
    except UnicodeDecodeError as exc:
        raise CharLSTMError(
            f"{path}: byte {exc.start} is not valid {encoding} ({raw[exc.start : exc.start + 1]!r}); "
            "pass the right --encoding or fix the file"
        ) from None
    del raw
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_corpus(paths: Iterable[str | Path] = (), encoding: str = "utf-8") -> tuple[str, list[str]]:
    """The concatenated text of `paths` (the bundled novel when empty) and the names it came from."""
    paths = list(paths)
    if not paths:
        return bundled_text(), [BUNDLED_NAME]
    files = find_text_files(paths)
    text = "".join(read_text_file(f, encoding) for f in files)
    if not text.strip():
        names = ", ".join(str(f) for f in files)
        raise CharLSTMError(f"{names}: no text to train on (empty or whitespace only)")
    return text, [str(f) for f in files]


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest integer type that holds every id (and that torch indexes with)."""
    if vocab_size <= 256:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 15:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def encode_corpus(text: str, vocab: Vocab) -> np.ndarray:
    """Ids of `text` as a compact array, encoded in chunks to bound the memory it takes."""
    codepoints = np.fromiter((ord(c) for c in vocab.chars), dtype=np.uint32, count=len(vocab))
    order = np.argsort(codepoints, kind="stable")  # a vocabulary need not be in code-point order
    codepoints = codepoints[order]
    out = np.empty(len(text), dtype=ids_dtype(len(vocab)))
    for start in range(0, len(text), _ENCODE_CHUNK):
        chunk = text[start : start + _ENCODE_CHUNK]
        points = np.frombuffer(chunk.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ranks = np.searchsorted(codepoints, points).clip(max=len(vocab) - 1)
        if not np.array_equal(codepoints[ranks], points):
            raise CharLSTMError(
                f"the text has characters the model never saw: {describe_chars(vocab.unknown(chunk))}"
            )
        out[start : start + len(chunk)] = order[ranks]
    return out


def split_train_val(ids: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's split: the last `val_frac` of the text is held out."""
    cut = int(len(ids) * (1 - val_frac))
    return ids[:cut], ids[cut:]


@dataclass(frozen=True)
class Window:
    inputs: torch.Tensor  # (B, T) int64
    targets: torch.Tensor  # (B, T) int64


class StreamBatches:
    """Contiguous streams walked in windows, as in the tutorial's `get_batches`.

    The ids are trimmed to whole windows and cut into `batch_size` rows; window `i` is
    columns `[i*T, (i+1)*T)` of every row, so row `r` of window `i+1` continues row `r` of
    window `i` and the hidden state can be carried across. Targets are the inputs shifted
    left by one; the very last target of each row wraps to that row's first character::

        ids  a b c d e f g h i j k l  (B=2, T=3, two windows)
        rows [a b c | d e f]          targets [b c d | e f a]
             [g h i | j k l]                  [h i j | k l g]
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        device: torch.device | str = "cpu",
        rows: slice | None = None,
    ):
        """`rows` keeps only some of the `batch_size` streams (a data-parallel rank's share)."""
        self.seq_len = seq_len
        self.num_windows = len(ids) // (batch_size * seq_len)
        if self.num_windows < 1:
            raise CharLSTMError(
                f"text too short for one batch: {len(ids):,} characters, but batch {batch_size} x "
                f"sequence {seq_len} needs {batch_size * seq_len:,}; "
                "use a longer text or lower --batch-size / --seq-len"
            )
        streams = ids[: self.num_windows * batch_size * seq_len].reshape(batch_size, -1)
        streams = np.ascontiguousarray(streams[rows] if rows is not None else streams)
        self.batch_size = streams.shape[0]
        self.inputs = torch.from_numpy(streams).to(device)
        self.targets = torch.from_numpy(np.roll(streams, -1, axis=1)).to(device)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> Window:
        if not 0 <= index < self.num_windows:
            raise IndexError(index)
        cols = slice(index * self.seq_len, (index + 1) * self.seq_len)
        return Window(self.inputs[:, cols].long(), self.targets[:, cols].long())

    def __iter__(self) -> Iterator[Window]:
        for index in range(self.num_windows):
            yield self[index]

    @property
    def num_chars(self) -> int:
        return self.num_windows * self.batch_size * self.seq_len


def validation_batches(
    ids: np.ndarray,
    batch_size: int,
    seq_len: int,
    device: torch.device | str,
    rank: int = 0,
    world_size: int = 1,
) -> StreamBatches:
    """Validation uses the training layout, with fewer rows when the held-out text is short;
    under data parallelism each rank takes every `world_size`-th stream."""
    rows = max(1, min(batch_size, len(ids) // seq_len))
    if len(ids) < seq_len:
        raise CharLSTMError(
            f"validation text too short: {len(ids):,} characters, less than one --seq-len "
            f"({seq_len}); raise --val-frac, lower --seq-len or use a longer text"
        )
    if rows < world_size:
        raise CharLSTMError(
            f"validation text too short to share among {world_size} processes; raise --val-frac"
        )
    return StreamBatches(ids, rows, seq_len, device, rows=slice(rank, None, world_size))
