import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge import ModelConfig, build_model
from lmforge.checkpoint import load_adapter, save_adapter
from lmforge.model.lora import LoRALinear, apply_lora, merge_lora, trainable_fraction
from lmforge.cli import main
from lmforge.errors import ConfigError
from lmforge.finetune.classify import finetune_classify
from lmforge.model.heads import with_head
from lmforge.model.trainable import apply_method

from _finetune_data import TINY, encoder_tokenizer, sentiment_rows, src, tiny_options, way, write_table

CFG = dict(vocab_size=97, context_length=32, d_model=32, n_layer=2, n_head=4)


def _randomize_lora(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def test_trainable_fraction_counts_exactly_the_adapter_and_head():
    model = with_head(build_model(ModelConfig(arch="encoder", **CFG)), "classify", ["a", "b", "c"])
    total = model.num_parameters()
    info = apply_method(model, "lora", lora_rank=4, lora_targets="q,v")
    adapter = 2 * 2 * (4 * 32 + 32 * 4)  # layers x (q, v) x (A + B)
    head = 32 * 3 + 3
    assert info["trainable"] == adapter + head and info["total"] == total + adapter
    assert trainable_fraction(model) == (adapter + head, total + adapter)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n in names if ".lora_" in n or n.startswith("classifier.")} and len(names) == 10


@pytest.mark.parametrize("arch", ["decoder", "encoder_decoder"])
def test_merge_gives_the_outputs_of_the_adapted_model(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, **CFG, activation="swiglu" if arch == "decoder" else "gelu"))
    ids = torch.randint(0, 97, (2, 12))
    base = model(ids).detach()
    swapped = apply_lora(model, rank=4, alpha=8, targets="q,k,v,o,up,down" + (",gate" if arch == "decoder" else ""))
    assert model.config.lora["targets"][:3] == ["q_proj", "k_proj", "v_proj"]
    assert len(swapped) == (2 * 7 if arch == "decoder" else 2 * 6 + 2 * 10)  # decoder blocks have cross-attention
    torch.testing.assert_close(model(ids), base)  # B = 0: the adapted model starts as the base model
    _randomize_lora(model)
    adapted = model(ids).detach()
    assert not torch.allclose(adapted, base)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules()) and model.config.lora is None
    torch.testing.assert_close(model(ids), adapted, rtol=1e-5, atol=1e-5)
    assert not any("lora" in k for k in model.state_dict())


def test_adapter_round_trip_and_checkpoint_reload(tmp_path):
    torch.manual_seed(0)
    model = with_head(build_model(ModelConfig(arch="encoder", **CFG)), "tag", ["O", "B-X", "I-X"])
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_method(model, "lora", lora_rank=2, lora_alpha=4, lora_targets="q_proj,v_proj,up")
    _randomize_lora(model)
    ids = torch.randint(0, 97, (2, 9))
    expected = model(ids).detach()
    save_adapter(model, tmp_path / "adapter", base="tiny")
    stored = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    assert set(stored) == {k for k in model.state_dict() if ".lora_" in k or k.startswith("classifier.")}
    # the adapter on a fresh copy of the base model (built with a language-model head) gives the same outputs
    fresh = build_model(ModelConfig(arch="encoder", **CFG))
    fresh.load_state_dict({k: v for k, v in base_state.items() if not k.startswith("classifier.")}, strict=False)
    adapted = load_adapter(fresh, tmp_path / "adapter")
    assert adapted.config.head == "tag" and adapted.config.lora["rank"] == 2
    torch.testing.assert_close(adapted.eval()(ids), expected)
    # a full checkpoint of an adapted model reloads with its adapter, from the config alone
    lmforge.save(model, tmp_path / "ckpt")
    again = lmforge.load(tmp_path / "ckpt")
    assert isinstance(again.encoder.layers[0].attn.q_proj, LoRALinear)
    torch.testing.assert_close(again(ids), expected)


def test_a_missing_target_lists_the_available_layers():
    model = build_model(ModelConfig(arch="decoder", **CFG))
    with pytest.raises(ConfigError, match=r"--lora-targets query: .*available: down_proj, k_proj, o_proj, q_proj, "
                                          r"up_proj, v_proj"):
        apply_lora(model, targets="q,query")
    with pytest.raises(ConfigError, match="--lora-targets gate_proj"):
        apply_lora(model, targets="gate")  # no gated MLP in this model
    with pytest.raises(ConfigError, match="--lora-rank=0"):
        apply_lora(model, rank=0)


def test_lora_fine_tuning_changes_only_the_adapter_and_head(tmp_path, capsys):
    train = write_table(tmp_path / "train.tsv", sentiment_rows(200, 0))
    tok = tmp_path / "tok"
    encoder_tokenizer().save(tok)
    finetune_classify(model="bert-mini", train=train, out=str(tmp_path / "run"), source=src(str(tok), set_=TINY),
                      method=way("lora", lora_rank=4, lora_targets="q,k,v,o"), options=tiny_options(max_steps=30))
    last = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    # the initial weights: the same build, seeded the same way
    from lmforge.finetune.runs import load_base
    torch.manual_seed(1337)
    base = with_head(load_base("bert-mini", tokenizer=str(tok), set_=TINY, context=32), "classify", ["neg", "pos"],
                     seed=1337)
    changed = {k for k, v in base.state_dict().items() if k in last and not torch.equal(v, last[k])}
    assert changed and all(k.startswith("classifier.") for k in changed)
    assert any(".lora_B" in k and last[k].abs().sum() > 0 for k in last)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    # lora merge gives a plain checkpoint that predicts the same
    assert main(["lora", "merge", str(tmp_path / "run"), "--out", str(tmp_path / "merged")]) == 0
    merged, adapted = lmforge.load(tmp_path / "merged"), lmforge.load(tmp_path / "run")
    assert merged.config.lora is None and adapted.config.lora is not None
    ids = torch.tensor([merged.tokenizer.encode("a wonderful film", add_special_tokens=True)])
    torch.testing.assert_close(merged(ids), adapted(ids), rtol=1e-5, atol=1e-5)
    assert main(["lora", "merge", str(tmp_path / "merged"), "--out", str(tmp_path / "again")]) == 2
    assert "has no LoRA adapter" in capsys.readouterr().err
