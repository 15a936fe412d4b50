import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmforge.errors import ConfigError, LmforgeError
from lmforge.tokenizer import KINDS, Tokenizer, train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def tokenize(text):\n    return text.split()\n",
    "Le cœur a ses raisons que la raison ne connaît point.",
    "東京は日本の首都です。你好，世界！",
    "emoji 🙂🚀 and tabs\tand  double  spaces\n\n",
] * 20

TOKENIZERS = {(kind, arch): train_tokenizer(CORPUS, kind, 600 if kind != "char" else None, arch, progress=False)
              for kind in KINDS for arch in ("decoder", "encoder")}

# any Unicode text: Chinese, emoji (astral plane), combining marks, odd whitespace, control characters
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200)
PIECES = [" ", "\t", "\n", "\r", "\u00a0", "\u2028", "\u3000", "\u200b", "a", "你", "🙂", "é", "e\u0301", "##", "＃＃",
          "▁", "Ġ", "<s>", "[CLS]"]
WHITESPACE = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXT)
def test_round_trip_is_exact_for_any_unicode(kind, text):
    tok = TOKENIZERS[(kind, "decoder")]
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None)
@given(text=WHITESPACE)
def test_round_trip_is_exact_with_odd_whitespace_and_markers(kind, text):
    tok = TOKENIZERS[(kind, "encoder")]
    assert tok.decode(tok.encode(text)) == text


def test_pure_character_vocabulary_has_unk_for_unseen_characters():
    tok = train_tokenizer(["abc abc"], "char", None, "decoder", byte_fallback=False, progress=False)
    assert tok.vocab_size == 4 + 2 + 4  # specials (pad unk bos eos), chat tokens, 'a' 'b' 'c' ' '
    assert tok.encode("abz") == [tok.token_to_id("a"), tok.token_to_id("b"), tok.unk_id]


@pytest.mark.parametrize("arch,roles,encoded", [
    ("decoder", {"pad", "unk", "bos", "eos"}, lambda t, ids: [t.bos_id] + ids),
    ("encoder", {"pad", "unk", "cls", "sep", "mask"}, lambda t, ids: [t.cls_id] + ids + [t.sep_id]),
    ("encoder_decoder", {"pad", "unk", "bos", "eos", "mask"}, lambda t, ids: ids + [t.eos_id]),
])
def test_special_tokens_are_set_per_architecture(arch, roles, encoded):
    tok = train_tokenizer(CORPUS, "bpe", 400, arch, progress=False)
    assert {r for r, t in tok.special.items() if t} == roles
    assert tok.pad_id == 0
    ids = tok.encode("hello world")
    assert tok.encode("hello world", add_special_tokens=True) == encoded(tok, ids)
    assert tok.decode(encoded(tok, ids), skip_special_tokens=True) == "hello world"


def test_vocabulary_too_small_for_the_special_tokens_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"vocab_size=100 is too small.*256 byte tokens.*use --vocab-size >= 263"):
        train_tokenizer(CORPUS, "bpe", 100, "decoder", progress=False)
    with pytest.raises(ConfigError, match="use --vocab-size >= 6"):
        train_tokenizer(CORPUS, "char", 5, "encoder", byte_fallback=False, progress=False)


def test_saved_files_load_in_lmforge_and_transformers_with_identical_ids(tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = TOKENIZERS[("bpe", "encoder")]
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.sha256 == tok.sha256 and again.special == tok.special
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in ["hello world", "你好 🙂 \t x", "a  b\n\nc"]:
        assert hf(text)["input_ids"] == again.encode(text, add_special_tokens=True)
    assert hf.mask_token == "[MASK]" and hf.cls_token_id == tok.cls_id


def test_missing_or_broken_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(LmforgeError, match="no tokenizer at"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(LmforgeError, match="is not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)


def test_chat_template_renders_messages():
    tok = TOKENIZERS[("bpe", "decoder")]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tok.encode("<|im_start|>")[0] == tok.token_to_id("<|im_start|>")


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "char"])
def test_training_is_reproducible(kind):
    """The same corpus and options give the same tokenizer (Unigram is not reproducible upstream)."""
    shas = {train_tokenizer(CORPUS * 3, kind, 700 if kind != "char" else None, "encoder", progress=False).sha256
            for _ in range(4)}
    assert len(shas) == 1
