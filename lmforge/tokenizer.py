"""Tokenizers on the `tokenizers` library: byte-level BPE, WordPiece, Unigram and character level.

Every kind lmforge trains is lossless: `decode(encode(text)) == text` for any Unicode text.
- bpe, wordpiece, unigram work on bytes mapped to 256 printable symbols (GPT-2's byte-level scheme), with all
  256 symbols in the vocabulary, so nothing is ever unknown. WordPiece marks word-internal pieces with "＃＃"
  (fullwidth, outside the byte alphabet) instead of BERT's "##", so a literal "##" in the text is never
  mistaken for a continuation marker.
- char keeps one token per character seen in training and falls back to UTF-8 byte tokens (<0xNN>) for the
  rest (`byte_fallback=False` gives a pure character vocabulary with <unk>, as nanoGPT's).

Files are the Hugging Face standard: `tokenizer.json` and `tokenizer_config.json` (special tokens, chat
template), so `transformers.AutoTokenizer` reads them too.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import numbers
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from . import io as lio
from .corpus import CorpusReader
from .errors import ConfigError, DataError, LmforgeError, choices

Kind = Literal["bpe", "wordpiece", "unigram", "char"]
KINDS = ("bpe", "wordpiece", "unigram", "char")
ROLES = ("pad", "unk", "bos", "eos", "mask", "cls", "sep")
WORDPIECE_PREFIX = "＃＃"

# special tokens per architecture, in id order (pad is always id 0)
SPECIALS: dict[str, dict[str, str]] = {
    "decoder": {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"},
    "encoder": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "encoder_decoder": {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "mask": "<mask>"},
}
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Tokenizer:
    """A `tokenizers.Tokenizer` with named special tokens and a chat template."""

    def __init__(self, tok: HFTokenizer, special: dict[str, str | None] | None = None,
                 chat_template: str | None = None, extra: dict[str, Any] | None = None) -> None:
        self._tok = tok
        self.special = {role: (special or {}).get(role) for role in ROLES}
        self.chat_template = chat_template
        self.extra = dict(extra or {})  # other tokenizer_config.json entries, kept on save
        for role, token in self.special.items():
            if token is not None and tok.token_to_id(token) is None:
                raise LmforgeError(f"special token {role}={token!r} is not in the vocabulary")

    # ---- ids ------------------------------------------------------------------------------------------
    @property
    def backend(self) -> HFTokenizer:
        return self._tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _id(self, role: str) -> int | None:
        token = self.special[role]
        return None if token is None else self._tok.token_to_id(token)

    pad_id = property(lambda self: self._id("pad"))
    unk_id = property(lambda self: self._id("unk"))
    bos_id = property(lambda self: self._id("bos"))
    eos_id = property(lambda self: self._id("eos"))
    mask_id = property(lambda self: self._id("mask"))
    cls_id = property(lambda self: self._id("cls"))
    sep_id = property(lambda self: self._id("sep"))

    @property
    def start_id(self) -> int | None:
        """The id that opens a sequence: BOS, else [CLS] (BERT-style vocabularies have no BOS)."""
        return self.bos_id if self.bos_id is not None else self.cls_id

    @property
    def end_id(self) -> int | None:
        """The id that closes a sequence: EOS, else [SEP]."""
        return self.eos_id if self.eos_id is not None else self.sep_id

    @property
    def special_ids(self) -> set[int]:
        ids = {self._tok.token_to_id(t.content) for t in self._tok.get_added_tokens_decoder().values() if t.special}
        ids |= {i for i in (self._id(r) for r in ROLES) if i is not None}
        return ids

    @property
    def doc_prefix(self) -> list[int]:
        """Ids that open a document in a packed token stream (BOS, where the tokenizer has one)."""
        return [self.bos_id] if self.bos_id is not None else []

    @property
    def doc_suffix(self) -> list[int]:
        """Ids that close a document (EOS, or SEP for encoders)."""
        return [self.end_id] if self.end_id is not None else []

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    # ---- encode / decode ------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise LmforgeError(f"encode takes a text (str); got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_pair(self, a: str, b: str) -> tuple[list[int], list[int]]:
        enc = self._tok.encode(a, b, add_special_tokens=True)
        return enc.ids, enc.type_ids

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = list(ids)
        bad = next((i for i in ids if not isinstance(i, numbers.Integral) or not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise LmforgeError(f"token id {bad!r} is not in this tokenizer's vocabulary (ids 0 .. {self.vocab_size - 1})")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return self._tok.decode_batch(batch, skip_special_tokens=skip_special_tokens)

    def __call__(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.encode(text, add_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    # ---- chat -----------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = False,
                            **kwargs: Any) -> str:
        """Render chat messages with the tokenizer's Jinja template (or the default ChatML one)."""
        from jinja2 import TemplateError

        tokens = {f"{r}_token": t for r, t in self.special.items() if t is not None}
        try:
            template = _compiled_template(self.chat_template or DEFAULT_CHAT_TEMPLATE)
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **tokens, **kwargs)
        except TemplateError as e:  # a syntax error, or what the sandbox refuses (attribute access, unsafe calls)
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise LmforgeError(f"the tokenizer's chat template cannot be rendered ({type(e).__name__}: {first}); fix "
                               "chat_template in tokenizer_config.json or remove it to use ChatML") from None

    # ---- files ----------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lio.write_text(folder / "tokenizer.json", self._tok.to_str(pretty=True))
        config = dict(self.extra)
        config.update({f"{r}_token": t for r, t in self.special.items() if t is not None})
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config.setdefault("clean_up_tokenization_spaces", False)
        if self.chat_template:
            config["chat_template"] = self.chat_template
        lio.write_json(folder / "tokenizer_config.json", config)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Load from a folder holding tokenizer.json (and tokenizer_config.json), a tokenizer.json file, or a
        training run folder (its best/ or last/ checkpoint)."""
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise LmforgeError(f"Tokenizer.load needs the path of a tokenizer folder or tokenizer.json; got {path!r}")
        path = Path(path)
        if path.is_file() and path.name == "vocab.txt" and not (path.parent / "tokenizer.json").exists():
            path = path.parent  # a BERT vocabulary: the folder's WordPiece tokenizer
        if path.is_dir() and not (path / "tokenizer.json").exists():
            path = next((path / sub for sub in ("best", "last") if (path / sub / "tokenizer.json").exists()), path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.exists() and path.is_dir() and (path / "vocab.txt").exists():
            tok = _wordpiece_from_vocab(path)  # a Hugging Face BERT-style folder with the slow tokenizer's files
        elif not file.exists():
            raise LmforgeError(f"no tokenizer at {path}: expected {file}; train one with `lmforge tokenizer train` "
                               "or point at a folder that holds tokenizer.json")
        else:
            try:
                tok = HFTokenizer.from_file(str(file))
            except Exception as e:  # the Rust error names what is wrong in the file
                raise LmforgeError(f"{file} is not a valid tokenizer.json: {e}") from None
        # as transformers: padding and truncation stored in tokenizer.json apply only when a call asks for them
        tok.no_padding()
        tok.no_truncation()
        config_file = file.parent / "tokenizer_config.json"
        config = lio.read_json(config_file) if config_file.exists() else {}
        _apply_hf_config(tok, config, file.parent)
        special = {}
        for role in ROLES:
            value = config.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None and tok.token_to_id(value) is not None:
                special[role] = value
        if not config:
            special = _guess_special(tok)
        template = config.get("chat_template")
        if template is None and (file.parent / "chat_template.jinja").exists():  # transformers >= 4.43 saves it apart
            template = (file.parent / "chat_template.jinja").read_text(encoding="utf-8")
        if isinstance(template, list):  # several named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default") or next(iter(named.values()), None)
        extra = {k: v for k, v in config.items() if not k.endswith("_token") and k != "chat_template"
                 and k != "added_tokens_decoder"}
        return cls(tok, special, template, extra)

    @property
    def sha256(self) -> str:
        """A hash of the vocabulary and rules (canonical JSON), to check that data and model agree."""
        canonical = json.dumps(json.loads(self._tok.to_str()), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def kind(self) -> str:
        return self.extra.get("lmforge_kind") or json.loads(self._tok.to_str())["model"]["type"].lower()


@functools.lru_cache(maxsize=32)
def _compiled_template(template: str):
    """A chat template compiled once (compiling costs about 1 ms, rendering a few microseconds), in the environment
    Hugging Face templates are written for: loop controls, a tojson that keeps non-ASCII and does not HTML-escape,
    strftime_now and raise_exception."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])

    def raise_exception(message: str):
        raise LmforgeError(f"chat template: {message}")

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.filters["tojson"] = tojson
    return env.from_string(template)


