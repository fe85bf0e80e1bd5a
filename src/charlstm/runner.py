"""A training job, the one `train()`: options -> corpus -> batches -> model -> trainer, with the run
folder (`best/`, `last/`, `metrics.jsonl`), resuming, and data parallelism wired in.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import fields
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
    encode_corpus,
    find_text_files,
    prepare_corpus,
    read_text_file,
    split_train_val,
)
from .distributed import DistContext, context_from_env, setup, teardown
from .errors import CharLSTMError
from .evaluation import HeldOut
from .metrics import MetricsLog
from .model import CharRNN
from .presets import PRESETS, preset_options
from .runstate import capture, restore
from .sample import default_prime, generate_texts
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
        "stop_patience",
        "sample_length",
        "device",
        "backend",
        "dist_timeout",
        "learning_rate",  # to recover from a divergence; it replaces the learning rate reached
        "grad_clip",
    }
)
RUN_FILES = ("best", "last", "metrics.jsonl")


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate keyword options into model and training fields; anything else is an error."""
    unknown = set(options) - set(MODEL_OPTIONS) - set(TRAIN_OPTIONS)
    if unknown:
        raise CharLSTMError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    model = {k: v for k, v in options.items() if k in MODEL_OPTIONS and v is not None}
    train = {k: v for k, v in options.items() if k in TRAIN_OPTIONS and v is not None}
    return model, train


def check_out_dir(out_dir: Path, overwrite: bool) -> list[Path]:
    """Refuse an `out_dir` that holds a run unless `overwrite`; the paths a new run replaces."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CharLSTMError(f"{out_dir}: exists and is not a folder; choose another --out")
    held = [name for name in RUN_FILES if (out_dir / name).exists() or (out_dir / f".{name}.old").exists()]
    if held and not overwrite:
        raise CharLSTMError(
            f"{out_dir}: already holds a run ({', '.join(held)}); pass --resume {out_dir} to continue "
            "it, --overwrite to replace it, or choose another --out"
        )
    # Folders set aside by an interrupted save count too: recovery would bring them back.
    aside = [f".{name}.{suffix}" for name in RUN_FILES for suffix in ("old", "tmp")]
    names = [*RUN_FILES, *aside, "curves.png"]
    return [out_dir / name for name in names if (out_dir / name).exists()]


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Make `out_dir` ready for a new run; never silently replaces an earlier one."""
    for target in check_out_dir(out_dir, overwrite):
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
) -> tuple[dict[str, Any], list[str | Path], dict[str, Any], dict[str, Any]]:
    """The config of the run in `out_dir/last`, its data paths, and the options merged with the
    saved ones; options that contradict the run are refused."""
    last = out_dir / "last"
    recover_interrupted_write(last)
    if not (last / CONFIG_FILE).is_file():
        raise CharLSTMError(f"{out_dir}: no run to resume (no last/ checkpoint); start it without --resume")
    config = read_config(last)
    training = config.get("training", {})
    saved_model, saved_train = config["model"], training.get("config", {})
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
    saved_sources = training.get("data", [])
    sources: list[str | Path] = [] if saved_sources == [BUNDLED_NAME] else list(saved_sources)
    given = [str(f.resolve()) for f in find_text_files(paths)] if paths else None
    if given is not None and given != [str(Path(s).resolve()) for s in sources]:
        conflicts.append(f"data {[str(p) for p in paths]} (the run trained on {saved_sources})")
    if conflicts:
        raise CharLSTMError(
            f"cannot resume {out_dir} with options that contradict it: {'; '.join(conflicts)}; "
            "drop them, or start a new run in another --out"
        )
    model_options = {k: saved_model[k] for k in MODEL_OPTIONS if k in saved_model}
    return config, sources, model_options, {**saved_train, **train_options}


