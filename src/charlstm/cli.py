"""Command line: `charlstm train | sample | serve | eval | info | export | inspect | plot`. The CLI
modules (this one, cli_parser, cli_train) are the only ones that read argv, print, and set exit
codes; everything else is the Python API."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import typing
from collections.abc import Sequence
from typing import Any

import torch

from .api import CharModel, load
from .checkpoint import resolve_checkpoint
from .cli_parser import build_parser
from .cli_train import ProgressReporter, StopSignals, run_train
from .data import read_corpus
from .errors import CharLSTMError
from .sample import Completion, Token

__all__ = ["ProgressReporter", "StopSignals", "build_parser", "main"]


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
