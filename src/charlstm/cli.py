"""Command line: `charlstm train | sample | serve | eval | info`. The only module that reads argv,
prints, and sets exit codes; everything else is the Python API."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
import typing
from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Any

import torch

from . import __version__
from .api import CharModel, load, train
from .checkpoint import resolve_checkpoint
from .config import DEVICES, ModelConfig, TrainConfig
from .data import read_corpus
from .distributed import context_from_env
from .errors import CharLSTMError
from .metrics import format_record
from .presets import AUTO_CHOSEN, PRESETS
from .sample import Completion, Token
from .trainer import Hooks, Trainer
from .vocab import describe_chars

PROGRESS_REFRESH_S = 1.0
CKPT_HELP = "checkpoint folder, or a run folder (its best/); none: the bundled pretrained model"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, title: str, skip: Sequence[str] = ()
) -> None:
    """One flag per dataclass field: the type, default, choices and help come from the field."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        default = None if f.default is MISSING else f.default
        shown = "" if default is None else f" (default: {default})"
        if f.name in AUTO_CHOSEN:
            shown = f" (default: chosen by --preset auto; tutorial: {default})"
        if base is bool:
            group.add_argument(
                _flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"]
            )
            continue
        group.add_argument(
            _flag(f.name),
            type=base,
            default=None,
            choices=f.metadata.get("choices"),
            help=f.metadata.get("help", "") + shown,
        )


def _given(args: argparse.Namespace, cls: type, skip: Sequence[str] = ()) -> dict[str, Any]:
    """Only the options the user typed, so the dataclass defaults stay the one source of truth."""
    return {
        f.name: getattr(args, f.name)
        for f in fields(cls)
        if f.name not in skip and getattr(args, f.name, None) is not None
    }


def add_common_flags(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    """Flags accepted before and after the subcommand (after it, they are only set when given)."""
    parser.add_argument("--verbose", action="store_true", default=default, help="show tracebacks on errors")
    parser.add_argument(
        "--threads", type=int, default=default, help="CPU threads for PyTorch (default: its own choice)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="charlstm", description="Character-level LSTM/GRU/RNN language models."
    )
    parser.add_argument("--version", action="version", version=f"charlstm {__version__}")
    add_common_flags(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model on text files (default: the bundled novel)")
    p.add_argument("paths", nargs="*", metavar="PATH", help="text files or folders of *.txt files")
    p.add_argument("--out", default="runs/charlstm", help="run folder (default: runs/charlstm)")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the files (default: utf-8)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="auto",
        help="defaults for options not given: auto (sized for the corpus and device) or tutorial",
    )
    p.add_argument(
        "--resume", metavar="DIR", default=None, help="continue the run in DIR exactly where DIR/last stopped"
    )
    p.add_argument(
        "--init-from",
        metavar="CKPT",
        default=None,
        help="fine-tune: a new run starting from this checkpoint's (or run's) weights and architecture",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-evaluation lines")
    add_config_flags(p, ModelConfig, "model", skip=("vocab_size",))
    add_config_flags(p, TrainConfig, "training")

    p = commands.add_parser("sample", help="generate text from a checkpoint")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help=CKPT_HELP)
    p.add_argument("--prime", default=None, help="text to start from (default: a line break)")
    p.add_argument("--length", type=int, default=500, help="characters to generate (default: 500)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 is greedy (default: 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest characters")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--num-samples", type=int, default=1, help="samples, generated as one batch")
    p.add_argument("--seed", type=int, default=None, help="the same seed gives the same text")
    p.add_argument("--drop-unknown", action="store_true", help="drop prime characters never seen")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where to run (default: cpu)")
    p.add_argument(
        "--stop", action="append", default=[], metavar="S", help="end before text S (repeatable; S not shown)"
    )
    p.add_argument("--no-echo", action="store_true", help="do not print the prime before the sample")
    p.add_argument(
        "--logprobs", type=int, default=None, metavar="N",
        help="after the sample, list each character's log-probability and the N (0-5) likeliest "
        "alternatives on stderr",
    )
    p.add_argument("--output", metavar="FILE", default=None, help="write the sample to FILE, not stdout")
    p.add_argument(
        "--novelty",
        action="store_true",
        help="print the share of the sample's 10-, 20-, 40-character substrings found in the training text",
    )

    p = commands.add_parser("serve", help="serve a model over HTTP (OpenAI-compatible) with a playground")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help=CKPT_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None, help="require this key as `Authorization: Bearer KEY`")
    p.add_argument("--max-batch", type=int, default=64, help="streams stepped together (default: 64)")
    p.add_argument(
        "--max-tokens-cap", type=int, default=4096, help="largest max_tokens allowed (default: 4096)"
    )
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where to run (default: cpu)")

    p = commands.add_parser("eval", help="score a text: loss, bits per character, perplexity")
    p.add_argument(
        "paths",
        nargs="*",
        metavar="[CKPT] PATH",
        help=f"CKPT: {CKPT_HELP}; then text files or folders, - for standard input (none: the run's "
        "own validation text)",
    )
    p.add_argument(
        "--split", choices=("val",), default=None, help="score the run's held-out validation text"
    )
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where to run (default: cpu)")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = commands.add_parser("info", help="describe a checkpoint")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help=CKPT_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = commands.add_parser("export", help="write one step of a model as ONNX (needs charlstm[export])")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help=CKPT_HELP)
    p.add_argument("--format", default="onnx", help="export format (default: onnx, the only one so far)")
    p.add_argument("-o", "--output", required=True, metavar="PATH", help="file to write, e.g. model.onnx")
    p.add_argument("--overwrite", action="store_true", help="replace PATH (and vocab.json beside it)")
    add_inspect_parsers(commands)
    for subparser in commands.choices.values():
        add_common_flags(subparser)
    return parser


