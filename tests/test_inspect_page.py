"""The inspection page: its data matches the model, it is one self-contained file, and in real
headless Chromium it renders the text, recolours by a chosen unit and shows five predictions."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from conftest import TINY_TEXT, make_model

from charlstm.api import CharModel, load
from charlstm.cli import main
from charlstm.errors import CharLSTMError
from charlstm.inspect_page import PLACEHOLDER, page_data, render_page, write_page
from charlstm.vocab import Vocab

TEXT = 'The "quick" brown fox (jumps) over\nthe lazy dog.</script> ' * 3


def quoted_model(cell: str = "lstm") -> CharModel:
    vocab = Vocab.from_text(TINY_TEXT + '"()</>')
    return CharModel(make_model(len(vocab), cell, hidden_size=8), vocab, {"step": 7, "data": ["x.txt"]})


def embedded_data(html: str) -> dict:
    block = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    assert block is not None
    return json.loads(block.group(1))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_page_data_matches_the_inspection(cell):
    model = quoted_model(cell)
    result = model.inspect(TEXT)
    data = page_data(result, model, "a test")
    assert data["text"] == TEXT
    assert data["summary"]["loss"] == pytest.approx(result.loss, abs=1e-4)
    assert data["surprisal"][0] is None
    assert data["surprisal"][5] == pytest.approx(result.surprisal[5], abs=1e-4)
    kind = "tanh_c" if cell == "lstm" else "h"
    raw = np.frombuffer(base64.b64decode(data["layers"][1][kind]), dtype=np.uint8).reshape(8, len(TEXT))
    decoded = raw / 255 * 2 - 1  # one byte per value over [-1, 1]
    np.testing.assert_allclose(decoded, result.layers[1][kind].T, atol=1 / 255 + 1e-6)
    assert len(data["saturation"]) == 2
    assert {s["feature"] for s in data["ranking"]} >= {"inside quotes", "variance"}


def test_the_page_is_self_contained_and_the_text_cannot_break_out(tmp_path):
    model = quoted_model()
    out = tmp_path / "page.html"
    data = write_page(model, TEXT, out, "a test", max_chars=40)
    html = out.read_text(encoding="utf-8")
    assert PLACEHOLDER not in html
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html)  # nothing fetched
    assert "</script> " not in html  # the text's </script> is escaped inside the data block
    assert embedded_data(html)["text"] == TEXT[:40] == data["text"]
    assert embedded_data(render_page({"x": "a</script>b"}))["x"] == "a</script>b"


def test_summary_with_partial_training_facts():
    model = quoted_model()
    model.training = {"step": 3, "best_val_loss": None}
    assert page_data(model.inspect(TEXT), model, "x")["summary"]["trained"] == (
        "3 steps, best val loss unknown, data: unknown"
    )
    model.training = {}
    assert page_data(model.inspect(TEXT), model, "x")["summary"]["trained"] == "no training facts"


def test_too_little_text_is_a_clear_error(tmp_path):
    with pytest.raises(CharLSTMError, match="at least 2"):
        write_page(quoted_model(), "\u00e9\u00e9T", tmp_path / "p.html")


def test_cli_inspect_on_a_run_and_its_validation_text(trained_run, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert main(["inspect", str(trained_run), "-o", str(out), "--max-chars", "300"]) == 0
    printed = capsys.readouterr().out
    data = embedded_data(out.read_text(encoding="utf-8"))
    val_frac = load(trained_run).training["config"]["val_frac"]
    assert data["text"] == TINY_TEXT[int(len(TINY_TEXT) * (1 - val_frac)) :][:300]
    assert f"loss {data['summary']['loss']:.4f}" in printed
    assert main(["inspect", str(trained_run), "--sample", "120", "--seed", "1", "-o", str(out)]) == 0
    sampled = embedded_data(out.read_text(encoding="utf-8"))
    assert len(sampled["text"]) == 120 and set(sampled["novelty"]) == {"10", "20", "40"}
    assert main(["inspect", str(trained_run), "abc", "--split", "val"]) == 1
    assert "not TEXT and --split" in capsys.readouterr().err


def open_page(browser_page, tmp_path, model):
    """Write `model`'s page on TEXT and open it in Chromium from file://."""
    path = tmp_path / "page.html"
    write_page(model, TEXT, path, "a test")
    browser_page.page.goto(path.as_uri())
    browser_page.page.wait_for_selector("#text span")
    return browser_page.page


@pytest.mark.slow
def test_the_page_in_chromium(browser_page, tmp_path):
    model = quoted_model()
    page = open_page(browser_page, tmp_path, model)
    assert page.inner_text("#text").replace("\u21b5", "") == TEXT
    assert page.locator("#text span").count() == len(TEXT)
    before = page.eval_on_selector_all("#text span", "s => s.map(e => e.style.backgroundColor)")
    page.select_option("#colour", "1:tanh_c")
    page.fill("#unit", "3")
    after = page.eval_on_selector_all("#text span", "s => s.map(e => e.style.backgroundColor)")
    assert after != before and len(set(after)) > 5
    page.locator("#units tr.unit").first.click()
    chosen = page.eval_on_selector("#units tr.unit", "r => [r.dataset.layer, r.dataset.kind, r.dataset.unit]")
    assert page.input_value("#colour") == f"{chosen[0]}:{chosen[1]}"
    assert page.input_value("#unit") == chosen[2]
    page.hover("#text span:nth-child(6)")
    assert page.is_visible("#popup")
    predictions = page.locator("#popup .prediction")
    assert predictions.count() == 5
    result = model.inspect(TEXT)
    first_guess = model.vocab.chars[result.top_ids[5, 0]]
    assert predictions.first.inner_text().startswith(first_guess if first_guess.strip() else "\u2423")
    assert page.locator("#saturation svg").count() == 2
    assert page.locator("#saturation circle.dot").count() == 2 * 3 * 8  # layers x gates x units
    assert browser_page.errors == []


@pytest.mark.slow
def test_keyboard_focus_shows_predictions(browser_page, tmp_path):
    page = open_page(browser_page, tmp_path, quoted_model("gru"))
    page.focus("#text")
    page.keyboard.press("ArrowRight")
    assert page.is_visible("#popup")
    assert page.locator("#popup .prediction").count() == 5
    assert page.inner_text("#popup").startswith("h (")  # the character at the cursor, then its guesses
    assert browser_page.errors == []


@pytest.mark.slow
def test_an_rnn_page_has_no_gates_to_plot(browser_page, tmp_path):
    page = open_page(browser_page, tmp_path, quoted_model("rnn"))
    options = page.eval_on_selector_all("#colour option", "o => o.map(e => e.value)")
    assert options == ["surprisal", "0:h", "1:h"]
    assert "no gates" in page.inner_text("#saturation")
    assert browser_page.errors == []
