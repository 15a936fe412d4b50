// lmforge's CPU kernels: for decoding, a few rows of activations times a weight matrix that is read once (and, at
// the end, causal self-attention for training on short sequences).
//
// At batch 1 every decoding step reads every weight once, so tokens/s is bounded by how fast the matrix-vector
// product streams the weights from memory. PyTorch's CPU kernels reach 44-73% of a plain read of the same bytes
// on the machines we measured (benchmarks/decode_floor.py); these kernels stream each weight row once with AVX-512,
// the threads splitting the rows, for fp32 weights, int8 weights (per-row scales) and 4-bit weights (lmforge's
// int4 layout: two codes a byte, the even column in the low nibble, a scale and an offset per group of columns).
// They take fp32 activations of at most a few rows (M <= 8): the weight rows are read from memory once and from
// the L1 cache for the other rows. Built on first use by torch.utils.cpp_extension (lmforge/model/kernels.py);
// every function checks its inputs and the CPU (AVX-512F) and returns an empty tensor when it does not apply, so
// the caller falls back to PyTorch's kernels.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>
#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kMaxRows = 8;

bool has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return ok;
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

constexpr int64_t kAhead = 4096;  // bytes: how far ahead of the current weight row the prefetch runs

// ---- fp32 weights, or int8 weights with one fp32 scale per row -----------------------------------------------
// One row at a time, 64 columns per iteration in four accumulators, prefetching kAhead bytes ahead: a single
// sequential stream per thread, which the measurements favoured over interleaving several rows.

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(__mmask16 mk, const float* p) {
  return _mm512_maskz_loadu_ps(mk, p);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(__mmask16 mk, const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, p)));
}

// y[m, n] = sum_k x[m, k] w[n, k] (times scale[n] when given) for rows n0..n1 of w
template <typename W>
__attribute__((target("avx512f,avx512bw,avx512vl")))
void dense_rows(const float* x, const W* w, const float* scale, float* y, int64_t M, int64_t K, int64_t N,
                int64_t n0, int64_t n1) {
  const int64_t K64 = K - K % 64;
  for (int64_t n = n0; n < n1; ++n) {
    const W* wr = w + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * K;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
      for (int64_t k = 0; k < K64; k += 64) {
        if (m == 0) {  // the cache lines of the 64 weights kAhead bytes on (one for int8, four for fp32)
          const char* p = reinterpret_cast<const char*>(wr + k) + kAhead;
          for (int64_t line = 0; line < 64 * int64_t(sizeof(W)); line += 64) _mm_prefetch(p + line, _MM_HINT_T0);
        }
        a0 = _mm512_fmadd_ps(load16(wr + k), _mm512_loadu_ps(xm + k), a0);
        a1 = _mm512_fmadd_ps(load16(wr + k + 16), _mm512_loadu_ps(xm + k + 16), a1);
        a2 = _mm512_fmadd_ps(load16(wr + k + 32), _mm512_loadu_ps(xm + k + 32), a2);
        a3 = _mm512_fmadd_ps(load16(wr + k + 48), _mm512_loadu_ps(xm + k + 48), a3);
      }
      for (int64_t k = K64; k < K; k += 16) {
        __mmask16 mk = tail_mask(K - k);
        a0 = _mm512_fmadd_ps(load16(mk, wr + k), _mm512_maskz_loadu_ps(mk, xm + k), a0);
      }
      const float dot = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
      y[m * N + n] = scale ? dot * scale[n] : dot;
    }
  }
}

// ---- 4-bit weights: w = q * scale + shift per group of G columns (shift = offset - 8 scale) --------------------
// With the activations split into even (xe) and odd (xo) columns, byte j of a row holds the codes of columns 2j
// (low nibble) and 2j + 1 (high nibble), so 16 bytes meet 16 consecutive entries of xe and of xo. Per group:
// sum_k w_k x_k = scale * sum_k q_k x_k + shift * sum_k x_k, the last sums precomputed per group, so the shift
// part of a row is one short dot product.

__attribute__((target("avx512f,avx512bw,avx512vl")))
void i4_rows(const float* xe, const float* xo, const float* xsum, const uint8_t* w, const float* scale,
             const float* shift, float* y, int64_t M, int64_t K, int64_t N, int64_t G, int64_t n0, int64_t n1) {
  const int64_t half = K / 2, groups = K / G, gh = G / 2;
  const __m512i low = _mm512_set1_epi32(15);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = w + n * half;
    const float* sr = scale + n * groups;
    const float* hr = shift + n * groups;
    for (int64_t m = 0; m < M; ++m) {
      const float* xem = xe + m * half;
      const float* xom = xo + m * half;
      const float* xs = xsum + m * groups;
      __m512 acc = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(), ext = _mm512_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        __m512 dot0 = _mm512_setzero_ps(), dot1 = _mm512_setzero_ps();
        const int64_t j0 = g * gh;
        for (int64_t j = j0; j < j0 + gh; j += 16) {
          if (m == 0 && (j & 63) == 0) _mm_prefetch(reinterpret_cast<const char*>(wr + j) + kAhead, _MM_HINT_T0);
          __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + j)));
          dot0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, low)), _mm512_loadu_ps(xem + j), dot0);
          dot1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), _mm512_loadu_ps(xom + j), dot1);
        }
        const __m512 s = _mm512_set1_ps(sr[g]);
        acc = _mm512_fmadd_ps(dot0, s, acc);
        acc2 = _mm512_fmadd_ps(dot1, s, acc2);
      }
      for (int64_t g = 0; g < groups; g += 16) {
        __mmask16 mk = tail_mask(groups - g);
        ext = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, hr + g), _mm512_maskz_loadu_ps(mk, xs + g), ext);
      }
      y[m * N + n] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc, acc2), ext));
    }
  }
}

