"""lmforge -> GGUF file: `to_gguf` (`lmforge export gguf`).

The model is laid out as its Hugging Face export first (`convert.api.export_plan` and the family's
`to_hf_config`: an option the target cannot express is refused there, as `to_hf` refuses it), then each Hugging
Face tensor gets its llama.cpp name (`names.py`), q/k rows are permuted for the `llama` architecture, GPT-2's
Conv1D weights go back to (out, in), and the tensor is stored in the type `quants.choose` gives it. On top of
that, what llama.cpp's graphs cannot compute is refused: llama/qwen2 always use SwiGLU, gpt2 always tanh-GELU,
neither has a sliding window, and llama.cpp runs no encoder-decoder lmforge builds (T5 is its only one).

Decoders map to the `llama` (RoPE, RMSNorm, SwiGLU, GQA; also Mistral without a window), `qwen2` (q/k/v biases)
and `gpt2` (learned positions, LayerNorm) architectures, encoders to `bert`. The file is streamed: tensor infos are
written from the shapes, then each tensor is produced, quantized and written, inside `io.atomic_write`.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ... import io as lio
from ..._version import __version__
from ...checkpoint import load_native, resolve_checkpoint
from ...config import ModelConfig
from ...errors import ConfigError, choices
from ...model import Transformer
from ..api import _export_family, export_plan
from ..base import ExportError
from .names import ARCH_OF_MODEL_TYPE, LAYOUTS, block_part, permute_rotary
from .quants import TYPES, Choice, choose, nbytes, quantize
from .reader import MAGIC
from .vocab import tokenizer_to_gguf

POOLING_TYPE = {"mean": 1, "cls": 2, "last": 3}  # lmforge's `pooling` -> llama.cpp's pooling_type
GGUF_ROPE_TYPES = ("default", "linear", "yarn", "llama3", "dynamic")


@dataclass
class GGUFExport:
    """What `to_gguf` wrote."""

    path: Path
    architecture: str  # llama.cpp's general.architecture
    model_type: str  # the Hugging Face layout it went through
    type: str  # the --type asked for
    tensor_types: dict[str, int]  # ggml type -> number of tensors
    fallbacks: dict[str, int] = field(default_factory=dict)  # "Q5_0: why not the file's type" -> number of tensors
    dropped: list[str] = field(default_factory=list)  # tensors llama.cpp's architecture has no place for
    bytes: int = 0
    seconds: float = 0.0
    tokenizer: str | None = None  # "gpt2 (pre smollm)", "llama", or None


@dataclass
class _Tensor:
    name: str  # the GGUF name
    shape: tuple[int, ...]  # torch order
    choice: Choice
    produce: Any  # () -> float32 numpy array in GGUF's layout


def _is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError:
        return False


# ---- what llama.cpp can run --------------------------------------------------------------------------------

def _refuse(arch: str, option: str, value: Any, why: str) -> ExportError:
    return ExportError(f"cannot export to GGUF (llama.cpp architecture {arch}): lmforge option {option}={value!r} "
                       f"({why})")


def _architecture(config: ModelConfig, model_type: str | None) -> tuple[str, str]:
    """(llama.cpp architecture, Hugging Face model_type) for a model, or a one-line refusal."""
    if config.arch == "encoder_decoder":
        raise ExportError("cannot export an encoder-decoder model to GGUF: llama.cpp runs decoders (llama, qwen2, "
                          "gpt2 layouts) and BERT-style encoders; its only encoder-decoder is T5, whose relative "
                          "position buckets lmforge's attention does not have")
    if config.head != "lm":
        raise ExportError(f"cannot export a model with head={config.head!r} to GGUF: llama.cpp's llama, qwen2, gpt2 "
                          "and bert graphs have no task heads; export the base model (the checkpoint it was "
                          "fine-tuned from, or a merged LoRA's base)")
    if config.lora:
        raise ExportError("cannot export a model with a LoRA adapter to GGUF: merge it first (lmforge lora merge)")
    family = _export_family(config, model_type if model_type in ("llama", "mistral", "qwen2", "gpt2", "bert")
                            else None)
    wanted = model_type if model_type in family.model_types else None
    chosen = family.export_model_type(config, wanted)
    if chosen not in ARCH_OF_MODEL_TYPE:
        raise ExportError(f"cannot export to GGUF: the model's Hugging Face layout is {chosen}, and llama.cpp "
                          f"reads {choices(ARCH_OF_MODEL_TYPE)} ({chosen}: positions offset by pad_token_id + 1 "
                          "are not written)")
    return ARCH_OF_MODEL_TYPE[chosen], chosen


def _check_graph(config: ModelConfig, arch: str) -> None:
    """Options the Hugging Face layout takes but llama.cpp's graph for `arch` does not compute."""
    if arch in ("llama", "qwen2"):
        if config.activation != "swiglu":
            raise _refuse(arch, "activation", config.activation, "llama.cpp's llama and qwen2 graphs use SwiGLU")
        if config.sliding_window is not None and config.sliding_window < config.context_length:
            raise _refuse(arch, "sliding_window", config.sliding_window, "llama.cpp's llama and qwen2 graphs attend "
                          "to the whole context")
        kind = (config.rope_scaling or {}).get("rope_type", "default")
        if kind not in GGUF_ROPE_TYPES:
            raise _refuse(arch, "rope_scaling.rope_type", kind, f"GGUF has {choices(GGUF_ROPE_TYPES)}")
        if arch == "qwen2" and kind == "llama3":
            raise _refuse(arch, "rope_scaling.rope_type", kind, "llama.cpp applies rope_freqs to llama only")
    if arch == "gpt2" and config.activation != "gelu_tanh":
        raise _refuse(arch, "activation", config.activation, "llama.cpp's gpt2 graph applies GELU with the tanh "
                      "approximation (gelu_tanh, Hugging Face's gelu_new)")
    if arch == "bert" and config.activation not in ("gelu", "gelu_tanh"):
        raise _refuse(arch, "activation", config.activation, "llama.cpp's bert graph applies GELU")


