"""The command line's arguments: every subcommand and flag (the training flags are derived from the
config dataclasses' fields, so their help and defaults have one source)."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence
from dataclasses import MISSING, fields
from typing import Any

from . import __version__
from .config import DEVICES, ModelConfig, TrainConfig
from .presets import AUTO_CHOSEN, PRESETS

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


def given_options(args: argparse.Namespace, cls: type, skip: Sequence[str] = ()) -> dict[str, Any]:
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
