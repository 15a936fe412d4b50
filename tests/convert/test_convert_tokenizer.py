"""A Hugging Face checkpoint's tokenizer.json used as is: the same ids as transformers.AutoTokenizer on strings
with Chinese, emoji and odd whitespace, special tokens and tokenizer_config.json semantics honoured, and the
Jinja chat template rendered as transformers renders it."""

from __future__ import annotations

import json

import pytest

transformers = pytest.importorskip("transformers")

from lmforge import Tokenizer  # noqa: E402

from _hf_fixtures import CORPUS, TEXTS, hf_tokenizer  # noqa: E402

STRINGS = TEXTS + [
    "",
    " ",
    "\t\t\n",
    "trailing space ",
    "  leading spaces",
    "mixed 中文 and English 😀 in one line\r\nwith CRLF",
    "🇫🇷🇩🇪 flags and skin tones 👋🏿👋🏻",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ and ｶﾀｶﾅ",
    "combining e\u0301 and precomposed é",
    "<s> literal </s> [CLS] specials <|endoftext|> in text",
] + CORPUS[:8]


def _save(family: str, folder, **config_updates):
    tok = hf_tokenizer(family)
    tok.save_pretrained(folder)
    if config_updates:
        path = folder / "tokenizer_config.json"
        config = json.loads(path.read_text())
        config.update(config_updates)
        path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "llama", "bert", "roberta"])
def test_same_ids_as_autotokenizer(family, tmp_path):
    folder = _save(family, tmp_path / family)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    tok = Tokenizer.load(folder)
    for text in STRINGS:
        ids = ref(text)["input_ids"]
        assert tok(text) == ids, text  # with the special tokens transformers adds by default
        assert tok.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text
        assert tok.decode(ids) == ref.decode(ids), text
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True), text
    for role in ("bos", "eos", "pad", "unk", "cls", "sep", "mask"):
        assert getattr(tok, f"{role}_id") == getattr(ref, f"{role}_token_id"), role
    a, b = STRINGS[0], STRINGS[1]
    assert tok.encode_pair(a, b)[0] == ref(a, b)["input_ids"]


def test_tokenizer_config_semantics(tmp_path):
    """Padding/truncation stored in tokenizer.json do not apply to a plain call; add_bos_token/add_eos_token in
    tokenizer_config.json change nothing (transformers 5 keeps tokenizer.json's post-processor); special tokens may
    come from special_tokens_map.json only; added tokens listed only in tokenizer_config.json are added."""
    folder = _save("llama", tmp_path / "tok", add_bos_token=True, add_eos_token=True)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["padding"] = {"strategy": {"Fixed": 64}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 2,
                       "pad_type_id": 0, "pad_token": "</s>"}
    data["truncation"] = {"max_length": 5, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    tok = Tokenizer.load(folder)
    for text in STRINGS:
        assert tok(text) == ref(text)["input_ids"], text
    ids = tok("hello world again and again")
    assert ids[0] == tok.bos_id and ids[-1] != tok.eos_id and len(ids) > 5

    # roles from special_tokens_map.json when tokenizer_config.json does not name them
    config = json.loads((folder / "tokenizer_config.json").read_text())
    roles = {k: config.pop(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps(roles))
    tok = Tokenizer.load(folder)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)

    # a token declared only in tokenizer_config.json's added_tokens_decoder
    entry = {"content": "<|tool|>", "special": True, "lstrip": False, "rstrip": False, "normalized": False,
             "single_word": False}
    config.setdefault("added_tokens_decoder", {})[str(len(tok))] = entry
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    tok = Tokenizer.load(folder)
    assert tok.token_to_id("<|tool|>") == ref.convert_tokens_to_ids("<|tool|>") == len(tok) - 1
    assert tok("call <|tool|> now") == ref("call <|tool|> now")["input_ids"]


def test_chat_template_renders_as_transformers(tmp_path):
    folder = _save("llama", tmp_path / "chat")
    assert (folder / "chat_template.jinja").exists()  # transformers 5 saves the template beside the config
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    tok = Tokenizer.load(folder)
    messages = [{"role": "system", "content": "skipped by {% continue %}"},
                {"role": "user", "content": "Bonjour, ça va ? 你好 <b>&</b>"},
                {"role": "assistant", "content": "Très bien 😀"},
                {"role": "user", "content": "odd  \t whitespace\n"}]
    for prompt in (False, True):
        expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert tok.apply_chat_template(messages, add_generation_prompt=prompt) == expected
    # the template stored inside tokenizer_config.json (older checkpoints) is read too
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    assert Tokenizer.load(folder).apply_chat_template(messages) == ref.apply_chat_template(messages, tokenize=False)
