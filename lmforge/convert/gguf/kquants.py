"""Q4_K and Q6_K quantization in numpy, which the `gguf` package cannot do (it only dequantizes K-quants).

A vectorised port of llama.cpp's reference quantizers (ggml/src/ggml-quants.c: `quantize_row_q4_K_ref` with
`make_qkx2_quants`, `quantize_row_q6_K_ref` with `make_qx_quants`), i.e. what `llama-quantize` does without an
importance matrix. The arithmetic is float32 as in the C code, `nearest_int` is round-half-to-even (`np.rint`), and
every sum is accumulated left to right in float32 like the C loops: with numpy's pairwise `.sum()` about 3% of the
blocks choose another scale. With sequential sums the bytes equal llama.cpp's (`tests/convert/test_gguf_llamacpp.py`
compares them with `llama_model_quantize` when llama-cpp-python is installed).

A super-block is 256 values: Q6_K splits it into 16 sub-blocks of 16 (6-bit values, an int8 scale each, one fp16
scale), Q4_K into 8 sub-blocks of 32 (4-bit values, a 6-bit scale and a 6-bit min each, fp16 scale and min).
"""

from __future__ import annotations

import numpy as np

QK_K = 256  # values per super-block
F32 = np.float32
TINY = F32(1e-15)  # GROUP_MAX_EPS in ggml-quants.c


def _sequential_sum(terms: np.ndarray) -> np.ndarray:
    """Row sums of (rows, n) float32, accumulated left to right in float32 (as `for (i...) s += t[i]` in C)."""
    total = np.zeros(terms.shape[0], dtype=F32)
    for i in range(terms.shape[1]):
        total += terms[:, i]
    return total


