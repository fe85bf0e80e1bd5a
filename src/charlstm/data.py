"""Text in, batches out: read files, encode to compact ids, split, and cut into TBPTT windows."""

from __future__ import annotations

import codecs
import lzma
import warnings
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
    text = "\n".join(read_text_file(f, encoding) for f in files)
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
    paths: Iterable[str | Path] = (),
    encoding: str = "utf-8",
    memmap_path: Path | None = None,
    write: bool = True,
) -> Corpus:
    """Read, build the vocabulary and encode in two streaming passes, so memory holds the ids
    (one byte a character for most texts) and one chunk of text. Several files are joined with
    a line break. With `memmap_path` the ids go to that file instead (written whole, then renamed
    into place) and are memory-mapped, for corpora larger than memory; `write=False` maps the
    file another process wrote (a data-parallel rank other than 0)."""
    paths = list(paths)
    if not paths:
        text = bundled_text()
        vocab = Vocab.from_text(text)
        return Corpus(vocab, encode_corpus(text, vocab), [BUNDLED_NAME], encoding)
    files = find_text_files(paths)
    vocab, total = _scan(files, encoding)
    sources = [str(f.resolve()) for f in files]
    if memmap_path is not None and not write:
        ids = np.load(memmap_path, mmap_mode="r")
        if ids.shape != (total,) or ids.dtype != ids_dtype(len(vocab)):
            raise CharLSTMError(f"{memmap_path}: does not hold this corpus; remove it and start again")
        return Corpus(vocab, ids, sources, encoding)
    dtype = ids_dtype(len(vocab))
    staged = None if memmap_path is None else memmap_path.with_name(memmap_path.name + ".tmp")
    if staged is None:
        ids = np.empty(total, dtype=dtype)
    else:
        ids = np.lib.format.open_memmap(staged, mode="w+", dtype=dtype, shape=(total,))
    start = 0
    newline = encode_corpus("\n", vocab) if len(files) > 1 else None
    for number, f in enumerate(files):
        if number and newline is not None:
            ids[start] = newline[0]
            start += 1
        for chunk in iter_text_chunks(f, encoding):
            ids[start : start + len(chunk)] = encode_corpus(chunk, vocab)
            start += len(chunk)
    if staged is not None and memmap_path is not None:
        ids.flush()
        del ids
        staged.replace(memmap_path)
        ids = np.load(memmap_path, mmap_mode="r")
    return Corpus(vocab, ids, sources, encoding)


def _scan(files: list[Path], encoding: str) -> tuple[Vocab, int]:
    """The first pass: the vocabulary and the length of the joined text."""
    chars: set[str] = {"\n"} if len(files) > 1 else set()
    total, has_text = len(files) - 1, False
    for f in files:
        for chunk in iter_text_chunks(f, encoding):
            chars.update(chunk)
            total += len(chunk)
            has_text = has_text or not chunk.isspace()
    if not has_text:
        raise CharLSTMError(f"{_names(files)}: no text to train on (empty or whitespace only)")
    return Vocab(sorted(chars)), total


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

    The ids are cut into `batch_size` rows of whole windows; window `i` is columns
    `[i*T, (i+1)*T)` of every row, so row `r` of window `i+1` continues row `r` of window `i`
    and the hidden state can be carried across. Targets are the inputs shifted left by one: the
    true next character, read one past the row's end (`wrap_targets=False`), or, as in the
    tutorial, the very last target of each row wrapping to that row's first character::

        ids  a b c d e f g h i j k l m  (B=2, T=3, two windows)
        rows [a b c | d e f]   targets [b c d | e f g]   wrapped: [b c d | e f a]
             [g h i | j k l]           [h i j | k l m]            [h i j | k l g]
    """

    def __init__(
        self,
        ids: np.ndarray,
        batch_size: int,
        seq_len: int,
        device: torch.device | str = "cpu",
        rows: slice | None = None,
        wrap_targets: bool = False,
    ):
        """`rows` keeps only some of the `batch_size` streams (a data-parallel rank's share)."""
        self.seq_len = seq_len
        self.wrap_targets = wrap_targets
        usable = len(ids) if wrap_targets else len(ids) - 1  # the true next character is one more
        self.num_windows = max(0, usable) // (batch_size * seq_len)
        if self.num_windows < 1:
            raise CharLSTMError(
                f"text too short for one batch: {len(ids):,} characters, but batch {batch_size} x "
                f"sequence {seq_len} needs {batch_size * seq_len + (not wrap_targets):,}; "
                "use a longer text or lower --batch-size / --seq-len"
            )
        length = self.num_windows * seq_len
        # Rows of length + 1 overlapping by one id: row r ends where row r + 1 starts, so the
        # targets are the same rows one column later and nothing is copied (on the CPU).
        itemsize = ids.dtype.itemsize
        streams = np.lib.stride_tricks.as_strided(
            ids, shape=(batch_size, length + 1), strides=(length * itemsize, itemsize), writeable=False
        )
        if wrap_targets:
            streams = streams[:, :length]
        if rows is not None:
            streams = streams[rows]
        self.batch_size = streams.shape[0]
        # A view of the ids (memory-mapped ones too) on the CPU, a copy on an accelerator.
        self.rows = _as_tensor(streams).to(device)

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> Window:
        if not 0 <= index < self.num_windows:
            raise IndexError(index)
        start, end = index * self.seq_len, (index + 1) * self.seq_len
        inputs = self.rows[:, start:end]
        if end < self.rows.shape[1]:
            targets = self.rows[:, start + 1 : end + 1]
        else:  # wrapped: the last target of a row is its first character, as in the tutorial
            targets = torch.cat([self.rows[:, start + 1 : end], self.rows[:, :1]], dim=1)
        return Window(inputs.long(), targets.long())

    def __iter__(self) -> Iterator[Window]:
        for index in range(self.num_windows):
            yield self[index]

    @property
    def num_chars(self) -> int:
        return self.num_windows * self.batch_size * self.seq_len


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of a (possibly read-only, strided) array; torch warns on read-only memory
    but never writes to these ids."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
