"""Tokenizers <-> GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).

Reading rebuilds a `tokenizers` pipeline (what tokenizer.json holds) for the two vocabulary styles llama.cpp writes
for these architectures:

- `tokenizer.ggml.model = "gpt2"`, byte-level BPE: tokens in GPT-2's byte alphabet, merges ("a b", rank = order)
  and a pre-tokenizer named by `tokenizer.ggml.pre`. llama.cpp applies that name's regexes one after another, each
  splitting the pieces the previous one left (src/llama-vocab.cpp), which is a `Sequence` of isolated `Split`s
  followed by `ByteLevel(use_regex=False)`; the Llama-3 group also takes a whole pre-token that is in the
  vocabulary as is (`ignore_merges`).
- `tokenizer.ggml.model = "llama"`, SentencePiece-style BPE: tokens spelled with "▁" for spaces, a score per token,
  byte tokens <0x00> .. <0xFF> for byte fallback, no merges: the merges are rebuilt from the scores (every split of
  a token into two vocabulary tokens, best score first), so BPE merges as SentencePiece does.

Two references disagree on spaces, so there are two modes (docs/export.md, "Tokenizer modes"):

- "llama.cpp" (the default): what llama.cpp does with the file. SentencePiece vocabularies get "▁" before every
  fragment of raw text (also one that starts with a space, and the text right after a special token), and every
  `pre` name llama.cpp knows splits as llama.cpp splits it.
- "transformers": what `transformers`' GGUF tokenizer does with the same file: `Metaspace(prepend_scheme="first")`
  for SentencePiece vocabularies, and GPT-2's splitting for the `pre` names it does not know (e.g. `smollm`).

Writing is the inverse for an lmforge `Tokenizer`: a byte-level BPE becomes "gpt2" with the `pre` whose llama.cpp
regexes split a set of probe texts exactly as the tokenizer's own pre-tokenizer does; a SentencePiece-style BPE
(byte fallback, "▁" for spaces) becomes "llama" with scores = minus the rank of the merge that makes each token.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Literal

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from ...errors import CheckpointError, LmforgeError, choices
from ...tokenizer import Tokenizer
from ..base import ExportError

TokenizerMode = Literal["llama.cpp", "transformers"]
TOKENIZER_MODES = ("llama.cpp", "transformers")

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# role -> the id key in tokenizer.ggml.* (llama.cpp's own spelling, "seperator" included)
ROLE_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id",
             "sep": "seperator_token_id", "cls": "cls_token_id", "mask": "mask_token_id"}

# ---- llama.cpp's pre-tokenizers (src/llama-vocab.cpp: the `pre` name -> type table in llama_vocab::impl::load,
# the regexes per type in llm_tokenizer_bpe). llama.cpp spells (?i:'s|...) as (?:'[sS]|...) for std::regex; the
# tokenizers library (Oniguruma) takes the original spelling, which is equivalent.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# pre name -> (regexes applied in turn, ignore_merges)
PRE_SPLITS: dict[str, tuple[tuple[str, ...], bool]] = {}
for _names, _regexes, _ignore_merges in (
    (("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
      "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling", "exaone4", "jina-v1-en", "jina-v2-code",
      "roberta-bpe"), (GPT2,), False),
    (("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), (r"\p{N}", GPT2), False),
    (("llama-bpe", "llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"),
     (LLAMA3,), True),
    (("dbrx", "smaug-bpe"), (LLAMA3,), False),
    (("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "stablelm2", "hunyuan", "solar-open"), (QWEN2,), False),
    (("qwen35",), (QWEN35,), False),
    (("gpt-4o", "llama4", "minimax-m2"), (GPT4O,), False),
    (("tekken",), (TEKKEN,), True),
    (("falcon",), (r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"), False),
    (("default",), (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"), False),
):
    for _name in _names:
        PRE_SPLITS[_name] = (_regexes, _ignore_merges)

# transformers' own table (integrations/gguf: GGUF_PRE_TOKENIZER_SPLITS); other names get GPT-2's ByteLevel there
TRANSFORMERS_SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano", "dbrx", "smaug-bpe"), LLAMA3),
    "tekken": TEKKEN, **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), QWEN2),
    "qwen35": QWEN35, **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), GPT4O),
}
# the names the writer tries, in this order (one per distinct pipeline); the first that splits like the tokenizer wins
WRITE_PRE = ("gpt-2", "smollm", "llama-bpe", "qwen2", "qwen35", "gpt-4o", "tekken", "dbrx", "falcon")
PROBE_TEXTS = (
    "Hello world! It's 2024, we'll see 3.14159 and 1,000,000 items.", "  leading and   multiple   spaces  ",
    "tabs\tand\nnewlines\r\n\n\nend", "naïve café déjà vu — Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어",
    "emoji 😀👍🏽 👨‍👩‍👧 🇫🇷", "def f(x):\n    return x**2  # comment\n", "I'M SHOUTING, don'T, we'LL, they'Re",
    "x²+y³=z⁴ ½ ¾ Ⅻ ① ٣٤٥ １２３", "12345678901234567890", "a1b22c333d4444", "   \n  \n\t\t  x", "!!!???...,,,;;;",
    "\u00a0nbsp\u2003em\u3000ideo", "path/to/file.txt C:\\Windows\\", "Mixed CamelCase and ALLCAPS words's",
)


@functools.lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table (bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def _in_byte_alphabet(token: str) -> str:
    """A normal token written in the byte alphabet (as transformers re-spells one that is not)."""
    table = byte_alphabet()
    alphabet = set(table.values())
    return token if set(token) <= alphabet else "".join(table[b] for b in token.encode("utf-8"))


def _byte_level_splits(regexes: tuple[str, ...]):
    steps = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    return pre_tokenizers.Sequence(steps + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# ==== reading ===================================================================================================

def _roles(md: dict[str, Any], tokens: list[str], source: str) -> dict[str, str | None]:
    roles: dict[str, str | None] = {}
    for role, key in ROLE_KEYS.items():
        i = md.get(f"tokenizer.ggml.{key}")
        if i is None and role == "sep":
            i = md.get("tokenizer.ggml.separator_token_id")
        if i is not None and not 0 <= int(i) < len(tokens):
            raise CheckpointError(f"{source}: tokenizer.ggml.{key}={i} is not a token id (the vocabulary has "
                                  f"{len(tokens)} tokens); the file is damaged")
        roles[role] = None if i is None else tokens[int(i)]
    return roles


def _byte_level_backend(md: dict[str, Any], tokens: list[str], types: list[int], mode: str, source: str) -> Backend:
    vocab = {(_in_byte_alphabet(t) if y == NORMAL else t): i for i, (t, y) in enumerate(zip(tokens, types))}
    merges = []
    for m in md.get("tokenizer.ggml.merges") or []:
        cut = m.find(" ", 1)  # as llama.cpp: the first space after the first character
        if cut < 0:
            raise CheckpointError(f"{source}: tokenizer.ggml.merges holds {m!r}, not two tokens; the file is damaged")
        merges.append((m[:cut], m[cut + 1:]))
    if not merges:
        raise CheckpointError(f"{source}: a byte-level (gpt2) vocabulary needs tokenizer.ggml.merges, and the file "
                              "has none (llama.cpp refuses it too)")
    pre = md.get("tokenizer.ggml.pre") or "default"
    ignore_merges = False
    if mode == "transformers":
        regex = TRANSFORMERS_SPLITS.get(pre)
        splitter = _byte_level_splits((regex,)) if regex else pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif pre in PRE_SPLITS:
        regexes, ignore_merges = PRE_SPLITS[pre]
        splitter = _byte_level_splits(regexes)
    else:
        raise CheckpointError(f"{source}: tokenizer.ggml.pre={pre!r} is a pre-tokenizer lmforge does not know (it "
                              f"knows {len(PRE_SPLITS)} of llama.cpp's names, e.g. {', '.join(WRITE_PRE)}); load "
                              "with tokenizer_mode='transformers' (--tokenizer-mode transformers), which splits as "
                              "GPT-2 does, or without the tokenizer")
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=ignore_merges))
    backend.pre_tokenizer = splitter
    backend.decoder = decoders.ByteLevel()
    return backend


def merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """SentencePiece merges from token scores: every split of a token into two vocabulary tokens, the merged token's
    score first (highest first), then the lengths of the two halves (as transformers orders them)."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:i], piece[i:], score) for i in range(1, len(piece))
                 if piece[:i] in vocab and piece[i:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _sentencepiece_backend(md: dict[str, Any], tokens: list[str], roles: dict[str, str | None], mode: str
                           ) -> Backend:
    vocab = {t: i for i, t in enumerate(tokens)}
    scores = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    merges = merges_from_scores(vocab, dict(zip(tokens, scores)))
    backend = Backend(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True,
                                 unk_token=roles["unk"] if mode == "llama.cpp" else None))
    prefix = bool(md.get("tokenizer.ggml.add_space_prefix", True))
    if mode == "llama.cpp":  # "▁" before every fragment between special tokens: a normalizer does exactly that
        steps = ([normalizers.Prepend("▁")] if prefix else []) + [normalizers.Replace(" ", "▁")]
        backend.normalizer = normalizers.Sequence(steps)
    else:  # transformers' LlamaTokenizer (legacy=False)
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first" if prefix else
                                                         "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
    return backend


