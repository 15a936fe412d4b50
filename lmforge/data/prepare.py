"""`lmforge prepare`: tokenize a corpus into memory-mapped token files with a JSON manifest.

Output folder:
- `train.bin`, `val.bin`: token ids packed end to end (uint16 when the vocabulary fits, else uint32); each
  document is framed by the tokenizer's document prefix/suffix (BOS ... EOS, or ... SEP for encoders).
- or, for source/target pairs: `{split}.src.bin` / `{split}.tgt.bin` with `{split}.src.idx` / `.tgt.idx`
  (int64 offsets, n+1 each).
- `manifest.json`: format, tokenizer hash and size, dtype, per-split counts, options, token statistics.
- `tokenizer.json` (+ config): the tokenizer the ids belong to.

Documents stream through in batches; `tokenizers.encode_batch` tokenizes each batch on all cores. Train/val is
decided per document by a seeded draw, or for a single-document corpus by position (the last fraction of
tokens, as nanoGPT splits Tiny Shakespeare).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from .. import io as lio
from ..errors import ConfigError, DataError, LmforgeError
from ..tokenizer import Tokenizer
from ..corpus import CorpusReader, read_pairs_jsonl, read_parallel

FORMAT = "lmforge-tokens"
VERSION = 1
SplitBy = Literal["auto", "docs", "tail"]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """A failed write (a full disk) names the file it was writing."""
    try:
        yield
    except OSError as e:
        if e.filename:
            raise
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None


@dataclass
class _SplitWriter:
    """Appends token arrays to `<name>.bin` (or, with `shard_tokens`, to `<name>-00000.bin`, `<name>-00001.bin`, ...
    of at most that many tokens each) under temporary names; `commit` renames them into place at the end."""

    path: Path
    dtype: np.dtype
    shard_tokens: int | None = None
    tokens: int = 0
    documents: int = 0
    _file: object = None

    def __post_init__(self) -> None:
        self.shards: list[list] = []  # [final path, temporary path, tokens]
        self._open()

    def _open(self) -> None:
        final = self.path if self.shard_tokens is None else \
            self.path.with_name(f"{self.path.stem}-{len(self.shards):05d}{self.path.suffix}")
        tmp = final.with_name(final.name + ".tmp")
        self.shards.append([final, tmp, 0])
        self._file = open(tmp, "wb")

    @property
    def tmp(self) -> Path:
        return self.shards[-1][1]

    def write(self, ids: np.ndarray) -> None:
        while len(ids):
            shard = self.shards[-1]
            room = len(ids) if self.shard_tokens is None else self.shard_tokens - shard[2]
            if room == 0:
                self.close()
                self._open()
                continue
            chunk, ids = ids[:room], ids[room:]
            with _naming(shard[0]):
                self._file.write(chunk.astype(self.dtype, copy=False).tobytes())
            shard[2] += len(chunk)
            self.tokens += len(chunk)

    def close(self) -> None:
        if self._file.closed:
            return
        with _naming(self.shards[-1][0]):
            self._file.flush()
            os.fsync(self._file.fileno())
        self._file.close()

    def abort(self) -> None:
        if not self._file.closed:
            with contextlib.suppress(OSError):  # (closing flushes, which fails again on a full disk)
                self._file.close()
        for _, tmp, _ in self.shards:
            tmp.unlink(missing_ok=True)

    def take_tail(self, count: int) -> np.ndarray:
        """Remove the last `count` tokens (the writer is closed) and return them."""
        pieces = []
        while count and self.shards:
            final, tmp, n = self.shards[-1]
            take = min(count, n)
            data = np.memmap(tmp, dtype=self.dtype, mode="r") if n else np.zeros(0, self.dtype)
            pieces.append(np.array(data[n - take:]))
            del data
            with open(tmp, "r+b") as f:
                f.truncate((n - take) * self.dtype.itemsize)
            self.shards[-1][2] -= take
            self.tokens -= take
            count -= take
            if self.shards[-1][2] == 0 and len(self.shards) > 1:
                tmp.unlink()
                self.shards.pop()
        return np.concatenate(pieces[::-1]) if pieces else np.zeros(0, self.dtype)

    def commit(self) -> None:
        for final, tmp, _ in self.shards:
            os.replace(tmp, final)

    def entry(self) -> dict:
        """The split's entry in manifest.json."""
        entry = {"file": self.path.name, "tokens": self.tokens, "documents": self.documents}
        if self.shard_tokens is not None:
            entry = {"files": [final.name for final, _, _ in self.shards], "file_tokens": [n for _, _, n in self.shards],
                     "tokens": self.tokens, "documents": self.documents}
        return entry


