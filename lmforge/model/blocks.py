"""The building blocks shared by every architecture: norms, positions, attention, MLP, Transformer block.

Shapes: B batch, T query length, S key length, H query heads, K key/value heads, D head dim, C model width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .cache import KVCache
from . import fast, kernels
from .fast import Linear  # nn.Linear with an opt-in fast path for CPU inference (see fast.py)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fast.active():  # inference on the CPU: lmforge's one-pass kernel where it is built
            y = kernels.rms_norm(x, self.weight, self.eps)
            if y is not None:
                return y
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or config.d_model
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps)
    return nn.LayerNorm(dim, eps=config.norm_eps, bias=config.bias)


def activation_fn(name: str):
    return {
        "gelu": F.gelu,
        "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "relu": F.relu,
        "silu": F.silu,
        "swiglu": F.silu,
        "geglu": F.gelu,
    }[name]


# ---- positions ----------------------------------------------------------------------------------------

def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s encoding with sines in the first half of the channels and cosines in the second."""
    # computed on the CPU even under a meta-device context (it is a constant, not a weight)
    position = torch.arange(n_positions, dtype=torch.float64, device="cpu")[:, None]
    inv_freq = torch.pow(10000.0, -torch.arange(0, dim, 2, dtype=torch.float64, device="cpu") / dim)
    angles = position * inv_freq  # (P, ceil(dim/2))
    table = torch.zeros(n_positions, dim, dtype=torch.float64, device="cpu")
    half = dim // 2 + dim % 2
    table[:, :half] = torch.sin(angles)
    table[:, half:] = torch.cos(angles[:, : dim // 2])
    return table.float()


def rope_parameters(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and the attention scaling factor for rotary embeddings, with `rope_scaling`.

    Supports transformers' rope types for Llama: default, linear, dynamic, llama3 and yarn, computed in float32
    in the same order of operations as transformers' `ROPE_INIT_FUNCTIONS`, so converted checkpoints get the
    same frequencies bit for bit. "dynamic" rescales only past `context_length` (= max_position_embeddings),
    which lmforge never runs past, so within the context it equals the default frequencies, as in transformers.
    """
    dim = config.rotary_dim
    base = float(config.rope_theta)
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim  # CPU even under meta
    inv_freq = 1.0 / (base ** exponents)
    scaling = dict(config.rope_scaling or {})
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    factor = scaling.get("factor")
    factor = 1.0 if factor is None else float(factor)
    attention_factor = 1.0
    if kind == "default":
        pass
    elif kind == "linear":
        inv_freq = inv_freq / factor
    elif kind == "dynamic":
        seq_len = config.context_length  # transformers grows this only for sequences past max_position_embeddings
        base = base * ((factor * seq_len / config.context_length) - (factor - 1)) ** (dim / (dim - 2))
        inv_freq = 1.0 / (base ** exponents)
    elif kind == "llama3":
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        original = float(scaling.get("original_max_position_embeddings", config.context_length))
        low_wavelen, high_wavelen = original / low, original / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        inv_freq = torch.where(medium, smoothed, scaled)
    elif kind == "yarn":
        original = float(scaling.get("original_max_position_embeddings", config.context_length))
        if scaling.get("factor") is None:
            factor = config.context_length / original
        beta_fast = float(scaling.get("beta_fast") or 32.0)
        beta_slow = float(scaling.get("beta_slow") or 1.0)
        mscale = scaling.get("mscale")
        mscale_all = scaling.get("mscale_all_dim")

        def get_mscale(scale: float, m: float = 1.0) -> float:
            return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            attention_factor = (get_mscale(factor, mscale) / get_mscale(factor, mscale_all)
                                if mscale and mscale_all else get_mscale(factor))

        def correction_dim(rotations: float) -> float:
            return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

        low, high = correction_dim(beta_fast), correction_dim(beta_slow)
        if scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
        extrapolation = 1 - ramp
        pos_freqs = base ** exponents
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    else:
        from ..errors import ConfigError

        raise ConfigError(f"rope_scaling type {kind!r} is not supported; use default | linear | dynamic | "
                          "llama3 | yarn")
    return inv_freq.float(), float(attention_factor)


class Rotary(nn.Module):
    """cos/sin tables for rotary embeddings (rotate-half layout, as transformers' Llama)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        inv_freq, self.attention_factor = rope_parameters(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # position_ids (B, T) -> cos, sin (B, 1, T, rotary_dim)
        freqs = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, rot/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_factor).to(dtype)[:, None]
        sin = (emb.sin() * self.attention_factor).to(dtype)[:, None]
        return cos, sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    rot = cos.shape[-1]
    if rot == x.shape[-1]:
        return x * cos + _rotate_half(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + _rotate_half(x_rot) * sin, x_pass), dim=-1)


# ---- attention ----------------------------------------------------------------------------------------

class AttnMask(NamedTuple):
    """What a layer needs to mask attention: a boolean (B|1, 1, T, S) mask (True = attend) or None, and
    whether SDPA's built-in causal mask applies (only when there is no explicit mask)."""

    mask: torch.Tensor | None
    causal: bool


def build_attn_mask(
    query_len: int,
    key_len: int,
    *,
    causal: bool,
    key_padding: torch.Tensor | None = None,
    window: int | None = None,
    device: torch.device | None = None,
) -> AttnMask:
    """Combine causal, sliding-window and key-padding masks into one boolean mask for SDPA.

    Queries are the last `query_len` of `key_len` positions (a KV cache holds the others). Rows that would
    see no key at all (padding queries under left padding) may see themselves, so SDPA never returns NaN.
    """
    offset = key_len - query_len
    if key_padding is None and window is None:
        if not causal or query_len == 1:
            return AttnMask(None, False)
        if offset == 0:
            return AttnMask(None, True)
    q_idx = torch.arange(offset, key_len, device=device)[:, None]
    k_idx = torch.arange(key_len, device=device)[None, :]
    mask = torch.ones(query_len, key_len, dtype=torch.bool, device=device)
    if causal:
        mask = k_idx <= q_idx
    if window is not None:
        mask = mask & (k_idx > q_idx - window)
    mask = mask[None, None]  # (1, 1, T, S)
    if key_padding is not None:
        mask = mask & key_padding[:, None, None, :].to(torch.bool)
        empty = ~mask.any(dim=-1, keepdim=True)
        mask = mask | (empty & (k_idx == q_idx))
    return AttnMask(mask, False)


def _sdpa_takes_gqa() -> bool:
    import inspect

    try:
        return "enable_gqa" in inspect.signature(F.scaled_dot_product_attention).parameters
    except (TypeError, ValueError):  # a builtin without a signature: try it
        try:
            x = torch.zeros(1, 2, 1, 4)
            F.scaled_dot_product_attention(x, x[:, :1], x[:, :1], enable_gqa=True)
            return True
        except TypeError:
            return False


SDPA_GQA = _sdpa_takes_gqa()  # torch >= 2.5: SDPA attends grouped queries itself (no repeated keys and values)


def _kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask, dropout: float) -> bool:
    """Causal self-attention in training (a gradient to compute) on the CPU: lmforge's kernel where it applies
    (short sequences, where it is faster than SDPA's CPU flash kernel); inference keeps SDPA."""
    return (mask.causal and mask.mask is None and q.device.type == "cpu" and torch.is_grad_enabled()
            and q.requires_grad and kernels.attention_fits(q, k, v, dropout))


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask, dropout: float) -> torch.Tensor:
    """`scaled_dot_product_attention`; on the CPU, half-precision inputs are attended in float32, where
    PyTorch's CPU flash kernel is about 4x faster than its bf16 version (and more accurate). Keys and values with
    fewer heads than the queries (grouped-query attention) go in as they are (SDPA's enable_gqa)."""
    gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
    half = (torch.bfloat16, torch.float16)
    if q.device.type == "cpu" and (q.dtype in half or v.dtype in half or torch.is_autocast_enabled("cpu")):
        # (under CPU autocast, SDPA's inputs would be cast down to bf16 even when they arrive in fp32)
        dtype = v.dtype
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            if _kernel_attention(q, k, v, mask, dropout):
                y = kernels.causal_attention(q, k, v)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.mask, is_causal=mask.causal,
                                                   dropout_p=dropout, **gqa)
        return y.to(dtype)
    if _kernel_attention(q, k, v, mask, dropout):
        return kernels.causal_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.mask, is_causal=mask.causal, dropout_p=dropout,
                                          **gqa)


