"""Streamed training data: JSONL files tokenized as they are read, never held in memory or prepared first.

The corpus (files in sorted order, seen as one run of bytes) is cut into `shards` byte ranges at line starts; each
range is read as its own stream of documents, tokenized (with the tokenizer's document prefix and suffix, as
`lmforge prepare` does) and packed into windows of `length + extra` tokens that advance by `length` (each token is
predicted once). A range that ends starts over (its next pass); its partial last window is dropped.

Sample i of the run is window i // shards of range i % shards. The number of ranges is the run's sequences per step,
so every step takes one window from each range, and the process that trains sequence j of a step reads range j:
each process reads and tokenizes only its own ranges, and the order of samples is the same for any number of
processes. The position of every range (`state()`: the byte offset of the line that holds the next token, the
token's index in that document, the pass and the window count) is saved with each checkpoint, so a resumed run
continues from there, on any number of processes, without reading the corpus again; a saved position is checked
against the step it was saved at, never skipped over silently.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..corpus import list_files
from ..errors import DataError

STREAM_SUFFIXES = (".jsonl",)
DOCS_PER_BATCH = 64  # documents tokenized together (the tokenizer's batch encoding is several times faster)


def stream_files(path: str | os.PathLike) -> list[Path]:
    """The JSONL files of a streamed corpus: one file, or a folder's *.jsonl (recursively, sorted)."""
    path = Path(path)
    if path.is_file() and path.suffix not in STREAM_SUFFIXES:
        raise DataError(f"{path} is not a JSONL file; stream JSONL (one {{\"text\": ...}} object per line), or prepare "
                        "other formats with `lmforge prepare`")
    files = list_files([path], glob="*.jsonl" if path.is_dir() else None)
    empty = [f for f in files if f.stat().st_size == 0]
    if len(empty) == len(files):
        raise DataError(f"{path} holds no text to stream (its JSONL files are empty)")
    return files


