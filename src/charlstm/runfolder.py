"""The run folder (`best/`, `last/`, `metrics.jsonl`): made ready for a new run without losing an old
one, opened for a resume with the options checked against it, and written while training by
`RunFolder`, the hooks that save checkpoints and metrics and pass progress on to the caller.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .checkpoint import CONFIG_FILE, read_config, recover_interrupted_write, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import BUNDLED_NAME, Corpus, find_text_files
from .errors import CharLSTMError
from .metrics import MetricsLog
from .plot import write_curves
from .runstate import capture
from .sample import default_prime, generate_texts
from .trainer import Hooks, Trainer

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
# curves.png is redrawn at a save at most this often (a plot costs a fraction of a second), and at the end.
CURVES_EVERY_S = 60.0


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
    if "lr_final" not in saved_train:  # saved before --lr-final: its decay was heading for a tenth
        saved_train = {**saved_train, "lr_final": 0.1}
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


def check_same_text(corpus: Corpus, resumed: dict[str, Any]) -> None:
    then = resumed["training"].get("num_chars")
    if list(corpus.vocab.chars) != resumed["vocab"] or len(corpus.ids) != then:
        raise CharLSTMError(
            f"cannot resume: the text has changed since the run started "
            f"({len(corpus.ids):,} characters now, {then} then); start a new run instead"
        )


def check_work_left(trainer: Trainer, out_dir: Path) -> None:
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
    """Writes the run folder and forwards progress to the caller's hooks, on rank 0 only; every
    rank asks the caller whether to stop (a signal reaches each process under torchrun)."""

    def __init__(
        self,
        out_dir: Path,
        corpus: Corpus,
        trainer: Trainer,
        caller: Hooks,
        origin: dict[str, str] | None = None,
    ) -> None:
        self.out_dir, self.corpus, self.caller = out_dir, corpus, caller
        self.origin = origin  # the checkpoint a fine-tuning run started from (path, sha256)
        self.is_main = trainer.dist.is_main
        self.metrics = MetricsLog(out_dir / "metrics.jsonl")
        self.plotted_at = -float("inf")

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
            **({"init_from": self.origin} if self.origin else {}),
        }

    def on_step(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.is_main:
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
            if time.monotonic() - self.plotted_at >= CURVES_EVERY_S:
                self.plot_curves()
            self.caller.on_save(trainer)

    def plot_curves(self) -> None:
        """Redraw `curves.png`; a convenience, so a missing matplotlib or a failed plot never stops
        training."""
        self.plotted_at = time.monotonic()
        if self.is_main and self.metrics.path.exists():
            try:
                write_curves(self.out_dir)
            except (CharLSTMError, OSError, ValueError):
                pass

    def should_stop(self) -> bool:
        return self.caller.should_stop()