@dataclass
class _Stats:
    vocab_size: int
    counts: np.ndarray = field(init=False)
    chars: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.vocab_size, dtype=np.int64)

    def add(self, ids: np.ndarray, chars: int) -> None:
        self.counts += np.bincount(ids, minlength=self.vocab_size)[: self.vocab_size]
        self.chars += chars

    def report(self, tokenizer: Tokenizer, top: int = 20) -> dict:
        total = int(self.counts.sum())
        order = np.argsort(-self.counts)[:top]
        unk = tokenizer.unk_id
        return {
            "tokens": total,
            "chars": self.chars,
            "chars_per_token": round(self.chars / total, 3) if total else None,
            "distinct_tokens": int((self.counts > 0).sum()),
            "vocab_used": round(float((self.counts > 0).mean()), 4),
            "unk_rate": round(float(self.counts[unk] / total), 6) if (unk is not None and total) else 0.0,
            "top_tokens": [[tokenizer.id_to_token(int(i)), int(self.counts[i])] for i in order if self.counts[i] > 0],
        }


def _batches(reader: CorpusReader, batch_chars: int) -> Iterator[list]:
    batch, size = [], 0
    for piece in reader.pieces():
        batch.append(piece)
        size += len(piece.text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def is_prepared(folder: Path) -> bool:
    """Whether a folder holds data written by `lmforge prepare` (its manifest)."""
    return (Path(folder) / "manifest.json").exists()


def prepare_corpus(
    inputs: list[str],
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    seed: int = 1234,
    split_by: SplitBy = "auto",
    text_field: str = "text",
    doc_split: str = "file",
    clean: bool = False,
    normalize: str | None = "NFC",
    dedup: bool = False,
    skip_bad_files: bool = False,
    glob: str | None = None,
    encoding: str = "utf-8",
    overwrite: bool = False,
    progress: bool = True,
    batch_chars: int = 4 << 20,
    shard_tokens: int | None = None,
) -> dict:
    """Tokenize documents into train/val token files (`shard_tokens`: files of at most that many tokens each);
    returns the manifest."""
    from tqdm.auto import tqdm

    if not 0.0 <= val_fraction < 1.0:
        raise LmforgeError(f"val_fraction={val_fraction} is out of range; use 0 <= val_fraction < 1 (0.1 is typical)")
    if shard_tokens is not None and (isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int)
                                     or shard_tokens < 1024):
        raise ConfigError(f"--shard-tokens={shard_tokens!r}: give a whole number of tokens per file, at least 1024 "
                          "(e.g. 100000000)")
    out = lio.check_output(out, what="prepared data", overwrite=overwrite, ours=is_prepared, inputs=inputs)
    reader = CorpusReader(inputs, text_field=text_field, doc_split=doc_split, clean=clean, normalize=normalize,
                          dedup=dedup, encoding=encoding, skip_bad_files=skip_bad_files, glob=glob)
    with lio.atomic_dir(out) as out:  # written under a temporary name: complete, or not there at all
        if split_by == "auto":
            split_by = "tail" if reader.single_document() else "docs"
        dtype = token_dtype(tokenizer.vocab_size)
        writers = {name: _SplitWriter(out / f"{name}.bin", dtype, shard_tokens) for name in ("train", "val")}
        stats = _Stats(tokenizer.vocab_size)
        rng = np.random.default_rng(seed)
        prefix, suffix = tokenizer.doc_prefix, tokenizer.doc_suffix
        doc_split_of: dict[int, str] = {}
        start = time.time()
        bar = tqdm(total=reader.total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress,
                   delay=0.5)  # (a command that fails at once prints its one error line alone)
        try:
            for batch in _batches(reader, batch_chars):
                encoded = tokenizer.encode_batch([p.text for p in batch])
                for piece, ids in zip(batch, encoded):
                    if piece.doc not in doc_split_of:
                        split = "val" if (split_by == "docs" and rng.random() < val_fraction) else "train"
                        doc_split_of = {piece.doc: split}  # only the current document is needed
                        ids = prefix + ids
                        writers[split].documents += 1
                    split = doc_split_of[piece.doc]
                    if piece.last:
                        ids = ids + suffix
                    arr = np.asarray(ids, dtype=np.int64)
                    writers[split].write(arr)
                    stats.add(arr, len(piece.text))
                bar.update(max(reader.bytes_read - bar.n, 0))
            bar.update(max(reader.total_bytes - bar.n, 0))
            bar.close()
            for w in writers.values():
                w.close()
            if val_fraction > 0 and (split_by == "tail" or writers["val"].tokens == 0):
                _move_tail(writers["train"], writers["val"], val_fraction)
                split_by = "tail"
            for w in writers.values():
                w.commit()
        except BaseException:
            bar.close()
            for w in writers.values():
                w.abort()
            raise
        if writers["train"].tokens == 0:
            raise DataError("the corpus produced no training tokens; give files with text")
        tokenizer.save(out)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "kind": "tokens",
            "tokenizer": {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size, "kind": tokenizer.kind},
            "dtype": dtype.name,
            "splits": {name: w.entry() for name, w in writers.items()},
            "sources": [str(Path(f).resolve()) for f in reader.files],
            "options": {"val_fraction": val_fraction, "seed": seed, "split_by": split_by, "doc_split": doc_split,
                        "clean": clean, "normalize": normalize if clean else None, "dedup": dedup,
                        "text_field": text_field},
            "documents": reader.documents,
            "duplicates_removed": reader.duplicates,
            "skipped_files": reader.skipped_files,
            "seconds": round(time.time() - start, 2),
            "stats": stats.report(tokenizer),
        }
        lio.write_json(out / "manifest.json", manifest)
        return manifest


