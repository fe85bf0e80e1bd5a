"""The Python API: `train`, `load`, and `CharModel` with `generate`, `stream`, `evaluate`.

This module wires the stages together (text -> vocabulary -> batches -> model -> trainer ->
checkpoint -> sampler); the CLI is a thin layer over it.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from . import __version__
from .checkpoint import CONFIG_FILE, load_checkpoint, load_trainer_state, read_config, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import (
    BUNDLED_NAME,
    StreamBatches,
    encode_corpus,
    find_text_files,
    read_corpus,
    split_train_val,
    validation_batches,
)
from .distributed import DistContext, context_from_env, setup, teardown
from .errors import CharLSTMError
from .metrics import MetricsLog, score
from .model import CharRNN
from .sample import default_prime, generate_texts, stream_text
from .trainer import Hooks, Trainer, pick_device
from .vocab import Vocab

MODEL_OPTIONS = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")
TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig))
EVAL_MAX_STREAMS = 64
EVAL_CHUNK = 512


# Options a resumed run may change; any other option must match the checkpoint.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "max_steps",
        "max_time",
        "eval_interval",
        "checkpoint_interval",
        "checkpoint_seconds",
        "device",
    }
)


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate keyword options into model and training fields; anything else is an error."""
    unknown = set(options) - set(MODEL_OPTIONS) - set(TRAIN_OPTIONS)
    if unknown:
        raise CharLSTMError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    model = {k: v for k, v in options.items() if k in MODEL_OPTIONS and v is not None}
    train = {k: v for k, v in options.items() if k in TRAIN_OPTIONS and v is not None}
    return model, train


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CharLSTMError(f"{out_dir}: exists and is not a folder; choose another --out")
    held = [name for name in ("best", "last", "metrics.jsonl") if (out_dir / name).exists()]
    if held and not overwrite:
        raise CharLSTMError(
            f"{out_dir}: already holds a run ({', '.join(held)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    for name in held:
        target = out_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CharLSTMError(f"{out_dir}: cannot write there ({exc.strerror or exc})") from None


@dataclass
class _Resume:
    """The run found in `out_dir/last` and the options merged with it."""

    checkpoint: Path
    training: dict[str, Any]
    vocab: list[str]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def _open_resume(
    out_dir: Path,
    paths: list[str | Path],
    encoding: str,
    model_options: dict[str, Any],
    train_options: dict[str, Any],
) -> tuple[_Resume, list[str | Path], str, dict[str, Any], dict[str, Any]]:
    last = out_dir / "last"
    if not (last / CONFIG_FILE).is_file():
        raise CharLSTMError(f"{out_dir}: no run to resume (no last/ checkpoint); start it without --resume")
    config = read_config(last)
    tensors, meta = load_trainer_state(last)
    training = config.get("training", {})
    saved_train = training.get("config", {})
    conflicts = [
        f"--{k.replace('_', '-')} {v} (run has {saved_train.get(k)})"
        for k, v in train_options.items()
        if k not in RESUMABLE_CHANGES and saved_train.get(k) != v
    ]
    conflicts += [
        f"--{k.replace('_', '-')} {v} (run has {config['model'].get(k)})"
        for k, v in model_options.items()
        if config["model"].get(k) != v
    ]
    saved_sources = training.get("data", [])
    sources = [] if saved_sources == [BUNDLED_NAME] else saved_sources
    if paths and [str(f) for f in find_text_files(paths)] != sources:
        conflicts.append(f"data {[str(p) for p in paths]} (run trained on {saved_sources})")
    if conflicts:
        raise CharLSTMError(
            f"cannot resume {out_dir} with options that contradict it: {'; '.join(conflicts)}; "
            "drop them, or start a new run in another --out"
        )
    model_options = {k: config["model"][k] for k in MODEL_OPTIONS if k in config["model"]}
    train_options = {**saved_train, **train_options}
    resume = _Resume(last, training, config["vocab"], tensors, meta)
    return resume, sources, training.get("encoding", encoding), model_options, train_options


def train(
    paths: Iterable[str | Path] = (),
    out_dir: str | Path = "runs/charlstm",
    *,
    encoding: str = "utf-8",
    overwrite: bool = False,
    resume: bool = False,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_step: Callable[[Trainer, torch.Tensor], None] | None = None,
    on_eval: Callable[[Trainer, dict[str, float], bool], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> Path:
    """Train on the text files or folders in `paths` (none: the bundled novel).

    `options` are the fields of `ModelConfig` and `TrainConfig` (`hidden_size=256`,
    `max_time=60`, ...). Writes `out_dir/best`, `out_dir/last` and `out_dir/metrics.jsonl`
    and returns `out_dir`. `resume=True` continues the run in `out_dir` exactly where its
    `last` checkpoint stopped. The callbacks see the run summary, each step and each
    evaluation; `should_stop` is polled every step (the CLI sets it on Ctrl-C).
    """
    out_dir = Path(out_dir)
    paths = list(paths)
    model_options, train_options = split_options(options)
    resumed = None
    if resume:
        resumed, paths, encoding, model_options, train_options = _open_resume(
            out_dir, paths, encoding, model_options, train_options
        )
    config = TrainConfig.from_dict(train_options)
    text, sources = read_corpus(paths, encoding)
    vocab = Vocab.from_text(text)
    ids = encode_corpus(text, vocab)
    del text
    if resumed and (list(vocab.chars) != resumed.vocab or len(ids) != resumed.training.get("num_chars")):
        raise CharLSTMError(
            f"cannot resume {out_dir}: its text has changed since the run started "
            f"({len(ids):,} characters now, {resumed.training.get('num_chars'):,} then)"
        )
    model_config = ModelConfig(vocab_size=len(vocab), **model_options)
    train_ids, val_ids = split_train_val(ids, config.val_frac)
    device = pick_device(config.device)
    ctx = context_from_env()
    if config.batch_size % ctx.world_size:
        raise CharLSTMError(
            f"--batch-size {config.batch_size} must be a multiple of the {ctx.world_size} processes"
        )
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    train_batches = StreamBatches(
        train_ids, config.batch_size, config.seq_len, device, rows=ctx.row_slice(config.batch_size)
    )
    val_batches = validation_batches(
        val_ids, config.batch_size, config.seq_len, device, ctx.rank, ctx.world_size
    )
    if not resumed and ctx.is_main:
        _prepare_out_dir(out_dir, overwrite)
    ctx = setup(config.backend, device.type, config.dist_timeout)
    try:
        _fit(
            ctx,
            config,
            model_config,
            vocab,
            sources,
            encoding,
            len(ids),
            device,
            train_batches,
            val_batches,
            out_dir,
            resumed,
            on_start,
            on_step,
            on_eval,
            should_stop,
        )
    finally:
        teardown(ctx)
    return out_dir


def _fit(
    ctx: DistContext,
    config: TrainConfig,
    model_config: ModelConfig,
    vocab: Vocab,
    sources: list[str],
    encoding: str,
    num_chars: int,
    device: torch.device,
    train_batches: StreamBatches,
    val_batches: StreamBatches,
    out_dir: Path,
    resumed: _Resume | None,
    on_start: Callable[[dict[str, Any]], None] | None,
    on_step: Callable[[Trainer, torch.Tensor], None] | None,
    on_eval: Callable[[Trainer, dict[str, float], bool], None] | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Build the model and trainer, wire checkpoints and metrics (rank 0 writes), train."""
    torch.manual_seed(config.seed)
    model = CharRNN(model_config)
    if resumed:
        model.load_state_dict(load_checkpoint(resumed.checkpoint).model.state_dict())
    if ctx.rank:
        torch.manual_seed(config.seed + ctx.rank)  # same weights, different dropout per rank
    model.to(device)
    metrics = MetricsLog(out_dir / "metrics.jsonl")

    def training_facts(trainer: Trainer) -> dict[str, Any]:
        last = trainer.progress.history[-1] if trainer.progress.history else {}
        return {
            "charlstm_version": __version__,
            "config": config.to_dict(),
            "data": sources,
            "encoding": encoding,
            "num_chars": num_chars,
            "device": str(device),
            "world_size": ctx.world_size,
            "step": trainer.progress.step,
            "epoch": round(trainer.progress.epoch + trainer.progress.window / trainer.steps_per_epoch, 4),
            "val_loss": last.get("val_loss"),
            "best_val_loss": trainer.progress.best_val_loss,
            "elapsed_s": round(trainer.progress.elapsed_s, 2),
        }

    def after_eval(trainer: Trainer, record: dict[str, float], is_best: bool) -> None:
        if not ctx.is_main:
            return
        metrics.write(record)
        if is_best:
            save_checkpoint(out_dir / "best", model, vocab, training_facts(trainer))
        if on_eval:
            on_eval(trainer, record, is_best)

    def save_last(trainer: Trainer) -> None:
        state = trainer.state_dict()  # collective: every rank takes part
        if ctx.is_main:
            save_checkpoint(out_dir / "last", model, vocab, training_facts(trainer), state)

    hooks = Hooks(
        on_step=on_step if ctx.is_main else None,
        on_eval=after_eval,
        on_save=save_last,
        should_stop=should_stop,
    )
    trainer = Trainer(model, config, train_batches, val_batches, hooks, ctx)
    if resumed:
        trainer.load_state_dict(resumed.tensors, resumed.meta)
        if ctx.is_main:
            metrics.rewrite(trainer.progress.history)
    if on_start and ctx.is_main:
        on_start(
            {
                "data": sources,
                "num_chars": num_chars,
                "vocab_size": len(vocab),
                "device": str(device),
                "world_size": ctx.world_size,
                "parameters": model.num_parameters(),
                "model": model_config.to_dict(),
                "config": config.to_dict(),
                "steps_per_epoch": trainer.steps_per_epoch,
                "total_steps": trainer.total_steps,
                "start_step": trainer.progress.step,
                "eval_interval": trainer.eval_interval,
                "resumed": resumed is not None,
            }
        )
    trainer.fit()


@dataclass
class CharModel:
    """A trained model with its vocabulary, ready to generate and score text."""

    model: CharRNN
    vocab: Vocab
    training: dict[str, Any]
    path: Path | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    def encode_prime(self, prime: str | None, drop_unknown: bool = False) -> tuple[str, list[int]]:
        prime = default_prime(self.vocab) if prime is None or prime == "" else prime
        ids = self.vocab.encode(prime, unknown="drop" if drop_unknown else "error", what="prime")
        return prime, ids

    def generate(
        self,
        prime: str | None = None,
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        num_samples: int = 1,
        seed: int | None = None,
        drop_unknown: bool = False,
    ) -> str | list[str]:
        """The prime followed by `length` sampled characters; a list when `num_samples` > 1.

        `temperature=0` is greedy. With no prime, sampling starts after a line break.
        """
        given = prime
        prime, ids = self.encode_prime(prime, drop_unknown)
        texts = generate_texts(
            self.model,
            self.vocab,
            ids,
            length,
            num_samples=num_samples,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        shown = given or ""
        texts = [shown + text for text in texts]
        return texts[0] if num_samples == 1 else texts

    def stream(
        self,
        prime: str | None = None,
        length: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        drop_unknown: bool = False,
    ) -> Iterator[str]:
        """The sampled characters one at a time, as they are produced (the prime not repeated)."""
        _, ids = self.encode_prime(prime, drop_unknown)
        return stream_text(
            self.model,
            self.vocab,
            ids,
            length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )

    @torch.inference_mode()
    def evaluate(self, text: str) -> dict[str, float]:
        """Loss (nats/char), bits per char and perplexity of `text`, predicting each character
        from the ones before it. Unknown characters are skipped and counted. Long texts are
        scored as up to 64 contiguous streams, each starting from an empty state."""
        unknown = sum(1 for c in text if c not in self.vocab)
        ids = self.vocab.encode(text, unknown="drop")
        if len(ids) < 2:
            raise CharLSTMError("the text needs at least 2 characters the model knows to be scored")
        pairs = len(ids) - 1
        rows = max(1, min(EVAL_MAX_STREAMS, pairs // 1024))
        width = math.ceil(pairs / rows)
        seq = torch.tensor(ids, device=self.device)
        inputs = torch.zeros(rows * width, dtype=torch.long, device=self.device)
        targets = torch.full((rows * width,), -100, dtype=torch.long, device=self.device)
        inputs[:pairs], targets[:pairs] = seq[:-1], seq[1:]
        inputs, targets = inputs.view(rows, width), targets.view(rows, width)
        self.model.eval()
        state, total = None, 0.0
        for start in range(0, width, EVAL_CHUNK):
            logits, state = self.model(inputs[:, start : start + EVAL_CHUNK], state)
            chunk_targets = targets[:, start : start + EVAL_CHUNK]
            total += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                chunk_targets.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            ).item()
        return {**score(total, pairs), "num_chars": len(text), "unknown_chars": unknown}

    def save_pretrained(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.model, self.vocab, self.training)

    def info(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "model": self.config.to_dict(),
            "parameters": self.model.num_parameters(),
            "vocab": "".join(self.vocab.chars),
            "training": self.training,
        }


def load(path: str | Path, device: str = "cpu") -> CharModel:
    """Load a checkpoint folder, or a run folder (its best checkpoint), onto `device`."""
    checkpoint = load_checkpoint(path, pick_device(device))
    return CharModel(checkpoint.model, checkpoint.vocab, checkpoint.training, checkpoint.path)
