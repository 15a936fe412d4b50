"""ONNX export of lmforge models and their ONNX Runtime runtime (docs/export.md, "ONNX").

`export_onnx(model, out)` writes a self-contained folder: the graph(s) with their weights in external data files
(`<graph>.onnx.data`, so models over protobuf's 2 GB limit export too), `config.json` (the model config plus an
`lmforge_onnx` entry naming the graphs) and the tokenizer. `lmforge.load(folder)` (or `load_onnx`, which takes the
ONNX Runtime session options) gives an `OnnxModel` that `lmforge.generate`, `predict` and `chat` take like a model.

What is exported, by architecture and head:
- decoder LM:      decoder.onnx   one graph, past keys/values in and out; step 0 gets a past of length 0
- encoder-decoder: encoder.onnx (source -> cross-attention keys/values) + decoder.onnx (as above, plus them)
- a task head (classify, tag, span) or an encoder's masked-LM head: model.onnx (input_ids, attention_mask
  [, token_type_ids] -> the head's logits)
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ... import io as lio
from ...checkpoint import CONFIG, read_config, write_checkpoint
from ...errors import CheckpointError, ConfigError, LmforgeError
from ...tokenizer import Tokenizer
from .quantize import METHODS

GRAPHS = ("auto", "ort", "portable")
KEY = "lmforge_onnx"
FORMAT = 1


@dataclass
class OnnxExport:
    """What `export_onnx` wrote."""

    path: Path
    kind: str  # decoder | seq2seq | head
    graphs: dict[str, str]
    opset: int
    quantize: str | None
    graph: str = "portable"  # ort | portable (see export_onnx)
    files: dict[str, int] = field(default_factory=dict)  # file name -> bytes
    seconds: float = 0.0

    @property
    def bytes(self) -> int:
        return sum(self.files.values())


def is_onnx_export(folder: str | os.PathLike) -> bool:
    try:
        data = lio.read_json(Path(folder) / CONFIG)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get(KEY), dict)


def _kind(config) -> str:
    if config.head == "lm" and config.arch == "decoder":
        return "decoder"
    if config.head == "lm" and config.arch == "encoder_decoder":
        return "seq2seq"
    if config.arch == "encoder_decoder":
        raise ConfigError(f"an encoder-decoder model with a {config.head} head cannot be exported to ONNX; only its "
                          "language-model form decodes")
    return "head"


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


REQUIRES = ("onnx", "onnxscript", "onnxruntime")  # module names = PyPI names


def require(modules=REQUIRES) -> None:
    """Refuse, in one line that says what to install, when the ONNX packages are missing (they are an extra)."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"ONNX export and ONNX Runtime need {', '.join(missing)}, which is not installed: "
                          "pip install 'lmforge[onnx]'")


def check_options(quantize: str | None, opset: int | None, graph: str = "auto") -> None:
    if graph not in GRAPHS:
        raise ConfigError(f"--graph {graph!r} is not a kind of graph; use {' | '.join(GRAPHS)}")
    if graph == "ort" and opset is not None:
        raise ConfigError(f"--opset {opset} applies to the portable graph; the ONNX Runtime graph (--graph ort) is "
                          "written at its own opset: leave --opset out, or add --graph portable")
    if quantize is not None and quantize not in METHODS:
        raise ConfigError(f"--quantize {quantize!r} is not a method; use {' | '.join(METHODS)} (or leave it out for "
                          "fp32)")
    if opset is not None and not 18 <= opset <= 23:
        raise ConfigError(f"--opset {opset}: the exporter writes opsets 18 .. 23; choose one of those (default: the "
                          "exporter's)")


