"""lmforge's CPU decode kernels (lmforge.model.kernels): each against PyTorch in float64, the fused decoder layer
against the model's own forward (greedy tokens and logits), fp32, int8 and int4, and the fallback when disabled."""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmforge import build_model
from lmforge.compress import quantize
from lmforge.generate import generate
from lmforge.generate import static as S
from lmforge.model import kernels
from lmforge.model.fast import fast_inference, linear
from lmforge.model.quant import Int4Linear, Int8Linear, quantize_rtn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _generate_models import lmforge_decoder  # noqa: E402



def _buildable() -> bool:
    """An x86-64 CPU with AVX-512 and a C++ compiler: where the kernels must build (else tests fail, not skip)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return (platform.machine() in ("x86_64", "AMD64") and all(f in flags for f in ("avx512f", "avx512bw", "avx512vl"))
            and shutil.which("c++") is not None and kernels.enabled())


pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not _buildable(), reason="lmforge's kernels need an x86-64 CPU with AVX-512 and a "
                                 "C++ compiler")]


def test_kernels_are_built_where_they_can_be():
    assert kernels.ops() is not None  # (a failed build prints its reason on stderr)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("rows", [1, 3, kernels.MAX_ROWS])
@pytest.mark.parametrize("n,k", [(1, 64), (7, 33), (130, 576), (37, 1000)])
def test_fp32_matrix_vector_equals_float64(rows, n, k):
    g = torch.Generator().manual_seed(n * k + rows)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g)
    y = kernels.linear_f32(x, w)
    assert y is not None and y.shape == (rows, n)
    assert rel(y, x.double() @ w.double().T) < 1e-5
    bias = torch.randn(n, generator=g)
    with fast_inference():  # the layer path: bias added, leading dimensions kept
        z = linear(x[:, None], w, bias)
    assert z.shape == (rows, 1, n) and rel(z[:, 0], x.double() @ w.double().T + bias.double()) < 1e-5


def test_kernels_decline_what_they_do_not_take():
    x, w = torch.randn(kernels.MAX_ROWS + 1, 64), torch.randn(8, 64)
    assert kernels.linear_f32(x, w) is None  # too many rows: matrix-matrix belongs to PyTorch
    assert kernels.linear_f32(x[:2].bfloat16(), w.bfloat16()) is None
    assert kernels.linear_f32(x[:2].requires_grad_(), w) is None
    assert kernels.linear_f32(x[:2], torch.randn(8, 63)) is None  # mismatched shapes: declined, not a crash
    assert kernels.linear_f32(x[:2], torch.randn(64, 8).T) is None  # a transposed view: PyTorch's kernel
    with kernels.disabled():
        assert kernels.ops() is None and kernels.linear_f32(x[:2], w) is None
    assert kernels.ops() is not None


@pytest.mark.parametrize("kind,group", [("int8", None), ("int4", 32), ("int4", 64), ("int4", 128)])
@pytest.mark.parametrize("rows", [1, 5])
def test_quantized_matrix_vector_equals_the_dequantized_weight(kind, group, rows):
    g = torch.Generator().manual_seed(rows)
    layer = torch.nn.Linear(256, 96, bias=True)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(96, 256, generator=g))
    q = quantize_rtn(layer, kind, group or 32)
    assert isinstance(q, Int8Linear if kind == "int8" else Int4Linear)
    x = torch.randn(rows, 256, generator=g)
    ref = x.double() @ q.dequantize(torch.float64).T + q.bias.double()
    w, s, h = q.kernel_tensors()
    own = kernels.linear_int8(x, w, s) if kind == "int8" else kernels.linear_int4(x, w, s, h, group)
    assert own is not None
    assert rel(own + q.bias, ref) < 1e-5  # fp32 activations: exact up to float rounding
    with torch.inference_mode():
        assert rel(q(x), ref) < 1e-5  # the layer takes the kernel at decoding sizes


def test_rms_norm_equals_pytorch():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 5, 200, generator=g), torch.randn(200, generator=g)
    y = kernels.rms_norm(x, w, 1e-5)
    assert y is not None and y.shape == x.shape
    assert rel(y, F.rms_norm(x.double(), (200,), w.double(), 1e-5)) < 1e-6


def _reference(model, ids, max_new_tokens=24, **options):
    """The model's own forward, layer by layer: with PyTorch's kernels for an fp32 model; for a quantized one with
    lmforge's matrix-vector kernels but not the fused layer (PyTorch's int8/int4 kernels round activations to bf16,
    lmforge's do not: their tokens may differ at near ties, which is not what this compares)."""
    quantized = model.config.quant is not None
    real = S.fused_ok
    try:
        if quantized:
            S.fused_ok = lambda model, batch: False
        with kernels.disabled() if not quantized else contextlib.nullcontext():
            return generate(model, ids, max_new_tokens=max_new_tokens, ignore_eos=True, **options)
    finally:
        S.fused_ok = real