# ---- tensors -----------------------------------------------------------------------------------------------

def _tensors(model: Transformer, arch: str, model_type: str, file_type: str) -> tuple[list[_Tensor], list[str]]:
    """The GGUF tensors of `model` in the order they are written, and the Hugging Face tensors dropped."""
    config = model.config
    family = _export_family(config, model_type)
    layout = LAYOUTS[arch]
    to_gguf = {hf: g for g, hf in layout.names(config.n_layer, family.export_prefix(config, model_type)).items()}
    out, dropped = [], []
    for item in export_plan(model, family, model_type, torch.float32):
        name = to_gguf.get(item.name)
        if name is None:
            if arch == "bert":  # llama.cpp's BERT is an embedding model: no pooler, no MLM or NSP head
                dropped.append(item.name)
                continue
            raise ExportError(f"internal: Hugging Face tensor {item.name} has no GGUF name for {arch}")
        part = block_part(name)
        shape = tuple(item.shape)
        transposed = layout.transposed(name)
        if transposed:
            shape = shape[::-1]
        heads = layout.rotary_heads(name, config.n_head, config.n_kv_head)

        def produce(item=item, heads=heads, transposed=transposed) -> np.ndarray:
            w = item.produce().detach().to(torch.float32).cpu().numpy()
            if heads is not None:
                w = permute_rotary(w, heads)
            return np.ascontiguousarray(w.T if transposed else w)

        out.append(_Tensor(name, shape, choose(part, shape, file_type), produce))
    if arch == "llama" and (config.rope_scaling or {}).get("rope_type") == "llama3":
        out.append(_Tensor("rope_freqs.weight", (config.head_dim // 2,), Choice("F32"),
                           lambda: _rope_freqs(config)))
    return out, dropped


def _rope_freqs(config: ModelConfig) -> np.ndarray:
    """Llama 3's scaling as llama.cpp stores it: the divisor of each rotary frequency."""
    from ...model.blocks import rope_parameters

    scaled = rope_parameters(config)[0].double()
    unscaled = rope_parameters(config.replace(rope_scaling=None))[0].double()
    return (unscaled / scaled).float().numpy()


# ---- metadata ----------------------------------------------------------------------------------------------

def _write_model_metadata(writer, config: ModelConfig, arch: str, file_type: str, name: str) -> None:
    import gguf

    writer.add_name(name)
    writer.add_file_type(TYPES[file_type][1])
    if file_type not in ("f32", "f16", "bf16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string("lmforge.version", __version__)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.n_head)
    writer.add_vocab_size(config.vocab_size)
    if arch in ("llama", "qwen2"):
        writer.add_head_count_kv(config.n_kv_head)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(config.head_dim)
        if config.head_dim * config.n_head != config.d_model:
            writer.add_key_length(config.head_dim)
            writer.add_value_length(config.head_dim)
        scaling = config.rope_scaling or {}
        kind = scaling.get("rope_type", "default")
        if kind in ("linear", "yarn"):
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR if kind == "linear" else gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(float(scaling["factor"]))
        if kind in ("yarn", "llama3"):
            writer.add_rope_scaling_orig_ctx_len(int(scaling.get("original_max_position_embeddings",
                                                                 config.context_length)))
        if kind == "yarn":
            for key in ("beta_fast", "beta_slow"):
                if scaling.get(key) is not None:
                    writer.add_float32(f"{arch}.rope.scaling.yarn_{key}", float(scaling[key]))
    else:
        writer.add_layer_norm_eps(config.norm_eps)
    if arch == "bert":
        writer.add_causal_attention(False)
        writer.add_uint32(f"{arch}.pooling_type", POOLING_TYPE[config.pooling])
        writer.add_token_type_count(max(config.type_vocab_size, 1))  # llama.cpp refuses a bert file without it


def _write_tokenizer_metadata(writer, md: dict[str, Any]) -> None:
    import gguf

    writer.add_tokenizer_model(md["tokenizer.ggml.model"])
    if "tokenizer.ggml.pre" in md:
        writer.add_tokenizer_pre(md["tokenizer.ggml.pre"])
    writer.add_token_list(md["tokenizer.ggml.tokens"])
    writer.add_token_types(md["tokenizer.ggml.token_type"])
    if "tokenizer.ggml.scores" in md:
        writer.add_token_scores(md["tokenizer.ggml.scores"])
    if "tokenizer.ggml.merges" in md:
        writer.add_token_merges(md["tokenizer.ggml.merges"])
    for key, value in md.items():
        if key.endswith("_token_id"):
            writer.add_uint32(key, int(value))
        elif key in ("tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token",
                     "tokenizer.ggml.add_space_prefix"):
            writer.add_bool(key, bool(value))
    if "tokenizer.chat_template" in md:
        writer.add_string(gguf.Keys.Tokenizer.CHAT_TEMPLATE, md["tokenizer.chat_template"])


def _open_on(writer, f) -> None:
    """Make a GGUFWriter write into an open file (io.atomic_write's), as if it had opened it itself."""
    from gguf.gguf_writer import WriterState

    writer.fout = [f]
    writer.path = None
    writer.state = WriterState.EMPTY


# ---- the export --------------------------------------------------------------------------------------------

def _source(src: str | os.PathLike | Transformer) -> tuple[Transformer, str | None]:
    if isinstance(src, Transformer):
        model = src
    else:
        model = load_native(resolve_checkpoint(src), device="cpu")
    hint = (getattr(model, "gguf_source", None) or getattr(model, "hf_source", None) or {}).get("model_type")
    return model, hint


def to_gguf(
    src: str | os.PathLike | Transformer,
    out: str | os.PathLike,
    *,
    type: str = "f32",  # noqa: A002  (the name llama.cpp's tools and the CLI use)
    tokenizer: bool = True,
    fallback: bool = True,
    name: str | None = None,
    overwrite: bool = False,
) -> GGUFExport:
    """Write an lmforge model (a `Transformer` or a checkpoint folder) as a GGUF file llama.cpp runs.

    `type`: f32 | f16 | bf16 | q8_0 | q6_k | q5_1 | q5_0 | q4_k | q4_1 | q4_0 for the matrices (1-D tensors and
    position embeddings stay f32). A matrix whose rows do not split into the type's blocks is written as llama.cpp's
    tools would write it (q4_k -> q5_0, q6_k -> q8_0, others -> f16), and the result lists it; `fallback=False`
    makes that an error instead. `tokenizer=False` writes the weights alone (llama.cpp then needs token ids).
    An option llama.cpp cannot compute raises `ExportError` before anything is written.
    """
    if type not in TYPES:
        raise ConfigError(f"--type {type!r} is not a GGUF type lmforge writes; choose one of {choices(TYPES)}")
    out = lio.check_output(out, what="a GGUF file", overwrite=overwrite, ours=_is_gguf, folder=False,
                           inputs=[] if isinstance(src, Transformer) else [src], option="--out")
    model, hint = _source(src)
    config = model.config
    arch, model_type = _architecture(config, hint)
    try:
        _export_family(config, model_type).to_hf_config(config, model_type)  # the Hugging Face layout's own checks
    except ExportError as e:
        raise ExportError(f"cannot export to GGUF through the Hugging Face {model_type} layout: "
                          f"{str(e).split(': ', 1)[-1]}") from None
    _check_graph(config, arch)
    tok = model.tokenizer if tokenizer else None
    if tokenizer and tok is None:
        raise ConfigError("the model has no tokenizer to export (its checkpoint has no tokenizer.json); pass "
                          "tokenizer=False (--no-tokenizer) to write the weights alone")
    vocab = tokenizer_to_gguf(tok, config.vocab_size) if tok is not None else None
    tensors, dropped = _tensors(model, arch, model_type, type)
    fallbacks = collections.Counter(f"{t.choice.ggml_type}: {t.choice.reason}" for t in tensors if t.choice.reason)
    if fallbacks and not fallback:
        first = next(t for t in tensors if t.choice.reason)
        raise ConfigError(f"--type {type}: {sum(fallbacks.values())} matrices cannot be {TYPES[type][0]}, e.g. "
                          f"{first.name} {list(first.shape)}: {first.choice.reason}; llama.cpp's tools would write "
                          f"them as {first.choice.ggml_type} (drop --no-fallback to do the same)")
    start = time.perf_counter()
    _write(out, model, arch, type, name, vocab, tensors)
    return GGUFExport(
        path=Path(out), architecture=arch, model_type=model_type, type=type,
        tensor_types=dict(collections.Counter(t.choice.ggml_type for t in tensors).most_common()),
        fallbacks=dict(fallbacks), dropped=dropped, bytes=Path(out).stat().st_size,
        seconds=time.perf_counter() - start,
        tokenizer=None if vocab is None else vocab["tokenizer.ggml.model"] + (
            f" (pre {vocab['tokenizer.ggml.pre']})" if "tokenizer.ggml.pre" in vocab else ""))


def _write(out: Path, model: Transformer, arch: str, file_type: str, name: str | None,
           vocab: dict[str, Any] | None, tensors: list[_Tensor]) -> None:
    import gguf

    writer = gguf.GGUFWriter(None, arch)
    _write_model_metadata(writer, model.config, arch, file_type, name or model.config.name or "lmforge-model")
    if vocab is not None:
        _write_tokenizer_metadata(writer, vocab)
    else:
        writer.add_tokenizer_model("none")
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes(t.shape, t.choice.ggml_type),
                               raw_dtype=gguf.GGMLQuantizationType[t.choice.ggml_type])
    with lio.atomic_write(out, "wb") as f:
        _open_on(writer, f)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            data = quantize(t.produce(), t.choice.ggml_type)
            if data.nbytes != nbytes(t.shape, t.choice.ggml_type):
                raise ExportError(f"internal: {t.name} quantized to {data.nbytes} bytes, "
                                  f"{nbytes(t.shape, t.choice.ggml_type)} expected")
            writer.write_tensor_data(data)
        writer.fout = None  # atomic_write closes the file


__all__ = ["to_gguf", "GGUFExport"]