def _post_processor(md: dict[str, Any], kind: str, roles: dict[str, str | None], vocab: dict[str, int],
                    encoder: bool):
    add_bos = bool(md.get("tokenizer.ggml.add_bos_token", kind == "llama")) and roles["bos"] is not None
    add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False)) and roles["eos"] is not None
    if not add_bos and not add_eos:
        return processors.ByteLevel(trim_offsets=False) if kind == "gpt2" else None
    bos, eos = roles["bos"], roles["eos"]
    first = [f"{bos}:0"] if add_bos else []
    last = [f"{eos}:0"] if add_eos else []
    single = " ".join(first + ["$A:0"] + last)
    if encoder and add_bos and add_eos:  # [CLS] a [SEP] b [SEP]
        pair = f"{single} $B:1 {eos}:1"
    else:
        pair = single + " " + " ".join(([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else []))
    used = {t for t, on in ((bos, add_bos), (eos, add_eos)) if on}
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in used])


def tokenizer_from_gguf(md: dict[str, Any], mode: TokenizerMode = "llama.cpp", source: str = "GGUF file"
                        ) -> Tokenizer | None:
    """The lmforge `Tokenizer` a GGUF file's metadata describes (None when it has no vocabulary), with its special
    roles and chat template. `mode`: "llama.cpp" | "transformers" (see the module docstring)."""
    if mode not in TOKENIZER_MODES:
        raise LmforgeError(f"tokenizer_mode={mode!r} is not a mode; choose {choices(TOKENIZER_MODES)}")
    kind = md.get("tokenizer.ggml.model")
    if kind in (None, "none", "no_vocab"):
        return None
    if kind not in ("gpt2", "llama"):
        print(f"note: {source} has a {kind!r} vocabulary; lmforge rebuilds byte-level BPE (gpt2) and "
              "SentencePiece-style (llama) ones: loading the weights without a tokenizer", file=sys.stderr)
        return None
    tokens = [str(t) for t in md.get("tokenizer.ggml.tokens") or []]
    if not tokens:
        raise CheckpointError(f"{source}: tokenizer.ggml.model={kind!r} but tokenizer.ggml.tokens is empty; the file "
                              "is damaged")
    types = [int(y) for y in md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)]
    if len(types) != len(tokens):
        raise CheckpointError(f"{source}: {len(tokens)} tokens but {len(types)} token types; the file is damaged")
    roles = _roles(md, tokens, source)
    encoder = md.get("general.architecture") == "bert"
    if encoder:  # llama.cpp's encoders open with BOS = [CLS] and close with EOS = [SEP]
        roles["cls"] = roles["cls"] or roles["bos"]
        roles["sep"] = roles["sep"] or roles["eos"]
        roles["bos"] = roles["eos"] = None
        open_close = {"bos": roles["cls"], "eos": roles["sep"]}
    else:
        open_close = {"bos": roles["bos"], "eos": roles["eos"]}
    if kind == "gpt2":
        backend = _byte_level_backend(md, tokens, types, mode, source)
    else:
        backend = _sentencepiece_backend(md, tokens, roles, mode)
    # control tokens are special (matched whole, skipped by decode(skip_special_tokens)); user-defined ones are
    # matched whole too, as llama.cpp does
    special = [t for t, y in zip(tokens, types) if y == CONTROL]
    special += [t for t in {*roles.values()} if t is not None and t not in special and t in backend.get_vocab()]
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    user = [AddedToken(t, normalized=False, special=False) for t, y in zip(tokens, types) if y == USER_DEFINED]
    if user:
        backend.add_tokens(user)
    backend.post_processor = _post_processor(md, kind, open_close, backend.get_vocab(), encoder)
    extra = {"lmforge_gguf_tokenizer": {"model": kind, "pre": md.get("tokenizer.ggml.pre"), "mode": mode}}
    return Tokenizer(backend, roles, md.get("tokenizer.chat_template"), extra)


