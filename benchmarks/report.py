"""Render every table and plot of docs/benchmarks.md from the JSON results in docs/bench/.

The page's prose is written by hand; each table sits between `<!-- begin NAME (generated: do not
edit by hand) -->` and `<!-- end NAME -->` markers and is replaced from the JSON files. A field a
file does not have (older results carry no commit or machine) is rendered "not recorded".

    python benchmarks/report.py            # rewrite the generated blocks and the plot
    python benchmarks/report.py --check    # exit 1 if the page differs from what the JSON gives
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchutil import ROOT, replace_between_markers

BENCH = ROOT / "docs" / "bench"
PAGE = ROOT / "docs" / "benchmarks.md"
PLOT = BENCH / "time_to_quality.png"
MISSING = "not recorded"
# The goals each row is held to (not measurements: what the project set out to reach; sampling from issue 12).
TARGETS = {"train_speedup": 1.05, "sample_single": 7.0, "sample_batch": 45.0, "data_seconds": 30.0,
           "data_bytes_per_char": 3.0}
# Issue 12's goals for charlstm's defaults on a 2-core CPU, validation included in the wall time.
QUALITY_TARGETS = {"time_to_2_0_s": 20.0, "val_after_min": {"1": 1.75, "2": 1.55, "5": 1.40, "10": 1.33},
                   "gpu_best_val": 1.22, "gpu_time_to_1_3_s": 30.0}
Result = dict[str, Any]


def load(name: str, bench: Path = BENCH) -> Result | None:
    path = bench / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def num(value: float | None, digits: int = 0) -> str:
    return MISSING if value is None else f"{value:,.{digits}f}"


def yes(ok: bool) -> str:
    return "yes" if ok else "no"


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def provenance(name: str, result: Result) -> list[str]:
    """The cells of one row of the provenance table; older files kept some of it under 'config'."""
    machine, config = result.get("machine", {}), result.get("config", {})

    def field(*keys: str) -> str:
        for key in keys:
            for source in (machine, config, result):
                if source.get(key) is not None:
                    return str(source[key])
        return MISSING

    command = result.get("command")
    return [f"`docs/bench/{name}.json`", field("cpu"), field("cores", "cpu_count"), field("threads"),
            field("torch"), field("commit"), result.get("date", MISSING),
            f"`{command}`" if command else MISSING]


def render_provenance(results: dict[str, Result]) -> str:
    lines = ["| file | CPU / device | cores | threads | torch | commit | date | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, result in results.items():
        cells = provenance(name, result)
        if "device" in result:  # bench_gpu's: the accelerator, and the host's CPU where recorded
            cells[1] = str(result["device"]) + (f" (host: {cells[1]})" if cells[1] != MISSING else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def range_text(entry: Result) -> str:
    return f"{num(entry['min'])}-{num(entry['max'])}"


def spread_text(entry: Result) -> str:
    return f"{num(entry['median'])} ({range_text(entry)})"


def render_summary(train: Result, sample: Result, data: Result) -> str:
    rows = [row(["what", "target", "measured", "met?"]), row(["---"] * 4)]
    a, b = train["charlstm"], train["tutorial"]
    speedup, config = train["speedup_chars_per_sec"], train["config"]
    rows.append(row([
        "training throughput at the tutorial's configuration",
        f">= {TARGETS['train_speedup']} x the tutorial",
        f"{num(a['chars_per_sec']['median'])} vs {num(b['chars_per_sec']['median'])} chars/s (medians of "
        f"{config['repeats']} alternating repeats of {config['steps_per_repeat']} steps; ranges "
        f"{range_text(a['chars_per_sec'])} and {range_text(b['chars_per_sec'])}): **{speedup:.2f} x**; "
        f"{a['fraction_of_peak']:.0%} and {b['fraction_of_peak']:.0%} of the measured matmul peak "
        f"({train['matmul_peak_gflops']:.0f} GFLOP/s)",
        yes(speedup >= TARGETS["train_speedup"]),
    ]))
    share = {m: train[m]["eval_fraction_of_wall"] for m in ("charlstm", "tutorial")}
    trained = (1 - share["charlstm"]) * a["chars_per_sec"]["median"] / (
        (1 - share["tutorial"]) * b["chars_per_sec"]["median"])
    rows.append(row([
        "the same, with each one's default validation schedule", "",
        f"validation is {share['charlstm']:.1%} of wall time for charlstm (a pass of "
        f"{a['val_pass_s']['median']:.1f} s every {a['eval_interval']} steps) and "
        f"{share['tutorial']:.1%} for the tutorial ({b['val_pass_s']['median']:.1f} s every "
        f"{b['eval_interval']} steps): "
        f"**{trained:.2f} x** more characters trained per wall-clock second", "",
    ]))
    single, batch = sample["speedup_single_stream"], sample["speedup_batch_vs_tutorial_single"]
    cfg = sample["config"]
    medians = {k: num(sample[k]["chars_per_sec"]["median"]) for k in ("charlstm", "tutorial")}
    rows.append(row([
        f"sampling, one stream, top-k {cfg['top_k']}, {cfg['chars']:,} chars, 2 x {cfg['hidden']} LSTM",
        f">= {TARGETS['sample_single']:g} x the tutorial",
        f"{medians['charlstm']} vs {medians['tutorial']} chars/s (medians of {cfg['repeats']}): "
        f"**{single:.2f} x**",
        yes(single >= TARGETS["sample_single"]),
    ]))
    rows.append(row([
        f"sampling, {cfg['streams']} streams as one batch",
        f">= {TARGETS['sample_batch']:g} x the tutorial's chars/s in total",
        f"{num(sample['charlstm_batch']['total_chars_per_sec']['median'])} chars/s: **{batch:.1f} x**",
        yes(batch >= TARGETS["sample_batch"]),
    ]))
    rows.append(row([
        "peak memory while training, tutorial configuration", "<= the tutorial's",
        f"{num(a['peak_rss_mb'])} MB vs {num(b['peak_rss_mb'])} MB (each in its own process)",
        yes(a["peak_rss_mb"] <= b["peak_rss_mb"]),
    ]))
    rows.append(render_data_row(data))
    return "\n".join(rows)


def render_data_row(data: Result) -> str:
    stream = data.get("prepare_corpus") or {}
    seconds = (stream.get("seconds") or data["seconds"])["median"]
    per_char = stream.get("peak_rss_bytes_per_char", data["peak_rss_bytes_per_char"])
    rate = stream.get("chars_per_sec", data["chars_per_sec"])
    how = "`prepare_corpus`" if stream else "read + vocabulary + encode"
    ok = seconds < TARGETS["data_seconds"] and per_char < TARGETS["data_bytes_per_char"]
    return row([
        f"preparing a {data['config']['megabytes']:g} MB corpus (read, vocabulary, encode)",
        f"< {TARGETS['data_seconds']:g} s and < {TARGETS['data_bytes_per_char']:g} bytes/char",
        f"{how} {seconds:.1f} s (median of {data['config']['repeats']}; {rate / 1e6:.0f} M chars/s), "
        f"**{per_char:.2f} bytes/char** above the import baseline; ids are {data['ids_dtype']} "
        f"({data['ids_bytes_per_char']:g} byte/char)",
        yes(ok),
    ])


def render_train_notes(train: Result, sample: Result) -> str:
    a, b = train["charlstm"], train["tutorial"]
    bound = sample["matvec_bound"]
    return (
        f"Measured: a training step at the tutorial's size takes {a['step_s_median']:.2f} s (charlstm) and "
        f"{b['step_s_median']:.2f} s (tutorial); {a['flops_per_char'] / 1e6:.1f} MFLOP per character, "
        f"{a['gflops']:.0f} GFLOP/s, {a['fraction_of_peak']:.0%} of the {train['matmul_peak_gflops']:.0f} "
        f"GFLOP/s this CPU's best `torch.mm` reached in the same run. A validation pass takes "
        f"{a['val_pass_s']['median']:.1f} s (charlstm, under `no_grad`) and "
        f"{b['val_pass_s']['median']:.1f} s (tutorial). Sampling's memory-bandwidth bound (the bare "
        f"weight products of one stream, "
        f"{bound['weight_bytes_per_char'] / 1e6:.2f} MB of weights per character): "
        f"{num(bound['chars_per_sec'])} chars/s ({bound['effective_gb_per_sec']:.1f} GB/s); charlstm reaches "
        f"{bound['charlstm_fraction_of_bound']:.0%} of it (its stepper alone "
        f"{bound['stepper_only_fraction_of_bound']:.0%}), the tutorial "
        f"{bound['tutorial_fraction_of_bound']:.1%}.")


MINUTES = ("1", "2", "5", "10", "20", "30")


def quality_cell(entry: Result, minute: str, budget: float) -> str:
    value = entry["val_loss_at_minutes"].get(minute)
    if value is not None:
        return f"{value:.3f}"
    curve = entry["curve"]
    if float(minute) <= budget and curve and curve[0]["elapsed_s"] > float(minute) * 60:
        return f"none yet (first at {curve[0]['elapsed_s']:.0f} s)"
    return ""


def render_quality(quality: Result) -> str:
    config = quality["config"]
    shown = [m for m in MINUTES if any(e["val_loss_at_minutes"].get(m) is not None
                                       for e in quality["methods"].values())]
    target = config.get("target_loss", 2.0)
    header = ["validation loss (nats/char) after", *(f"{m} min" for m in shown), f"time to <= {target}",
              "best", "validation share of wall time"]
    lines = [row(header), row(["---"] * len(header))]
    for name, entry in quality["methods"].items():
        summary = entry["summary"]
        budget = config["charlstm_minutes"] if name == "charlstm" else config["minutes"]
        reached = entry["time_to_val_2_0_s"]
        share = summary.get("eval_fraction_of_wall")
        lines.append(row([
            summary["label"], *(quality_cell(entry, m, budget) for m in shown),
            f"{reached:.0f} s" if reached is not None else f"not within {budget:g} min",
            f"{entry['best_val_loss']:.3f} ({summary['steps']:,} steps)",
            f"{share:.0%}" if share is not None else MISSING,
        ]))
    budgets = quality.get("charlstm_budgets") or {}
    if budgets:
        first = budgets[min(budgets, key=float)]
        reached = first["time_to_val_2_0_s"]
        lines.append(row([
            "charlstm defaults, a run told each budget (`--max-time`): its loss at the end",
            *(f"{budgets[m]['final_val_loss']:.3f}" if m in budgets else "" for m in shown),
            f"{reached:.0f} s (the {first['minutes']:g} min run)" if reached is not None else "not reached",
            "", ", ".join(f"{b['eval_fraction_of_wall']:.0%}" for b in budgets.values()),
        ]))
    kind = quality.get("curve_kind", "each method's own validations (in its clock)")
    lines += ["", f"Curves: {kind}. Budgets: {config['minutes']:g} min per baseline, "
              f"{config['charlstm_minutes']:g} min for charlstm; {config['threads']} threads each."]
    return "\n".join(lines)


def ahead_of(curve: list[dict[str, Any]], other: list[dict[str, Any]]) -> tuple[int, int]:
    """(points where `curve` is lower, points compared): the wall-time points both reached."""
    at = {s: p["val_loss"] for p in other for s in p.get("points_s", [])}
    pairs = [(p["val_loss"], at[s]) for p in curve for s in p.get("points_s", []) if s in at]
    return sum(a < b for a, b in pairs), len(pairs)


def render_quality_targets(quality: Result, gpu: Result | None = None) -> str:
    goals = QUALITY_TARGETS
    budgets, methods = quality.get("charlstm_budgets") or {}, quality["methods"]
    lines = [row(["goal (charlstm defaults, validation in the clock; the 2-core CPU unless said)", "target",
                  "measured", "met?"]), row(["---"] * 4)]
    first = budgets[min(budgets, key=float)] if budgets else None
    reached = first["time_to_val_2_0_s"] if first else None
    long_run = methods.get("charlstm", {}).get("time_to_val_2_0_s")
    lines.append(row([
        "time to validation loss 2.0", f"<= {goals['time_to_2_0_s']:g} s",
        (f"{num(reached)} s in the {first['minutes']:g} min run" if reached is not None else "not reached")
        + (f", {num(long_run)} s in the long run" if long_run is not None else ""),
        yes(reached is not None and reached <= goals["time_to_2_0_s"]),
    ]))
    for minute, goal in goals["val_after_min"].items():
        entry = budgets.get(minute)
        lines.append(row([
            f"validation loss after {minute} min (a run told {minute} min)", f"<= {goal}",
            f"{entry['final_val_loss']:.3f}" if entry else MISSING,
            yes(entry is not None and entry["final_val_loss"] <= goal) if entry else "",
        ]))
    gpt = methods.get("gpt")
    if gpt and "charlstm" in methods:
        lower, compared = ahead_of(methods["charlstm"]["curve"], gpt["curve"])
        gpt_at = gpt["val_loss_at_minutes"]
        told = [(m, b["final_val_loss"], gpt_at[m]) for m, b in budgets.items() if gpt_at.get(m) is not None]
        told_lower = sum(mine < theirs for _, mine, theirs in told)
        lines.append(row([
            "ahead of the transformer baseline at every point", "every point",
            f"the long run is lower at {lower} of {compared} wall-time points; the budgeted runs at "
            f"{told_lower} of {len(told)} minute marks",
            yes(compared > 0 and lower == compared and told_lower == len(told)),
        ]))
    lines += gpu_target_rows(quality, gpu)
    return "\n".join(lines)


def gpu_target_rows(quality: Result, gpu: Result | None) -> list[str]:
    """The GPU goals: measured only by a GPU run of the same commit as the CPU results; otherwise the
    last GPU figures, marked as from other code."""
    goals = QUALITY_TARGETS
    runs = (gpu or {}).get("time_to_quality") or []
    commit = (gpu or {}).get("machine", {}).get("commit")
    current = bool(runs) and commit is not None and commit == quality.get("machine", {}).get("commit")
    best = min((r["best_val_loss"] for r in runs), default=None)
    reached = [r["time_to_val_1.3_s"] for r in runs if r.get("time_to_val_1.3_s") is not None]
    where = f"commit {commit}" if commit else "a commit not recorded, before the trainer's redesign"
    if current:
        measured_best, measured_time = f"{best:.4f}", f"{min(reached):.1f} s" if reached else "not reached"
    else:
        measured_best = "unmeasured on this code (no GPU lent)" + (
            f"; {best:.4f} at {where}" if best is not None else "")
        measured_time = "unmeasured on this code (no GPU lent)" + (
            f"; {min(reached):.1f} s at {where}" if reached else "")
    return [
        row(["on a GPU: the best preset's validation loss", f"<= {goals['gpu_best_val']:g}", measured_best,
             yes(best is not None and best <= goals["gpu_best_val"]) if current else "unmeasured"]),
        row(["on an H200: time to validation loss 1.30", f"< {goals['gpu_time_to_1_3_s']:g} s", measured_time,
             yes(bool(reached) and min(reached) < goals["gpu_time_to_1_3_s"]) if current else "unmeasured"]),
    ]


def render_levers(levers: Result, quality: Result | None = None) -> str:
    """The lever table; for a budget other than 1 minute, bench_quality's run told that budget (the
    defaults) heads it when `quality` has one."""
    config = levers["config"]
    minutes = config["minutes"]
    header = ["variant (all else the defaults)", "loss after 1 min", f"loss at the end ({minutes:g} min)",
              "time to <= 2.0", "steps", "validation share"]
    lines = [row(header), row(["---"] * len(header))]
    entries = list(levers["variants"].values())
    reference = quality and quality["config"].get("minutes") == minutes and quality["methods"].get("charlstm")
    if reference:
        summary = reference["summary"]
        entries.insert(0, {"what": f"the defaults (bench_quality.py's {minutes:g}-minute run)",
                           "val_loss_at_1_min": reference["val_loss_at_minutes"].get("1"),
                           "final_val_loss": reference["final_val_loss"],
                           "time_to_val_2_0_s": reference["time_to_val_2_0_s"], "steps": summary["steps"],
                           "eval_fraction_of_wall": summary["eval_fraction_of_wall"]})
    for entry in entries:
        reached = entry["time_to_val_2_0_s"]
        at_one = entry["val_loss_at_1_min"]
        lines.append(row([
            entry["what"], f"{at_one:.3f}" if at_one is not None else "",
            f"**{entry['final_val_loss']:.3f}**",
            f"{reached:.0f} s" if reached is not None else "not reached",
            f"{entry['steps']:,}", f"{entry['eval_fraction_of_wall']:.0%}",
        ]))
    lines += ["", f"Each variant told {minutes:g} min (`--max-time`), seed {config['seed']}, "
              f"{config['threads']} threads, one after the other; the losses are full passes over the "
              f"held-out split (`python benchmarks/bench_levers.py{command_options(levers)}`)."]
    return "\n".join(lines)


def command_options(result: Result) -> str:
    """The options the result's command was given (its `command` is the whole line)."""
    command = result.get("command", "")
    return command.split(".py", 1)[1] if ".py" in command else ""


