"""Low-rank factorisation: full rank reproduces the model, the error falls as the rank grows, activation-aware SVD
beats plain SVD on the layer's real inputs, ranks follow the ratio, checkpoints through lmforge.load and decoding,
recovery training of a factorised model, and the one-line errors of `lmforge lowrank`."""

import copy

import pytest
import torch

import lmforge
from lmforge import ModelConfig, build_model
from lmforge.cli import main
from lmforge.compress.calibrate import Stats
from lmforge.compress.lowrank import factor, factorize, merge_lowrank, rank_for
from lmforge.compress import lowrank as lowrank_mod
from lmforge.errors import ConfigError
from lmforge.model.lowrank import LowRankLinear, lowrank_layers

from _tiny import TEXTS, calib_ids as _ids, tiny_model as _model  # (tests/compress/conftest.py puts it on the path)


@pytest.mark.parametrize("method", ["svd", "asvd", "svd-llm"])
def test_full_rank_reproduces_the_original_logits(tok, method):
    model, ids = _model(tok), _ids(tok)
    full = copy.deepcopy(model)
    factorize(full, 1.0, method, calib=ids, full=True, progress=False)
    assert all(isinstance(m, LowRankLinear) for m in lowrank_layers(full).values()) and len(lowrank_layers(full)) == 28
    with torch.no_grad():
        assert (full(ids) - model(ids)).abs().max().item() < 1e-4


def _correlated(n=512, k=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) * torch.logspace(-1, 1, k)[None, :]  # channels of very different scales
    return torch.randn(n, 8, generator=g) @ torch.randn(8, k, generator=g) + 0.1 * torch.randn(n, k, generator=g) @ mix


def test_error_falls_as_rank_grows_and_activation_aware_is_not_worse_on_the_inputs():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 64, generator=g)
    x = _correlated()
    stats = Stats(64, gram=True)
    stats.add(x[None])
    ref = x @ w.T
    errors = {m: [] for m in ("svd", "asvd", "svd-llm")}
    for rank in (4, 8, 16, 32):
        for method in errors:
            a, b = factor(w, rank, method, stats)
            errors[method].append(((x @ a.T @ b.T) - ref).norm().item() / ref.norm().item())
    for method, errs in errors.items():
        assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0], (method, errs)
    for i in range(4):  # whitened SVD is optimal for the output error at each rank; ASVD beats plain SVD here
        assert errors["svd-llm"][i] <= errors["svd"][i] + 1e-6
        assert errors["asvd"][i] <= errors["svd"][i] + 1e-6
    assert errors["svd-llm"][0] < 0.8 * errors["svd"][0]


def test_factors_are_balanced_so_that_training_them_is_stable():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 64, generator=g) * 0.02
    stats = Stats(64, gram=True)
    stats.add(100 * _correlated()[None])  # large inputs: SVD-LLM's L^-1 would make A tiny and B huge
    for method in ("svd", "asvd", "svd-llm"):
        a, b = factor(w, 16, method, stats)
        torch.testing.assert_close(a.norm(dim=1), b.norm(dim=0), rtol=1e-4, atol=1e-8)
        a_ref, b_ref = lowrank_mod._factor(w, 16, method, stats, 0.5, 1e-6)
        torch.testing.assert_close(b @ a, (b_ref @ a_ref).float(), rtol=1e-4, atol=1e-6)  # the same product


def test_rank_ratio_sets_the_parameters_of_each_layer(tok):
    model = _model(tok)
    before = model.num_parameters()
    ranks = factorize(model, 0.5, "svd", progress=False)
    assert ranks["decoder.layers.0.attn.q_proj"] == rank_for(128, 128, 0.5) == 32
    for name, layer in lowrank_layers(model).items():
        dense = layer.in_features * layer.out_features
        assert layer.rank * (layer.in_features + layer.out_features) <= 0.5 * dense
    assert model.num_parameters() < before
    assert model.config.lowrank["layers"] == ranks


def test_checkpoint_round_trip_decodes_and_trains(tok, tmp_path):
    model, ids = _model(tok), _ids(tok)
    factorize(model, 0.6, "svd-llm", calib=ids, progress=False)
    lmforge.save(model, tmp_path / "lr", tok)
    again = lmforge.load(tmp_path / "lr")
    assert again.config.lowrank["method"] == "svd-llm"
    # exporters write plain layers: --merge gives them a dense checkpoint with the same outputs
    assert main(["lowrank", str(tmp_path / "lr"), "--merge", "--out", str(tmp_path / "dense")]) == 0
    assert main(["convert", "to-hf", str(tmp_path / "dense"), str(tmp_path / "hf")]) == 0
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids), atol=1e-4)
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))
    assert isinstance(lmforge.generate(again, "the movie", max_new_tokens=4), str)
    # recovery: the factors train (a gradient reaches them) and merging gives back dense layers with the same output
    again.train()
    loss = torch.nn.functional.cross_entropy(again(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    assert again.decoder.layers[0].attn.q_proj.down.weight.grad is not None
    dense = merge_lowrank(copy.deepcopy(model))
    assert dense.config.lowrank is None and not lowrank_layers(dense)
    with torch.no_grad():
        assert torch.allclose(dense(ids), model(ids), atol=1e-5)


def test_pretrain_init_recovers_a_factorised_decoder(tok, tmp_path):
    from lmforge.data.prepare import prepare_corpus
    from lmforge.train.options import TrainConfig
    from lmforge.train.pretrain import pretrain

    (tmp_path / "c.txt").write_text("\n\n".join(TEXTS))
    prepare_corpus([str(tmp_path / "c.txt")], tok, tmp_path / "data", progress=False, val_fraction=0.2)
    model = _model(tok)
    factorize(model, 0.5, "svd", progress=False)
    lmforge.save(model, tmp_path / "lr", tok)
    result = pretrain(data=str(tmp_path / "data"), out=str(tmp_path / "rec"), init=str(tmp_path / "lr"),
                      train=TrainConfig(max_steps=5, batch_size=4, context=32, eval_every=5, save_every=5,
                                        progress=False, threads=1))
    assert result["steps"] == 5
    assert lmforge.load(tmp_path / "rec").config.lowrank == model.config.lowrank


def test_lowrank_errors_are_one_line_exit_2(tok, tmp_path, capsys):
    lmforge.save(_model(tok), tmp_path / "m", tok)
    m = str(tmp_path / "m")
    for extra, needle in [(["--method", "asvd"], "--calib"), (["--rank-ratio", "0"], "--rank-ratio"),
                          (["--method", "svd", "--rank-ratio", "1.0"], "--rank-ratio"), (["--method", "nope"], "--method")]:
        assert main(["lowrank", m, "--out", str(tmp_path / "o"), *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    with pytest.raises(ConfigError):
        lmforge.ModelConfig.from_name("gpt-nano", lowrank={"layers": {"x": 0}}) and build_model(
            ModelConfig.from_name("gpt-nano", lowrank={"layers": {"x": 0}}))
    factorised = _model(tok)
    factorize(factorised, 0.5, "svd", progress=False)
    with pytest.raises(ConfigError):
        factorize(factorised, 0.5, "svd", progress=False)  # already factorised