def add_inspect_parsers(commands: Any) -> None:
    p = commands.add_parser("inspect", help="write an HTML page of predictions, units and gates on a text")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?", help=CKPT_HELP)
    p.add_argument("text", nargs="?", default=None, metavar="TEXT", help="the text to inspect")
    p.add_argument("--file", default=None, metavar="F", help="inspect this text file instead")
    p.add_argument(
        "--split", choices=["val"], default=None, help="the held-out end of the training text (the default)"
    )
    p.add_argument("--sample", type=int, default=None, metavar="N", help="inspect a fresh N-character sample")
    p.add_argument("--seed", type=int, default=None, help="seed for --sample")
    p.add_argument("--temperature", type=float, default=1.0, help="temperature for --sample (default: 1.0)")
    p.add_argument(
        "-o",
        "--output",
        default="inspect.html",
        metavar="PAGE",
        help="the page to write (default: inspect.html)",
    )
    p.add_argument(
        "--max-chars",
        type=int,
        default=5000,
        metavar="N",
        help="inspect the first N characters (default: 5000)",
    )
    p.add_argument("--encoding", default="utf-8", help="encoding of --file (default: utf-8)")
    p.add_argument("--device", default="cpu", choices=DEVICES, help="where to run (default: cpu)")

    p = commands.add_parser("plot", help="plot the loss curves of one or more training runs to a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (with metrics.jsonl)")
    p.add_argument(
        "-o", "--output", default="curves.png", metavar="PNG", help="the PNG to write (default: curves.png)"
    )
    p.add_argument("--x", choices=["step", "time", "chars"], default="step", help="x axis (default: step)")


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
    options = {**_given(args, ModelConfig, ("vocab_size",)), **_given(args, TrainConfig)}
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


