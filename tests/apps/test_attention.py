"""`lmforge attention`: weights of every layer and head (rows sum to one, causal for decoders), a PNG grid, an HTML
view with nothing loaded from outside, opened in a real headless Chromium with the network blocked."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import lmforge
from lmforge.apps.attention import attention_maps, render_html
from lmforge.cli import main
from lmforge.errors import ConfigError

from _finetune_data import encoder_tokenizer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


def tiny(tmp_path: Path, preset: str) -> Path:
    tok = encoder_tokenizer()
    config = lmforge.ModelConfig.from_name(preset, vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4,
                                           context_length=64)
    model = lmforge.build_model(config)
    folder = tmp_path / preset
    lmforge.save(model, folder, tokenizer=tok)
    return folder


@pytest.mark.parametrize("preset", ["gpt-mini", "bert-mini"])
def test_weights_of_every_layer_and_head(tmp_path, preset):
    model = lmforge.load(tiny(tmp_path, preset))
    maps = attention_maps(model, "the movie was not good")
    T = len(maps.tokens)
    assert maps.weights.shape == (2, 4, T, T)
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    if preset == "gpt-mini":  # a decoder never looks ahead
        assert np.abs(np.triu(maps.weights, 1)).max() == 0
    assert "".join(t for t in maps.tokens if t not in ("[CLS]", "[SEP]", "<s>", "</s>")).replace(" ", "") == \
        "themoviewasnotgood"
    with pytest.raises(ConfigError, match="empty"):
        attention_maps(model, "   ")


def test_cli_writes_png_html_json_and_keeps_earlier_output(tmp_path):
    folder = tiny(tmp_path, "bert-mini")
    out = tmp_path / "attn"
    assert main(["attention", str(folder), "the movie was not good", "--out", str(out)]) == 0
    assert (out / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "attention.json").read_text())
    assert len(data["weights"]) == 2 and len(data["weights"][0]) == 4
    html = (out / "attention.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no CDN, no remote anything
    assert "<script src" not in html and "@import" not in html
    assert main(["attention", str(folder), "other text", "--out", str(out)]) == 2  # not without --overwrite
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert main(["attention", str(folder), "x", "--out", str(tmp_path / "mine"), "--overwrite"]) == 2


def test_html_escapes_the_text():
    from lmforge.apps.attention import AttentionMaps

    maps = AttentionMaps(["</script><b>", "x"], np.full((1, 1, 2, 2), 0.5), "encoder", "</script>")
    html = render_html(maps, "a <title>")
    assert "</script><b>" not in html and "a &lt;title>" in html


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_html_view_works_in_headless_chromium_without_network(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    folder = tiny(tmp_path, "bert-mini")
    out = tmp_path / "attn"
    assert main(["attention", str(folder), "anna met bob in paris", "--out", str(out)]) == 0
    requests, errors = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 500})
            page.on("request", lambda r: requests.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.route(re.compile(r"^(?!file:).*"), lambda route: route.abort())  # the network is off
            page.goto((out / "attention.html").as_uri())
            tokens = json.loads((out / "attention.json").read_text())["tokens"]
            assert page.locator("svg text").count() == 2 * len(tokens)
            last = page.locator("line.att").count()
            assert last > 0
            page.select_option("#layer", "0")
            first = page.locator("line.att").count()
            assert first > 0
            page.locator(".head").first.dblclick()  # one head only: fewer lines
            assert 0 < page.locator("line.att").count() < first
            page.locator("svg text").nth(1).hover()  # follow one query token
            assert page.locator("line.att").count() <= len(tokens)
            assert "layer 0, head 0" in page.locator("#mapTitle").inner_text()
            shot = page.screenshot()
            assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            browser.close()
    assert errors == [] and requests == [(out / "attention.html").as_uri()]