def memmap_threshold() -> int:
    """Bytes of text above which the encoded ids live in a memory-mapped file: a quarter of
    this machine's memory (1 GiB where that cannot be read)."""
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
    """
    out_dir, paths, hooks = Path(out_dir), list(paths), hooks or Hooks()
    model_options, train_options = split_options(options)
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
            _check_same_text(corpus, resumed)
        else:
            val_frac = train_options.get("val_frac", 0.1)
            chosen, notes = preset_options(preset, len(corpus.ids), len(corpus.vocab), device.type, val_frac)
            overridden = sorted(set(chosen) & (set(model_options) | set(train_options)))
            if overridden:
                given_flags = ", ".join(f"--{k.replace('_', '-')}" for k in overridden)
                notes.append(f"given options win over the preset's: {given_flags}")
            model_options = {**{k: v for k, v in chosen.items() if k in MODEL_OPTIONS}, **model_options}
            train_options = {**{k: v for k, v in chosen.items() if k in TRAIN_OPTIONS}, **train_options}
        config = TrainConfig.from_dict(train_options)
        model_config = ModelConfig(vocab_size=len(corpus.vocab), **model_options)
        if config.precision == "bf16" and device.type != "cuda":
            notes.append(f"--precision bf16 applies on CUDA only: training in fp32 on {device.type}")
        trainer = _build_trainer(corpus, config, model_config, device, ctx)
        if not resumed and ctx.is_main:
            prepare_out_dir(out_dir, overwrite)
        trainer.hooks = RunFolder(out_dir, corpus, trainer, hooks if ctx.is_main else Hooks())
        if resumed:
            last = out_dir / "last"
            trainer.model.load_state_dict(load_checkpoint(last, device).model.state_dict())
            restore(trainer, *load_trainer_state(last), where=str(last))
            _check_work_left(trainer, out_dir)
            if options.get("learning_rate") is not None:  # replaces the rate the run had reached
                for group in trainer.optimizer.param_groups:
                    group["lr"] = config.learning_rate
            if ctx.is_main:
                MetricsLog(out_dir / "metrics.jsonl").rewrite(trainer.progress.history)
        if ctx.is_main:
            hooks.on_start({**_summary(trainer, corpus, resumed is not None), "chosen": notes})
        trainer.fit()
    finally:
        teardown(ctx)
    return out_dir


def _check_same_text(corpus: Corpus, resumed: dict[str, Any]) -> None:
    then = resumed["training"].get("num_chars")
    if list(corpus.vocab.chars) != resumed["vocab"] or len(corpus.ids) != then:
        raise CharLSTMError(
            f"cannot resume: the text has changed since the run started "
            f"({len(corpus.ids):,} characters now, {then} then); start a new run instead"
        )


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


def _check_work_left(trainer: Trainer, out_dir: Path) -> None:
    """A resumed run with nothing left to do says why, instead of saving what it had."""
    progress, config = trainer.progress, trainer.config
    if progress.converged:
        raise CharLSTMError(
            f"{out_dir}: the run already stopped early at step {progress.step} (no new best in "
            f"{progress.evals_since_best} validations, --stop-patience {config.stop_patience}); "
            "pass a larger --stop-patience to train on"
        )
    if progress.step >= trainer.total_steps:
        raise CharLSTMError(
            f"{out_dir}: the run already finished its {trainer.total_steps} steps; "
            "pass a larger --max-steps or --epochs to train on"
        )
    if config.max_time is not None and progress.elapsed_s >= config.max_time:
        raise CharLSTMError(
            f"{out_dir}: the run already used its --max-time of {config.max_time:g} s "
            f"({progress.elapsed_s:.0f} s trained); pass a larger --max-time to train on"
        )


class RunFolder(Hooks):
    """Writes the run folder (rank 0 only) and forwards every event to the caller's hooks."""

    def __init__(self, out_dir: Path, corpus: Corpus, trainer: Trainer, caller: Hooks) -> None:
        self.out_dir, self.corpus, self.caller = out_dir, corpus, caller
        self.is_main = trainer.dist.is_main
        self.metrics = MetricsLog(out_dir / "metrics.jsonl")

    def facts(self, trainer: Trainer) -> dict[str, Any]:
        progress = trainer.progress
        return {
            "charlstm_version": __version__,
            "config": trainer.config.to_dict(),
            "data": self.corpus.sources,
            "encoding": self.corpus.encoding,
            "num_chars": len(self.corpus.ids),
            "device": str(trainer.device),
            "world_size": trainer.dist.world_size,
            "step": progress.step,
            "epoch": round(progress.epoch + progress.window / trainer.steps_per_epoch, 4),
            "val_loss": progress.history[-1]["val_loss"] if progress.history else None,
            "best_val_loss": progress.best_val_loss,
            "elapsed_s": round(progress.elapsed_s, 2),
        }

    def on_step(self, trainer: Trainer, loss: torch.Tensor) -> None:
        self.caller.on_step(trainer, loss)

    def on_eval(self, trainer: Trainer, record: dict[str, Any], is_best: bool) -> None:
        if not self.is_main:
            return
        self.metrics.write(record)
        if is_best:
            save_checkpoint(self.out_dir / "best", trainer.model, self.corpus.vocab, self.facts(trainer))
        length = trainer.config.sample_length
        if length:
            record = {**record, "sample": self.sample(trainer, length)}
        self.caller.on_eval(trainer, record, is_best)

    def sample(self, trainer: Trainer, length: int) -> str:
        """A short sample seeded by the step: the same run shows the same text, and drawing it
        takes nothing from the training's random generators (a resumed run stays exact)."""
        vocab = self.corpus.vocab
        prime = default_prime(vocab)
        seed = trainer.config.seed * 1_000_003 + trainer.progress.step
        text = generate_texts(trainer.model, vocab, vocab.encode(prime), length, temperature=0.8, seed=seed)
        return text[0]

    def on_save(self, trainer: Trainer) -> None:
        state = capture(trainer)  # collective: every rank takes part
        if self.is_main:
            facts = self.facts(trainer)
            save_checkpoint(self.out_dir / "last", trainer.model, self.corpus.vocab, facts, state)

    def should_stop(self) -> bool:
        return self.caller.should_stop()


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

