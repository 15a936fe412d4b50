"""Atomic file and folder writes: every file lmforge writes goes through here.

A crash (or SIGKILL) at any moment leaves either the old content or the new content, never a torn file:
files are written to a temporary name in the same folder, flushed to disk, then renamed over the target
(`os.replace` is atomic on POSIX and Windows). Folders (checkpoints, exports) are written to a temporary
sibling and swapped in with two renames; `recover_dir` repairs the one window where only the backup exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import ConfigError, FileError, LmforgeError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")  # org/name (hub ids are written hf:org/name)
TMP_SUFFIX = ".tmp"


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not e.filename:  # a failed write names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in `path`; a file that is not JSON is a one-line error naming it (a missing file raises
    FileNotFoundError, which callers that expect it check first)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise FileError(f"{path} is damaged: not valid JSON ({str(e).splitlines()[0][:120]}); restore it from a "
                           "copy, or write the output again") from None


def not_found_hint(path: str | os.PathLike) -> str:
    """What to add to "no such folder" for a path that could have been meant as a Hugging Face hub id."""
    text = str(path)
    return f" (a Hugging Face hub id is written hf:{text})" if HUB_ID.match(text) else ""


def check_output(path: str | os.PathLike, *, what: str, overwrite: bool, ours: Callable[[Path], bool] | None = None,
                 folder: bool = True, inputs: Iterable[Any] = (), option: str = "--out",
                 flag: str = "--overwrite") -> Path:
    """Refuse an output path where writing would lose something, before any work is done; nothing is deleted here.

    The rules (README, "Nothing is overwritten"): the path of an input is never an output; a missing path or an
    empty folder is fine; a file is never replaced by a folder nor a folder by a file; an earlier output of the same
    kind (`ours(path)`, e.g. an lmforge checkpoint where a checkpoint is written) is replaced only with `flag`;
    anything else that is not empty is refused even with `flag`, since lmforge replaces only what it made (for a
    file output, `ours` None: any earlier file counts as one)."""
    path = Path(path)
    if path.is_symlink():
        raise ConfigError(f"{option} {path} is a symbolic link; lmforge writes only to plain paths: give the real one")
    for source in inputs:
        if source is None or not Path(source).exists() or not path.exists():
            continue
        src, dst = Path(source).resolve(), path.resolve()
        if src == dst or dst in src.parents:
            raise ConfigError(f"{option} {path} is {'also' if src == dst else 'a folder holding'} an input ({source}); "
                              "write the output to another path")
    if not path.exists():
        return path
    if not path.is_dir() and not path.is_file():
        raise ConfigError(f"{option} {path} is not a regular file or folder (a pipe, a device?); give a file path")
    if folder and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, and {what} is a folder; choose a folder path")
    if not folder and path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give the path of the file to write")
    if folder and not any(path.iterdir()) or not folder and path.stat().st_size == 0:
        return path
    if ours is not None and not ours(path):
        raise ConfigError(f"{option} {path} is not empty and does not hold {what}; lmforge replaces only what it "
                           f"made, so not this (not even with {flag}): choose a new or empty {option}")
    if not overwrite:
        raise ConfigError(f"{option} {path} already exists and is not empty; it already holds {what}: pass {flag} to "
                           f"replace it, or choose another {option}")
    return path


def read_prompts(path: str) -> list[str]:
    """Prompts from `--prompts`: a JSONL file (a string or an object with a "prompt" field per line) or a text file
    (one per line); blank lines skipped. For `generate`, `export check` and `bench serve`."""
    file = Path(path)
    if not file.exists():
        raise LmforgeError(f"--prompts {path}: no such file")
    lines = file.read_text(encoding="utf-8").splitlines()
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmforgeError(f"--prompts {path}:{n} is not valid JSON ({e.msg})") from None
            if isinstance(item, dict):
                if "prompt" not in item:
                    raise LmforgeError(f"--prompts {path}:{n} has no \"prompt\" field")
                item = item["prompt"]
            if not isinstance(item, str):
                raise LmforgeError(f"--prompts {path}:{n}: a prompt must be a string")
            prompts.append(item)
        else:
            prompts.append(line)
    if not prompts:
        raise LmforgeError(f"--prompts {path} holds no prompts (one per line, or JSONL with a \"prompt\" field)")
    return prompts


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    with atomic_write(path, "wb") as f:
        f.write(buf.getvalue())
    return Path(path)


def scratch_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """Where `atomic_dir` builds a folder and where it keeps the previous copy during the swap: hidden names that no
    one else uses (`.NAME.lmforge-tmp`, `.NAME.lmforge-old`), so a user's own `NAME.tmp` is never touched."""
    path = Path(path).resolve()
    return path.with_name(f".{path.name}.lmforge-tmp"), path.with_name(f".{path.name}.lmforge-old")


def recover_dir(path: str | os.PathLike) -> Path:
    """Finish an interrupted `atomic_dir` swap: if only the previous copy exists, it is the last complete one."""
    path = Path(path)
    _, old = scratch_paths(path)
    if not path.exists() and old.is_dir():
        os.replace(old, path)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name, then swap it in for `path`.

    At every moment either `path` or its previous copy holds a complete folder; readers call `recover_dir` first.
    """
    path = Path(path).resolve()
    recover_dir(path)
    tmp, old = scratch_paths(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:  # (a read-only or missing parent: name the folder the user asked for)
        raise OSError(e.errno, e.strerror, str(path)) from None
    try:
        yield tmp
        _fsync_dir(tmp)
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.filename and str(e.filename).startswith(str(tmp)):  # name what the user asked for
            raise OSError(e.errno, e.strerror, str(path) + str(e.filename)[len(str(tmp)):]) from None
        raise


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
