"""`lmforge tokenizer train` and `lmforge tokenizer encode`."""

from __future__ import annotations

from typing import Literal

from ..tokenizer import Tokenizer, train_tokenizer_files


def train(
    inputs: list[str],
    *,
    out: str,
    kind: Literal["bpe", "wordpiece", "unigram", "char"] = "bpe",
    vocab_size: int | None = None,
    arch: Literal["decoder", "encoder", "encoder_decoder"] = "decoder",
    min_frequency: int = 2,
    byte_fallback: bool = True,
    text_field: str = "text",
    doc_split: Literal["file", "line", "blank"] = "file",
    clean: bool = False,
    skip_bad_files: bool = False,
    glob: str | None = None,
    encoding: str = "utf-8",
    overwrite: bool = False,
) -> Tokenizer:
    """Train a tokenizer on text or JSONL files (or folders) and save tokenizer.json + tokenizer_config.json.

    Args:
        inputs: text or JSONL files or folders
        out: folder to write the tokenizer to
        kind: byte-level BPE, WordPiece or Unigram (all lossless on bytes), or character level
        vocab_size: vocabulary size including special tokens (default 8000; char: every character seen)
        arch: which special tokens to add: decoder (<s> </s> <pad> <unk>, chat tokens), encoder ([CLS] [SEP] [MASK] [PAD] [UNK]) or encoder_decoder
        min_frequency: a merge must occur this often (bpe, wordpiece)
        byte_fallback: char: encode characters unseen in training as UTF-8 byte tokens (lossless) instead of <unk>
        text_field: JSONL field holding the text
        doc_split: what a document is in a text file (file, line, blank-line paragraph)
        clean: normalise Unicode (NFC) and drop control characters before training
        skip_bad_files: skip binary or undecodable files instead of stopping
        glob: pattern of files to take from folders
        encoding: text encoding of the files (utf-8, latin-1, ...)
        overwrite: replace a tokenizer already in --out
    """
    from ..config import check_minimum

    check_minimum(0, min_frequency=min_frequency)
    if vocab_size is None and kind != "char":
        vocab_size = 8000
    tok = train_tokenizer_files(inputs, out, kind=kind, vocab_size=vocab_size, arch=arch,
                                min_frequency=min_frequency, byte_fallback=byte_fallback, text_field=text_field,
                                doc_split=doc_split, clean=clean, skip_bad_files=skip_bad_files, glob=glob,
                                encoding=encoding, overwrite=overwrite)
    sample = "Hello, world! 你好 🙂"
    ids = tok.encode(sample)
    print(f"trained {kind} tokenizer ({arch}): vocab {tok.vocab_size:,}, specials "
          f"{', '.join(t for t in tok.special.values() if t)} -> {out}/tokenizer.json")
    print(f"  {sample!r} -> {len(ids)} tokens {[tok.id_to_token(i) for i in ids]}")
    return tok


def encode(tokenizer: str, text: str, *, special: bool = False) -> list[int]:
    """Show how a text is tokenized: ids, tokens, and the exact round trip.

    Args:
        tokenizer: tokenizer folder (or tokenizer.json, or a checkpoint folder)
        text: the text to encode
        special: add the tokenizer's special tokens (BOS, or [CLS] ... [SEP])
    """
    tok = Tokenizer.load(tokenizer)
    ids = tok.encode(text, add_special_tokens=special)
    print(f"{len(ids)} tokens")
    print("ids:   ", ids)
    print("tokens:", [tok.id_to_token(i) for i in ids])
    print("decode:", repr(tok.decode(ids)))
    return ids