@pytest.mark.parametrize("kind", ["gpt", "llama"])
@pytest.mark.parametrize("method", ["fp32", "int8", "int4"])
def test_fused_decode_gives_the_tokens_of_the_regular_path(kind, method):
    """GPT-2 shape (LayerNorm, biases, learned positions, tanh GELU) and Llama shape (RMSNorm, rotary, GQA,
    SwiGLU), fp32 and quantized: the fused layer's greedy and sampled tokens (batch 1 and 3, beams) are those of the
    model's forward."""
    model = lmforge_decoder(kind)
    if kind == "llama" and method == "int4":  # (its MLP's 176 inputs are no multiple of the int4 group)
        torch.manual_seed(0)
        model = build_model(model.config.replace(d_ff=192)).eval()
    if method != "fp32":
        model = quantize(copy.deepcopy(model), method=method, group_size=32, progress=False)
    assert S.fused_ok(model, 1) and S.fused_ok(model, kernels.MAX_ROWS) and not S.fused_ok(model, kernels.MAX_ROWS + 1)
    for batch in (1, 3):
        ids = torch.randint(3, 300, (batch, 6), generator=torch.Generator().manual_seed(batch))
        assert torch.equal(generate(model, ids, max_new_tokens=24, ignore_eos=True), _reference(model, ids))
    # beams and several samples reorder and expand the fused step's cache
    ids = torch.randint(3, 300, (1, 5), generator=torch.Generator().manual_seed(7))
    for options in (dict(num_beams=3, num_return_sequences=2), dict(do_sample=True, seed=3, num_return_sequences=3)):
        out = generate(model, ids, max_new_tokens=12, ignore_eos=True, **options)
        assert torch.equal(out, _reference(model, ids, 12, **options)), options


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_padded_batches_decode_through_the_fused_layer_with_the_same_tokens(kind):
    """Prompts of different lengths (left-padded): the engine's steps go through fused_logits with a position per row
    and the padding masked, and give the tokens of the model's forward (greedy, beams, samples)."""
    from lmforge.generate.engine import Runner

    model = lmforge_decoder(kind)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (9, 4, 6)]
    runner = Runner(model, prompts, 4)
    with torch.inference_mode():
        runner.start()
    assert runner.fused is not None and runner.static is None
    for options in (dict(), dict(num_beams=3), dict(do_sample=True, seed=3, num_return_sequences=2)):
        got = generate(model, prompts, max_new_tokens=16, ignore_eos=True, return_dict=True, **options)
        with kernels.disabled():
            want = generate(model, prompts, max_new_tokens=16, ignore_eos=True, return_dict=True, **options)
        flat = lambda rs: [r.token_ids for g in rs for r in (g if isinstance(g, list) else [g])]  # noqa: E731
        assert flat(got) == flat(want), options


