"""`lmforge convert from-hf | to-hf`: Hugging Face folders and hub ids <-> lmforge checkpoints (docs/interop.md);
`lmforge convert from-gguf`: a GGUF file -> an lmforge checkpoint (docs/export.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def from_hf_cli(src: str, dst: str, *, dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
                tokenizer: bool = True, overwrite: bool = False, revision: str | None = None) -> Path:
    """Convert a Hugging Face model (folder or hub id org/name) into an lmforge checkpoint folder.

    Args:
        src: Hugging Face model folder (config.json with model_type, safetensors weights, tokenizer.json) or hub id
        dst: new lmforge checkpoint folder
        dtype: dtype of the written weights; auto keeps the stored one
        tokenizer: convert the tokenizer too (--no-tokenizer for the weights alone)
        overwrite: replace dst if it exists
        revision: hub revision (branch, tag or commit) when src is a hub id
    """
    from .. import io as lio
    from ..checkpoint import is_lmforge_checkpoint
    from ..convert.api import DTYPE_NAMES, from_hf, write_lmforge

    dst_path = lio.check_output(dst, what="an lmforge checkpoint", overwrite=overwrite, ours=is_lmforge_checkpoint,
                                inputs=[src], option="destination")
    model = from_hf(src, device="cpu", dtype=None if dtype == "auto" else dtype, tokenizer=tokenizer,
                    revision=revision)
    write_lmforge(model, dst_path)
    n = model.num_parameters()
    print(f"converted {model.hf_source['model_type']} ({', '.join(model.hf_source.get('architectures') or [])}) "
          f"-> {dst_path}: {n / 1e6:.1f}M parameters, {DTYPE_NAMES.get(model.dtype, model.dtype)}"
          f"{', tokenizer ' + str(model.tokenizer.vocab_size) + ' tokens' if model.tokenizer else ''}")
    return dst_path


def to_hf_cli(src: str, dst: str, *, model_type: str | None = None,
              dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto", max_shard_size: str = "5GB",
              tokenizer: bool = True, overwrite: bool = False) -> Path:
    """Export an lmforge checkpoint as a Hugging Face folder that transformers' from_pretrained loads.

    Args:
        src: lmforge checkpoint folder (or training run folder: its best/ or last/)
        dst: new Hugging Face folder
        model_type: target model_type (gpt2 | llama | mistral | qwen2 | bert | roberta | bart); default: the one the
            model came from, else the one its options imply
        dtype: dtype of the written weights; auto keeps the model's
        max_shard_size: split the weights into shards of at most this size (e.g. 5GB, 500MB)
        tokenizer: export the tokenizer too (--no-tokenizer for the weights alone)
        overwrite: replace dst if it exists
    """
    from .. import io as lio
    from ..checkpoint import CONFIG
    from ..convert.api import to_hf

    out = to_hf(src, dst, model_type=model_type, dtype=None if dtype == "auto" else dtype,
                max_shard_size=max_shard_size, tokenizer=tokenizer, overwrite=overwrite)
    hf = lio.read_json(out / CONFIG)
    files = sorted(p.name for p in out.iterdir())
    print(f"exported {hf['model_type']} ({', '.join(hf['architectures'])}, {hf['dtype']}) -> {out}: "
          f"{', '.join(files)}")
    return out


def from_gguf_cli(src: str, *, out: str, dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto",
                  tokenizer: bool = True, tokenizer_mode: Literal["llama.cpp", "transformers"] = "llama.cpp",
                  overwrite: bool = False) -> Path:
    """Convert a GGUF file (llama.cpp's format: llama, qwen2, gpt2 or bert) into an lmforge checkpoint folder:
    the weights dequantized, the tokenizer rebuilt from the file's metadata, the chat template kept.

    Args:
        src: the .gguf file
        out: new lmforge checkpoint folder
        dtype: dtype of the written weights; auto is fp32 (what dequantizing gives)
        tokenizer: convert the tokenizer too (--no-tokenizer for the weights alone)
        tokenizer_mode: tokenize as llama.cpp does with this file, or as transformers' GGUF tokenizer does (they
            differ on spaces for SentencePiece vocabularies and on some pre-tokenizers; docs/export.md)
        overwrite: replace an lmforge checkpoint already in --out
    """
    from .. import io as lio
    from ..checkpoint import is_lmforge_checkpoint, save
    from ..convert.api import DTYPE_NAMES
    from ..convert.gguf import from_gguf

    out_path = lio.check_output(out, what="an lmforge checkpoint", overwrite=overwrite, ours=is_lmforge_checkpoint,
                                inputs=[src])
    model = from_gguf(src, dtype=None if dtype == "auto" else dtype, tokenizer=tokenizer,
                      tokenizer_mode=tokenizer_mode)
    source = model.gguf_source
    save(model, out_path, extra={"gguf_source": source}, overwrite=True)
    types = ", ".join(f"{k} {v}" for k, v in source["tensor_types"].items())
    tok = model.tokenizer
    print(f"converted GGUF {source['architecture']} ({types}) -> {out_path}: {model.num_parameters() / 1e6:.1f}M "
          f"parameters, {DTYPE_NAMES.get(model.dtype, model.dtype)}"
          f"{f', tokenizer {tok.vocab_size} tokens ({tokenizer_mode} mode)' if tok else ', no tokenizer'}")
    return out_path


__all__ = ["from_hf_cli", "to_hf_cli", "from_gguf_cli"]
