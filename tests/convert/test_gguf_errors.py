"""GGUF bad input: what llama.cpp cannot run, unknown types, damaged, truncated and foreign files, and the output
rules of `lmforge export gguf` / `lmforge convert from-gguf`: each a one-line `LmforgeError` (exit status 2 from the
command line), nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

import lmforge  # noqa: E402
from lmforge.cli import main  # noqa: E402
from lmforge.convert.gguf import from_gguf, to_gguf  # noqa: E402
from lmforge.errors import CheckpointError, ConfigError, FileError, LmforgeError  # noqa: E402

from _gguf_fixtures import byte_bpe, perturbed  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 1-layer Llama-style model with lmforge's byte-level BPE, saved as a checkpoint and exported f32."""
    tok = byte_bpe()
    model = perturbed(lmforge.ModelConfig.from_name("llama-tiny", n_layer=1, vocab_size=tok.vocab_size), tok)
    folder = tmp_path_factory.mktemp("gguf-errors")
    lmforge.save(model, folder / "ckpt")
    to_gguf(model, folder / "tiny.gguf")
    return model, folder


def write_gguf(path, arch="llama", metadata=None, tensors=None):
    """A hand-made GGUF file (metadata key -> python value; tensors name -> (array, raw ggml type or None))."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (metadata or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, value)
    for name, (array, raw) in (tensors or {}).items():
        writer.add_tensor(name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


LLAMA_MD = {"llama.block_count": 1, "llama.context_length": 64, "llama.embedding_length": 32,
            "llama.feed_forward_length": 64, "llama.attention.head_count": 2,
            "llama.attention.layer_norm_rms_epsilon": 1e-5}


def llama_tensors(**extra):
    f = lambda *shape: (np.zeros(shape, dtype=np.float32), None)  # noqa: E731
    out = {"token_embd.weight": f(50, 32), "output_norm.weight": f(32), "blk.0.attn_norm.weight": f(32),
           "blk.0.ffn_norm.weight": f(32), "blk.0.attn_q.weight": f(32, 32), "blk.0.attn_k.weight": f(32, 32),
           "blk.0.attn_v.weight": f(32, 32), "blk.0.attn_output.weight": f(32, 32),
           "blk.0.ffn_gate.weight": f(64, 32), "blk.0.ffn_up.weight": f(64, 32), "blk.0.ffn_down.weight": f(32, 64)}
    out.update(extra)
    return out


# ---- export: what llama.cpp cannot run ------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (dict(preset="transformer-small"), "encoder-decoder model to GGUF.*T5"),
    (dict(head="classify", num_labels=2), "head='classify'.*no task heads"),
    (dict(preset="gpt2-124m", n_layer=1, d_model=64, n_head=2, activation="gelu"), "tanh approximation"),
    (dict(activation="geglu"), "use SwiGLU"),
    (dict(norm="layernorm"), "through the Hugging Face llama layout.*norm='layernorm'"),
    (dict(sliding_window=16), "sliding_window=16.*whole context"),
])
def test_export_refuses_what_llama_cpp_cannot_run(overrides, message, tmp_path):
    overrides = dict(overrides)
    preset = overrides.pop("preset", "llama-tiny")
    config = lmforge.ModelConfig.from_name(preset, **{"n_layer": 1, "vocab_size": 300, **overrides})
    with pytest.raises(LmforgeError, match=message) as e:
        to_gguf(lmforge.build_model(config), tmp_path / "out.gguf", tokenizer=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.gguf").exists()


def test_export_refuses_unknown_type_and_a_tokenizer_llama_cpp_lacks(tiny, tmp_path):
    model, _ = tiny
    with pytest.raises(ConfigError, match=r"--type 'q3_k' is not a GGUF type.*q4_k"):
        to_gguf(model, tmp_path / "x.gguf", type="q3_k")
    wordpiece = lmforge.train_tokenizer(["a b c d e f"] * 50, "wordpiece", 600, "encoder", progress=False)
    encoder = lmforge.build_model(lmforge.ModelConfig.from_name("bert-mini", n_layer=1, vocab_size=600))
    encoder.tokenizer = wordpiece
    with pytest.raises(LmforgeError, match=r"wordpiece tokenizer.*--no-tokenizer"):
        to_gguf(encoder, tmp_path / "x.gguf")
    assert to_gguf(encoder, tmp_path / "x.gguf", tokenizer=False).tokenizer is None
    assert from_gguf(tmp_path / "x.gguf").tokenizer is None


def test_export_output_rules(tiny, tmp_path):
    model, folder = tiny
    other = tmp_path / "notes.gguf"
    other.write_text("not mine")
    with pytest.raises(ConfigError, match="does not hold a GGUF file"):
        to_gguf(model, other, overwrite=True)
    assert other.read_text() == "not mine"
    done = to_gguf(model, tmp_path / "m.gguf")
    with pytest.raises(ConfigError, match="pass --overwrite"):
        to_gguf(model, done.path)
    assert to_gguf(model, done.path, type="q8_0", overwrite=True).type == "q8_0"
    with pytest.raises(ConfigError, match="is a folder"):
        to_gguf(model, tmp_path)
    with pytest.raises(ConfigError, match="also an input"):
        to_gguf(folder / "ckpt", folder / "ckpt", overwrite=True)


# ---- import: damaged and foreign files ---------------------------------------------------------------------------

def test_import_refuses_damaged_and_foreign_files(tiny, tmp_path):
    _, folder = tiny
    with pytest.raises(CheckpointError, match="no GGUF file at .*does not exist"):
        lmforge.load(tmp_path / "missing.gguf")
    text = tmp_path / "text.gguf"
    text.write_text("hello")
    with pytest.raises(FileError, match="not a GGUF file"):
        lmforge.load(text)
    data = (folder / "tiny.gguf").read_bytes()
    for cut, message in ((len(data) - 1000, "truncated"), (200, "damaged")):
        short = tmp_path / f"cut{cut}.gguf"
        short.write_bytes(data[:cut])
        with pytest.raises(FileError, match=message) as e:
            lmforge.load(short)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("arch, metadata, tensors, error, message", [
    ("mamba", {}, {"token_embd.weight": (np.zeros((4, 4), np.float32), None)}, CheckpointError,
     "general.architecture='mamba' is not supported.*llama | qwen2 | gpt2 | bert"),
    ("llama", {k: v for k, v in LLAMA_MD.items() if k != "llama.block_count"}, llama_tensors(), CheckpointError,
     "metadata key llama.block_count is missing"),
    ("llama", LLAMA_MD, llama_tensors(**{"blk.0.ffn_gate_exps.weight": (np.zeros((2, 4), np.float32), None)}),
     CheckpointError, "1 tensor\\(s\\) with no place in a llama model.*blk.0.ffn_gate_exps.weight"),
    ("llama", LLAMA_MD, {k: v for k, v in llama_tensors().items() if k != "blk.0.ffn_up.weight"}, CheckpointError,
     "missing 1 tensor.*blk.0.ffn_up.weight"),
    ("llama", LLAMA_MD, llama_tensors(**{"blk.0.attn_q.weight": (np.zeros((16, 32), np.float32), None)}),
     CheckpointError, "blk.0.attn_q.weight has shape \\[16, 32\\].*implies \\[32, 32\\]"),
    ("llama", LLAMA_MD, llama_tensors(**{"blk.0.attn_q.weight": (np.zeros((32, 40), np.uint8),
                                                                  gguf.GGMLQuantizationType.Q8_1)}),
     CheckpointError, "stored as Q8_1, which the gguf package cannot dequantize"),
    ("llama", {**LLAMA_MD, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such-pre"}, llama_tensors(),
     CheckpointError, "tokenizer.ggml.model='gpt2' but tokenizer.ggml.tokens is empty"),
])
def test_import_refuses_what_it_cannot_read(arch, metadata, tensors, error, message, tmp_path):
    path = write_gguf(tmp_path / "hand.gguf", arch, metadata, tensors)
    with pytest.raises(error, match=message) as e:
        from_gguf(path)
    assert "\n" not in str(e.value)


def test_hand_made_file_loads_and_unknown_pre_is_named(tmp_path):
    """The same hand-made llama file loads once it is complete; a byte-level vocabulary with a `pre` llama.cpp does
    not know is refused in llama.cpp mode and read as GPT-2 splitting in transformers mode."""
    model = from_gguf(write_gguf(tmp_path / "ok.gguf", "llama", LLAMA_MD, llama_tensors()))
    assert model.config.n_layer == 1 and model.config.vocab_size == 50 and model.tokenizer is None
    writer = gguf.GGUFWriter(str(tmp_path / "pre.gguf"), "llama")
    for key, value in LLAMA_MD.items():
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(key, value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("no-such-pre")
    writer.add_token_list(["a", "b", "ab"] + [f"t{i}" for i in range(47)])
    writer.add_token_types([1] * 50)
    writer.add_token_merges(["a b"])
    for name, (array, raw) in llama_tensors().items():
        writer.add_tensor(name, array, raw_dtype=raw)
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(CheckpointError, match="tokenizer.ggml.pre='no-such-pre'.*tokenizer_mode='transformers'"):
        from_gguf(tmp_path / "pre.gguf")
    assert from_gguf(tmp_path / "pre.gguf", tokenizer_mode="transformers").tokenizer.encode("ab") == [2]


# ---- the commands ------------------------------------------------------------------------------------------------

def test_commands_export_convert_and_load(tiny, tmp_path, capsys):
    model, folder = tiny
    out = tmp_path / "m.q8_0.gguf"
    assert main(["export", "gguf", str(folder / "ckpt"), "--out", str(out), "--type", "q8_0"]) == 0
    printed = capsys.readouterr().out
    assert "exported llama (through the Hugging Face llama layout, q8_0)" in printed and "Q8_0" in printed
    assert main(["export", "gguf", str(folder / "ckpt"), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["export", "gguf", str(folder / "ckpt"), "--out", str(out), "--type", "q9"]) == 2
    assert main(["convert", "from-gguf", str(folder / "tiny.gguf"), "--out", str(tmp_path / "back")]) == 0
    assert "converted GGUF llama (F32 " in capsys.readouterr().out
    back = lmforge.load(tmp_path / "back")
    assert torch.equal(back.tok_embed.weight, model.tok_embed.weight)
    assert back.tokenizer.encode("def f(x):") == model.tokenizer.encode("def f(x):")
    assert main(["convert", "from-gguf", str(folder / "tiny.gguf"), "--out", str(tmp_path / "back")]) == 2
    assert main(["convert", "from-gguf", str(folder / "tiny.gguf"), "--out", str(tmp_path / "back"),
                 "--overwrite", "--tokenizer-mode", "transformers", "--dtype", "bf16"]) == 0
    assert lmforge.load(tmp_path / "back").dtype == torch.bfloat16
    err = capsys.readouterr().err
    assert main(["convert", "from-gguf", str(folder / "ckpt"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a folder; give the path of a .gguf file" in err