// ---- RMSNorm over the last dimension, fp32 --------------------------------------------------------------------

__attribute__((target("avx512f,avx512bw,avx512vl")))
void rms_rows(const float* x, const float* w, float* y, int64_t D, double eps, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * D;
    float* yr = y + r * D;
    __m512 a = _mm512_setzero_ps();
    for (int64_t k = 0; k < D; k += 16) {
      __m512 v = _mm512_maskz_loadu_ps(tail_mask(D - k), xr + k);
      a = _mm512_fmadd_ps(v, v, a);
    }
    const float inv = 1.f / std::sqrt(_mm512_reduce_add_ps(a) / static_cast<float>(D) + static_cast<float>(eps));
    const __m512 iv = _mm512_set1_ps(inv);
    for (int64_t k = 0; k < D; k += 16) {
      __mmask16 mk = tail_mask(D - k);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + k), iv);
      _mm512_mask_storeu_ps(yr + k, mk, _mm512_mul_ps(v, _mm512_maskz_loadu_ps(mk, w + k)));
    }
  }
}

// ---- the operators ---------------------------------------------------------------------------------------------

bool usable(const at::Tensor& x, int64_t K) {
  return has_avx512() && x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous()
         && x.size(1) == K && x.size(0) >= 1 && x.size(0) <= kMaxRows;
}

at::Tensor none_like(const at::Tensor& x) { return at::empty({0}, x.options()); }

// rows of output per task: enough bytes that a thread's share is worth starting it for
int64_t grain(int64_t bytes_per_row) { return std::max<int64_t>(4, (int64_t(1) << 17) / std::max<int64_t>(1, bytes_per_row)); }

// fp32 or int8 weights (N, K) times x (M, K), the threads splitting the rows
template <typename W>
void dense_run(const float* x, const W* w, const float* scale, float* y, int64_t M, int64_t K, int64_t N) {
  at::parallel_for(0, N, grain(int64_t(sizeof(W)) * K), [&](int64_t b, int64_t e) {
    dense_rows(x, w, scale, y, M, K, N, b, e);
  });
}

at::Tensor linear_f32(const at::Tensor& x, const at::Tensor& w) {
  if (!(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.device().is_cpu() && usable(x, w.size(1))))
    return none_like(x);
  const int64_t M = x.size(0), K = w.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  dense_run(x.data_ptr<float>(), w.data_ptr<float>(), nullptr, y.data_ptr<float>(), M, K, N);
  return y;
}

at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale) {
  if (!(w.dim() == 2 && w.scalar_type() == at::kChar && w.is_contiguous() && w.device().is_cpu()
        && scale.scalar_type() == at::kFloat && scale.is_contiguous() && scale.numel() == w.size(0)
        && usable(x, w.size(1))))
    return none_like(x);
  const int64_t M = x.size(0), K = w.size(1), N = w.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  dense_run(x.data_ptr<float>(), w.data_ptr<int8_t>(), scale.data_ptr<float>(), y.data_ptr<float>(), M, K, N);
  return y;
}

// The activations as the int4 kernel reads them: even columns, odd columns, sums per group (M * (K + K/G) floats).
void int4_prep(const float* x, float* buf, int64_t M, int64_t K, int64_t G) {
  const int64_t half = K / 2, groups = K / G;
  for (int64_t m = 0; m < M; ++m) {
    float* xe = buf + m * half;
    float* xo = buf + M * half + m * half;
    float* gs = buf + 2 * M * half + m * groups;
    const float* xm = x + m * K;
    for (int64_t j = 0; j < half; ++j) {
      xe[j] = xm[2 * j];
      xo[j] = xm[2 * j + 1];
    }
    for (int64_t g = 0; g < groups; ++g) {
      float t = 0.f;
      for (int64_t k = g * G; k < (g + 1) * G; ++k) t += xm[k];
      gs[g] = t;
    }
  }
}

void int4_run(const float* x, const uint8_t* w, const float* scale, const float* shift, float* y, int64_t M,
              int64_t K, int64_t N, int64_t G) {
  const int64_t half = K / 2, groups = K / G;
  std::vector<float> buf(M * (K + groups));
  int4_prep(x, buf.data(), M, K, G);
  const float* sp = buf.data();
  at::parallel_for(0, N, grain(half + 8 * groups), [&](int64_t b, int64_t e) {
    i4_rows(sp, sp + M * half, sp + 2 * M * half, w, scale, shift, y, M, K, N, G, b, e);
  });
}

// x (M, K) fp32; w (N, K/2) uint8; scale, shift (N, K/G) fp32
at::Tensor linear_int4(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scale, const at::Tensor& shift,
                       int64_t G) {
  const int64_t K = 2 * (w.dim() == 2 ? w.size(1) : 0), N = w.dim() == 2 ? w.size(0) : 0;
  if (!(w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() && w.device().is_cpu() && G >= 32
        && G % 32 == 0 && K % G == 0 && scale.scalar_type() == at::kFloat && shift.scalar_type() == at::kFloat
        && scale.is_contiguous() && shift.is_contiguous() && scale.numel() == N * (K / G)
        && shift.numel() == N * (K / G) && usable(x, K)))
    return none_like(x);
  const int64_t M = x.size(0);
  at::Tensor y = at::empty({M, N}, x.options());
  int4_run(x.data_ptr<float>(), w.data_ptr<uint8_t>(), scale.data_ptr<float>(), shift.data_ptr<float>(),
           y.data_ptr<float>(), M, K, N, G);
  return y;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, double eps) {
  const int64_t D = w.numel();
  if (!(has_avx512() && x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1
        && x.size(-1) == D && w.scalar_type() == at::kFloat && w.is_contiguous() && D > 0))
    return none_like(x);
  const int64_t R = x.numel() / D;
  at::Tensor y = at::empty(x.sizes(), x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, R, std::max<int64_t>(1, (int64_t(1) << 16) / D), [&](int64_t b, int64_t e) {
    rms_rows(xp, wp, yp, D, eps, b, e);
  });
  return y;
}


