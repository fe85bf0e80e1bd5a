from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TEXT
from hypothesis import given
from hypothesis import strategies as st

from charlstm.data import (
    BUNDLED_NAME,
    StreamBatches,
    bundled_text,
    encode_corpus,
    find_text_files,
    ids_dtype,
    prepare_corpus,
    read_corpus,
    read_text_file,
    split_train_val,
)
from charlstm.errors import CharLSTMError
from charlstm.vocab import Vocab


def tutorial_get_batches(arr, batch_size, seq_length):
    """A reference copy of the tutorial's generator (Udacity's char-RNN notebook)."""
    batch_size_total = batch_size * seq_length
    n_batches = len(arr) // batch_size_total
    arr = arr[: n_batches * batch_size_total]
    arr = arr.reshape((batch_size, -1))
    for n in range(0, arr.shape[1], seq_length):
        x = arr[:, n : n + seq_length]
        y = np.zeros_like(x)
        try:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, n + seq_length]
        except IndexError:
            y[:, :-1], y[:, -1] = x[:, 1:], arr[:, 0]
        yield x, y


# ---------------------------------------------------------------- reading text


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "raw",
    [b"one\r\ntwo\r\nthree", b"one\rtwo\rthree", b"one\r\ntwo\rthree", b"one\ntwo\nthree"],
)
def test_newlines_become_line_feeds(tmp_path, raw):
    assert read_text_file(write(tmp_path / "t.txt", raw)) == "one\ntwo\nthree"


def test_utf8_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path / "bom.txt", "\ufeff안녕 world".encode())
    assert read_text_file(path) == "안녕 world"


def test_only_a_leading_byte_order_mark_is_dropped(tmp_path):
    path = write(tmp_path / "bom.txt", "\ufeffa\ufeffb".encode())
    assert read_text_file(path) == "a\ufeffb"


def test_binary_file_is_refused(tmp_path):
    path = write(tmp_path / "data.bin", b"PK\x03\x04\x00\x00binary")
    with pytest.raises(CharLSTMError, match="binary"):
        read_text_file(path)


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    path = write(tmp_path / "latin1.txt", "café au lait".encode("latin-1"))  # é is 0xE9 at offset 3
    with pytest.raises(CharLSTMError, match="byte 3 ") as info:
        read_text_file(path)
    assert "--encoding" in str(info.value)
    assert str(path) in str(info.value)


def test_other_encodings_are_honoured(tmp_path):
    path = write(tmp_path / "latin1.txt", "café".encode("latin-1"))
    assert read_text_file(path, encoding="latin-1") == "café"


def test_unknown_encoding_is_a_clear_error(tmp_path):
    path = write(tmp_path / "t.txt", b"abc")
    with pytest.raises(CharLSTMError, match="unknown encoding"):
        read_text_file(path, encoding="no-such-codec")


@pytest.mark.parametrize("raw", [b"", b"  \n\t\r\n  "])
def test_empty_or_whitespace_only_text_is_refused(tmp_path, raw):
    path = write(tmp_path / "empty.txt", raw)
    with pytest.raises(CharLSTMError, match="no text"):
        read_corpus([path])


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(CharLSTMError, match="no such file"):
        read_corpus([tmp_path / "nope.txt"])


def test_folder_reads_its_txt_files_in_sorted_order(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "b.txt", b"second ")
    write(tmp_path / "a.txt", b"first ")
    write(tmp_path / "sub" / "c.txt", b"third")
    write(tmp_path / "notes.md", b"ignored")
    text, sources = read_corpus([tmp_path])
    assert text == "first \nsecond \nthird", "files are joined with a line break"
    assert sources == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), str(tmp_path / "sub" / "c.txt")]


def test_folder_without_txt_files_is_refused(tmp_path):
    write(tmp_path / "notes.md", b"not a txt file")
    with pytest.raises(CharLSTMError, match=r"no \*\.txt"):
        find_text_files([tmp_path])


def test_files_keep_the_order_given(tmp_path):
    a, b = write(tmp_path / "a.txt", b"A"), write(tmp_path / "b.txt", b"B")
    assert read_corpus([b, a])[0] == "B\nA"