def test_fused_step_logits_equal_the_full_forward():
    model = lmforge_decoder("llama")
    seq = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    dec = S.StaticDecoder.get(model, 2, 20)
    assert dec._fused is not None
    with torch.inference_mode():
        logits = [dec.prefill(seq[:, :6])] + [dec.step(seq[:, t]) for t in range(6, 19)]
        full = model(seq[:, :-1])[:, 5:].float()
    torch.testing.assert_close(torch.stack(logits, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_fused_step_with_a_position_per_row_and_padding_equals_the_forward(kind):
    """The server's batch (rows of different lengths, their padding masked, each at its own position): fused_logits
    with a key mask and per-row positions gives the model's forward's logits; without the mask it does not."""
    from lmforge.model.cache import KVCache

    model = lmforge_decoder(kind)
    B, P = 3, 7
    ids = torch.randint(5, 300, (B, P), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, P, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :5] = 0
    tok = torch.randint(5, 300, (B, 1), generator=torch.Generator().manual_seed(4))
    full = torch.cat([mask, torch.ones(B, 1, dtype=torch.long)], 1)
    layers = [S.layer_args(model, b) for b in model.decoder.layers]
    with torch.inference_mode(), fast_inference():
        cache = KVCache.for_model(model, B, P + 1)
        model.decode(ids, decoder_attention_mask=mask, cache=cache)
        keys, values = [k.clone() for k in cache.keys], [v.clone() for v in cache.values]
        want = model.last_logits(model.decode(tok, decoder_attention_mask=full, cache=cache))
        got = S.fused_logits(model, layers, tok, full.sum(1) - 1, keys, values, P, full.to(torch.uint8))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(keys[0][:, :, P], cache.keys[0][:, :, P], rtol=1e-5, atol=1e-5)
        unmasked = S.fused_logits(model, layers, tok, full.sum(1) - 1, [k.clone() for k in keys],
                                  [v.clone() for v in values], P, None)
    assert float((unmasked[1:] - want[1:]).abs().max()) > 1e-3  # the padded rows need their mask


def test_without_the_kernels_everything_still_decodes(tmp_path):
    """LMFORGE_KERNELS=0: PyTorch's kernels only, in a fresh process (nothing built or loaded)."""
    code = ("import torch, lmforge; from lmforge.model import kernels; "
            "from lmforge.generate.static import fused_ok; "
            "m = lmforge.build_model(lmforge.ModelConfig.from_name('llama-nano', vocab_size=64, context_length=32)); "
            "assert kernels.ops() is None and not fused_ok(m, 1); "
            "print(lmforge.generate(m.eval(), torch.tensor([[1, 2, 3]]), max_new_tokens=4).shape)")
    env = dict(os.environ, LMFORGE_KERNELS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "torch.Size([1, 7])"


@pytest.mark.parametrize("group", [32, 128])
def test_int4_dequantized_to_bf16_by_the_kernel_equals_pytorch(group):
    """Prefill's path for int4: the kernel's bf16 weight is PyTorch's fp32 dequantization rounded to bf16, bit for bit;
    the layer at prefill sizes goes through it."""
    layer = torch.nn.Linear(256, 80, bias=False)
    q = quantize_rtn(layer, "int4", group)
    fp32 = q.dequantize(torch.float32)  # (PyTorch ops)
    w = kernels.dequant_int4(*q.kernel_tensors(), group)
    assert w is not None and w.dtype == torch.bfloat16 and torch.equal(w, fp32.to(torch.bfloat16))
    x = torch.randn(64, 256)
    with torch.inference_mode():
        y = q(x)
    assert rel(y, x.bfloat16().double() @ w.double().T) < 1e-2  # (bf16 activations in this path)


def test_an_unknown_lmforge_kernels_value_is_named_once():
    code = "from lmforge.model import kernels; print(kernels.enabled(), kernels.enabled())"
    env = dict(os.environ, LMFORGE_KERNELS="banana")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True True"
    assert out.stderr.count("LMFORGE_KERNELS='banana' is not one of") == 1 and "0, off" in out.stderr


def test_import_asks_torch_for_huge_pages_unless_the_user_chose():
    code = "import os, lmforge; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    for given, expected in ((None, "1"), ("0", "0")):
        env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
        if given is not None:
            env["THP_MEM_ALLOC_ENABLE"] = given
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == expected, out.stderr


def test_a_model_changed_in_place_decodes_as_it_is_now():
    """The fused step keeps its decoder between calls; quantizing the same model object in place afterwards must
    not decode with the old weights."""
    model = lmforge_decoder("llama")
    ids = torch.randint(3, 300, (1, 6), generator=torch.Generator().manual_seed(4))
    before = generate(model, ids, max_new_tokens=16, ignore_eos=True)
    assert torch.equal(before, _reference(model, ids, 16))
    quantize(model, method="int8", progress=False)  # in place
    after = generate(model, ids, max_new_tokens=16, ignore_eos=True)
    assert torch.equal(after, _reference(model, ids, 16))
    with torch.no_grad():  # new weights in place
        model.decoder.layers[0].mlp_norm.weight.mul_(3.0)
    assert torch.equal(generate(model, ids, max_new_tokens=16, ignore_eos=True), _reference(model, ids, 16))


def test_weights_moved_to_huge_pages_keep_values_and_identity():
    model = lmforge_decoder("llama")
    big = torch.nn.Parameter(torch.randn(1024, 600))  # 2.3 MB: moved; the tiny model's own weights are below 2 MB
    model.register_parameter("extra", big)
    before = big.detach().clone()
    kernels.to_hugepages(model)
    assert model.extra is big and torch.equal(big, before) and big.data_ptr() % (2 << 20) == 0
    ptr = big.data_ptr()
    kernels.to_hugepages(model)  # once per model
    assert big.data_ptr() == ptr
    qmodel = quantize(lmforge_decoder("llama"), method="int8", progress=False)
    qmodel.lm_head.register_buffer("qweight", torch.randint(-127, 128, (330 * 8, 1024), dtype=torch.int8)[:330 * 8])
    kernels.to_hugepages(qmodel)  # (a buffer of 2.7 MB: replaced, and the layer's kernel tensors taken again)
    assert qmodel.lm_head.qweight.data_ptr() % (2 << 20) == 0 and qmodel.lm_head._own is None


def _attention_reference(q, k, v):
    """Causal attention in float64 written out, grouped query heads sharing their key/value head."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(rep, 1), v.double().repeat_interleave(rep, 1)
    T = q.shape[2]
    s = q.double() @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("B,H,K,T,D", [(2, 4, 4, 64, 32), (3, 6, 2, 37, 24), (1, 3, 1, 130, 64), (2, 2, 2, 1, 16),
                                       (1, 2, 2, 256, 80)])
def test_causal_attention_kernel_and_its_gradient_equal_float64(B, H, K, T, D):
    """lmforge's training attention (grouped heads, lengths that are not multiples of the kernel's blocks, head sizes
    that are not multiples of 16, inputs laid out (B, T, heads, D) as a projection leaves them) against float64,
    values and the gradients of q, k and v."""
    kernels.load_for_training(torch.device("cpu"))
    g = torch.Generator().manual_seed(B * 1000 + T)
    q, k, v = (torch.randn(B, T, n, D, generator=g).transpose(1, 2).requires_grad_() for n in (H, K, K))
    assert kernels.attention_fits(q, k, v, 0.0)
    y = kernels.causal_attention(q, k, v)
    grad = torch.randn(B, H, T, D, generator=g)
    dq, dk, dv = torch.autograd.grad(y, (q, k, v), grad)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = _attention_reference(q64, k64, v64)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
    assert y.shape == (B, H, T, D) and rel(y, ref) < 1e-5
    for a, b in ((dq, rq), (dk, rk), (dv, rv)):  # (one position: dq is exactly 0, rounding ~1e-8 here)
        assert a.shape == b.shape and float((a.double() - b).abs().max()) < 1e-5 * max(float(b.abs().max()), 1.0)


def test_training_attention_takes_the_kernel_only_where_it_applies(monkeypatch):
    """A training forward (a gradient to compute) goes through lmforge's kernel, with SDPA's result; inference,
    padding masks, dropout, long sequences and `kernels.disabled()` keep SDPA."""
    from lmforge.model import blocks

    kernels.load_for_training(torch.device("cpu"))
    calls = []
    real = kernels.causal_attention
    monkeypatch.setattr(kernels, "causal_attention", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 48, 32, generator=g).requires_grad_() for _ in range(3))
    causal = blocks.AttnMask(None, True)
    y = blocks._sdpa(q, k, v, causal, 0.0)
    assert calls == [1] and rel(y, F.scaled_dot_product_attention(q, k, v, is_causal=True)) < 1e-5
    with torch.autocast("cpu", dtype=torch.bfloat16):  # (bf16 autocast: attended in fp32, returned in bf16)
        assert blocks._sdpa(q.bfloat16(), k.bfloat16(), v.bfloat16(), causal, 0.0).dtype == torch.bfloat16
    assert calls == [1, 1]
    with torch.no_grad():
        blocks._sdpa(q, k, v, causal, 0.0)
    blocks._sdpa(q, k, v, causal, 0.1)
    blocks._sdpa(q, k, v, blocks.build_attn_mask(48, 48, causal=True, key_padding=torch.ones(2, 48)), 0.0)
    long = torch.randn(2, 4, kernels.ATTENTION_MAX_T + 1, 8, requires_grad=True)
    blocks._sdpa(long, long, long, causal, 0.0)
    with kernels.disabled():
        blocks._sdpa(q, k, v, causal, 0.0)
    assert calls == [1, 1]
