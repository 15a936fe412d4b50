"""Turning a growing list of token ids into text pieces, and cutting text at stop strings.

`IncrementalDecoder` yields only complete characters: a byte-level BPE token can end in the middle of a
multi-byte UTF-8 character (Chinese, emoji), which decodes as U+FFFD until the next token completes it, so a
piece is held back while the decoded window ends in U+FFFD. Decoding a short window that starts a few tokens
back (not the new token alone) keeps the spaces that SentencePiece-style decoders attach to word starts.

`StopMatcher` cuts text at the first stop string and holds back any tail that could still become one, so a
stream never shows (part of) a stop string.
"""

from __future__ import annotations

from typing import Iterable

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 6  # tokens of the prompt decoded before the first new token (for leading spaces)


class IncrementalDecoder:
    def __init__(self, tokenizer, prefix_ids: Iterable[int] = (), skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = list(prefix_ids)[-CONTEXT_TOKENS:]
        self.prefix = 0  # ids[prefix:read] is text already emitted, decoded again for context
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_ids: Iterable[int]) -> str:
        """Add tokens; return the new complete text (possibly empty)."""
        self.ids.extend(token_ids)
        if len(self.ids) == self.read:
            return ""
        before = self._decode(self.ids[self.prefix: self.read])
        text = self._decode(self.ids[self.prefix:])
        if text.endswith(REPLACEMENT) or len(text) <= len(before):
            return ""  # an incomplete character, or nothing visible yet
        piece = text[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        if self.prefix > 4 * CONTEXT_TOKENS:  # keep the window short
            drop = self.prefix - CONTEXT_TOKENS
            del self.ids[:drop]
            self.prefix -= drop
            self.read -= drop
        return piece

    def flush(self) -> str:
        """The rest, even if it ends in an invalid byte sequence (the model produced invalid UTF-8)."""
        before = self._decode(self.ids[self.prefix: self.read])
        text = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return text[len(before):] if len(text) > len(before) else ""


class StopMatcher:
    """Feeds text pieces; returns what is safe to show and whether a stop string was reached."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped or not piece:
            return ""
        start = max(0, len(self.text) - self.longest + 1)
        self.text += piece
        if not self.stops:
            out = self.text[self.emitted:]
            self.emitted = len(self.text)
            return out
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out = self.text[self.emitted:end]
            self.emitted = end
            self.text = self.text[:end]
            self.stopped = True
            return out
        safe = len(self.text) - self._held()
        out = self.text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def _held(self) -> int:
        """Length of the longest tail of the text that is the start of a stop string."""
        for k in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def finish(self) -> str:
        out = self.text[self.emitted:] if not self.stopped else ""
        self.emitted = len(self.text)
        return out


__all__ = ["IncrementalDecoder", "StopMatcher"]
