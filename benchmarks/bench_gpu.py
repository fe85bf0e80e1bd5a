"""GPU benchmark: training throughput, fraction of peak, time to validation loss 1.3, sampling.

Run on a CUDA machine from the repository root (no install needed):
    PYTHONPATH=src python benchmarks/bench_gpu.py --minutes 3
Prints one JSON object. Each measurement is independent, so a failure in one is reported in
the JSON and the others still run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch

import charlstm
from charlstm.config import ModelConfig, TrainConfig
from charlstm.data import StreamBatches, bundled_text, encode_corpus
from charlstm.evaluation import HeldOut
from charlstm.model import CharRNN
from charlstm.trainer import Trainer
from charlstm.vocab import Vocab

DEVICE = "cuda"
SIZE = 8192


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def lstm_flops_per_char(hidden: int, layers: int, embed: int, vocab: int) -> float:
    """Training FLOPs per character: forward matmuls x 3 (backward costs about twice forward)."""
    forward = 2 * 4 * hidden * (embed + hidden) + (layers - 1) * 2 * 4 * hidden * (2 * hidden)
    forward += 2 * hidden * vocab
    return 3.0 * forward


def matmul_peak_tflops(dtype: torch.dtype) -> float:
    a = torch.randn(SIZE, SIZE, device=DEVICE, dtype=dtype)
    b = torch.randn(SIZE, SIZE, device=DEVICE, dtype=dtype)
    for _ in range(3):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync()
    return 10 * 2 * SIZE**3 / (time.perf_counter() - start) / 1e12


def throughput(preset_options: dict[str, Any], precision: str, steps: int = 60) -> dict[str, Any]:
    """Steady-state training characters per second (after warm-up), on the bundled corpus."""
    text = bundled_text()
    vocab = Vocab.from_text(text)
    ids = encode_corpus(text, vocab)
    model_keys = {"hidden_size", "num_layers", "dropout"}
    model_config = ModelConfig(
        vocab_size=len(vocab), **{k: v for k, v in preset_options.items() if k in model_keys}
    )
    config = TrainConfig(
        **{k: v for k, v in preset_options.items() if k not in model_keys}, precision=precision
    )
    torch.manual_seed(0)
    model = CharRNN(model_config).to(DEVICE)
    batches = StreamBatches(ids, config.batch_size, config.seq_len, DEVICE)
    held_out = HeldOut(ids[-100_000:], config.batch_size, config.seq_len, DEVICE)
    trainer = Trainer(model, config, batches, held_out)
    for i in range(10):
        window = batches[i]
        trainer.train_step(window.inputs, window.targets)
    sync()
    start = time.perf_counter()
    for i in range(steps):
        window = batches[(10 + i) % len(batches)]
        trainer.train_step(window.inputs, window.targets)
    sync()
    seconds = time.perf_counter() - start
    chars_per_sec = steps * config.batch_size * config.seq_len / seconds
    flops = lstm_flops_per_char(
        model_config.hidden_size, model_config.num_layers, model_config.input_size, len(vocab)
    )
    return {
        "options": preset_options,
        "precision": precision,
        "step_ms": 1e3 * seconds / steps,
        "chars_per_sec": chars_per_sec,
        "achieved_tflops": chars_per_sec * flops / 1e12,
    }


def time_to_quality(minutes: float, precision: str, target: float = 1.3) -> dict[str, Any]:
    """charlstm's auto preset on the bundled novel for `minutes`: the validation curve."""
    out = Path(tempfile.mkdtemp()) / "run"
    charlstm.train([], out, max_time=minutes * 60, precision=precision, device=DEVICE)
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reached = next((r["elapsed_s"] for r in curve if r["val_loss"] <= target), None)
    return {
        "precision": precision,
        "minutes": minutes,
        f"time_to_val_{target}_s": reached,
        "best_val_loss": min(r["val_loss"] for r in curve),
        "curve": [{k: r[k] for k in ("step", "elapsed_s", "val_loss", "chars_per_sec")} for r in curve],
        "checkpoint": str(out),
    }


def sampling(checkpoint: str) -> dict[str, Any]:
    model = charlstm.load(checkpoint, device=DEVICE)
    results: dict[str, Any] = {}
    for streams in (1, 64):
        model.generate("Anna", length=50, top_k=5, num_samples=streams, seed=0)
        sync()
        start = time.perf_counter()
        model.generate("Anna", length=2000, top_k=5, num_samples=streams, seed=0)
        sync()
        results[f"streams_{streams}_chars_per_sec"] = streams * 2000 / (time.perf_counter() - start)
    results["sample"] = model.generate("Anna", length=300, top_k=5, seed=7)
    return results


def guarded(name: str, fn: Any, *args: Any) -> Any:
    print(f"[bench_gpu] {name} ...", file=sys.stderr, flush=True)
    try:
        return fn(*args)
    except Exception as exc:  # one failing measurement must not lose the others
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0, help="time-to-quality run length")
    parser.add_argument("--smoke", action="store_true", help="a tiny run on the CPU, to check the script")
    args = parser.parse_args()
    global DEVICE, SIZE
    if args.smoke:
        DEVICE, SIZE = "cpu", 256
    elif not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    auto = {
        "hidden_size": 512,
        "num_layers": 2,
        "dropout": 0.2,
        "batch_size": 128,
        "seq_len": 128,
        "learning_rate": 0.002,
    }
    tutorial = {
        "hidden_size": 512,
        "num_layers": 2,
        "dropout": 0.5,
        "batch_size": 100,
        "seq_len": 100,
        "learning_rate": 0.001,
    }
    if args.smoke:
        auto = {**auto, "hidden_size": 32, "batch_size": 8, "seq_len": 16}
        tutorial = {**tutorial, "hidden_size": 32, "batch_size": 8, "seq_len": 16}
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)",
        "torch": torch.__version__,
        "peak_tflops": {
            "fp32_tf32": guarded("peak fp32", matmul_peak_tflops, torch.float32),
            "bf16": guarded("peak bf16", matmul_peak_tflops, torch.bfloat16),
        },
        "throughput": [
            guarded("tutorial fp32", throughput, tutorial, "fp32"),
            guarded("auto fp32", throughput, auto, "fp32"),
            guarded("auto bf16", throughput, auto, "bf16"),
            guarded("auto 1024 bf16", throughput, {**auto, "hidden_size": 2 * auto["hidden_size"]}, "bf16"),
        ],
    }
    quality = [
        guarded("quality fp32", time_to_quality, args.minutes, "fp32"),
        guarded("quality bf16", time_to_quality, args.minutes, "bf16"),
    ]
    result["time_to_quality"] = quality
    if "checkpoint" in quality[0]:
        result["sampling"] = guarded("sampling", sampling, quality[0]["checkpoint"])
    peak = result["peak_tflops"]["bf16"]
    for row in result["throughput"]:
        if "achieved_tflops" in row and isinstance(peak, float) and not math.isnan(peak):
            row["fraction_of_bf16_peak"] = row["achieved_tflops"] / peak
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
