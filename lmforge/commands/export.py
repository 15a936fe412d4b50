"""`lmforge export <format>`: deployment formats (docs/export.md). GGUF, llama.cpp's format: `export gguf`; ONNX for
ONNX Runtime: `export onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

OnnxQuantize = Literal["int8", "int8-dynamic"]
OnnxGraph = Literal["auto", "ort", "portable"]
GraphOptimization = Literal["disable", "basic", "extended", "all"]
GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q6_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0"]


def gguf_cli(checkpoint: str, *, out: str, type_: GGUFType = "f32", tokenizer: bool = True, fallback: bool = True,
             name: str | None = None, overwrite: bool = False) -> Path:
    """Export a model as a GGUF file that llama.cpp (and ollama, LM Studio, ...) runs.

    Decoders are written in llama.cpp's llama (RoPE, RMSNorm, SwiGLU, GQA), qwen2 (q/k/v biases) or gpt2 layout,
    encoders in its bert layout, with the tokenizer (byte-level BPE or SentencePiece-style) and chat template.

    Args:
        checkpoint: an lmforge checkpoint or run folder, a Hugging Face folder or hub id (hf:org/name), or a GGUF file
        out: the .gguf file to write
        type_: the type of the matrices (1-D tensors stay f32): f32 | f16 | bf16 | q8_0 | q6_k | q5_1 | q5_0 | q4_k |
            q4_1 | q4_0
        tokenizer: write the tokenizer too (--no-tokenizer for the weights alone)
        fallback: write a matrix whose rows do not fit the type's blocks as llama.cpp's tools do (q4_k -> q5_0,
            q6_k -> q8_0, others -> f16); --no-fallback makes it an error
        name: general.name in the file (default: the model's name)
        overwrite: replace a GGUF file already at --out
    """
    from .. import io as lio
    from ..convert.gguf import to_gguf
    from ..convert.gguf.exporter import _is_gguf
    from ..loading import load

    lio.check_output(out, what="a GGUF file", overwrite=overwrite, ours=_is_gguf, folder=False, inputs=[checkpoint])
    model = load(checkpoint, dtype="fp32")
    done = to_gguf(model, out, type=type_, tokenizer=tokenizer, fallback=fallback, name=name, overwrite=True)
    counts = ", ".join(f"{k} {v}" for k, v in done.tensor_types.items())
    print(f"exported {done.architecture} (through the Hugging Face {done.model_type} layout, {type_}) -> {done.path}: "
          f"{done.bytes / 1e6:.1f} MB, {sum(done.tensor_types.values())} tensors ({counts}), tokenizer "
          f"{done.tokenizer or 'none'}, {done.seconds:.1f} s")
    for why, n in done.fallbacks.items():
        print(f"note: {n} matrices written as {why}")
    if done.dropped:
        print(f"note: not written (llama.cpp's {done.architecture} has no place for them): {', '.join(done.dropped)}")
    return done.path


def onnx_cli(checkpoint: str, *, out: str, quantize: OnnxQuantize | None = None, graph: OnnxGraph = "auto",
             opset: int | None = None, check: bool = True, overwrite: bool = False) -> Path:
    """Export a model to ONNX for ONNX Runtime: a folder with the graph(s), their weights (external data), the config
    and the tokenizer, which `lmforge generate DIR --runtime onnx`, `lmforge predict DIR` and `lmforge.load(DIR)` take.

    Decoders become one graph with the past keys/values of every layer as inputs and outputs (step 0 feeds a past of
    length 0); encoder-decoders an encoder graph and such a decoder graph; models with a task head (classify, tag,
    span) or a masked-LM head one graph giving the head's logits. Batch and sequence axes are dynamic. A decoder is
    written as ONNX Runtime's fused graph where it applies (GroupQueryAttention, skip-norms, packed projections: about
    10 nodes a layer, 1.3-2x faster than the portable graph) and by torch.onnx.export otherwise.

    Args:
        checkpoint: an lmforge checkpoint or run folder, a Hugging Face folder or hub id (hf:org/name), a GGUF file,
            or (with --quantize) an fp32 ONNX export to quantize
        out: the folder to write
        quantize: int8 (ONNX Runtime's MatMulNBits: int8 weights in blocks of 32, int8 activations at run time) or
            int8-dynamic (quantize_dynamic: per-channel int8 weights, one activation scale per call); default fp32
        graph: auto (ONNX Runtime's fused decoder graph where it applies, else portable), ort (that graph or an
            error saying why not), portable (standard ONNX ops only, torch.onnx.export: any ONNX runtime)
        opset: the ONNX opset of the portable graph, 18 .. 23 (default: the exporter's, 20); implies portable
        check: after exporting, run the graphs once in ONNX Runtime against PyTorch and print the largest logit
            difference (--no-check to skip)
        overwrite: replace an ONNX export already at --out
    """
    from .. import io as lio
    from ..export.onnx import check_options, export_onnx, is_onnx_export, onnx_summary, quantize_export
    from ..checkpoint import source_run_info
    from ..loading import load

    check_options(quantize, opset, graph)
    lio.check_output(out, what="an ONNX export", overwrite=overwrite, ours=is_onnx_export, inputs=[checkpoint])
    if is_onnx_export(checkpoint) and quantize:  # an fp32 export in: quantize its graphs, no second trace
        done = quantize_export(checkpoint, out, quantize, overwrite=True)
        print(onnx_summary(done))
        return done.path
    model = load(checkpoint, dtype="fp32")
    done = export_onnx(model, out, quantize=quantize, opset=opset, graph=graph, overwrite=True, source=str(checkpoint),
                       run_info=source_run_info(checkpoint))
    print(onnx_summary(done))
    if check:
        from ..export.onnx.check import quick_check

        print(quick_check(model, load(out)))
    return done.path


__all__ = ["gguf_cli", "onnx_cli"]
