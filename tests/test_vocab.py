from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlstm.errors import CharLSTMError
from charlstm.vocab import Vocab, describe_chars

# Arbitrary text, weighted towards the scripts people actually train on: Hangul, emoji, accents.
KOREAN = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
EMOJI = st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF)
MIXED_TEXT = st.text(st.one_of(st.characters(), KOREAN, EMOJI), min_size=0, max_size=200)


@given(MIXED_TEXT)
def test_encode_then_decode_gives_the_text_back(text):
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text)
    assert all(0 <= i < len(vocab) for i in ids)
    assert vocab.decode(ids) == text


@given(MIXED_TEXT, MIXED_TEXT)
def test_a_larger_vocabulary_still_round_trips(text, extra):
    vocab = Vocab.from_text(text + extra)
    assert vocab.decode(vocab.encode(text)) == text


@given(MIXED_TEXT)
def test_order_is_sorted_and_independent_of_the_order_of_the_text(text):
    vocab = Vocab.from_text(text)
    assert vocab.chars == tuple(sorted(set(text)))
    shuffled = list(text)
    random.Random(0).shuffle(shuffled)
    assert Vocab.from_text("".join(shuffled)) == vocab


def test_ids_are_ranks_in_code_point_order():
    vocab = Vocab.from_text("한국어 text 🙂 and é")
    assert vocab.chars[0] == " "
    assert vocab.chars[-1] == "🙂"
    assert vocab.encode("a") == [vocab.chars.index("a")]
    assert list(vocab.chars) == sorted(vocab.chars, key=ord)


def test_the_same_text_gives_the_same_ids_every_time():
    text = "hello, 세계! 🙂"
    assert Vocab.from_text(text).encode(text) == Vocab.from_text(text).encode(text)


def test_unknown_characters_raise_naming_each_once():
    vocab = Vocab.from_text("abc")
    with pytest.raises(CharLSTMError) as info:
        vocab.encode("abxcyx한", what="prime")
    message = str(info.value)
    assert "prime" in message
    assert "'x'" in message and "'y'" in message and "'한'" in message
    assert message.count("'x'") == 1
    assert "--drop-unknown" in message


def test_unknown_control_characters_are_shown_unambiguously():
    vocab = Vocab.from_text("abc")
    with pytest.raises(CharLSTMError, match=r"'\\x00'"):
        vocab.encode("a\x00")


def test_drop_policy_removes_unknown_characters():
    vocab = Vocab.from_text("abc")
    assert vocab.encode("abxcyx한", unknown="drop") == vocab.encode("abc")
    assert vocab.encode("xyz", unknown="drop") == []


def test_unknown_policy_must_be_known():
    with pytest.raises(CharLSTMError, match="policy"):
        Vocab.from_text("ab").encode("ab", unknown="ignore")


def test_unknown_lists_sorted_distinct_characters():
    assert Vocab.from_text("abc").unknown("zzyxa") == ["x", "y", "z"]


def test_membership_length_and_equality():
    vocab = Vocab.from_text("banana")
    assert len(vocab) == 3
    assert "b" in vocab and "z" not in vocab
    assert vocab == Vocab(["a", "b", "n"])
    assert vocab != Vocab(["a", "b"])
    assert hash(vocab) == hash(Vocab(["a", "b", "n"]))


@pytest.mark.parametrize("chars", [["a", "a"], ["ab"], [""], [1]])
def test_constructor_rejects_repeats_and_non_characters(chars):
    with pytest.raises(CharLSTMError):
        Vocab(chars)


def test_describe_chars_shortens_long_lists():
    text = describe_chars([chr(ord("a") + i) for i in range(25)], limit=20)
    assert text.startswith("'a', 'b'")
    assert text.endswith("and 5 more")
    assert "'u'" not in text
