from __future__ import annotations

import math

import pytest
import torch
from conftest import make_model

from charlstm import sample as sample_module
from charlstm.errors import CharLSTMError
from charlstm.sample import (
    check_sampling_options,
    default_prime,
    generate_texts,
    sample_next,
    stream_ids,
    stream_text,
)
from charlstm.vocab import Vocab

VOCAB = Vocab.from_text("abcdefghijklmnopqrst \n")


@pytest.fixture
def model():
    return make_model(len(VOCAB), "lstm", seed=5)


def prime_ids() -> list[int]:
    return VOCAB.encode("the cat sat on a mat")


def sampled_set(logits: torch.Tensor, draws: int = 4000, **options) -> set[int]:
    generator = torch.Generator().manual_seed(0)
    ids = sample_next(logits.expand(draws, -1), generator=generator, **options)
    return set(ids.tolist())


# ---------------------------------------------------------------- sample_next


def test_temperature_zero_is_argmax():
    logits = torch.randn(50, 17, generator=torch.Generator().manual_seed(1))
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(dim=-1))


def test_top_k_one_is_argmax_at_any_temperature():
    logits = torch.randn(50, 17, generator=torch.Generator().manual_seed(2))
    for temperature in (0.5, 1.0, 5.0):
        chosen = sample_next(
            logits, temperature=temperature, top_k=1, generator=torch.Generator().manual_seed(3)
        )
        assert torch.equal(chosen, logits.argmax(dim=-1))


def test_top_k_keeps_only_the_k_likeliest():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.5, 0.0, 2.9]])
    assert sampled_set(logits, top_k=3, temperature=3.0) == {1, 3, 5}
    assert sampled_set(logits, temperature=3.0) == set(range(6))  # and without it, everything is possible


