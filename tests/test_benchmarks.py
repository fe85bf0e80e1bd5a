"""Smoke tests of benchmarks/*.py: each script runs with --quick and prints one JSON object with the
expected keys and its provenance; report.py's rendering must match docs/benchmarks.md. No timing is
asserted: the numbers depend on the machine and its load."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
DOCS = BENCHMARKS.parent / "docs"
sys.path.insert(0, str(BENCHMARKS))  # the scripts import each other as top-level modules

import gpt_baseline  # noqa: E402  (after the path is set)
from harness import Snapshots, alternate  # noqa: E402


def run_quick(script: str, *extra: str, threads: bool = True) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *(["--threads", "1"] * threads), *extra],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"expected one line of JSON on stdout, got {len(lines)}"
    return json.loads(lines[0])


@pytest.mark.slow
def test_bench_train_quick():
    result = run_quick("bench_train.py")
    assert {"config", "matmul_peak_gflops", "charlstm", "tutorial", "speedup_chars_per_sec"} <= result.keys()
    for method in ("charlstm", "tutorial"):
        entry = result[method]
        assert {"median", "min", "max", "runs"} <= entry["chars_per_sec"].keys()
        assert {
            "gflops",
            "fraction_of_peak",
            "peak_rss_mb",
            "val_pass_s",
            "eval_interval",
            "eval_fraction_of_wall",
        } <= entry.keys()
        assert entry["peak_rss_mb"] > 0
        assert 0 < entry["eval_fraction_of_wall"] < 1
    assert result["tutorial"]["eval_interval"] == 10
    assert result["charlstm"]["flops_per_char"] == result["tutorial"]["flops_per_char"]


@pytest.mark.slow
def test_bench_sample_quick():
    result = run_quick("bench_sample.py")
    assert {
        "charlstm",
        "tutorial",
        "speedup_single_stream",
        "charlstm_batch",
        "speedup_batch_vs_tutorial_single",
        "matvec_bound",
    } <= result.keys()
    assert result["config"]["same_weights_max_logit_diff"] < 1e-4
    assert result["charlstm_batch"]["streams"] == 64
    assert {"chars_per_sec", "stepper_only_chars_per_sec", "charlstm_fraction_of_bound"} <= (
        result["matvec_bound"].keys()
    )


@pytest.mark.slow
def test_bench_data_quick():
    result = run_quick("bench_data.py")
    assert result["chars"] == 5_000_000
    assert result["ids_dtype"] == "uint8"
    assert {
        "seconds",
        "stage_seconds_median",
        "chars_per_sec",
        "baseline_peak_rss_mb",
        "peak_rss_bytes_per_char",
    } <= result.keys()


def assert_provenance(result: dict[str, Any], script: str) -> None:
    assert {"cpu", "cores", "threads", "torch", "commit"} <= result["machine"].keys()
    assert result["command"].startswith(f"python benchmarks/{script} --quick")
    assert len(result["date"]) == 10


@pytest.mark.slow
def test_bench_quality_quick_runs_all_four_methods_and_report_renders_it(tmp_path: Path):
    out_json = tmp_path / "quality.json"
    result = run_quick("bench_quality.py", "--out-json", str(out_json))
    assert json.loads(out_json.read_text(encoding="utf-8")) == result
    assert_provenance(result, "bench_quality.py")
    assert list(result["methods"]) == ["tutorial", "tutorial_auto", "gpt", "charlstm"]
    for entry in result["methods"].values():
        assert entry["curve"] and {"step", "elapsed_s", "val_loss"} <= entry["curve"][0].keys()
        assert entry["curve"][-1]["step"] == entry["summary"]["steps"] == 20
        assert set(entry["val_loss_at_minutes"]) == {"1", "2", "5", "10", "20", "30"}
        assert len(entry["own_curve"]) == 2  # validation every 10 of the 20 steps
        assert 0 < entry["summary"]["eval_fraction_of_wall"] < 1
    assert result["methods"]["charlstm"]["summary"]["config"]["eval_interval"] == 10
    # charlstm also ran told a shorter budget, and its long run is listed with the budgets
    assert list(result["charlstm_budgets"]) == ["0.1", "0.5"]
    for minutes, budget in result["charlstm_budgets"].items():
        assert budget["minutes"] == float(minutes) and budget["steps"] <= 20 and budget["final_val_loss"] > 0
    # report.py renders the new format: every method's label lands in the page's table
    bench = tmp_path / "bench"
    shutil.copytree(DOCS / "bench", bench)
    out_json.replace(bench / "quality.json")
    page = tmp_path / "page.md"
    shutil.copy(DOCS / "benchmarks.md", page)
    proc = run_report("--bench", str(bench), "--page", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text(encoding="utf-8")
    for entry in result["methods"].values():
        assert entry["summary"]["label"] in text
    assert "a run told each budget" in text and "time to validation loss 2.0" in text
    assert (bench / "time_to_quality.png").stat().st_size > 0
    assert run_report("--check", "--bench", str(bench), "--page", str(page)).returncode == 0


@pytest.mark.slow
def test_tutorial_baseline_quick_takes_its_sizes_as_flags():
    flags = ["--hidden-size", "24", "--num-layers", "1", "--batch-size", "4", "--seq-len", "8",
             "--learning-rate", "0.01", "--dropout", "0", "--print-every", "5"]
    result = run_quick("tutorial_baseline.py", *flags)
    config = result["config"]
    sizes = (config["n_hidden"], config["n_layers"], config["batch_size"], config["seq_length"])
    assert sizes == (24, 1, 4, 8) and (config["lr"], config["drop_prob"]) == (0.01, 0.0)
    assert config["params"] == 4 * 24 * (62 + 24 + 2) + 24 * 62 + 62  # one LSTM layer on one-hot, the head
    assert [p["step"] for p in result["own_curve"]] == [5, 10, 15, 20]
    assert result["curve"][-1]["step"] == result["steps"] == 20
    assert result["sample_chars_per_sec"] > 0


@pytest.mark.slow
def test_gpt_baseline_quick():
    result = run_quick("gpt_baseline.py")
    config = result["config"]
    assert config["warmup_steps"] == 100 and config["min_lr"] == pytest.approx(config["lr"] / 10)
    assert config["betas"] == [0.9, 0.99]
    assert 12 <= config["val_subset_windows"] <= config["val_full_windows"]
    assert [p["step"] for p in result["own_curve"]] == [10, 20]
    assert result["curve"][-1]["step"] == 20


@pytest.mark.slow
def test_bench_ddp_quick_agrees_on_the_losses():
    result = run_quick("bench_ddp.py", threads=False)
    assert_provenance(result, "bench_ddp.py")
    assert result["val_loss"]["1x2"] == pytest.approx(result["val_loss"]["2x1"], abs=1e-4)
    assert result["chars_per_sec"]["2x1"]["median"] > 0


@pytest.mark.slow
def test_bench_gpu_quick_runs_every_measurement_on_the_cpu():
    result = run_quick("bench_gpu.py")
    assert result["device"] == "cpu (quick)"
    failed = [row for row in [*result["throughput"], *result["time_to_quality"]] if "error" in row]
    assert not failed, failed
    assert all(row["achieved_tflops"] > 0 for row in result["throughput"])
    assert result["sampling"]["streams_64_chars_per_sec"] > 0


@pytest.mark.slow
def test_tutorial_reproduction_quick():
    result = run_quick("tutorial_reproduction.py", "--runs", "tutorial")
    assert result["runs"] == ["tutorial"]
    assert 0 < result["last"]["tutorial"] < 5
    assert "| published log | charlstm --preset tutorial (exact) |" in result["table"]


def test_gpt_learning_rate_warms_up_then_decays_to_a_tenth_by_the_end():
    peak = gpt_baseline.PEAK_LR
    warmup = [gpt_baseline.learning_rate(step, 0.0, 0.0) for step in range(gpt_baseline.WARMUP_STEPS)]
    assert warmup == sorted(warmup) and warmup[0] < peak / 50 and warmup[-1] < peak
    after = [gpt_baseline.learning_rate(gpt_baseline.WARMUP_STEPS, p, 0.2) for p in (0.2, 0.6, 1.0)]
    assert after[0] == pytest.approx(peak)
    assert after[1] == pytest.approx(peak * (0.1 + 0.9 * 0.5))  # half-way down the cosine
    assert after[2] == pytest.approx(peak / 10)


def test_snapshots_score_the_weights_held_at_each_wall_time_point():
    import torch

    module = torch.nn.Linear(1, 1, bias=False)
    snapshots = Snapshots(budget_s=12)
    for elapsed, weight in ((4.0, 1.0), (5.5, 2.0), (11.0, 3.0), (12.5, 4.0)):
        with torch.no_grad():
            module.weight.fill_(weight)
        if snapshots.due(elapsed):
            snapshots.take(int(weight), elapsed, module)
    snapshots.take(5, 13.0, module)
    curve = snapshots.curve(module, lambda: module.weight.item())
    assert [(p["points_s"], p["val_loss"]) for p in curve] == [([5], 2.0), ([10], 3.0), ([], 4.0)]
    assert module.weight.item() == 4.0  # the last weights come back


def test_alternate_times_the_methods_in_turn():
    calls: list[str] = []
    seconds = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # a warm-up call each, then A, B, A, B, ...
    assert all(len(v) == 3 and all(t >= 0 and math.isfinite(t) for t in v) for v in seconds.values())


def run_report(*extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCHMARKS / "report.py"), *extra], capture_output=True,
                          text=True, timeout=120, check=False)


def test_page_matches_what_report_renders_from_the_committed_json():
    proc = run_report("--check")
    assert proc.returncode == 0, proc.stderr


def test_report_check_fails_on_a_hand_edited_table(tmp_path: Path):
    page = BENCHMARKS.parent / "docs" / "benchmarks.md"
    text = page.read_text(encoding="utf-8")
    begin = "<!-- begin summary (generated: do not edit by hand) -->\n"
    edited = tmp_path / "benchmarks.md"
    edited.write_text(text.replace(begin, begin + "| a row typed by hand | | | |\n"), encoding="utf-8")
    proc = run_report("--check", "--page", str(edited))
    assert proc.returncode == 1
    assert "differ" in proc.stderr


@pytest.mark.slow
def test_bench_serve_quick(tmp_path: Path):
    out_json = tmp_path / "serve.json"
    result = run_quick("bench_serve.py", "--out-json", str(out_json))
    assert json.loads(out_json.read_text(encoding="utf-8")) == result
    (entry,) = result["models"].values()
    assert set(entry["levels"]) == {"1", "8"}
    for clients, level in entry["levels"].items():
        assert level["requests"] == 8 and level["chars_received"] == 8 * 20, clients
        assert level["chars_per_sec"] > 0 and 0 < level["ttfc_p50_s"] <= level["ttfc_p99_s"]
    assert entry["largest_batch"] > 1  # the eight clients really shared steps
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from bench_serve import render
    finally:
        sys.path.remove(str(BENCHMARKS))
    section = render(result)
    assert section.count("| quick 2 x 64 |") == 4 and "| 64 clients >= 20 x" in section


def test_finetune_curve_quick(tmp_path: Path, trained_run: Path):
    out_json, plot, doc = tmp_path / "f.json", tmp_path / "f.png", tmp_path / "finetune.md"
    real_doc = BENCHMARKS.parent / "docs" / "finetune.md"
    doc.write_text(real_doc.read_text(encoding="utf-8"), encoding="utf-8")
    files = ["--out-json", str(out_json), "--plot-out", str(plot), "--doc", str(doc)]
    result = run_quick("finetune_curve.py", str(trained_run), *files)
    assert json.loads(out_json.read_text(encoding="utf-8")) == result
    assert plot.stat().st_size > 0
    assert set(result["texts"]) == {"english", "new_characters"}
    for entry in result["texts"].values():
        assert set(entry["runs"]) == {"scratch", "finetune", "finetune_full_rate"}
        for name, run in entry["runs"].items():
            assert run["curve"] and {"step", "elapsed_s", "val_loss"} <= run["curve"][0].keys()
            assert (run["base_text_loss"] is None) == (name == "scratch")  # forgetting: fine-tuned only
    assert result["base"]["held_out_loss"] > 0
    tuned = result["texts"]["new_characters"]["runs"]["finetune"]
    assert tuned["model"] == "1 x 32 LSTM"  # the base's architecture, not auto's
    assert {"“", "ﬁ"} <= set(result["texts"]["new_characters"]["added"])
    written = doc.read_text(encoding="utf-8")
    assert "Not measured yet" not in written and "| new characters | fine-tuned (default rate) |" in written
    assert "](f.png)" in written
    assert written.endswith(real_doc.read_text(encoding="utf-8").split("<!-- finetune:end -->")[1])


@pytest.mark.slow
def test_bench_levers_quick_runs_each_variant_told_its_budget():
    result = run_quick("bench_levers.py", "--variants", "defaults", "no_decay")
    assert_provenance(result, "bench_levers.py")
    assert list(result["variants"]) == ["defaults", "no_decay"]
    for entry in result["variants"].values():
        assert entry["curve"] and entry["steps"] == 20 and entry["final_val_loss"] > 0
    assert result["variants"]["no_decay"]["options"] == {"lr_decay": "none"}
    assert "lr_decay" not in result["variants"]["defaults"]["options"]
    # The defaults' row says what they were on that run (the quick run's tiny model included).
    assert result["variants"]["defaults"]["what"].startswith("the defaults (auto: 2x")
    assert "dropout" in result["variants"]["defaults"]["what"]


@pytest.mark.slow
def test_bench_threads_quick_measures_both_thread_counts_idle_and_busy():
    result = run_quick("bench_threads.py", threads=False)
    assert_provenance(result, "bench_threads.py")
    for condition in ("idle", "busy"):
        assert set(result[condition]) == {"1", "2"}
        assert all(v["median"] > 0 and len(v["chars_per_sec"]) == 1 for v in result[condition].values())


def test_a_longer_lever_budget_has_its_own_file_and_table_headed_by_the_defaults_run():
    import report
    from bench_levers import result_name

    assert (result_name(1), result_name(10)) == ("levers", "levers_10min")
    variant = {"what": "dropout 0", "val_loss_at_1_min": 1.55, "final_val_loss": 1.36,
               "time_to_val_2_0_s": 10.0, "steps": 12000, "eval_fraction_of_wall": 0.08}
    levers = {"config": {"minutes": 10, "seed": 1, "threads": 2}, "variants": {"dropout_0": variant},
              "command": "python benchmarks/bench_levers.py --minutes 10 --variants dropout_0"}
    charlstm = {"summary": {"steps": 11000, "eval_fraction_of_wall": 0.09}, "final_val_loss": 1.33,
                "val_loss_at_minutes": {"1": 1.54}, "time_to_val_2_0_s": 10.0}
    quality = {"config": {"minutes": 10}, "methods": {"charlstm": charlstm}}
    table = report.render_levers(levers, quality)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert "bench_quality.py's 10-minute run" in rows[2] and "**1.330**" in rows[2]
    assert "dropout 0" in rows[3] and "**1.360**" in rows[3]
    assert "--minutes 10 --variants dropout_0" in table
    # a quality run of another length is not a reference for this budget
    other = report.render_levers(levers, {**quality, "config": {"minutes": 5}})
    assert len([line for line in other.splitlines() if line.startswith("| ")]) == 3


def test_gpu_goals_are_unmeasured_unless_the_gpu_run_is_of_the_same_commit():
    import report

    quality = {"machine": {"commit": "abc1234"}}
    runs = [{"best_val_loss": 1.21, "time_to_val_1.3_s": 20.0},
            {"best_val_loss": 1.25, "time_to_val_1.3_s": None}]
    same = report.gpu_target_rows(quality, {"machine": {"commit": "abc1234"}, "time_to_quality": runs})
    assert "| 1.2100 | yes |" in same[0] and "| 20.0 s | yes |" in same[1]
    older = report.gpu_target_rows(quality, {"machine": {"commit": "0ld0ld0"}, "time_to_quality": runs})
    assert all("unmeasured on this code" in line and line.endswith("| unmeasured |") for line in older)
    assert "1.2100 at commit 0ld0ld0" in older[0]
    none = report.gpu_target_rows(quality, None)
    assert all(line.endswith("| unmeasured |") for line in none)
