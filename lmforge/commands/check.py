"""`lmforge export check`: the parity report of a model across export formats and runtimes (docs/export.md)."""

from __future__ import annotations

from pathlib import Path


def check_cli(run: str, *, prompts: str, out: str, formats: str = "hf,onnx,gguf", gguf_types: str = "f32,q8_0,q4_0",
              onnx: str = "fp32,int8", llamacpp: bool = True, new_tokens: int = 16, keep_files: bool = False,
              overwrite: bool = False) -> Path:
    """Export a model to each format, run every runtime that reads it on the same prompts, and compare each with
    PyTorch eager (fp32): max |delta logit|, KL divergence, top-1 agreement, greedy continuation identical or first
    divergence, tokens/s. Writes report.json, report.md and parity.png to --out and prints the table.

    Args:
        run: an lmforge checkpoint or run folder (or anything lmforge.load reads: a Hugging Face folder, a .gguf file)
        prompts: a text file, one prompt per line (or .jsonl with a "prompt" field)
        out: the folder for report.json, report.md and parity.png
        formats: comma-separated formats to check: hf (transformers), onnx (ONNX Runtime), gguf (lmforge and
            llama.cpp)
        gguf_types: comma-separated GGUF types, each exported and run (f32, f16, bf16, q8_0, q6_k, q5_1, q5_0, q4_k,
            q4_1, q4_0)
        onnx: comma-separated ONNX Runtime variants: fp32, int8, int8-dynamic
        llamacpp: also run each GGUF file in llama.cpp when llama-cpp-python is installed (--no-llamacpp to skip)
        new_tokens: greedy tokens decoded per prompt for the continuation check and tokens/s
        keep_files: keep the exported files in the folder OUT.files beside the report (default: a temporary folder, deleted)
        overwrite: replace a parity report already in --out
    """
    from .. import io as lio
    from ..parity import _is_report, check_choices, parity_report, parse_formats
    from ..io import read_prompts

    names = parse_formats(formats)
    types = tuple(t.strip() for t in gguf_types.split(",") if t.strip())
    variants = tuple(None if v.strip() == "fp32" else v.strip() for v in onnx.split(",") if v.strip())
    check_choices(types, variants)
    texts = read_prompts(prompts)
    out_path = lio.check_output(out, what="a parity report", overwrite=overwrite, ours=_is_report,
                                inputs=[run, prompts])
    workdir = None
    if keep_files:
        workdir = Path(str(out_path) + ".files")
    report = parity_report(run, texts, formats=names, gguf_types=types, onnx_quantize=variants,
                           llamacpp=None if llamacpp else False, new_tokens=new_tokens, workdir=workdir)
    report.write(out_path, overwrite=True)
    print()
    print(report.table())
    print(f"\nwrote {out_path / 'report.json'}, {out_path / 'report.md'}, {out_path / 'parity.png'}"
          f"{f'; exported files in {workdir}' if workdir else ''}")
    return out_path


__all__ = ["check_cli"]
