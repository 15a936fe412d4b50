"""Pruning: exact per-layer sparsity (magnitude, Wanda), the 2:4 pattern, Wanda's activation weighting, structured
removal of heads and neurons equal to the masked original, checkpoints through lmforge.load, recovery fine-tuning
from a pruned model, and the one-line errors of `lmforge prune`."""

import copy

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.compress.prune import (masked_copy, prune, prune_structured, prune_unstructured, sparsity_of,
                                    unstructured_mask)
from lmforge.errors import ConfigError

from _finetune_data import sentiment_rows, src, tiny_options, write_table  # (tests/compress/conftest.py: on the path)
from _tiny import calib_ids as _ids, tiny_model as _model


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_unstructured_sparsity_is_exactly_as_requested_in_every_layer(tok, method, sparsity):
    model = _model(tok)
    before = copy.deepcopy(model)
    done = prune_unstructured(model, method, sparsity, calib=_ids(tok), progress=False)
    assert len(done) == 4 * 7  # q k v o gate up down in 4 blocks; embeddings and the head untouched
    for name, zeros in sparsity_of(model).items():
        w = dict(model.named_modules())[name].weight
        assert zeros == pytest.approx(sparsity, abs=1.0 / w.shape[1])  # rounding: at most one weight per row
        if method == "wanda":  # per output row, exactly round(sparsity * inputs) zeros
            assert ((w == 0).sum(1) == round(sparsity * w.shape[1])).all()
        kept = dict(before.named_modules())[name].weight
        assert torch.equal(w[w != 0], kept[w != 0])  # the rest unchanged
    assert torch.equal(model.tok_embed.weight, before.tok_embed.weight)
    assert model.config.pruning["method"] == method


