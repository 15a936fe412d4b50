"""ONNX export and the ONNX Runtime runtime (lmforge.export.onnx): the real exporter, the real ONNX Runtime.

Parity with PyTorch within 1e-4 (fp32) for decoders with a cache (GPT-2 and Llama shapes, GQA: a padded prefill
of 3 rows, then 8 cached steps), in ONNX Runtime's fused graph (the default) and the portable one, the empty past at batch 1 with one token, an encoder classifier and tagger, an
encoder-decoder; generation through ONNX Runtime token-identical to PyTorch (greedy, sampling, beams); int8; the
commands and their errors.
"""

from __future__ import annotations

import json

import onnx
import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.errors import CheckpointError, ConfigError
from lmforge.export.onnx import export_onnx, load_onnx
from lmforge.export.onnx.check import compare
from lmforge.generate.engine import Runner
from lmforge.model.cache import KVCache

from _generate_models import CORPUS, lmforge_decoder, lmforge_seq2seq  # noqa: E402

TOL = 1e-4
PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [20, 21, 22, 23], [30, 31, 32, 33, 34, 35]]  # left-padded to 9
TEXTS = ["The quick brown fox", "Once upon a time there was"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """GPT-2-shaped (learned positions, LayerNorm, GELU, tied) and Llama-shaped (RoPE, RMSNorm, SwiGLU, GQA 4:2)
    models, exported: GPT through the command (from a saved checkpoint), Llama through the API; both as ONNX
    Runtime's fused graph (the default), Llama also as the portable graph (torch.onnx.export)."""
    root = tmp_path_factory.mktemp("onnx")
    gpt, llama = lmforge_decoder("gpt"), lmforge_decoder("llama")
    lmforge.save(gpt, root / "gpt-ckpt")
    assert main(["export", "onnx", str(root / "gpt-ckpt"), "--out", str(root / "gpt.onnx")]) == 0
    assert export_onnx(llama, root / "llama.onnx").graph == "ort"
    assert export_onnx(llama, root / "llama-portable.onnx", graph="portable").graph == "portable"
    return {"gpt": (gpt, root / "gpt.onnx"), "llama": (llama, root / "llama.onnx"),
            "llama-portable": (llama, root / "llama-portable.onnx"), "root": root}


def _runner_diffs(model, onnx_model, prompts, steps=8, **kw):
    ref, got = Runner(model, prompts, steps + 1, **kw), Runner(onnx_model, prompts, steps + 1, **kw)
    with torch.inference_mode():
        a, b = ref.start(), got.start()
        diffs = [float((a - b).abs().max())]
        for _ in range(steps):
            t = a.argmax(-1)
            a, b = ref.step(t), got.step(t)
            diffs.append(float((a - b).abs().max()))
    return diffs, float(a.abs().max())


@pytest.mark.parametrize("kind", ["gpt", "llama", "llama-portable"])
def test_decoder_logits_equal_pytorch_prefill_then_8_cached_steps(decoders, kind):
    model, folder = decoders[kind]
    onnx_model = lmforge.load(folder)
    assert onnx_model.runtime == "onnx" and onnx_model.kind == "decoder"
    diffs, scale = _runner_diffs(model, onnx_model, PROMPTS)  # 3 rows, left padding
    assert len(diffs) == 9 and max(diffs) < TOL, diffs
    assert scale > 1.0  # real logits, not a degenerate model
    # the axes stayed symbolic: traced with batch 2 / 3 tokens / past 4, nothing baked in
    graph = onnx.load(str(folder / "decoder.onnx"), load_external_data=False).graph
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        dynamic = [0, 1] if inp.name in ("input_ids", "attention_mask", "position_ids") else [0, 2]
        assert all(dims[d].dim_param for d in dynamic), (inp.name, dims)


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_empty_past_one_row_one_token(decoders, kind):
    """Step 0 with a past of length 0, batch 1, one token: sizes the exporter could not have traced."""
    model, folder = decoders[kind]
    onnx_model = load_onnx(folder, threads=1, optimization="basic")
    ids = torch.tensor([[7]])
    cache, ocache = KVCache.for_model(model, 1, 4), onnx_model.new_cache(1)
    with torch.inference_mode():
        a = model.last_logits(model.decode(ids, cache=cache))
        b = onnx_model.last_logits(onnx_model.decode(ids, cache=ocache))
        assert float((a - b).abs().max()) < TOL
        a = model.last_logits(model.decode(torch.tensor([[9]]), cache=cache))
        b = onnx_model.last_logits(onnx_model.decode(torch.tensor([[9]]), cache=ocache))
    assert float((a - b).abs().max()) < TOL and ocache.length == 2


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_shared_cache_buffers_grow_past_the_length_asked_for(decoders, kind):
    """The fused graph's cache, written in place in buffers of the length the engine asks for (2 here), keeps its
    positions when a call needs more (a prompt of 3, then single tokens) and equals PyTorch."""
    model, folder = decoders[kind]
    onnx_model = lmforge.load(folder)
    cache, ocache = KVCache.for_model(model, 2, 16), onnx_model.new_cache(2, 2)
    assert ocache.shared
    ids = torch.tensor([[7, 8, 9], [10, 11, 12]])
    with torch.inference_mode():
        for step in range(6):
            a = model.last_logits(model.decode(ids, cache=cache))
            b = onnx_model.last_logits(onnx_model.decode(ids, cache=ocache))
            assert float((a - b).abs().max()) < TOL, step
            ids = a.argmax(-1, keepdim=True)
    assert ocache.length == 8 and ocache.max_len >= 8


@pytest.mark.parametrize("kind", ["gpt", "llama", "llama-portable"])
def test_generation_through_onnx_runtime_is_token_identical(decoders, kind):
    model, folder = decoders[kind]
    onnx_model = lmforge.load(folder)
    cases = [dict(max_new_tokens=16),
             dict(max_new_tokens=12, do_sample=True, temperature=0.9, top_k=40, seed=7, num_return_sequences=2),
             dict(max_new_tokens=10, num_beams=3, num_return_sequences=2)]
    for kw in cases:
        want = lmforge.generate(model, TEXTS, ignore_eos=True, return_dict=True, **kw)
        got = lmforge.generate(onnx_model, TEXTS, ignore_eos=True, return_dict=True, **kw)
        flat = lambda rs: [r for g in rs for r in (g if isinstance(g, list) else [g])]  # noqa: E731
        assert [r.token_ids for r in flat(got)] == [r.token_ids for r in flat(want)], kw
        assert [r.text for r in flat(got)] == [r.text for r in flat(want)]


def test_fused_graph_is_a_few_ops_per_layer_and_the_portable_one_standard_onnx(decoders):
    ops = {}
    for kind in ("gpt", "llama", "llama-portable"):
        graph = onnx.load(str(decoders[kind][1] / "decoder.onnx"), load_external_data=False).graph
        ops[kind] = [(n.domain, n.op_type) for n in graph.node]
    for kind in ("gpt", "llama"):  # 2 layers: GroupQueryAttention each, <= 10 nodes a layer + ~22 once
        assert ops[kind].count(("com.microsoft", "GroupQueryAttention")) == 2
        assert len(ops[kind]) <= 2 * 10 + 24, ops[kind]
    assert ("com.microsoft", "SkipSimplifiedLayerNormalization") in ops["llama"]
    assert ("com.microsoft", "SkipLayerNormalization") in ops["gpt"]
    assert all(domain in ("", "ai.onnx") for domain, _ in ops["llama-portable"])
    assert len(ops["llama-portable"]) > 3 * len(ops["llama"])


def test_graph_choice_falls_back_or_says_why(tmp_path):
    """A head size ONNX Runtime's GroupQueryAttention cannot take (8): auto writes the portable graph; --graph ort
    refuses in one line naming the reason and the way out."""
    tok = lmforge_decoder("gpt").tokenizer
    config = lmforge.ModelConfig(arch="decoder", vocab_size=tok.vocab_size, context_length=32, d_model=32, n_layer=1,
                                 n_head=4, norm="rmsnorm", activation="swiglu", pos="rope", bias=False, init_std=0.3)
    model = lmforge.build_model(config).eval()
    with pytest.raises(ConfigError, match="head size 8 is not a multiple of 16.*--graph portable"):
        export_onnx(model, tmp_path / "ort", graph="ort")
    assert not (tmp_path / "ort").exists()
    done = export_onnx(model, tmp_path / "auto")
    assert done.graph == "portable" and lmforge.load(tmp_path / "auto").info["graph"] == "portable"
    onnx_model = lmforge.load(tmp_path / "auto")
    ids = torch.randint(5, tok.vocab_size, (2, 6))
    with torch.inference_mode():
        a = model.last_logits(model.decode(ids))
        b = onnx_model.last_logits(onnx_model.decode(ids, cache=onnx_model.new_cache(2)))
    assert float((a - b).abs().max()) < TOL


def test_generate_command_runtime_onnx(decoders, capsys):
    root = decoders["root"]
    args = ["The quick brown", "--max-new-tokens", "12", "--ignore-eos"]
    assert main(["generate", str(root / "gpt-ckpt"), *args]) == 0
    want = capsys.readouterr().out
    assert main(["generate", str(root / "gpt.onnx"), *args, "--runtime", "onnx", "--threads", "1"]) == 0
    assert capsys.readouterr().out == want and want.strip()


def test_int8_export_loads_and_runs(decoders, capsys):
    model, _ = decoders["gpt"]
    root = decoders["root"]
    assert main(["export", "onnx", str(root / "gpt-ckpt"), "--out", str(root / "gpt-int8.onnx"),
                 "--quantize", "int8"]) == 0
    assert "int8" in capsys.readouterr().out
    graph = onnx.load(str(root / "gpt-int8.onnx" / "decoder.onnx"), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert "MatMulNBits" in ops
    assert not any(n.op_type == "Transpose" and n.input[0] in {i.name for i in graph.initializer} for n in graph.node)
    onnx_model = lmforge.load(root / "gpt-int8.onnx")
    r = compare(model, onnx_model)
    assert 0 < r["max_abs_diff"] < 0.5 and r["top1_agreement"] >= 0.8, r  # quantized: close, not equal
    out = lmforge.generate(onnx_model, TEXTS, max_new_tokens=8, num_beams=2, ignore_eos=True, return_dict=True)
    assert [len(o.token_ids) for o in out] == [8, 8]
    fp32 = sum(f.stat().st_size for f in (root / "gpt.onnx").glob("decoder.onnx*"))
    int8 = sum(f.stat().st_size for f in (root / "gpt-int8.onnx").glob("decoder.onnx*"))
    assert int8 < 0.6 * fp32
    # an fp32 export quantized without tracing again: quantize_dynamic's MatMulInteger path
    assert main(["export", "onnx", str(root / "gpt.onnx"), "--out", str(root / "gpt-dyn.onnx"),
                 "--quantize", "int8-dynamic"]) == 0
    dyn = lmforge.load(root / "gpt-dyn.onnx")
    assert dyn.info["quantize"] == "int8-dynamic" and dyn.tokenizer is not None
    graph = onnx.load(str(root / "gpt-dyn.onnx" / "decoder.onnx"), load_external_data=False).graph
    assert "MatMulInteger" in {n.op_type for n in graph.node}
    assert compare(model, dyn)["top1_agreement"] >= 0.8


def test_encoder_decoder(tmp_path):
    model = lmforge_seq2seq()
    done = export_onnx(model, tmp_path / "s2s")
    assert done.kind == "seq2seq" and set(done.graphs) == {"encoder", "decoder"}
    onnx_model = lmforge.load(tmp_path / "s2s")
    src = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]  # padded source
    diffs, _ = _runner_diffs(model, onnx_model, src, pad_id=0, decoder_start_id=model.config.decoder_start_token_id)
    assert max(diffs) < TOL, diffs
    for kw in (dict(max_new_tokens=12), dict(max_new_tokens=10, num_beams=3, num_return_sequences=2)):
        assert lmforge.generate(onnx_model, TEXTS, ignore_eos=True, **kw) == \
            lmforge.generate(model, TEXTS, ignore_eos=True, **kw)


def _encoder(head: str, tokenizer, **extra):
    config = lmforge.ModelConfig.from_name("bert-mini", vocab_size=tokenizer.vocab_size, d_model=64, n_layer=2,
                                           n_head=4, d_ff=128, init_std=0.2, head=head,
                                           pad_token_id=tokenizer.pad_id, **extra)
    torch.manual_seed(0)
    model = lmforge.build_model(config).eval()
    model.tokenizer = tokenizer
    return model


@pytest.fixture(scope="module")
def wordpiece():
    return lmforge.train_tokenizer(CORPUS, "wordpiece", vocab_size=600, arch="encoder", progress=False)


def test_encoder_classifier_and_tagger(tmp_path, wordpiece, capsys):
    ids = torch.randint(5, wordpiece.vocab_size, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding
    types = torch.zeros_like(ids)
    types[0, 6:] = 1  # a text pair
    labels = ["neg", "neu", "pos"]
    # the classifier through the command (from a saved checkpoint), the tagger through the API
    lmforge.save(_encoder("classify", wordpiece, num_labels=3, labels=labels), tmp_path / "clf-ckpt")
    assert main(["export", "onnx", str(tmp_path / "clf-ckpt"), "--out", str(tmp_path / "classify")]) == 0
    assert "max |delta logit|" in capsys.readouterr().out
    export_onnx(_encoder("tag", wordpiece, num_labels=5), tmp_path / "tag")
    for head in ("classify", "tag"):
        model = _encoder(head, wordpiece, num_labels=3 if head == "classify" else 5,
                         labels=labels if head == "classify" else None)
        onnx_model = lmforge.load(tmp_path / head)
        assert onnx_model.kind == "head"
        with torch.inference_mode():
            for rows in (slice(None), slice(1, 2)):  # batch 3 and batch 1
                a = model(ids[rows], mask[rows], token_type_ids=types[rows])
                b = onnx_model(ids[rows], mask[rows], token_type_ids=types[rows])
                assert a.shape == b.shape
                keep = mask[rows].bool() if head == "tag" else slice(None)
                assert float((a - b)[keep].abs().max()) < TOL
    # predict through the ONNX folder gives the labels and probabilities the checkpoint gives
    table = tmp_path / "in.tsv"
    table.write_text("text\n" + "\n".join(CORPUS[:7]) + "\n", encoding="utf-8")
    assert main(["predict", str(tmp_path / "clf-ckpt"), "--input", str(table), "--out", str(tmp_path / "a.tsv")]) == 0
    assert main(["predict", str(tmp_path / "classify"), "--input", str(table), "--out", str(tmp_path / "b.tsv")]) == 0
    a, b = (tmp_path / "a.tsv").read_text().splitlines(), (tmp_path / "b.tsv").read_text().splitlines()
    assert len(a) == 8 and a[0] == b[0]
    for x, y in zip(a[1:], b[1:]):
        x, y = x.split("\t"), y.split("\t")
        assert x[:2] == y[:2] and all(abs(float(p) - float(q)) < 1e-4 for p, q in zip(x[2:], y[2:]))


def test_decoder_classifier(tmp_path):
    """A decoder with a classify head ("last" pooling): predict's path (encode, then head_logits with the mask)."""
    from lmforge.finetune.objectives import task_logits

    tok = lmforge_decoder("gpt").tokenizer
    config = lmforge.ModelConfig(arch="decoder", vocab_size=tok.vocab_size, context_length=32, d_model=32, n_layer=1,
                                 n_head=2, head="classify", num_labels=2, pooling="last", init_std=0.3)
    model = lmforge.build_model(config).eval()
    export_onnx(model, tmp_path / "dclf")
    onnx_model = lmforge.load(tmp_path / "dclf")
    ids = torch.randint(5, tok.vocab_size, (3, 10))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.inference_mode():
        assert float((task_logits(model, batch) - task_logits(onnx_model, batch)).abs().max()) < TOL


def test_bad_input_is_one_line_with_status_2(decoders, tmp_path, capsys):
    root = decoders["root"]
    cases = [
        (["export", "onnx", str(tmp_path / "no-run"), "--out", str(tmp_path / "x")], "no-run"),
        (["export", "onnx", str(root / "gpt-ckpt"), "--out", str(root / "gpt.onnx")], "--overwrite"),
        (["export", "onnx", str(root / "gpt-ckpt"), "--out", str(tmp_path / "y"), "--quantize", "int4"], "int8"),
        (["export", "onnx", str(root / "gpt-ckpt"), "--out", str(tmp_path / "y"), "--opset", "9"], "18 .. 23"),
        (["export", "onnx", str(root / "gpt-ckpt"), "--out", str(tmp_path / "y"), "--opset", "20", "--graph", "ort"],
         "--graph portable"),
        (["export", "onnx", str(root / "gpt.onnx"), "--out", str(tmp_path / "y")], "already an ONNX export"),
        (["generate", str(root / "gpt-ckpt"), "hi", "--runtime", "onnx"], "lmforge export onnx"),
        (["generate", str(root / "gpt.onnx"), "hi", "--runtime", "torch"], "no PyTorch weights"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, (argv, err)
    assert not (tmp_path / "y").exists()
    with pytest.raises(ConfigError, match="disable | basic"):
        load_onnx(root / "gpt.onnx", optimization="max")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    data = json.loads((root / "gpt.onnx" / "config.json").read_text())
    data["lmforge_onnx"]["graphs"] = {"decoder": "../gpt.onnx/decoder.onnx"}
    (damaged / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a file name in that folder"):
        lmforge.load(damaged)


def test_missing_onnx_packages_are_named_with_the_extra():
    from lmforge.export.onnx import require

    require()  # installed here (the test extra)
    with pytest.raises(ConfigError, match=r"no_such_onnx_module.*pip install 'lmforge\[onnx\]'"):
        require(("onnx", "no_such_onnx_module"))
