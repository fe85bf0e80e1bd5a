"""Text in, batches out: read files, encode to compact ids, split, and cut into TBPTT windows."""

from __future__ import annotations

import codecs
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
_ENCODE_CHUNK = 1 << 18  # bounds the temporary arrays (a few bytes a character each)
_TEXT_CHUNK = 1 << 22


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


def _codec(encoding: str) -> str:
    """UTF-8 is read as utf-8-sig so that a byte-order mark is dropped."""
    codec = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        codecs.lookup(codec)
    except LookupError:
        raise CharLSTMError(f"unknown encoding {encoding!r}; try --encoding utf-8") from None
    return codec


def _bad_byte_offset(path: Path, codec: str) -> tuple[int, bytes]:
    """Where decoding `path` first fails, as a byte offset into the file, and that byte."""
    # utf-8-sig's decoder reports positions past a byte-order mark it dropped; plain UTF-8
    # fails at the same bytes (the mark is valid UTF-8) and counts from the file's start.
    if codecs.lookup(codec).name == "utf-8-sig":
        codec = "utf-8"
    decoder = codecs.getincrementaldecoder(codec)()
    offset = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                position = offset - pending + exc.start
                return position, (exc.object[exc.start : exc.start + 1])
            offset += len(block)
    return offset, b""


def iter_text_chunks(path: Path, encoding: str = "utf-8") -> Iterator[str]:
    """Decode one file in chunks of characters, with universal newlines (CRLF and CR become
    LF); a UTF-8 byte-order mark is dropped. The whole text is never held at once."""
    codec = _codec(encoding)
    try:
        with path.open("rb") as f:
            head = f.read(_BINARY_PROBE_BYTES)
        if (
            b"\x00" in head
            and not codec.lower().startswith("utf-16")
            and not codec.lower().startswith("utf-32")
        ):
            raise CharLSTMError(f"{path}: looks like a binary file (it holds NUL bytes), not text")
        with path.open("r", encoding=codec, newline=None) as f:
            while chunk := f.read(_TEXT_CHUNK):
                yield chunk
    except UnicodeDecodeError:
        position, byte = _bad_byte_offset(path, codec)
        raise CharLSTMError(
            f"{path}: byte {position} ({byte!r}) is not valid {encoding}; "
            "pass the right --encoding or fix the file"
        ) from None
    except OSError as exc:
        raise CharLSTMError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_text_file(path: Path, encoding: str = "utf-8") -> str:
    """The whole decoded text of one file (see `iter_text_chunks`)."""
    return "".join(iter_text_chunks(path, encoding))


def read_corpus(paths: Iterable[str | Path] = (), encoding: str = "utf-8") -> tuple[str, list[str]]:
    """The concatenated text of `paths` (the bundled novel when empty) and the names it came from."""
    paths = list(paths)
    if not paths:
        return bundled_text(), [BUNDLED_NAME]
    files = find_text_files(paths)
    text = "".join(read_text_file(f, encoding) for f in files)
    if not text.strip():
        raise CharLSTMError(f"{_names(files)}: no text to train on (empty or whitespace only)")
    return text, [str(f) for f in files]


def _names(files: list[Path]) -> str:
    return ", ".join(str(f) for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


@dataclass
class Corpus:
    """An encoded text: its vocabulary, ids (in memory or memory-mapped) and where it came from."""

    vocab: Vocab
    ids: np.ndarray
    sources: list[str]
    encoding: str


def prepare_corpus(
    paths: Iterable[str | Path] = (), encoding: str = "utf-8", memmap_path: Path | None = None
) -> Corpus:
    """Read, build the vocabulary and encode in two streaming passes, so memory holds the ids
    (one byte a character for most texts) and one chunk of text. With `memmap_path` the ids
    go to that file instead and are memory-mapped, for corpora larger than memory."""
    paths = list(paths)
    if not paths:
        text = bundled_text()
        vocab = Vocab.from_text(text)
        return Corpus(vocab, encode_corpus(text, vocab), [BUNDLED_NAME], encoding)
    files = find_text_files(paths)
    chars: set[str] = set()
    total, has_text = 0, False
    for f in files:
        for chunk in iter_text_chunks(f, encoding):
            chars.update(chunk)
            total += len(chunk)
            has_text = has_text or not chunk.isspace()
    if not has_text:
        raise CharLSTMError(f"{_names(files)}: no text to train on (empty or whitespace only)")
    vocab = Vocab(sorted(chars))
    dtype = ids_dtype(len(vocab))
    if memmap_path is None:
        ids = np.empty(total, dtype=dtype)
    else:
        ids = np.lib.format.open_memmap(memmap_path, mode="w+", dtype=dtype, shape=(total,))
    start = 0
    for f in files:
        for chunk in iter_text_chunks(f, encoding):
            ids[start : start + len(chunk)] = encode_corpus(chunk, vocab)
            start += len(chunk)
    if memmap_path is not None:
        ids.flush()
        del ids
        ids = np.load(memmap_path, mmap_mode="c")  # copy-on-write: torch may view it
    return Corpus(vocab, ids, [str(f) for f in files], encoding)


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
        if rows is not None:
            streams = streams[rows]
        self.batch_size = streams.shape[0]
        # A view of the ids (memory-mapped ones too) on the CPU, a copy on an accelerator;
        # targets are read from the same rows one column later, so nothing is duplicated.
        self.rows = torch.from_numpy(streams).to(device)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> Window:
        if not 0 <= index < self.num_windows:
            raise IndexError(index)
        start, end = index * self.seq_len, (index + 1) * self.seq_len
        inputs = self.rows[:, start:end]
        if end < self.rows.shape[1]:
            targets = self.rows[:, start + 1 : end + 1]
        else:  # the last target of a row wraps to its first character, as in the tutorial
            targets = torch.cat([self.rows[:, start + 1 : end], self.rows[:, :1]], dim=1)
        return Window(inputs.long(), targets.long())

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
