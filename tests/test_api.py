from __future__ import annotations

import json
import math
import random

import pytest
import torch
from conftest import TINY_TEXT, TINY_TRAIN_OPTIONS, fn_hooks
from torch.nn import functional as F

import charlstm
from charlstm.api import CharModel
from charlstm.checkpoint import load_checkpoint


def korean_text(num_chars: int = 2400, seed: int = 0) -> str:
    """Made-up Korean prose: 300 Hangul syllables, so the ids need int16, with spaces and lines."""
    rng = random.Random(seed)
    syllables = [chr(0xAC00 + 37 * i) for i in range(300)]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(num_chars // 3)]
    lines = [" ".join(words[i : i + 8]) + "." for i in range(0, len(words), 8)]
    return "\n".join(lines) + "\n" + "".join(syllables) + "\n"


def test_train_writes_best_last_and_metrics(trained_run):
    assert sorted(p.name for p in trained_run.iterdir()) == ["best", "curves.png", "last", "metrics.jsonl"]
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert {"step", "epoch", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s"} <= set(
        records[0]
    )
    last = load_checkpoint(trained_run / "last")
    assert last.training["step"] == 6
    assert last.training["data"] == [str(trained_run.parent / "tiny.txt")]
    best = load_checkpoint(trained_run / "best")
    assert best.training["best_val_loss"] == pytest.approx(min(r["val_loss"] for r in records), abs=1e-4)


def test_train_is_reproducible_with_a_seed(tmp_path, tiny_text_file, trained_run):
    again = charlstm.train([tiny_text_file], tmp_path / "again", **TINY_TRAIN_OPTIONS)
    first, second = load_checkpoint(trained_run / "last"), load_checkpoint(again / "last")
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name


def test_generate_is_reproducible_and_starts_with_the_prime(trained_run):
    model = charlstm.load(trained_run)
    assert isinstance(model, CharModel)
    first = model.generate(prime="The quick", length=40, seed=3)
    assert first == model.generate(prime="The quick", length=40, seed=3)
    assert first.startswith("The quick")
    assert len(first) == len("The quick") + 40
    assert set(first) <= set(model.vocab.chars)
    assert model.generate(prime="The quick", length=40, seed=4) != first


def test_generate_several_samples_and_stream(trained_run):
    model = charlstm.load(trained_run)
    texts = model.generate(prime="Pack", length=20, num_samples=3, seed=1)
    assert isinstance(texts, list) and len(texts) == 3
    assert all(t.startswith("Pack") and len(t) == 24 for t in texts)
    streamed = "".join(model.stream(prime="Pack", length=20, seed=1))
    assert streamed == model.generate(prime="Pack", length=20, seed=1)[len("Pack") :]


def test_generate_without_a_prime_starts_after_a_line_break(trained_run):
    model = charlstm.load(trained_run)
    text = model.generate(length=15, seed=2)
    assert len(text) == 15


def test_generate_refuses_unknown_prime_characters_unless_dropped(trained_run):
    model = charlstm.load(trained_run)
    with pytest.raises(charlstm.CharLSTMError, match="'@'"):
        model.generate(prime="fox@", length=5)
    assert len(model.generate(prime="fox@", length=5, drop_unknown=True, seed=1)) >= 5


def test_evaluate_reports_loss_bpc_perplexity_and_unknown_chars(trained_run):
    model = charlstm.load(trained_run)
    result = model.evaluate("The lazy dog jumps over the quick fox.@@\n")
    assert {"loss", "bpc", "perplexity", "unknown_chars"} <= set(result)
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2))
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["unknown_chars"] == 2
    assert 0 < result["loss"] < math.log(len(model.vocab)) + 0.5


def test_evaluate_equals_one_forward_pass_over_each_stream(trained_run):
    """1,499 predictions in the run's 4 streams, each scored in windows with the state carried."""
    model = charlstm.load(trained_run)
    text = TINY_TEXT[:1500]
    ids = torch.tensor(model.vocab.encode(text))
    width = math.ceil(1499 / 4)
    total = 0.0
    with torch.no_grad():
        for start in range(0, 1499, width):
            row = ids[start : min(start + width, 1499) + 1]
            logits, _ = model.model(row[None, :-1])
            total += F.cross_entropy(logits[0], row[1:], reduction="sum").item()
    assert model.evaluate(text)["loss"] == pytest.approx(total / 1499, abs=1e-5)


def test_evaluate_needs_two_known_characters(trained_run):
    with pytest.raises(charlstm.CharLSTMError, match="at least 2"):
        charlstm.load(trained_run).evaluate("T@@")


def test_existing_run_is_not_overwritten_without_permission(tmp_path, tiny_text_file):
    out = charlstm.train([tiny_text_file], tmp_path / "run", **TINY_TRAIN_OPTIONS)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(charlstm.CharLSTMError, match="--overwrite"):
        charlstm.train([tiny_text_file], out, **TINY_TRAIN_OPTIONS)
    assert (out / "metrics.jsonl").read_text() == before
    options = {**TINY_TRAIN_OPTIONS, "max_steps": 3}
    charlstm.train([tiny_text_file], out, overwrite=True, **options)
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [3]