// ---- one decoder layer for one new token per row (the static decode step's fused path) ------------------------
// A pre-norm block as lmforge.model.blocks writes it: norm, q/k/v projections, rotary (rotate-half layout, the
// first `rot` channels of each head), the new keys and values written into the layer's cache at `pos`, attention
// over positions 0..pos (grouped-query heads share a key/value head), the output projection and the residual;
// then norm, MLP (gated or not) and the residual. Every projection is given as four tensors: the weight (fp32
// (N, K), int8 (N, K) with fp32 row scales, or lmforge's int4 (N, K/2) uint8 with fp32 group scales and shifts),
// the scale, the shift and the bias, an empty tensor standing for what a projection does not have. All of it in
// one call: on a small model the Python and dispatch between PyTorch's small kernels cost as much as the weights.

struct Proj {
  int kind = -1;  // 0 fp32, 1 int8, 2 int4
  const void* w = nullptr;
  const float* scale = nullptr;
  const float* shift = nullptr;
  const float* bias = nullptr;
  int64_t N = 0, K = 0, G = 0;
};

const float* opt_f32(const at::Tensor& t, int64_t n, const char* what) {
  if (t.numel() == 0) return nullptr;
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == n, what, ": expected ", n,
              " contiguous fp32 values");
  return t.data_ptr<float>();
}

Proj make_proj(const std::vector<at::Tensor>& p, size_t i, int64_t K) {
  Proj P;
  const at::Tensor& w = p[i];
  if (w.numel() == 0) return P;
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.device().is_cpu(), "projection ", i / 4, ": bad weight");
  P.N = w.size(0);
  P.K = K;
  P.w = w.data_ptr();
  if (w.scalar_type() == at::kFloat) {
    TORCH_CHECK(w.size(1) == K, "projection ", i / 4, ": expected ", K, " inputs");
    P.kind = 0;
  } else if (w.scalar_type() == at::kChar) {
    TORCH_CHECK(w.size(1) == K, "projection ", i / 4, ": expected ", K, " inputs");
    P.kind = 1;
    P.scale = opt_f32(p[i + 1], P.N, "int8 scales");
    TORCH_CHECK(P.scale != nullptr, "int8 projection without scales");
  } else if (w.scalar_type() == at::kByte) {
    TORCH_CHECK(2 * w.size(1) == K, "projection ", i / 4, ": expected ", K / 2, " bytes a row");
    const int64_t groups = p[i + 1].numel() / std::max<int64_t>(1, P.N);
    TORCH_CHECK(groups > 0 && K % groups == 0 && (K / groups) % 32 == 0, "int4 projection: bad group size");
    P.kind = 2;
    P.G = K / groups;
    P.scale = opt_f32(p[i + 1], P.N * groups, "int4 scales");
    P.shift = opt_f32(p[i + 2], P.N * groups, "int4 shifts");
    TORCH_CHECK(P.scale != nullptr && P.shift != nullptr, "int4 projection without scales and shifts");
  } else {
    TORCH_CHECK(false, "projection ", i / 4, ": weights must be fp32, int8 or uint8 (int4)");
  }
  P.bias = opt_f32(p[i + 3], P.N, "bias");
  return P;
}

// y (M, N) = x (M, K) W^T (+ bias)
void run_proj(const Proj& P, const float* x, float* y, int64_t M) {
  const int64_t N = P.N, K = P.K;
  if (P.kind == 0) {
    dense_run(x, static_cast<const float*>(P.w), nullptr, y, M, K, N);
  } else if (P.kind == 1) {
    dense_run(x, static_cast<const int8_t*>(P.w), P.scale, y, M, K, N);
  } else {
    int4_run(x, static_cast<const uint8_t*>(P.w), P.scale, P.shift, y, M, K, N, P.G);
  }
  if (P.bias)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] += P.bias[n];
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
void norm_rows(const float* x, float* y, int64_t M, int64_t C, const float* w, const float* b, float eps,
               bool layer) {
  for (int64_t m = 0; m < M; ++m) {
    if (!layer) {
      rms_rows(x + m * C, w, y + m * C, C, eps, 0, 1);
      continue;
    }
    const float* xr = x + m * C;
    float* yr = y + m * C;
    double mean = 0.0, var = 0.0;
    for (int64_t c = 0; c < C; ++c) mean += xr[c];
    mean /= C;
    for (int64_t c = 0; c < C; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    const float inv = 1.f / std::sqrt(static_cast<float>(var / C) + eps), mu = static_cast<float>(mean);
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] - mu) * inv * (w ? w[c] : 1.f) + (b ? b[c] : 0.f);
  }
}

inline float act_fn(float v, int64_t act) {
  switch (act) {
    case 0: return v / (1.f + std::exp(-v));                                    // silu
    case 1: return 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));       // gelu
    case 2: return 0.5f * v * (1.f + std::tanh(0.79788456080286535f * (v + 0.044715f * v * v * v)));  // tanh
    default: return v > 0.f ? v : 0.f;                                           // relu
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
inline float dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t k = 0; k < n; k += 16) {
    __mmask16 mk = tail_mask(n - k);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + k), _mm512_maskz_loadu_ps(mk, b + k), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
