"""Preparing a corpus: read_corpus + Vocab.from_text + encode_corpus on a ~100 MB text file.

Also, alternating with it, charlstm.data.prepare_corpus (two streaming passes; what training runs
use) where the library has it; reported under "prepare_corpus" (null where it has not).

The file is the bundled novel repeated (ASCII, so one byte per character) in a temporary folder.
Each repeat runs in a fresh process; the peak RSS (VmHWM on Linux) of a process that only imported
charlstm and torch, measured in its own process, is subtracted before dividing by the characters.
Progress goes to stderr; one JSON object goes to stdout and (not with --quick) docs/bench/data.json.

    python benchmarks/bench_data.py                   # 100 MB, 5 repeats
    python benchmarks/bench_data.py --quick           # smoke test: 5 MB, 1 repeat
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchutil import (
    bundled_text_light,
    log,
    peak_rss_bytes,
    run_json,
    set_threads,
    spread,
    write_result,
)


def write_corpus(path: Path, chars: int) -> int:
    """Write the bundled novel repeated, cut to `chars` characters; returns the size in bytes."""
    text = bundled_text_light()
    whole, rest = divmod(chars, len(text))
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for _ in range(whole):
            f.write(text)
        f.write(text[:rest])
    return path.stat().st_size


def child(args: argparse.Namespace) -> None:
    """--child baseline: the RSS of the imports alone; prepare: time the three stages; stream: time
    charlstm.data.prepare_corpus (the streaming path training runs take, where the library has it)."""
    import torch  # noqa: F401  (every child imports the same; the parent never imports torch)

    from charlstm import data
    from charlstm.data import encode_corpus, read_corpus
    from charlstm.vocab import Vocab

    set_threads(args.threads)
    if args.child == "baseline":
        print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))
        return
    if args.child == "stream":
        if not hasattr(data, "prepare_corpus"):
            print(json.dumps({"unavailable": True}))
            return
        t0 = time.perf_counter()
        corpus = data.prepare_corpus([args.path])
        seconds = time.perf_counter() - t0
        print(json.dumps({"chars": len(corpus.ids), "ids_dtype": str(corpus.ids.dtype), "total_s": seconds,
                          "peak_rss_bytes": peak_rss_bytes()}))
        return
    t0 = time.perf_counter()
    text, _ = read_corpus([args.path])
    t1 = time.perf_counter()
    vocab = Vocab.from_text(text)
    t2 = time.perf_counter()
    ids = encode_corpus(text, vocab)
    t3 = time.perf_counter()
    print(json.dumps({
        "chars": len(text), "vocab_size": len(vocab), "ids_dtype": str(ids.dtype), "ids_bytes": ids.nbytes,
        "read_s": t1 - t0, "vocab_s": t2 - t1, "encode_s": t3 - t2, "total_s": t3 - t0,
        "peak_rss_bytes": peak_rss_bytes(),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="preparations, each in a fresh process")
    ap.add_argument("--megabytes", type=float, default=100.0, help="size of the text file (10^6 bytes)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 5 MB, 1 repeat")
    ap.add_argument("--child", choices=("baseline", "prepare", "stream"), help=argparse.SUPPRESS)
    ap.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.megabytes, args.repeats = min(args.megabytes, 5.0), 1

    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        path = Path(tmp) / "corpus.txt"
        size = write_corpus(path, int(args.megabytes * 1e6))
        log(f"wrote {size / 1e6:.1f} MB to {path}")
        base = run_json([__file__, "--child", "baseline", "--threads", args.threads], args.threads, 600)
        log(f"import-only peak RSS {base['peak_rss_bytes'] / 2**20:.1f} MiB")
        found: dict[str, list[dict[str, Any]]] = {"prepare": [], "stream": []}
        for r in range(args.repeats):  # alternating: prepare, stream, prepare, ...
            for mode, runs in found.items():
                runs.append(run_json([__file__, "--child", mode, "--path", path, "--threads", args.threads],
                                     args.threads, 3600))
                if not runs[-1].get("unavailable"):
                    log(f"repeat {r + 1}/{args.repeats} {mode}: {runs[-1]['total_s']:.2f}s, "
                        f"peak RSS {runs[-1]['peak_rss_bytes'] / 2**20:.1f} MiB")

    runs, streamed = found["prepare"], found["stream"]
    chars = runs[0]["chars"]
    total = statistics.median(run["total_s"] for run in runs)
    peak = statistics.median(run["peak_rss_bytes"] for run in runs)
    extra = peak - base["peak_rss_bytes"]
    stream = None
    if not streamed[0].get("unavailable"):
        stream_peak = statistics.median(run["peak_rss_bytes"] for run in streamed)
        stream = {"seconds": spread([run["total_s"] for run in streamed], 3),
                  "chars_per_sec": round(chars / statistics.median(run["total_s"] for run in streamed), 1),
                  "ids_dtype": streamed[0]["ids_dtype"], "same_chars": streamed[0]["chars"] == chars,
                  "peak_rss_mb": round(stream_peak / 2**20, 1),
                  "peak_rss_bytes_per_char": round((stream_peak - base["peak_rss_bytes"]) / chars, 3)}
    result = {
        "config": {"megabytes": args.megabytes, "file_bytes": size, "repeats": args.repeats,
                   "quick": args.quick},
        "chars": chars,
        "vocab_size": runs[0]["vocab_size"],
        "ids_dtype": runs[0]["ids_dtype"],
        "ids_bytes_per_char": round(runs[0]["ids_bytes"] / chars, 3),
        "seconds": spread([run["total_s"] for run in runs], 3),
        "stage_seconds_median": {stage: round(statistics.median(run[f"{stage}_s"] for run in runs), 3)
                                 for stage in ("read", "vocab", "encode")},
        "chars_per_sec": round(chars / total, 1),
        "baseline_peak_rss_mb": round(base["peak_rss_bytes"] / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "peak_rss_bytes_per_char": round(extra / chars, 3),
        "prepare_corpus": stream,
    }
    write_result(result, "data", args.threads, args.quick)


if __name__ == "__main__":
    main()
