"""End to end through `charlstm.cli.main`, in-process: train on a temp file, then sample from it."""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import TINY_TEXT

import charlstm
from charlstm.cli import build_parser, main
from charlstm.config import ModelConfig, TrainConfig

TINY_FLAGS = [
    "--hidden-size", "32", "--num-layers", "1", "--dropout", "0", "--batch-size", "4", "--seq-len", "16",
    "--max-steps", "10", "--eval-interval", "5", "--device", "cpu", "--quiet",
]  # fmt: skip


def one_error_line(capsys, stdout: str | None = None) -> str:
    """The one line on stderr; with `stdout`, what stdout must hold as well."""
    captured = capsys.readouterr()
    if stdout is not None:
        assert captured.out == stdout
    err = captured.err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("charlstm: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A run trained through the CLI (shared by the tests below; read only)."""
    root = tmp_path_factory.mktemp("cli")
    text = root / "tiny.txt"
    text.write_text(TINY_TEXT, encoding="utf-8")
    assert main(["train", str(text), "--out", str(root / "run"), *TINY_FLAGS]) == 0
    return root / "run"


def test_train_then_sample(tmp_path, tiny_text_file, capsys):
    out = tmp_path / "run"
    assert main(["train", str(tiny_text_file), "--out", str(out), *TINY_FLAGS]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no progress output
    assert f"saved {out}/best" in captured.out
    assert f"charlstm sample {out}" in captured.out
    assert (out / "best").is_dir() and (out / "last").is_dir()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    assert main(["sample", str(out), "--prime", "The ", "--length", "80", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("The ")
    assert len(first) == len("The ") + 80 + 1  # and a final line break
    assert set(first[:-1]) <= set(TINY_TEXT)
    assert main(["sample", str(out), "--prime", "The ", "--length", "80", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first
    api_text = charlstm.load(out).generate(prime="The ", length=80, seed=1)
    assert first == api_text + "\n"


def test_train_shows_progress_unless_quiet(tmp_path, tiny_text_file, capsys):
    flags = [f for f in TINY_FLAGS if f != "--quiet"]
    assert main(["train", str(tiny_text_file), "--out", str(tmp_path / "run"), *flags]) == 0
    err = capsys.readouterr().err
    assert "data: " in err and "model: 1 x 32 LSTM" in err
    assert "step      5" in err and "step     10" in err


def test_sample_several_greedy_and_filtered(cli_run, capsys):
    assert main(["sample", str(cli_run), "--prime", "fox", "--length", "20", "--num-samples", "2",
                 "--seed", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.count("===== sample ") == 2
    assert main(["sample", str(cli_run), "--prime", "fox", "--length", "20", "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert (
        main(["sample", str(cli_run), "--prime", "fox", "--length", "20", "--top-k", "1", "--seed", "9"]) == 0
    )
    assert capsys.readouterr().out == greedy
    assert (
        main(["sample", str(cli_run), "--prime", "fox", "--length", "20", "--top-p", "0.9", "--seed", "9"])
        == 0
    )
    assert capsys.readouterr().out.startswith("fox")


def test_top_k_above_the_vocabulary_is_a_note_not_an_error(cli_run, capsys):
    assert main(["sample", str(cli_run), "--prime", "fox", "--length", "5", "--top-k", "1000"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: --top-k 1000")


def test_unknown_prime_character_is_one_line_and_exit_1(cli_run, capsys):
    assert main(["sample", str(cli_run), "--prime", "fox@", "--length", "5"]) == 1
    line = one_error_line(capsys)
    assert "'@'" in line and "--drop-unknown" in line


def test_drop_unknown_samples_anyway(cli_run, capsys):
    assert main(["sample", str(cli_run), "--prime", "fox@", "--length", "5", "--drop-unknown"]) == 0
    assert capsys.readouterr().out.startswith("fox@")


@pytest.mark.parametrize(
    "flags",
    [["--temperature", "-1"], ["--top-k", "0"], ["--top-p", "0"], ["--top-p", "1.5"], ["--length", "-2"]],
)
def test_bad_sampling_options_are_one_line_and_exit_1(cli_run, capsys, flags):
    assert main(["sample", str(cli_run), "--prime", "fox", *flags]) == 1
    one_error_line(capsys, stdout="")  # nothing half-printed before the error


def test_missing_file_is_one_line_and_exit_1(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["train", str(missing), "--out", str(tmp_path / "run"), *TINY_FLAGS]) == 1
    assert str(missing) in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_empty_file_is_one_line_and_exit_1(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    assert main(["train", str(empty), "--out", str(tmp_path / "run"), *TINY_FLAGS]) == 1
    assert "empty" in one_error_line(capsys)


def test_binary_and_badly_encoded_files_are_one_line_and_exit_1(tmp_path, capsys):
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x00\x01\x02" * 100)
    assert main(["train", str(binary), "--out", str(tmp_path / "run"), *TINY_FLAGS]) == 1
    assert "binary" in one_error_line(capsys)
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("café " * 500).encode("latin-1"))
    assert main(["train", str(latin), "--out", str(tmp_path / "run"), *TINY_FLAGS]) == 1
    assert "byte 3 " in one_error_line(capsys)
    assert (
        main(["train", str(latin), "--out", str(tmp_path / "run"), "--encoding", "latin-1", *TINY_FLAGS]) == 0
    )


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--batch-size", "0"), ("--seq-len", "0"), ("--learning-rate", "-1"), ("--dropout", "1"),
     ("--val-frac", "0"), ("--hidden-size", "0"), ("--max-steps", "0")],
)  # fmt: skip
def test_bad_flag_value_is_one_line_and_exit_1(tmp_path, tiny_text_file, capsys, flag, value):
    argv = ["train", str(tiny_text_file), "--out", str(tmp_path / "run"), *TINY_FLAGS, flag, value]
    assert main(argv) == 1
    assert flag in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_existing_run_needs_overwrite(cli_run, tiny_text_file, capsys):
    assert main(["train", str(tiny_text_file), "--out", str(cli_run), *TINY_FLAGS]) == 1
    assert "--overwrite" in one_error_line(capsys)


def test_resume_a_run(tmp_path, tiny_text_file, capsys):
    out = tmp_path / "run"
    flags = [*TINY_FLAGS, "--max-steps", "5"]
    assert main(["train", str(tiny_text_file), "--out", str(out), *flags]) == 0
    assert main(["train", "--resume", str(out), "--max-steps", "10", "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]
    assert charlstm.load(out / "last").training["step"] == 10
    capsys.readouterr()


def test_missing_checkpoint_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 1
    assert "no such checkpoint" in one_error_line(capsys)


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["train", "--batch-size", "many"]) == 2
    assert main(["train", "--cell", "transformer"]) == 2
    assert "invalid" in capsys.readouterr().err


def test_version_and_help_exit_0(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"charlstm {charlstm.__version__}"
    assert main(["train", "--help"]) == 0
    assert "--hidden-size" in capsys.readouterr().out


def test_every_config_field_is_a_documented_flag(capsys):
    assert main(["train", "--help"]) == 0
    help_text = capsys.readouterr().out
    for cls in (ModelConfig, TrainConfig):
        for field in fields(cls):
            if field.name != "vocab_size":
                assert "--" + field.name.replace("_", "-") in help_text, field.name


def test_info_text_and_json(cli_run, capsys):
    assert main(["info", str(cli_run)]) == 0
    text = capsys.readouterr().out
    assert f"checkpoint: {cli_run / 'best'}" in text
    assert "model: 1 x 32 LSTM" in text
    assert main(["info", str(cli_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"]["hidden_size"] == 32
    assert info["vocab"] == "".join(sorted(set(TINY_TEXT)))
    assert info["training"]["step"] == 10


def test_eval_text_and_json(cli_run, tiny_text_file, capsys):
    assert main(["eval", str(cli_run), str(tiny_text_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bpc"] == pytest.approx(result["loss"] / math.log(2))
    assert result["unknown_chars"] == 0
    assert result["num_chars"] == len(TINY_TEXT)
    assert result == pytest.approx(charlstm.load(cli_run).evaluate(TINY_TEXT))
    assert main(["eval", str(cli_run), str(tiny_text_file)]) == 0
    assert "bits/char" in capsys.readouterr().out


def test_eval_of_a_missing_file_is_one_line_and_exit_1(cli_run, tmp_path, capsys):
    assert main(["eval", str(cli_run), str(tmp_path / "missing.txt")]) == 1
    one_error_line(capsys)


def test_verbose_shows_the_traceback(tmp_path, capsys):
    assert main(["--verbose", "sample", str(tmp_path / "nope")]) == 1
    assert "Traceback" in capsys.readouterr().err


def flags_of(parser: argparse.ArgumentParser) -> set[str]:
    return {
        option
        for action in parser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def doc_sections(doc: str) -> dict[str, str]:
    """docs/flags.md split at its `## ` headings: `charlstm train ...` -> "train", Global -> ""."""
    sections: dict[str, str] = {}
    for part in re.split(r"^## ", doc, flags=re.MULTILINE)[1:]:
        heading, _, body = part.partition("\n")
        command = re.match(r"`charlstm (\w+)", heading)
        if command:
            sections[command.group(1)] = body
        elif heading.strip() == "Global":
            sections[""] = body
    return sections


FLAGS_DOC = Path(__file__).resolve().parents[1] / "docs" / "flags.md"


def undocumented(doc: str) -> list[str]:
    """Flags `--help` shows (per command, and the global ones) missing from that command's
    section of `doc`."""
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    commands = dict(subparsers.choices)
    assert set(commands) == {"train", "sample", "serve", "eval", "info", "export", "inspect", "plot"}
    sections = doc_sections(doc)
    assert set(sections) == {"", *commands}
    missing = []
    global_flags = flags_of(parser)
    for name, command in [("", parser), *commands.items()]:
        flags = flags_of(command) - (global_flags if name else set())  # documented once, under Global
        assert flags, name
        for flag in sorted(flags):
            if not re.search(rf"`{re.escape(flag)}(?![\w-])", sections[name]):
                missing.append(f"{name or 'charlstm'} {flag}")
    return missing


def test_every_flag_in_help_is_in_the_flags_doc():
    missing = undocumented(FLAGS_DOC.read_text(encoding="utf-8"))
    assert not missing, f"flags shown by --help but not documented in docs/flags.md: {missing}"


def test_the_flags_doc_check_notices_a_missing_flag():
    doc = FLAGS_DOC.read_text(encoding="utf-8")
    without = "\n".join(line for line in doc.splitlines() if not line.startswith("| `--top-p"))
    assert without != doc
    assert undocumented(without) == ["sample --top-p"]  # `--top-k` does not count for `--top-p`
    assert "train --seed" in undocumented(doc.replace("`--seed S` | 1 |", "seed |"))


def test_sample_stop_no_echo_and_output_file(cli_run, tmp_path, capsys):
    flags = ["sample", str(cli_run), "--prime", "fox", "--length", "200", "--temperature", "0"]
    assert main(flags) == 0
    full = capsys.readouterr().out.rstrip("\n")
    stop = full[5:7]  # two generated characters, so the stop is found after the prime
    assert main([*flags, "--stop", stop, "--stop", "\x01never"]) == 0
    assert capsys.readouterr().out == full[: full.index(stop, 3)] + "\n"
    assert main([*flags, "--no-echo"]) == 0
    assert capsys.readouterr().out == full[3:] + "\n"
    out_file = tmp_path / "sample.txt"
    assert main([*flags, "--output", str(out_file)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and str(out_file) in captured.err
    assert out_file.read_text(encoding="utf-8") == full + "\n"


def test_sample_logprobs_lists_each_generated_character(cli_run, capsys):
    flags = ["--prime", "fox", "--length", "12", "--logprobs", "3", "--seed", "1"]
    assert main(["sample", str(cli_run), *flags]) == 0
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 12
    generated = captured.out.rstrip("\n")[3:]
    for char, line in zip(generated, lines, strict=True):
        shown, logprob, alternatives = line.split("\t")
        assert shown == repr(char) and float(logprob) <= 0
        assert alternatives.count("'") >= 6  # three quoted alternatives
    assert main(["sample", str(cli_run), "--prime", "fox", "--logprobs", "6"]) == 1
    assert "--logprobs" in one_error_line(capsys, stdout="")


def test_sample_output_to_an_unwritable_path_is_one_line(cli_run, tmp_path, capsys):
    assert main(["sample", str(cli_run), "--length", "3", "--output", str(tmp_path / "no" / "x.txt")]) == 1
    assert "--output" in one_error_line(capsys)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("how", [[], ["--split", "val"]], ids=["no-text", "split-val"])
def test_eval_of_the_run_itself_matches_its_best_val_loss(cli_run, capsys, how):
    """Issue 11, defect 7: one evaluator for validation and `charlstm eval`."""
    assert main(["eval", str(cli_run), *how, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["loss"] == pytest.approx(min(r["val_loss"] for r in _metrics(cli_run)), abs=1e-4)


def test_eval_of_a_run_trained_with_a_val_file_scores_that_file(tmp_path, tiny_text_file, capsys):
    val = tmp_path / "val.txt"
    val.write_text("How quick the lazy dog jumps over the brown fox.\n" * 8, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", str(tiny_text_file), "--out", str(out), "--val-file", str(val), *TINY_FLAGS]) == 0
    capsys.readouterr()
    best = min(r["val_loss"] for r in _metrics(out))
    for args in ([], ["--split", "val"], [str(val)]):
        assert main(["eval", str(out), *args, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(best, abs=1e-4), args


def test_eval_reads_standard_input(cli_run, tiny_text_file, capsys, monkeypatch):
    import io

    assert main(["eval", str(cli_run), str(tiny_text_file), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    monkeypatch.setattr("sys.stdin", io.StringIO(TINY_TEXT))
    assert main(["eval", str(cli_run), "-", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(from_file)


def test_eval_refuses_both_a_split_and_texts(cli_run, tiny_text_file, capsys):
    assert main(["eval", str(cli_run), str(tiny_text_file), "--split", "val"]) == 1
    assert "--split" in one_error_line(capsys)


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_an_unknown_device_is_a_usage_error(cli_run, capsys, command):
    assert main([command, str(cli_run), "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--device" in err and "invalid choice" in err


def test_threads_work_after_the_subcommand(cli_run, capsys):
    import torch

    try:
        assert main(["sample", str(cli_run), "--length", "5", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
        assert main(["--threads", "1", "sample", str(cli_run), "--length", "5"]) == 0
        assert torch.get_num_threads() == 1
        assert main(["sample", str(cli_run), "--length", "5", "--threads", "0"]) == 1
        assert "--threads" in one_error_line(capsys)
    finally:
        torch.set_num_threads(1)


def test_bf16_off_cuda_is_said_in_the_run_summary(tmp_path, tiny_text_file, capsys):
    flags = [f for f in TINY_FLAGS if f != "--quiet"]
    assert (
        main(["train", str(tiny_text_file), "--out", str(tmp_path / "run"), *flags, "--precision", "bf16"])
        == 0
    )
    err = capsys.readouterr().err
    assert any(line.startswith("chosen: ") and "bf16" in line for line in err.splitlines()), err


class FakeBar:
    def __init__(self, rate: float) -> None:
        self.format_dict = {"rate": rate}
        self.postfix = ""

    def update(self, steps: int) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text


def test_progress_counts_the_characters_of_every_process():
    """Under torchrun each process trains its share of the streams; the bar shows them all."""
    from types import SimpleNamespace

    import torch

    from charlstm.cli import ProgressReporter, StopSignals

    reporter = ProgressReporter(quiet=True, signals=StopSignals())
    model = {"num_layers": 1, "hidden_size": 32, "cell": "lstm", "dropout": 0.0}
    config = {"batch_size": 8, "seq_len": 16, "learning_rate": 0.01}
    reporter.on_start(
        {"data": ["x"], "num_chars": 10, "vocab_size": 3, "model": model, "parameters": 1, "device": "cpu",
         "config": config, "steps_per_epoch": 5, "total_steps": 10, "eval_interval": 5, "world_size": 2,
         "resumed": False, "start_step": 0}
    )  # fmt: skip
    reporter.bar = FakeBar(rate=10.0)  # steps per second, as tqdm measures them
    reporter.last_refresh = -math.inf
    trainer = SimpleNamespace(
        progress=SimpleNamespace(epoch=0, window=1),
        steps_per_epoch=5,
        train_batches=SimpleNamespace(batch_size=4, seq_len=16),  # this process's 4 of the 8 streams
    )
    reporter.on_step(trainer, torch.tensor(1.0))
    assert f"{10 * 8 * 16:,} chars/s" in reporter.bar.postfix


@pytest.mark.slow
def test_resuming_a_run_with_nothing_left_to_do_is_one_line_and_exit_1(tmp_path, tiny_text_file, capsys):
    out = tmp_path / "run"
    flags = [*TINY_FLAGS, "--max-steps", "100000", "--eval-interval", "100000", "--max-time", "0.3"]
    assert main(["train", str(tiny_text_file), "--out", str(out), *flags]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--quiet"]) == 1
    assert "--max-time" in one_error_line(capsys, stdout="")
    assert main(["train", "--resume", str(out), "--quiet", "--max-time", "0.5"]) == 0
    assert "saved" in capsys.readouterr().out


def test_busy_cpu_advice_only_when_the_cores_are_taken():
    from charlstm.cli_train import busy_cpu_advice

    assert busy_cpu_advice(load=0.2, cores=2, threads=2) is None, "an idle machine: two threads are faster"
    assert busy_cpu_advice(load=1.9, cores=2, threads=1) is None, "one thread already"
    advice = busy_cpu_advice(load=1.9, cores=2, threads=2)
    assert advice is not None and "--threads 1" in advice and "load 1.9 on 2 cores" in advice
    assert "--threads 12" in busy_cpu_advice(load=4.0, cores=16, threads=16)
    assert busy_cpu_advice(load=4.0, cores=16, threads=8) is None


def test_a_busy_machine_is_told_in_the_run_summary(tmp_path, tiny_text_file, capsys, monkeypatch):
    import os

    import torch

    monkeypatch.setattr(os, "getloadavg", lambda: (7.5, 7.0, 6.0), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        flags = [f for f in TINY_FLAGS if f != "--quiet"]
        assert main(["train", str(tiny_text_file), "--out", str(tmp_path / "run"), *flags]) == 0
    finally:
        torch.set_num_threads(threads)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == [notes[0]] and "--threads 1" in notes[0], notes
