"""Reading raw corpora: text files, JSONL files (optionally gzipped) and folders of them, streamed.

Files are read in binary blocks and decoded incrementally, so a corpus larger than memory is never held whole,
and a file that is binary or not UTF-8 is reported with its path and byte offset. Documents are yielded in
pieces of at most `chunk_chars` characters, cut at line ends, so a single huge document streams too.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from .errors import DataError, choices

TEXT_SUFFIXES = {".txt", ".text", ".md", ".rst", ".py", ".jsonl", ".json", ".tsv", ".csv", ".tex", ".html", ""}
DocSplit = Literal["file", "line", "blank"]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BLOCK = 1 << 20


@dataclass
class Piece:
    """Part of a document: `last` marks its final piece."""

    doc: int
    text: str
    last: bool
    source: str


def list_files(paths: Iterable[str | Path], glob: str | None = None) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of corpus files."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise DataError("no corpus given; pass one or more text/JSONL files or folders")
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise DataError(f"corpus path {path} does not exist; check the path (files or folders are accepted)")
        if path.is_dir():
            found = sorted(p for p in path.rglob(glob or "*") if p.is_file() and not _hidden(p, path)
                           and (glob is not None or _suffix(p) in TEXT_SUFFIXES))
            if not found:
                raise DataError(f"folder {path} holds no corpus files ({glob or 'text, markdown or JSONL'}); "
                                "point at a folder of .txt/.jsonl files or pass --glob")
            files.extend(found)
        else:
            files.append(path)
    return files


def _hidden(p: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(root).parts)


def _suffix(p: Path) -> str:
    suffixes = p.suffixes
    if suffixes and suffixes[-1] == ".gz":
        return suffixes[-2] if len(suffixes) > 1 else ""
    return p.suffix


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


CORPUS_OPTIONS = ", pass --encoding, or --skip-bad-files"  # what the corpus commands (prepare, tokenizer train) offer


def read_text_blocks(path: Path, encoding: str = "utf-8", options: str = "") -> Iterator[str]:
    """Decode a file block by block; raise DataError naming the byte offset of binary or invalid data. `options` is
    what the calling command offers about such files (CORPUS_OPTIONS for the corpus readers; none elsewhere)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    try:
        with _open_binary(path) as f:
            while True:
                block = f.read(_BLOCK)
                final = not block
                nul = block.find(b"\x00", 0, 8192) if offset == 0 else -1
                if nul >= 0 and encoding.lower().replace("-", "") == "utf8":
                    skip = ", or --skip-bad-files to skip such files" if options else ""
                    raise DataError(f"{path} looks binary (a NUL byte at byte {nul}); pass only text files{skip}")
                try:
                    text = decoder.decode(block, final=final)
                except UnicodeDecodeError as e:
                    raise DataError(f"{path} is not valid {encoding} at byte {offset + e.start}; convert it "
                                    f"(e.g. iconv -f latin1 -t utf-8){options}") from None
                offset += len(block)
                if text:
                    yield text
                if final:
                    return
    except (OSError, EOFError) as e:
        if isinstance(e, gzip.BadGzipFile) or "gzip" in str(e).lower():
            raise DataError(f"{path} is not a valid gzip file ({e}); decompress or fix it") from None
        raise DataError(f"cannot read {path}: {e}") from None


def read_lines(path: Path, encoding: str = "utf-8", options: str = "") -> Iterator[str]:
    """Lines of a text file without their line ends, streamed."""
    rest = ""
    for block in read_text_blocks(path, encoding, options):
        block = rest + block
        lines = block.split("\n")
        rest = lines.pop()
        yield from (line.rstrip("\r") for line in lines)
    if rest:
        yield rest.rstrip("\r")


def clean_text(text: str, normalize: str | None = "NFC") -> str:
    """Unicode normalisation and removal of control characters (tabs and line ends are kept)."""
    if normalize:
        text = unicodedata.normalize(normalize, text)
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


