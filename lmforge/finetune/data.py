"""Readers for fine-tuning data: tables (CSV, TSV, JSONL) with column selection and label discovery, CoNLL
token/tag files, chat JSONL, aligned sentence files; the seeded dev split. Every problem is a `DataError` that
names the file, the line and what is allowed.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import io as lio
from ..corpus import json_object, read_lines, read_text_blocks
from ..errors import DataError


@dataclass
class Example:
    """One row of a table: its text fields, its label (None when the file has no label column) and line."""

    texts: tuple[str, ...]
    label: str | None
    line: int
    row: dict[str, Any] | None = None  # the whole row, for writing predictions beside it


@dataclass
class Sentence:
    """One CoNLL sentence: words, their tags (None when the file has none) and the line it starts on."""

    words: list[str]
    tags: list[str] | None
    line: int


def _exists(path: str | Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such {what}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a {what}")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty")
    return path


def _read_text(path: Path) -> str:
    return "".join(read_text_blocks(path))


def file_kind(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    suffix = suffixes[-1].lower() if suffixes else ""
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "tsv"


def json_records(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line, object) of the non-blank lines of a JSONL text; a line that is not a JSON object is an error."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        out.append((lineno, json_object(path, lineno, line)))
    return out


def read_table(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Column names and (line, row) pairs of a TSV (tab-separated, no quoting), CSV (with a header) or JSONL
    file (one object per line)."""
    path = _exists(path)
    text = _read_text(path)
    kind = file_kind(path)
    rows: list[tuple[int, dict[str, Any]]] = []
    if kind == "jsonl":
        columns: list[str] = []
        for lineno, record in json_records(path, text):
            for key in record:
                if key not in columns:
                    columns.append(key)
            rows.append((lineno, record))
    else:
        lines = text.splitlines()
        if kind == "csv":
            reader = csv.reader(io.StringIO(text))
            parsed = [(reader.line_num, r) for r in reader]
        else:
            parsed = [(i, line.split("\t")) for i, line in enumerate(lines, 1)]
        parsed = [(n, r) for n, r in parsed if any(c.strip() for c in r)]
        if not parsed:
            raise DataError(f"{path} holds no rows")
        header_line, columns = parsed[0]
        columns = [c.strip() for c in columns]
        if len(set(columns)) != len(columns):
            raise DataError(f"{path}:{header_line}: the header repeats a column name ({', '.join(columns)})")
        for lineno, values in parsed[1:]:
            if len(values) != len(columns):
                sep = "comma" if kind == "csv" else "tab"
                raise DataError(f"{path}:{lineno}: {len(values)} {sep}-separated fields but the header has "
                                f"{len(columns)} ({', '.join(columns)})")
            rows.append((lineno, dict(zip(columns, values))))
    if not rows:
        raise DataError(f"{path} holds a header but no rows" if kind != "jsonl" else f"{path} holds no records")
    return columns, rows


def read_examples(path: str | Path, text_columns: Sequence[str], label_column: str | None,
                  require_label: bool = True) -> list[Example]:
    """Examples from a table; `text_columns` are one column (single texts) or two (pairs)."""
    columns, rows = read_table(path)
    missing = [c for c in text_columns if c not in columns]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r}; its columns are {', '.join(columns)} "
                        "(choose with --text-column / --text-pair-column)")
    has_label = label_column is not None and label_column in columns
    if require_label and not has_label:
        raise DataError(f"{path}: no label column {label_column!r}; its columns are {', '.join(columns)} "
                        "(choose with --label-column)")
    out = []
    for lineno, row in rows:
        texts = []
        for c in text_columns:
            value = row.get(c)
            if value is None:
                raise DataError(f"{path}:{lineno}: the record has no {c!r} field")
            texts.append(str(value))
        label = row.get(label_column) if has_label else None
        if has_label and (label is None or str(label).strip() == ""):
            raise DataError(f"{path}:{lineno}: empty label in column {label_column!r}")
        out.append(Example(tuple(texts), None if label is None else str(label).strip(), lineno, row))
    return out


def discover_labels(values: Sequence[str]) -> list[str]:
    """The distinct labels, in numeric order when they are all integers, else sorted as text."""
    distinct = set(values)
    try:
        return sorted(distinct, key=lambda v: (int(v), v))
    except ValueError:
        return sorted(distinct)


def check_known_labels(examples: Sequence[Example], labels: Sequence[str], path: str | Path, what: str = "training"
                       ) -> None:
    known = set(labels)
    for ex in examples:
        if ex.label is not None and ex.label not in known:
            raise DataError(f"{path}:{ex.line}: label {ex.label!r} does not occur in the {what} data "
                            f"(labels: {', '.join(labels)}); fix the label or add examples of it to the training file")


