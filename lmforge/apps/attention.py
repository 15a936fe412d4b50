"""Attention maps: the attention weights of every layer and head of a model on one text, as a PNG grid (layers x
heads) and a self-contained HTML view (bertviz's head view, with its script and styles inline, so it opens with no
network), plus the weights as JSON.

The weights come from `lmforge.model.record_attention`, which computes attention written out (the fused SDPA
kernel never materialises them); they equal transformers' `output_attentions=True` (tested for GPT-2 and BERT).
Decoders show their causal self-attention, encoders their bidirectional self-attention, encoder-decoders their
encoder's self-attention over the text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import io as lio
from ..errors import ConfigError
from ..model import Transformer, record_attention

FILES = ("attention.png", "attention.html", "attention.json")


@dataclass
class AttentionMaps:
    """The tokens of a text and the attention weights over them: (layers, heads, tokens, tokens), rows are queries."""

    tokens: list[str]
    weights: np.ndarray
    stack: str  # encoder | decoder
    text: str

    @property
    def layers(self) -> int:
        return self.weights.shape[0]

    @property
    def heads(self) -> int:
        return self.weights.shape[1]

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        return {"text": self.text, "stack": self.stack, "tokens": self.tokens,
                "weights": np.round(self.weights, digits).tolist()}


def token_labels(model: Transformer, text: str, ids: list[int], offsets: list[tuple[int, int]]) -> list[str]:
    """What each token shows: its piece of the text (offsets), or its name for special tokens."""
    labels = []
    for i, (a, b) in zip(ids, offsets):
        piece = text[a:b] if b > a else (model.tokenizer.id_to_token(i) or str(i))
        labels.append(piece.replace("\n", "\\n") or str(i))
    return labels


@torch.no_grad()
def attention_maps(model: Transformer, text: str, *, max_length: int | None = None) -> AttentionMaps:
    """Attention weights of every layer and head of `model` on `text` (with the tokenizer's special tokens)."""
    if model.tokenizer is None:
        raise ConfigError("the model has no tokenizer; load it from a folder with tokenizer.json")
    if not text or not text.strip():
        raise ConfigError("the text is empty; give a sentence to look at")
    limit = min(max_length or model.config.context_length, model.config.context_length)
    encoding = model.tokenizer.backend.encode(text, add_special_tokens=True)
    ids, offsets = list(encoding.ids)[:limit], list(encoding.offsets)[:limit]
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    try:
        with record_attention(model) as recorded:
            model.encode(torch.tensor([ids], device=device))
    finally:
        model.train(was)
    stack = "encoder" if model.encoder is not None else "decoder"
    weights = torch.stack([w[0] for w in recorded[stack]]).float().cpu().numpy()  # (L, H, T, T)
    return AttentionMaps(token_labels(model, text, ids, offsets), weights, stack, text)


def plot_grid(maps: AttentionMaps, path: str | Path, title: str = "") -> Path:
    """One heat map per layer (rows) and head (columns); tokens on the axes of the first column and last row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L, H, T = maps.layers, maps.heads, len(maps.tokens)
    cell = max(1.1, min(2.2, 0.12 * T + 0.6))
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 1.2, cell * L + 1.0), dpi=90, squeeze=False)
    font = max(3.5, min(7.0, 80 / max(T, 1)))
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            ax.imshow(maps.weights[layer, head], cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=8)
                if T <= 40:
                    ax.set_yticks(range(T), maps.tokens, fontsize=font)
            if layer == L - 1 and T <= 40:
                ax.set_xticks(range(T), maps.tokens, fontsize=font, rotation=90)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=8)
    fig.suptitle(title or f"{maps.stack} self-attention: {maps.text[:80]}", fontsize=10)
    return lio.save_figure(fig, path)


def render_html(maps: AttentionMaps, title: str = "") -> str:
    """A single HTML page (no external script, style, font or image) with bertviz's head view: the tokens twice, a
    line from each query token to each key token as strong as its weight, a layer selector, head toggles (one
    colour each), hover to follow one token, and the heat map of the chosen head."""
    data = json.dumps(maps.to_dict(3), ensure_ascii=False).replace("</", "<\\/")
    heading = (title or f"{maps.stack} self-attention").replace("&", "&amp;").replace("<", "&lt;")
    return HTML.replace("__TITLE__", heading).replace("__DATA__", data)


def save_maps(maps: AttentionMaps, out: str | Path, *, overwrite: bool = False, title: str = "") -> Path:
    """attention.png, attention.html and attention.json in the folder `out`, written whole (atomic_dir)."""
    out = lio.check_output(out, what="attention maps", overwrite=overwrite, ours=is_attention_folder)
    with lio.atomic_dir(out) as tmp:
        plot_grid(maps, tmp / "attention.png", title)
        lio.write_text(tmp / "attention.html", render_html(maps, title))
        lio.write_json(tmp / "attention.json", maps.to_dict())
    return out


def is_attention_folder(path: Path) -> bool:
    return (path / "attention.html").exists() and (path / "attention.json").exists()


HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>__TITLE__</title>
<style>
body{font:14px system-ui,-apple-system,Segoe UI,sans-serif;margin:16px;color:#222;background:#fff}
h1{font-size:17px;margin:0 0 8px}#controls{display:flex;gap:14px;align-items:center;flex-wrap:wrap;margin-bottom:8px}
.head{display:inline-block;width:18px;height:18px;border-radius:3px;cursor:pointer;border:2px solid #fff;
box-shadow:0 0 0 1px #999;font-size:10px;text-align:center;line-height:18px;color:#fff}
.head.off{opacity:.18}#views{display:flex;gap:28px;align-items:flex-start}#lines{flex:none}
svg text{font-size:13px;cursor:default;dominant-baseline:middle}svg text.dim{opacity:.35}
#note{color:#666;font-size:12px;margin-top:6px}canvas{border:1px solid #ccc;image-rendering:pixelated}
</style></head><body>
<h1>__TITLE__</h1>
<div id="controls"><label>Layer <select id="layer"></select></label><span>Heads <span id="heads"></span></span>
<button id="all" type="button">all heads</button><button id="none" type="button">no heads</button></div>
<div id="views"><svg id="lines" xmlns="http://www.w3.org/2000/svg"></svg>
<div><div id="mapTitle"></div><canvas id="map"></canvas><div id="note"></div></div></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const L = D.weights.length, H = D.weights[0].length, T = D.tokens.length;
const COLORS = ["#1f77b4","#ff7f0e","#2ca02c","#d62728","#9467bd","#8c564b","#e377c2","#7f7f7f","#bcbd22",
                "#17becf","#393b79","#637939","#8c6d31","#843c39","#7b4173","#3182bd"];
const color = h => COLORS[h % COLORS.length];
let layer = L - 1, active = new Set([...Array(H).keys()]), focus = null;
const sel = document.getElementById("layer");
for (let l = 0; l < L; l++) { const o = document.createElement("option"); o.value = l; o.textContent = l; sel.appendChild(o); }
sel.value = layer; sel.onchange = () => { layer = +sel.value; draw(); };
const heads = document.getElementById("heads");
for (let h = 0; h < H; h++) {
  const b = document.createElement("span"); b.className = "head"; b.style.background = color(h); b.textContent = h;
  b.title = "head " + h + " (click: toggle, double-click: only this head)";
  b.onclick = () => { active.has(h) ? active.delete(h) : active.add(h); draw(); };
  b.ondblclick = () => { active = new Set([h]); draw(); };
  heads.appendChild(b);
}
document.getElementById("all").onclick = () => { active = new Set([...Array(H).keys()]); draw(); };
document.getElementById("none").onclick = () => { active = new Set(); draw(); };
const NS = "http://www.w3.org/2000/svg", ROW = 22, LEFT = 150, GAP = 230;
const svg = document.getElementById("lines");
svg.setAttribute("width", LEFT * 2 + GAP); svg.setAttribute("height", ROW * T + 20);
const gLines = document.createElementNS(NS, "g"), gText = document.createElementNS(NS, "g");
svg.appendChild(gLines); svg.appendChild(gText);
function label(x, y, s, anchor, i, side) {
  const t = document.createElementNS(NS, "text"); t.setAttribute("x", x); t.setAttribute("y", y);
  t.setAttribute("text-anchor", anchor); t.textContent = s; t.dataset.i = i; t.dataset.side = side;
  t.onmouseenter = () => { focus = [side, i]; draw(); }; t.onmouseleave = () => { focus = null; draw(); };
  gText.appendChild(t); return t;
}
const labels = D.tokens.map((s, i) => [label(LEFT, 14 + i * ROW, s, "end", i, "q"), label(LEFT + GAP, 14 + i * ROW, s, "start", i, "k")]);
function draw() {
  while (gLines.firstChild) gLines.removeChild(gLines.firstChild);
  document.querySelectorAll(".head").forEach((b, h) => b.classList.toggle("off", !active.has(h)));
  const W = D.weights[layer], n = Math.max(active.size, 1);
  for (const h of active) {
    for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
      const w = W[h][i][j];
      if (w < 0.01) continue;
      if (focus && !((focus[0] === "q" && focus[1] === i) || (focus[0] === "k" && focus[1] === j))) continue;
      const line = document.createElementNS(NS, "line");
      line.setAttribute("x1", LEFT + 6); line.setAttribute("y1", 14 + i * ROW);
      line.setAttribute("x2", LEFT + GAP - 6); line.setAttribute("y2", 14 + j * ROW);
      line.setAttribute("stroke", color(h)); line.setAttribute("stroke-width", 2);
      line.setAttribute("stroke-opacity", Math.min(1, w * (focus ? 1 : 1.6 / Math.sqrt(n))).toFixed(3));
      line.setAttribute("class", "att"); line.style.pointerEvents = "none";
      gLines.appendChild(line);
    }
  }
  labels.forEach(([a, b], i) => {
    a.classList.toggle("dim", !!focus && !(focus[0] === "q" && focus[1] === i));
    b.classList.toggle("dim", !!focus && !(focus[0] === "k" && focus[1] === i));
  });
  drawMap(W);
}
function drawMap(W) {
  const c = document.getElementById("map"), cell = Math.max(6, Math.min(22, Math.floor(360 / T)));
  c.width = c.height = cell * T; const g = c.getContext("2d");
  const hs = [...active]; document.getElementById("mapTitle").textContent =
    "layer " + layer + ", " + (hs.length === 1 ? "head " + hs[0] : hs.length ? "mean of " + hs.length + " heads" : "no head") + " (rows: queries, columns: keys)";
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {
    let w = 0; for (const h of hs) w += W[h][i][j]; w = hs.length ? w / hs.length : 0;
    const v = Math.round(255 * (1 - w)); g.fillStyle = "rgb(" + v + "," + v + ",255)"; g.fillRect(j * cell, i * cell, cell, cell);
  }
  document.getElementById("note").textContent = T + " tokens, " + L + " layers x " + H + " heads (" + D.stack +
    "). Left: queries, right: keys; hover a token to follow it.";
}
draw();
</script></body></html>
"""

__all__ = ["AttentionMaps", "attention_maps", "plot_grid", "render_html", "save_maps", "is_attention_folder", "FILES"]
