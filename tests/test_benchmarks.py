"""Smoke tests of benchmarks/bench_*.py: each runs with --quick and prints one JSON object with the
expected keys. No timing is asserted: the numbers depend on the machine and its load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_quick(script: str, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--threads", "1", *extra],
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


@pytest.mark.slow
def test_bench_quality_quick(tmp_path: Path):
    out_json, plot = tmp_path / "q.json", tmp_path / "q.png"
    result = run_quick("bench_quality.py", "--out-json", str(out_json), "--plot-out", str(plot))
    assert json.loads(out_json.read_text(encoding="utf-8")) == result
    assert plot.stat().st_size > 0
    assert set(result["methods"]) == {"tutorial", "gpt", "charlstm"}
    for entry in result["methods"].values():
        assert entry["curve"] and {"step", "elapsed_s", "val_loss"} <= entry["curve"][0].keys()
        assert set(entry["val_loss_at_minutes"]) == {"1", "2", "5", "10", "20", "30"}
        assert {"time_to_val_2_0_s", "best_val_loss", "summary"} <= entry.keys()


@pytest.mark.slow
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