def test_two_four_pattern_holds_in_every_group_of_four(tok):
    model = _model(tok)
    prune(model, "2:4", calib=_ids(tok), progress=False)
    for name in sparsity_of(model):
        w = dict(model.named_modules())[name].weight
        groups = (w != 0).view(w.shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all() and (w == 0).float().mean().item() >= 0.5


def test_wanda_keeps_weights_of_loud_inputs_that_magnitude_drops():
    w = torch.tensor([[1.0, 0.9, 0.2, 0.1]])
    norms = torch.tensor([0.1, 0.1, 10.0, 10.0])  # the small weights see large activations
    assert unstructured_mask(w, "magnitude", 0.5).tolist() == [[True, True, False, False]]
    assert unstructured_mask(w, "wanda", 0.5, norms).tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("preset,kw", [("llama-nano", {"n_kv_head": 2}), ("llama-nano", {}), ("gpt-nano", {}),
                                       ("bert-mini", {"n_layer": 2, "d_model": 64})])
def test_structured_pruning_equals_the_masked_original_and_loads(tok, tmp_path, preset, kw):
    model = _model(tok, preset, **kw)
    ids = _ids(tok)
    small, kept = prune_structured(model, 0.5, calib=ids, progress=False)
    c0, c1 = model.config, small.config
    assert c1.d_ff == c0.d_ff - round(0.5 * c0.d_ff) and c1.n_head < c0.n_head
    assert c1.n_head % c1.n_kv_head == 0 and c1.head_dim == c0.head_dim
    assert small.num_parameters() < 0.75 * model.num_parameters()
    masked = masked_copy(model, kept)
    with torch.no_grad():
        assert torch.allclose(small(ids), masked(ids), atol=1e-5)
        assert not torch.allclose(small(ids), model(ids), atol=1e-3)  # something was removed
    lmforge.save(small, tmp_path / "small", tok)
    again = lmforge.load(tmp_path / "small")
    assert again.config.pruning["method"] == "heads+neurons" and again.config.n_head == c1.n_head
    with torch.no_grad():
        assert torch.allclose(again(ids), small(ids), atol=1e-6)
    if c0.arch == "decoder":
        assert isinstance(lmforge.generate(again, "the movie", max_new_tokens=4), str)
    if preset == "llama-nano":  # a smaller shape, still one config: transformers reads its export as it is
        import transformers

        assert main(["convert", "to-hf", str(tmp_path / "small"), str(tmp_path / "hf")]) == 0
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
        with torch.no_grad():
            assert torch.allclose(hf(ids).logits, small(ids), atol=1e-4)


def test_head_importance_removes_the_head_that_does_nothing(tok):
    model = _model(tok, "gpt-nano")
    with torch.no_grad():  # head 1 of every layer writes nothing: it must be the one removed
        for block in model.decoder.layers:
            D = block.attn.head_dim
            block.attn.o_proj.weight[:, D:2 * D] = 0
    _, kept = prune_structured(model, 0.25, neurons=False, calib=_ids(tok), progress=False)
    assert all(1 not in heads for heads in kept["heads"].values())


def test_prune_command_and_recovery_finetuning_from_a_pruned_classifier(tmp_path):
    from lmforge.finetune.classify import finetune_classify

    from _finetune_data import encoder_tokenizer

    tokdir = tmp_path / "tok"
    encoder_tokenizer().save(tokdir)
    # columns of the user's own names: the run records them, and every checkpoint derived from the run keeps that
    # record, so eval / predict on a pruned or quantized classifier need no column options
    header = ("y", "sentence")
    train = write_table(tmp_path / "train.tsv", sentiment_rows(200, 0), header)
    dev = write_table(tmp_path / "dev.tsv", sentiment_rows(60, 1), header)
    finetune_classify(model="bert-mini", train=train, dev=dev, out=str(tmp_path / "clf"), text_column="sentence",
                      label_column="y", source=src(str(tokdir), set_=["n_layer=2", "d_model=64", "n_head=4"]),
                      options=tiny_options(max_steps=40))
    assert main(["prune", str(tmp_path / "clf"), "--method", "heads,neurons", "--amount", "0.5", "--calib", train,
                 "--text-column", "sentence", "--out", str(tmp_path / "pruned")]) == 0
    pruned = lmforge.load(tmp_path / "pruned")
    assert pruned.config.n_head == 2 and pruned.config.head == "classify"
    assert main(["eval", "classify", str(tmp_path / "pruned"), "--data", dev, "--out", str(tmp_path / "ev")]) == 0
    assert main(["quantize", str(tmp_path / "clf"), "--method", "dynamic-int8", "--out", str(tmp_path / "q8")]) == 0
    assert main(["predict", str(tmp_path / "q8"), "--input", dev, "--out", str(tmp_path / "q8.tsv")]) == 0
    assert len((tmp_path / "q8.tsv").read_text().splitlines()) == 61
    result = finetune_classify(model=str(tmp_path / "pruned"), train=train, dev=dev, out=str(tmp_path / "rec"),
                               text_column="sentence", label_column="y", options=tiny_options(max_steps=30))
    assert result["dev"]["accuracy"] >= 0.9 and lmforge.load(tmp_path / "rec").config.n_head == 2
    # unstructured from the command line, then its errors
    assert main(["prune", str(tmp_path / "clf"), "--method", "magnitude", "--sparsity", "0.4",
                 "--out", str(tmp_path / "mag")]) == 0
    assert max(sparsity_of(lmforge.load(tmp_path / "mag")).values()) == pytest.approx(0.4, abs=0.02)


def test_prune_errors_are_one_line_exit_2(tok, tmp_path, capsys):
    lmforge.save(_model(tok), tmp_path / "m", tok)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x.txt").write_text("keep me")
    m = str(tmp_path / "m")
    cases = [(["--method", "wanda"], "--calib"), (["--method", "magnitude", "--sparsity", "1.5"], "--sparsity"),
             (["--method", "heads", "--amount", "0"], "--amount"), (["--method", "neurons"], "--calib"),
             (["--method", "bogus"], "--method"), (["--method", "magnitude", "--calib", str(tmp_path / "nope")], None)]
    for extra, needle in cases:
        assert main(["prune", m, "--out", str(tmp_path / "o"), *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0] and (needle is None or needle in err[0]), err
    assert main(["prune", m, "--method", "magnitude", "--out", str(tmp_path / "taken")]) == 2
    assert (tmp_path / "taken" / "x.txt").read_text() == "keep me"
    with pytest.raises(ConfigError):
        prune(_model(tok), "wanda,heads")
