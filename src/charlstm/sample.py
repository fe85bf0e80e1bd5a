"""Sampling: temperature, top-k and top-p as in Hugging Face's `generate`, with carried state.

The prime is fed once; after that each step feeds one character per stream and carries the
recurrent state, so producing n characters costs n single-step passes, never a re-read of the
context. Several samples are one batch: streams share every matrix product.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CharLSTMError
from .model import CharRNN
from .stepper import Stepper
from .vocab import Vocab


def check_sampling_options(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not math.isfinite(temperature) or temperature < 0:
        raise CharLSTMError(f"--temperature must be 0 (greedy) or positive, not {temperature}")
    if top_k is not None and top_k < 1:
        raise CharLSTMError(f"--top-k must be at least 1, not {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise CharLSTMError(f"--top-p must be in (0, 1], not {top_p}")


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """logits (N, V) -> next ids (N,). Temperature first, then top-k, then top-p; 0 is greedy.

    `uniforms` (N, 1), if given, replace the draw from `generator`: rows that each own a generator
    (the server's streams) draw their own number and are then sampled together."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1] and (top_p is None or top_p >= 1):
        # Sampling among the k best directly skips masking and normalising the whole vocabulary.
        values, indices = torch.topk(logits, top_k, dim=-1)
        return indices.gather(-1, _draw(values.softmax(dim=-1), generator, uniforms)).squeeze(-1)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens before it already reach top_p (the first always stays).
        drop_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -math.inf)
    return _draw(logits.softmax(dim=-1), generator, uniforms).squeeze(-1)


def _draw(
    probs: torch.Tensor, generator: torch.Generator | None, uniforms: torch.Tensor | None = None
) -> torch.Tensor:
    """One index per row with the given probabilities, by inverting the cumulative sum at a
    uniform draw: a few small ops, where `torch.multinomial` costs ~0.1 ms a call on a CPU."""
    cumulative = probs.cumsum(dim=-1)
    u = uniforms if uniforms is not None else draw_uniforms(probs.shape[0], generator, probs.device)
    index = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True)
    return index.clamp_(max=probs.shape[-1] - 1)


def draw_uniforms(rows: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """The (rows, 1) uniform numbers one sampling step consumes from `generator`."""
    return torch.rand((rows, 1), generator=generator, device=device, dtype=torch.float32)


def default_prime(vocab: Vocab) -> str:
    """What to start from when the user gives no prime: a new line where the text had one."""
    for candidate in ("\n", " "):
        if candidate in vocab:
            return candidate
    return vocab.chars[0]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def stream_ids(model: CharRNN, prime_ids: list[int], length: int, **options: Any) -> Iterator[torch.Tensor]:
    """Yield `length` steps of next ids, each (num_samples,), after feeding `prime_ids` once."""
    steps = stream_steps(model, prime_ids, length, **options)
    return (ids for ids, _ in steps)


def stream_steps(
    model: CharRNN,
    prime_ids: list[int],
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield `length` steps of (next ids (N,), the logits (N, V) they were drawn from).

    Bad options raise here, at the call, not at the first `next()`: a caller that prints the
    prime before the first character never prints it for a run that cannot start."""
    check_sampling_options(temperature, top_k, top_p)
    if not prime_ids:
        raise CharLSTMError("the prime is empty after dropping unknown characters; give another prime")
    if length < 0 or num_samples < 1:
        raise CharLSTMError("--length must be 0 or more and --num-samples at least 1")
    return _stream_steps(model, prime_ids, length, temperature, top_k, top_p, num_samples, seed)


@torch.inference_mode()
def _stream_steps(
    model: CharRNN,
    prime_ids: list[int],
    length: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    num_samples: int,
    seed: int | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    model.eval()
    device = model.head.weight.device
    generator = make_generator(seed, device)
    prime = torch.tensor(prime_ids, device=device).expand(num_samples, -1)  # (N, P)
    logits, state = model(prime)
    logits = logits[:, -1]  # (N, V)
    stepper = stepper_for(model)
    for _ in range(length):
        next_ids = sample_next(logits, temperature, top_k, top_p, generator)  # (N,)
        yield next_ids, logits
        logits, state = stepper.step(next_ids, state)


_STEPPERS: weakref.WeakKeyDictionary[CharRNN, tuple[tuple[tuple[int, int], ...], Stepper]] = (
    weakref.WeakKeyDictionary()
)


def stepper_for(model: CharRNN) -> Stepper:
    """The model's `Stepper`, built on first use and kept: building one multiplies the embedding into
    the first layer's weights, which costs more than a short sample. A weight changed in place
    (its version counter moves) or moved to another device (its storage moves) builds a new one."""
    key = tuple((p.data_ptr(), p._version) for p in model.parameters())
    cached = _STEPPERS.get(model)
    if cached is None or cached[0] != key:
        cached = (key, Stepper(model))
        _STEPPERS[model] = cached
    return cached[1]


def stream_text(model: CharRNN, vocab: Vocab, prime_ids: list[int], length: int, **options) -> Iterator[str]:
    """Characters of a single sample as they are produced (options are checked at the call)."""
    steps = stream_ids(model, prime_ids, length, num_samples=1, **options)
    return (vocab.chars[int(ids[0])] for ids in steps)


def generate_texts(
    model: CharRNN, vocab: Vocab, prime_ids: list[int], length: int, num_samples: int = 1, **options
) -> list[str]:
    """`num_samples` continuations of the prime, generated as one batch (prime not included)."""
    return [c.text for c in complete(model, vocab, prime_ids, length, num_samples, **options)]


# ---------------------------------------------------------------- options shared by API, CLI and server

LOGPROBS_MAX = 5


@dataclass(frozen=True)
class Token:
    """One generated character, its log-probability and the likeliest alternatives at that point."""

    char: str
    logprob: float
    top_logprobs: dict[str, float]


def check_output_options(stop: Sequence[str], logprobs: int | None) -> None:
    if any(not isinstance(s, str) for s in stop):
        raise CharLSTMError("--stop takes strings")
    if logprobs is not None and not 0 <= logprobs <= LOGPROBS_MAX:
        raise CharLSTMError(f"--logprobs must be between 0 and {LOGPROBS_MAX}, not {logprobs}")


class StopMatcher:
    """Finds the first stop string in text that arrives a piece at a time. Text that could still
    be the start of a stop string is held back, so a stop split across pieces is never shown."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to show, whether a stop string was found)."""
        if not self.stops:
            return text, False
        self.pending += text
        cuts = [at for at in (self.pending.find(s) for s in self.stops) if at >= 0]
        if cuts:
            shown, self.pending = self.pending[: min(cuts)], ""
            return shown, True
        starts = (k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k]))
        hold = max(starts, default=0)
        cut = len(self.pending) - hold
        shown, self.pending = self.pending[:cut], self.pending[cut:]
        return shown, False

    def flush(self) -> str:
        shown, self.pending = self.pending, ""
        return shown