def test_no_paths_means_the_bundled_novel():
    text, sources = read_corpus([])
    assert sources == [BUNDLED_NAME]
    assert text.startswith(bundled_text()[:100])


def test_bundled_text_is_anna_karenina_with_lf_newlines():
    text = bundled_text()
    assert len(text) == 1_985_223
    assert len(set(text)) == 83
    assert "\r" not in text
    assert "Happy families are all alike" in text[:1000]


# ---------------------------------------------------------------- encoding


@given(st.text(min_size=0, max_size=300))
def test_encode_corpus_agrees_with_vocab_encode(text):
    vocab = Vocab.from_text(text + "ab")
    ids = encode_corpus(text, vocab)
    assert ids.tolist() == vocab.encode(text)


def test_encode_corpus_agrees_with_vocab_encode_on_korean_and_emoji():
    text = "안녕하세요, 세계! 🙂🚀 naïve\n" * 5
    vocab = Vocab.from_text(text)
    assert encode_corpus(text, vocab).tolist() == vocab.encode(text)


def test_encode_corpus_follows_the_vocabulary_order_even_when_not_sorted():
    vocab = Vocab(["c", "a", "b"])  # a vocabulary built by hand, in its own order
    assert encode_corpus("abcab", vocab).tolist() == vocab.encode("abcab") == [1, 2, 0, 1, 2]


def test_encode_corpus_refuses_unknown_characters():
    with pytest.raises(CharLSTMError, match="'z'"):
        encode_corpus("abz", Vocab.from_text("ab"))


def test_encode_corpus_refuses_a_character_above_the_whole_vocabulary():
    # The largest code point is where a clipped search could match the last entry by accident.
    with pytest.raises(CharLSTMError, match="🙂"):
        encode_corpus("ab🙂", Vocab.from_text("ab"))


def test_small_vocabulary_uses_uint8():
    text = "".join(chr(0x100 + i) for i in range(256))
    ids = encode_corpus(text, Vocab.from_text(text))
    assert ids.dtype == np.uint8
    assert ids.tolist() == list(range(256))


def test_more_than_256_characters_use_int16():
    text = "".join(chr(0xAC00 + i) for i in range(257))
    ids = encode_corpus(text, Vocab.from_text(text))
    assert ids.dtype == np.int16
    assert ids.tolist() == list(range(257))


def test_ids_dtype_boundaries():
    assert ids_dtype(2) == np.uint8
    assert ids_dtype(256) == np.uint8
    assert ids_dtype(257) == np.int16
    assert ids_dtype(1 << 15) == np.int16
    assert ids_dtype((1 << 15) + 1) == np.int32


# ---------------------------------------------------------------- splitting and batching


@pytest.mark.parametrize(("length", "val_frac"), [(100, 0.1), (1000, 0.05), (37, 0.3), (10, 0.5)])
def test_split_matches_the_tutorial(length, val_frac):
    ids = np.arange(length)
    train, val = split_train_val(ids, val_frac)
    cut = int(len(ids) * (1 - val_frac))
    assert np.array_equal(train, ids[:cut])
    assert np.array_equal(val, ids[cut:])


@pytest.mark.parametrize(
    ("length", "batch_size", "seq_len"), [(120, 2, 3), (1000, 4, 7), (97, 3, 5), (64, 8, 8)]
)
def test_windows_match_the_tutorial_get_batches(length, batch_size, seq_len):
    arr = np.arange(length)
    batches = StreamBatches(arr, batch_size, seq_len, wrap_targets=True)
    expected = list(tutorial_get_batches(arr, batch_size, seq_len))
    assert len(batches) == len(expected)
    assert len(list(batches)) == len(expected)
    for window, (x, y) in zip(batches, expected, strict=True):
        assert window.inputs.dtype == torch.int64 and window.targets.dtype == torch.int64
        assert window.inputs.shape == (batch_size, seq_len)
        assert np.array_equal(window.inputs.numpy(), x)
        assert np.array_equal(window.targets.numpy(), y)


