"""The HTTP server in-process (FastAPI's TestClient and httpx over ASGI): every request field, seeded
determinism with and without concurrent requests, stop strings across chunks, errors, a fuzz run.
Then real servers: `charlstm serve` in a process driven by the `openai` package (disconnects,
SIGTERM and Ctrl-C), and the playground in headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import TINY_TEXT, make_model

from charlstm.api import CharModel, load
from charlstm.checkpoint import save_checkpoint
from charlstm.cli import main
from charlstm.vocab import Vocab

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
from fastapi.testclient import TestClient

from charlstm.server import Limits, create_app

VOCAB = Vocab.from_text(TINY_TEXT)
PROMPT = "The quick "


@pytest.fixture(scope="module")
def char_model() -> CharModel:
    return CharModel(make_model(len(VOCAB), seed=11), VOCAB, {"step": 0, "note": "random weights"})


@pytest.fixture(scope="module")
def client(char_model):
    with TestClient(create_app(char_model, limits=Limits(max_prompt_chars=500))) as test_client:
        yield test_client


def complete(client, **fields) -> dict:
    response = client.post("/v1/completions", json={"prompt": PROMPT, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def events(response: httpx.Response) -> list[dict | str]:
    """The `data:` events of a Server-Sent Events body, JSON-decoded except the final [DONE]."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks), response.text[:500]
    return [b[6:] if b[6:] == "[DONE]" else json.loads(b[6:]) for b in blocks]


def streamed_texts(client, **fields) -> tuple[dict[int, str], dict[int, str], list[dict | str]]:
    response = client.post("/v1/completions", json={"prompt": PROMPT, "stream": True, **fields})
    assert response.status_code == 200, response.text
    received = events(response)
    assert received[-1] == "[DONE]"
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for chunk in received[:-1]:
        assert isinstance(chunk, dict) and chunk["object"] == "text_completion"
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
            if choice["finish_reason"]:
                assert choice["index"] not in reasons, "a choice finished twice"
                reasons[choice["index"]] = choice["finish_reason"]
    return texts, reasons, received


# ---------------------------------------------------------------- fields


