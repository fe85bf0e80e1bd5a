"""A training job, the one `train()`: options -> corpus -> batches -> model -> trainer, with the run
folder (runfolder.py), resuming, fine-tuning and data parallelism wired in.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import load_checkpoint, load_trainer_state
from .config import ModelConfig, TrainConfig
from .data import (
    Corpus,
    StreamBatches,
    encode_corpus,
    find_text_files,
    prepare_corpus,
    read_text_file,
    split_train_val,
)
from .distributed import DistContext, context_from_env, setup, teardown
from .errors import CharLSTMError
from .evaluation import HeldOut
from .finetune import open_init_from, reencode, union_vocab
from .metrics import MetricsLog
from .model import CharRNN
from .presets import PRESETS, preset_options
from .runfolder import (
    MODEL_OPTIONS,
    RESUMABLE_CHANGES,
    TRAIN_OPTIONS,
    RunFolder,
    check_out_dir,
    check_same_text,
    check_work_left,
    open_resume,
    prepare_out_dir,
)
from .runstate import restore
from .trainer import Hooks, Trainer, pick_device
from .vocab import Vocab, describe_chars

__all__ = ["MODEL_OPTIONS", "RESUMABLE_CHANGES", "TRAIN_OPTIONS", "prepare_out_dir", "split_options", "train"]


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate keyword options into model and training fields; anything else is an error."""
    unknown = set(options) - set(MODEL_OPTIONS) - set(TRAIN_OPTIONS)
    if unknown:
        raise CharLSTMError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    model = {k: v for k, v in options.items() if k in MODEL_OPTIONS and v is not None}
    train = {k: v for k, v in options.items() if k in TRAIN_OPTIONS and v is not None}
    return model, train


MEMMAP_BYTES_ENV = "CHARLSTM_MEMMAP_BYTES"


def memmap_threshold() -> int:
    """Bytes of text above which the encoded ids live in a memory-mapped file: a quarter of
    this machine's memory (1 GiB where that cannot be read). The environment variable
    CHARLSTM_MEMMAP_BYTES, when set to a whole number, replaces it (tests lower it so that
    processes started by torchrun take the memory-mapped path on a small text)."""
    override = os.environ.get(MEMMAP_BYTES_ENV)
    if override is not None:
        try:
            return int(override)
        except ValueError:
            raise CharLSTMError(
                f"{MEMMAP_BYTES_ENV} must be a whole number of bytes, not {override!r}"
            ) from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (AttributeError, ValueError, OSError):
        return 1 << 30


def load_corpus(paths: list[str | Path], encoding: str, out_dir: Path, ctx: DistContext) -> Corpus:
    """Encode the corpus; one too large to hold comfortably in memory is memory-mapped from
    `out_dir/corpus.npy`, which rank 0 writes while the other ranks wait, then map."""
    files = find_text_files(paths) if paths else []
    if sum(f.stat().st_size for f in files) <= memmap_threshold():
        return prepare_corpus(files, encoding)
    memmap_path = out_dir / "corpus.npy"
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        corpus = prepare_corpus(files, encoding, memmap_path)
    ctx.barrier()
    if not ctx.is_main:
        corpus = prepare_corpus(files, encoding, memmap_path, write=False)
    return corpus