def render_threads(threads: Result) -> str:
    config = threads["config"]
    lines = [row(["machine", "1 thread", "2 threads", "faster"]), row(["---"] * 4)]
    for condition, what in (("idle", "idle"), ("busy", "beside a second training process (2 threads)")):
        one, two = threads[condition]["1"]["median"], threads[condition]["2"]["median"]
        faster = f"{'1 thread' if one > two else '2 threads'} ({max(one, two) / min(one, two):.2f} x)"
        lines.append(row([what, f"{num(one)} chars/s", f"{num(two)} chars/s", faster]))
    lines += ["", f"{config['layers']} x {config['hidden']} LSTM, batch {config['batch']} x {config['seq']} "
              f"(auto's CPU choice), medians of {config['repeats']} alternating repeats of {config['steps']} "
              f"steps on {config['cores']} cores (`python benchmarks/bench_threads.py`)."]
    return "\n".join(lines)


def plot_quality(quality: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for entry in quality["methods"].values():
        xs = [p["elapsed_s"] / 60 for p in entry["curve"]]
        ax.plot(xs, [p["val_loss"] for p in entry["curve"]], marker=".", markersize=3,
                label=entry["summary"]["label"])
    budgets = quality.get("charlstm_budgets") or {}
    if budgets:
        ax.plot([b["wall_s"] / 60 for b in budgets.values()], [b["final_val_loss"] for b in budgets.values()],
                linestyle="none", marker="*", markersize=10, color="black",
                label="charlstm, a run told each budget (--max-time): the end of each")
    ax.axhline(quality["config"].get("target_loss", 2.0), color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("wall time (minutes, each method's own validation included)")
    ax.set_ylabel("validation loss (nats/char)")
    config = quality["config"]
    threads = f"{config['threads']} torch threads each"
    cores = config.get("cpu_count") or quality.get("machine", {}).get("cores", "?")
    ax.set_title(f"Time to quality on {cores} CPU cores ({threads})")
    ax.grid(alpha=0.3)
    # Below the axes: inside, the legend hides whichever curve sits in its corner.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def render_ddp(ddp: Result) -> str:
    speeds, config = ddp["chars_per_sec"], ddp["config"]
    labels = {"1x2": "1 process x 2 threads", "2x1": "2 processes x 1 thread (`torchrun --nproc-per-node 2`)"}
    lines = [f"2 x {config['hidden']} LSTM, global batch {config['batch']} x {config['seq']}, "
             f"{config['steps']} steps, dropout 0, {config['repeats']} alternating repeats:", "",
             "| set-up | chars/s (median, range) | val loss at the last step | train loss |",
             "| --- | --- | --- | --- |"]
    for kind, label in labels.items():
        lines.append(f"| {label} | {spread_text(speeds[kind])} | {ddp['val_loss'][kind]:.5f} | "
                     f"{ddp['train_loss'][kind]:.5f} |")
    same = all(ddp[key]["1x2"] == ddp[key]["2x1"] for key in ("val_loss", "train_loss"))
    agree = "agree on the losses to all printed digits" if same else "differ in the losses"
    lines += ["", f"The two {agree}; 2 processes run at {ddp['ratio_2x1_over_1x2']:.2f} x the speed of one "
              "process with 2 threads."]
    return "\n".join(lines)


def render_gpu(gpu: Result) -> str:
    peak = gpu["peak_tflops"]
    lines = ["| what | measured |", "| --- | --- |",
             f"| matmul peak, same run | {peak['fp32_tf32']:.0f} TFLOP/s (fp32 inputs, TF32 allowed), "
             f"{peak['bf16']:.0f} TFLOP/s (bf16) |"]
    for row in gpu["throughput"]:
        if "error" in row:
            lines.append(f"| {row.get('options', '')} | failed: {row['error']} |")
            continue
        o = row["options"]
        share = row.get("fraction_of_bf16_peak")
        lines.append(f"| {o['num_layers']} x {o['hidden_size']}, batch {o['batch_size']} x {o['seq_len']}, "
                     f"{row['precision']} | {row['step_ms']:.1f} ms a step, "
                     f"{row['chars_per_sec'] / 1e6:.2f} M chars/s, {row['achieved_tflops']:.0f} TFLOP/s "
                     f"({f'{share:.0%}' if share is not None else MISSING} of the bf16 peak) |")
    for run in gpu["time_to_quality"]:
        if "error" in run:
            continue
        key = next(k for k in run if k.startswith("time_to_val_"))
        target = key.removeprefix("time_to_val_").removesuffix("_s")
        reached = f"{run[key]:.1f} s" if run[key] is not None else "not reached"
        lines.append(f"| time to validation loss {target}, auto preset, {run['precision']}, evaluation "
                     f"included | {reached} (best {run['best_val_loss']:.4f} in {run['minutes']:g} min) |")
    sampling = gpu.get("sampling", {})
    if "streams_1_chars_per_sec" in sampling:
        lines.append(f"| sampling, top-k 5 | {num(sampling['streams_1_chars_per_sec'])} chars/s one stream, "
                     f"{num(sampling['streams_64_chars_per_sec'])} chars/s for 64 streams |")
    return "\n".join(lines)


def render_serve(serve: Result) -> str:
    from bench_serve import render  # the serving benchmark knows its own table

    return render(serve)


def blocks(bench: Path = BENCH) -> dict[str, str]:
    """Every generated block of the page, by marker name, from the JSON files in `bench`."""
    results = {name: r for name in ("train", "sample", "data", "ddp", "quality", "levers", "levers_10min",
                                    "threads", "gpu_h200", "serve")
               if (r := load(name, bench)) is not None}
    renderers: dict[str, Callable[[], str]] = {
        "provenance": lambda: render_provenance(results),
        "summary": lambda: render_summary(results["train"], results["sample"], results["data"]),
        "train-notes": lambda: render_train_notes(results["train"], results["sample"]),
        "quality": lambda: render_quality(results["quality"]),
        "quality-targets": lambda: render_quality_targets(results["quality"], results.get("gpu_h200")),
        "levers": lambda: render_levers(results["levers"]),
        "levers-10min": lambda: render_levers(results["levers_10min"], results.get("quality")),
        "threads": lambda: render_threads(results["threads"]),
        "ddp": lambda: render_ddp(results["ddp"]),
        "gpu": lambda: render_gpu(results["gpu_h200"]),
        "serve": lambda: render_serve(results["serve"]),
    }
    # the result each block is rendered from, and the script that writes it
    sources = {"summary": ("train", "bench_train.py"), "train-notes": ("train", "bench_train.py"),
               "quality": ("quality", "bench_quality.py"), "quality-targets": ("quality", "bench_quality.py"),
               "levers": ("levers", "bench_levers.py"),
               "levers-10min": ("levers_10min",
                                "bench_levers.py --minutes 10 --variants hidden_256 dropout_0"),
               "threads": ("threads", "bench_threads.py"),
               "ddp": ("ddp", "bench_ddp.py"), "gpu": ("gpu_h200", "gpu_check.sh"),
               "serve": ("serve", "bench_serve.py")}
    rendered = {}
    for name, render in renderers.items():
        result, script = sources.get(name, (None, ""))
        if result is not None and result not in results:
            rendered[name] = f"No results yet: run `benchmarks/{script}` (it writes docs/bench/{result}.json)"
        else:
            rendered[name] = render()
    return rendered


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if the page is out of date")
    ap.add_argument("--page", type=Path, default=PAGE)
    ap.add_argument("--bench", type=Path, default=BENCH, help="the folder of JSON results")
    args = ap.parse_args()
    text = args.page.read_text(encoding="utf-8")
    rendered = text
    for name, body in blocks(args.bench).items():
        rendered = replace_between_markers(rendered, name, body, where=str(args.page))
    if args.check:
        if rendered != text:
            print(f"{args.page}: generated blocks differ from benchmarks/report.py's rendering of "
                  "docs/bench/; run `python benchmarks/report.py`", file=sys.stderr)
            return 1
        return 0
    args.page.write_text(rendered, encoding="utf-8")
    quality = load("quality", args.bench)
    if quality is not None:
        plot_quality(quality, args.bench / PLOT.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
