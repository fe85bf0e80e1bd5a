"""`charlstm train` on a terminal: the progress bar and validation lines, and Ctrl-C / SIGTERM
asking the run to stop and save."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

import torch

from .api import load, train
from .cli_parser import given_options
from .config import ModelConfig, TrainConfig
from .distributed import context_from_env
from .metrics import format_record
from .trainer import Hooks, Trainer
from .vocab import describe_chars

PROGRESS_REFRESH_S = 1.0


def busy_cpu_advice(load: float, cores: int, threads: int) -> str | None:
    """Advice when other programs already keep the cores busy. Two programs whose OpenMP threads
    outnumber the cores wait on each other, and one thread can then train much faster than two
    (docs/benchmarks.md, "Threads on a busy machine")."""
    free = cores - load
    if threads <= 1 or free >= threads - 1:  # a core short is not yet contention worth a note
        return None
    fewer = max(1, int(free))
    return (
        f"this machine is busy (load {load:.1f} on {cores} cores) and PyTorch uses {threads} threads: "
        f"if training is slow, --threads {fewer} can be much faster"
    )


class ProgressReporter(Hooks):
    """A tqdm bar (step/total, epoch, losses, chars/s, ETA) and a line per evaluation with a
    short sample. When stderr is not a terminal (a log file, a pipe) only the lines are written.
    Ctrl-C and SIGTERM (through `signals`) ask the run to stop and save."""

    def __init__(self, quiet: bool, signals: StopSignals) -> None:
        self.quiet = quiet
        self.signals = signals
        self.bar: Any = None
        self.world_size = 1
        self.last_refresh = 0.0
        self.val = "-"

    def on_start(self, summary: dict[str, Any]) -> None:
        model, config = summary["model"], summary["config"]
        lines = [
            f"data: {', '.join(summary['data'])} ({summary['num_chars']:,} characters, "
            f"vocabulary {summary['vocab_size']})",
            f"model: {model['num_layers']} x {model['hidden_size']} {model['cell'].upper()}, "
            f"dropout {model['dropout']}, {summary['parameters']:,} parameters, on {summary['device']}",
            f"training: batch {config['batch_size']} x seq {config['seq_len']}, lr "
            f"{config['learning_rate']}, {summary['steps_per_epoch']} steps per epoch, "
            f"{summary['total_steps']} steps, validation every {summary['eval_interval']} steps",
        ]
        lines += [f"chosen: {why}" for why in summary.get("chosen", [])]
        if summary["device"] == "cpu" and summary["world_size"] == 1 and hasattr(os, "getloadavg"):
            advice = busy_cpu_advice(os.getloadavg()[0], os.cpu_count() or 1, torch.get_num_threads())
            lines += [f"note: {advice}"] if advice else []
        if "init_from" in summary:
            start, added = summary["init_from"], summary["init_from"]["added"]
            lines.append(
                f"init from: {start['path']} (weights sha256 {start['sha256'][:12]}...); "
                + (f"{len(added)} new characters: {describe_chars(added)}" if added else "no new characters")
            )
        self.world_size = summary["world_size"]
        if self.quiet:
            return
        print("\n".join(lines), file=sys.stderr)
        if summary["resumed"]:
            print(f"resuming at step {summary['start_step']}", file=sys.stderr)
        if not sys.stderr.isatty():
            return
        from tqdm import tqdm

        self.bar = tqdm(
            total=summary["total_steps"],
            initial=summary["start_step"],
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_step(self, trainer: Trainer, loss: torch.Tensor) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.monotonic()
        if now - self.last_refresh >= PROGRESS_REFRESH_S:
            self.last_refresh = now
            progress = trainer.progress
            epoch = progress.epoch + progress.window / trainer.steps_per_epoch
            rate = self.bar.format_dict.get("rate") or 0.0
            batches = trainer.train_batches
            chars = rate * batches.batch_size * batches.seq_len * self.world_size  # every rank's
            self.bar.set_postfix_str(
                f"epoch {epoch:.2f} loss {loss.item():.3f} val {self.val} {chars:,.0f} chars/s",
                refresh=False,
            )

    def on_eval(self, trainer: Trainer, record: dict[str, float], is_best: bool) -> None:
        self.val = f"{record['val_loss']:.3f}"
        line = format_record(record) + ("  *best" if is_best else "")
        if record.get("sample"):
            line += "\n    " + record["sample"].replace("\n", "\n    ")
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        return self.signals.should_stop()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopSignals:
    """Ctrl-C and SIGTERM ask training to stop after the current step and save; a second
    Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def should_stop(self) -> bool:
        return self.received is not None


def run_train(args: argparse.Namespace) -> int:
    options = {**given_options(args, ModelConfig, ("vocab_size",)), **given_options(args, TrainConfig)}
    out_dir = args.resume or args.out
    with StopSignals() as signals:
        reporter = ProgressReporter(args.quiet, signals)
        try:
            out = train(
                args.paths,
                out_dir,
                encoding=args.encoding,
                overwrite=args.overwrite,
                resume=args.resume is not None,
                preset=args.preset,
                hooks=reporter,
                init_from=args.init_from,
                **options,
            )
        finally:
            reporter.close()
    if signals.received is not None:
        if not context_from_env().is_main:
            return 128 + signals.received
        name = "SIGINT" if signals.received == signal.SIGINT else "SIGTERM"
        print(
            f"charlstm: stopped by {name}; {out}/last is saved; resume with: charlstm train --resume {out}",
            file=sys.stderr,
        )
        return 128 + signals.received
    if not context_from_env().is_main:
        return 0
    best = load(out)
    print(
        f"saved {out}/best (val loss {best.training.get('best_val_loss', float('nan')):.4f} nats/char) "
        f"and {out}/last; sample with: charlstm sample {out}"
    )
    return 0