def train(
    paths: Iterable[str | Path] = (),
    out_dir: str | Path = "runs/charlstm",
    *,
    encoding: str = "utf-8",
    overwrite: bool = False,
    resume: bool = False,
    preset: str = "auto",
    hooks: Hooks | None = None,
    init_from: str | Path | None = None,
    **options: Any,
) -> Path:
    """Train on the text files or folders in `paths` (none: the bundled novel); returns `out_dir`.

    `options` are the fields of `ModelConfig` and `TrainConfig` (`hidden_size=256`,
    `max_time=60`, ...; docs/flags.md). Those not given come from `preset`: "auto" sizes the
    model and batch for the corpus and the device, "tutorial" is the tutorial's settings.
    Writes `out_dir/best`, `out_dir/last` and `out_dir/metrics.jsonl`; `resume=True` continues
    the run in `out_dir` exactly where its `last` checkpoint stopped. `hooks` (a `Hooks`
    subclass) sees the run's summary, each step and each validation (with a short sample), and
    can stop the run. Under torchrun each process trains its share of the streams.
    `init_from` (a checkpoint or run folder) starts a new run from its weights and architecture,
    the vocabulary grown to the new text's characters (docs/finetune.md).
    """
    out_dir, paths, hooks = Path(out_dir), list(paths), hooks or Hooks()
    model_options, train_options = split_options(options)
    start, given_train = None, set(train_options)
    if init_from is not None:
        if resume:
            raise CharLSTMError("--init-from starts a new run, --resume continues one: give only one")
        start = open_init_from(init_from)
        model_options = start.model_options(model_options)
        train_options.setdefault("learning_rate", start.learning_rate)
    resumed = None
    if resume:
        resumed, paths, model_options, train_options = open_resume(
            out_dir, paths, model_options, train_options
        )
        encoding = resumed["training"].get("encoding", encoding)
    elif preset not in PRESETS:
        raise CharLSTMError(f"--preset must be one of {', '.join(PRESETS)}, not {preset!r}")
    else:
        check_out_dir(out_dir, overwrite)  # before the corpus is read: that can take minutes
    if not resumed and train_options.get("val_file"):  # absolute, so eval and resume work from anywhere
        val_file = Path(train_options["val_file"])
        if not val_file.is_file():
            raise CharLSTMError(f"{val_file}: no such file for --val-file")
        train_options["val_file"] = str(val_file.resolve())
    # Options given are checked before anything is read or written (the preset fills the rest).
    given = TrainConfig.from_dict(train_options)
    ModelConfig(vocab_size=2, **model_options)
    device = pick_device(given.device)
    ctx = context_from_env()
    if given.batch_size % ctx.world_size and "batch_size" in train_options:
        raise CharLSTMError(
            f"--batch-size {given.batch_size} must be a multiple of {ctx.world_size} processes"
        )
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
    ctx = setup(given.backend, device.type, given.dist_timeout)
    try:
        corpus = load_corpus(paths, encoding, out_dir, ctx)
        notes: list[str] = []
        if resumed:
            if resumed["training"].get("init_from"):  # a fine-tuning run's ids are in the union
                corpus = reencode(corpus, Vocab(resumed["vocab"]))
            check_same_text(corpus, resumed)
        else:
            val_frac = train_options.get("val_frac", 0.1)
            chosen, notes = preset_options(preset, len(corpus.ids), len(corpus.vocab), device.type, val_frac)
            overridden = sorted(set(chosen) & (set(model_options) | set(train_options)))
            if overridden:
                given_flags = ", ".join(f"--{k.replace('_', '-')}" for k in overridden)
                notes.append(f"given options win over the preset's: {given_flags}")
            model_options = {**{k: v for k, v in chosen.items() if k in MODEL_OPTIONS}, **model_options}
            train_options = {**{k: v for k, v in chosen.items() if k in TRAIN_OPTIONS}, **train_options}
            if start:
                corpus = reencode(corpus, union_vocab(start.vocab, corpus.vocab))
                notes = start.notes(chosen, given_train, preset)
        config = TrainConfig.from_dict(train_options)
        model_config = ModelConfig(vocab_size=len(corpus.vocab), **model_options)
        if config.precision == "bf16" and device.type != "cuda":
            notes.append(f"--precision bf16 applies on CUDA only: training in fp32 on {device.type}")
        trainer = _build_trainer(corpus, config, model_config, device, ctx)
        if start:
            trainer.model.load_state_dict(start.widened_state(corpus.vocab, config.seed))
        if not resumed and ctx.is_main:
            prepare_out_dir(out_dir, overwrite)
        origin = start.facts() if start else (resumed or {}).get("training", {}).get("init_from")
        trainer.hooks = run_folder = RunFolder(out_dir, corpus, trainer, hooks, origin)
        if resumed:
            last = out_dir / "last"
            trainer.model.load_state_dict(load_checkpoint(last, device).model.state_dict())
            restore(trainer, *load_trainer_state(last), where=str(last))
            progress, patience = trainer.progress, config.stop_patience
            # a larger --stop-patience revives an early-stopped run
            progress.converged = bool(patience) and progress.evals_since_best >= patience
            check_work_left(trainer, out_dir)
            if options.get("learning_rate") is not None:  # replaces the rate the run had reached
                trainer.progress.lr_scale = 1.0
            if ctx.is_main:
                MetricsLog(out_dir / "metrics.jsonl").rewrite(trainer.progress.history)
        if ctx.is_main:
            summary = {**_summary(trainer, corpus, resumed is not None), "chosen": notes}
            if start:
                summary["init_from"] = {**start.facts(), "added": start.added(corpus.vocab)}
            hooks.on_start(summary)
        trainer.fit()
        run_folder.plot_curves()
        # Every rank leaves together: a rank that tears its process group down while rank 0 still
        # writes can abort in the communication library's threads.
        ctx.barrier()
    finally:
        teardown(ctx)
    return out_dir


def _build_trainer(
    corpus: Corpus,
    config: TrainConfig,
    model_config: ModelConfig,
    device: torch.device,
    ctx: DistContext,
) -> Trainer:
    if config.batch_size % ctx.world_size:
        raise CharLSTMError(
            f"--batch-size {config.batch_size} must be a multiple of {ctx.world_size} processes"
        )
    if config.val_file:
        train_ids = corpus.ids
        val_text = read_text_file(Path(config.val_file), corpus.encoding)
        unknown = corpus.vocab.unknown(val_text)
        if unknown:
            raise CharLSTMError(
                f"{config.val_file}: --val-file has characters the training text lacks: "
                f"{describe_chars(unknown)}; validate on text written in the same characters"
            )
        val_ids = encode_corpus(val_text, corpus.vocab)
    else:
        train_ids, val_ids = split_train_val(corpus.ids, config.val_frac)
    rows = ctx.row_slice(config.batch_size)
    train_batches = StreamBatches(
        train_ids, config.batch_size, config.seq_len, device, rows=rows, wrap_targets=config.wrap_targets
    )
    held_out = HeldOut(val_ids, config.batch_size, config.seq_len, device, ctx)
    torch.manual_seed(config.seed)
    model = CharRNN(model_config)
    if ctx.rank:
        torch.manual_seed(config.seed + ctx.rank)  # same weights, different dropout per rank
    return Trainer(model.to(device), config, train_batches, held_out, dist=ctx)


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