def test_docstring_example_layout():
    batches = StreamBatches(np.arange(13, dtype=np.uint8), batch_size=2, seq_len=3)
    assert batches[0].inputs.tolist() == [[0, 1, 2], [6, 7, 8]]
    assert batches[0].targets.tolist() == [[1, 2, 3], [7, 8, 9]]
    assert batches[1].inputs.tolist() == [[3, 4, 5], [9, 10, 11]]
    assert batches[1].targets.tolist() == [[4, 5, 6], [10, 11, 12]]
    wrapped = StreamBatches(np.arange(13, dtype=np.uint8), batch_size=2, seq_len=3, wrap_targets=True)
    assert wrapped[1].inputs.tolist() == [[3, 4, 5], [9, 10, 11]]
    assert wrapped[1].targets.tolist() == [[4, 5, 0], [10, 11, 6]]


def test_targets_are_always_the_true_next_character_unless_wrapped():
    ids = np.arange(1000) % 251
    batches = StreamBatches(ids.astype(np.uint8), batch_size=3, seq_len=7)
    for window in batches:
        assert torch.equal((window.inputs + 1) % 251, window.targets)


def test_one_extra_character_is_needed_for_the_last_true_target():
    with pytest.raises(CharLSTMError, match="too short"):
        StreamBatches(np.arange(6), batch_size=2, seq_len=3, wrap_targets=False)
    assert len(StreamBatches(np.arange(6), batch_size=2, seq_len=3, wrap_targets=True)) == 1
    assert len(StreamBatches(np.arange(7), batch_size=2, seq_len=3, wrap_targets=False)) == 1


def test_each_row_of_the_next_window_continues_the_same_row():
    batches = StreamBatches(np.arange(500), batch_size=4, seq_len=6)
    for i in range(len(batches) - 1):
        now, after = batches[i], batches[i + 1]
        assert torch.equal(now.inputs[:, -1] + 1, after.inputs[:, 0])
        # The last target of a window is the first input of the next one.
        assert torch.equal(now.targets[:, -1], after.inputs[:, 0])
        assert torch.equal(now.targets[:, :-1], now.inputs[:, 1:])


def test_compact_ids_come_out_as_int64():
    ids = np.arange(60, dtype=np.int16)
    window = StreamBatches(ids, 2, 5)[0]  # 59 inputs have a next character: 5 windows a row
    assert window.inputs.dtype == torch.int64
    assert window.inputs.tolist() == [[0, 1, 2, 3, 4], [25, 26, 27, 28, 29]]


def test_num_chars_counts_the_trimmed_text():
    batches = StreamBatches(np.arange(103), batch_size=2, seq_len=5)
    assert len(batches) == 10
    assert batches.num_chars == 100


def test_index_out_of_range_raises_index_error():
    batches = StreamBatches(np.arange(20), 2, 5)
    with pytest.raises(IndexError):
        batches[2]
    with pytest.raises(IndexError):
        batches[-1]


def test_too_short_text_is_a_clear_error():
    with pytest.raises(CharLSTMError, match="too short") as info:
        StreamBatches(np.arange(99), batch_size=10, seq_len=10)
    assert "--batch-size" in str(info.value)


# ---------------------------------------------------------------- prepare_corpus (streaming, memory-mapped)


def mixed_files(root: Path) -> list[Path]:
    """Files and a folder with every line ending, a byte-order mark, Korean and emoji."""
    (root / "folder" / "deeper").mkdir(parents=True)
    write(root / "crlf.txt", "첫 줄\r\nsecond line\r\n".encode())
    write(root / "folder" / "b.txt", b"old Mac\rline endings\r")
    write(root / "folder" / "a.txt", "\ufeff안녕하세요 🙂🚀\nnaïve café\n".encode())
    write(root / "folder" / "deeper" / "c.txt", "\ufeffmixed\r\nends\rhere\n🙂".encode())
    write(root / "last.txt", b"\nno BOM, ASCII only")
    return [root / "crlf.txt", root / "folder", root / "last.txt"]


def reference_corpus(paths, encoding="utf-8"):
    text, sources = read_corpus(paths, encoding)
    vocab = Vocab.from_text(text)
    return text, vocab, encode_corpus(text, vocab), sources