def run_sample(args: argparse.Namespace) -> int:
    model = load(args.checkpoint, args.device)
    options: dict[str, Any] = dict(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        drop_unknown=args.drop_unknown,
        stop=args.stop,
        logprobs=args.logprobs,
    )
    if args.top_k is not None and args.top_k > len(model.vocab):
        print(
            f"note: --top-k {args.top_k} is above the vocabulary size; using {len(model.vocab)}",
            file=sys.stderr,
        )
        options["top_k"] = len(model.vocab)
    echo = not args.no_echo
    if args.num_samples == 1:
        # Options are checked here, before anything is written.
        samples: Any = model.stream(args.prime, args.length, echo=echo, **options)
    else:
        samples = model.generate(args.prime, args.length, num_samples=args.num_samples, echo=echo, **options)
    out = sys.stdout if args.output is None else open_output(args.output)
    texts: list[str] = []
    try:
        if args.num_samples == 1:
            tokens: list[Token] = []
            pieces: list[str] = []
            for piece in samples:
                if isinstance(piece, Token):
                    tokens.append(piece)
                    piece = piece.char
                out.write(piece)
                out.flush()
                pieces.append(piece)
            out.write("\n")
            texts.append("".join(pieces))
            print_logprobs(tokens, args.logprobs)
        else:
            for number, result in enumerate(samples, start=1):
                text = result.text if isinstance(result, Completion) else result
                print(f"===== sample {number} of {len(samples)} =====", file=out)
                print(text, file=out)
                texts.append(text)
                if isinstance(result, Completion):
                    print(f"===== log-probabilities of sample {number} =====", file=sys.stderr)
                    print_logprobs(result.tokens, args.logprobs)
    finally:
        if out is not sys.stdout:
            out.close()
    if args.novelty:  # of the generated text alone, not the prime
        shown = len(args.prime or "") if echo else 0
        print_novelty(model, [text[shown:] for text in texts])
    if args.output is not None:
        print(f"wrote the sample to {args.output}", file=sys.stderr)
    return 0


def open_output(path: str) -> typing.TextIO:
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise CharLSTMError(f"cannot write --output {path}: {exc.strerror}; choose another path") from exc


def print_logprobs(tokens: Sequence[Token], count: int | None) -> None:
    """One line per generated character: the character, its log-probability, the alternatives."""
    if count is None:
        return
    for token in tokens:
        alternatives = "  ".join(f"{char!r} {value:.3f}" for char, value in token.top_logprobs.items())
        print(f"{token.char!r}\t{token.logprob:.3f}\t{alternatives}", file=sys.stderr)


def run_serve(args: argparse.Namespace) -> int:
    try:
        from .server import serve
    except ImportError as exc:
        raise CharLSTMError(
            f"serving needs the [serve] extra ({exc.name} is missing): pip install 'charlstm[serve]'"
        ) from exc
    model = load(args.checkpoint, args.device)
    serve(
        model,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_tokens_cap=args.max_tokens_cap,
        on_ready=lambda url: print(f"serving {model.path} at {url} (Ctrl-C stops)", file=sys.stderr),
    )
    return 0


def print_novelty(model: CharModel, samples: list[str]) -> None:
    """On stderr, so the sample on stdout stays clean: how much of each sample is copied."""
    from .inspection import describe_novelty, novelty, training_text

    reference = training_text(model)
    for number, sample in enumerate(samples, start=1):
        label = f"sample {number}: " if len(samples) > 1 else ""
        print(f"novelty: {label}{describe_novelty(novelty(sample, reference))}", file=sys.stderr)


def split_checkpoint(paths: list[str]) -> tuple[str | None, list[str]]:
    """`[CKPT] PATH ...`: the first path names the model when it is a checkpoint or run folder;
    otherwise every path is a text and the model is the bundled one."""
    if paths and paths[0] != "-":
        try:
            resolve_checkpoint(paths[0])
            return paths[0], paths[1:]
        except CharLSTMError:
            pass
    return None, paths


def run_eval(args: argparse.Namespace) -> int:
    checkpoint, paths = split_checkpoint(args.paths)
    if args.split and paths:
        raise CharLSTMError("give either --split val or texts to score, not both")
    model = load(checkpoint, args.device)
    if paths == ["-"]:
        text = sys.stdin.read()
    elif paths:
        text, _ = read_corpus(paths, args.encoding)
    else:
        text = None  # the run's own held-out validation text
    result = model.evaluate(text)
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"loss {result['loss']:.4f} nats/char  {result['bpc']:.4f} bits/char  "
            f"perplexity {result['perplexity']:.3f}  ({result['num_chars']:,} characters, "
            f"{result['unknown_chars']:,} outside the vocabulary)"
        )
    return 0


