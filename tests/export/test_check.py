"""`lmforge export check` / `lmforge.parity.parity_report`: a tiny Llama-style model (every weight away from its
init, lmforge's byte-level BPE) exported for real to each format and run by the real runtimes (transformers, ONNX
Runtime, lmforge on the GGUF, llama.cpp when installed); a broken export must show up as a divergence; bad input is a
one-line error with exit status 2 and nothing written."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.parity import TorchRuntime, logit_stats, parity_report, summarize

from _gguf_fixtures import byte_bpe, perturbed

HAS_ONNX = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None
HAS_LLAMACPP = importlib.util.find_spec("llama_cpp") is not None
PROMPTS = ["def forward(self, x):", "The model is built on the meta device.", "x = [i * i for i in range(10)]"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = byte_bpe()
    model = perturbed(lmforge.ModelConfig.from_name("llama-tiny", n_layer=2, vocab_size=tok.vocab_size), tok)
    folder = tmp_path_factory.mktemp("check")
    lmforge.save(model, folder / "ckpt")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return model, folder


def rows(report: dict) -> dict[str, dict]:
    return {r["name"]: r for r in report["results"]}


def test_command_writes_the_report_every_runtime_agrees(tiny, tmp_path, capsys):
    _, folder = tiny
    out = tmp_path / "report"
    formats = "hf,onnx,gguf" if HAS_ONNX else "hf,gguf"
    assert main(["export", "check", str(folder / "ckpt"), "--prompts", str(folder / "prompts.txt"), "--out", str(out),
                 "--formats", formats, "--gguf-types", "f32,q8_0", "--onnx", "fp32", "--new-tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert "| runtime | size MB | same tokens | max abs dlogit | KL mean |" in printed
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text().startswith("parity of ")
    assert (out / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = rows(report)
    expected = {"PyTorch eager (reference)", "transformers (hf)", "gguf f32 (lmforge)", "gguf q8_0 (lmforge)"}
    expected |= {"ONNX Runtime fp32"} if HAS_ONNX else set()
    expected |= {"gguf f32 (llama.cpp)", "gguf q8_0 (llama.cpp)"} if HAS_LLAMACPP else set()
    assert set(r) == expected
    assert report["prompt_tokens"] == [len(lmforge.load(folder / "ckpt").tokenizer.encode(p)) for p in PROMPTS]
    exact = ["transformers (hf)", "gguf f32 (lmforge)"] + (["ONNX Runtime fp32"] if HAS_ONNX else []) + \
        (["gguf f32 (llama.cpp)"] if HAS_LLAMACPP else [])
    for name in exact:  # fp32 formats: the same model, so the same logits and the same greedy tokens
        assert r[name]["max_abs"] < 1e-4, name
        assert r[name]["top1"] == 1.0 and r[name]["greedy_identical"] == 3, name
        assert r[name]["first_divergence"] == [None, None, None], name
        assert r[name]["same_tokens"] == 3, name  # each runtime's own tokenizer: transformers', the GGUF's, ...
        assert r[name]["tokens_per_s"] > 0 and r[name]["size_mb"] > 0.5
    assert r["gguf f32 (lmforge)"]["max_abs"] == 0.0  # f32 GGUF round trip is bit for bit
    q8 = r["gguf q8_0 (lmforge)"]
    assert 1e-7 < q8["kl_mean"] < 1e-3 and q8["max_abs"] > 1e-3  # quantized: measurably different, within bound
    assert q8["size_mb"] < 0.5 * r["gguf f32 (lmforge)"]["size_mb"]
    # an earlier report is replaced only with --overwrite
    args = ["export", "check", str(folder / "ckpt"), "--prompts", str(folder / "prompts.txt"), "--out", str(out),
            "--formats", "gguf", "--gguf-types", "f32", "--no-llamacpp", "--new-tokens", "2"]
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert set(rows(json.loads((out / "report.json").read_text()))) == {"PyTorch eager (reference)",
                                                                        "gguf f32 (lmforge)"}


def test_a_broken_export_shows_as_a_divergence(tiny, monkeypatch):
    """Negative control: a GGUF exporter that forgets llama.cpp's rotary permutation of q/k (the classic bug), and
    a model with one weight nudged, must both be reported as diverging while the HF export stays exact."""
    model, _ = tiny
    import lmforge.convert.gguf.exporter as exporter

    monkeypatch.setattr(exporter, "permute_rotary", lambda w, heads: w)
    nudged = copy.deepcopy(model)
    with torch.no_grad():
        nudged.decoder.layers[0].attn.v_proj.weight.mul_(1.05)
    report = parity_report(model, PROMPTS, formats="hf,gguf", gguf_types=("f32",), llamacpp=HAS_LLAMACPP,
                           new_tokens=8, progress=False, runtimes=[TorchRuntime("nudged v_proj", nudged)])
    r = {x.name: x for x in report.results}
    assert r["transformers (hf)"].max_abs < 1e-4 and r["transformers (hf)"].greedy_identical == 3
    broken = ["gguf f32 (lmforge)"] + (["gguf f32 (llama.cpp)"] if HAS_LLAMACPP else [])
    for name in broken:
        assert r[name].max_abs > 0.1 and r[name].kl_mean > 1e-3, name
        assert r[name].top1 < 1.0 and r[name].greedy_identical < 3, name
        assert any(d is not None for d in r[name].first_divergence)
    assert r["nudged v_proj"].max_abs > 1e-3 and r["nudged v_proj"].kl_mean > 0
    table = report.table()
    assert "| gguf f32 (lmforge) |" in table and "token " in table


def test_logit_stats_by_hand():
    ref = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    same = logit_stats(ref, ref + 3.0)  # a constant shift changes no probability
    assert same["max_abs"] == 3.0 and max(same["kl"]) < 1e-12 and all(same["top1"])
    other = torch.tensor([[0.0, 2.0, 0.0], [0.0, 1.0, 0.0]])
    s = summarize([logit_stats(ref, other)])
    p = torch.softmax(ref[0].double(), -1)
    q = torch.softmax(other[0].double(), -1)
    assert s["kl_max"] == pytest.approx(float((p * (p / q).log()).sum()))
    assert s["kl_mean"] == pytest.approx(s["kl_max"] / 2) and s["top1"] == 0.5 and s["tokens"] == 2


@pytest.mark.parametrize("extra, message", [
    (["--formats", "hf,tflite"], "--formats hf,tflite: unknown format 'tflite'; choose among hf, onnx, gguf"),
    (["--formats", ","], "--formats"),
    (["--gguf-types", "f32,q3_k"], "--gguf-types: unknown GGUF type 'q3_k'; choose among f32"),
    (["--onnx", "int4"], "--onnx: unknown ONNX Runtime variant 'int4'"),
    (["--prompts", "MISSING"], "--prompts {tmp}/missing.txt: no such file"),
    (["--prompts", "EMPTY"], "holds no prompts"),
    (["--new-tokens", "0"], "--new-tokens 0: give a positive number"),
])
def test_bad_input_is_one_line_exit_2(tiny, tmp_path, capsys, extra, message):
    _, folder = tiny
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    extra = [{"MISSING": str(tmp_path / "missing.txt"), "EMPTY": str(tmp_path / "empty.txt")}.get(a, a) for a in extra]
    args = ["export", "check", str(folder / "ckpt"), "--prompts", str(folder / "prompts.txt"),
            "--out", str(tmp_path / "out"), "--formats", "gguf", "--gguf-types", "f32", "--no-llamacpp"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err
    assert message.format(tmp=tmp_path) in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_what_cannot_be_checked(tiny, tmp_path):
    model, folder = tiny
    classifier = lmforge.build_model(lmforge.ModelConfig.from_name("bert-mini", n_layer=1, vocab_size=300))
    with pytest.raises(ConfigError, match="compares language models.*arch=encoder"):
        parity_report(classifier, PROMPTS, formats="hf")
    with pytest.raises(ConfigError, match="starts from the PyTorch model.*got Linear"):
        parity_report(torch.nn.Linear(2, 2), PROMPTS, formats="hf")
    with pytest.raises(ConfigError, match="non-empty list of non-empty prompt strings"):
        parity_report(folder / "ckpt", [], formats="hf")
    with pytest.raises(ConfigError, match="past the model's context"):
        parity_report(folder / "ckpt", [" ".join(["w"] * model.config.context_length)], formats="hf")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["export", "check", str(folder / "ckpt"), "--prompts", str(folder / "prompts.txt"), "--out",
                 str(tmp_path / "other"), "--formats", "hf"]) == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not HAS_LLAMACPP, reason="llama-cpp-python is not installed")
def test_llamacpp_decode_speed_decodes_what_lmforge_decodes(tiny, tmp_path):
    """The benchmark's llama.cpp timing loop picks real tokens (it once read logits llama-cpp-python never filled,
    and decoded token 0 every step)."""
    from lmforge.convert.gguf import to_gguf
    from lmforge.convert.gguf.llamacpp import llamacpp_decode_speed

    model, _ = tiny
    path = to_gguf(model, tmp_path / "m.gguf").path
    prompt = model.tokenizer.encode(PROMPTS[1])
    ours = lmforge.generate(model, prompt, max_new_tokens=8, do_sample=False, ignore_eos=True)
    tokens, seconds = llamacpp_decode_speed(path, prompt, 8)
    assert len(set(ours)) > 1 and tokens == ours and seconds > 0
