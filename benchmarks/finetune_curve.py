"""Does fine-tuning pay? Validation loss against wall time on a small text that is not the novel,
trained from scratch and fine-tuned from a base checkpoint (`charlstm train --init-from`).

For each of two texts -- the GPL-3 licence as shipped with the OS (English, about 35 KB), and the
GFDL-1.3 licence set as typography would (curly quotes, ligatures, a few accents: characters the
novel never had) -- three runs train for the same --max-time, one after the other, in this process,
with --threads threads on the CPU, all other options at their defaults (`--preset auto`):

- scratch: `charlstm train TEXT` (auto sizes a model for the text);
- fine-tune: `charlstm train TEXT --init-from BASE` (its default learning rate, a third of auto's);
- fine-tune, full rate: the same with auto's learning rate for the base's size (why a third).

Every run validates on the text's last 10%. Forgetting: each fine-tuned model's best checkpoint
is also scored on the first --forget-chars characters of the base's own held-out text (for the
bundled model, the novel's last 10%), beside the base's own score there. Writes --out-json, the
plot --plot-out, and the table between the markers in --doc (docs/finetune.md); prints the JSON on
one line.

    python benchmarks/finetune_curve.py --max-time 120          # from the bundled pretrained model
    python benchmarks/finetune_curve.py BASE --quick   # smoke test: short texts, a few seconds a run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchutil import ROOT, log, machine, set_threads

LICENCES = Path("/usr/share/common-licenses")
BEGIN, END = "<!-- finetune:begin (written by benchmarks/finetune_curve.py) -->", "<!-- finetune:end -->"
# Typesetting that a PDF export or a word processor would apply: characters the novel never had.
TYPOGRAPHY = (("tion", "tión"), ("oe", "œ"), ("fi", "ﬁ"), ("ff", "ﬀ"), ("'", "\u2019"))
RUNS = ("scratch", "finetune", "finetune_full_rate")
LABELS = {
    "scratch": "from scratch (auto)",
    "finetune": "fine-tuned (default rate)",
    "finetune_full_rate": "fine-tuned (auto's full rate)",
}
FRACTIONS = (0.25, 0.5, 1.0)


def typeset(text: str) -> str:
    """`text` with curly double quotes (alternating), ligatures and a few accents."""
    for plain, fancy in TYPOGRAPHY:
        text = text.replace(plain, fancy)
    parts = text.split('"')
    return "".join(p + ("“" if i % 2 == 0 else "”") for i, p in enumerate(parts[:-1])) + parts[-1]


def texts(args: argparse.Namespace, work: Path) -> dict[str, tuple[Path, str]]:
    """The two texts, written to `work`: name -> (file, how it was made)."""
    english, other = Path(args.english), Path(args.new_chars_from)
    for path in (english, other):
        if not path.is_file():
            sys.exit(f"finetune_curve: {path} is missing; pass --english / --new-chars-from another text")
    made = {
        "english": (english.read_text(encoding="utf-8"), f"{english}"),
        "new_characters": (typeset(other.read_text(encoding="utf-8")), f"{other}, typeset (curly quotes, "
                           "ligatures, accents)"),
    }
    out = {}
    for name, (text, how) in made.items():
        path = work / f"{name}.txt"
        path.write_text(text[: args.chars] if args.chars else text, encoding="utf-8")
        out[name] = (path, how)
    return out


def train_once(
    text: Path, out: Path, args: argparse.Namespace, reference: str | None, **options: Any
) -> dict[str, Any]:
    """One run; its curve (elapsed_s, val_loss) from metrics.jsonl, what it trained, and for a
    fine-tuned run its loss on the base's held-out text `reference`."""
    from charlstm import load, train
    from charlstm.metrics import MetricsLog
    from charlstm.trainer import Hooks

    class Summary(Hooks):
        def on_start(self, summary: dict[str, Any]) -> None:
            self.summary = summary

    hooks = Summary()
    train([text], out, hooks=hooks, device="cpu", max_time=args.max_time, seed=args.seed, sample_length=0,
          **options)
    records = MetricsLog(out / "metrics.jsonl").read()
    model, config = hooks.summary["model"], hooks.summary["config"]
    curve = [{"step": r["step"], "elapsed_s": round(r["elapsed_s"], 2), "val_loss": round(r["val_loss"], 4)}
             for r in records]
    at = {}
    for fraction in FRACTIONS:
        seen = [p["val_loss"] for p in curve if p["elapsed_s"] <= fraction * args.max_time * 1.02]
        at[f"{fraction:g}"] = min(seen) if seen else None
    return {
        "model": f"{model['num_layers']} x {model['hidden_size']} {model['cell'].upper()}",
        "parameters": hooks.summary["parameters"],
        "learning_rate": config["learning_rate"],
        "batch": f"{config['batch_size']} x {config['seq_len']}",
        "added": hooks.summary.get("init_from", {}).get("added"),
        "steps": curve[-1]["step"] if curve else 0,
        "best_val_loss": min(p["val_loss"] for p in curve) if curve else None,
        "best_val_loss_by_fraction_of_time": at,
        "base_text_loss": round(load(out).evaluate(reference)["loss"], 4) if reference and options else None,
        "curve": curve,
    }


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from charlstm import load
    from charlstm.api import held_out_text
    from charlstm.errors import CharLSTMError
    from charlstm.finetune import open_init_from
    from charlstm.presets import auto_learning_rate

    start = open_init_from(args.base)  # None: the bundled pretrained model
    base = load(start.path)
    try:
        reference: str | None = held_out_text(base.training)[: args.forget_chars]
    except CharLSTMError as exc:
        log(f"no forgetting measure: {exc}")
        reference = None
    full_rate = auto_learning_rate(start.model.config.hidden_size)
    result: dict[str, Any] = {
        "base": {**start.facts(), "path": str(args.base or "the bundled model"), "model": start.architecture,
                 "vocab_size": len(start.vocab), "held_out_chars": len(reference) if reference else None,
                 "held_out_loss": round(base.evaluate(reference)["loss"], 4) if reference else None},
        "max_time_s": args.max_time,
        "seed": args.seed,
        "commit": commit(),
        "machine": machine(args.threads),
        "quick": args.quick,
        "texts": {},
    }
    for name, (path, how) in texts(args, work).items():
        num_chars = len(path.read_text(encoding="utf-8"))
        entry: dict[str, Any] = {"source": how, "num_chars": num_chars, "runs": {}}
        for run in RUNS:
            log(f"{name}: {run} for {args.max_time:g} s")
            options: dict[str, Any] = {}
            if run != "scratch":
                options["init_from"] = start.path
            if run == "finetune_full_rate":
                options["learning_rate"] = full_rate
            entry["runs"][run] = train_once(path, work / f"{name}-{run}", args, reference, **options)
        entry["added"] = entry["runs"]["finetune"]["added"]
        result["texts"][name] = entry
    return result


