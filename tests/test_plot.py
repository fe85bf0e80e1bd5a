"""`plot_curves` draws every run from its metrics.jsonl, marks learning-rate changes and the best
point, and writes a real PNG; `write_curves` puts one in the run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from charlstm.errors import CharLSTMError
from charlstm.metrics import MetricsLog
from charlstm.plot import plot_curves, read_curve, write_curves

pytest.importorskip("matplotlib")


def fake_run(root, name, losses, rates, batch=(4, 8)):
    run = root / name
    log = MetricsLog(run / "metrics.jsonl")
    for number, (loss, rate) in enumerate(zip(losses, rates, strict=True), start=1):
        log.write(
            {
                "step": 10 * number,
                "epoch": number / 4,
                "train_loss": loss + 0.1,
                "val_loss": loss,
                "val_bpc": loss / 0.693,
                "chars_per_sec": 100.0,
                "elapsed_s": 2.5 * number,
                "learning_rate": rate,
            }
        )
    (run / "last").mkdir()
    training = {"config": {"batch_size": batch[0], "seq_len": batch[1]}, "world_size": 1}
    (run / "last" / "config.json").write_text(json.dumps({"training": training}), encoding="utf-8")
    return run


def colour_share(png, rgb):
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3]
    return float((np.abs(pixels - np.array(rgb) / 255).sum(-1) < 0.05).mean())


def test_two_runs_are_drawn_with_their_marks(tmp_path):
    first = fake_run(tmp_path, "a", [3.0, 2.0, 1.5, 1.6], [0.01, 0.01, 0.005, 0.005])
    second = fake_run(tmp_path, "b", [2.5, 2.2, 2.1], [0.002] * 3)
    out = tmp_path / "plots" / "curves.png"
    curves = plot_curves([first, second], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [c.name for c in curves] == ["a", "b"]
    assert curves[0].x == [10, 20, 30, 40]
    assert curves[0].val_loss == [3.0, 2.0, 1.5, 1.6]
    assert curves[0].train_loss == pytest.approx([3.1, 2.1, 1.6, 1.7])
    assert curves[0].lr_changes == [(30, 0.005)]
    assert curves[0].best == (30, 1.5)
    assert curves[1].lr_changes == [] and curves[1].best == (30, 2.1)
    # matplotlib's first two colours: one per run, both actually painted
    assert colour_share(out, (31, 119, 180)) > 0.001
    assert colour_share(out, (255, 127, 14)) > 0.001


def test_x_axes_time_and_characters(tmp_path):
    run = fake_run(tmp_path, "a", [3.0, 2.0], [0.01, 0.01], batch=(4, 8))
    assert read_curve(run, "time").x == [2.5, 5.0]
    assert read_curve(run, "chars").x == [10 * 32, 20 * 32]
    with pytest.raises(CharLSTMError, match="--x"):
        read_curve(run, "epochs")


def test_runs_sharing_a_name_are_told_apart(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first = fake_run(tmp_path / "x", "run", [2.0, 1.0], [0.1, 0.1])
    second = fake_run(tmp_path / "y", "run", [2.0, 1.0], [0.1, 0.1])
    curves = plot_curves([first, second], tmp_path / "c.png")
    assert [c.name for c in curves] == ["x/run", "y/run"]


def test_a_folder_without_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(CharLSTMError, match=r"metrics\.jsonl"):
        plot_curves([tmp_path], tmp_path / "c.png")


def test_write_curves_on_a_trained_run(trained_run, tmp_path):
    import shutil

    run = shutil.copytree(trained_run, tmp_path / "run")
    out = write_curves(run)
    assert out == run / "curves.png"
    assert out.read_bytes()[:4] == b"\x89PNG"
    records = MetricsLog(run / "metrics.jsonl").read()
    assert read_curve(run).val_loss == [r["val_loss"] for r in records]


def test_cli_plot(tmp_path, capsys):
    from charlstm.cli import main

    first = fake_run(tmp_path, "a", [3.0, 2.0], [0.01, 0.01])
    second = fake_run(tmp_path, "b", [2.5, 2.4], [0.01, 0.01])
    out = tmp_path / "curves.png"
    assert main(["plot", str(first), str(second), "-o", str(out), "--x", "chars"]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "a: 2 evaluations, best val loss 2.0000" in printed
    assert "b: 2 evaluations, best val loss 2.4000" in printed
    assert main(["plot", str(tmp_path / "nothing")]) == 1
    assert "metrics.jsonl" in capsys.readouterr().err


def test_without_matplotlib_plot_is_one_line_error(tmp_path, monkeypatch, capsys):
    import sys

    from charlstm.cli import main

    run = fake_run(tmp_path, "a", [3.0, 2.0], [0.01, 0.01])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what a missing [plot] extra looks like
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 1
    assert (
        capsys.readouterr().err
        == "charlstm: error: plotting needs matplotlib: pip install 'charlstm[plot]'\n"
    )


@pytest.mark.slow
def test_the_cli_loads_neither_matplotlib_nor_the_inspection_modules():
    """plot.py itself is light (the run folder draws curves with it); matplotlib loads only to draw."""
    import subprocess
    import sys

    code = (
        "import sys, charlstm.cli; "
        "heavy = ('matplotlib', 'charlstm.inspection', 'charlstm.inspect_page'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