def _safe(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """x where ok, 1 elsewhere: a divisor that cannot be 0 (the masked rows are overwritten afterwards)."""
    return np.where(ok, x, F32(1)).astype(F32)


# ---- Q6_K ---------------------------------------------------------------------------------------------------------

def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL) for each row of x (a row = one sub-block):
    (scale (rows,), levels (rows, n) in 0 .. 2*nmax-1)."""
    rows = np.arange(x.shape[0])
    largest = np.abs(x).argmax(axis=1)
    amax, signed_max = np.abs(x)[rows, largest], x[rows, largest]
    empty = amax < TINY
    divisor = _safe(signed_max, ~empty)
    weight = x * x

    def levels_for(inverse_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        levels = np.clip(np.rint(inverse_scale[:, None] * x), -nmax, nmax - 1).astype(F32)
        return levels, _sequential_sum(weight * x * levels), _sequential_sum(weight * levels * levels)

    levels, sum_lx, sum_l2 = levels_for((F32(-nmax) / divisor).astype(F32))
    scale = np.where(sum_l2 != 0, sum_lx / _safe(sum_l2, sum_l2 != 0), F32(0)).astype(F32)
    best = (scale * sum_lx).astype(F32)
    for step in (*range(-9, 0), *range(1, 10)):  # the candidate scales around nmax / max
        candidate, sum_lx, sum_l2 = levels_for((-(F32(nmax) + F32(0.1) * F32(step)) / divisor).astype(F32))
        better = (sum_l2 > 0) & (sum_lx * sum_lx > best * sum_l2)
        new_scale = (sum_lx / _safe(sum_l2, sum_l2 > 0)).astype(F32)
        levels = np.where(better[:, None], candidate, levels)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, (new_scale * sum_lx).astype(F32), best)
    levels = (levels + nmax).astype(np.int32)
    levels[empty], scale[empty] = 0, 0
    return scale, levels


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """(rows, n) float32 with n % 256 == 0 -> (rows, n / 256 * 210) bytes: ql[128], qh[64], scales[16], d (fp16)."""
    rows, n = x.shape
    blocks = rows * n // QK_K
    xb = x.reshape(blocks, QK_K).astype(F32)
    sub_scales, levels = _make_qx_quants(xb.reshape(blocks * 16, 16), 32)
    sub_scales, levels = sub_scales.reshape(blocks, 16), levels.reshape(blocks, QK_K)
    max_scale = sub_scales[np.arange(blocks), np.abs(sub_scales).argmax(axis=1)]
    empty = np.abs(max_scale) < TINY
    inverse = (F32(-128.0) / _safe(max_scale, ~empty)).astype(F32)
    d16 = (F32(1) / inverse).astype(np.float16)
    scales = np.minimum(127, np.rint(inverse[:, None] * sub_scales)).astype(np.int8)
    step = np.repeat((d16.astype(F32)[:, None] * scales.astype(F32)).astype(F32), 16, axis=1)  # (blocks, 256)
    requantized = np.clip(np.rint(xb / _safe(step, step != 0)), -32, 31).astype(np.int32) + 32
    levels = np.where(step != 0, requantized, levels).astype(np.uint8)
    out = np.zeros((blocks, 210), dtype=np.uint8)
    for half in range(2):  # each half of 128 values: 4 rows of 32, low 4 bits in ql, high 2 bits in qh
        q1, q2, q3, q4 = (levels[:, 128 * half + 32 * k:128 * half + 32 * (k + 1)] for k in range(4))
        out[:, 64 * half:64 * half + 32] = (q1 & 0xF) | ((q3 & 0xF) << 4)
        out[:, 64 * half + 32:64 * half + 64] = (q2 & 0xF) | ((q4 & 0xF) << 4)
        out[:, 128 + 32 * half:128 + 32 * half + 32] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    out[:, 192:208] = scales.view(np.uint8)
    out[:, 208:210] = d16.reshape(blocks, 1).view(np.uint8)
    out[empty] = 0
    return out.reshape(rows, n // QK_K * 210)


# ---- Q4_K ---------------------------------------------------------------------------------------------------------

def _make_qkx2_quants(x: np.ndarray, weight: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make_qkx2_quants(..., use_mad=false) for each row: (scale, minus the min (>= 0), levels in 0 .. nmax)."""
    low = np.minimum(x.min(axis=1), F32(0)).astype(F32)
    high = x.max(axis=1).astype(F32)
    flat = high == low
    sum_w, sum_x = _sequential_sum(weight), _sequential_sum(weight * x)
    span = _safe(high - low, ~flat)
    inverse = (F32(nmax) / span).astype(F32)
    scale = (F32(1) / inverse).astype(F32)
    levels = np.clip(np.rint(inverse[:, None] * (x - low[:, None])), 0, nmax).astype(F32)
    diff = scale[:, None] * levels + low[:, None] - x
    best = _sequential_sum(weight * (diff * diff))
    for step in range(nstep + 1):
        inverse = ((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / _safe(high - low, ~flat)).astype(F32)
        candidate = np.clip(np.rint(inverse[:, None] * (x - low[:, None])), 0, nmax).astype(F32)
        sum_l, sum_l2 = _sequential_sum(weight * candidate), _sequential_sum(weight * candidate * candidate)
        sum_xl = _sequential_sum(weight * candidate * x)
        det = (sum_w * sum_l2 - sum_l * sum_l).astype(F32)
        solvable = det > 0
        this_scale = ((sum_w * sum_xl - sum_x * sum_l) / _safe(det, solvable)).astype(F32)
        this_min = ((sum_l2 * sum_x - sum_l * sum_xl) / _safe(det, solvable)).astype(F32)
        positive = this_min > 0  # the min must not be above 0: refit the scale alone
        this_scale = np.where(positive, sum_xl / _safe(sum_l2, sum_l2 != 0), this_scale).astype(F32)
        this_min = np.where(positive, F32(0), this_min).astype(F32)
        diff = this_scale[:, None] * candidate + this_min[:, None] - x
        error = _sequential_sum(weight * (diff * diff))
        better = solvable & (error < best) & ~flat
        levels = np.where(better[:, None], candidate, levels)
        best = np.where(better, error, best)
        scale = np.where(better, this_scale, scale)
        low = np.where(better, this_min, low)
    scale = np.where(flat, F32(0), scale)
    levels[flat] = 0
    return scale.astype(F32), (-low).astype(F32), levels.astype(np.int32)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """(rows, n) float32 with n % 256 == 0 -> (rows, n / 256 * 144) bytes: d, dmin (fp16), scales[12], qs[128]."""
    rows, n = x.shape
    blocks = rows * n // QK_K
    xb = x.reshape(blocks, QK_K).astype(F32)
    sub = xb.reshape(blocks * 8, 32)
    rms = np.sqrt(_sequential_sum(sub * sub) / F32(32)).astype(F32)
    weight = (rms[:, None] + np.abs(sub)).astype(F32)
    sub_scales, sub_mins, levels = _make_qkx2_quants(sub, weight, 15, -1.0, 0.1, 20)
    sub_scales, sub_mins = sub_scales.reshape(blocks, 8), sub_mins.reshape(blocks, 8)
    levels = levels.reshape(blocks, QK_K)
    max_scale, max_min = sub_scales.max(axis=1), sub_mins.max(axis=1)
    inv_scale = np.where(max_scale > 0, F32(63) / _safe(max_scale, max_scale > 0), F32(0)).astype(F32)
    inv_min = np.where(max_min > 0, F32(63) / _safe(max_min, max_min > 0), F32(0)).astype(F32)
    ls = np.minimum(63, np.rint(inv_scale[:, None] * sub_scales)).astype(np.uint8)  # 6-bit scales
    lm = np.minimum(63, np.rint(inv_min[:, None] * sub_mins)).astype(np.uint8)  # 6-bit mins
    packed = np.zeros((blocks, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    d16, dmin16 = (max_scale / F32(63)).astype(np.float16), (max_min / F32(63)).astype(np.float16)
    step = np.repeat((d16.astype(F32)[:, None] * ls.astype(F32)).astype(F32), 32, axis=1)  # (blocks, 256)
    offset = np.repeat((dmin16.astype(F32)[:, None] * lm.astype(F32)).astype(F32), 32, axis=1)
    requantized = np.clip(np.rint((xb + offset) / _safe(step, step != 0)), 0, 15).astype(np.int32)
    levels = np.where(step != 0, requantized, levels).astype(np.uint8)
    out = np.empty((blocks, 144), dtype=np.uint8)
    out[:, 0:2] = d16.reshape(blocks, 1).view(np.uint8)
    out[:, 2:4] = dmin16.reshape(blocks, 1).view(np.uint8)
    out[:, 4:16] = packed
    for chunk in range(4):  # 64 values -> 32 bytes: the first 32 in the low nibbles, the next 32 in the high ones
        first, second = levels[:, 64 * chunk:64 * chunk + 32], levels[:, 64 * chunk + 32:64 * chunk + 64]
        out[:, 16 + 32 * chunk:16 + 32 * (chunk + 1)] = first | (second << 4)
    return out.reshape(rows, n // QK_K * 144)


__all__ = ["quantize_q4_k", "quantize_q6_k", "QK_K"]