def stream_digest(files: list[Path]) -> str:
    """A fingerprint of the streamed files (names, sizes and modification times): a changed corpus changes it."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class JsonlStream:
    """The documents of JSONL files, as `shards` byte ranges that can each be read from any saved position."""

    def __init__(self, files: list[Path], tokenizer, shards: int, text_field: str = "text") -> None:
        self.files = [Path(f) for f in files]
        self.sizes = [f.stat().st_size for f in self.files]
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()  # each file's first byte in the run
        self.total = self.starts[-1]
        self.tokenizer, self.shards, self.text_field = tokenizer, shards, text_field
        self.prefix, self.suffix = list(tokenizer.doc_prefix), list(tokenizer.doc_suffix)
        if self.total == 0:
            raise DataError("the streamed corpus is empty")
        if shards > self.total // 64:
            raise DataError(f"the streamed corpus ({self.total:,} bytes) is too small to split into {shards} ranges (one "
                            "per sequence of a step); prepare it with `lmforge prepare`, or use fewer sequences per step")

    def range_of(self, shard: int) -> tuple[int, int]:
        return self.total * shard // self.shards, self.total * (shard + 1) // self.shards

    def _locate(self, offset: int) -> tuple[int, int]:
        """(file index, offset in that file) of a byte of the run."""
        i = bisect.bisect_right(self.starts, offset) - 1
        return i, offset - self.starts[i]

    def first_line(self, offset: int) -> int:
        """The first line start at or after `offset` (a range's first document)."""
        if offset == 0:
            return 0
        i, local = self._locate(offset)
        if i >= len(self.files) or local == 0:
            return offset
        with open(self.files[i], "rb") as f:
            f.seek(local - 1)
            if f.read(1) == b"\n":
                return offset
            f.readline()
            return self.starts[i] + f.tell()

    def documents(self, offset: int, end: int):
        """(line offset, text) of every document whose line starts in [offset, end), from `offset` (a line start)."""
        while offset < end:
            i, local = self._locate(offset)
            if i >= len(self.files):
                return
            with open(self.files[i], "rb") as f:
                f.seek(local)
                while offset < end and local < self.sizes[i]:
                    line = f.readline()
                    start, offset, local = offset, offset + len(line), local + len(line)
                    text = self._text(line, i, start)
                    if text is not None:
                        yield start, text
            if local >= self.sizes[i]:
                offset = self.starts[i + 1]

    def _text(self, line: bytes, file: int, offset: int) -> str | None:
        if not line.strip():
            return None
        where = f"{self.files[file]} (byte {offset - self.starts[file]})"
        try:
            record = json.loads(line)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: not a JSON line ({str(e)[:80]}); fix or remove the line") from None
        if not isinstance(record, dict) or self.text_field not in record:
            found = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{where}: no field {self.text_field!r} (found: {found}); choose it with --text-field")
        value = record[self.text_field]
        if not isinstance(value, str):
            raise DataError(f"{where}: field {self.text_field!r} is {type(value).__name__}, not text")
        return value if value.strip() else None

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [self.prefix + ids + self.suffix for ids in self.tokenizer.encode_batch(texts)]


class RangeReader:
    """Windows of one byte range, in order, from a position that can be saved and restored."""

    def __init__(self, stream: JsonlStream, shard: int, width: int, step: int) -> None:
        self.stream, self.shard, self.width, self.step = stream, shard, width, step
        self.begin, self.end = stream.range_of(shard)
        self.begin = stream.first_line(self.begin)
        self.restart(0)

    def restart(self, passes: int, offset: int | None = None, token: int = 0) -> None:
        """Read the range from its start (pass `passes`), or from document `offset`'s token `token`."""
        self.passes, self.windows = passes, 0
        self._docs = self.stream.documents(self.begin if offset is None else offset, self.end)
        self._buffer: list[tuple[int, list[int]]] = []  # (line offset, tokens) of the documents read ahead
        self._token = token  # the next window's first token, in the first buffered document
        self._expect = offset  # a restored position must find its document where it was
        self._in_pass = 0 if offset is None else -1  # windows of this pass (-1: a restored pass, count unknown)

    def state(self) -> dict[str, int]:
        self._fill(1)  # (the next document, so the position names it)
        offset = self._buffer[0][0] if self._buffer else self.end
        return {"pass": self.passes, "windows": self.windows, "offset": offset, "token": self._token}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from a saved `state()`: re-read the document it points into, then go on from there."""
        offset, token = int(state["offset"]), int(state["token"])
        if not self.begin <= offset <= self.end or token < 0:
            raise DataError(f"a saved stream position (byte {offset}, token {token}) lies outside its range "
                            f"{self.begin}..{self.end}; the corpus changed since the checkpoint")
        self.restart(int(state["pass"]), offset, token)
        self.windows = int(state["windows"])

    def _fill(self, need: int) -> bool:
        """Read documents until `need` tokens from the window start are buffered; False at the range's end."""
        have = sum(len(t) for _, t in self._buffer) - self._token
        while have < need:
            batch = []
            for item in self._docs:
                batch.append(item)
                if len(batch) == DOCS_PER_BATCH:
                    break
            if not batch:
                return False
            if self._expect is not None:
                if batch[0][0] != self._expect:
                    raise DataError(f"the streamed corpus changed: no document starts at byte {self._expect} any more; "
                                    "restore the files of the run")
                self._expect = None
            for (offset, _), ids in zip(batch, self.stream.encode([text for _, text in batch])):
                self._buffer.append((offset, ids))
                have += len(ids)
        return True

    def next_window(self) -> np.ndarray:
        while not self._fill(self.width):
            if self._in_pass == 0:
                raise DataError(f"range {self.shard} of the streamed corpus ({self.end - self.begin:,} bytes) holds fewer "
                                f"than {self.width} tokens: too little text for this many sequences per step; prepare it "
                                "with `lmforge prepare`, or use fewer sequences per step")
            windows = self.windows
            self.restart(self.passes + 1)
            self.windows = windows
        window = np.empty(self.width, dtype=np.int64)
        filled, position = 0, self._token
        for _, ids in self._buffer:
            take = ids[position: position + self.width - filled]
            window[filled: filled + len(take)] = take
            filled += len(take)
            position = 0
            if filled == self.width:
                break
        # advance by `step` tokens, dropping the documents that lie wholly before the next window's first token
        position = self._token + self.step
        while self._buffer and position >= len(self._buffer[0][1]):
            position -= len(self._buffer[0][1])
            self._buffer.pop(0)
        self._token = position
        self.windows += 1
        self._in_pass = max(self._in_pass, 0) + 1
        return window

    def window(self, k: int) -> np.ndarray:
        if k < self.windows:  # (only when a run goes back without a saved position: read the range again)
            self.restart(0)
        while self.windows < k:
            self.next_window()
        return self.next_window()


class StreamWindows:
    """`TokenWindows`' interface over a JSONL stream: sample i is window i // shards of range i % shards."""

    def __init__(self, stream: JsonlStream, length: int, extra: int = 1) -> None:
        self.stream, self.length, self.extra = stream, length, extra
        self.readers: dict[int, RangeReader] = {}
        self.saved: dict[str, dict] = {}

    def reader(self, shard: int) -> RangeReader:
        if shard not in self.readers:
            reader = RangeReader(self.stream, shard, self.length + self.extra, self.length)
            if str(shard) in self.saved:
                reader.load(self.saved[str(shard)])
            self.readers[shard] = reader
        return self.readers[shard]

    def windows(self, first: int, count: int, extra: int = 1) -> torch.Tensor:
        if extra != self.extra:
            raise ValueError(f"this stream packs windows of {self.length}+{self.extra} tokens, not +{extra}")
        S = self.stream.shards
        rows = [self.reader(i % S).window(i // S) for i in range(first, first + count)]
        return torch.from_numpy(np.stack(rows))

    def state(self) -> dict[str, dict]:
        return {str(s): r.state() for s, r in self.readers.items()}

    def load(self, state: dict[str, dict] | None, samples_seen: int) -> None:
        """Positions saved by `state()` (merged over processes) at `samples_seen` samples: checked, then used as each
        range is first read. Without them (an older checkpoint) the ranges are read again from their start."""
        S = self.stream.shards
        state = state or {}
        for key, position in state.items():
            shard = int(key)
            expected = samples_seen // S + (1 if shard < samples_seen % S else 0)
            if int(position.get("windows", -1)) != expected:
                raise DataError(f"the saved position of stream range {shard} is at window {position.get('windows')}, "
                                f"and the checkpoint's step needs {expected}; the checkpoint's state is damaged")
        self.saved = dict(state)
        self.readers = {}


class StreamData:
    """`PreparedData`'s interface for a streamed JSONL corpus: the train split is a `JsonlStream` of `shards`
    ranges; the validation split, from a JSONL file of its own (optional), is tokenized whole into memory."""

    kind = "tokens"

    def __init__(self, path: str | os.PathLike, tokenizer, shards: int, text_field: str = "text",
                 val: str | os.PathLike | None = None) -> None:
        self.folder = Path(path)
        self.files = stream_files(path)
        self.val_files = stream_files(val) if val else []
        self._tokenizer, self.shards, self.text_field = tokenizer, shards, text_field
        self.train = JsonlStream(self.files, tokenizer, shards, text_field)

    def tokenizer(self):
        return self._tokenizer

    def digest(self) -> str:
        return stream_digest(self.files + self.val_files)

    def tokens(self, split: str) -> JsonlStream | np.ndarray:
        if split == "train":
            return self.train
        if not self.val_files:
            return np.zeros(0, dtype=np.int64)
        stream = JsonlStream(self.val_files, self._tokenizer, 1, self.text_field)
        texts = [text for _, text in stream.documents(0, stream.total)]
        ids = [np.asarray(t, dtype=np.int64) for i in range(0, len(texts), 256) for t in stream.encode(texts[i:i + 256])]
        return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)

    def pairs(self, split: str):
        raise DataError(f"{self.folder} is a streamed JSONL corpus; seq2seq trains on pairs prepared with `lmforge "
                        "prepare --source src.txt --target tgt.txt`")
