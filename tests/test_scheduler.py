"""The batching scheduler without HTTP: a seeded stream's text does not depend on its batch, slots
are limited and freed, and stopping ends every stream with an error event."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import TINY_TEXT, make_model

from charlstm.api import CharModel
from charlstm.scheduler import Event, Scheduler, Stream
from charlstm.vocab import Vocab

VOCAB = Vocab.from_text(TINY_TEXT)


@pytest.fixture
def model():
    return make_model(len(VOCAB), seed=4)


class Inbox:
    """Collects events from the scheduler's thread; `wait` until every stream has finished."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def emit(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def texts(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for event in self.events:
            out[event.index] = out.get(event.index, "") + event.text
        return out

    def ended(self) -> set[int]:
        return {e.index for e in self.events if e.finish_reason or e.error}

    def wait(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ended()) < count:
            assert time.monotonic() < deadline, "the scheduler did not finish in time"
            time.sleep(0.01)


def run(model, streams: list[Stream], max_batch: int = 64) -> Scheduler:
    scheduler = Scheduler(model, VOCAB, max_batch)
    for stream in streams:
        scheduler.submit(stream)
    return scheduler


def test_a_seeded_stream_gives_the_librarys_text_alone_and_in_any_batch(model):
    prime = CharModel(model, VOCAB, {}).encode_prime("The quick ")[1]
    options = {"temperature": 0.9, "top_k": 12, "seed": 21}
    expected = CharModel(model, VOCAB, {}).generate("The quick ", 80, echo=False, **options)
    for others in (0, 3, 20):
        inbox = Inbox()
        streams = [Stream(0, prime, 80, inbox.emit, **options)]
        how = VOCAB.encode("How ")
        streams += [Stream(i + 1, how, 30 + 7 * i, inbox.emit, seed=i) for i in range(others)]
        # Three with the same options: the stream is also sampled in one batch with other rows.
        twins = [{**options, "seed": 50 + i} for i in range(3)]
        streams += [Stream(others + 1 + i, prime, 80, inbox.emit, **twin) for i, twin in enumerate(twins)]
        scheduler = run(model, streams)
        inbox.wait(len(streams))
        scheduler.stop()
        assert inbox.texts()[0] == expected, others
        assert len({inbox.texts()[others + 1 + i] for i in range(3)} | {expected}) == 4


def test_max_tokens_stop_and_finish_reasons(model):
    inbox = Inbox()
    full_stream = Stream(0, VOCAB.encode("The "), 60, inbox.emit, temperature=0)
    scheduler = run(model, [full_stream, Stream(1, VOCAB.encode("The "), 0, inbox.emit)])
    inbox.wait(2)
    full = inbox.texts()[0]
    assert len(full) == 60 and inbox.texts().get(1, "") == ""
    stop = full[30:32]
    scheduler.submit(Stream(2, VOCAB.encode("The "), 60, inbox.emit, temperature=0, stop=[stop]))
    inbox.wait(3)
    scheduler.stop()
    reasons = {e.index: e.finish_reason for e in inbox.events if e.finish_reason}
    assert reasons == {0: "length", 1: "length", 2: "stop"}
    assert inbox.texts()[2] == full[: full.index(stop)]


def test_slots_are_limited_and_a_cancelled_stream_frees_its_slot(model):
    inbox = Inbox()
    long_streams = [Stream(i, VOCAB.encode("a"), 10**7, inbox.emit) for i in range(2)]
    waiting = Stream(2, VOCAB.encode("a"), 5, inbox.emit)
    scheduler = run(model, [*long_streams, waiting], max_batch=2)
    time.sleep(0.3)
    assert len(scheduler.active) == 2 and 2 not in inbox.ended()  # the third waits for a slot
    long_streams[0].cancel()
    inbox.wait(1)
    assert inbox.ended() == {2}
    scheduler.stop()
    assert inbox.ended() == {1, 2}  # the cancelled one gets nothing more
    assert any(e.index == 1 and e.error and "shutting down" in e.error for e in inbox.events)
    assert scheduler.largest_batch == 2


def test_stopping_ends_running_and_waiting_streams_and_refuses_new_ones(model):
    inbox = Inbox()
    scheduler = run(model, [Stream(i, VOCAB.encode("a"), 10**7, inbox.emit) for i in range(3)], max_batch=1)
    time.sleep(0.2)
    scheduler.stop()
    scheduler.submit(Stream(3, VOCAB.encode("a"), 5, inbox.emit))
    errors = {e.index for e in inbox.events if e.error}
    assert errors == {0, 1, 2, 3}


def test_a_failing_stream_ends_with_an_error_and_the_scheduler_keeps_serving(model):
    inbox = Inbox()
    scheduler = run(model, [Stream(0, [len(VOCAB) + 5], 10, inbox.emit)])  # an id outside the embedding
    inbox.wait(1)
    assert "generation failed" in (inbox.events[-1].error or "")
    scheduler.submit(Stream(1, VOCAB.encode("The"), 10, inbox.emit))
    inbox.wait(2)
    scheduler.stop()
    assert len(inbox.texts()[1]) == 10


def test_a_failing_step_ends_the_batch_with_errors_and_the_next_streams_run(model, monkeypatch):
    import charlstm.scheduler as scheduler_module

    real, failures = scheduler_module.stepper_for, []

    class Broken:
        def step(self, ids, state):
            failures.append(len(ids))
            raise RuntimeError("out of memory")

    monkeypatch.setattr(scheduler_module, "stepper_for", lambda m: Broken() if not failures else real(m))
    inbox = Inbox()
    scheduler = run(model, [Stream(i, VOCAB.encode("The"), 10, inbox.emit) for i in range(2)])
    inbox.wait(2)
    assert all("out of memory" in (e.error or "") for e in inbox.events if e.error)
    scheduler.submit(Stream(2, VOCAB.encode("The"), 10, inbox.emit))
    inbox.wait(3)
    scheduler.stop()
    assert len(inbox.texts()[2]) == 10 and failures[0] >= 1


@pytest.mark.gpu
def test_on_cuda_a_seeded_stream_gives_the_librarys_text_in_a_batch():
    model = make_model(len(VOCAB), seed=4).cuda()
    options = {"temperature": 0.8, "top_p": 0.9, "seed": 3}
    expected = CharModel(model, VOCAB, {}).generate("The ", 60, echo=False, **options)
    inbox = Inbox()
    streams = [Stream(0, VOCAB.encode("The "), 60, inbox.emit, **options)]
    streams += [Stream(i, VOCAB.encode("How "), 40, inbox.emit, seed=i) for i in range(1, 5)]
    scheduler = run(model, streams)
    inbox.wait(len(streams))
    scheduler.stop()
    assert inbox.texts()[0] == expected and scheduler.largest_batch >= 2