def token_logprobs(logits: torch.Tensor, temperature: float, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities (V,) and the ids of the `top` likeliest (top,), from the distribution the
    sampler draws from after temperature but before top-k/top-p cut it (so the alternatives a filter
    removed still show); greedy decoding (temperature 0) reports the model's own distribution."""
    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    logprobs = scaled.log_softmax(dim=-1)
    return logprobs, logprobs.topk(min(top, logprobs.shape[-1])).indices


class Completion:
    """One sample's text as it grows: stop strings cut it, log-probabilities ride along.

    `text` holds only what is safe to show (a possible start of a stop string waits); with
    `logprobs`, `tokens[i]` describes `text[i]`."""

    def __init__(
        self, vocab: Vocab, temperature: float = 1.0, stop: Sequence[str] = (), logprobs: int | None = None
    ) -> None:
        self.vocab, self.temperature, self.logprobs = vocab, temperature, logprobs
        self.matcher = StopMatcher(stop)
        self.text = ""
        self.tokens: list[Token] = []
        self.pending_tokens: list[Token] = []
        self.finish_reason: str | None = None

    def add(self, char_id: int, logits: torch.Tensor) -> str:
        """Take the character drawn from `logits` (V,); returns the text newly safe to show."""
        char = self.vocab.chars[char_id]
        if self.logprobs is not None:
            logprobs, top = token_logprobs(logits, self.temperature, self.logprobs)
            values = logprobs.tolist()
            alternatives = {self.vocab.chars[i]: values[i] for i in top.tolist()}
            self.pending_tokens.append(Token(char, values[char_id], alternatives))
        shown, stopped = self.matcher.push(char)
        if stopped:
            self.finish_reason = "stop"
        return self._show(shown)

    def finish(self) -> str:
        """The length ran out: show what was held back."""
        self.finish_reason = self.finish_reason or "length"
        return self._show(self.matcher.flush())

    def _show(self, shown: str) -> str:
        self.text += shown
        if self.logprobs is not None:
            self.tokens += self.pending_tokens[: len(shown)]
            self.pending_tokens = [] if self.finish_reason else self.pending_tokens[len(shown) :]
        return shown


def complete(
    model: CharRNN,
    vocab: Vocab,
    prime_ids: list[int],
    length: int,
    num_samples: int = 1,
    stop: Sequence[str] = (),
    logprobs: int | None = None,
    **options: Any,
) -> list[Completion]:
    """`num_samples` continuations generated as one batch; stops early once every one has stopped."""
    check_output_options(stop, logprobs)
    temperature = options.get("temperature", 1.0)
    completions = [Completion(vocab, temperature, stop, logprobs) for _ in range(num_samples)]
    for ids, logits in stream_steps(model, prime_ids, length, num_samples=num_samples, **options):
        for completion, char_id, row in zip(completions, ids.tolist(), logits, strict=True):
            if completion.finish_reason is None:
                completion.add(char_id, row)
        if all(c.finish_reason for c in completions):
            break
    for completion in completions:
        completion.finish()
    return completions


def stream_completion(
    model: CharRNN,
    vocab: Vocab,
    prime_ids: list[int],
    length: int,
    stop: Sequence[str] = (),
    logprobs: int | None = None,
    **options: Any,
) -> Iterator[str | Token]:
    """A single sample as it is produced: pieces of text, or with `logprobs` one `Token` per shown
    character. Options are checked at the call."""
    check_output_options(stop, logprobs)
    steps = stream_steps(model, prime_ids, length, num_samples=1, **options)
    completion = Completion(vocab, options.get("temperature", 1.0), stop, logprobs)
    return _stream_completion(completion, steps)


def _stream_completion(
    completion: Completion, steps: Iterator[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[str | Token]:
    def pieces() -> Iterator[str]:
        for ids, logits in steps:
            yield completion.add(int(ids[0]), logits[0])
            if completion.finish_reason:
                return
        yield completion.finish()

    shown = 0
    for piece in pieces():
        if completion.logprobs is None:
            if piece:
                yield piece
        else:
            yield from completion.tokens[shown:]
            shown = len(completion.tokens)
