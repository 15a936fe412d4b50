"""A decode step without overhead (in the spirit of gpt-fast): a static, preallocated KV cache and the one-token
step of a decoder-only model written as one flat function, eager or compiled with `torch.compile`.

The step takes the token ids (B, 1) and the position as a tensor, writes the new keys and values into the
static cache with `index_copy_`, and attends over the whole cache with a mask of the filled positions, so every
step has the same shapes: what `torch.compile` needs to compile it once (inductor on the CPU, CUDA graphs with
mode="reduce-overhead" on a GPU). Eager, it attends over the filled positions only, with the kernels the
model's own forward uses (`lmforge.model.fast.linear`), so greedy tokens are those of the regular path.

The prompt is run through the model's regular forward (one pass; its keys and values land in the same static
buffers through a `KVCache` whose tensors are these buffers). Supported: decoder-only models with pre-norm blocks
(GPT-2, Llama, Qwen2, SmolLM2 shapes: learned or rotary positions, MHA/GQA/MQA, gated or plain MLPs, any biases),
prompts of equal length (no padding), no sliding window, no LoRA layers; `StaticDecoder.supports` says whether a
model qualifies, and the engine uses the regular path for everything else.

The fused path: on a CPU with lmforge's kernels built (`lmforge.model.kernels`), an fp32 model and at most
`kernels.MAX_ROWS` rows, the eager step runs each layer as one C++ call (`decode_layer`: norms, projections in fp32,
int8 or int4, rotary, cache write, attention, MLP and residuals), which removes the Python and small-kernel cost
between the matrix products (about a third of a SmolLM2-135M step). Int8 and int4 quantized layers are supported
there only. The engine takes this path by default wherever it applies (`fused_ok`); tokens equal the regular path's
up to float rounding (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..model import Transformer
from ..model.blocks import apply_rotary
from ..model.cache import KVCache
from ..model import kernels
from ..model.blocks import RMSNorm
from ..model.fast import Linear, fast_inference, linear
from ..model.quant import Int4Linear, Int8Linear

_KEPT: dict[tuple, "StaticDecoder"] = {}  # the last decoder made, reused while its model and shape stay the same
BUCKET = 256  # cache lengths are rounded up to a multiple of this, so other prompt lengths reuse a compiled step


def _plain_linear(module: nn.Module) -> bool:
    return type(module) in (nn.Linear, Linear)


ACTS = {"silu": 0, "swiglu": 0, "gelu": 1, "geglu": 1, "gelu_tanh": 2, "relu": 3}  # decode_layer's activation codes


def _projections(block) -> list[nn.Module]:
    attn, mlp = block.attn, block.mlp
    return [attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.up_proj, mlp.down_proj] + (
        [mlp.gate_proj] if mlp.gated else [])


def _fusable_layers(model) -> bool:
    """Every projection a plain fp32 linear layer or an int8/int4 quantized one, norms RMSNorm or LayerNorm."""
    for block in model.decoder.layers:
        for m in _projections(block):
            if not (_plain_linear(m) and m.weight.dtype == torch.float32) and type(m) not in (Int8Linear, Int4Linear):
                return False
        for norm in (block.attn_norm, block.mlp_norm):
            if not isinstance(norm, (RMSNorm, nn.LayerNorm)):
                return False
    return True


def fused_ok(model, batch_size: int) -> bool:
    """Whether the static step's fused CPU path applies to `model` decoding `batch_size` rows."""
    if supports(model, compiled=False) is not None or not 1 <= batch_size <= kernels.MAX_ROWS:
        return False
    param = next(model.parameters())
    return (param.device.type == "cpu" and param.dtype == torch.float32 and model.config.activation in ACTS
            and _fusable_layers(model) and kernels.ops() is not None)