def test_top_k_above_the_vocabulary_keeps_everything():
    logits = torch.tensor([[0.0, 0.1, 0.2]])
    assert sampled_set(logits, top_k=10) == {0, 1, 2}


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        (0.4, {1}),  # 0.5 alone reaches 0.4
        (0.75, {1, 3}),  # 0.5 + 0.3
        (0.85, {1, 3, 0}),  # 0.5 + 0.3 + 0.15
        (0.99, {1, 3, 0, 2}),
        (1.0, {1, 3, 0, 2}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    # Probabilities 0.15, 0.5, 0.05, 0.3 in shuffled order, so the sort must be undone correctly.
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    assert sampled_set(logits, top_p=top_p) == kept


def test_top_p_renormalises_the_kept_probabilities():
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    ids = sample_next(logits.expand(20000, -1), top_p=0.75, generator=torch.Generator().manual_seed(0))
    share = (ids == 1).float().mean().item()
    assert share == pytest.approx(0.5 / 0.8, abs=0.02)


def test_top_p_applies_per_row():
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3], [0.3, 0.05, 0.5, 0.15]]).log().repeat(2000, 1)
    ids = sample_next(logits, top_p=0.75, generator=torch.Generator().manual_seed(0)).view(2000, 2)
    assert set(ids[:, 0].tolist()) == {1, 3}
    assert set(ids[:, 1].tolist()) == {2, 0}


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([[1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    cold = sample_next(logits.expand(5000, -1), temperature=0.25, generator=generator).float().mean()
    hot = sample_next(logits.expand(5000, -1), temperature=4.0, generator=generator).float().mean()
    # P(id 1) is 1/(1+e^4) cold, 1/(1+e^0.25) hot
    assert cold.item() == pytest.approx(1 / (1 + math.exp(4)), abs=0.01)
    assert hot.item() == pytest.approx(1 / (1 + math.exp(0.25)), abs=0.03)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [
        (-0.1, None, None),
        (math.nan, None, None),
        (math.inf, None, None),
        (1.0, 0, None),
        (1.0, -2, None),
        (1.0, None, 0.0),
        (1.0, None, 1.5),
        (1.0, None, -0.5),
    ],
)
def test_bad_options_are_refused(model, temperature, top_k, top_p):
    with pytest.raises(CharLSTMError):
        check_sampling_options(temperature, top_k, top_p)
    with pytest.raises(CharLSTMError):
        generate_texts(model, VOCAB, prime_ids(), 5, temperature=temperature, top_k=top_k, top_p=top_p)


def test_bad_options_are_refused_when_streaming_starts_not_at_the_first_character(model):
    """A caller that prints the prime before the first character must learn of the error first."""
    with pytest.raises(CharLSTMError):
        stream_ids(model, prime_ids(), 5, top_k=0)
    with pytest.raises(CharLSTMError):
        stream_text(model, VOCAB, prime_ids(), 5, temperature=-1.0)
    with pytest.raises(CharLSTMError):
        stream_text(model, VOCAB, [], 5)


def test_bad_length_num_samples_and_empty_prime_are_refused(model):
    with pytest.raises(CharLSTMError):
        generate_texts(model, VOCAB, prime_ids(), -1)
    with pytest.raises(CharLSTMError):
        generate_texts(model, VOCAB, prime_ids(), 5, num_samples=0)
    with pytest.raises(CharLSTMError, match="prime is empty"):
        generate_texts(model, VOCAB, [], 5)


# ---------------------------------------------------------------- generation from a model


def test_top_k_one_equals_greedy_for_a_random_model(model):
    greedy = generate_texts(model, VOCAB, prime_ids(), 60, temperature=0)
    top1 = generate_texts(model, VOCAB, prime_ids(), 60, temperature=1.3, top_k=1, seed=9)
    assert top1 == greedy


def test_the_same_seed_gives_the_same_sample(model):
    first = generate_texts(model, VOCAB, prime_ids(), 100, seed=42)
    again = generate_texts(model, VOCAB, prime_ids(), 100, seed=42)
    other = generate_texts(model, VOCAB, prime_ids(), 100, seed=43)
    assert first == again
    assert first != other
    assert len(first[0]) == 100


def test_the_seed_does_not_depend_on_the_global_generator(model):
    torch.manual_seed(1)
    first = generate_texts(model, VOCAB, prime_ids(), 50, seed=7)
    torch.manual_seed(2)
    assert generate_texts(model, VOCAB, prime_ids(), 50, seed=7) == first


def test_stateful_generation_equals_recomputing_from_the_full_context(model, monkeypatch):
    """The logits each character is sampled from equal those of one forward pass over the
    prime and everything generated before it."""
    seen: list[torch.Tensor] = []

    def recording_sample_next(logits, *args, **kwargs):
        seen.append(logits.detach().clone())
        return sample_next(logits, *args, **kwargs)

    monkeypatch.setattr(sample_module, "sample_next", recording_sample_next)
    prime = prime_ids()
    steps = [int(ids[0]) for ids in stream_ids(model, prime, 40, seed=11)]
    assert len(seen) == 40
    with torch.no_grad():
        full, _ = model(torch.tensor([prime + steps]))
    step_logits = torch.cat(seen, dim=0)  # (40, V): after the prime, then after each new character
    torch.testing.assert_close(step_logits, full[0, len(prime) - 1 : -1], atol=1e-5, rtol=0)


def test_greedy_generation_equals_argmax_of_the_full_context(model):
    prime = prime_ids()
    text = generate_texts(model, VOCAB, prime, 30, temperature=0)[0]
    context = list(prime)
    with torch.no_grad():
        for _ in range(30):
            logits, _ = model(torch.tensor([context]))
            context.append(int(logits[0, -1].argmax()))
    assert VOCAB.encode(text) == context[len(prime) :]


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_greedy_generation_equals_the_full_context_for_other_cells(cell):
    model = make_model(len(VOCAB), cell, seed=3)
    prime = prime_ids()
    ids = VOCAB.encode(generate_texts(model, VOCAB, prime, 20, temperature=0)[0])
    with torch.no_grad():
        full, _ = model(torch.tensor([prime + ids]))
    assert full[0, len(prime) - 1 : -1].argmax(dim=-1).tolist() == ids


def test_num_samples_are_generated_as_one_batch(model):
    texts = generate_texts(model, VOCAB, prime_ids(), 50, num_samples=4, seed=5)
    assert len(texts) == 4
    assert all(len(t) == 50 and set(t) <= set(VOCAB.chars) for t in texts)
    assert len(set(texts)) > 1, "the streams sample independently"
    greedy = generate_texts(model, VOCAB, prime_ids(), 30, num_samples=3, temperature=0)
    assert greedy == generate_texts(model, VOCAB, prime_ids(), 30, temperature=0) * 3


def test_length_zero_gives_empty_samples(model):
    assert generate_texts(model, VOCAB, prime_ids(), 0, num_samples=2) == ["", ""]


def test_stream_text_matches_generate(model):
    streamed = "".join(stream_text(model, VOCAB, prime_ids(), 40, seed=8))
    assert streamed == generate_texts(model, VOCAB, prime_ids(), 40, seed=8)[0]


def test_generation_leaves_the_model_in_eval_mode_and_its_weights_alone(model):
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate_texts(model, VOCAB, prime_ids(), 10, seed=1)
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_default_prime_prefers_a_line_break_then_a_space():
    assert default_prime(Vocab.from_text("ab \n")) == "\n"
    assert default_prime(Vocab.from_text("ab ")) == " "
    assert default_prime(Vocab.from_text("zyx")) == "x"


@pytest.mark.gpu
def test_cuda_generation_is_seeded_and_stateful(model):
    model = model.to("cuda")
    prime = prime_ids()
    first = generate_texts(model, VOCAB, prime, 60, num_samples=3, seed=4)
    assert first == generate_texts(model, VOCAB, prime, 60, num_samples=3, seed=4)
    ids = VOCAB.encode(generate_texts(model, VOCAB, prime, 40, temperature=0)[0])
    with torch.no_grad():
        full, _ = model(torch.tensor([prime + ids], device="cuda"))
    assert full[0, len(prime) - 1 : -1].argmax(dim=-1).tolist() == ids


def test_draws_follow_the_distribution_after_filtering():
    """Sampling frequencies match the (temperature-scaled, top-k filtered) probabilities."""
    logits = torch.log(torch.tensor([[0.05, 0.15, 0.5, 0.3]])).repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, 1.0, None, None, generator), minlength=4).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.05, 0.15, 0.5, 0.3]), atol=0.015)
    counts = torch.bincount(sample_next(logits, 1.0, 2, None, generator), minlength=4).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.0, 0.0, 0.5 / 0.8, 0.3 / 0.8]), atol=0.015)
    counts = torch.bincount(sample_next(logits, 0.5, None, None, generator), minlength=4).float() / 20000
    squared = torch.tensor([0.05, 0.15, 0.5, 0.3]) ** 2
    assert torch.allclose(counts, squared / squared.sum(), atol=0.015)


