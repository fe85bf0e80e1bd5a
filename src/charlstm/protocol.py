"""The OpenAI completions protocol. Requests: JSON -> typed fields (pydantic, strict) -> a `Job`
with one prime per choice, or an `ApiError` saying which field was wrong and how. Responses: the
scheduler's events -> one JSON body (`collect`) or Server-Sent Events (`sse`).

Types are strict (`"5"` is not a number, `true` is not 1) so a client's mistake is reported, not
guessed at. Tokens are characters: `max_tokens` counts generated characters, `usage` too.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from .api import CharModel
from .errors import CharLSTMError
from .sample import LOGPROBS_MAX, check_sampling_options
from .scheduler import Event, Stream
from .vocab import describe_chars

MAX_STOPS = 4
SEED_LIMIT = 2**63


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The fields of POST /v1/completions this server understands; others (`user`, penalties, ...)
    are accepted and ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(strict=True, extra="ignore")
    model: str | None = None
    prompt: str | list[str] = ""
    max_tokens: int | None = 16
    temperature: float | None = 1.0
    top_p: float | None = None
    top_k: int | None = None
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    echo: bool | None = False
    logprobs: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    drop_unknown: bool | None = False


class LimitsLike(Protocol):
    max_tokens: int
    max_choices: int
    max_prompt_chars: int


@dataclass
class Job:
    """A checked request: one prompt and prime per choice (prompt-major: all `n` of prompt 0 first)."""

    request: CompletionRequest
    prompts: list[str]
    prime_ids: list[list[int]]
    max_tokens: int
    temperature: float
    top_k: int | None
    top_p: float | None
    stop: tuple[str, ...]

    def sampling(self, index: int) -> dict[str, Any]:
        """The options of choice `index`; choice i of a seeded request draws with seed + i, so the
        choices differ and each is reproducible on its own."""
        seed = self.request.seed
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": None if seed is None else (seed + index) % SEED_LIMIT,
            "stop": self.stop,
            "logprobs": self.request.logprobs,
        }

    def echo_text(self, index: int) -> str:
        return self.prompts[index] if self.request.echo else ""

    @property
    def include_usage(self) -> bool:
        options = self.request.stream_options
        return bool(options and options.include_usage)

    def usage(self, generated: int) -> dict[str, int]:
        n = self.request.n or 1
        prompt_chars = sum(len(p) for p in self.prompts[::n])
        total = prompt_chars + generated
        return {"prompt_tokens": prompt_chars, "completion_tokens": generated, "total_tokens": total}


def reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_request(body: bytes, model: CharModel, limits: LimitsLike) -> Job:
    try:
        data = json.loads(body, parse_constant=reject_constant)
    except (ValueError, RecursionError) as exc:
        message = f"the body is not valid JSON ({exc}); send a JSON object"
        raise ApiError(400, message, code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, 'the body must be a JSON object such as {"prompt": "Once"}', code="invalid_json")
    try:
        request = CompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])  # e.g. "prompt.list[str].0"
        param = str(first["loc"][0]) if first["loc"] else None
        raise ApiError(422, f"{where}: {first['msg']}", param=param, code="invalid_type") from None
    return check_request(request, model, limits)


def check_request(request: CompletionRequest, model: CharModel, limits: LimitsLike) -> Job:
    def bad(param: str, message: str, code: str | None = None) -> ApiError:
        return ApiError(400, f"{param}: {message}", param=param, code=code)

    max_tokens = 16 if request.max_tokens is None else request.max_tokens
    if not 0 <= max_tokens <= limits.max_tokens:
        raise bad("max_tokens", f"must be between 0 and {limits.max_tokens} characters, not {max_tokens}")
    n = 1 if request.n is None else request.n
    prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
    if not prompts:
        raise bad("prompt", "an empty list; give a string or a list of strings")
    if not 1 <= n or n * len(prompts) > limits.max_choices:
        raise bad("n", f"n x prompts must be between 1 and {limits.max_choices}, not {n} x {len(prompts)}")
    temperature = 1.0 if request.temperature is None else request.temperature
    top_k = request.top_k if request.top_k is not None and request.top_k > 0 else None  # 0, -1: off
    top_k = None if top_k is None else min(top_k, len(model.vocab))
    top_p = request.top_p
    for param, value in (("temperature", temperature), ("top_p", top_p)):
        if value is not None and not math.isfinite(value):
            raise bad(param, "must be a finite number")
    if temperature > 2:
        raise bad("temperature", f"must be between 0 and 2, not {temperature}")
    try:
        check_sampling_options(temperature, top_k, top_p)
    except CharLSTMError as exc:
        param = "temperature" if "temperature" in str(exc) else "top_p"
        message = str(exc).replace("--top-p", "top_p").replace("--temperature", "temperature")
        raise bad(param, message) from None
    stops = [request.stop] if isinstance(request.stop, str) else (request.stop or [])
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise bad("stop", f"up to {MAX_STOPS} non-empty strings")
    if request.logprobs is not None and not 0 <= request.logprobs <= LOGPROBS_MAX:
        raise bad("logprobs", f"must be between 0 and {LOGPROBS_MAX}, not {request.logprobs}")
    if request.seed is not None and not 0 <= request.seed < SEED_LIMIT:
        raise bad("seed", f"must be between 0 and 2**63 - 1, not {request.seed}")
    primes = [prime_ids(prompt, model, limits, bool(request.drop_unknown)) for prompt in prompts]
    return Job(
        request, [p for p in prompts for _ in range(n)], [ids for ids in primes for _ in range(n)],
        max_tokens, temperature, top_k, top_p, tuple(stops),
    )  # fmt: skip


def prime_ids(prompt: str, model: CharModel, limits: LimitsLike, drop_unknown: bool) -> list[int]:
    if len(prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"prompt: {len(prompt)} characters, over the limit of {limits.max_prompt_chars}",
                       param="prompt", code="prompt_too_long")  # fmt: skip
    unknown = model.vocab.unknown(prompt)
    if unknown and not drop_unknown:
        raise ApiError(
            400, f"prompt: characters the model never saw: {describe_chars(unknown)}; remove them or send "
            '"drop_unknown": true', param="prompt", code="unknown_characters",
        )  # fmt: skip
    _, ids = model.encode_prime(prompt, drop_unknown=True)
    if not ids:
        raise ApiError(400, "prompt: nothing is left after dropping unknown characters", param="prompt")
    return ids


# ---------------------------------------------------------------- responses


def logprobs_field(job: Job, tokens: list[Any], offset: int) -> dict[str, Any] | None:
    if job.request.logprobs is None:
        return None
    return {
        "tokens": [t.char for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [t.top_logprobs for t in tokens],
        "text_offset": list(range(offset, offset + len(tokens))),
    }


async def collect(
    job: Job, header: dict[str, Any], streams: list[Stream], events: asyncio.Queue[Event]
) -> dict[str, Any]:
    texts = [job.echo_text(i) for i in range(len(streams))]
    tokens: list[list[Any]] = [[] for _ in streams]
    reasons: list[str | None] = [None] * len(streams)
    generated = 0
    while any(r is None for r in reasons):
        event = await events.get()
        if event.error:
            raise ApiError(503, event.error, "server_error")
        texts[event.index] += event.text
        tokens[event.index] += event.tokens
        if event.finish_reason:
            reasons[event.index] = event.finish_reason
            generated += event.generated
    choices = [
        {"index": i, "text": texts[i], "finish_reason": reasons[i],
         "logprobs": logprobs_field(job, tokens[i], len(job.echo_text(i)))}
        for i in range(len(streams))
    ]  # fmt: skip
    return {**header, "choices": choices, "usage": job.usage(generated)}


def sse_line(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


async def sse(
    job: Job, header: dict[str, Any], streams: list[Stream], events: asyncio.Queue[Event]
) -> AsyncIterator[str]:
    """Server-Sent Events: the echoed prompt (if asked), then each new piece of text, then the
    usage (if asked) and `[DONE]`. A client that goes away cancels the streams at once."""
    offsets = [0] * len(streams)
    try:
        for i in range(len(streams)):
            if job.echo_text(i):
                offsets[i] = len(job.echo_text(i))
                yield sse_line({**header, "choices": [choice(i, job.echo_text(i), None, None)]})
        open_choices, generated = len(streams), 0
        while open_choices:
            # Whatever piled up while this client was written to goes out as one chunk per choice.
            batch = [await events.get()]
            while not events.empty():
                batch.append(events.get_nowait())
            failed = next((e for e in batch if e.error), None)
            if failed is not None:
                error = {"message": failed.error, "type": "server_error", "param": None, "code": None}
                yield sse_line({"error": error})
                break
            lines = []
            for event in merge_events(batch):
                logprobs = logprobs_field(job, event.tokens, offsets[event.index])
                offsets[event.index] += len(event.text)
                piece = choice(event.index, event.text, logprobs, event.finish_reason)
                lines.append(sse_line({**header, "choices": [piece]}))
                if event.finish_reason:
                    open_choices -= 1
                    generated += event.generated
            yield "".join(lines)
        else:
            if job.include_usage:
                yield sse_line({**header, "choices": [], "usage": job.usage(generated)})
        yield sse_line("[DONE]")
    finally:
        for stream in streams:
            stream.cancel()


def merge_events(events: list[Event]) -> list[Event]:
    """Consecutive pieces of the same choice as one (the last piece's finish reason and count)."""
    merged: dict[int, Event] = {}
    for event in events:
        before = merged.get(event.index)
        if before is not None:
            event = Event(event.index, before.text + event.text, before.tokens + event.tokens,
                          event.finish_reason, None, event.generated)  # fmt: skip
        merged[event.index] = event
    return list(merged.values())


def choice(index: int, text: str, logprobs: dict[str, Any] | None, reason: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
