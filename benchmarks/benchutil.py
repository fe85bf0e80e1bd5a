"""Small helpers shared by the bench_*.py scripts (not a benchmark itself)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import lzma
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def set_threads(threads: int) -> None:
    import torch  # imported where needed, so a parent that only starts children stays small and quick

    torch.set_num_threads(threads)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    On Linux this is VmHWM from /proc/self/status, not getrusage's ru_maxrss: ru_maxrss survives
    fork + exec, so a child started by a big parent reports at least the parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


def child_env(threads: int) -> dict[str, str]:
    """The environment for a child process: the same thread count for OpenMP/MKL as for torch."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return env


def start_json(args: Sequence[Any], threads: int, cwd: Path = ROOT) -> subprocess.Popen[str]:
    """Start `python *args` (stderr passed through); `finish_json` collects the JSON it prints last."""
    cmd = [sys.executable, *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=child_env(threads),
                            cwd=cwd)


def finish_json(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")  # type: ignore[arg-type]
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{' '.join(map(str, proc.args))} printed nothing on stdout")  # type: ignore[arg-type]
    return json.loads(lines[-1])


def run_json(args: Sequence[Any], threads: int, timeout: float, cwd: Path = ROOT) -> dict[str, Any]:
    """Run `python *args` to the end and parse the JSON object it prints last."""
    return finish_json(start_json(args, threads, cwd), timeout)


def spread(values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    """Median, min and max of repeated measurements, and the values themselves."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "runs": [round(v, digits) for v in values]}


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    return round(a / b, digits) if a is not None and b else None


def machine(threads: int) -> dict[str, Any]:
    return {"cpu_count": os.cpu_count(), "threads": threads, "torch": importlib.metadata.version("torch"),
            "python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or None, "load_avg_1m": round(os.getloadavg()[0], 2)}


def bundled_text_light() -> str:
    """The bundled novel without importing charlstm (whose import loads torch, seconds on a busy box)."""
    spec = importlib.util.find_spec("charlstm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("charlstm is not installed in this environment")
    corpus = Path(next(iter(spec.submodule_search_locations))) / "corpora" / "anna_karenina.txt.xz"
    return lzma.decompress(corpus.read_bytes()).decode("utf-8")


def auto_cpu_sizes(text: str) -> dict[str, Any]:
    """What `--preset auto` picks for `text` on a CPU, in the baselines' keyword names."""
    from charlstm.presets import auto_options

    auto, _ = auto_options(len(text), len(set(text)), "cpu")
    return {"hidden": auto["hidden_size"], "layers": auto["num_layers"], "batch": auto["batch_size"],
            "seq": auto["seq_len"], "learning_rate": auto["learning_rate"], "dropout": auto["dropout"]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str:
    """The short commit checked out, with "+changes" when the working tree differs from it outside
    docs/ (where the benchmarks write their results: one script's JSON must not mark the next's)."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)docs")
        return commit + ("+changes" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def command_line() -> str:
    """How this process was started, as one would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    name = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    return shlex.join(["python", name, *sys.argv[1:]])


def machine_info(threads: int) -> dict[str, Any]:
    """What a figure needs beside it: the machine, the commit, the command and the date."""
    info = {**machine(threads), "cpu": cpu_model(), "cores": os.cpu_count(), "commit": git_commit()}
    return {"machine": info, "date": time.strftime("%Y-%m-%d"), "command": command_line()}


def write_result(result: dict[str, Any], name: str, threads: int, quick: bool, path: Path | None = None
                 ) -> dict[str, Any]:
    """Print the result, with where and when it was measured, as one line of JSON; unless `quick`,
    also write it to `path` (default docs/bench/NAME.json), where benchmarks/report.py reads it."""
    result = {**result, **machine_info(threads)}
    if not quick:
        path = path or ROOT / "docs" / "bench" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        log(f"wrote {path}")
    print(json.dumps(result))
    return result


def replace_between_markers(text: str, name: str, body: str, where: str = "the page") -> str:
    """`text` with what lies between `<!-- begin NAME ... -->` and `<!-- end NAME -->` replaced by `body`."""
    begin, end = f"<!-- begin {name} (generated: do not edit by hand) -->", f"<!-- end {name} -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{where}: no {begin} ... {end} markers to write between")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def render_between_markers(path: Path, name: str, body: str) -> None:
    """Replace the text between `<!-- begin NAME -->` and `<!-- end NAME -->` in `path`."""
    text = path.read_text(encoding="utf-8")
    path.write_text(replace_between_markers(text, name, body, str(path)), encoding="utf-8")
