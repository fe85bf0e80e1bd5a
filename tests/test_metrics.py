from __future__ import annotations

import json
import math

import pytest

from charlstm.metrics import LN2, MetricsLog, bits_per_char, format_record, score

RECORD = {
    "step": 120,
    "epoch": 1.5,
    "train_loss": 1.23456,
    "val_loss": 1.3,
    "val_bpc": 1.3 / math.log(2),
    "chars_per_sec": 123456.7,
    "elapsed_s": 61.4,
}


def test_bits_per_char_is_nats_over_ln2():
    assert LN2 == pytest.approx(math.log(2))
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert bits_per_char(1.0) == pytest.approx(1.4426950408889634)


def test_score_of_uniform_guessing_over_v_characters():
    nats = 1000 * math.log(65)
    result = score(nats, 1000)
    assert result["loss"] == pytest.approx(math.log(65))
    assert result["bpc"] == pytest.approx(math.log2(65))
    assert result["perplexity"] == pytest.approx(65)


def test_log_appends_one_json_object_per_line(tmp_path):
    log = MetricsLog(tmp_path / "sub" / "metrics.jsonl")
    assert log.read() == []
    log.write(RECORD)
    log.write({**RECORD, "step": 240})
    lines = (tmp_path / "sub" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["step"] for line in lines] == [120, 240]
    assert log.read() == [RECORD, {**RECORD, "step": 240}]


def test_a_second_log_on_the_same_file_continues_it(tmp_path):
    MetricsLog(tmp_path / "m.jsonl").write(RECORD)
    MetricsLog(tmp_path / "m.jsonl").write(RECORD)
    assert len(MetricsLog(tmp_path / "m.jsonl").read()) == 2


def test_rewrite_replaces_the_log(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in (1, 2, 3):
        log.write({**RECORD, "step": step})
    log.rewrite([{**RECORD, "step": 1}])
    assert [r["step"] for r in log.read()] == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_format_record_is_one_readable_line():
    line = format_record(RECORD)
    assert "\n" not in line
    assert "step    120" in line
    assert "epoch 1.50" in line
    assert "train 1.2346" in line
    assert "val 1.3000" in line
    assert "(1.876 bpc)" in line
    assert "123,457 chars/s" in line
    assert line.endswith("61s")


def test_rewrite_reaches_the_disk_before_it_replaces_the_log(tmp_path, monkeypatch):
    """A resumed run rewrites the log; a crash right after must not leave an empty file in its
    place (rename without fsync can), so the new content is synced before the rename."""
    import os

    log = MetricsLog(tmp_path / "m.jsonl")
    log.write(RECORD)
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append("fsync")
        return fsync(fd)

    def record_replace(*args, **kwargs):
        events.append("replace")
        return replace(*args, **kwargs)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    log.rewrite([{**RECORD, "step": 1}])
    assert [r["step"] for r in log.read()] == [1]
    assert "fsync" in events, "the new log is never synced"
    renames = [i for i, event in enumerate(events) if event == "replace"]
    assert not renames or events.index("fsync") < renames[-1], "synced before the rename"


def test_a_partial_validation_says_how_much_it_scored():
    line = format_record({**RECORD, "val_chars": 24_815})
    assert "(1.876 bpc on 24,815 chars)" in line and "\n" not in line
