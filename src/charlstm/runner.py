"""Running a training job: options -> corpus -> batches -> model -> trainer, with the run
folder (`best/`, `last/`, `metrics.jsonl`), resuming, and data parallelism wired in.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import (
    CONFIG_FILE,
    load_checkpoint,
    load_trainer_state,
    read_config,
    recover_interrupted_write,
    save_checkpoint,
)
from .config import ModelConfig, TrainConfig
from .data import (
    BUNDLED_NAME,
    Corpus,
    StreamBatches,
    find_text_files,
    prepare_corpus,
    split_train_val,
    validation_batches,
)
from .distributed import context_from_env, setup, teardown
from .errors import CharLSTMError
from .metrics import MetricsLog
from .model import CharRNN
from .presets import PRESETS, auto_options
from .trainer import Hooks, Trainer, pick_device

MODEL_OPTIONS = tuple(f.name for f in fields(ModelConfig) if f.name != "vocab_size")
TRAIN_OPTIONS = tuple(f.name for f in fields(TrainConfig))
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
        "backend",
        "dist_timeout",
        "learning_rate",  # to recover from a divergence; it replaces the learning rate reached
        "grad_clip",
    }
)


@dataclass
class Callbacks:
    """What the caller sees of a run (the CLI draws its progress bar from these)."""

    on_start: Callable[[dict[str, Any]], None] | None = None
    on_step: Callable[[Trainer, torch.Tensor], None] | None = None
    on_eval: Callable[[Trainer, dict[str, float], bool], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class Resumed:
    """The state found in a run's `last/` checkpoint."""

    checkpoint: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def training(self) -> dict[str, Any]:
        return self.config.get("training", {})


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate keyword options into model and training fields; anything else is an error."""
    unknown = set(options) - set(MODEL_OPTIONS) - set(TRAIN_OPTIONS)
    if unknown:
        raise CharLSTMError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    model = {k: v for k, v in options.items() if k in MODEL_OPTIONS and v is not None}
    train = {k: v for k, v in options.items() if k in TRAIN_OPTIONS and v is not None}
    return model, train


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Make `out_dir` ready for a new run; never silently replaces an earlier one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CharLSTMError(f"{out_dir}: exists and is not a folder; choose another --out")
    held = [name for name in ("best", "last", "metrics.jsonl") if (out_dir / name).exists()]
    if held and not overwrite:
        raise CharLSTMError(
            f"{out_dir}: already holds a run ({', '.join(held)}); pass --resume {out_dir} to continue "
            "it, --overwrite to replace it, or choose another --out"
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


def open_resume(
    out_dir: Path, paths: list[str | Path], model_options: dict[str, Any], train_options: dict[str, Any]
) -> tuple[Resumed, list[str | Path], dict[str, Any], dict[str, Any]]:
    """The run in `out_dir/last`, its data paths, and the options merged with the saved ones;
    options that contradict the run are refused."""
    last = out_dir / "last"
    recover_interrupted_write(last)
    if not (last / CONFIG_FILE).is_file():
        raise CharLSTMError(f"{out_dir}: no run to resume (no last/ checkpoint); start it without --resume")
    resumed = Resumed(last, read_config(last), *load_trainer_state(last))
    saved_model, saved_train = resumed.config["model"], resumed.training.get("config", {})
    conflicts = [
        f"--{k.replace('_', '-')} {v} (the run has {saved_train.get(k)})"
        for k, v in train_options.items()
        if k not in RESUMABLE_CHANGES and saved_train.get(k) != v
    ]
    conflicts += [
        f"--{k.replace('_', '-')} {v} (the run has {saved_model.get(k)})"
        for k, v in model_options.items()
        if saved_model.get(k) != v
    ]
    saved_sources = resumed.training.get("data", [])
    sources: list[str | Path] = [] if saved_sources == [BUNDLED_NAME] else list(saved_sources)
    if paths and [str(f) for f in find_text_files(paths)] != sources:
        conflicts.append(f"data {[str(p) for p in paths]} (the run trained on {saved_sources})")
    if conflicts:
        raise CharLSTMError(
            f"cannot resume {out_dir} with options that contradict it: {'; '.join(conflicts)}; "
            "drop them, or start a new run in another --out"
        )
    model_options = {k: saved_model[k] for k in MODEL_OPTIONS if k in saved_model}
    return resumed, sources, model_options, {**saved_train, **train_options}


def load_corpus(paths: list[str | Path], encoding: str, out_dir: Path, resumed: Resumed | None) -> Corpus:
    """Encode the corpus; one too large to hold comfortably in memory is memory-mapped from
    `out_dir/corpus.npy`."""
    files = find_text_files(paths) if paths else []
    size = sum(f.stat().st_size for f in files)
    memmap_path = None
    if size > memmap_threshold():
        out_dir.mkdir(parents=True, exist_ok=True)
        memmap_path = out_dir / "corpus.npy"
    corpus = prepare_corpus(files, encoding, memmap_path)
    if resumed:
        then = resumed.training.get("num_chars")
        if list(corpus.vocab.chars) != resumed.config["vocab"] or len(corpus.ids) != then:
            raise CharLSTMError(
                f"cannot resume: the text has changed since the run started "
                f"({len(corpus.ids):,} characters now, {then} then); start a new run instead"
            )
    return corpus


def memmap_threshold() -> int:
    """Bytes of text above which the encoded ids live in a memory-mapped file: a quarter of
    this machine's memory (1 GiB where that cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (AttributeError, ValueError, OSError):
        return 1 << 30


