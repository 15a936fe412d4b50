import json

import pytest
import torch
import torch.nn.functional as F

from lmforge import ModelConfig, build_model
from lmforge.config import PRESETS, parse_overrides
from lmforge.errors import ConfigError

TINY = dict(vocab_size=97, context_length=32, d_model=32, n_layer=2, n_head=4)

DECODERS = {
    "gpt": dict(arch="decoder", pos="learned", norm="layernorm", activation="gelu_tanh"),
    "llama-gqa": dict(arch="decoder", pos="rope", norm="rmsnorm", activation="swiglu", bias=False, n_kv_head=2,
                      tie_embeddings=False),
    "mqa-sinusoidal": dict(arch="decoder", pos="sinusoidal", n_kv_head=1, activation="relu"),
    "window": dict(arch="decoder", pos="rope", sliding_window=4, norm="rmsnorm"),
    "shared-postnorm": dict(arch="decoder", unique_layers=1, norm_position="post", n_layer=4),
    "head-dim": dict(arch="decoder", pos="rope", head_dim=16, n_kv_head=2),
}


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY, **kw})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_valid_and_round_trips_json(name):
    config = ModelConfig.from_name(name)
    again = ModelConfig.from_json_dict(json.loads(config.to_json()))
    assert again == config


def test_presets_have_published_sizes():
    assert build_model(ModelConfig.from_name("gpt2-124m")).num_parameters() == 124_439_808
    mini = build_model(ModelConfig.from_name("gpt-mini")).num_parameters()
    assert 9e6 < mini < 11e6


@pytest.mark.parametrize("kw,match", [
    (dict(arch="rnn"), "arch='rnn' is not supported; allowed: decoder | encoder | encoder_decoder"),
    (dict(d_model=30, n_head=4), "not divisible by n_head"),
    (dict(n_kv_head=3), "multiple of n_kv_head"),
    (dict(dropout=1.5), "dropout=1.5 is out of range"),
    (dict(n_layer=0), "n_layer=0 is out of range"),
    (dict(norm="batchnorm"), "allowed: layernorm | rmsnorm"),
    (dict(unique_layers=3), "must divide n_layer"),
])
def test_config_errors_name_the_field(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kw)


def test_overrides_parse_json_values_and_reject_unknown_fields():
    assert parse_overrides(["n_layer=4", "dropout=0.1", "bias=false", "name=x"]) == {
        "n_layer": 4, "dropout": 0.1, "bias": False, "name": "x"}
    with pytest.raises(ConfigError, match="unknown config field"):
        parse_overrides(["n_layers=4"])
    with pytest.raises(ConfigError, match="unknown model preset"):
        ModelConfig.from_name("gpt-3")


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_causal_masking_future_tokens_never_change_past_logits(name):
    model = build_model(tiny(**DECODERS[name])).eval()
    ids = torch.randint(0, 97, (2, 16))
    t = 9
    changed = ids.clone()
    changed[:, t + 1:] = torch.randint(0, 97, (2, 16 - t - 1))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])  # and the future positions do see them


def test_sliding_window_limits_what_a_query_sees():
    model = build_model(tiny(**DECODERS["window"])).eval()
    ids = torch.randint(0, 97, (1, 16))
    changed = ids.clone()
    changed[0, 2] = (ids[0, 2] + 1) % 97
    with torch.no_grad():
        a, b = model(ids), model(changed)
    # with one layer of window 4, position 10 can only be reached from 2 through 2 layers x 3 steps = 6 < 8
    torch.testing.assert_close(a[0, 10:], b[0, 10:], rtol=0, atol=1e-6)
    assert not torch.allclose(a[0, 2:5], b[0, 2:5])


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_right_padding_never_changes_real_positions(name):
    model = build_model(tiny(**DECODERS[name])).eval()
    ids = torch.randint(1, 97, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], 1).long()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), model(padded, mask)[:, :10], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["gpt", "llama-gqa", "mqa-sinusoidal"])
def test_left_padding_keeps_positions_and_outputs(name):
    model = build_model(tiny(**DECODERS[name])).eval()
    ids = torch.randint(1, 97, (1, 10))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 5), torch.ones(1, 10)], 1).long()
    with torch.no_grad():
        out = model(padded, mask)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(model(ids), out[:, 5:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(norm_position="post", embed_norm=True, type_vocab_size=2, mlm_transform=True),
                                dict(pos="rope", norm="rmsnorm", activation="geglu")])
def test_encoder_padding_never_changes_real_positions(kw):
    model = build_model(tiny(arch="encoder", **kw)).eval()
    ids = torch.randint(1, 97, (1, 10))
    padded = torch.cat([ids, torch.randint(1, 97, (1, 5))], 1)  # garbage under the mask
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 5)], 1).long()
    with torch.no_grad():
        torch.testing.assert_close(model.encode(ids), model.encode(padded, mask)[:, :10], rtol=0, atol=1e-5)
        full = model.encode(padded)
    assert not torch.allclose(full[:, :10], model.encode(ids))  # bidirectional: unmasked tokens are seen