def split_dev(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random split: (train, dev) with round(fraction * n) items (at least 1) in dev."""
    if not 0 < fraction < 1:
        raise DataError(f"--dev-fraction={fraction} must be between 0 and 1")
    if len(items) < 2:
        raise DataError(f"only {len(items)} training example(s): too few to hold out a dev split; give --dev")
    import numpy as np  # here, so that the commands' --help does not load it

    n_dev = min(max(1, round(fraction * len(items))), len(items) - 1)
    order = np.random.default_rng([seed, 7919]).permutation(len(items))
    dev_idx = set(order[:n_dev].tolist())
    return ([x for i, x in enumerate(items) if i not in dev_idx], [x for i, x in enumerate(items) if i in dev_idx])


# ---- CoNLL ---------------------------------------------------------------------------------------------

def read_conll(path: str | Path, require_tags: bool = True) -> list[Sentence]:
    """Sentences of a CoNLL file: one token per line (token first, tag last, separated by tabs or spaces),
    a blank line between sentences, `-DOCSTART-` lines ignored. Every line of the file must have the same
    number of columns."""
    path = _exists(path)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    start = 0
    width = None

    def flush():
        nonlocal words, tags
        if words:
            sentences.append(Sentence(words, tags if width and width > 1 else None, start))
        words, tags = [], []

    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            flush()
            continue
        fields = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if fields[0].startswith("-DOCSTART-"):
            flush()
            continue
        if width is None:
            width = len(fields)
            if require_tags and width < 2:
                raise DataError(f"{path}:{lineno}: one column ({line.strip()!r}); a CoNLL line is a token and its "
                                "tag separated by a tab (e.g. 'Paris<TAB>B-LOC')")
        if len(fields) != width:
            raise DataError(f"{path}:{lineno}: {len(fields)} column(s) but the file's lines have {width}; every line "
                            "is 'token<TAB>tag' (a blank line between sentences)")
        if not fields[0] or (width > 1 and not fields[-1]):
            raise DataError(f"{path}:{lineno}: empty token or tag")
        spaced = next((f for f in fields if " " in f), None)
        if spaced is not None:
            raise DataError(f"{path}:{lineno}: {spaced[:40]!r} holds spaces: this looks like a table of texts, and a "
                            "CoNLL file has one token and its tag per line (a blank line between sentences)")
        if not words:
            start = lineno
        words.append(fields[0])
        tags.append(fields[-1])
    flush()
    if not sentences:
        raise DataError(f"{path} holds no sentences")
    return sentences


def tag_labels(sentences: Sequence[Sentence]) -> list[str]:
    """The tag set: O first, then the entity tags grouped by type (B- before I-)."""
    tags = {t for s in sentences for t in (s.tags or [])}

    def key(tag: str) -> tuple:
        if tag == "O":
            return (0, "", "")
        prefix, _, kind = tag.partition("-")
        return (1, kind, prefix) if kind else (1, tag, "")

    return sorted(tags, key=key)


def check_known_tags(sentences: Sequence[Sentence], labels: Sequence[str], path: str | Path) -> None:
    known = set(labels)
    for s in sentences:
        for i, tag in enumerate(s.tags or []):
            if tag not in known:
                raise DataError(f"{path}:{s.line + i}: tag {tag!r} does not occur in the training data "
                                f"(tags: {', '.join(labels)})")


# ---- chat ----------------------------------------------------------------------------------------------

ROLES = ("system", "user", "assistant", "tool")


def read_chats(path: str | Path, require_assistant: bool = True) -> list[tuple[int, list[dict[str, str]]]]:
    """(line, messages) of a JSONL file of {"messages": [{"role": ..., "content": ...}, ...]} records."""
    path = _exists(path)
    out = []
    for lineno, record in json_records(path, _read_text(path)):
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{path}:{lineno}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}}")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise DataError(f"{path}:{lineno}: every message needs a role ({', '.join(ROLES)}) and a string "
                                f"content; got {json.dumps(m)[:80]}")
        if require_assistant and not any(m["role"] == "assistant" for m in messages):
            raise DataError(f"{path}:{lineno}: the conversation has no assistant message to learn from")
        out.append((lineno, messages))
    if not out:
        raise DataError(f"{path} holds no conversations")
    return out


# ---- plain lines ---------------------------------------------------------------------------------------

def read_text_lines(path: str | Path) -> list[str]:
    """The lines of a text file (plain or .gz), line ends removed."""
    path = _exists(path)
    return [line.rstrip("\r\n") for line in read_lines(path)]


def read_aligned(source: str | Path, target: str | Path) -> list[tuple[str, str]]:
    src, tgt = read_text_lines(source), read_text_lines(target)
    if len(src) != len(tgt):
        raise DataError(f"{source} has {len(src)} lines but {target} has {len(tgt)}; the files must be aligned "
                        "line by line")
    for i, (s, t) in enumerate(zip(src, tgt), 1):
        if not s.strip() or not t.strip():
            raise DataError(f"{source if not s.strip() else target}:{i}: empty line; every line is one sentence")
    return list(zip(src, tgt))


def sha256_files(paths: Sequence[str | Path | None]) -> dict[str, str]:
    """{resolved path: sha256} of the given files (None entries skipped)."""
    return {str(Path(p).resolve()): lio.sha256_file(p) for p in paths if p}


__all__ = ["Example", "Sentence", "read_table", "read_examples", "discover_labels", "check_known_labels",
           "split_dev", "read_conll", "tag_labels", "check_known_tags", "read_chats", "read_text_lines",
           "read_aligned", "sha256_files"]