inline void axpy(float a, const float* x, float* y, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t k = 0; k < n; k += 16) {
    __mmask16 mk = tail_mask(n - k);
    _mm512_mask_storeu_ps(y + k, mk, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(mk, x + k), _mm512_maskz_loadu_ps(mk, y + k)));
  }
}

void rope_heads(float* v, int64_t heads, int64_t D, const float* cos, const float* sin, int64_t rot) {
  const int64_t h2 = rot / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* r = v + h * D;
    for (int64_t i = 0; i < h2; ++i) {
      const float a = r[i], b = r[i + h2];
      r[i] = a * cos[i] - b * sin[i];
      r[i + h2] = b * cos[i + h2] + a * sin[i + h2];
    }
  }
}

// cos/sin: (rot) for every row, or (rows, rot) a table per row (rows at different positions); mask: none, or (rows,
// >= pos + 1) uint8 with 0 at the cache columns a row must not attend (its padding)
at::Tensor decode_layer(const at::Tensor& x_in, const std::vector<at::Tensor>& p, const at::Tensor& kcache,
                        const at::Tensor& vcache, int64_t pos, const at::Tensor& cos_t, const at::Tensor& sin_t,
                        int64_t H, int64_t KV, double eps, bool layer_norm, bool gated, int64_t act, double scale,
                        const c10::optional<at::Tensor>& mask) {
  TORCH_CHECK(has_avx512(), "decode_layer needs AVX-512");
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat && x_in.is_contiguous() && x_in.device().is_cpu(),
              "x must be contiguous fp32 (rows, channels) on the CPU");
  TORCH_CHECK(p.size() == 32, "expected 32 tensors: 2 norms x (weight, bias), 7 projections x (weight, scale, shift, bias)");
  const int64_t M = x_in.size(0), C = x_in.size(1);
  TORCH_CHECK(kcache.dim() == 4 && kcache.is_contiguous() && vcache.is_contiguous() && kcache.sizes() == vcache.sizes()
              && kcache.scalar_type() == at::kFloat && vcache.scalar_type() == at::kFloat && kcache.size(0) == M
              && kcache.size(1) == KV, "caches must be contiguous fp32 (rows, kv heads, positions, head dim)");
  const int64_t S = kcache.size(2), D = kcache.size(3);
  TORCH_CHECK(pos >= 0 && pos < S, "position ", pos, " outside the cache of ", S);
  TORCH_CHECK(H % KV == 0, "heads must be a multiple of key/value heads");
  const bool per_row = cos_t.dim() == 2;
  const int64_t rot = per_row ? cos_t.size(1) : cos_t.numel();
  TORCH_CHECK(rot % 2 == 0 && rot <= D && sin_t.sizes() == cos_t.sizes() && (!per_row || cos_t.size(0) == M),
              "rotary tables must be (head dim or less, even) or (rows, that)");
  const float* cosp = rot ? opt_f32(cos_t, per_row ? M * rot : rot, "cos") : nullptr;
  const float* sinp = rot ? opt_f32(sin_t, per_row ? M * rot : rot, "sin") : nullptr;
  const uint8_t* maskp = nullptr;
  int64_t mstride = 0;
  if (mask.has_value() && mask->numel()) {
    TORCH_CHECK(mask->dim() == 2 && mask->size(0) == M && mask->size(1) >= pos + 1 && mask->scalar_type() == at::kByte
                && mask->stride(1) == 1 && mask->device().is_cpu(), "mask must be uint8 (rows, >= pos + 1)");
    maskp = mask->data_ptr<uint8_t>();
    mstride = mask->stride(0);
  }
  const float* n1w = opt_f32(p[0], C, "norm weight");
  const float* n1b = opt_f32(p[1], C, "norm bias");
  const float* n2w = opt_f32(p[2], C, "norm weight");
  const float* n2b = opt_f32(p[3], C, "norm bias");
  TORCH_CHECK(layer_norm || (n1w && n2w), "RMSNorm needs its weights");
  const Proj q = make_proj(p, 4, C), k = make_proj(p, 8, C), v = make_proj(p, 12, C), o = make_proj(p, 16, H * D);
  const Proj up = make_proj(p, 24, C);
  const Proj gate = gated ? make_proj(p, 20, C) : Proj();
  TORCH_CHECK(q.N == H * D && k.N == KV * D && v.N == KV * D && o.N == C && up.kind >= 0
              && (!gated || (gate.kind >= 0 && gate.N == up.N)), "projection shapes do not match the heads");
  const int64_t F = up.N;
  const Proj down = make_proj(p, 28, F);
  TORCH_CHECK(down.N == C, "down projection shape");

  at::Tensor x = x_in.clone();
  float* xp = x.data_ptr<float>();
  std::vector<float> h(M * std::max(C, H * D)), qb(M * H * D), kb(M * KV * D), vb(M * KV * D), att(M * H * D);
  std::vector<float> f1(M * F), f2(gated ? M * F : 0), out(M * C);
  norm_rows(xp, h.data(), M, C, n1w, n1b, static_cast<float>(eps), layer_norm);
  run_proj(q, h.data(), qb.data(), M);
  run_proj(k, h.data(), kb.data(), M);
  run_proj(v, h.data(), vb.data(), M);
  float* kc = kcache.data_ptr<float>();
  float* vc = vcache.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    if (rot) {
      const float* c = per_row ? cosp + m * rot : cosp;
      const float* sn = per_row ? sinp + m * rot : sinp;
      rope_heads(qb.data() + m * H * D, H, D, c, sn, rot);
      rope_heads(kb.data() + m * KV * D, KV, D, c, sn, rot);
    }
    for (int64_t j = 0; j < KV; ++j) {
      std::memcpy(kc + ((m * KV + j) * S + pos) * D, kb.data() + (m * KV + j) * D, D * sizeof(float));
      std::memcpy(vc + ((m * KV + j) * S + pos) * D, vb.data() + (m * KV + j) * D, D * sizeof(float));
    }
  }
  const int64_t L = pos + 1, rep = H / KV;
  const int64_t work = M * H * L * D;
  at::parallel_for(0, M * H, work < (int64_t(1) << 16) ? M * H : 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> sc(L);
    for (int64_t bh = b0; bh < b1; ++bh) {
      const int64_t m = bh / H, hh = bh % H, j = hh / rep;
      const float* qv = qb.data() + (m * H + hh) * D;
      const float* kr = kc + (m * KV + j) * S * D;
      const float* vr = vc + (m * KV + j) * S * D;
      const uint8_t* keep = maskp ? maskp + m * mstride : nullptr;
      float mx = -INFINITY;
      for (int64_t t = 0; t < L; ++t) {
        sc[t] = keep && !keep[t] ? -INFINITY : dot(qv, kr + t * D, D) * static_cast<float>(scale);
        mx = std::max(mx, sc[t]);
      }
      float total = 0.f;
      for (int64_t t = 0; t < L; ++t) {
        sc[t] = std::exp(sc[t] - mx);
        total += sc[t];
      }
      float* o_ = att.data() + (m * H + hh) * D;
      std::fill(o_, o_ + D, 0.f);
      for (int64_t t = 0; t < L; ++t) axpy(sc[t] / total, vr + t * D, o_, D);
    }
  });
  run_proj(o, att.data(), out.data(), M);
  for (int64_t i = 0; i < M * C; ++i) xp[i] += out[i];
  norm_rows(xp, h.data(), M, C, n2w, n2b, static_cast<float>(eps), layer_norm);
  run_proj(up, h.data(), f1.data(), M);
  if (gated) {
    run_proj(gate, h.data(), f2.data(), M);
    for (int64_t i = 0; i < M * F; ++i) f1[i] *= act_fn(f2[i], act);
  } else {
    for (int64_t i = 0; i < M * F; ++i) f1[i] = act_fn(f1[i], act);
  }
  run_proj(down, f1.data(), out.data(), M);
  for (int64_t i = 0; i < M * C; ++i) xp[i] += out[i];
  return x;
}