def attention_with_weights(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: AttnMask
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out (softmax(q k^T / sqrt(D) + mask) v) in float32, returning the weights (B, H, T, S)
    too: SDPA's fused kernels never materialise them. The same masks as `_sdpa` (no dropout: for inspection)."""
    T, S = q.shape[-2], k.shape[-2]
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    allowed = mask.mask
    if mask.causal:
        allowed = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return (weights @ v.float()).to(v.dtype), weights


class Attention(nn.Module):
    """Multi-head, grouped-query or multi-query attention through `scaled_dot_product_attention`. With
    `record` set to a list (see `lmforge.model.record_attention`), each call computes attention written out and
    appends its weights (B, H, T, S) there instead; the normal path only checks that the attribute is None."""

    record: list | None = None

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.cross = cross
        qkv_bias, out_bias = config.resolved("qkv_bias"), config.resolved("attn_out_bias")
        self.q_proj = Linear(config.d_model, self.n_head * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(config.d_model, self.n_kv_head * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(config.d_model, self.n_kv_head * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(self.n_head * self.head_dim, config.d_model, bias=out_bias)
        self.dropout = config.resolved("attn_dropout")

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, D)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, C)
        mask: AttnMask,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: torch.Tensor | None = None,  # (B, S, C) encoder output for cross-attention
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self._heads(self.q_proj(x), self.n_head)  # (B, H, T, D)
        if self.cross:
            if cache is not None and cache.has_cross(layer):
                k, v = cache.get_cross(layer)
            else:
                k = self._heads(self.k_proj(memory), self.n_kv_head)  # (B, K, S, D)
                v = self._heads(self.v_proj(memory), self.n_kv_head)
                if cache is not None:
                    cache.set_cross(layer, k, v)
        else:
            k = self._heads(self.k_proj(x), self.n_kv_head)  # (B, K, T, D)
            v = self._heads(self.v_proj(x), self.n_kv_head)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if cache is not None:
                k, v = cache.update(layer, k, v)  # (B, K, S, D)
        if self.n_kv_head != self.n_head and (self.record is not None or not SDPA_GQA):
            repeat = self.n_head // self.n_kv_head
            k = k.repeat_interleave(repeat, dim=1)
            v = v.repeat_interleave(repeat, dim=1)
        if self.record is None:
            y = _sdpa(q, k, v, mask, self.dropout if self.training else 0.0)  # (B, H, T, D)
        else:
            y, weights = attention_with_weights(q, k, v, mask)
            self.record.append(weights)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.o_proj(y)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        bias = config.resolved("mlp_bias")
        self.gated = config.gated
        if self.gated:
            self.gate_proj = Linear(config.d_model, config.d_ff, bias=bias)
        self.up_proj = Linear(config.d_model, config.d_ff, bias=bias)
        self.down_proj = Linear(config.d_ff, config.d_model, bias=bias)
        self.act = activation_fn(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(self.act(self.up_proj(x)))


class Block(nn.Module):
    """Self-attention (+ cross-attention in a decoder of an encoder-decoder) + MLP, pre- or post-norm."""

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attn_norm = make_norm(config)
        self.attn = Attention(config)
        self.cross_norm = make_norm(config) if cross else None
        self.cross_attn = Attention(config, cross=True) if cross else None
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(self, x: torch.Tensor, norm: nn.Module, fn, *args, **kwargs) -> torch.Tensor:
        if self.pre_norm:
            return x + self.dropout(fn(norm(x), *args, **kwargs))
        return norm(x + self.dropout(fn(x, *args, **kwargs)))

    def forward(
        self,
        x: torch.Tensor,
        mask: AttnMask,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        memory: torch.Tensor | None = None,
        memory_mask: AttnMask | None = None,
    ) -> torch.Tensor:
        x = self._residual(x, self.attn_norm, self.attn, mask, rope, cache, layer)
        if self.cross_attn is not None:
            x = self._residual(x, self.cross_norm, self.cross_attn, memory_mask, None, cache, layer, memory)
        return self._residual(x, self.mlp_norm, self.mlp)
