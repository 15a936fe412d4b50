"""Knowledge-graph extraction: entities and relations of raw text with a model from `lmforge finetune relations`,
written as JSONL triples with character spans, and as a graph (GraphML or DOT, and a PNG drawing).

Text is cut into sentences (a line, or a sentence end inside a line: ". ", "! ", "? " before an upper-case
letter or a digit, not after an abbreviation such as "Dr." or an initial), sentences into words (runs of letters and digits, with inner apostrophes and hyphens, and
single punctuation marks), as CoNLL04 is tokenised; every entity keeps its character span in the input file.
The graph merges mentions with the same text and type into one node; an edge per (head, relation, tail) carries
how often it was found.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence
from xml.sax.saxutils import escape

import numpy as np

from .. import io as lio
from ..corpus import read_text_blocks
from ..errors import ConfigError, DataError
from ..model import Transformer

TOKEN = re.compile(r"\w+(?:['\-]\w+)*|[^\w\s]", re.UNICODE)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
ABBREVIATIONS = frozenset("mr mrs ms dr prof st jr sr inc co corp ltd gen col lt sgt rep sen gov vs etc jan feb "
                          "mar apr jun jul aug sep sept oct nov dec no mt ft".split())


@dataclass
class Span:
    text: str
    type: str
    start: int  # characters in the input
    end: int


def sentences_of(text: str) -> Iterable[tuple[int, str]]:
    """(offset, sentence) for every sentence of a text."""
    pos = 0
    for line in text.splitlines(keepends=True):
        start = 0
        for m in SENTENCE_END.finditer(line):
            last = line[start:m.start()].rstrip(".!?").split()[-1:] or [""]
            if line[m.start() - 1] == "." and (last[0].lower() in ABBREVIATIONS or len(last[0]) == 1):
                continue  # "Dr. Smith", "J. Smith": not a sentence end
            if line[start:m.start()].strip():
                yield pos + start, line[start:m.start()]
            start = m.end()
        if line[start:].strip():
            yield pos + start, line[start:].rstrip("\r\n")
        pos += len(line)


def words_of(sentence: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in TOKEN.finditer(sentence)]


def extract_text(model: Transformer, text: str, *, source: str = "", max_length: int = 128, batch_size: int = 64
                 ) -> list[dict[str, Any]]:
    """One record per sentence with entities and relations: {"source", "sentence", "start", "entities": [{"text",
    "type", "start", "end"}], "relations": [{"head", "type", "tail"}]} (head/tail: entity records)."""
    from ..finetune.relations import RelationSentence, extract

    pieces = [(offset, sentence, words_of(sentence)) for offset, sentence in sentences_of(text)]
    pieces = [p for p in pieces if p[2]]
    if not pieces:
        return []
    items = [RelationSentence([w for w, _, _ in words]) for _, _, words in pieces]
    found = extract(model, items, max_length=max_length, batch_size=batch_size)
    records = []
    for (offset, sentence, words), result in zip(pieces, found):
        entities = []
        for a, b, kind in result.entities:
            start, end = offset + words[a][1], offset + words[b - 1][2]
            entities.append({"text": text[start:end], "type": kind, "start": start, "end": end})
        relations = [{"head": entities[h], "type": kind, "tail": entities[t]} for h, t, kind in result.relations]
        records.append({"source": source, "sentence": sentence, "start": offset, "entities": entities,
                        "relations": relations})
    return records


def read_inputs(paths: Sequence[str]) -> list[tuple[str, str]]:
    """(path, text) of each input file (or "-" lines given as text with --text)."""
    out = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"--input {path} is not a file; give text files (one or more sentences per line)")
        out.append((str(p), "".join(read_text_blocks(p))))
    return out


# ---- the graph -----------------------------------------------------------------------------------------------------

@dataclass
class Graph:
    nodes: dict[tuple[str, str], int]  # (text, type) -> mentions
    edges: Counter  # (head node, relation, tail node) -> count


def build_graph(records: Sequence[dict[str, Any]]) -> Graph:
    nodes: Counter = Counter()
    edges: Counter = Counter()
    for r in records:
        for e in r["entities"]:
            nodes[(e["text"], e["type"])] += 1
        for rel in r["relations"]:
            edges[((rel["head"]["text"], rel["head"]["type"]), rel["type"], (rel["tail"]["text"], rel["tail"]["type"]))] += 1
    return Graph(dict(nodes), edges)


def graphml(graph: Graph) -> str:
    ids = {node: f"n{i}" for i, node in enumerate(graph.nodes)}
    lines = ['<?xml version="1.0" encoding="UTF-8"?>',
             '<graphml xmlns="http://graphml.graphdrawing.org/xmlns">',
             '  <key id="label" for="node" attr.name="label" attr.type="string"/>',
             '  <key id="type" for="node" attr.name="type" attr.type="string"/>',
             '  <key id="mentions" for="node" attr.name="mentions" attr.type="int"/>',
             '  <key id="relation" for="edge" attr.name="relation" attr.type="string"/>',
             '  <key id="count" for="edge" attr.name="count" attr.type="int"/>',
             '  <graph id="G" edgedefault="directed">']
    for node, mentions in graph.nodes.items():
        lines.append(f'    <node id="{ids[node]}"><data key="label">{escape(node[0])}</data><data key="type">'
                     f'{escape(node[1])}</data><data key="mentions">{mentions}</data></node>')
    for k, ((head, kind, tail), count) in enumerate(graph.edges.items()):
        lines.append(f'    <edge id="e{k}" source="{ids[head]}" target="{ids[tail]}"><data key="relation">'
                     f'{escape(kind)}</data><data key="count">{count}</data></edge>')
    lines += ["  </graph>", "</graphml>", ""]
    return "\n".join(lines)


def dot(graph: Graph) -> str:
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph knowledge {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    for (text, kind), mentions in graph.nodes.items():
        lines.append(f"  {q(text + ' | ' + kind)} [label={q(f'{text} ({kind})')}];")
    for (head, kind, tail), count in graph.edges.items():
        label = kind if count == 1 else f"{kind} x{count}"
        lines.append(f"  {q(head[0] + ' | ' + head[1])} -> {q(tail[0] + ' | ' + tail[1])} [label={q(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def layout(n: int, edges: list[tuple[int, int]], seed: int = 0, steps: int = 200, gravity: float = 10.0
           ) -> np.ndarray:
    """Fruchterman-Reingold positions (n, 2) in [0, 1], with a pull towards the centre (`gravity`): without it the
    separate components of a graph (one per sentence, often) fly apart and, once scaled into the square, each
    collapses onto itself with its labels on top of each other."""
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2))
    if n <= 1:
        return pos * 0 + 0.5
    k = math.sqrt(1.0 / n)
    temperature = 0.1
    for _ in range(steps):
        delta = pos[:, None] - pos[None]  # (n, n, 2)
        dist = np.maximum(np.linalg.norm(delta, axis=-1), 1e-3)
        force = (delta / dist[..., None] * (k * k / dist)[..., None]).sum(1)
        for a, b in edges:
            d = pos[a] - pos[b]
            length = max(np.linalg.norm(d), 1e-3)
            pull = d / length * length * length / k
            force[a] -= pull
            force[b] += pull
        force -= gravity * k * (pos - pos.mean(0))
        length = np.maximum(np.linalg.norm(force, axis=1), 1e-9)
        pos += force / length[:, None] * np.minimum(length, temperature)[:, None]
        temperature *= 0.98
    pos -= pos.min(0)
    return pos / np.maximum(pos.max(0), 1e-9)


def plot_graph(graph: Graph, path: str | Path, title: str = "", max_nodes: int = 80) -> Path:
    """A drawing of the graph (the `max_nodes` nodes with most relations), nodes coloured by type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    degree: Counter = Counter()
    for head, _, tail in graph.edges:
        degree[head] += 1
        degree[tail] += 1
    nodes = [n for n, _ in degree.most_common(max_nodes)] or list(graph.nodes)[:max_nodes]
    index = {n: i for i, n in enumerate(nodes)}
    edges = [(index[h], index[t], kind) for (h, kind, t) in graph.edges if h in index and t in index]
    pos = layout(len(nodes), [(a, b) for a, b, _ in edges])
    types = sorted({t for _, t in nodes})
    colours = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(types)}
    fig, ax = plt.subplots(figsize=(12, 9), dpi=100)
    for a, b, kind in edges:
        ax.annotate("", xy=pos[b], xytext=pos[a], arrowprops=dict(arrowstyle="->", color="#888", lw=1,
                                                                   shrinkA=12, shrinkB=12))
        mid = (pos[a] + pos[b]) / 2
        ax.text(mid[0], mid[1], kind, fontsize=7, color="#555", ha="center", va="center")
    for n, i in index.items():
        ax.text(pos[i][0], pos[i][1], n[0], fontsize=9, ha="center", va="center",
                bbox=dict(boxstyle="round,pad=0.3", fc=colours[n[1]], alpha=0.35, ec=colours[n[1]]))
    for t in types:
        ax.scatter([], [], color=colours[t], label=t)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_xlim(-0.1, 1.1)
    ax.set_ylim(-0.1, 1.1)
    ax.axis("off")
    ax.set_title(title or f"{len(graph.nodes)} entities, {sum(graph.edges.values())} relations")
    return lio.save_figure(fig, path)


def write_graph(graph: Graph, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix == ".png":
        return plot_graph(graph, path)
    if path.suffix == ".dot" or path.suffix == ".gv":
        lio.write_text(path, dot(graph))
    elif path.suffix == ".graphml":
        lio.write_text(path, graphml(graph))
    else:
        raise ConfigError(f"--graph {path}: write a .graphml, .dot or .png file")
    return path


__all__ = ["extract_text", "sentences_of", "words_of", "read_inputs", "build_graph", "graphml", "dot", "layout",
           "plot_graph", "write_graph", "Graph", "Span"]