// ---- int4 -> bf16, for prefill: the dequantized weight that oneDNN's bf16 matrix-matrix product takes ---------
// Each 16 bytes of a row give 32 weights: the low nibbles the even columns, the high ones the odd columns, so the
// bf16 of an even column and the next odd one share a 32-bit word (little-endian: the even one in the low half).

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512i to_bf16_bits(__m512 v) {
  // round to nearest even (as PyTorch's fp32 -> bf16 conversion; finite values)
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
void i4_dequant_rows(const uint8_t* w, const float* scale, const float* shift, uint16_t* out, int64_t K, int64_t G,
                     int64_t n0, int64_t n1) {
  const int64_t half = K / 2, groups = K / G, gh = G / 2;
  const __m512i low = _mm512_set1_epi32(15);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* wr = w + n * half;
    uint16_t* orow = out + n * K;
    for (int64_t g = 0; g < groups; ++g) {
      const __m512 s = _mm512_set1_ps(scale[n * groups + g]), h = _mm512_set1_ps(shift[n * groups + g]);
      for (int64_t j = g * gh; j < (g + 1) * gh; j += 16) {
        __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + j)));
        __m512 lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, low)), s, h);
        __m512 hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), s, h);
        __m512i words = _mm512_or_si512(to_bf16_bits(lo), _mm512_slli_epi32(to_bf16_bits(hi), 16));
        _mm512_storeu_si512(reinterpret_cast<void*>(orow + 2 * j), words);
      }
    }
  }
}

// w (N, K/2) uint8, scale/shift (N, K/G) fp32 -> (N, K) bf16
at::Tensor dequant_int4(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& shift, int64_t G) {
  const int64_t K = 2 * (w.dim() == 2 ? w.size(1) : 0), N = w.dim() == 2 ? w.size(0) : 0;
  if (!(has_avx512() && w.dim() == 2 && w.scalar_type() == at::kByte && w.is_contiguous() && w.device().is_cpu()
        && G >= 32 && G % 32 == 0 && K % G == 0 && scale.scalar_type() == at::kFloat && shift.scalar_type() == at::kFloat
        && scale.is_contiguous() && shift.is_contiguous() && scale.numel() == N * (K / G)
        && shift.numel() == N * (K / G)))
    return at::empty({0}, w.options().dtype(at::kBFloat16));
  at::Tensor out = at::empty({N, K}, w.options().dtype(at::kBFloat16));
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* hp = shift.data_ptr<float>();
  uint16_t* op = reinterpret_cast<uint16_t*>(out.data_ptr());
  at::parallel_for(0, N, grain(K), [&](int64_t b, int64_t e) { i4_dequant_rows(wp, sp, hp, op, K, G, b, e); });
  return out;
}


// ---- weights on transparent huge pages ------------------------------------------------------------------------
// A copy of `t` in memory aligned to 2 MB and advised MADV_HUGEPAGE before it is touched, so the kernel backs it with
// huge pages (in "madvise" mode too): a decoding step then streams each weight with one TLB entry per 2 MB instead
// of one per 4 KB. An empty tensor where that is not possible.
at::Tensor hugepage_copy(const at::Tensor& t) {
  if (!t.device().is_cpu() || !t.is_contiguous() || t.nbytes() == 0) return at::empty({0}, t.options());
  const size_t align = size_t(2) << 20;
  const size_t size = (t.nbytes() + align - 1) / align * align;
  void* p = nullptr;
  if (posix_memalign(&p, align, size) != 0 || p == nullptr) return at::empty({0}, t.options());
  madvise(p, size, MADV_HUGEPAGE);  // (advice only: where the kernel has THP off, the copy is an ordinary one)
  std::memcpy(p, t.data_ptr(), t.nbytes());
  return at::from_blob(p, t.sizes(), t.strides(), [](void* q) { std::free(q); }, t.options());
}