def test_the_sampling_table_is_built_once_per_model(tiny_checkpoint, monkeypatch):
    """Issue 11, defect 9: the (V, 4H) input table was rebuilt for every sample drawn."""
    import charlstm
    from charlstm.model import CharRNN

    loaded = charlstm.load(tiny_checkpoint)
    built: list[int] = []
    table = CharRNN.input_table

    def counting(self):
        built.append(1)
        return table(self)

    monkeypatch.setattr(CharRNN, "input_table", counting)
    first = [loaded.generate("The ", length=20, seed=s) for s in range(3)]
    first += ["".join(loaded.stream("The ", length=20, seed=3))]
    assert len(built) == 1, f"built {len(built)} times for 4 samples"
    assert first[0] == loaded.generate("The ", length=20, seed=0)


def test_samples_follow_weights_changed_in_place(tiny_checkpoint):
    """Training changes the weights in place between the samples it shows: a cached table must
    not keep sampling from the old ones."""
    import charlstm

    loaded = charlstm.load(tiny_checkpoint)
    loaded.generate("The ", length=20, seed=1)
    with torch.no_grad():
        for parameter in loaded.model.parameters():
            parameter.mul_(3.0)  # as an optimizer step does: the same tensors, new values
    fresh = charlstm.load(tiny_checkpoint)
    fresh.model.load_state_dict(loaded.model.state_dict())
    assert loaded.generate("The ", length=200, seed=1) == fresh.generate("The ", length=200, seed=1)