def train(
    paths: Iterable[str | Path] = (),
    out_dir: str | Path = "runs/charlstm",
    *,
    encoding: str = "utf-8",
    overwrite: bool = False,
    resume: bool = False,
    preset: str = "auto",
    callbacks: Callbacks | None = None,
    **options: Any,
) -> Path:
    """Train on the text files or folders in `paths` (none: the bundled novel).

    `options` are the fields of `ModelConfig` and `TrainConfig` (`hidden_size=256`,
    `max_time=60`, ...). Writes `out_dir/best`, `out_dir/last` and `out_dir/metrics.jsonl`
    and returns `out_dir`. `resume=True` continues the run in `out_dir` exactly where its
    `last` checkpoint stopped. Options not given come from `preset`: "auto" sizes the model
    and batch for the corpus and device (see presets.py), "tutorial" is the tutorial's settings.
    Under torchrun each process trains its share of the streams.
    """
    out_dir, paths = Path(out_dir), list(paths)
    callbacks = callbacks or Callbacks()
    model_options, train_options = split_options(options)
    new_learning_rate = train_options.get("learning_rate") if resume else None
    resumed = None
    if resume:
        resumed, paths, model_options, train_options = open_resume(
            out_dir, paths, model_options, train_options
        )
        encoding = resumed.training.get("encoding", encoding)
    elif preset not in PRESETS:
        raise CharLSTMError(f"--preset must be one of {', '.join(PRESETS)}, not {preset!r}")
    corpus = load_corpus(paths, encoding, out_dir, resumed)
    device = pick_device(train_options.get("device", "auto"))
    chosen: list[str] = []
    if not resumed and preset == "auto":
        auto, chosen = auto_options(len(corpus.ids), len(corpus.vocab), device.type)
        model_options = {**{k: v for k, v in auto.items() if k in MODEL_OPTIONS}, **model_options}
        train_options = {**{k: v for k, v in auto.items() if k in TRAIN_OPTIONS}, **train_options}
    config = TrainConfig.from_dict(train_options)
    model_config = ModelConfig(vocab_size=len(corpus.vocab), **model_options)
    ctx = context_from_env()
    if config.batch_size % ctx.world_size:
        raise CharLSTMError(
            f"--batch-size {config.batch_size} must be a multiple of {ctx.world_size} processes"
        )
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    train_ids, val_ids = split_train_val(corpus.ids, config.val_frac)
    rows = ctx.row_slice(config.batch_size)
    train_batches = StreamBatches(train_ids, config.batch_size, config.seq_len, device, rows=rows)
    val_batches = validation_batches(
        val_ids, config.batch_size, config.seq_len, device, ctx.rank, ctx.world_size
    )
    if not resumed and ctx.is_main:
        prepare_out_dir(out_dir, overwrite)
    ctx = setup(config.backend, device.type, config.dist_timeout)
    try:
        torch.manual_seed(config.seed)
        model = CharRNN(model_config)
        if resumed:
            model.load_state_dict(load_checkpoint(resumed.checkpoint).model.state_dict())
        if ctx.rank:
            torch.manual_seed(config.seed + ctx.rank)  # same weights, different dropout per rank
        trainer = Trainer(model.to(device), config, train_batches, val_batches, dist=ctx)
        _wire(trainer, corpus, out_dir, callbacks)
        if resumed:
            trainer.load_state_dict(resumed.tensors, resumed.meta)
            if new_learning_rate is not None:
                for group in trainer.optimizer.param_groups:
                    group["lr"] = new_learning_rate
            if ctx.is_main:
                MetricsLog(out_dir / "metrics.jsonl").rewrite(trainer.progress.history)
        if callbacks.on_start and ctx.is_main:
            callbacks.on_start({**_summary(trainer, corpus, resumed is not None), "chosen": chosen})
        trainer.fit()
    finally:
        teardown(ctx)
    return out_dir


