"""Quantization: the layers against float references, checkpoints round trip bit for bit, GPTQ beats RTN on
correlated inputs, quantized checkpoints generate / score / report through the ordinary commands, bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lmforge
from lmforge.cli import main
from lmforge.compress import quantize
from lmforge.compress.quantize import Hessian, gptq_codes
from lmforge.compress.report import compare, reference_topk
from lmforge.errors import ConfigError
from lmforge.model.quant import DECODE_ROWS, from_codes, quant_layers, quantize_rtn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _generate_models import CORPUS, MEMORIZED, lmforge_decoder, reciting_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


# error bounds against the float layer (random Gaussian weights and inputs) and against the layer's own
# dequantized weight (bf16 activations in the kernels: about 2^-8 relative)
BOUNDS = {"int8": 0.01, "int4": 0.12, "dynamic-int8": 0.02}


@pytest.mark.parametrize("kind", ["int8", "int4", "dynamic-int8"])
@pytest.mark.parametrize("rows", [1, 3, DECODE_ROWS + 24])  # packed kernels (decode) and the dequantized path
def test_layer_equals_dequantized_reference(kind, rows):
    linear = nn.Linear(128, 40)  # 40 outputs: the int4 kernel pads to 48 and must cut back
    layer = quantize_rtn(linear, kind, group_size=32)
    x = torch.randn(2, rows, 128)
    with torch.no_grad():
        y = layer(x)
        dequant = x @ layer.dequantize().T + linear.bias
        exact = linear(x)
    assert y.shape == (2, rows, 40) and y.dtype == torch.float32
    assert rel(y, dequant) < (0.012 if kind == "dynamic-int8" else 0.006)
    assert rel(y, exact) < BOUNDS[kind]
    assert rel(dequant, exact) < BOUNDS[kind]


def test_int4_groups_and_symmetric_codes():
    linear = nn.Linear(256, 32, bias=False)
    errors = {g: rel(quantize_rtn(linear, "int4", g).dequantize(), linear.weight) for g in (32, 64, 128, 256)}
    assert errors[32] < errors[64] < errors[128] < errors[256] < 0.2
    sym = quantize_rtn(linear, "int4", 32, symmetric=True)
    assert torch.all(sym.offsets == 0) and rel(sym.dequantize(), linear.weight) < 0.15


def correlated_inputs(n: int, k: int, seed: int = 0) -> torch.Tensor:
    """Inputs from one low-rank subspace (the same for every seed) plus a little noise: samples differ by seed."""
    basis = torch.randn(k // 8, k, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(3.0, 0.1, k)  # some inputs far larger than others, as real activations
    return (torch.randn(n, k // 8, generator=g) @ basis + 0.1 * torch.randn(n, k, generator=g)) * scale


@pytest.mark.parametrize("kind,act_order", [("int4", False), ("int4", True), ("int8", False)])
def test_gptq_lowers_layer_error_against_rtn(kind, act_order):
    linear = nn.Linear(128, 64, bias=False)
    calib, held_out = correlated_inputs(512, 128, 0), correlated_inputs(256, 128, 1)
    h = Hessian(128)
    h.add(calib[:200])
    h.add(calib[200:])
    codes, scales, offsets = gptq_codes(linear.weight, h.h, kind, 32, act_order=act_order)
    gptq = from_codes(linear, kind, codes, scales, offsets, 32)
    rtn = quantize_rtn(linear, kind, 32)
    with torch.no_grad():
        ref = linear(held_out)
        e_gptq, e_rtn = rel(held_out @ gptq.dequantize().T, ref), rel(held_out @ rtn.dequantize().T, ref)
    assert e_gptq < 0.8 * e_rtn, (e_gptq, e_rtn)


def test_gptq_on_a_model_with_real_activations_beats_rtn():
    model = lmforge_decoder("gpt", context=64)
    text = " ".join(CORPUS)
    ref = reference_topk(model, torch.tensor(model.tokenizer.encode(text)[:256]).view(4, 64), k=model.config.vocab_size)
    windows = torch.tensor(model.tokenizer.encode(text)[:256]).view(4, 64)
    kl = {}
    for algo in ("rtn", "gptq"):
        q = quantize(lmforge_decoder("gpt", context=64), "int4", algo=algo, calib=CORPUS, calib_context=64,
                     progress=False)
        kl[algo] = compare(q, windows, ref)["kl_mean"]
    assert kl["gptq"] < kl["rtn"], kl


def test_topk_kl_is_exact_with_the_whole_vocabulary_and_a_lower_bound_below():
    model = lmforge_decoder("gpt", context=64)
    other = quantize(lmforge_decoder("gpt", context=64), "int4", progress=False)
    windows = torch.tensor(model.tokenizer.encode(" ".join(CORPUS))[:128]).view(2, 64)
    with torch.no_grad():
        p = torch.log_softmax(model(windows)[:, :-1].float(), -1)
        q = torch.log_softmax(other(windows)[:, :-1].float(), -1)
    full = float((p.exp() * (p - q)).sum(-1).mean())
    exact = compare(other, windows, reference_topk(model, windows, k=model.config.vocab_size))
    approx = compare(other, windows, reference_topk(model, windows, k=8))
    assert exact["kl_mean"] == pytest.approx(full, rel=1e-4)
    assert approx["kl_mean"] <= full + 1e-6
    same = compare(model, windows, reference_topk(model, windows, k=8))
    assert same["kl_mean"] < 1e-6 and same["top1"] == 1.0


@pytest.mark.parametrize("method,algo", [("int8", "rtn"), ("int4", "gptq"), ("dynamic-int8", "rtn")])
def test_save_load_round_trip_is_bit_exact(tmp_path, method, algo):
    model = quantize(lmforge_decoder("gpt", context=64), method, algo=algo, calib=CORPUS, calib_context=64,
                     progress=False)
    lmforge.save(model, tmp_path / "q")
    loaded = lmforge.load(tmp_path / "q")
    assert loaded.config.quant == model.config.quant
    assert set(quant_layers(loaded)) == set(quant_layers(model)) and "lm_head" in quant_layers(loaded)
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    ids = torch.tensor([model.tokenizer.encode("The quick brown fox")])
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["lmforge_config"]["quant"]["method"] == method
    from safetensors import safe_open

    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        kinds = {f.get_slice(k).get_dtype() for k in f.keys() if k.endswith("qweight")}
    assert kinds == {"U8" if method == "int4" else "I8"}


def test_quantized_model_recites_like_the_original():
    model, ids = reciting_model()
    want = lmforge.generate(model, MEMORIZED[:2], max_new_tokens=30, skip_special_tokens=True)
    import copy

    q8 = quantize(copy.deepcopy(model), "int8", progress=False)
    assert lmforge.generate(q8, MEMORIZED[:2], max_new_tokens=30, skip_special_tokens=True) == want


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    work = tmp_path_factory.mktemp("quant")
    lmforge.save(lmforge_decoder("gpt", context=64), work / "base")
    (work / "text.txt").write_text("\n".join(CORPUS * 3))
    assert main(["prepare", str(work / "text.txt"), "--tokenizer", str(work / "base"), "--out", str(work / "data"),
                 "--val-fraction", "0.3"]) == 0
    return work


def test_cli_quantize_then_generate_perplexity_and_report(checkpoint, capsys, tmp_path):
    base, data = checkpoint / "base", checkpoint / "data"
    code, out, err = run(["quantize", str(base), "--method", "int4", "--algo", "gptq", "--calib", str(data),
                          "--calib-context", "64", "--out", str(tmp_path / "q4")], capsys)
    assert code == 0, err
    assert "quantized 13 linear layers (int4 g32 GPTQ)" in out
    code, out, err = run(["generate", str(tmp_path / "q4"), "The quick", "--max-new-tokens", "8"], capsys)
    assert code == 0 and out.strip(), err
    code, out, err = run(["eval", "perplexity", str(tmp_path / "q4"), "--data", str(data), "--context", "32"], capsys)
    assert code == 0 and "perplexity" in out, err
    q4 = float(out.split("perplexity ")[1].split()[0])
    run(["eval", "perplexity", str(base), "--data", str(data), "--context", "32"], capsys)
    code, out, err = run(["compress", "report", str(base), "--data", str(data), "--methods", "int8,int4-rtn",
                          "--include", str(tmp_path / "q4"), "--windows", "2", "--context", "32", "--no-batch8",
                          "--out", str(tmp_path / "report")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["fp32", "int8", "int4-rtn", "q4"]
    assert rows["fp32"]["kl_mean"] < 1e-6 and rows["fp32"]["top1"] == 1.0
    assert 0 < rows["int8"]["kl_mean"] < rows["int4-rtn"]["kl_mean"]
    assert rows["int8"]["size_ratio"] > 2 and rows["q4"]["size_ratio"] > rows["int8"]["size_ratio"]
    assert all(r["decode_b1"] > 0 and r["prefill"] > 0 for r in rows.values())
    assert (tmp_path / "report" / "report.png").stat().st_size > 10_000
    assert (tmp_path / "report" / "report.md").read_text().count("\n| ") == 5
    assert rows["q4"]["memory_bytes"] > rows["q4"]["bytes"]  # the int4 kernel's packed copy
    assert q4 > 1


@pytest.mark.parametrize("argv,message", [
    (["--method", "int9"], "invalid choice: 'int9'"),
    (["--method", "int4", "--group-size", "48"], "--group-size 48 is not supported by the int4 kernel; use 32 | 64"),
    (["--method", "int4", "--group-size", "128"], "--group-size 128 does not divide the 64 inputs of "
                                                  "decoder.layers.0.attn.q_proj; use 32 | 64"),
    (["--method", "int4", "--algo", "gptq"], "--algo gptq needs calibration text: give --calib"),
    (["--method", "dynamic-int8", "--algo", "gptq", "--calib", "x"], "--algo gptq is for weight-only int8/int4"),
])
def test_quantize_bad_input(checkpoint, capsys, tmp_path, argv, message):
    code, out, err = run(["quantize", str(checkpoint / "base"), "--out", str(tmp_path / "q"), *argv], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "q").exists()


def test_int4_on_an_unsupported_shape_and_existing_out(checkpoint, capsys, tmp_path):
    llama = lmforge_decoder("llama", context=64)  # SwiGLU width 176: not a multiple of 32
    lmforge.save(llama, tmp_path / "llama")
    code, _, err = run(["quantize", str(tmp_path / "llama"), "--method", "int4", "--out", str(tmp_path / "q")], capsys)
    assert code == 2 and "does not divide the 176 inputs of decoder.layers.0.mlp.down_proj" in err
    assert "use --method int8" in err
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "notes.txt").write_text("mine")
    code, _, err = run(["quantize", str(checkpoint / "base"), "--method", "int8", "--out", str(tmp_path / "q")], capsys)
    assert code == 2 and "--out" in err and (tmp_path / "q" / "notes.txt").read_text() == "mine"
    assert run(["quantize", str(checkpoint / "base"), "--method", "int8", "--out", str(tmp_path / "q8")], capsys)[0] == 0
    code, _, err = run(["quantize", str(checkpoint / "base"), "--method", "int8", "--out", str(tmp_path / "q8")], capsys)
    assert code == 2 and "--overwrite" in err
    code, _, err = run(["compress", "report", str(checkpoint / "base"), "--data", str(checkpoint / "data"),
                        "--methods", "int5", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "'int5' is not a method" in err


def test_api_errors():
    model = lmforge_decoder("gpt", context=64)
    with pytest.raises(ConfigError, match="is not a quantization method"):
        quantize(model, "fp8")
    q = quantize(model, "int8", progress=False)
    with pytest.raises(ConfigError, match="already quantized"):
        quantize(q, "int4")


def test_gptq_of_stacked_layers_equals_gptq_of_each():
    """q/k/v (and gate/up) share their input, so GPTQ quantizes them as one stacked matrix: rows are independent."""
    x = correlated_inputs(256, 64)
    h = Hessian(64)
    h.add(x)
    a, b = torch.randn(48, 64), torch.randn(16, 64)
    for kind in ("int4", "int8"):
        together = gptq_codes(torch.cat([a, b]), h.h, kind, 32)
        apart = [gptq_codes(w, h.h, kind, 32) for w in (a, b)]
        assert torch.equal(together[0], torch.cat([apart[0][0], apart[1][0]]))
        assert torch.equal(together[1], torch.cat([apart[0][1], apart[1][1]]))