def commit() -> str | None:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                             text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["texts"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for run, data in result["texts"][name]["runs"].items():
            curve = data["curve"]
            label = f"{LABELS[run]}: {data['model']}, lr {data['learning_rate']:g}"
            ax.plot([p["elapsed_s"] for p in curve], [p["val_loss"] for p in curve], marker=".", label=label)
        ax.set_title(f"{name.replace('_', ' ')} ({result['texts'][name]['num_chars']:,} characters)")
        ax.set_xlabel(f"wall time, s ({result['machine']['threads']} thread(s), CPU)")
        ax.set_ylabel("validation loss, nats/char")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict[str, Any], plot_link: str) -> str:
    """The markdown that goes between the markers of docs/finetune.md."""
    base, t = result["base"], result["max_time_s"]
    held = base["held_out_loss"]
    forgot = f" (the base: {held:.3f})" if held is not None else ""
    lines = [
        f"Base: `{base['path']}` ({base['model']['num_layers']} x {base['model']['hidden_size']} "
        f"{base['model']['cell'].upper()}, {base['vocab_size']} characters, weights sha256 "
        f"`{base['sha256'][:12]}`); {t:g} s per run, {result['machine']['threads']} thread(s) on the CPU, "
        f"seed {result['seed']}, commit `{result['commit']}`" + (" (**--quick smoke run**)" if result["quick"]
                                                                 else "") + ".",
        "",
        "| text | run | model | learning rate | steps | best val loss at "
        + " | ".join(f"{f * t:g} s" for f in FRACTIONS) + f" | loss on the base's held-out text{forgot} |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in FRACTIONS) + " | --- |",
    ]
    for name, entry in result["texts"].items():
        for run, data in entry["runs"].items():
            losses = [data["best_val_loss_by_fraction_of_time"][f"{f:g}"] for f in FRACTIONS]
            shown = " | ".join("—" if v is None else f"{v:.3f}" for v in [*losses, data["base_text_loss"]])
            lines.append(f"| {name.replace('_', ' ')} | {LABELS[run]} | {data['model']} | "
                         f"{data['learning_rate']:g} | {data['steps']} | {shown} |")
    lines.append("")
    for name, entry in result["texts"].items():
        added = entry["added"] or []
        lines.append(f"- {name.replace('_', ' ')}: {entry['source']}, {entry['num_chars']:,} characters; "
                     f"characters added to the base's vocabulary: "
                     f"{' '.join(repr(c) for c in added) if added else 'none'}")
    lines += ["", f"![validation loss against wall time, from scratch and fine-tuned]({plot_link})"]
    return "\n".join(lines)


def render(doc: Path, body: str) -> None:
    text = doc.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        sys.exit(f"finetune_curve: {doc} lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", help="checkpoint or run folder (default: the bundled model)")
    parser.add_argument("--max-time", type=float, default=120.0, help="seconds per run (default: 120)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--english", default=str(LICENCES / "GPL-3"), help="English, not the novel")
    parser.add_argument("--new-chars-from", default=str(LICENCES / "GFDL-1.3"),
                        help="a text to typeset into one with characters the novel never had")
    parser.add_argument("--forget-chars", type=int, default=50_000,
                        help="characters of the base's held-out text scored for forgetting (default: 50,000)")
    parser.add_argument("--chars", type=int, default=0, help="use only the first N characters of each text")
    parser.add_argument("--out-json", type=Path, default=ROOT / "docs" / "finetune.json")
    parser.add_argument("--plot-out", type=Path, default=ROOT / "docs" / "finetune.png")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "finetune.md")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4,000 characters, 2 s a run")
    args = parser.parse_args()
    if args.quick:
        args.max_time, args.chars = min(args.max_time, 2.0), args.chars or 4000
        args.forget_chars = min(args.forget_chars, 2000)
    set_threads(args.threads)
    from charlstm.errors import CharLSTMError

    with tempfile.TemporaryDirectory(prefix="finetune-curve-") as tmp:
        try:
            result = run_all(args, Path(tmp))
        except CharLSTMError as exc:
            sys.exit(f"finetune_curve: {exc}")
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    plot(result, args.plot_out)
    body = table(result, os.path.relpath(args.plot_out, args.doc.parent))
    render(args.doc, body)
    log(body)
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