def _wire(trainer: Trainer, corpus: Corpus, out_dir: Path, callbacks: Callbacks) -> None:
    """Hooks that write metrics and checkpoints (rank 0 only) and forward to the caller."""
    ctx, model = trainer.dist, trainer.model
    metrics = MetricsLog(out_dir / "metrics.jsonl")

    def facts() -> dict[str, Any]:
        progress = trainer.progress
        return {
            "charlstm_version": __version__,
            "config": trainer.config.to_dict(),
            "data": corpus.sources,
            "encoding": corpus.encoding,
            "num_chars": len(corpus.ids),
            "device": str(trainer.device),
            "world_size": ctx.world_size,
            "step": progress.step,
            "epoch": round(progress.epoch + progress.window / trainer.steps_per_epoch, 4),
            "val_loss": progress.history[-1]["val_loss"] if progress.history else None,
            "best_val_loss": progress.best_val_loss,
            "elapsed_s": round(progress.elapsed_s, 2),
        }

    def on_eval(trainer: Trainer, record: dict[str, float], is_best: bool) -> None:
        if not ctx.is_main:
            return
        metrics.write(record)
        if is_best:
            save_checkpoint(out_dir / "best", model, corpus.vocab, facts())
        if callbacks.on_eval:
            callbacks.on_eval(trainer, record, is_best)

    def on_save(trainer: Trainer) -> None:
        state = trainer.state_dict()  # collective: every rank takes part
        if ctx.is_main:
            save_checkpoint(out_dir / "last", model, corpus.vocab, facts(), state)

    trainer.hooks = Hooks(
        on_step=callbacks.on_step if ctx.is_main else None,
        on_eval=on_eval,
        on_save=on_save,
        should_stop=callbacks.should_stop,
    )


def _summary(trainer: Trainer, corpus: Corpus, resumed: bool) -> dict[str, Any]:
    return {
        "data": corpus.sources,
        "num_chars": len(corpus.ids),
        "vocab_size": len(corpus.vocab),
        "device": str(trainer.device),
        "world_size": trainer.dist.world_size,
        "parameters": trainer.model.num_parameters(),
        "model": trainer.model.config.to_dict(),
        "config": trainer.config.to_dict(),
        "steps_per_epoch": trainer.steps_per_epoch,
        "total_steps": trainer.total_steps,
        "start_step": trainer.progress.step,
        "eval_interval": trainer.eval_interval,
        "resumed": resumed,
    }