class CorpusReader:
    """Streams documents from files and folders with optional cleaning and exact-duplicate removal."""

    def __init__(
        self,
        paths: Iterable[str | Path] | str | Path,
        *,
        text_field: str = "text",
        doc_split: DocSplit = "file",
        clean: bool = False,
        normalize: str | None = "NFC",
        dedup: bool = False,
        encoding: str = "utf-8",
        skip_bad_files: bool = False,
        glob: str | None = None,
        chunk_chars: int = 1 << 20,
    ) -> None:
        if doc_split not in ("file", "line", "blank"):
            raise DataError(f"doc_split={doc_split!r} is not supported; use {choices(('file', 'line', 'blank'))}")
        if normalize is not None and normalize.upper() not in ("NFC", "NFKC", "NFD", "NFKD"):
            raise DataError(f"normalize={normalize!r} is not supported; use NFC | NFKC | NFD | NFKD")
        self.files = list_files(paths, glob)
        self.text_field, self.doc_split = text_field, doc_split
        self.clean, self.normalize = clean, (normalize.upper() if normalize else None)
        self.dedup, self.encoding, self.skip_bad_files = dedup, encoding, skip_bad_files
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataError(f"--encoding {encoding!r} is not a text encoding Python knows; use e.g. utf-8, latin-1, "
                            "cp1252, utf-16") from None
        self.chunk_chars = chunk_chars
        self.skipped_files: list[str] = []
        self.duplicates = 0
        self.documents = 0
        self.bytes_read = 0

    @property
    def total_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def single_document(self) -> bool:
        """True when the whole corpus is one document (one plain file read as a whole)."""
        return len(self.files) == 1 and self.doc_split == "file" and _suffix(self.files[0]) != ".jsonl"

    # ---- documents -----------------------------------------------------------------------------------
    def pieces(self) -> Iterator[Piece]:
        seen: set[bytes] = set()
        doc = 0
        for path in self.files:
            try:
                for parts in self._file_documents(path):
                    kept = self._process(parts, seen)
                    if kept is None:
                        continue
                    for i, text in enumerate(kept):
                        yield Piece(doc, text, i == len(kept) - 1, str(path))
                    doc += 1
            except DataError:
                if not self.skip_bad_files:
                    raise
                self.skipped_files.append(str(path))
        self.documents = doc
        if doc == 0:
            raise DataError(f"the corpus ({', '.join(str(f) for f in self.files[:3])}"
                            f"{' ...' if len(self.files) > 3 else ''}) holds no text; give files with content")

    def documents_text(self) -> Iterator[str]:
        """Whole documents (pieces of very long documents are yielded separately)."""
        for piece in self.pieces():
            yield piece.text

    def _process(self, parts: list[str], seen: set[bytes]) -> list[str] | None:
        if self.clean:
            parts = [clean_text(p, self.normalize) for p in parts]
        parts = [p for p in parts if p]
        if not parts or not any(p.strip() for p in parts):
            return None
        if self.dedup and len(parts) == 1:  # documents that fit in one piece are deduplicated exactly
            key = hashlib.blake2b(parts[0].encode("utf-8"), digest_size=16).digest()
            if key in seen:
                self.duplicates += 1
                return None
            seen.add(key)
        return parts

    def _file_documents(self, path: Path) -> Iterator[list[str]]:
        if _suffix(path) == ".jsonl":
            yield from self._jsonl_documents(path)
        elif self.doc_split == "line":
            for line in read_lines(path, self.encoding, CORPUS_OPTIONS):
                self.bytes_read += len(line) + 1
                yield [line]
        elif self.doc_split == "blank":
            yield from self._paragraphs(path)
        else:
            yield list(self._file_pieces(path))

    def _file_pieces(self, path: Path) -> Iterator[str]:
        buf: list[str] = []
        size = 0
        for line in self._lines_keepends(path):
            buf.append(line)
            size += len(line)
            if size >= self.chunk_chars:
                yield "".join(buf)
                buf, size = [], 0
        if buf:
            yield "".join(buf)

    def _lines_keepends(self, path: Path) -> Iterator[str]:
        rest = ""
        for block in read_text_blocks(path, self.encoding, CORPUS_OPTIONS):
            self.bytes_read += len(block)
            block = rest + block
            lines = block.splitlines(keepends=True)
            rest = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) else ""
            yield from lines
        if rest:
            yield rest

    def _paragraphs(self, path: Path) -> Iterator[list[str]]:
        para: list[str] = []
        for line in read_lines(path, self.encoding, CORPUS_OPTIONS):
            self.bytes_read += len(line) + 1
            if line.strip():
                para.append(line)
            elif para:
                yield ["\n".join(para)]
                para = []
        if para:
            yield ["\n".join(para)]

    def _jsonl_documents(self, path: Path) -> Iterator[list[str]]:
        for lineno, line in enumerate(read_lines(path, self.encoding, CORPUS_OPTIONS), 1):
            self.bytes_read += len(line) + 1
            if not line.strip():
                continue
            record = json_object(path, lineno, line)
            if self.text_field not in record:
                keys = ", ".join(record)
                raise DataError(f"{path}:{lineno}: no field {self.text_field!r} (found: {keys}); "
                                "choose the text field with --text-field")
            value = record[self.text_field]
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno}: field {self.text_field!r} is {type(value).__name__}, not text")
            yield [value]



def read_parallel(source: str | Path, target: str | Path, encoding: str = "utf-8") -> Iterator[tuple[str, str]]:
    """Aligned lines of two files (plain or gzipped), checking that they have the same number of lines."""
    src_lines, tgt_lines = (read_lines(Path(f), encoding, ", or pass --encoding") for f in (source, target))
    n = 0
    for n, (s, t) in enumerate(_zip_strict(src_lines, tgt_lines, source, target), 1):
        yield s, t
    if n == 0:
        raise DataError(f"{source} and {target} are empty; give aligned files with one sentence per line")


def _zip_strict(a: Iterator[str], b: Iterator[str], name_a, name_b) -> Iterator[tuple[str, str]]:
    n = 0
    for n, x in enumerate(a, 1):
        y = next(b, None)
        if y is None:
            raise DataError(f"{name_b} has fewer lines ({n - 1}) than {name_a}; the files must be aligned line by line")
        yield x, y
    if next(b, None) is not None:
        raise DataError(f"{name_b} has more lines than {name_a} ({n}); the files must be aligned line by line")


def json_object(path: str | Path, lineno: int, line: str) -> dict[str, Any]:
    """The JSON object on one line of a JSONL file; invalid JSON or another JSON value is a one-line error."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}); each line must be one JSON object") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(record).__name__}")
    return record


def read_pairs_jsonl(path: str | Path, source_field: str = "source", target_field: str = "target",
                     encoding: str = "utf-8") -> Iterator[tuple[str, str]]:
    for lineno, line in enumerate(read_lines(Path(path), encoding, ", or pass --encoding"), 1):
        if not line.strip():
            continue
        record = json_object(path, lineno, line)
        missing = [f for f in (source_field, target_field) if f not in record]
        if missing:
            raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}; set --source-field/--target-field")
        yield str(record[source_field]), str(record[target_field])


__all__ = ["CorpusReader", "Piece", "list_files", "read_lines", "read_text_blocks", "clean_text",
           "read_parallel", "read_pairs_jsonl", "json_object"]
