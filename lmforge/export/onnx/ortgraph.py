"""A decoder graph written for ONNX Runtime (`--graph ort`, the default wherever it applies).

`torch.onnx.export` writes a decoder as the model computes it: about 75 standard ops per layer (the norm as Pow,
ReduceMean, Sqrt, Reciprocal, Mul; rotary as Slice, Neg, Concat; grouped-query keys repeated with Expand; the cache
grown with Concat; and the Shape/Reshape/Transpose around every head split). On a small model ONNX Runtime spends
more time between those ops than in the matrix products: SmolLM2-135M's exported graph has 2,295 nodes and takes
25.6 ms a token where its 211 matrix products alone take 18.2 ms (docs/benchmarks.md). This module writes the same
decoder, with the same inputs and outputs (so `OnnxModel` and `OrtCache` run it unchanged), as about 9 nodes per
layer of ONNX Runtime's fused operators, the ones its own model builder (onnxruntime-genai) uses:

    SkipSimplifiedLayerNormalization / SkipLayerNormalization   residual add + RMSNorm / LayerNorm in one op
    MatMul (packed q|k|v weights)                               one product for the three projections
    GroupQueryAttention (com.microsoft)                         rotary, the cache update, grouped-query attention
    MatMul (packed gate|up weights), Split, activation, Mul     the MLP's first half

Inputs: input_ids (B, T), attention_mask (B, P+T), position_ids (B, T), past_key_i / past_value_i (B, K, P, D);
outputs: logits (B, 1, V) of the last position, present_key_i / present_value_i (B, K, P+T, D). GroupQueryAttention
gets every row's total length P+T (`seqlens_k` = P+T-1), the positions as given (left-padded rows start at 0) and
the padding as an additive bias (B, 1, T, P+T), so left-padded batches decode as in PyTorch (tested).

What it does not cover (`why_not` says which, and the export falls back to `torch.onnx.export`'s portable graph):
models other than pre-norm decoder LMs, sliding-window attention, sinusoidal positions, embedding norms, partial
rotary, head sizes that are not a multiple of 16 (GroupQueryAttention's CPU kernel needs one), LoRA layers that are
not merged, quantized or low-rank layers. The graph needs ONNX Runtime (com.microsoft operators); the portable graph
(`--graph portable`) runs on any ONNX runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 21
ACTIVATIONS = ("silu", "swiglu", "gelu", "gelu_tanh", "geglu", "relu")


def why_not(model) -> str | None:
    """None when `write_decoder` can write `model`, else why not."""
    from ...model.fast import Linear

    c = model.config
    stack = model.decoder
    if c.arch != "decoder" or c.head != "lm" or stack is None:
        return "not a decoder-only language model"
    if c.norm_position != "pre" or c.sliding_window or c.embed_norm or c.type_vocab_size or c.pos == "sinusoidal":
        return "a block layout other than a pre-norm decoder (post-norm, sliding window, embedding norm, sinusoidal)"
    if c.head_dim % 16:
        return f"head size {c.head_dim} is not a multiple of 16 (ONNX Runtime's GroupQueryAttention needs one)"
    if c.pos == "rope" and c.rotary_dim not in (None, c.head_dim):
        return "partial rotary embeddings"
    if c.activation not in ACTIVATIONS:
        return f"activation {c.activation}"
    plain = (nn.Linear, Linear)
    if model.mlm_dense is not None or type(model.lm_head) not in plain:
        return "a head other than a plain linear layer"
    for i in range(stack.n_layers):
        b = stack.block(i)
        projections = [b.attn.q_proj, b.attn.k_proj, b.attn.v_proj, b.attn.o_proj, b.mlp.up_proj, b.mlp.down_proj]
        projections += [b.mlp.gate_proj] if b.mlp.gated else []
        if b.cross_attn is not None or not all(type(m) in plain for m in projections):
            return "LoRA, quantized or low-rank layers"
    return None


class _Graph:
    """Nodes and initializers, with fresh output names."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []
        self.count = 0

    def weight(self, name: str, array) -> str:
        from onnx import numpy_helper

        if isinstance(array, torch.Tensor):
            array = array.detach().float().cpu().numpy()
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, name: str, value, dtype) -> str:
        return self.weight(name, np.array(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        from onnx import helper

        self.count += 1
        tag = f"{op_type}_{self.count}"
        names = [f"{tag}_out{i}" for i in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, names, name=tag, domain=domain, **attrs))
        return names[0] if len(names) == 1 else names


def _t(linear: nn.Module) -> torch.Tensor:
    return linear.weight.detach().float().t()


def _proj(g: _Graph, x: str, name: str, linears: list[nn.Module], keep_bias: bool = False):
    """x @ [W1 | W2 | ...] (+ the biases): one product for several projections of the same input. keep_bias: return
    (product, bias initializer or "") and leave the addition to the skip-norm that follows."""
    w = torch.cat([_t(m) for m in linears], dim=1)
    y = g.op("MatMul", [x, g.weight(f"{name}.weight", w)])
    bias = ""
    if any(m.bias is not None for m in linears):
        bias = g.weight(f"{name}.bias", torch.cat([m.bias.detach().float() if m.bias is not None
                                                   else torch.zeros(m.out_features) for m in linears]))
    if keep_bias:
        return y, bias
    return g.op("Add", [y, bias]) if bias else y


def _norm_weights(g: _Graph, name: str, norm: nn.Module) -> list[str]:
    out = [g.weight(f"{name}.weight", norm.weight)]
    if isinstance(norm, nn.LayerNorm):
        bias = norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
        out.append(g.weight(f"{name}.bias", bias))
    return out


def _norm(g: _Graph, x: str, name: str, norm: nn.Module) -> str:
    if isinstance(norm, nn.LayerNorm):
        return g.op("LayerNormalization", [x, *_norm_weights(g, name, norm)], axis=-1, epsilon=float(norm.eps))
    return g.op("SimplifiedLayerNormalization", [x, *_norm_weights(g, name, norm)], axis=-1,
                epsilon=float(norm.eps), stash_type=1)


def _skip_norm(g: _Graph, x: str, bias: str, residual: str, name: str, norm: nn.Module) -> tuple[str, str]:
    """(norm(x + bias + residual), x + bias + residual) in one op (bias "" for none)."""
    g.count += 1
    y, total = f"skipnorm_{g.count}_y", f"skipnorm_{g.count}_sum"
    weights = _norm_weights(g, name, norm)
    if isinstance(norm, nn.LayerNorm):  # input, skip, gamma, beta, bias
        g.op("SkipLayerNormalization", [x, residual, *weights, bias], [y, "", "", total], domain="com.microsoft",
             epsilon=float(norm.eps))
    else:  # input, skip, gamma, bias
        g.op("SkipSimplifiedLayerNormalization", [x, residual, *weights, bias], [y, "", "", total],
             domain="com.microsoft", epsilon=float(norm.eps))
    return y, total


def _mlp(g: _Graph, x: str, name: str, mlp: nn.Module, activation: str) -> tuple[str, str]:
    def act(h: str) -> str:
        if activation in ("silu", "swiglu"):
            return g.op("Mul", [h, g.op("Sigmoid", [h])])
        if activation == "relu":
            return g.op("Relu", [h])
        return g.op("Gelu", [h], approximate="tanh" if activation == "gelu_tanh" else "none")

    if mlp.gated:
        gate, up = g.op("Split", [_proj(g, x, f"{name}.gate_up", [mlp.gate_proj, mlp.up_proj])], 2, axis=-1,
                        num_outputs=2)
        h = g.op("Mul", [act(gate), up])
    else:
        h = act(_proj(g, x, f"{name}.up", [mlp.up_proj]))
    return _proj(g, h, f"{name}.down", [mlp.down_proj], keep_bias=True)


def build_decoder(model):
    """The decoder of `model` as an onnx ModelProto (weights inside; `write_decoder` saves them as external data)."""
    from onnx import TensorProto, helper

    from .graphs import kv_names

    c = model.config
    stack = model.decoder
    L, K, D, H = stack.n_layers, c.n_kv_head, c.head_dim, c.n_head
    g = _Graph()
    # embeddings
    x = g.op("Gather", [g.weight("tok_embed.weight", model.tok_embed.weight), "input_ids"])
    if stack.embed_scale != 1.0:
        x = g.op("Mul", [x, g.const("embed_scale", stack.embed_scale, np.float32)])
    if stack.pos_embed is not None:
        pos = g.op("Add", ["position_ids", g.const("pos_offset", c.pos_offset, np.int64)]) if c.pos_offset \
            else "position_ids"
        x = g.op("Add", [x, g.op("Gather", [g.weight("pos_embed.weight", stack.pos_embed.weight), pos])])
    # what GroupQueryAttention needs besides q|k|v and the cache, computed once for every layer
    batch = g.op("Shape", ["input_ids"], start=0, end=1)
    seq = g.op("Shape", ["input_ids"], start=1, end=2)
    total_1d = g.op("Shape", ["attention_mask"], start=1, end=2)
    total = g.op("Cast", [g.op("Squeeze", [total_1d, g.const("axis0", [0], np.int64)])], to=TensorProto.INT32)
    seqlens = g.op("Expand", [g.op("Sub", [total, g.const("one_i32", 1, np.int32)]), batch])
    pad = g.op("Sub", [g.const("one_f32", 1.0, np.float32), g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)])
    bias = g.op("Mul", [pad, g.const("masked", np.finfo(np.float32).min, np.float32)])  # (B, P+T): 0 or -max
    bias = g.op("Unsqueeze", [bias, g.const("axes12", [1, 2], np.int64)])  # (B, 1, 1, P+T)
    bias_shape = g.op("Concat", [batch, g.const("one_1d", [1], np.int64), seq, total_1d], axis=0)
    bias = g.op("Expand", [bias, bias_shape])  # (B, 1, T, P+T)
    rotary = ["", "", ""]  # cos, sin, position_ids: GroupQueryAttention rotates by each key's index in the padded
    # sequence, not by position_ids; a left-padded row is thereby shifted, which changes no attention score (rotary
    # scores depend on distances only) and keeps its cached keys consistent with its later steps
    if stack.rotary is not None:
        with torch.no_grad():
            cos, sin = stack.rotary(torch.arange(c.context_length + c.pos_offset)[None], torch.float32)
        half = cos.shape[-1] // 2
        rotary = [g.weight("rotary.cos", cos[0, 0, :, :half]), g.weight("rotary.sin", sin[0, 0, :, :half]), ""]
    past, present = kv_names(L, "past"), kv_names(L, "present")

    residual = x
    h = _norm(g, x, "layers.0.attn_norm", stack.block(0).attn_norm)
    for i in range(L):
        b, name = stack.block(i), f"layers.{i}"
        a = b.attn
        qkv = _proj(g, h, f"{name}.attn.qkv", [a.q_proj, a.k_proj, a.v_proj])
        y = g.op("GroupQueryAttention", [qkv, "", "", past[2 * i], past[2 * i + 1], seqlens, total, *rotary, bias],
                 [f"{name}.attn.out", present[2 * i], present[2 * i + 1]], domain="com.microsoft", num_heads=H,
                 kv_num_heads=K, do_rotary=int(stack.rotary is not None), rotary_interleaved=0, scale=1.0 / D ** 0.5)[0]
        y, y_bias = _proj(g, y, f"{name}.attn.o", [a.o_proj], keep_bias=True)
        h, residual = _skip_norm(g, y, y_bias, residual, f"{name}.mlp_norm", b.mlp_norm)
        y, y_bias = _mlp(g, h, f"{name}.mlp", b.mlp, c.activation)
        if i + 1 < L:
            h, residual = _skip_norm(g, y, y_bias, residual, f"layers.{i + 1}.attn_norm",
                                     stack.block(i + 1).attn_norm)
        else:
            residual = g.op("Add", [g.op("Add", [y, y_bias]) if y_bias else y, residual])
    last = g.op("Slice", [residual, g.const("minus1", [-1], np.int64), g.const("intmax", [2 ** 62], np.int64),
                          g.const("axis1", [1], np.int64)])
    if stack.final_norm is not None:
        last = _norm(g, last, "final_norm", stack.final_norm)
    head = model.lm_head
    if head.weight is model.tok_embed.weight:  # tied: the product reads the embedding, transposed once at load
        w = g.op("Transpose", ["tok_embed.weight"], perm=[1, 0])
    else:
        w = g.weight("lm_head.weight", _t(head))
    logits = g.op("MatMul", [last, w], ["logits"] if head.bias is None else 1)
    if head.bias is not None:
        g.op("Add", [logits, g.weight("lm_head.bias", head.bias)], ["logits"])

    def tensor(name, elem, dims):
        return helper.make_tensor_value_info(name, elem, dims)

    inputs = [tensor("input_ids", TensorProto.INT64, ["batch", "sequence"]),
              tensor("attention_mask", TensorProto.INT64, ["batch", "total_sequence"]),
              tensor("position_ids", TensorProto.INT64, ["batch", "sequence"])]
    inputs += [tensor(n, TensorProto.FLOAT, ["batch", K, "past_sequence", D]) for n in past]
    outputs = [tensor("logits", TensorProto.FLOAT, ["batch", 1, c.vocab_size])]
    outputs += [tensor(n, TensorProto.FLOAT, ["batch", K, "total_sequence", D]) for n in present]
    graph = helper.make_graph(g.nodes, "lmforge_decoder", inputs, outputs, g.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                         helper.make_opsetid("com.microsoft", 1)],
                                   producer_name="lmforge")
    onnx_model.ir_version = 10
    return onnx_model


def write_decoder(model, path: Path) -> dict:
    """Write the decoder graph to `path`, its weights to `path`.data; returns what `_write_graphs` records."""
    import onnx

    with torch.no_grad():
        proto = build_decoder(model)
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)
    return {"layers": model.decoder.n_layers}


__all__ = ["why_not", "build_decoder", "write_decoder", "OPSET"]
