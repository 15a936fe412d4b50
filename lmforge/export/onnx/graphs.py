"""The graphs: plain-tensor wrappers around the model's own modules, and the `torch.onnx.export` calls.

Design (docs/export.md, "ONNX"): a decoder is ONE graph that takes the past keys/values of every layer as inputs and
returns the present ones; step 0 feeds a past of length 0. The new exporter (`dynamo=True`, torch.export) cannot
make an axis dynamic when its example size is 0 or 1, but that limit is on the *example* only: the graph is
shape-generic, so it is traced with every dynamic axis >= 2 (batch 2, 3 new tokens, a past of 4) and runs with a
past of 0, one row and one token. When torch.export does specialize an axis, `torch.onnx.export` does not fail: it
re-exports with the suggested fix (e.g. batch = 1) and writes a fixed size, so `check_dynamic` reads every exported
input back and refuses a graph where an axis asked to be dynamic came out fixed.

The wrappers call the model's own `Stack.forward` (which skips its size checks and always applies the given mask
while `torch.compiler.is_exporting()`), with `ConcatCache` standing in for the KV cache: past keys/values come in as
tensors and the concatenation with the new ones is the "present" output.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.export import Dim

from ...errors import ConfigError

EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 3, 4  # every dynamic axis >= 2 in the example (see the module doc)


class ConcatCache:
    """What `Attention` needs of a KV cache, for one traced forward pass: `update` appends the new keys/values to
    the past ones (inputs) and records the result (outputs); cross-attention keys/values are given."""

    def __init__(self, past, cross=None) -> None:
        self.past_k, self.past_v = list(past[0::2]), list(past[1::2])
        self.length = self.past_k[0].shape[2]
        self.present: list[torch.Tensor] = [None] * (2 * len(self.past_k))  # type: ignore[list-item]
        self.cross = list(zip(cross[0::2], cross[1::2])) if cross is not None else None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        K = torch.cat([self.past_k[layer], k], dim=2)
        V = torch.cat([self.past_v[layer], v], dim=2)
        self.present[2 * layer], self.present[2 * layer + 1] = K, V
        return K, V

    def advance(self, n: int) -> None:
        pass

    def has_cross(self, layer: int) -> bool:
        return self.cross is not None

    def get_cross(self, layer: int):
        return self.cross[layer]  # type: ignore[index]

    def set_cross(self, layer: int, k, v) -> None:
        raise AssertionError("cross-attention keys/values are graph inputs")


def kv_names(n_layers: int, prefix: str) -> list[str]:
    return [f"{prefix}_{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]


class DecoderWithPast(nn.Module):
    """input_ids (B, T), attention_mask (B, P+T), position_ids (B, T), past_key_i / past_value_i (B, K, P, D)
    -> logits (B, 1, V) of the last position, present_key_i / present_value_i (B, K, P+T, D)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        m = self.model
        cache = ConcatCache(past)
        hidden = m.decoder(m.tok_embed, input_ids, attention_mask, position_ids, None, cache)
        return (m.head_logits(hidden, None, last_only=True), *cache.present)


class Seq2SeqEncoder(nn.Module):
    """input_ids, attention_mask (B, S) -> cross_kv (B, 2L, K, S, D): every decoder layer's cross-attention keys and
    values of the encoder output, computed once (one batch-first tensor, so the generation engine's row selection
    for beams applies to it as to hidden states)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        m = self.model
        h = m.encoder(m.tok_embed, input_ids, attention_mask)
        kv = []
        for i in range(m.decoder.n_layers):
            ca = m.decoder.block(i).cross_attn
            kv += [ca._heads(ca.k_proj(h), ca.n_kv_head), ca._heads(ca.v_proj(h), ca.n_kv_head)]
        return torch.stack(kv, dim=1)


class Seq2SeqDecoder(nn.Module):
    """input_ids (B, T), attention_mask (B, P+T), position_ids (B, T), encoder_attention_mask (B, S),
    cross_kv (B, 2L, K, S, D), past_key_i / past_value_i -> logits (B, 1, V), present_key_i / present_value_i."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, encoder_attention_mask, cross_kv, *past):
        m = self.model
        cache = ConcatCache(past, cross_kv.unbind(1))
        # cross-attention reads its keys/values from the cache; of `memory` only the length is used (for the mask)
        memory = encoder_attention_mask[:, :, None]
        hidden = m.decoder(m.tok_embed, input_ids, attention_mask, position_ids, None, cache, memory=memory,
                           memory_mask=encoder_attention_mask)
        return (m.head_logits(hidden, None, last_only=True), *cache.present)