def _move_tail(train: _SplitWriter, val: _SplitWriter, fraction: float) -> None:
    """Move the last `fraction` of the train tokens after any val tokens, so val ends with the tail of the stream
    (both writers closed)."""
    n_val = int(train.tokens * fraction)
    if n_val == 0:
        return
    tail = train.take_tail(n_val)
    val._file = open(val.tmp, "ab")
    for i in range(0, len(tail), 1 << 24):
        val.write(tail[i:i + (1 << 24)])
    val.close()
    val.documents = max(val.documents, 1)


def prepare_pairs(
    pairs: Iterator[tuple[str, str]],
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    seed: int = 1234,
    overwrite: bool = False,
    progress: bool = True,
    sources: list[str] | None = None,
    batch_pairs: int = 10000,
) -> dict:
    """Tokenize (source, target) pairs into per-split id files with offsets."""
    from tqdm.auto import tqdm

    out = lio.check_output(out, what="prepared data", overwrite=overwrite, ours=is_prepared, inputs=sources or ())
    with lio.atomic_dir(out) as out:  # written under a temporary name: complete, or not there at all
        dtype = token_dtype(tokenizer.vocab_size)
        rng = np.random.default_rng(seed)
        files = {(split, side): _SplitWriter(out / f"{split}.{side}.bin", dtype)
                 for split in ("train", "val") for side in ("src", "tgt")}
        offsets = {key: [0] for key in files}
        stats = _Stats(tokenizer.vocab_size)
        n_pairs = {"train": 0, "val": 0}
        bar = tqdm(unit="pair", desc="tokenizing pairs", disable=not progress, delay=0.5)
        try:
            batch: list[tuple[str, str]] = []
            for pair in _chain_end(pairs):
                if pair is not None:
                    batch.append(pair)
                if batch and (len(batch) >= batch_pairs or pair is None):
                    src_ids = tokenizer.encode_batch([s for s, _ in batch])
                    tgt_ids = tokenizer.encode_batch([t for _, t in batch])
                    for (s, t), a, b in zip(batch, src_ids, tgt_ids):
                        split = "val" if rng.random() < val_fraction else "train"
                        for side, ids, text in (("src", a, s), ("tgt", b, t)):
                            arr = np.asarray(ids, dtype=np.int64)
                            files[(split, side)].write(arr)
                            offsets[(split, side)].append(files[(split, side)].tokens)
                            stats.add(arr, len(text))
                        n_pairs[split] += 1
                    bar.update(len(batch))
                    batch = []
            bar.close()
            if n_pairs["train"] == 0:
                raise DataError("no training pairs; give aligned source/target files with content")
            for key, w in files.items():
                w.close()
                w.commit()
                with lio.atomic_write(out / f"{key[0]}.{key[1]}.idx", "wb") as f:
                    f.write(np.asarray(offsets[key], dtype=np.int64).tobytes())
        except BaseException:
            bar.close()
            for w in files.values():
                w.abort()
            raise
        tokenizer.save(out)
        manifest = {
            "format": FORMAT, "version": VERSION, "kind": "pairs",
            "tokenizer": {"sha256": tokenizer.sha256, "vocab_size": tokenizer.vocab_size, "kind": tokenizer.kind},
            "dtype": dtype.name,
            "splits": {split: {"pairs": n_pairs[split], "src_tokens": files[(split, "src")].tokens,
                               "tgt_tokens": files[(split, "tgt")].tokens} for split in ("train", "val")},
            "sources": sources or [],
            "options": {"val_fraction": val_fraction, "seed": seed},
            "stats": stats.report(tokenizer),
        }
        lio.write_json(out / "manifest.json", manifest)
        return manifest