// ---- causal self-attention for training (forward and backward) -------------------------------------------------
// For the short sequences of small-model training (T <= 256), where PyTorch's CPU flash-attention kernel spends
// most of its time outside the arithmetic (12 x 4 heads of 64 x 32: 1.1 ms forward + backward per layer against
// 0.66 ms here, benchmarks/attention.py). Per (batch, key/value head) unit, for each of its query heads: the head's
// keys (and, backward, values) transposed once into a (D, T) buffer, the scores of four queries at a time against
// 64 keys (16 accumulators), an exact softmax (exp by range reduction and a degree-6 polynomial, ~2e-7 relative),
// the output as a weighted sum of value rows. The backward recomputes the probabilities from the saved log-sum-exp
// (as flash attention) and accumulates dK and dV four queries at a time. q (B, H, T, D), k and v (B, K, T, D) with
// H a multiple of K (grouped queries) and a contiguous last dimension, fp32; outputs laid out as (B, T, heads, D),
// so the caller's transpose back to (B, T, H * D) is free. An empty list where it does not apply.

// exp(x) for 16 lanes (x <= ~88): 2^n * p(r), r = x - n ln2, |r| <= ln2/2; relative error ~2e-7
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// s[r * ss + j] = sum_d q_r[d] * t[d * T + j] for j < n and up to four query rows r (nr): each load of t serves
// every row; 64 keys at a time in 16 accumulators (fixed loop bounds, so they stay in registers; missing rows
// repeat row 0 and are not stored)
template <int NC>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void scores_64(const float* const* q, int64_t nr, const float* tj, float* s, int64_t ss, int64_t left,
                          int64_t D, int64_t T) {
  __mmask16 mk[NC];
  for (int c = 0; c < NC; ++c) mk[c] = left > 16 * c ? tail_mask(left - 16 * c) : 0;
  const float* q0 = q[0];
  const float* q1 = nr > 1 ? q[1] : q0;
  const float* q2 = nr > 2 ? q[2] : q0;
  const float* q3 = nr > 3 ? q[3] : q0;
  __m512 a0[NC], a1[NC], a2[NC], a3[NC];
  for (int c = 0; c < NC; ++c) a0[c] = a1[c] = a2[c] = a3[c] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d, tj += T) {
    const __m512 x0 = _mm512_set1_ps(q0[d]), x1 = _mm512_set1_ps(q1[d]), x2 = _mm512_set1_ps(q2[d]),
                 x3 = _mm512_set1_ps(q3[d]);
    for (int c = 0; c < NC; ++c) {
      const __m512 tv = _mm512_maskz_loadu_ps(mk[c], tj + 16 * c);
      a0[c] = _mm512_fmadd_ps(x0, tv, a0[c]);
      a1[c] = _mm512_fmadd_ps(x1, tv, a1[c]);
      a2[c] = _mm512_fmadd_ps(x2, tv, a2[c]);
      a3[c] = _mm512_fmadd_ps(x3, tv, a3[c]);
    }
  }
  for (int c = 0; c < NC; ++c) {
    _mm512_mask_storeu_ps(s + 16 * c, mk[c], a0[c]);
    if (nr > 1) _mm512_mask_storeu_ps(s + ss + 16 * c, mk[c], a1[c]);
    if (nr > 2) _mm512_mask_storeu_ps(s + 2 * ss + 16 * c, mk[c], a2[c]);
    if (nr > 3) _mm512_mask_storeu_ps(s + 3 * ss + 16 * c, mk[c], a3[c]);
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void block_scores(const float* const* q, int64_t nr, const float* t, float* s, int64_t ss, int64_t n,
                             int64_t D, int64_t T) {
  for (int64_t j = 0; j < n; j += 64) {
    const int64_t left = n - j;
    if (left > 32) scores_64<4>(q, nr, t + j, s + j, ss, left, D, T);
    else if (left > 16) scores_64<2>(q, nr, t + j, s + j, ss, left, D, T);
    else scores_64<1>(q, nr, t + j, s + j, ss, left, D, T);
  }
}

// rows[j][d] += sum_r p[r * ps + j] * x_r[d] for j < n and up to four rows r (nr): each row of `rows` read and
// written once for all of them
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void block_spread(const float* p, int64_t ps, const float* const* x, int64_t nr, float* rows, int64_t rs,
                             int64_t n, int64_t D) {
  for (int64_t d = 0; d < D; d += 16) {
    const __mmask16 mk = tail_mask(D - d);
    __m512 xv[4];
    for (int r = 0; r < nr; ++r) xv[r] = _mm512_maskz_loadu_ps(mk, x[r] + d);
    float* row = rows + d;
    for (int64_t j = 0; j < n; ++j, row += rs) {
      __m512 acc = _mm512_maskz_loadu_ps(mk, row);
      for (int r = 0; r < nr; ++r) acc = _mm512_fmadd_ps(_mm512_set1_ps(p[r * ps + j]), xv[r], acc);
      _mm512_mask_storeu_ps(row, mk, acc);
    }
  }
}

// y[d] += sum_j p[j] * rows[j][d]  for j < n; rows at stride `rs`; 32 columns and two keys at a time (four chains)
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void mix_rows(const float* p, const float* rows, int64_t rs, float* y, int64_t n, int64_t D) {
  for (int64_t d = 0; d < D; d += 32) {
    const __mmask16 m0 = tail_mask(D - d), m1 = D - d > 16 ? tail_mask(D - d - 16) : 0;
    __m512 a0 = _mm512_maskz_loadu_ps(m0, y + d), a1 = _mm512_maskz_loadu_ps(m1, y + d + 16);
    __m512 b0 = _mm512_setzero_ps(), b1 = b0;
    const float* r = rows + d;
    int64_t j = 0;
    for (; j + 1 < n; j += 2, r += 2 * rs) {
      const __m512 p0 = _mm512_set1_ps(p[j]), p1 = _mm512_set1_ps(p[j + 1]);
      a0 = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(m0, r), a0);
      b0 = _mm512_fmadd_ps(p1, _mm512_maskz_loadu_ps(m0, r + rs), b0);
      if (m1) {
        a1 = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(m1, r + 16), a1);
        b1 = _mm512_fmadd_ps(p1, _mm512_maskz_loadu_ps(m1, r + rs + 16), b1);
      }
    }
    if (j < n) {
      const __m512 p0 = _mm512_set1_ps(p[j]);
      a0 = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(m0, r), a0);
      if (m1) a1 = _mm512_fmadd_ps(p0, _mm512_maskz_loadu_ps(m1, r + 16), a1);
    }
    _mm512_mask_storeu_ps(y + d, m0, _mm512_add_ps(a0, b0));
    if (m1) _mm512_mask_storeu_ps(y + d + 16, m1, _mm512_add_ps(a1, b1));
  }
}