class WithHead(nn.Module):
    """A model with a task head (classify, tag, span) or an encoder's masked-LM head: its forward, as in training."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return self.model(input_ids, attention_mask, token_type_ids=token_type_ids)


# ---- exporting -----------------------------------------------------------------------------------------

def _export(module: nn.Module, args: tuple, dynamic_shapes, inputs: list[str], outputs: list[str], path: Path,
            opset: int | None, axes: dict[str, list[int]]) -> None:
    import logging
    import warnings

    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed. Skipping torchvision::nms", ...
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on axis names that share a constraint
        program = torch.onnx.export(module.eval(), args, dynamo=True, dynamic_shapes=dynamic_shapes,
                                    input_names=inputs, output_names=outputs, opset_version=opset, verbose=False)
        program.save(str(path), external_data=True)  # weights in <graph>.onnx.data: no 2 GB protobuf limit
    quiet.setLevel(level)
    check_dynamic(path, axes)


def check_dynamic(path: Path, axes: dict[str, list[int]]) -> None:
    """Refuse a graph where an axis asked to be dynamic was exported as a fixed size (see the module doc)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {i.name: i.type.tensor_type.shape.dim for i in graph.input}
    fixed = [f"{n}[{a}]={shapes[n][a].dim_value}" for n, dims in axes.items() for a in dims if not shapes[n][a].dim_param]
    if fixed:
        raise RuntimeError(f"{path.name}: the exporter fixed axes that must stay dynamic: {', '.join(fixed)}")


def _example(config, n_layers: int, B=EXAMPLE_BATCH, T=EXAMPLE_SEQ, P=EXAMPLE_PAST):
    ids = torch.randint(0, config.vocab_size, (B, T))
    mask = torch.ones(B, P + T, dtype=torch.long)
    pos = torch.arange(P, P + T)[None].expand(B, T).contiguous()
    past = tuple(torch.zeros(B, config.n_kv_head, P, config.head_dim) for _ in range(2 * n_layers))
    return ids, mask, pos, past


def export_decoder(model, path: Path, opset: int | None) -> dict:
    L = model.decoder.n_layers
    ids, mask, pos, past = _example(model.config, L)
    batch, seq, plen, total = Dim("batch"), Dim("sequence"), Dim("past_sequence"), Dim("total_sequence")
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, tuple({0: batch, 2: plen} for _ in past))
    inputs = ["input_ids", "attention_mask", "position_ids"] + kv_names(L, "past")
    axes = {"input_ids": [0, 1], "attention_mask": [0, 1], "position_ids": [0, 1], **{n: [0, 2] for n in inputs[3:]}}
    _export(DecoderWithPast(model), (ids, mask, pos, *past), shapes, inputs, ["logits"] + kv_names(L, "present"),
            path, opset, axes)
    return {"inputs": inputs, "layers": L}


def export_seq2seq(model, enc_path: Path, dec_path: Path, opset: int | None) -> dict:
    c = model.config
    L = model.decoder.n_layers
    B, S = EXAMPLE_BATCH, 5
    batch, src = Dim("batch"), Dim("source_sequence")
    src_ids = torch.randint(0, c.vocab_size, (B, S))
    src_mask = torch.ones(B, S, dtype=torch.long)
    _export(Seq2SeqEncoder(model), (src_ids, src_mask), ({0: batch, 1: src}, {0: batch, 1: src}),
            ["input_ids", "attention_mask"], ["cross_kv"], enc_path, opset, {"input_ids": [0, 1], "attention_mask": [0, 1]})
    ids, mask, pos, past = _example(c, L)
    cross = torch.zeros(B, 2 * L, c.n_kv_head, S, c.head_dim)
    seq, plen, total = Dim("sequence"), Dim("past_sequence"), Dim("total_sequence")
    shapes = ({0: batch, 1: seq}, {0: batch, 1: total}, {0: batch, 1: seq}, {0: batch, 1: src}, {0: batch, 3: src},
              tuple({0: batch, 2: plen} for _ in past))
    inputs = ["input_ids", "attention_mask", "position_ids", "encoder_attention_mask", "cross_kv"] + kv_names(L, "past")
    axes = {"input_ids": [0, 1], "attention_mask": [0, 1], "position_ids": [0, 1], "encoder_attention_mask": [0, 1],
            "cross_kv": [0, 3], **{n: [0, 2] for n in inputs[5:]}}
    _export(Seq2SeqDecoder(model), (ids, mask, pos, src_mask, cross, *past), shapes, inputs,
            ["logits"] + kv_names(L, "present"), dec_path, opset, axes)
    return {"inputs": inputs, "layers": L}


def export_with_head(model, path: Path, opset: int | None) -> dict:
    c = model.config
    if c.head == "relations":
        raise ConfigError("a relations model (entity tagger + pair classifier) cannot be exported to ONNX: its pair "
                          "scoring takes a variable list of entity pairs; export a tagger or a classifier")
    types = bool(c.type_vocab_size)
    B, T = EXAMPLE_BATCH, 5
    batch, seq = Dim("batch"), Dim("sequence")
    args = [torch.randint(0, c.vocab_size, (B, T)), torch.ones(B, T, dtype=torch.long)]
    inputs = ["input_ids", "attention_mask"]
    if types:
        args.append(torch.zeros(B, T, dtype=torch.long))
        inputs.append("token_type_ids")
    _export(WithHead(model), tuple(args), tuple({0: batch, 1: seq} for _ in args), inputs, ["logits"], path,
            opset, {n: [0, 1] for n in inputs})
    return {"inputs": inputs}


__all__ = ["ConcatCache", "DecoderWithPast", "Seq2SeqEncoder", "Seq2SeqDecoder", "WithHead", "export_decoder",
           "export_seq2seq", "export_with_head", "check_dynamic", "kv_names"]
