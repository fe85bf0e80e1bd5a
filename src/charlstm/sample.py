"""Sampling: temperature, top-k and top-p as in Hugging Face's `generate`, with carried state.

The prime is fed once; after that each step feeds one character per stream and carries the
recurrent state, so producing n characters costs n single-step passes, never a re-read of the
context. Several samples are one batch: streams share every matrix product.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

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
) -> torch.Tensor:
    """logits (N, V) -> next ids (N,). Temperature first, then top-k, then top-p; 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1] and (top_p is None or top_p >= 1):
        # Sampling among the k best directly skips masking and normalising the whole vocabulary.
        values, indices = torch.topk(logits, top_k, dim=-1)
        return indices.gather(-1, _draw(values.softmax(dim=-1), generator)).squeeze(-1)
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
    return _draw(logits.softmax(dim=-1), generator).squeeze(-1)


def _draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row with the given probabilities, by inverting the cumulative sum at a
    uniform draw: a few small ops, where `torch.multinomial` costs ~0.1 ms a call on a CPU."""
    cumulative = probs.cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=probs.dtype)
    index = torch.searchsorted(cumulative, u * cumulative[:, -1:], right=True)
    return index.clamp_(max=probs.shape[-1] - 1)


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


def stream_ids(
    model: CharRNN,
    prime_ids: list[int],
    length: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield `length` steps of next ids, each (num_samples,), after feeding `prime_ids` once.

    Bad options raise here, at the call, not at the first `next()`: a caller that prints the
    prime before the first character never prints it for a run that cannot start."""
    check_sampling_options(temperature, top_k, top_p)
    if not prime_ids:
        raise CharLSTMError("the prime is empty after dropping unknown characters; give another prime")
    if length < 0 or num_samples < 1:
        raise CharLSTMError("--length must be 0 or more and --num-samples at least 1")
    return _stream_ids(model, prime_ids, length, temperature, top_k, top_p, num_samples, seed)


@torch.inference_mode()
def _stream_ids(
    model: CharRNN,
    prime_ids: list[int],
    length: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    num_samples: int,
    seed: int | None,
) -> Iterator[torch.Tensor]:
    model.eval()
    device = model.head.weight.device
    generator = make_generator(seed, device)
    prime = torch.tensor(prime_ids, device=device).expand(num_samples, -1)  # (N, P)
    logits, state = model(prime)
    logits = logits[:, -1]  # (N, V)
    stepper = Stepper(model)
    for _ in range(length):
        next_ids = sample_next(logits, temperature, top_k, top_p, generator)  # (N,)
        yield next_ids
        logits, state = stepper.step(next_ids, state)


def stream_text(model: CharRNN, vocab: Vocab, prime_ids: list[int], length: int, **options) -> Iterator[str]:
    """Characters of a single sample as they are produced (options are checked at the call)."""
    steps = stream_ids(model, prime_ids, length, num_samples=1, **options)
    return (vocab.chars[int(ids[0])] for ids in steps)


def generate_texts(
    model: CharRNN, vocab: Vocab, prime_ids: list[int], length: int, num_samples: int = 1, **options
) -> list[str]:
    """`num_samples` continuations of the prime, generated as one batch (prime not included)."""
    steps = list(stream_ids(model, prime_ids, length, num_samples=num_samples, **options))
    if not steps:
        return [""] * num_samples
    ids = torch.stack(steps, dim=1).tolist()  # (N, length)
    return [vocab.decode(row) for row in ids]