def export_onnx(model, out: str | os.PathLike, *, quantize: str | None = None, opset: int | None = None,
                tokenizer: Tokenizer | None = None, overwrite: bool = False, source: str | None = None,
                run_info: dict | None = None, graph: str = "auto") -> OnnxExport:
    """Export `model` (a `Transformer`) to the folder `out` (see the module doc), fp32 or quantized
    (quantize="int8" | "int8-dynamic"). A decoder LM is written by default (graph="auto") as ONNX Runtime's fused
    graph (`ortgraph`: GroupQueryAttention, skip-norms, packed projections) where that applies and as
    `torch.onnx.export`'s portable graph otherwise; graph="ort" insists on the first, graph="portable" (or an explicit
    `opset`) asks for the second. Encoders and encoder-decoders are always portable. An existing export at `out` is
    replaced only with overwrite=True, anything else never. `run_info` (the run.json of the fine-tuning run the model
    comes from) is kept beside the graphs, so `lmforge predict` on the folder reads the run's columns and lengths."""
    from ...model import Transformer

    if getattr(model, "runtime", None) == "onnx":
        raise ConfigError(f"{model.folder} is already an ONNX export; export the checkpoint it was made from (or "
                          "quantize it: --quantize int8)")
    if not isinstance(model, Transformer):
        raise ConfigError(f"export_onnx needs an lmforge model (lmforge.load gives one); got {type(model).__name__}")
    check_options(quantize, opset, graph)
    require()
    if model.config.quant:
        raise ConfigError("this model's layers were quantized by `lmforge quantize` (int8/int4 kernels ONNX cannot "
                          "express); export the unquantized checkpoint and add --quantize int8")
    kind = _kind(model.config)
    if graph == "ort" and kind != "decoder":
        raise ConfigError(f"--graph ort writes decoder-only language models; this is a {kind} model: leave --graph out "
                          "(or use --graph portable)")
    out = lio.check_output(out, what="an ONNX export", overwrite=overwrite, ours=is_onnx_export)
    t0 = time.perf_counter()
    if model.config.lora:
        from ...model.lora import merge_lora

        tok = model.tokenizer
        model = merge_lora(copy.deepcopy(model))
        model.tokenizer = tok
    if model.dtype != torch.float32 or model.device.type != "cpu":
        tok = model.tokenizer
        model = copy.deepcopy(model).float().cpu()
        model.tokenizer = tok
    was = model.training
    model.eval()
    try:
        with lio.atomic_dir(out) as tmp:
            graphs, info = _write_graphs(model, kind, tmp, opset, quantize, graph)
            info = {"format": FORMAT, "kind": kind, "graphs": graphs, "opset": _opset(tmp / next(iter(graphs.values()))),
                    "quantize": quantize, "source": source, "parameters": model.num_parameters(), **info}
            write_checkpoint(tmp, model, tokenizer, extra={KEY: info}, weights=False, run=run_info)
    finally:
        model.train(was)
    files = {f.name: f.stat().st_size for f in sorted(Path(out).iterdir()) if f.is_file()}
    return OnnxExport(Path(out), kind, graphs, info["opset"], quantize, info["graph"], files, time.perf_counter() - t0)


def quantize_export(src: str | os.PathLike, out: str | os.PathLike, quantize: str = "int8", *,
                    overwrite: bool = False) -> OnnxExport:
    """Quantize an fp32 ONNX export folder `src` into `out` (the same as exporting again with `quantize`, without
    tracing the model again)."""
    check_options(quantize, None)
    require(("onnx", "onnxruntime"))
    if quantize is None:
        raise ConfigError("quantize_export needs a method: " + " | ".join(METHODS))
    src = Path(src)
    if not is_onnx_export(src):
        raise CheckpointError(f"{src} is not an ONNX export (no '{KEY}' entry in {src / CONFIG})")
    data = lio.read_json(src / CONFIG)
    info = data[KEY]
    if info.get("quantize"):
        raise ConfigError(f"{src} is already quantized ({info['quantize']}); quantize the fp32 export")
    out = lio.check_output(out, what="an ONNX export", overwrite=overwrite, ours=is_onnx_export, inputs=[src])
    t0 = time.perf_counter()
    from .quantize import quantize_graph

    with lio.atomic_dir(out) as tmp:
        for name in info["graphs"].values():
            if not isinstance(name, str) or Path(name).name != name:
                raise CheckpointError(f"{src / CONFIG}: graph file {name!r} is not a file name in that folder")
            quantize_graph(src / name, tmp / name, quantize)
        for extra in sorted(src.iterdir()):  # tokenizer, run.json: everything that is not a graph
            if extra.is_file() and not extra.name.endswith((".onnx", ".onnx.data")) and extra.name != CONFIG:
                shutil.copy2(extra, tmp / extra.name)
        lio.write_json(tmp / CONFIG, {**data, KEY: {**info, "quantize": quantize}})
    files = {f.name: f.stat().st_size for f in sorted(Path(out).iterdir()) if f.is_file()}
    return OnnxExport(Path(out), info["kind"], info["graphs"], info["opset"], quantize, info.get("graph", "portable"),
                      files, time.perf_counter() - t0)