def test_prepare_corpus_equals_read_then_encode(tmp_path):
    paths = mixed_files(tmp_path)
    text, vocab, ids, sources = reference_corpus(paths)
    assert "\r" not in text and "\ufeff" not in text and "🙂" in text  # the files did exercise it
    corpus = prepare_corpus(paths)
    assert corpus.vocab == vocab
    assert corpus.sources == sources
    assert corpus.encoding == "utf-8"
    assert corpus.ids.dtype == ids.dtype
    assert np.array_equal(corpus.ids, ids)
    assert vocab.decode(corpus.ids.tolist()) == text


def test_prepare_corpus_uses_wide_ids_when_the_text_needs_them(tmp_path):
    path = write(tmp_path / "hangul.txt", "".join(chr(0xAC00 + i) for i in range(300)).encode() * 3)
    _, _, ids, _ = reference_corpus([path])
    corpus = prepare_corpus([path])
    assert corpus.ids.dtype == ids.dtype == np.int16
    assert np.array_equal(corpus.ids, ids)


def test_prepare_corpus_honours_other_encodings(tmp_path):
    path = write(tmp_path / "latin1.txt", "café\r\nnaïve".encode("latin-1"))
    corpus = prepare_corpus([path], encoding="latin-1")
    assert corpus.vocab.decode(corpus.ids.tolist()) == "café\nnaïve"
    assert corpus.encoding == "latin-1"


def test_prepare_corpus_memory_maps_the_same_ids(tmp_path):
    paths = mixed_files(tmp_path / "texts")
    in_memory = prepare_corpus(paths)
    target = tmp_path / "corpus.npy"
    mapped = prepare_corpus(paths, memmap_path=target)
    assert target.is_file()
    assert isinstance(mapped.ids, np.memmap)
    assert not isinstance(in_memory.ids, np.memmap)
    assert mapped.vocab == in_memory.vocab
    assert mapped.ids.dtype == in_memory.ids.dtype
    assert np.array_equal(mapped.ids, in_memory.ids)
    assert np.array_equal(np.load(target), in_memory.ids)  # a plain .npy file: readable on its own


@pytest.mark.parametrize("raw", [[b""], [b"  \n", b"\r\n\t"], ["\ufeff \u3000\n".encode()]])
def test_prepare_corpus_refuses_whitespace_only_files(tmp_path, raw):
    paths = [write(tmp_path / f"{i}.txt", data) for i, data in enumerate(raw)]
    with pytest.raises(CharLSTMError, match="no text"):
        prepare_corpus(paths)
    with pytest.raises(CharLSTMError, match="no text"):
        prepare_corpus(paths, memmap_path=tmp_path / "corpus.npy")


def test_prepare_corpus_keeps_text_from_any_file(tmp_path):
    blank = write(tmp_path / "a.txt", b"   \n")
    text = write(tmp_path / "b.txt", b"x y")
    corpus = prepare_corpus([blank, text])
    assert corpus.vocab.decode(corpus.ids.tolist()) == "   \n\nx y"


def test_invalid_byte_after_a_byte_order_mark_names_its_offset_in_the_file(tmp_path):
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbfabc\xffdef")  # 0xFF is byte 6 of the file
    with pytest.raises(CharLSTMError, match="byte 6 "):
        read_text_file(path)