def run_info(args: argparse.Namespace) -> int:
    info = load(args.checkpoint).info()
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return 0
    model, training = info["model"], info["training"]
    print(f"checkpoint: {info['path']}")
    print(
        f"model: {model['num_layers']} x {model['hidden_size']} {model['cell'].upper()}, dropout "
        f"{model['dropout']}, {info['parameters']:,} parameters"
    )
    print(f"vocabulary: {len(info['vocab'])} characters: {info['vocab']!r}")
    if training:
        print(
            f"trained: {training.get('step')} steps ({training.get('epoch')} epochs) in "
            f"{training.get('elapsed_s')}s on {training.get('device')}; best val loss "
            f"{training.get('best_val_loss')} nats/char; data: {', '.join(training.get('data', []))}"
        )
    start = training.get("init_from")
    if start:
        print(f"fine-tuned from: {start['path']} (weights sha256 {start['sha256']})")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from .export import VOCAB_FILE, check_format, export_onnx  # lazy: onnx is an optional extra

    check_format(args.format)
    path = export_onnx(args.checkpoint, args.output, overwrite=args.overwrite)
    print(f"wrote {path} ({path.stat().st_size:,} bytes) and {path.parent / VOCAB_FILE}; see docs/export.md")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from .inspect_page import write_page
    from .inspection import describe_novelty, training_text, validation_text

    given_paths = [value for value in (args.checkpoint, args.text) if value is not None]
    args.checkpoint, rest = split_checkpoint(given_paths)  # a lone TEXT means the bundled model
    args.text = rest[0] if rest else None
    sources = {"TEXT": args.text, "--file": args.file, "--split": args.split, "--sample": args.sample}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) > 1:
        raise CharLSTMError(f"give one of TEXT, --file, --split val and --sample, not {' and '.join(given)}")
    model = load(args.checkpoint, args.device)
    reference = None
    if args.text is not None:
        text, source = args.text, "the given text"
    elif args.file is not None:
        text, source = read_corpus([args.file], args.encoding)[0], args.file
    elif args.sample is not None:
        text = str(model.generate(None, args.sample, temperature=args.temperature, seed=args.seed))
        source, reference = f"a {args.sample}-character sample", training_text(model)
    else:
        text, source = validation_text(model), "the validation text"
    data = write_page(model, text, args.output, source, args.max_chars, reference)
    summary = data["summary"]
    print(
        f"wrote {args.output}: {summary['characters']:,} characters of {source}, loss {summary['loss']:.4f} "
        f"nats/char ({summary['bpc']:.4f} bits/char); open it in a browser"
    )
    best: dict[str, dict[str, Any]] = {}
    for unit in data["ranking"]:
        best.setdefault(unit["feature"], unit)
    for feature, unit in best.items():
        print(
            f"  best unit for {feature}: layer {unit['layer']} {unit['kind']} unit {unit['unit']} "
            f"(score {unit['score']:.3f})"
        )
    if data["novelty"]:
        print(f"  novelty: {describe_novelty({int(n): s for n, s in data['novelty'].items()})}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from .plot import plot_curves

    curves = plot_curves(args.runs, args.output, args.x)
    print(f"wrote {args.output}")
    for curve in curves:
        best = "no finite val loss" if curve.best is None else f"best val loss {curve.best[1]:.4f} nats/char"
        print(f"  {curve.name}: {len(curve.x)} evaluations, {best}")
    return 0


COMMANDS = {
    "train": run_train,
    "sample": run_sample,
    "serve": run_serve,
    "eval": run_eval,
    "info": run_info,
    "export": run_export,
    "inspect": run_inspect,
    "plot": run_plot,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.threads is not None:
            if args.threads < 1:
                raise CharLSTMError(f"--threads must be at least 1, not {args.threads}")
            torch.set_num_threads(args.threads)
        return COMMANDS[args.command](args)
    except CharLSTMError as exc:
        if args.verbose:
            traceback.print_exc()
        print(f"charlstm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("charlstm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
