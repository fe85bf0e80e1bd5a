"""Checking a completions request without a server: defaults, strict types, ranges, one prime per
choice, each choice's seed, usage in characters. (HTTP status handling is in test_server.py.)"""

from __future__ import annotations

import json

import pytest
from conftest import TINY_TEXT, make_model

pytest.importorskip("pydantic", reason="the [serve] extra is not installed")

from charlstm.api import CharModel
from charlstm.protocol import ApiError, parse_request
from charlstm.vocab import Vocab

VOCAB = Vocab.from_text(TINY_TEXT)


class Limits:
    max_tokens, max_choices, max_prompt_chars = 100, 6, 50


@pytest.fixture(scope="module")
def model() -> CharModel:
    return CharModel(make_model(len(VOCAB)), VOCAB, {})


def parse(model, **fields):
    return parse_request(json.dumps(fields).encode(), model, Limits())


def test_defaults_follow_openai(model):
    job = parse(model, prompt="The")
    assert job.max_tokens == 16 and job.temperature == 1.0 and job.top_k is None and job.top_p is None
    assert job.stop == () and job.prompts == ["The"] and job.prime_ids == [model.encode_prime("The")[1]]
    assert not job.request.stream and not job.request.echo and job.request.logprobs is None
    assert job.sampling(0)["seed"] is None and not job.include_usage


def test_an_empty_prompt_starts_after_a_line_break_and_echoes_nothing(model):
    job = parse(model, prompt="", echo=True)
    assert job.prime_ids == [VOCAB.encode("\n")] and job.echo_text(0) == ""


def test_choices_are_prompt_major_with_consecutive_seeds(model):
    job = parse(model, prompt=["How", "The"], n=3, seed=7, echo=True, stop="x")
    assert job.prompts == ["How"] * 3 + ["The"] * 3
    assert [job.sampling(i)["seed"] for i in range(6)] == [7, 8, 9, 10, 11, 12]
    assert job.echo_text(4) == "The" and job.stop == ("x",)
    assert job.usage(60) == {"prompt_tokens": 6, "completion_tokens": 60, "total_tokens": 66}


def test_top_k_off_and_clamped(model):
    assert parse(model, top_k=0).top_k is None and parse(model, top_k=-1).top_k is None
    assert parse(model, top_k=10_000).top_k == len(VOCAB)


@pytest.mark.parametrize(
    ("fields", "param", "status"),
    [
        ({"max_tokens": True}, "max_tokens", 422),  # a bool is not an int here
        ({"n": "2"}, "n", 422),
        ({"stop": [1]}, "stop", 422),
        ({"max_tokens": 101}, "max_tokens", 400),
        ({"prompt": ["a", "b", "c"], "n": 3}, "n", 400),
        ({"prompt": "x" * 51}, "prompt", 400),
    ],
)
def test_wrong_fields_name_the_parameter(model, fields, param, status):
    with pytest.raises(ApiError) as caught:
        parse(model, **{"prompt": "The", **fields})
    assert caught.value.param == param and caught.value.status == status


def test_unknown_fields_are_ignored_and_nulls_mean_defaults(model):
    job = parse(model, prompt="The", user="someone", presence_penalty=0.5, max_tokens=None, n=None)
    assert job.max_tokens == 16 and len(job.prime_ids) == 1