struct View {  // a (B, H, T, D) tensor with a contiguous last dimension
  float* p; int64_t sb, sh, st;
  View(const at::Tensor& t) : p(t.data_ptr<float>()), sb(t.stride(0)), sh(t.stride(1)), st(t.stride(2)) {}
  float* row(int64_t b, int64_t h, int64_t i) const { return p + b * sb + h * sh + i * st; }
};

__attribute__((target("avx512f,avx512bw,avx512vl"))) void transpose_head(const View& x, int64_t b, int64_t h, int64_t T, int64_t D, float* out) {
  for (int64_t i = 0; i < T; ++i) {
    const float* r = x.row(b, h, i);
    for (int64_t d = 0; d < D; ++d) out[d * T + i] = r[d];
  }
}

bool attn_fits(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return q.device().is_cpu() && q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat &&
         q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(2) == k.size(2) && k.sizes() == v.sizes() &&
         q.size(0) == k.size(0) && q.size(3) == k.size(3) && q.size(1) % k.size(1) == 0 && q.stride(3) == 1 &&
         k.stride(3) == 1 && v.stride(3) == 1;
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void fwd_unit(const View& Q, const View& Kv, const View& V, const View& O, float* L, int64_t b, int64_t kh,
                  int64_t G, int64_t H, int64_t T, int64_t D, float sc, float* kt, float* s) {
  transpose_head(Kv, b, kh, T, D, kt);
  const float* vrows = V.row(b, kh, 0);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
    for (int64_t i0 = 0; i0 < T; i0 += 4) {
      const int64_t nr = std::min<int64_t>(4, T - i0), n = i0 + nr;  // keys 0..n-1 cover every row of the block
      const float* qs[4];
      for (int64_t r = 0; r < nr; ++r) qs[r] = Q.row(b, h, i0 + r);
      block_scores(qs, nr, kt, s, T + 64, n, D, T);
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = i0 + r, m_ = i + 1;  // row i sees keys 0..i
        float* sr = s + r * (T + 64);
        __m512 mx = _mm512_set1_ps(ninf);
        for (int64_t j = 0; j < m_; j += 16) mx = _mm512_mask_max_ps(mx, tail_mask(m_ - j), mx, _mm512_loadu_ps(sr + j));
        const float m = _mm512_reduce_max_ps(mx) * sc;
        __m512 sum = _mm512_setzero_ps();
        for (int64_t j = 0; j < m_; j += 16) {
          const __mmask16 mk = tail_mask(m_ - j);
          __m512 e = _mm512_maskz_mov_ps(mk, exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mk, sr + j), _mm512_set1_ps(sc),
                                                                   _mm512_set1_ps(m))));
          _mm512_mask_storeu_ps(sr + j, mk, e);
          sum = _mm512_add_ps(sum, e);
        }
        const float l = _mm512_reduce_add_ps(sum);
        float* y = O.row(b, h, i);
        for (int64_t d = 0; d < D; ++d) y[d] = 0.0f;
        mix_rows(sr, vrows, V.st, y, m_, D);
        const float inv = 1.0f / l;
        for (int64_t d = 0; d < D; ++d) y[d] *= inv;
        L[(b * H + h) * T + i] = m + std::log(l);
      }
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void bwd_unit(const View& Q, const View& Kv, const View& V, const View& O, const View& Gr, const View& DQ,
                  const View& DK, const View& DV, const float* L, int64_t b, int64_t kh, int64_t G, int64_t H, int64_t T,
                  int64_t D, float sc, float* kt, float* vt, float* p, float* ds) {
  transpose_head(Kv, b, kh, T, D, kt);
  transpose_head(V, b, kh, T, D, vt);
  const float* krows = Kv.row(b, kh, 0);
  float* dkrows = DK.row(b, kh, 0);
  float* dvrows = DV.row(b, kh, 0);
  const int64_t ps = T + 64;
  for (int64_t h = kh * G; h < (kh + 1) * G; ++h) {
    for (int64_t i0 = 0; i0 < T; i0 += 4) {
      const int64_t nr = std::min<int64_t>(4, T - i0), n = i0 + nr;
      const float *qs[4], *gs[4];
      for (int64_t r = 0; r < nr; ++r) qs[r] = Q.row(b, h, i0 + r), gs[r] = Gr.row(b, h, i0 + r);
      block_scores(qs, nr, kt, p, ps, n, D, T);
      block_scores(gs, nr, vt, ds, ps, n, D, T);
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = i0 + r;
        const float* oi = O.row(b, h, i);
        float delta = 0.0f;
        for (int64_t d = 0; d < D; ++d) delta += gs[r][d] * oi[d];
        const float li = L[(b * H + h) * T + i];
        float *pr = p + r * ps, *dr = ds + r * ps;
        for (int64_t j = 0; j < n; j += 16) {
          // keys after row i (the block's last rows see a few more) get probability 0
          const __mmask16 mk = tail_mask(n - j) & (j > i ? (__mmask16)0 : tail_mask(i + 1 - j));
          const __m512 e = _mm512_maskz_mov_ps(mk, exp16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mk, pr + j), _mm512_set1_ps(sc),
                                                                        _mm512_set1_ps(li))));
          const __m512 dp = _mm512_maskz_loadu_ps(mk, dr + j);
          _mm512_mask_storeu_ps(pr + j, tail_mask(n - j), e);
          _mm512_mask_storeu_ps(dr + j, tail_mask(n - j),
                                _mm512_mul_ps(_mm512_mul_ps(e, _mm512_sub_ps(dp, _mm512_set1_ps(delta))), _mm512_set1_ps(sc)));
        }
        float* dqi = DQ.row(b, h, i);
        for (int64_t d = 0; d < D; ++d) dqi[d] = 0.0f;
        mix_rows(dr, krows, Kv.st, dqi, i + 1, D);
      }
      block_spread(ds, ps, qs, nr, dkrows, DK.st, n, D);
      block_spread(p, ps, gs, nr, dvrows, DV.st, n, D);
    }
  }
}