def test_invalid_byte_far_past_the_first_chunk_names_its_offset(tmp_path):
    # A 3-byte character straddles a 1 MiB boundary just before the bad byte, so the offset
    # must account for bytes the decoder held over from the previous block.
    boundary = 5 << 20
    head = b"abc \n" * ((boundary - 2) // 5) + b"a" * ((boundary - 2) % 5)
    bad_at = boundary + 1 + 9
    data = head + "한".encode() + b"ninebytes" + b"\xff" + b" tail\n"
    assert data[bad_at : bad_at + 1] == b"\xff" and bad_at > 5_000_000
    path = write(tmp_path / "big.txt", data)
    for read in (read_text_file, lambda p: prepare_corpus([p])):
        with pytest.raises(CharLSTMError, match=f"byte {bad_at} ") as info:
            read(path)
        assert str(path) in str(info.value)
        assert r"\xff" in str(info.value)


def test_stream_batches_on_a_memmap_match_an_in_memory_copy(tmp_path):
    rng = np.random.default_rng(0)
    target = tmp_path / "ids.npy"
    np.save(target, rng.integers(0, 200, size=5_003, dtype=np.uint8))
    mapped = np.load(target, mmap_mode="c")
    assert isinstance(mapped, np.memmap)
    copy = np.array(mapped)
    for batch_size, seq_len in [(4, 16), (7, 9), (1, 64)]:
        on_disk, in_memory = (
            StreamBatches(mapped, batch_size, seq_len),
            StreamBatches(copy, batch_size, seq_len),
        )
        assert len(on_disk) == len(in_memory)
        for a, b in zip(on_disk, in_memory, strict=True):
            assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
        assert on_disk.rows.dtype == torch.uint8  # still compact: the view is not widened


def test_a_memory_mapped_run_trains_exactly_like_an_in_memory_one(tmp_path, tiny_text_file, monkeypatch):
    import json

    from conftest import TINY_TRAIN_OPTIONS

    import charlstm
    from charlstm import runner

    in_memory = charlstm.train([tiny_text_file], tmp_path / "memory", **TINY_TRAIN_OPTIONS)
    assert not (in_memory / "corpus.npy").exists()
    monkeypatch.setattr(runner, "memmap_threshold", lambda: 0)
    seen: list[np.ndarray] = []
    original = runner.prepare_corpus

    def spy(*args, **kwargs):
        corpus = original(*args, **kwargs)
        seen.append(corpus.ids)
        return corpus

    monkeypatch.setattr(runner, "prepare_corpus", spy)
    mapped = charlstm.train([tiny_text_file], tmp_path / "mapped", **TINY_TRAIN_OPTIONS)
    assert len(seen) == 1 and isinstance(seen[0], np.memmap)
    assert (mapped / "corpus.npy").is_file()
    assert np.array_equal(np.load(mapped / "corpus.npy"), prepare_corpus([tiny_text_file]).ids)

    def val_losses(run: Path) -> list[float]:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["val_loss"] for line in lines]

    assert val_losses(mapped) == val_losses(in_memory)
    assert len(val_losses(mapped)) == 2
    assert charlstm.load(mapped).training["num_chars"] == len(TINY_TEXT)


@pytest.mark.parametrize("mapped", [False, True], ids=["in-memory", "memory-mapped"])
def test_prepare_corpus_joins_files_with_a_line_break(tmp_path, mapped):
    a, b = write(tmp_path / "a.txt", b"abc"), write(tmp_path / "b.txt", b"xyz")
    corpus = prepare_corpus([a, b], memmap_path=tmp_path / "corpus.npy" if mapped else None)
    assert corpus.vocab.decode(corpus.ids.tolist()) == "abc\nxyz" == read_corpus([a, b])[0]
    assert "\n" in corpus.vocab.chars


def test_other_ranks_map_the_corpus_rank_0_wrote_without_writing(tmp_path):
    paths = mixed_files(tmp_path / "texts")
    target = tmp_path / "corpus.npy"
    written = prepare_corpus(paths, memmap_path=target)
    before = (target.stat().st_mtime_ns, target.stat().st_ino)
    mapped = prepare_corpus(paths, memmap_path=target, write=False)
    assert np.array_equal(mapped.ids, written.ids) and mapped.vocab == written.vocab
    assert not mapped.ids.flags.writeable, "mapped read-only"
    assert (target.stat().st_mtime_ns, target.stat().st_ino) == before
    assert not target.with_name("corpus.npy.tmp").exists()


def test_a_corpus_file_of_another_text_is_refused(tmp_path):
    paths = mixed_files(tmp_path / "texts")
    target = tmp_path / "corpus.npy"
    np.save(target, np.zeros(5, dtype=np.uint8))
    with pytest.raises(CharLSTMError, match="does not hold this corpus"):
        prepare_corpus(paths, memmap_path=target, write=False)