def _apply_hf_config(tok: HFTokenizer, config: dict[str, Any], folder: Path) -> None:
    """What transformers does with a Hugging Face tokenizer_config.json on top of tokenizer.json: special-token
    roles from special_tokens_map.json where the config lacks them, and added tokens the vocabulary lacks.
    (`add_bos_token` / `add_eos_token` are left to tokenizer.json's post-processor, as transformers 5 does.)"""
    from tokenizers import AddedToken

    map_file = folder / "special_tokens_map.json"
    if map_file.exists():
        for key, value in lio.read_json(map_file).items():
            if key.endswith("_token") and key[:-6] in ROLES:
                config.setdefault(key, value)
    added = config.get("added_tokens_decoder") or {}
    for _, entry in sorted(added.items(), key=lambda kv: int(kv[0])):
        if isinstance(entry, dict) and entry.get("content") and tok.token_to_id(entry["content"]) is None:
            token = AddedToken(entry["content"], single_word=entry.get("single_word", False),
                               lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                               normalized=entry.get("normalized", not entry.get("special", False)),
                               special=entry.get("special", False))
            (tok.add_special_tokens if entry.get("special") else tok.add_tokens)([token])


def _wordpiece_from_vocab(folder: Path) -> HFTokenizer:
    """BERT's WordPiece tokenizer from vocab.txt and the options of tokenizer_config.json, as transformers builds
    its fast tokenizer from the same files (lower-casing, accent stripping, Chinese characters, [CLS] ... [SEP])."""
    from tokenizers.implementations import BertWordPieceTokenizer

    config_file = folder / "tokenizer_config.json"
    config = lio.read_json(config_file) if config_file.exists() else {}
    lower = bool(config.get("do_lower_case", True))
    accents = config.get("strip_accents")
    try:
        bert = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=lower,
                                      strip_accents=lower if accents is None else bool(accents),
                                      handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
                                      clean_text=True, unk_token=config.get("unk_token", "[UNK]"),
                                      sep_token=config.get("sep_token", "[SEP]"), cls_token=config.get("cls_token", "[CLS]"),
                                      pad_token=config.get("pad_token", "[PAD]"), mask_token=config.get("mask_token", "[MASK]"))
    except Exception as e:
        raise LmforgeError(f"{folder / 'vocab.txt'} is not a WordPiece vocabulary lmforge can read ({e})") from None
    return bert._tokenizer