def _chain_end(items):
    yield from items
    yield None


def read_manifest(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():
        raise DataError(f"{folder} holds no prepared data (no manifest.json); run `lmforge prepare` first")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-run `lmforge prepare`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not an lmforge data manifest (format "
                        f"{manifest.get('format') if isinstance(manifest, dict) else None!r})")
    splits, kind = manifest.get("splits"), manifest.get("kind")
    counts = ("tokens", "documents") if kind == "tokens" else ("pairs", "src_tokens", "tgt_tokens")
    if kind not in ("tokens", "pairs") or manifest.get("dtype") not in ("uint16", "uint32") or \
            not isinstance(manifest.get("tokenizer"), dict) or not isinstance(splits, dict) or "train" not in splits or \
            not all(isinstance(s, dict) and all(isinstance(s.get(c), int) for c in counts) for s in splits.values()):
        raise DataError(f"{path} is damaged (kind, dtype, tokenizer or split counts are missing or of the wrong type); "
                        "re-run `lmforge prepare`")
    for name, split in splits.items():
        files, counts = split.get("files"), split.get("file_tokens")
        if files is None:
            continue
        if not (isinstance(files, list) and isinstance(counts, list) and len(files) == len(counts) and files
                and all(isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..") for f in files)
                and all(isinstance(n, int) and n >= 0 for n in counts) and sum(counts) == split["tokens"]):
            raise DataError(f"{path} is damaged: split {name!r} lists its token files wrongly (plain file names in this "
                            "folder, with token counts adding up to the split's); re-run `lmforge prepare`")
    return manifest


def check_tokenizer(manifest: dict, tokenizer: Tokenizer, data_dir: str | os.PathLike, who: str) -> None:
    """Fail clearly when data were tokenized with another tokenizer than the model's (`who`: its folder)."""
    expected = manifest["tokenizer"]["sha256"]
    if tokenizer.sha256 != expected:
        raise DataError(f"{data_dir} was prepared with another tokenizer (sha256 {expected[:12]}) than {who} "
                        f"uses ({tokenizer.sha256[:12]}); prepare the data with that model's tokenizer: "
                        f"`lmforge prepare CORPUS --tokenizer {who} --out NEW_DATA`")


def prepare(
    inputs: list[str] | None = None,
    *,
    tokenizer: str,
    out: str,
    source: str | None = None,
    target: str | None = None,
    source_field: str = "source",
    target_field: str = "target",
    val_fraction: float = 0.1,
    seed: int = 1234,
    split_by: SplitBy = "auto",
    text_field: str = "text",
    doc_split: Literal["file", "line", "blank"] = "file",
    clean: bool = False,
    normalize: Literal["NFC", "NFKC", "NFD", "NFKD"] = "NFC",
    dedup: bool = False,
    skip_bad_files: bool = False,
    glob: str | None = None,
    encoding: str = "utf-8",
    pairs: bool = False,
    shard_tokens: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Tokenize a corpus into memory-mapped token files with a train/val split and a manifest.

    Args:
        inputs: text or JSONL files or folders (with --pairs: JSONL files of source/target records)
        tokenizer: folder (or tokenizer.json) of the tokenizer to use
        out: output folder for the token files and manifest.json
        source: source-side file of aligned sentence pairs (one per line, .gz allowed); with --target
        target: target-side file aligned with --source
        source_field: JSONL field of the source text (with --pairs)
        target_field: JSONL field of the target text (with --pairs)
        val_fraction: fraction of documents (or of the tail of a single document) held out for validation
        seed: seed of the train/val draw
        split_by: docs = a seeded draw per document; tail = the last fraction of the token stream; auto = tail for a single document, else docs
        text_field: JSONL field holding the text
        doc_split: what a document is in a text file: the whole file, each line, or each blank-line separated paragraph
        clean: normalise Unicode and drop control characters
        normalize: Unicode normal form used by --clean
        dedup: drop exact duplicate documents
        skip_bad_files: skip binary or undecodable files instead of stopping
        glob: pattern of files to take from folders (default: text, markdown, Python and JSONL files)
        encoding: text encoding of the input files
        pairs: the inputs are JSONL source/target records for seq2seq
        shard_tokens: write each split as files of at most this many tokens (train-00000.bin, ...), e.g. to spread
            a large corpus over disks (link the files); training reads them as one stream
        overwrite: replace prepared data already in --out
    """
    if not tokenizer or not out:
        raise LmforgeError("prepare needs --tokenizer and --out; e.g. lmforge prepare corpus.txt --tokenizer tok/ --out data/")
    tok = Tokenizer.load(tokenizer)
    if shard_tokens is not None and (source or target or pairs):
        raise ConfigError("--shard-tokens splits token streams; pair data (--source/--target, --pairs) is written whole")
    if source or target:
        if not (source and target):
            raise LmforgeError("--source and --target go together: give both aligned files")
        manifest = prepare_pairs(read_parallel(source, target, encoding), tok, out, val_fraction=val_fraction,
                                 seed=seed, overwrite=overwrite, sources=[source, target])
    elif pairs:
        if not inputs:
            raise LmforgeError("--pairs needs JSONL input files with source/target fields")

        def all_pairs():
            for path in inputs:
                yield from read_pairs_jsonl(path, source_field, target_field, encoding)

        manifest = prepare_pairs(all_pairs(), tok, out, val_fraction=val_fraction, seed=seed, overwrite=overwrite,
                                 sources=list(inputs))
    else:
        if not inputs:
            raise LmforgeError("no corpus given; e.g. lmforge prepare corpus.txt --tokenizer tok/ --out data/")
        manifest = prepare_corpus(inputs, tok, out, val_fraction=val_fraction, seed=seed, split_by=split_by,
                                  text_field=text_field, doc_split=doc_split, clean=clean, normalize=normalize,
                                  dedup=dedup, skip_bad_files=skip_bad_files, glob=glob, encoding=encoding,
                                  overwrite=overwrite, shard_tokens=shard_tokens)
    print(summary(manifest, out))
    return manifest


def summary(manifest: dict, out: str | os.PathLike) -> str:
    s = manifest["stats"]
    lines = [f"prepared {out}  ({manifest['kind']}, {manifest['dtype']}, tokenizer {manifest['tokenizer']['sha256'][:12]})"]
    for name, split in manifest["splits"].items():
        lines.append(f"  {name:5s} " + ", ".join(f"{k} {v:,}" for k, v in split.items() if isinstance(v, int)))
    lines.append(f"  tokens {s['tokens']:,}  chars/token {s['chars_per_token']}  distinct {s['distinct_tokens']:,} "
                 f"({100 * s['vocab_used']:.1f}% of vocab)  unk rate {s['unk_rate']:.4%}")
    if manifest.get("duplicates_removed"):
        lines.append(f"  duplicates removed: {manifest['duplicates_removed']:,}")
    if manifest.get("skipped_files"):
        lines.append(f"  skipped files: {', '.join(manifest['skipped_files'])}")
    top = ", ".join(f"{t!r}:{c:,}" for t, c in s["top_tokens"][:10])
    lines.append(f"  most frequent: {top}")
    return "\n".join(lines)