def test_bad_options_fail_before_anything_is_written(tmp_path, tiny_text_file):
    with pytest.raises(charlstm.CharLSTMError, match="--batch-size"):
        charlstm.train([tiny_text_file], tmp_path / "a", **{**TINY_TRAIN_OPTIONS, "batch_size": 0})
    with pytest.raises(charlstm.CharLSTMError, match="unknown training option"):
        charlstm.train([tiny_text_file], tmp_path / "b", hidden_sise=3)
    with pytest.raises(charlstm.CharLSTMError, match="no such file"):
        charlstm.train([tmp_path / "missing.txt"], tmp_path / "c", **TINY_TRAIN_OPTIONS)
    with pytest.raises(charlstm.CharLSTMError, match="too short"):
        charlstm.train([tiny_text_file], tmp_path / "d", **{**TINY_TRAIN_OPTIONS, "seq_len": 5000})
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_callbacks_see_the_start_every_step_and_every_evaluation(tmp_path, tiny_text_file):
    starts, steps, evals = [], [], []
    charlstm.train(
        [tiny_text_file],
        tmp_path / "run",
        hooks=fn_hooks(
            on_start=starts.append,
            on_step=lambda trainer, loss: steps.append(trainer.progress.step),
            on_eval=lambda trainer, record, best: evals.append(record["step"]),
        ),
        **TINY_TRAIN_OPTIONS,
    )
    assert len(starts) == 1
    assert starts[0]["vocab_size"] == len(set(TINY_TEXT))
    assert starts[0]["total_steps"] == 6
    assert steps == [1, 2, 3, 4, 5, 6]
    assert evals == [3, 6]


def test_resume_continues_exactly_where_last_stopped(tmp_path, tiny_text_file):
    options = {**TINY_TRAIN_OPTIONS, "dropout": 0.2, "num_layers": 2, "eval_interval": 2}
    straight = charlstm.train([tiny_text_file], tmp_path / "straight", **options)
    halves = charlstm.train([tiny_text_file], tmp_path / "halves", **{**options, "max_steps": 4})
    charlstm.train([], halves, resume=True, max_steps=6)
    a, b = load_checkpoint(straight / "last"), load_checkpoint(halves / "last")
    assert b.training["step"] == 6
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    steps = [
        [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (straight, halves)
    ]
    assert steps[0] == steps[1] == [2, 4, 6]


def test_save_pretrained_round_trips(tmp_path, trained_run):
    model = charlstm.load(trained_run)
    copy = charlstm.load(model.save_pretrained(tmp_path / "copy"))
    assert copy.vocab == model.vocab
    assert copy.generate(prime="The", length=30, seed=5) == model.generate(prime="The", length=30, seed=5)


def test_info_describes_the_checkpoint(trained_run):
    info = charlstm.load(trained_run).info()
    assert info["path"] == str(trained_run / "best")
    assert info["model"]["hidden_size"] == 32
    assert info["vocab"] == "".join(sorted(set(TINY_TEXT)))
    assert info["parameters"] > 0
    json.dumps(info)


def test_korean_text_end_to_end(tmp_path):
    text = korean_text()
    path = tmp_path / "korean.txt"
    path.write_text(text, encoding="utf-8")
    out = charlstm.train([path], tmp_path / "run", **TINY_TRAIN_OPTIONS)
    model = charlstm.load(out)
    assert len(model.vocab) > 256
    assert model.vocab.chars == tuple(sorted(set(text)))
    prime = text[:5]
    sample = model.generate(prime=prime, length=50, seed=1)
    assert sample.startswith(prime)
    assert len(sample) == 55
    assert set(sample) <= set(model.vocab.chars)
    result = model.evaluate(text[:300])
    assert result["unknown_chars"] == 0
    assert math.isfinite(result["loss"])


@pytest.mark.gpu
def test_train_on_cuda_saves_a_checkpoint_that_loads_on_cpu(tmp_path, tiny_text_file):
    out = charlstm.train([tiny_text_file], tmp_path / "run", **{**TINY_TRAIN_OPTIONS, "device": "cuda"})
    on_cpu = charlstm.load(out)
    assert all(t.device.type == "cpu" for t in on_cpu.model.state_dict().values())
    on_gpu = charlstm.load(out, device="cuda")
    assert on_gpu.device.type == "cuda"
    text = "The quick brown fox"
    assert on_gpu.evaluate(text)["loss"] == pytest.approx(on_cpu.evaluate(text)["loss"], abs=1e-4)
    sample = on_gpu.generate(prime="The", length=30, seed=1)
    assert sample == on_gpu.generate(prime="The", length=30, seed=1)
    assert sample.startswith("The") and set(sample) <= set(on_gpu.vocab.chars)


def test_generate_and_stream_share_stop_echo_and_logprobs(trained_run):
    model = charlstm.load(trained_run)
    full = model.generate(prime="Pack", length=60, seed=5, echo=False)
    stop = full[20:22]
    assert model.generate(prime="Pack", length=60, seed=5, stop=stop) == "Pack" + full[: full.index(stop)]
    assert "".join(model.stream(prime="Pack", length=60, seed=5, stop=[stop])) == full[: full.index(stop)]
    assert "".join(model.stream(prime="Pack", length=60, seed=5, echo=True)) == "Pack" + full
    result = model.generate(prime="Pack", length=60, seed=5, echo=False, logprobs=3)
    assert result.text == full and result.finish_reason == "length"
    assert [t.char for t in result.tokens] == list(full)
    streamed = list(model.stream(prime="Pack", length=60, seed=5, logprobs=3))
    assert streamed == result.tokens


def test_a_prime_is_read_as_the_start_of_a_paragraph(trained_run):
    """The model has rarely seen the empty state (state is carried in training), so a prime is fed
    after a line break; one that starts with a line break is fed as it is."""
    model = charlstm.load(trained_run)
    assert model.encode_prime("The") == ("The", model.vocab.encode("\nThe"))
    assert model.encode_prime("\nThe") == ("\nThe", model.vocab.encode("\nThe"))
    assert model.encode_prime(None) == ("\n", model.vocab.encode("\n"))
    after_break = model.generate("\nThe", length=40, seed=5)
    assert model.generate("The", length=40, seed=5) == after_break[1:]