def _guess_special(tok: HFTokenizer) -> dict[str, str]:
    """Roles for a bare tokenizer.json, from well-known token spellings."""
    names = {
        "pad": ["<pad>", "[PAD]", "<|pad|>"], "unk": ["<unk>", "[UNK]", "<|unk|>"],
        "bos": ["<s>", "<|begin_of_text|>", "<|endoftext|>", "<bos>"],
        "eos": ["</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"], "mask": ["<mask>", "[MASK]"],
        "cls": ["[CLS]", "<cls>"], "sep": ["[SEP]", "<sep>"],
    }
    return {role: next(t for t in spellings if tok.token_to_id(t) is not None)
            for role, spellings in names.items() if any(tok.token_to_id(t) is not None for t in spellings)}


# ---- training -----------------------------------------------------------------------------------------

def _byte_level(tok: HFTokenizer) -> None:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _post_processor(arch: str, special: dict[str, str], tok: HFTokenizer):
    ids = {role: tok.token_to_id(t) for role, t in special.items()}
    if arch == "encoder":
        cls_t, sep_t = special["cls"], special["sep"]
        return processors.TemplateProcessing(
            single=f"{cls_t} $A {sep_t}", pair=f"{cls_t} $A {sep_t} $B:1 {sep_t}:1",
            special_tokens=[(cls_t, ids["cls"]), (sep_t, ids["sep"])])
    if arch == "encoder_decoder":
        eos = special["eos"]
        return processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A {eos} $B:1 {eos}:1",
                                             special_tokens=[(eos, ids["eos"])])
    bos = special["bos"]
    return processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B:1",
                                         special_tokens=[(bos, ids["bos"])])