def test_a_completion_has_the_openai_shape_and_counts_characters(client):
    body = complete(client, max_tokens=25, seed=1)
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert isinstance(body["created"], int) and body["model"] == "charlstm"
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert len(choice["text"]) == 25 and set(choice["text"]) <= set(VOCAB.chars)
    assert body["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 25, "total_tokens": 35}
    assert complete(client)["usage"]["completion_tokens"] == 16  # OpenAI's default max_tokens


@pytest.mark.parametrize(
    "options",
    [{"temperature": 1.0}, {"temperature": 0.6, "top_k": 5}, {"temperature": 1.3, "top_p": 0.8},
     {"temperature": 0}],
)
def test_seeded_text_equals_the_library_with_the_same_options(client, char_model, options):
    body = complete(client, max_tokens=60, seed=5, **options)
    expected = char_model.generate(PROMPT, 60, seed=5, echo=False, **options)
    assert body["choices"][0]["text"] == expected
    again = complete(client, max_tokens=60, seed=5, **options)
    assert again["choices"] == body["choices"]


def test_top_k_off_values_and_above_the_vocabulary_mean_no_filter(client):
    plain = complete(client, max_tokens=40, seed=2)["choices"][0]["text"]
    for top_k in (0, -1, 10_000):
        assert complete(client, max_tokens=40, seed=2, top_k=top_k)["choices"][0]["text"] == plain


def test_batching_never_changes_a_seeded_requests_text(char_model):
    """The same seeded request alone, then among a crowd of others (other seeds, options, lengths)
    submitted at once: the scheduler must really batch them, and the text must not change."""
    app = create_app(char_model)
    request = {"prompt": PROMPT, "max_tokens": 120, "seed": 9, "temperature": 0.9, "top_p": 0.95}

    async def run(bodies: list[dict]) -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            responses = await asyncio.gather(*(http.post("/v1/completions", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        return [
            "".join(c["choices"][0]["text"] for c in events(r)[:-1]) if b.get("stream")
            else r.json()["choices"][0]["text"]
            for b, r in zip(bodies, responses, strict=True)
        ]  # fmt: skip

    (alone,) = asyncio.run(run([request]))
    # Half share the request's options, so it is also sampled in one batch with other rows.
    crowd = [{"prompt": "How ", "max_tokens": 50 + 17 * i, "seed": i, "top_k": 1 + i % 4} for i in range(5)]
    crowd += [{**request, "prompt": "How ", "max_tokens": 40 + 23 * i, "seed": 100 + i} for i in range(6)]
    texts = asyncio.run(run([*crowd[:5], request, *crowd[5:], {**request, "stream": True}]))
    assert app.state.scheduler.largest_batch >= 6
    assert texts[5] == alone and texts[-1] == alone
    assert len(set(texts)) > 5  # the crowd really was different
    app.state.scheduler.stop()


def test_streaming_sends_only_new_text_then_done(client):
    body = complete(client, max_tokens=30, seed=3)
    texts, reasons, received = streamed_texts(client, max_tokens=30, seed=3)
    assert texts == {0: body["choices"][0]["text"]} and reasons == {0: "length"}
    # Pieces that piled up while the client was written to are merged, never repeated.
    assert sum(len(c["choices"][0]["text"]) for c in received[:-1]) == 30
    assert all(c["choices"][0]["finish_reason"] is None for c in received[:-2])


def test_stream_usage_chunk_when_asked(client):
    _, _, received = streamed_texts(client, max_tokens=7, n=2, seed=1, stream_options={"include_usage": True})
    usage_chunk = received[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": 14, "total_tokens": 24}


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_text_and_are_never_shown(client, stream):
    full = complete(client, max_tokens=200, seed=4)["choices"][0]["text"]
    stop = full[40:43]  # three characters, so in a stream it spans three chunks
    cut = full[: full.index(stop)]
    fields = {"max_tokens": 200, "seed": 4, "stop": [stop, "\x00never"]}
    if stream:
        texts, reasons, _ = streamed_texts(client, **fields)
        assert texts == {0: cut} and reasons == {0: "stop"}
    else:
        choice = complete(client, **fields)["choices"][0]
        assert choice["text"] == cut and choice["finish_reason"] == "stop"
    assert complete(client, max_tokens=200, seed=4, stop=stop)["choices"][0]["text"] == cut


def test_a_stop_that_never_comes_leaves_the_text_whole(client):
    full = complete(client, max_tokens=80, seed=6)["choices"][0]["text"]
    stop = full[-1] + "\x00"  # the text's last character starts a stop that is never finished
    choice = complete(client, max_tokens=80, seed=6, stop=stop)["choices"][0]
    assert choice["text"] == full and choice["finish_reason"] == "length"


def test_n_and_prompt_lists_give_indexed_choices_each_reproducible(client):
    body = complete(client, max_tokens=30, seed=10, n=3)
    texts = [c["text"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2] and len(set(texts)) == 3
    for i, text in enumerate(texts):
        assert complete(client, max_tokens=30, seed=10 + i)["choices"][0]["text"] == text
    fields = {"prompt": ["How ", PROMPT], "n": 2, "max_tokens": 30, "seed": 10}
    listed = client.post("/v1/completions", json=fields)
    choices = listed.json()["choices"]
    assert choices[2]["text"] == texts[2]  # prompt-major: prompt 1's first choice is choice 2, seed 12
    assert complete(client, prompt="How ", max_tokens=30, seed=10)["choices"][0]["text"] == choices[0]["text"]
    assert listed.json()["usage"]["prompt_tokens"] == len("How ") + len(PROMPT)
    texts_streamed, reasons, _ = streamed_texts(client, max_tokens=30, seed=10, n=3)
    assert texts_streamed == dict(enumerate(texts)) and set(reasons) == {0, 1, 2}


def test_echo_puts_the_prompt_first(client):
    plain = complete(client, max_tokens=20, seed=8)["choices"][0]["text"]
    assert complete(client, max_tokens=20, seed=8, echo=True)["choices"][0]["text"] == PROMPT + plain
    texts, _, received = streamed_texts(client, max_tokens=20, seed=8, echo=True)
    assert received[0]["choices"][0]["text"] == PROMPT and texts == {0: PROMPT + plain}


def test_logprobs_are_the_models_distribution(client, char_model):
    choice = complete(client, max_tokens=12, seed=12, logprobs=5, echo=True)["choices"][0]
    logprobs = choice["logprobs"]
    generated = choice["text"][len(PROMPT) :]
    assert logprobs["tokens"] == list(generated)
    assert logprobs["text_offset"] == list(range(len(PROMPT), len(PROMPT) + 12))
    _, context = char_model.encode_prime(PROMPT)  # a line break, then the prompt
    with torch.no_grad():
        steps = zip(generated, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True)
        for char, logprob, top in steps:
            expected = torch.log_softmax(char_model.model(torch.tensor([context]))[0][0, -1], dim=-1)
            best = expected.topk(5)
            assert list(top) == [VOCAB.chars[i] for i in best.indices.tolist()]
            assert list(top.values()) == pytest.approx(best.values.tolist(), abs=1e-4)
            assert logprob == pytest.approx(expected[VOCAB.index[char]].item(), abs=1e-4)
            assert 0 < sum(math.exp(v) for v in top.values()) <= 1 + 1e-6
            context.append(VOCAB.index[char])
    streamed, _, received = streamed_texts(client, max_tokens=12, seed=12, logprobs=5)
    tokens = [t for c in received[:-1] for t in c["choices"][0]["logprobs"]["tokens"]]
    assert "".join(tokens) == streamed[0] == generated


def test_models_and_health(client, char_model):
    (card,) = client.get("/v1/models").json()["data"]
    assert card["id"] == "charlstm" and card["object"] == "model"
    assert card["training"]["note"] == "random weights" and card["vocab"] == "".join(VOCAB.chars)
    assert card["parameters"] == char_model.model.num_parameters() and "path" not in card
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["active_streams"] >= 0


def test_the_playground_is_one_self_contained_page(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "/v1/completions" in page and "logprobs: 5" in page
    assert "http://" not in page and "https://" not in page  # no CDN, nothing fetched from elsewhere
    for control in ("prime", "temperature", "top_k", "top_p", "length"):
        assert f'<label for="{control}"' in page


# ---------------------------------------------------------------- errors


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("fields", "status", "param"),
    [
        ({"prompt": 5}, 422, "prompt"),
        ({"prompt": ["ok", 3]}, 422, "prompt"),
        ({"max_tokens": "5"}, 422, "max_tokens"),
        ({"max_tokens": 2.5}, 422, "max_tokens"),
        ({"echo": 1}, 422, "echo"),
        ({"stream": "yes"}, 422, "stream"),
        ({"temperature": "hot"}, 422, "temperature"),
        ({"stream_options": {"include_usage": "no"}}, 422, "stream_options"),
        ({"max_tokens": -1}, 400, "max_tokens"),
        ({"max_tokens": 10**12}, 400, "max_tokens"),
        ({"max_tokens": 4097}, 400, "max_tokens"),
        ({"n": 0}, 400, "n"),
        ({"n": 17}, 400, "n"),
        ({"prompt": ["a"] * 9, "n": 2}, 400, "n"),
        ({"prompt": []}, 400, "prompt"),
        ({"prompt": "a" * 501}, 400, "prompt"),
        ({"prompt": "fox@#"}, 400, "prompt"),
        ({"temperature": -0.5}, 400, "temperature"),
        ({"temperature": 2.5}, 400, "temperature"),
        ({"top_p": 0}, 400, "top_p"),
        ({"top_p": 1.5}, 400, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"stop": ""}, 400, "stop"),
        ({"logprobs": 6}, 400, "logprobs"),
        ({"logprobs": -1}, 400, "logprobs"),
        ({"seed": -1}, 400, "seed"),
        ({"seed": 2**70}, 400, "seed"),
    ],
)
def test_bad_fields_get_an_openai_error_naming_the_field(client, fields, status, param):
    error = error_of(client.post("/v1/completions", json={"prompt": PROMPT, **fields}), status)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_characters_are_named_unless_dropped(client):
    error = error_of(client.post("/v1/completions", json={"prompt": "fox@#"}), 400)
    assert "'#', '@'" in error["message"] and "drop_unknown" in error["message"]
    body = complete(client, prompt="fox@#", drop_unknown=True, echo=True, max_tokens=5)
    assert body["choices"][0]["text"].startswith("fox@#")


@pytest.mark.parametrize(
    "raw", [b"{", b"", b"[1, 2]", b'"text"', b'{"prompt": NaN}', b"\xff\xfe", b"[" * 100_000]
)
def test_malformed_bodies_are_400(client, raw):
    error_of(client.post("/v1/completions", content=raw), 400)


def test_an_oversized_body_is_413(client):
    response = client.post("/v1/completions", content=json.dumps({"prompt": "a" * 1_100_000}))
    assert error_of(response, 413)["code"] == "request_too_large"


def test_unknown_routes_and_methods(client):
    assert error_of(client.get("/v2/nothing"), 404)["type"] == "not_found_error"
    error_of(client.get("/v1/completions"), 405)


def test_a_wrong_or_missing_api_key_is_401(char_model):
    with TestClient(create_app(char_model, api_key="sesame")) as keyed:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            error = error_of(keyed.post("/v1/completions", json={"prompt": "a"}, headers=headers), 401)
            assert error["code"] == "invalid_api_key"
            error_of(keyed.get("/v1/models", headers=headers), 401)
        good = {"Authorization": "Bearer sesame"}
        assert keyed.post("/v1/completions", json={"prompt": "a"}, headers=good).status_code == 200
        assert keyed.get("/health").status_code == 200


def random_value(rng: random.Random, depth: int = 0):
    pool = [None, True, False, 0, 1, -1, 3, 17, 2**31, -(2**63), 10**30, 0.5, -2.5, 1e308, "", "x", "The",
            "fox@", "\x00", "é中", [], {}, ["a", "b"], [1, 2], {"include_usage": True}]  # fmt: skip
    if depth < 2 and rng.random() < 0.1:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice(pool)


def random_request(rng: random.Random) -> tuple[str, str, bytes]:
    fields = ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "echo",
              "logprobs", "stream", "stream_options", "drop_unknown", "bogus"]  # fmt: skip
    body = {name: random_value(rng) for name in rng.sample(fields, rng.randint(0, 6))}
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 0:
        body["max_tokens"] = min(body["max_tokens"], 20)  # bounded: the fuzz is about parsing
    raw = json.dumps(body).encode()
    roll = rng.random()
    if roll < 0.1:
        raw = raw[: rng.randint(0, len(raw))]  # truncated
    elif roll < 0.15:
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
    method, path = "POST", "/v1/completions"
    if rng.random() < 0.1:
        method, path = rng.choice([("GET", "/v1/completions"), ("PUT", "/"), ("POST", "/v1/chat"),
                                   ("DELETE", "/v1/models"), ("GET", "/%ff"),
                                   ("POST", "/health")])  # fmt: skip
    return method, path, raw


@pytest.mark.slow
def test_fuzzed_requests_get_2xx_or_4xx_and_the_server_keeps_serving(client):
    rng = random.Random(2024)
    statuses: dict[int, int] = {}
    for _ in range(300):
        method, path, raw = random_request(rng)
        response = client.request(method, path, content=raw, headers={"Content-Type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert 200 <= response.status_code < 500, (method, path, raw, response.text)
        if response.status_code >= 400:
            error_of(response, response.status_code)
    assert statuses.get(200, 0) > 10 and sum(v for k, v in statuses.items() if k >= 400) > 100, statuses
    assert complete(client, max_tokens=10, seed=1)["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------- the CLI without the extra


def test_serve_without_the_extra_is_one_line_naming_it(monkeypatch, tiny_checkpoint, capsys):
    monkeypatch.setitem(sys.modules, "charlstm.server", None)
    assert main(["serve", str(tiny_checkpoint)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'charlstm[serve]'" in err


@pytest.mark.slow
def test_the_core_does_not_import_the_server_stack():
    code = "import sys, charlstm.cli; print(sorted({'fastapi', 'uvicorn'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


# ---------------------------------------------------------------- real servers: a process, a thread


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_health(url: str, proc: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"the server exited with {proc.returncode}: {err}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    pytest.fail(f"no server answered at {url} within {timeout} s")


def start_cli_server(checkpoint, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "charlstm", "--threads", "1", "serve", str(checkpoint), "--port", str(port)]
    cmd += flags
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    wait_for_health(url, proc)
    return proc, url


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=30)


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    """`charlstm serve` in its own process, with an API key and room for very long streams."""
    path = tmp_path_factory.mktemp("served") / "ckpt"
    save_checkpoint(path, make_model(len(VOCAB), seed=11), VOCAB, {"step": 0})
    proc, url = start_cli_server(path, "--api-key", "k3y", "--max-tokens-cap", "1000000")
    yield url
    stop_process(proc)


@pytest.mark.slow
def test_the_openai_package_talks_to_charlstm_serve(cli_server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=cli_server + "/v1", api_key="k3y", max_retries=0)
    (card,) = client.models.list().data
    result = client.completions.create(model=card.id, prompt=PROMPT, max_tokens=30, seed=3, temperature=0.8)
    text = result.choices[0].text
    assert len(text) == 30 and result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 30 and result.usage.prompt_tokens == len(PROMPT)
    stream = client.completions.create(
        model=card.id, prompt=PROMPT, max_tokens=30, seed=3, temperature=0.8, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == text
    filtered = client.completions.create(model=card.id, prompt=PROMPT, max_tokens=30, extra_body={"top_k": 1})
    greedy = client.completions.create(model=card.id, prompt=PROMPT, max_tokens=30, temperature=0)
    assert filtered.choices[0].text == greedy.choices[0].text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=cli_server + "/v1", api_key="nope", max_retries=0).completions.create(
            model=card.id, prompt=PROMPT, max_tokens=3
        )
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=card.id, prompt=PROMPT, max_tokens=-3)


@pytest.mark.slow
def test_a_client_that_disconnects_frees_its_slot_at_once(cli_server):
    headers = {"Authorization": "Bearer k3y"}
    body = {"prompt": PROMPT, "max_tokens": 1_000_000, "stream": True}  # minutes of text, if nobody left
    url = cli_server + "/v1/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
        lines = response.iter_lines()
        received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in received)
        assert httpx.get(cli_server + "/health").json()["active_streams"] == 1
    deadline = time.monotonic() + 10
    while httpx.get(cli_server + "/health").json()["active_streams"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert httpx.get(cli_server + "/health").json()["active_streams"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_end_streams_cleanly_and_exit_0(tiny_checkpoint, sig):
    proc, url = start_cli_server(tiny_checkpoint, "--max-tokens-cap", "1000000")
    try:
        body = {"prompt": PROMPT, "max_tokens": 1_000_000, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            assert next(lines).startswith("data: {")
            proc.send_signal(sig)
            tail = list(lines)  # the server must end the stream by itself
        data = [line for line in tail if line]
        assert data[-1] == "data: [DONE]" and "shutting down" in data[-2]
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        stop_process(proc)


@pytest.fixture
def threaded_server(trained_run):
    """The app under uvicorn in a thread of this process (quick to start; the browser test's server)."""
    uvicorn = pytest.importorskip("uvicorn")
    # CHARLSTM_PLAYGROUND_CHECKPOINT: a better-trained model for the docs' screenshot.
    app = create_app(load(os.environ.get("CHARLSTM_PLAYGROUND_CHECKPOINT") or trained_run))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    wait_for_health(url, timeout=30)
    yield url
    server.should_exit = True
    thread.join(30)


@pytest.mark.slow
def test_the_playground_streams_text_and_shows_top5_probabilities(threaded_server, browser_page, tmp_path):
    page, errors = browser_page.page, browser_page.errors
    page.goto(threaded_server + "/")
    page.fill("#prime", "The quick ")
    page.eval_on_selector("#length", "el => { el.value = '2000'; el.dispatchEvent(new Event('input')); }")
    page.eval_on_selector("#temperature", "el => { el.value = '0.5'; el.dispatchEvent(new Event('input')); }")
    assert page.text_content("#length-value") == "2000"
    page.click("#generate")
    # Streaming: characters are on the page while the request is still running.
    page.wait_for_function(
        "document.querySelectorAll('#text .gen').length > 0 && document.getElementById('generate').disabled",
        timeout=30_000,
    )
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=60_000)
    assert page.locator("#text .gen").count() == 2000
    assert page.text_content("#text").startswith("The quick ")
    page.hover("#text .gen >> nth=3")
    rows = page.locator("#probs tr")
    assert rows.count() == 5
    shares = [float(rows.nth(i).locator("td").nth(1).text_content().rstrip("%")) for i in range(5)]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
    page.focus("#text .gen >> nth=0")  # the keyboard reaches the same information
    assert "character 1 " in page.text_content("#probs")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert "character 3 " in page.text_content("#probs")
    assert page.locator("#text .gen[tabindex='0']").count() == 1  # one tab stop, not thousands
    page.eval_on_selector("#length", "el => { el.value = '300'; el.dispatchEvent(new Event('input')); }")
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=60_000)
    # A generated line break is a zero-width span that cannot be hovered: take the first printable one.
    printable = page.evaluate(
        "() => [...document.querySelectorAll('#text .gen')]"
        ".findIndex((el, i) => i >= 40 && el.textContent.trim())"
    )
    assert printable >= 40
    page.hover(f"#text .gen >> nth={printable}")
    assert errors == []
    docs = Path(__file__).resolve().parents[1] / "docs" / "playground.png"
    shot = docs if os.environ.get("CHARLSTM_UPDATE_DOCS") == "1" else tmp_path / "playground.png"
    page.screenshot(path=str(shot))


@pytest.mark.parametrize(
    ("flags", "wrong"), [(["--max-batch", "0"], "--max-batch"), (["--port", "99999"], "--port")]
)
def test_bad_serve_options_are_one_line(tiny_checkpoint, capsys, flags, wrong):
    assert main(["serve", str(tiny_checkpoint), *flags]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("charlstm: error: ") and wrong in err


def test_a_port_in_use_is_one_line(tiny_checkpoint, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", str(tiny_checkpoint), "--port", str(taken.getsockname()[1])]) == 1
    assert "choose another --host or --port" in capsys.readouterr().err


def test_charlstm_serve_without_the_extra_says_what_to_install(monkeypatch, tiny_checkpoint):
    import charlstm

    monkeypatch.setitem(sys.modules, "charlstm.server", None)
    with pytest.raises(charlstm.CharLSTMError, match=r"pip install 'charlstm\[serve\]'"):
        charlstm.serve(tiny_checkpoint)
