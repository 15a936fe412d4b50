"""User-facing errors.

Every mistake a user can make (a missing file, a bad option, a checkpoint that does not fit) is raised as
`LmforgeError` with a one-line message that names the problem and the fix. The CLI prints the message alone
(no traceback) and exits with status 2; Python callers can catch it.
"""

from __future__ import annotations


class LmforgeError(Exception):
    """A problem with the user's input, with a message that says what to change."""


class ConfigError(LmforgeError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class DataError(LmforgeError):
    """A corpus, dataset or manifest cannot be used as given."""


class CheckpointError(LmforgeError):
    """A checkpoint folder is missing, incomplete, or does not fit what was asked."""


class FileError(LmforgeError, ValueError):
    """A file lmforge reads is damaged (not the JSON, safetensors or text it should be)."""


def choices(values) -> str:
    """Format allowed values for an error message: 'a | b | c'."""
    return " | ".join(str(v) for v in values)


def with_article(word: str) -> str:
    """'an encoder', 'a decoder': a noun with its indefinite article, for messages."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"