# ==== writing ===================================================================================================

def _ordered_tokens(backend: Backend) -> list[str]:
    vocab = backend.get_vocab(with_added_tokens=True)
    tokens: list[str | None] = [None] * (max(vocab.values()) + 1)
    for token, i in vocab.items():
        tokens[i] = token
    return [t if t is not None else f"<unused{i}>" for i, t in enumerate(tokens)]  # llama.cpp: every id has text


def _style(spec: dict[str, Any]) -> str:
    """'byte_level' | 'sentencepiece' | what else the tokenizer.json pipeline is."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [p.get("type") for p in parts]
    norm = spec.get("normalizer") or {}
    norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] if norm else []
    if model.get("type") != "BPE":
        return str(model.get("type"))
    if "ByteLevel" in kinds:
        return "byte_level"
    metaspace_norm = any(n.get("type") == "Replace" and n.get("content") == "▁" for n in norms)
    if model.get("byte_fallback") and ("Metaspace" in kinds or metaspace_norm):
        return "sentencepiece"
    return "BPE without byte-level or SentencePiece-style spaces"


def detect_pre(backend: Backend, hint: str | None = None) -> str:
    """The `tokenizer.ggml.pre` whose llama.cpp regexes pre-tokenize the probe texts as `backend` does (llama.cpp's
    converter recognises known tokenizers by a hash of token ids instead, which cannot work for a new vocabulary)."""
    want = [[piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)] for text in PROBE_TEXTS]
    for name in ([hint] if hint in PRE_SPLITS else []) + list(WRITE_PRE):
        splitter = _byte_level_splits(PRE_SPLITS[name][0])
        if all([p for p, _ in splitter.pre_tokenize_str(t)] == w for t, w in zip(PROBE_TEXTS, want)):
            return name
    raise ExportError("cannot write this tokenizer as GGUF: its pre-tokenizer splits text like none of llama.cpp's "
                      f"byte-level pre-tokenizers ({', '.join(WRITE_PRE)}), so llama.cpp would tokenize differently; "
                      "export without the tokenizer (--no-tokenizer)")


def _merge_strings(model: dict[str, Any]) -> list[str]:
    return [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in model.get("merges", [])]


def tokenizer_to_gguf(tok: Tokenizer, n_vocab: int) -> dict[str, Any]:
    """GGUF tokenizer metadata (key -> value) for an lmforge `Tokenizer`, with one token per embedding row."""
    backend = tok.backend
    spec = json.loads(backend.to_str())
    style = _style(spec)
    added = {a["content"]: a for a in spec.get("added_tokens", [])}
    tokens = _ordered_tokens(backend)
    if len(tokens) > n_vocab:
        raise ExportError(f"the tokenizer has {len(tokens)} tokens but the model only {n_vocab} embedding rows; "
                          "tokenizer and weights do not belong together")
    md: dict[str, Any] = {}
    types = [CONTROL if t in added and added[t]["special"] else USER_DEFINED if t in added else NORMAL
             for t in tokens]
    if style == "byte_level":
        norm = (spec.get("normalizer") or {}).get("type")
        if norm not in (None, "NFC"):  # llama.cpp normalizes nothing (NFC changes little, as for Qwen2)
            raise ExportError(f"cannot write this tokenizer as GGUF: its {norm} normalizer has no llama.cpp "
                              "equivalent; export without the tokenizer (--no-tokenizer)")
        hint = (tok.extra.get("lmforge_gguf_tokenizer") or {}).get("pre")
        md["tokenizer.ggml.model"] = "gpt2"
        md["tokenizer.ggml.pre"] = detect_pre(backend, hint)
        md["tokenizer.ggml.merges"] = _merge_strings(spec["model"])
    elif style == "sentencepiece":
        rank: dict[str, int] = {}
        for r, merge in enumerate(_merge_strings(spec["model"])):
            a, b = merge.split(" ", 1)
            rank.setdefault(a + b, r)
        unk = spec["model"].get("unk_token")
        for i, t in enumerate(tokens):
            if types[i] == NORMAL and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                types[i] = BYTE
            elif types[i] == NORMAL and t == unk:
                types[i] = UNKNOWN
        # a token's score is minus the rank of the merge that makes it, so merges rebuilt from scores keep the order
        md["tokenizer.ggml.model"] = "llama"
        md["tokenizer.ggml.scores"] = [-float(rank[t]) if t in rank else 0.0 for t in tokens]
        md["tokenizer.ggml.add_space_prefix"] = _adds_space_prefix(spec)
    else:
        raise ExportError(f"cannot write a {tok.kind} tokenizer ({style}) as GGUF: llama.cpp reads byte-level BPE "
                          "(gpt2) and SentencePiece-style BPE (llama) vocabularies for these architectures; export "
                          "without the tokenizer (--no-tokenizer), or train a bpe tokenizer")
    for i in range(len(tokens), n_vocab):  # llama.cpp needs one token per embedding row
        tokens.append(f"<unused{i}>")
        types.append(UNUSED)
        if "tokenizer.ggml.scores" in md:
            md["tokenizer.ggml.scores"].append(-1e9)
    md["tokenizer.ggml.tokens"] = tokens
    md["tokenizer.ggml.token_type"] = types
    md.update(_special_ids(tok))
    if tok.chat_template:
        md["tokenizer.chat_template"] = tok.chat_template
    return md


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Metaspace":
        return pre.get("prepend_scheme", "always") != "never" and pre.get("add_prefix_space", True) is not False
    norm = spec.get("normalizer") or {}
    norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    return any(n.get("type") == "Prepend" and n.get("prepend") == "▁" for n in norms)


def _special_ids(tok: Tokenizer) -> dict[str, Any]:
    """Special ids, and whether BOS/EOS are added (read off the post-processor by encoding one letter)."""
    md: dict[str, Any] = {}
    ids = {role: tok.token_to_id(t) for role, t in tok.special.items() if t is not None}
    for role, key in ROLE_KEYS.items():
        if ids.get(role) is not None:
            md[f"tokenizer.ggml.{key}"] = ids[role]
    with_special, plain = tok.encode("a", add_special_tokens=True), tok.encode("a")
    at = next((i for i in range(len(with_special)) if with_special[i:i + len(plain)] == plain), 0)
    opens, closes = with_special[:at], with_special[at + len(plain):]
    bos, eos = ids.get("bos"), ids.get("eos")
    md["tokenizer.ggml.add_bos_token"] = bos is not None and with_special[:1] == [bos] and plain[:1] != [bos]
    md["tokenizer.ggml.add_eos_token"] = eos is not None and with_special[-1:] == [eos] and plain[-1:] != [eos]
    cls, sep = ids.get("cls"), ids.get("sep")
    if cls is not None and sep is not None and with_special[:1] == [cls] and with_special[-1:] == [sep]:
        # an encoder's [CLS] x [SEP]: llama.cpp's BPE tokenizer adds only BOS and EOS, so [CLS] is written as BOS
        # and [SEP] as EOS, both added
        md.update({"tokenizer.ggml.bos_token_id": cls, "tokenizer.ggml.eos_token_id": sep,
                   "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True})
    elif (opens and opens != [bos]) or (closes and closes != [eos]):
        raise ExportError(f"cannot write this tokenizer as GGUF: it adds the ids {opens} before and {closes} after a "
                          "text, and llama.cpp can add only BOS before and EOS after")
    return md


__all__ = ["TokenizerMode", "TOKENIZER_MODES", "PRE_SPLITS", "tokenizer_from_gguf", "tokenizer_to_gguf",
           "detect_pre", "merges_from_scores", "byte_alphabet"]
