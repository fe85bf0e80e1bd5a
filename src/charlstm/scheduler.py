"""Continuous batching for the server: one thread advances every active stream in one `Stepper` step.

A stream joins at a step boundary (its prime fed once, on its own), then each step draws its next
character from its own row of the batch's logits with its own options and its own seeded
`torch.Generator`, so the text a seed gives never depends on which other streams shared the batch.
Finished, cut and cancelled streams leave at the next boundary; more than `max_batch` streams wait
their turn. Results go back through each stream's `emit` callback (the server hands it an
event-loop-safe one), so generation never runs on the event loop.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .model import CharRNN, State
from .sample import Completion, Token, draw_uniforms, make_generator, sample_next, stepper_for
from .vocab import Vocab

IDLE_POLL_S = 0.1
SHUTTING_DOWN = "the server is shutting down; try again when it is back"


@dataclass(frozen=True)
class Event:
    """New text of choice `index` (with its tokens when log-probabilities were asked for); a set
    `finish_reason` ("stop", "length") or `error` ends the choice."""

    index: int
    text: str
    tokens: list[Token]
    finish_reason: str | None = None
    error: str | None = None
    generated: int = 0


@dataclass
class Stream:
    """One choice of one request, with everything it needs to be stepped in any batch."""

    index: int
    prime_ids: list[int]
    max_tokens: int
    emit: Callable[[Event], None]
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: Sequence[str] = ()
    logprobs: int | None = None
    context: Any = None  # whatever the deliverer needs to route events (the server: its event loop)
    cancelled: bool = False
    generated: int = 0
    completion: Completion | None = field(default=None, repr=False)
    generator: torch.Generator | None = field(default=None, repr=False)
    # The prime's logits (1, V) and state, until the stream's first step puts them into the batch.
    logits: torch.Tensor | None = field(default=None, repr=False)
    state: State | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """The client went away: the scheduler drops the stream at the next step boundary."""
        self.cancelled = True


Delivery = Callable[[list[tuple["Stream", Event]]], None]


def deliver_directly(outbox: list[tuple[Stream, Event]]) -> None:
    for stream, event in outbox:
        stream.emit(event)


class Scheduler:
    """`deliver` gets each step's events in one call (the server hands them to the event loop in
    one wake-up rather than one per stream); by default each stream's `emit` is called in turn."""

    def __init__(
        self, model: CharRNN, vocab: Vocab, max_batch: int = 64, deliver: Delivery = deliver_directly
    ) -> None:
        self.model, self.vocab, self.max_batch, self.deliver = model.eval(), vocab, max_batch, deliver
        self.waiting: queue.Queue[Stream] = queue.Queue()
        self.active: list[Stream] = []  # the batch's streams in row order, then those that just joined
        self.batch: tuple[torch.Tensor, State] | None = None  # logits (M, V), state of the first M
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.steps = 0
        self.largest_batch = 0  # for tests and /health: did concurrent streams really share steps?

    def submit(self, stream: Stream) -> None:
        with self.lock:
            if self.stopping.is_set():
                self.deliver([(stream, Event(stream.index, "", [], error=SHUTTING_DOWN))])
                return
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="charlstm-scheduler", daemon=True)
                self.thread.start()
            self.waiting.put(stream)

    def request_stop(self) -> None:
        """Ask the thread to end every stream with an error event and exit; returns at once (it is
        called from a signal handler on the event loop)."""
        with self.lock:
            self.stopping.set()

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        if self.thread is not None:
            self.thread.join(timeout)
        self._end_all()  # where the thread never started, or did not finish in time

    def _end_all(self) -> None:
        self.deliver([(s, Event(s.index, "", [], error=SHUTTING_DOWN)) for s in self.active + self._drain()])
        self.active, self.batch = [], None

    def _drain(self) -> list[Stream]:
        streams = []
        while True:
            try:
                streams.append(self.waiting.get_nowait())
            except queue.Empty:
                return streams

    def _run(self) -> None:
        with torch.inference_mode():
            while not self.stopping.is_set():
                try:
                    self._admit()
                    if self.active:
                        self._step()
                except Exception as exc:  # end the streams it hit; never hang them or stop serving
                    self.deliver([(s, Event(s.index, "", [], error=failure(exc))) for s in self.active])
                    self.active, self.batch = [], None
        self._end_all()

    def _admit(self) -> None:
        """Move waiting streams into free slots; with nothing to do, wait a little for one."""
        while len(self.active) < self.max_batch:
            try:
                # Block briefly only when idle: a running batch must not wait for newcomers.
                stream = self.waiting.get(block=not self.active, timeout=IDLE_POLL_S)
            except queue.Empty:
                return
            if stream.cancelled:
                continue
            try:
                self._start(stream)
            except Exception as exc:
                self.deliver([(stream, Event(stream.index, "", [], error=failure(exc)))])

    def _start(self, stream: Stream) -> None:
        device = self.model.head.weight.device
        stream.completion = Completion(self.vocab, stream.temperature, stream.stop, stream.logprobs)
        stream.generator = make_generator(stream.seed, device)
        if stream.max_tokens == 0:
            stream.completion.finish()
            self.deliver([(stream, Event(stream.index, "", [], "length"))])
            return
        logits, stream.state = self.model(torch.tensor([stream.prime_ids], device=device))
        stream.logits = logits[:, -1]  # (1, V)
        self.active.append(stream)

    def _step(self) -> None:
        """Draw one character for every stream, report it, and advance the survivors together."""
        logits, state = self._assemble()  # (N, V), rows in the order of self.active
        streams = self.active
        next_ids = self._draw(streams, logits)
        keep, outbox = [], []
        for row, (stream, next_id) in enumerate(zip(streams, next_ids.tolist(), strict=True)):
            completion = stream.completion
            if stream.cancelled or completion is None:
                continue
            shown_before = len(completion.text)
            completion.add(next_id, logits[row])
            stream.generated += 1
            if completion.finish_reason is None and stream.generated >= stream.max_tokens:
                completion.finish()
            text = completion.text[shown_before:]
            tokens = completion.tokens[shown_before:] if stream.logprobs is not None else []
            reason = completion.finish_reason
            if text or reason:
                outbox.append((stream, Event(stream.index, text, tokens, reason, generated=stream.generated)))
            if reason is None:
                keep.append(row)
        if outbox:
            self.deliver(outbox)
        self.active = [streams[row] for row in keep]
        self.batch = None
        if not keep:
            return
        if len(keep) < len(streams):
            rows = torch.tensor(keep, device=next_ids.device)
            next_ids, state = next_ids[rows], select_rows(state, rows.to(logits.device))
        device = self.model.head.weight.device
        self.batch = stepper_for(self.model).step(next_ids.to(device), state)
        self.steps += 1
        self.largest_batch = max(self.largest_batch, len(keep))

    def _assemble(self) -> tuple[torch.Tensor, State]:
        """The batch's logits and state, with the streams that joined since the last step appended
        (their prime's logits and state, kept on the stream until now)."""
        members = self.batch[0].shape[0] if self.batch is not None else 0
        newcomers = self.active[members:]
        logits = [self.batch[0]] if self.batch is not None else []
        states = [self.batch[1]] if self.batch is not None else []
        logits += [s.logits for s in newcomers if s.logits is not None]
        states += [s.state for s in newcomers if s.state is not None]
        for stream in newcomers:
            stream.logits = stream.state = None
        return torch.cat(logits), concat_states(states)

    def _draw(self, streams: list[Stream], logits: torch.Tensor) -> torch.Tensor:
        """Next ids (N,): each stream's uniform number comes from its own generator, then streams with
        the same options are sampled as one batch (the same arithmetic per row as alone)."""
        next_ids = torch.zeros(len(streams), dtype=torch.long)
        groups: dict[tuple[float, int | None, float | None], list[int]] = {}
        for row, stream in enumerate(streams):
            if not stream.cancelled:
                groups.setdefault((stream.temperature, stream.top_k, stream.top_p), []).append(row)
        for key, rows in groups.items():
            uniforms = None
            if key[0] > 0:  # greedy decoding draws nothing
                draws = [draw_uniforms(1, streams[row].generator, logits.device) for row in rows]
                uniforms = torch.cat(draws)
            index = torch.tensor(rows)
            next_ids[index] = sample_next(logits[index.to(logits.device)], *key, uniforms=uniforms).cpu()
        return next_ids


def failure(exc: Exception) -> str:
    return f"generation failed ({type(exc).__name__}: {exc})"


def concat_states(states: Sequence[State | None]) -> State:
    """States of batches or streams, each (L, n, H) or a pair of them for an LSTM -> (L, sum n, H)."""
    if isinstance(states[0], tuple):
        return tuple(torch.cat(parts, dim=1) for parts in zip(*states, strict=True))  # type: ignore[return-value]
    return torch.cat(states, dim=1)  # type: ignore[arg-type]


def select_rows(state: State, rows: torch.Tensor) -> State:
    """The batch state of the streams at `rows` (N,), in that order."""
    if isinstance(state, tuple):
        return tuple(part.index_select(1, rows) for part in state)  # type: ignore[return-value]
    return state.index_select(1, rows)
