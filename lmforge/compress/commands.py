"""`lmforge quantize` and `lmforge compress report` (entry functions; the library is imported inside them, so
`--help` stays cheap)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal


def quantize_cli(
    checkpoint: str,
    *,
    method: Literal["int8", "int4", "dynamic-int8"],
    out: str,
    group_size: int = 32,
    algo: Literal["rtn", "gptq"] = "rtn",
    calib: str | None = None,
    calib_samples: int = 32,
    calib_context: int = 512,
    symmetric: bool = False,
    act_order: bool = False,
    head: bool = True,
    damp: float = 0.01,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Quantize a checkpoint's linear layers and save a quantized checkpoint that every command loads.

    Args:
        checkpoint: run folder, checkpoint folder, Hugging Face folder or .gguf file
        method: int8 (weight-only, per channel) | int4 (weight-only, groups of --group-size inputs) | dynamic-int8
            (int8 weights and activations, for encoders)
        out: folder of the quantized checkpoint
        group_size: int4: inputs per scale (32, 64, 128 or 256; must divide every layer's inputs)
        algo: rtn (round to nearest) | gptq (error-correcting, needs --calib)
        calib: GPTQ calibration text: text files or a folder, or a prepared data folder (its train split)
        calib_samples: GPTQ: windows of calibration text
        calib_context: GPTQ: tokens per calibration window
        symmetric: int4 codes centred on zero (default: each group's min..max)
        act_order: GPTQ: quantize columns by decreasing activation energy
        head: quantize the LM head too (--no-head keeps it in float; task heads always stay float)
        damp: GPTQ: Hessian dampening, a fraction of its mean diagonal
        overwrite: replace an lmforge checkpoint already in --out
    """
    from .. import io as lio
    from ..checkpoint import is_lmforge_checkpoint, save, source_run_info
    from ..config import check_minimum
    from ..loading import load
    from ..model.quant import quant_layers
    from .quantize import quantize
    from .report import weight_bytes

    check_minimum(1, calib_samples=calib_samples, calib_context=calib_context)
    lio.check_output(out, what="an lmforge checkpoint", overwrite=overwrite, ours=is_lmforge_checkpoint,
                     inputs=[checkpoint, calib])
    if algo == "gptq" and calib is None:  # before the model is loaded
        from ..errors import ConfigError

        raise ConfigError("--algo gptq needs calibration text: give --calib (a text file or folder, or prepared data)")
    model = load(checkpoint, dtype="fp32")
    before = weight_bytes(model)
    tokenizer = model.tokenizer
    model = quantize(model, method, group_size=group_size, algo=algo, calib=calib, symmetric=symmetric, head=head,
                     act_order=act_order, calib_samples=calib_samples, calib_context=calib_context, damp=damp)
    after = weight_bytes(model)
    save(model, out, tokenizer, overwrite=True, extra={"quantized_from": str(checkpoint)},
         run=source_run_info(checkpoint))
    layers = len(quant_layers(model))
    label = method + (f" g{group_size}" if method == "int4" else "") + f" {algo.upper()}"
    print(f"quantized {layers} linear layers ({label}{', head kept in float' if not head else ''}): weights "
          f"{before / 1e6:.1f} MB -> {after / 1e6:.1f} MB ({before / after:.2f}x smaller) -> {out}")
    return {"out": out, "layers": layers, "bytes_before": before, "bytes_after": after}


def report_cli(
    checkpoint: str,
    *,
    data: str,
    out: str,
    methods: str = "int8,int4-rtn,int4-gptq",
    include: str | None = None,
    calib: str | None = None,
    calib_samples: int = 32,
    calib_context: int = 512,
    group_size: int = 32,
    windows: int = 16,
    context: int = 512,
    topk: int = 64,
    speed: bool = True,
    batch8: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Compare compressed models with their original on held-out text: size, decode and prefill speed, perplexity,
    KL divergence and top-1 agreement (report.md, report.json, report.png).

    Args:
        checkpoint: the original model (run folder, checkpoint, Hugging Face folder or .gguf file)
        data: held-out text: a text file or folder, or a prepared data folder (its val split; train calibrates)
        out: report folder
        methods: comma-separated quantizations to apply in memory: int8, int4-rtn, int4-gptq, dynamic-int8, bf16;
            suffixes -gNN (int4 group size), -sym, -act (GPTQ act-order), e.g. int4-gptq-g128; "none" for only --include
        include: comma-separated compressed models from disk to compare too (quantized, pruned, distilled runs)
        calib: calibration text for GPTQ methods (default: the train split of a prepared --data)
        calib_samples: GPTQ: windows of calibration text
        calib_context: GPTQ: tokens per calibration window
        group_size: int4 group size where a method names none
        windows: held-out windows to score
        context: tokens per window
        topk: log-probabilities of the original kept per token (the KL is over these + the rest)
        speed: measure decode and prefill speed (--no-speed: quality and size only)
        batch8: also measure decoding at batch 8
        overwrite: replace an earlier report in --out
    """
    import os

    import torch

    from .. import io as lio
    from ..config import check_minimum
    from ..data.prepare import is_prepared
    from ..loading import load
    from .report import build_entries, markdown_table, run_report, write_report

    check_minimum(1, windows=windows, context=context, topk=topk, group_size=group_size, calib_samples=calib_samples,
                  calib_context=calib_context)
    lio.check_output(out, what="a compression report", overwrite=overwrite,
                     ours=lambda p: (Path(p) / "report.json").exists(), inputs=[checkpoint, data, calib])
    method_list = [] if methods.strip() in ("", "none") else [m for m in methods.split(",") if m.strip()]
    include_list = [p.strip() for p in (include or "").split(",") if p.strip()]
    if not method_list and not include_list:
        from ..errors import ConfigError

        raise ConfigError("nothing to compare: give --methods (e.g. int8,int4-rtn) or --include runs/a,runs/b")
    if calib is None and Path(data).is_dir() and is_prepared(Path(data)):
        calib = data
    original = load(checkpoint, dtype="fp32")
    entries = build_entries(original, method_list, include_list, group_size=group_size, calib=calib, progress=True,
                            calib_samples=calib_samples, calib_context=calib_context)
    result = run_report(original, data, entries, windows=windows, context=context, topk=topk, speed=speed,
                        batch8=batch8)
    title = f"compression report: {checkpoint}"
    meta = {"checkpoint": checkpoint, "data": data, "calib": calib, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}
    with lio.atomic_dir(out) as tmp:
        write_report(result, Path(tmp), title, meta)
    print(markdown_table(result))
    print(f"-> {out}/report.md, report.json, report.png")
    return {"out": out, "rows": result["rows"]}


__all__ = ["quantize_cli", "report_cli"]