def _count_chars(texts: Iterable[str], progress: bool) -> collections.Counter:
    from tqdm.auto import tqdm

    counts: collections.Counter = collections.Counter()
    for text in tqdm(texts, desc="counting characters", unit="doc", disable=not progress, leave=False):
        counts.update(text)
    return counts


def _char_tokenizer(texts: Iterable[str], vocab_size: int | None, special: list[str], byte_fallback: bool,
                    progress: bool) -> HFTokenizer:
    counts = _count_chars(texts, progress)
    if not counts:
        raise DataError("the corpus holds no characters; give files with text")
    budget = None if vocab_size is None else vocab_size - len(special) - (256 if byte_fallback else 0)
    chars = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:budget]
    vocab: dict[str, int] = {}
    for token in special:
        vocab[token] = len(vocab)
    for c in sorted(chars):
        vocab.setdefault(c, len(vocab))
    if byte_fallback:
        for b in range(256):
            vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    unk = next(t for t in special if "unk" in t.lower())
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk, byte_fallback=byte_fallback,
                                 ignore_merges=True))
    # no pre-tokenizer: with no merges, BPE splits text into its characters (3x faster than a per-char split)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return tok


def _complete_wordpiece(tok: HFTokenizer, unk: str, vocab_size: int, n_special: int) -> HFTokenizer:
    """Add every byte symbol, word-initial and continued, so no input is ever [UNK]; drop the last-learned
    pieces to make room, so the vocabulary keeps the size asked for."""
    learned = sorted(json.loads(tok.to_str())["model"]["vocab"].items(), key=lambda kv: kv[1])
    required = [t for s in sorted(pre_tokenizers.ByteLevel.alphabet()) for t in (s, WORDPIECE_PREFIX + s)]
    specials = [t for t, _ in learned[:n_special]]
    required_set = set(required) | set(specials)
    room = max(vocab_size - len(required_set), 0)
    kept = set([t for t, _ in learned[n_special:] if t not in required_set][:room])
    vocab: dict[str, int] = {}
    for token in specials + [t for t, _ in learned[n_special:] if t in required_set or t in kept] + required:
        vocab.setdefault(token, len(vocab))
    model = models.WordPiece(vocab=vocab, unk_token=unk, continuing_subword_prefix=WORDPIECE_PREFIX,
                             max_input_chars_per_word=1_000_000)
    new = HFTokenizer(model)
    new.pre_tokenizer = tok.pre_tokenizer
    return new


def train_tokenizer(
    texts: Iterable[str],
    kind: Kind = "bpe",
    vocab_size: int | None = 8000,
    arch: str = "decoder",
    *,
    min_frequency: int = 2,
    byte_fallback: bool = True,
    chat_tokens: bool | None = None,
    extra_special_tokens: Iterable[str] = (),
    progress: bool = True,
    length: int | None = None,
) -> Tokenizer:
    """Train a tokenizer on an iterable of texts (see `train_tokenizer_files` for files)."""
    if isinstance(texts, (str, bytes, os.PathLike)):
        raise LmforgeError("train_tokenizer takes an iterable of texts, not a path or one text; for files use "
                           "lmforge.tokenizer.train_tokenizer_files(paths)")
    texts = _nonempty(iter(texts))
    if kind not in KINDS:
        raise ConfigError(f"tokenizer kind {kind!r} is not supported; use {choices(KINDS)}")
    if arch not in SPECIALS:
        raise ConfigError(f"arch {arch!r} is not supported; use {choices(SPECIALS)}")
    roles = dict(SPECIALS[arch])
    special = list(roles.values())
    if chat_tokens if chat_tokens is not None else arch == "decoder":
        special += list(CHAT_TOKENS)
    special += [t for t in extra_special_tokens if t not in special]
    base = {"char": 256 if byte_fallback else 0, "wordpiece": 512}.get(kind, 256)
    needed = len(special) + base + 1  # room for at least one learned token
    if vocab_size is not None and vocab_size < needed:
        what = f"{base} byte tokens + " if base else ""
        raise ConfigError(f"vocab_size={vocab_size} is too small for a {kind} tokenizer: it needs {what}"
                          f"{len(special)} special tokens; use --vocab-size >= {needed} (8000 is typical)")
    if kind == "char":
        tok = _char_tokenizer(texts, vocab_size, special, byte_fallback, progress)
    else:
        tok = _train_subword(texts, kind, vocab_size or 8000, special, roles["unk"], min_frequency, progress, length)
    tok.post_processor = _post_processor(arch, roles, tok)
    tok.add_special_tokens(special)  # marks them special (they are already in the vocabulary)
    return Tokenizer(tok, roles, DEFAULT_CHAT_TEMPLATE if arch == "decoder" else None,
                     {"lmforge_kind": kind, "lmforge_arch": arch, "model_max_length": 1_000_000})