def supports(model, compiled: bool = True) -> str | None:
    """None when `StaticDecoder` can decode `model`, else why not (the regular path is used then). Quantized
    layers only on the fused CPU path (`compiled=False` asks about that path)."""
    if not isinstance(model, Transformer):
        return "not a PyTorch lmforge model (an ONNX Runtime one, say)"
    c = model.config
    if c.arch != "decoder" or c.head != "lm" or model.decoder is None:
        return "not a decoder-only language model"
    stack = model.decoder
    if c.norm_position != "pre" or c.sliding_window or c.embed_norm or c.type_vocab_size or c.pos == "sinusoidal":
        return "a block layout the static step does not write out (post-norm, sliding window, embedding norm)"
    if model.mlm_dense is not None or not (_plain_linear(model.lm_head)
                                           or not compiled and type(model.lm_head) in (Int8Linear, Int4Linear)):
        return "a head other than a plain linear layer"
    kinds = (nn.Linear, Linear) if compiled else (nn.Linear, Linear, Int8Linear, Int4Linear)
    for block in stack.layers:
        if not all(type(m) in kinds for m in _projections(block)) or block.cross_attn is not None:
            return "LoRA, quantized or low-rank layers" if compiled else "LoRA or low-rank layers"
        if block.dropout.p and model.training:
            return "dropout in training mode"
    return None