// causal attention: o (B, H, T, D) laid out as (B, T, H, D), lse (B, H, T)
std::vector<at::Tensor> causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  if (!has_avx512() || !attn_fits(q, k, v)) return {};
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), K = k.size(1), G = H / K;
  at::Tensor o = at::empty({B, T, H, D}, q.options()).transpose(1, 2);
  at::Tensor lse = at::empty({B, H, T}, q.options());
  View Q(q), Kv(k), V(v), O(o);
  float* L = lse.data_ptr<float>();
  const float sc = float(scale);
  at::parallel_for(0, B * K, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> kt(D * T), sbuf(4 * (T + 64));
    for (int64_t u = u0; u < u1; ++u) fwd_unit(Q, Kv, V, O, L, u / K, u % K, G, H, T, D, sc, kt.data(), sbuf.data());
  });
  return {o, lse};
}

// gradients of causal_attention: dq (B, H, T, D), dk and dv (B, K, T, D), each laid out as (B, T, heads, D)
std::vector<at::Tensor> causal_attention_backward(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& o, const at::Tensor& lse, double scale) {
  if (!has_avx512() || !attn_fits(q, k, v) || g.sizes() != q.sizes() || o.sizes() != q.sizes() || g.stride(3) != 1 || o.stride(3) != 1 ||
      g.scalar_type() != at::kFloat || o.scalar_type() != at::kFloat || !lse.is_contiguous()) return {};
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), K = k.size(1), G = H / K;
  at::Tensor dq = at::empty({B, T, H, D}, q.options()).transpose(1, 2);
  at::Tensor dk = at::zeros({B, T, K, D}, q.options()).transpose(1, 2);
  at::Tensor dv = at::zeros({B, T, K, D}, q.options()).transpose(1, 2);
  View Q(q), Kv(k), V(v), O(o), Gr(g), DQ(dq), DK(dk), DV(dv);
  const float* L = lse.data_ptr<float>();
  const float sc = float(scale);
  at::parallel_for(0, B * K, 1, [&](int64_t u0, int64_t u1) {
    std::vector<float> kt(D * T), vt(D * T), p(4 * (T + 64)), ds(4 * (T + 64));
    for (int64_t u = u0; u < u1; ++u)
      bwd_unit(Q, Kv, V, O, Gr, DQ, DK, DV, L, u / K, u % K, G, H, T, D, sc, kt.data(), vt.data(), p.data(), ds.data());
  });
  return {dq, dk, dv};
}
}  // namespace

TORCH_LIBRARY(lmforge_kernels, m) {
  m.def("linear_f32(Tensor x, Tensor w) -> Tensor", linear_f32);
  m.def("linear_int8(Tensor x, Tensor w, Tensor scale) -> Tensor", linear_int8);
  m.def("linear_int4(Tensor x, Tensor w, Tensor scale, Tensor shift, int group) -> Tensor", linear_int4);
  m.def("rms_norm(Tensor x, Tensor w, float eps) -> Tensor", rms_norm);
  m.def("avx512() -> bool", has_avx512);
  m.def("hugepage_copy(Tensor t) -> Tensor", hugepage_copy);
  m.def("dequant_int4(Tensor w, Tensor scale, Tensor shift, int group) -> Tensor", dequant_int4);
  m.def("decode_layer(Tensor x, Tensor[] p, Tensor(a!) kcache, Tensor(b!) vcache, int pos, Tensor cos, Tensor sin, "
        "int n_head, int n_kv_head, float eps, bool layer_norm, bool gated, int act, float scale, "
        "Tensor? mask=None) -> Tensor",
        decode_layer);
  m.def("causal_attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor[]", causal_attention);
  m.def("causal_attention_backward(Tensor g, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale) -> Tensor[]",
        causal_attention_backward);
}