def _train_subword(texts: Iterable[str], kind: str, vocab_size: int, special: list[str], unk: str,
                   min_frequency: int, progress: bool, length: int | None) -> HFTokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if kind == "bpe":
        tok = HFTokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=special,
                                      initial_alphabet=alphabet, show_progress=progress)
    elif kind == "wordpiece":
        tok = HFTokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix=WORDPIECE_PREFIX))
        # The trainer gives continuation symbols ids in hash-map order, which breaks ties between merges
        # differently from run to run (huggingface/tokenizers#1794); registering all 256 of them up front, in a
        # fixed order, makes training reproducible. They are plain vocabulary entries in the result.
        continued = [WORDPIECE_PREFIX + c for c in sorted(alphabet)]
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=special + continued, initial_alphabet=alphabet,
                                            continuing_subword_prefix=WORDPIECE_PREFIX, show_progress=progress)
    else:
        tok = HFTokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token=unk,
                                          initial_alphabet=alphabet, show_progress=progress)
    _byte_level(tok)
    tok.train_from_iterator(texts, trainer, length=length)
    if kind == "wordpiece":
        tok = _complete_wordpiece(tok, unk, vocab_size, len(special))
        tok.decoder = decoders.Sequence([decoders.Replace(Regex(f"^{WORDPIECE_PREFIX}"), ""), decoders.ByteLevel()])
    else:
        tok.decoder = decoders.ByteLevel()
    return tok


def is_tokenizer_folder(folder: Path) -> bool:
    """Whether a folder holds a tokenizer alone (not a model or prepared data, which carry one too)."""
    folder = Path(folder)
    return (folder / "tokenizer.json").exists() and not any(
        (folder / name).exists() for name in ("config.json", "manifest.json", "run.json"))


def train_tokenizer_files(
    files: list[str] | str,
    out: str | os.PathLike | None = None,
    kind: Kind = "bpe",
    vocab_size: int | None = 8000,
    arch: str = "decoder",
    overwrite: bool = False,
    **options: Any,
) -> Tokenizer:
    """Train from text/JSONL files or folders (streamed) and save to `out` when given (an earlier tokenizer there is
    replaced only with overwrite=True; the folder is written whole or not at all)."""
    if out is not None:
        lio.check_output(out, what="a tokenizer", overwrite=overwrite, ours=is_tokenizer_folder,
                         inputs=[files] if isinstance(files, (str, os.PathLike)) else files)
    reader_options = {k: options.pop(k) for k in list(options) if k in
                      ("text_field", "doc_split", "clean", "normalize", "encoding", "skip_bad_files", "glob")}
    reader = CorpusReader(files, **reader_options)
    tokenizer = train_tokenizer(reader.documents_text(), kind, vocab_size, arch, **options)
    if out is not None:
        with lio.atomic_dir(out) as tmp:
            tokenizer.save(tmp)
    return tokenizer


def _nonempty(texts: Iterator[str]) -> Iterator[str]:
    seen = False
    for text in texts:
        seen = True
        yield text
    if not seen:
        raise DataError("the corpus holds no text")


__all__ = ["Tokenizer", "train_tokenizer", "train_tokenizer_files", "is_tokenizer_folder", "KINDS", "SPECIALS"]
