"""Vocabulary: the sorted set of a text's characters, so the same text gives the same ids every run."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import CharLSTMError

UNKNOWN_POLICIES = ("error", "drop")


class Vocab:
    """Maps characters to ids (their rank in sorted order) and back."""

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise CharLSTMError("a vocabulary holds single characters only")
        if len(set(chars)) != len(chars):
            raise CharLSTMError("a vocabulary must not repeat a character")
        self.chars: tuple[str, ...] = tuple(chars)
        self.index: dict[str, int] = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> Vocab:
        return cls(sorted(set(text)))

    def __len__(self) -> int:
        return len(self.chars)

    def __contains__(self, char: object) -> bool:
        return char in self.index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` outside the vocabulary, sorted, each once."""
        return sorted(set(text) - self.index.keys())

    def encode(self, text: str, unknown: str = "error", what: str = "text") -> list[int]:
        """Ids of `text`; characters never seen raise (``unknown="error"``) or vanish (``"drop"``)."""
        if unknown not in UNKNOWN_POLICIES:
            raise CharLSTMError(f"unknown-character policy must be one of {UNKNOWN_POLICIES}")
        missing = self.unknown(text)
        if missing and unknown == "error":
            raise CharLSTMError(
                f"the {what} has characters the model never saw: {describe_chars(missing)}; "
                "remove them or pass --drop-unknown"
            )
        index = self.index
        return [index[c] for c in text if c in index]

    def decode(self, ids: Sequence[int]) -> str:
        chars = self.chars
        return "".join(chars[i] for i in ids)


def describe_chars(chars: Sequence[str], limit: int = 20) -> str:
    """`'a', '\\x00', 'é'` — printable and unambiguous, shortened past `limit`."""
    shown = ", ".join(repr(c) for c in chars[:limit])
    more = len(chars) - limit
    return shown + (f" and {more} more" if more > 0 else "")