class StaticDecoder:
    """Prefill once, then `step(tokens)` -> float logits (B, V) of the next token; `compile_mode` None (eager) or a
    torch.compile mode ("default", "reduce-overhead", "max-autotune")."""

    def __init__(self, model, batch_size: int, max_len: int, compile_mode: str | None = None) -> None:
        why = supports(model, compiled=compile_mode is not None)
        if why is not None:
            from ..errors import LmforgeError

            raise LmforgeError(f"the static decode step does not support this model: {why}")
        self.model = model
        c = model.config
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.max_len = max_len
        L = model.decoder.n_layers
        shape = (L, batch_size, c.n_kv_head, max_len, c.head_dim)
        self.keys = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.values = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.length = 0
        self.compile_mode = compile_mode
        self._fused: list | None = None  # per layer: (the 32 tensors of decode_layer, its other arguments)
        if compile_mode is None and fused_ok(model, batch_size):
            self._fused = fused_layers(model)
        elif supports(model) is not None:
            from ..errors import LmforgeError

            raise LmforgeError("quantized layers decode through the static step only on the fused CPU path "
                               "(fp32 activations, lmforge's kernels built, at most "
                               f"{kernels.MAX_ROWS} rows); use compile='off'")
        self._fn = self._forward if compile_mode is None else torch.compile(
            self._forward_static, mode=None if compile_mode == "default" else compile_mode, fullgraph=True,
            dynamic=False)

    @classmethod
    def get(cls, model, batch_size: int, length: int, compile_mode: str | None = None) -> "StaticDecoder":
        """A decoder for `batch_size` rows of up to `length` positions: the last one made when it fits (a compiled
        step is compiled once per model and shape, not once per call), else a new one, with its cache length rounded
        up to a multiple of BUCKET (within the model's context)."""
        max_len = min(-(-length // BUCKET) * BUCKET, model.config.context_length)
        key = (id(model), batch_size, max_len, compile_mode, next(model.parameters()).dtype)
        kept = _KEPT.get(key)
        if kept is None or kept.model is not model or kept.keys.shape[1] != batch_size:
            _KEPT.clear()  # (one at a time: a decoder holds its model and a cache)
            kept = _KEPT[key] = cls(model, batch_size, max_len, compile_mode)
        elif compile_mode is None:  # the model may have changed in place since (quantized, pruned, new weights):
            # the fused path's tensors are taken again (references, no copies)
            kept._fused = fused_layers(model) if fused_ok(model, batch_size) else None
        kept.length = 0
        return kept

    def reorder(self, index: torch.Tensor) -> None:
        """Row i continues old row index[i] (beams, several samples of a prompt); a new row count makes a new step
        shape (compiled again)."""
        self.keys = self.keys.index_select(1, index)
        self.values = self.values.index_select(1, index)

    def cache(self) -> KVCache:
        """A `KVCache` over the static buffers, for the prompt's pass through the regular forward."""
        cache = KVCache.__new__(KVCache)
        cache.keys = list(self.keys.unbind(0))
        cache.values = list(self.values.unbind(0))
        cache.cross = [None] * self.keys.shape[0]
        cache.max_len = self.max_len
        cache.length = 0
        return cache

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """Float logits (B, V) of the token after the prompt `ids` (B, T)."""
        cache = self.cache()
        with fast_inference():
            hidden = self.model.decode(ids, cache=cache)
            logits = self.model.last_logits(hidden)
        self.length = cache.length
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (B,) or (B, 1); float logits (B, V) of the next one."""
        if self.length >= self.max_len:
            from ..errors import LmforgeError

            raise LmforgeError(f"the KV cache holds {self.max_len} positions; shorten the prompt or max_new_tokens")
        tokens = tokens.reshape(-1, 1).to(self.device)
        pos = torch.tensor([self.length], device=self.device)
        if self.compile_mode is None:
            with fast_inference():
                if self._fused is not None and tokens.shape[0] <= kernels.MAX_ROWS:
                    logits = self._fused_forward(tokens, pos)
                else:
                    logits = self._fn(tokens, pos)
        else:
            logits = self._fn(tokens, pos)
            if self.compile_mode == "reduce-overhead":
                logits = logits.clone()  # (CUDA graphs reuse their output buffer)
        self.length += 1
        return logits

    def _fused_forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return fused_logits(self.model, self._fused, tokens, pos, self.keys, self.values, self.length)

    # ---- the step, written out ----------------------------------------------------------------------------
    def _embed(self, tokens: torch.Tensor, pos: torch.Tensor):
        return embed_step(self.model, tokens, pos)

    def _layers(self, x, rope, write, attend, lin):
        stack = self.model.decoder
        B = x.shape[0]
        for i in range(stack.n_layers):
            block = stack.block(i)
            attn, mlp = block.attn, block.mlp
            H, K, D = attn.n_head, attn.n_kv_head, attn.head_dim
            h = block.attn_norm(x)
            q = lin(h, attn.q_proj).view(B, 1, H, D).transpose(1, 2)
            k = lin(h, attn.k_proj).view(B, 1, K, D).transpose(1, 2)
            v = lin(h, attn.v_proj).view(B, 1, K, D).transpose(1, 2)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            keys, values = write(i, k, v)
            y = attend(q, keys, values, H // K)
            x = x + lin(y.transpose(1, 2).reshape(B, 1, H * D), attn.o_proj)
            h = block.mlp_norm(x)
            if mlp.gated:
                h = mlp.act(lin(h, mlp.gate_proj)) * lin(h, mlp.up_proj)
            else:
                h = mlp.act(lin(h, mlp.up_proj))
            x = x + lin(h, mlp.down_proj)
        if stack.final_norm is not None:
            x = stack.final_norm(x)
        return lin(x[:, -1], self.model.lm_head).float()

    def _forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Eager: keys and values written by slice, attention over the filled positions only."""
        n = self.length
        x, rope = self._embed(tokens, pos)

        def write(i, k, v):
            self.keys[i, :, :, n:n + 1] = k
            self.values[i, :, :, n:n + 1] = v
            return self.keys[i, :, :, :n + 1], self.values[i, :, :, :n + 1]

        def attend(q, keys, values, repeat):
            if repeat > 1:
                keys = keys.repeat_interleave(repeat, dim=1)
                values = values.repeat_interleave(repeat, dim=1)
            return F.scaled_dot_product_attention(q, keys, values)

        return self._layers(x, rope, write, attend, lambda h, m: linear(h, m.weight, m.bias))

    def _forward_static(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Static shapes for torch.compile: `index_copy_` at `pos`, attention over the whole cache, masked."""
        x, rope = self._embed(tokens, pos)
        mask = (torch.arange(self.max_len, device=pos.device) <= pos)[None, None, None]  # (1, 1, 1, S)

        def write(i, k, v):
            self.keys[i].index_copy_(2, pos, k)
            self.values[i].index_copy_(2, pos, v)
            return self.keys[i], self.values[i]

        def attend(q, keys, values, repeat):
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=repeat > 1)

        return self._layers(x, rope, write, attend, lambda h, m: F.linear(h, m.weight, m.bias))


def layer_args(model, block) -> tuple[list[torch.Tensor], tuple]:
    """What `decode_layer` takes of one block: its 32 tensors (references, no copies) and its other arguments."""
    empty = torch.empty(0)

    def proj(m):
        if isinstance(m, (Int8Linear, Int4Linear)):
            w, s, h = m.kernel_tensors()
        else:
            w, s, h = m.weight.detach().contiguous(), empty, empty
        bias = m.bias.detach().float().contiguous() if m.bias is not None else empty
        return [w, s, h, bias]

    def norm(n):
        w = n.weight.detach().contiguous() if n.weight is not None else empty
        b = n.bias.detach().contiguous() if getattr(n, "bias", None) is not None else empty
        return [w, b]

    attn, mlp = block.attn, block.mlp
    tensors = norm(block.attn_norm) + norm(block.mlp_norm)
    for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
        tensors += proj(m)
    tensors += proj(mlp.gate_proj) if mlp.gated else [empty] * 4
    tensors += proj(mlp.up_proj) + proj(mlp.down_proj)
    eps = block.attn_norm.eps
    return tensors, (attn.n_head, attn.n_kv_head, float(eps), isinstance(block.attn_norm, nn.LayerNorm),
                     bool(mlp.gated), ACTS[model.config.activation], 1.0 / attn.head_dim ** 0.5)


def fused_layers(model) -> list:
    """`layer_args` of every block, for `fused_logits`, after moving the weights the fused step streams onto huge pages
    (once per model, `kernels.to_hugepages`: weights read from a GGUF file sit in numpy's memory, where SmolLM2 decodes
    1.4x slower). What the static step, `generate`'s padded batches and the server's engine each call."""
    kernels.to_hugepages(model)
    return [layer_args(model, block) for block in model.decoder.layers]


def embed_step(model, tokens: torch.Tensor, pos: torch.Tensor):
    """Embeddings (B, 1, C) of one token per row and the rotary tables (or None); `pos` (1,) the position of every
    row or (B,) one per row."""
    stack = model.decoder
    x = model.tok_embed(tokens)
    if stack.embed_scale != 1.0:
        x = x * stack.embed_scale
    col = pos.view(-1, 1)
    if stack.pos_embed is not None:
        x = x + stack.pos_embed(col + model.config.pos_offset)
    rope = stack.rotary(col, x.dtype) if stack.rotary is not None else None
    return x, rope


def fused_logits(model, layers: list, tokens: torch.Tensor, pos: torch.Tensor, keys, values, length: int,
                 key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One decode step through lmforge's `decode_layer`, a C++ call per layer: `tokens` (B, 1), `pos` (1,) or (B,)
    positions, `layers` from `layer_args`, `keys`/`values` per layer contiguous fp32 (B, K, S, D) with this step's
    keys/values written at column `length`; `key_mask` (B, >= length + 1) uint8, 0 at the columns a row must not
    attend (left padding, the server's right-aligned rows), or None. Float logits (B, V) of the next token."""
    ops = kernels.ops()
    x, rope = embed_step(model, tokens, pos)
    B = x.shape[0]
    h = x.reshape(B, -1).contiguous()
    empty = torch.empty(0)
    if rope is None:
        cos, sin = empty, empty
    elif pos.numel() == 1:
        cos, sin = (t.reshape(-1).float().contiguous() for t in rope)
    else:
        cos, sin = (t.reshape(B, -1).float().contiguous() for t in rope)
    for i, (tensors, args) in enumerate(layers):
        h = ops.decode_layer(h, tensors, keys[i], values[i], length, cos, sin, *args, key_mask)
    stack = model.decoder
    if stack.final_norm is not None:
        h = stack.final_norm(h)
    return model.last_logits(h[:, None])


__all__ = ["StaticDecoder", "supports", "fused_ok", "fused_logits", "fused_layers", "layer_args"]