def choose_graph(model, kind: str, opset: int | None, graph: str) -> str:
    """"ort" or "portable" for `export_onnx`'s `graph` option (see there)."""
    from .ortgraph import why_not

    if kind != "decoder" or graph == "portable" or (graph == "auto" and opset is not None):
        return "portable"
    reason = why_not(model)
    if reason is None:
        return "ort"
    if graph == "ort":
        raise ConfigError(f"the ONNX Runtime graph (--graph ort) cannot express this model: {reason}; use --graph "
                          "portable")
    return "portable"


def _write_graphs(model, kind: str, folder: Path, opset: int | None, quantize: str | None, graph: str = "auto"):
    from . import graphs as G

    names = {"decoder": {"decoder": "decoder.onnx"}, "seq2seq": {"encoder": "encoder.onnx", "decoder": "decoder.onnx"},
             "head": {"model": "model.onnx"}}[kind]
    target = folder / "fp32" if quantize else folder
    target.mkdir(exist_ok=True)
    chosen = choose_graph(model, kind, opset, graph)
    if chosen == "ort":
        from .ortgraph import write_decoder

        info = write_decoder(model, target / names["decoder"])
    elif kind == "decoder":
        info = G.export_decoder(model, target / names["decoder"], opset)
    elif kind == "seq2seq":
        info = G.export_seq2seq(model, target / names["encoder"], target / names["decoder"], opset)
    else:
        info = G.export_with_head(model, target / names["model"], opset)
    if quantize:
        from .quantize import quantize_graph

        for name in names.values():
            quantize_graph(target / name, folder / name, quantize)
        shutil.rmtree(target)
    return names, {"graph": chosen, **{k: v for k, v in info.items() if k == "layers"}}


def load_onnx(folder: str | os.PathLike, *, threads: int | None = None, optimization: str = "all"):
    """An `OnnxModel` over an exported folder, with ONNX Runtime's intra-op `threads` (default: torch's thread count)
    and graph `optimization` level (disable | basic | extended | all)."""
    from .runtime import OnnxModel

    folder = Path(folder)
    require(("onnx", "onnxruntime"))
    if not is_onnx_export(folder):
        raise CheckpointError(f"{folder} is not an ONNX export (no '{KEY}' entry in {folder / CONFIG}); make one with "
                              f"`lmforge export onnx RUN --out {folder}`")
    info = lio.read_json(folder / CONFIG)[KEY]
    if info.get("format") != FORMAT or not isinstance(info.get("graphs"), dict) or info.get("kind") not in \
            ("decoder", "seq2seq", "head"):
        raise CheckpointError(f"{folder / CONFIG}: the '{KEY}' entry is damaged or from another lmforge version; "
                              "export the model again")
    for name in info["graphs"].values():
        if not isinstance(name, str) or Path(name).name != name:  # paths read from a file stay inside its folder
            raise CheckpointError(f"{folder / CONFIG}: graph file {name!r} is not a file name in that folder")
    config = read_config(folder)
    tokenizer = Tokenizer.load(folder) if (folder / "tokenizer.json").exists() else None
    try:
        return OnnxModel(folder, config, tokenizer, info, threads=threads, optimization=optimization)
    except LmforgeError:
        raise
    except Exception as e:  # ONNX Runtime's own errors on a damaged graph file
        raise CheckpointError(f"{folder}: ONNX Runtime cannot open the graphs ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200]}); export the model again") from None


def onnx_summary(done: OnnxExport) -> str:
    files = ", ".join(f"{n} {b / 1e6:.1f} MB" for n, b in done.files.items() if n.endswith((".onnx", ".data")))
    return (f"exported {done.kind} ({', '.join(done.graphs.values())}, {done.graph} graph, opset {done.opset}, "
            f"{done.quantize or 'fp32'}) -> {done.path}: {done.bytes / 1e6:.1f} MB ({files}), {done.seconds:.1f} s")




__all__ = ["export_onnx", "quantize_export", "load_onnx", "check_options", "is_onnx_export", "OnnxExport", "onnx_summary", "KEY"]
