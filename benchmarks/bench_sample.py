"""Sampling speed, tutorial-size model: charlstm's generate vs the tutorial's predict()/sample() loop.

Both models hold the same random weights (a 2 x 512 LSTM on the bundled novel's 83 characters;
charlstm's embedding is set to the identity, so its lookup equals the tutorial's one-hot input).
One stream, top-k 5, 2,000 characters after the prime "Anna"; then 64 streams as one batch with
charlstm. Repeats alternate (charlstm, tutorial, charlstm x 64, ...). The matrix-vector bound is
the time of the bare per-character products of one stream (h @ W_hh0, x @ W_ih1, h @ W_hh1 and the
head; the first layer's input product is a table lookup in charlstm's stepper).
Progress goes to stderr; one JSON object goes to stdout.

    python benchmarks/bench_sample.py                 # 5 repeats, 2 threads
    python benchmarks/bench_sample.py --quick         # smoke test: width 128, 200 characters
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from benchutil import log, machine, ratio, set_threads, spread
from tutorial_baseline import CharRNN as TutorialRNN
from tutorial_baseline import one_hot_encode, sample

from charlstm.api import CharModel
from charlstm.config import ModelConfig
from charlstm.data import bundled_text
from charlstm.model import CharRNN
from charlstm.stepper import Stepper
from charlstm.vocab import Vocab

PRIME, TOP_K = "Anna", 5


def build_models(vocab: Vocab, hidden: int, seed: int) -> tuple[CharModel, TutorialRNN, float]:
    """The tutorial's net and a charlstm model with the same weights; the largest logit difference."""
    torch.manual_seed(seed)
    tutorial = TutorialRNN(vocab.chars, n_hidden=hidden, n_layers=2, drop_prob=0.5).eval()
    config = ModelConfig(
        vocab_size=len(vocab), hidden_size=hidden, num_layers=2, dropout=0.5, embedding_size=0
    )
    model = CharRNN(config).eval()  # one-hot input, as the tutorial's
    with torch.no_grad():
        model.rnn.load_state_dict(tutorial.lstm.state_dict())
        model.head.load_state_dict(tutorial.fc.state_dict())
        ids = np.array([[vocab.index[c] for c in PRIME]])
        ours, _ = model(torch.from_numpy(ids))
        theirs, _ = tutorial(torch.from_numpy(one_hot_encode(ids, len(vocab))), tutorial.init_hidden(1))
        diff = float((ours.reshape(-1, len(vocab)) - theirs).abs().max())
    return CharModel(model, vocab, training={}), tutorial, diff


@torch.inference_mode()
def matvec_bound_s(model: CharRNN, chars: int) -> float:
    """Seconds for `chars` steps of only the weight products one stream needs per character
    (2-layer LSTM: the first layer's hidden weights, the second layer's input and hidden
    weights, the output layer; the first layer's input product is a table lookup)."""
    rnn = model.rnn
    w_hh0 = rnn.weight_hh_l0.detach().t().contiguous()
    w_1 = torch.cat([rnn.weight_ih_l1.detach().t(), rnn.weight_hh_l1.detach().t()]).contiguous()
    head = model.head.weight.detach().t().contiguous()
    b0, b1, hb = rnn.bias_hh_l0.detach(), rnn.bias_hh_l1.detach(), model.head.bias.detach()
    h = torch.randn(1, w_hh0.shape[0])
    h2 = torch.randn(1, w_1.shape[0])
    t0 = time.perf_counter()
    for _ in range(chars):
        torch.addmm(b0, h, w_hh0)
        torch.addmm(b1, h2, w_1)
        torch.addmm(hb, h, head)
    return time.perf_counter() - t0


@torch.inference_mode()
def stepper_only_s(stepper: Stepper, model: CharRNN, chars: int) -> float:
    """Seconds for `chars` stepper steps with no sampling (always the same input character)."""
    ids = torch.zeros(1, dtype=torch.long)
    state = model.init_state(1)
    t0 = time.perf_counter()
    for _ in range(chars):
        _, state = stepper.step(ids, state)
    return time.perf_counter() - t0


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per method, alternating")
    ap.add_argument("--chars", type=int, default=2000, help="characters sampled per stream")
    ap.add_argument("--streams", type=int, default=64, help="streams in the batched charlstm run")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke test: width 128, 200 chars, 2 repeats")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.chars, args.repeats = 128, min(args.chars, 200), min(args.repeats, 2)
    set_threads(args.threads)
    np.random.seed(args.seed)

    vocab = Vocab.from_text(bundled_text())
    ours, tutorial, diff = build_models(vocab, args.hidden, args.seed)
    log(f"same weights: max |logit difference| on the prime = {diff:.2e}")
    n, streams = args.chars, args.streams
    runs: dict[str, Callable[[], Any]] = {
        "charlstm": lambda: ours.generate(PRIME, length=n, top_k=TOP_K, seed=args.seed),
        "tutorial": lambda: sample(tutorial, n, prime=PRIME, top_k=TOP_K),
        "charlstm_batch": lambda: ours.generate(PRIME, length=n, top_k=TOP_K, num_samples=streams,
                                                seed=args.seed),
    }
    produced = {"charlstm": n, "tutorial": n, "charlstm_batch": n * streams}
    for fn in runs.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.repeats):
        for name, fn in runs.items():
            rates[name].append(produced[name] / timed(fn))
            log(f"repeat {r + 1}/{args.repeats} {name}: {rates[name][-1]:,.0f} chars/s")

    stepper = Stepper(ours.model)
    bound = min(matvec_bound_s(ours.model, n) for _ in range(args.repeats))
    step_only = statistics.median(stepper_only_s(stepper, ours.model, n) for _ in range(args.repeats))
    h, v = args.hidden, len(vocab)
    weight_bytes = 4 * (3 * h * 4 * h + h * v)
    med = {name: statistics.median(values) for name, values in rates.items()}
    bound_rate = n / bound
    result: dict[str, Any] = {
        "config": {"hidden": h, "layers": 2, "vocab_size": v, "chars": n, "prime": PRIME, "top_k": TOP_K,
                   "streams": streams, "repeats": args.repeats, "seed": args.seed, "quick": args.quick,
                   "same_weights_max_logit_diff": diff, **machine(args.threads)},
        "charlstm": {"chars_per_sec": spread(rates["charlstm"])},
        "tutorial": {"chars_per_sec": spread(rates["tutorial"])},
        "speedup_single_stream": ratio(med["charlstm"], med["tutorial"]),
        "charlstm_batch": {"streams": streams, "total_chars_per_sec": spread(rates["charlstm_batch"]),
                           "per_stream_chars_per_sec": round(med["charlstm_batch"] / streams, 1)},
        "speedup_batch_vs_tutorial_single": ratio(med["charlstm_batch"], med["tutorial"]),
        "matvec_bound": {
            "chars_per_sec": round(bound_rate, 1),
            "us_per_char": round(1e6 * bound / n, 2),
            "weight_bytes_per_char": weight_bytes,
            "effective_gb_per_sec": round(weight_bytes * bound_rate / 1e9, 2),
            "stepper_only_chars_per_sec": round(n / step_only, 1),
            "stepper_only_fraction_of_bound": ratio(n / step_only, bound_rate),
            "charlstm_fraction_of_bound": ratio(med["charlstm"], bound_rate),
            "tutorial_fraction_of_bound": ratio(med["tutorial"], bound_rate),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