def test_encoder_decoder_masks_source_padding_and_is_causal_in_the_target():
    model = build_model(tiny(arch="encoder_decoder", pos="sinusoidal", embed_scale=True, n_decoder_layer=3)).eval()
    src = torch.randint(1, 97, (1, 7))
    src_padded = torch.cat([src, torch.randint(1, 97, (1, 3))], 1)
    src_mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 3)], 1).long()
    tgt = torch.randint(1, 97, (1, 9))
    with torch.no_grad():
        a = model(src, decoder_input_ids=tgt)
        b = model(src_padded, src_mask, decoder_input_ids=tgt)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        tgt2 = tgt.clone()
        tgt2[0, 6:] = (tgt[0, 6:] + 1) % 97
        c = model(src, decoder_input_ids=tgt2)
    torch.testing.assert_close(a[:, :6], c[:, :6], rtol=0, atol=1e-6)
    assert model.encode(src).shape == (1, 7, 32)
    assert model(src).shape == (1, 7, 97)  # the input shifted right as decoder input, as BART


def test_sdpa_matches_explicit_attention_with_gqa():
    from lmforge.model.blocks import build_attn_mask

    model = build_model(tiny(**DECODERS["llama-gqa"])).eval()
    attn = model.decoder.layers[0].attn
    x = torch.randn(2, 6, 32)
    mask = build_attn_mask(6, 6, causal=True)
    with torch.no_grad():
        y = attn(x, mask)
        q = attn.q_proj(x).view(2, 6, 4, 8).transpose(1, 2)
        k = attn.k_proj(x).view(2, 6, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
        v = attn.v_proj(x).view(2, 6, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
        scores = q @ k.transpose(-1, -2) / 8 ** 0.5
        scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
        ref = attn.o_proj((F.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_layer_sharing_reuses_parameters():
    shared = build_model(tiny(arch="decoder", n_layer=4, unique_layers=1))
    separate = build_model(tiny(arch="decoder", n_layer=4))
    per_block = sum(p.numel() for p in separate.decoder.layers[0].parameters())
    assert separate.num_parameters() - shared.num_parameters() == 3 * per_block
    assert len(shared.decoder.layers) == 1 and shared.decoder.n_layers == 4


def test_tied_embeddings_are_one_tensor_and_saved_once(tmp_path):
    import lmforge

    model = build_model(tiny(arch="decoder"))
    assert model.lm_head.weight is model.tok_embed.weight
    lmforge.save(model, tmp_path / "ck")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ck" / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in f.keys()
    loaded = lmforge.load(tmp_path / "ck")
    assert loaded.lm_head.weight is loaded.tok_embed.weight
    ids = torch.randint(0, 97, (2, 8))
    torch.testing.assert_close(loaded(ids), model.eval()(ids))


def test_too_long_input_is_a_clear_error():
    from lmforge.errors import LmforgeError

    model = build_model(tiny(arch="decoder"))
    with pytest.raises(LmforgeError, match="longer than the model's context_length=32"):
        model(torch.zeros(1, 40, dtype=torch.long))


@pytest.mark.parametrize("name", ["gpt-nano", "llama-nano", "bert-mini", "transformer-small"])
def test_parameter_count_of_a_deep_shape_is_counted_from_two_blocks(name):
    """The memory check counts deep shapes from one and two blocks (a million meta blocks would take tens of GiB);
    the count must equal building the whole shape, with sharing and a separate decoder depth too."""
    import dataclasses

    from lmforge.model.meta import build_empty, parameter_count

    config = ModelConfig(**PRESETS[name])
    shapes = [dict(n_layer=16), dict(n_layer=18, unique_layers=3)]
    if config.arch == "encoder_decoder":
        shapes.append(dict(n_layer=13, n_decoder_layer=7))
    for extra in shapes:
        shape = dataclasses.replace(config, **extra)
        assert parameter_count(shape) == build_empty(shape).num_parameters(), extra


@pytest.mark.parametrize("padded", [False, True])
def test_grouped_query_attention_through_sdpa_equals_repeated_heads(monkeypatch, padded):
    """SDPA's own grouped-query path (enable_gqa: keys and values not repeated) gives the outputs and gradients of
    the repeated-heads path, with and without a padding mask (cached decoding is covered by the parity tests
    against transformers, which run the GQA path)."""
    import lmforge.model.blocks as blocks

    if not blocks.SDPA_GQA:
        pytest.skip("this torch has no enable_gqa")
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("llama-tiny", n_layer=2, d_model=64, n_head=4, n_kv_head=2, vocab_size=50,
                                context_length=32)
    model = build_model(cfg)
    ids = torch.randint(0, 50, (2, 12))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, :5] = 0

    def run():
        model.zero_grad()
        logits = model(ids, mask if padded else None)
        logits.float().pow(2).mean().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fused, fused_grads = run()
    monkeypatch.setattr(blocks, "SDPA_GQA", False)
    repeated, repeated_grads = run()
    torch.testing.assert_close(fused, repeated, rtol=1e-5, atol=1e-5)
    for a, b in zip(fused_grads, repeated_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
