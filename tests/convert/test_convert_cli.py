"""The `lmforge convert from-hf | to-hf` commands end to end, and hub ids ("hf:org/name") without a network."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

import lmforge  # noqa: E402
from lmforge.cli import main  # noqa: E402
from lmforge.errors import CheckpointError  # noqa: E402

from _hf_fixtures import TEXTS, batch, hf_tokenizer, max_diff, randomize, save_hf  # noqa: E402

T = transformers


def test_convert_commands_round_trip(tmp_path, capsys):
    config = T.BartConfig(vocab_size=512, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                          max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          decoder_start_token_id=2)
    hf = randomize(T.BartForConditionalGeneration(config))
    tok = hf_tokenizer("bart")
    src = save_hf(hf, tok, tmp_path / "hf-model")
    assert main(["convert", "from-hf", str(src), str(tmp_path / "lm-model")]) == 0
    assert "converted bart (BartForConditionalGeneration) -> " in capsys.readouterr().out
    meta = json.loads((tmp_path / "lm-model" / "config.json").read_text())
    assert meta["hf_source"]["model_type"] == "bart" and "lmforge_config" in meta
    assert (tmp_path / "lm-model" / "generation_config.json").exists()

    lm = lmforge.load(tmp_path / "lm-model")  # an ordinary lmforge checkpoint now
    enc, dec = batch(tok), batch(tok, list(reversed(TEXTS)))
    with torch.no_grad():
        ref = hf.eval()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                        decoder_input_ids=dec["input_ids"], decoder_attention_mask=dec["attention_mask"]).logits
        got = lm(enc["input_ids"], enc["attention_mask"], decoder_input_ids=dec["input_ids"],
                 decoder_attention_mask=dec["attention_mask"])
    assert max_diff(ref, got, dec["attention_mask"]) <= 1e-4

    assert main(["convert", "to-hf", str(tmp_path / "lm-model"), str(tmp_path / "hf-out"), "--dtype", "bf16",
                 "--max-shard-size", "100KB"]) == 0
    out = capsys.readouterr().out
    assert "exported bart (BartForConditionalGeneration, bfloat16)" in out and "model.safetensors.index.json" in out
    again = T.AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "hf-out", dtype=torch.float32).eval()
    with torch.no_grad():
        logits = again(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       decoder_input_ids=dec["input_ids"], decoder_attention_mask=dec["attention_mask"]).logits
    assert max_diff(ref, logits, dec["attention_mask"]) < 0.1  # bf16 weights
    generation = json.loads((tmp_path / "hf-out" / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == 2 and generation["eos_token_id"] == 2
    # transformers generates from the export (BART decodes from decoder_start_token_id)
    out_ids = again.generate(enc["input_ids"][:1], attention_mask=enc["attention_mask"][:1], max_new_tokens=3,
                             do_sample=False)
    assert out_ids.shape[1] >= 2 and int(out_ids[0, 0]) == 2


def test_cli_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["convert", "from-hf", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lmforge: error: no model at") and "\n" not in err
    folder = save_hf(T.GPT2LMHeadModel(T.GPT2Config(vocab_size=512, n_embd=32, n_layer=1, n_head=4,
                                                    n_positions=32)), hf_tokenizer("gpt2"), tmp_path / "m")
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "model_type": "gpt_neox"}))
    assert main(["convert", "from-hf", str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model_type='gpt_neox' is not supported; lmforge converts bart | bert | gpt2" in err
    assert not (tmp_path / "out").exists()


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as e:
        lmforge.load("hf:lmforge-test-org/no-such-model")
    message = str(e.value)
    assert "HF_HUB_OFFLINE=1" in message and "not in the local Hugging Face cache" in message
    assert "pass the local folder" in message and "\n" not in message


def test_hub_id_unreachable_is_a_clear_error(tmp_path):
    """With the network path on but the hub unreachable (a closed local port), the error says so at once."""
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path),
           "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    code = ("import lmforge\n"
            "try:\n    lmforge.load('hf:lmforge-test-org/no-such-model')\n"
            "except lmforge.LmforgeError as e:\n    print('ERROR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120).stdout
    assert out.startswith("ERROR 'lmforge-test-org/no-such-model' is not a local folder and lmforge cannot reach "
                          "the Hugging Face hub"), out
    assert "pass the local folder" in out or "pass a local folder" in out


def test_a_bare_org_name_is_a_local_path_never_a_download(tmp_path, monkeypatch):
    """A typo in a run folder's name ("runs/gpt-mini") is reported as a missing folder, with the explicit form of a
    hub id, and nothing is fetched: the hub endpoint is a closed port, so a download attempt would say so."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        lmforge.load("runs/gpt-mini")
    assert str(e.value) == ("no checkpoint at runs/gpt-mini: the folder does not exist (a Hugging Face hub id is "
                            "written hf:runs/gpt-mini)")
    with pytest.raises(CheckpointError, match="is not a hub id; write hf:ORG/NAME"):
        lmforge.load("hf:no-slash")
