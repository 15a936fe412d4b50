"""Multi-turn chat: the tokenizer's chat template (or the default ChatML one), history trimmed to the context.

`ChatSession.send(text)` renders system + history + the new user turn with the template, trims the oldest turns
when prompt + max_new_tokens would not fit the context (reporting it in `notices`), streams the reply and keeps
it in the history. `chat_repl` is the terminal loop behind `lmforge chat`: /reset clears the history, /exit
(or Ctrl-D) quits.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterator, TextIO

from ..errors import LmforgeError
from .api import ModelSpec, stream_text
from .options import GenerationOptions

# tokens that end an assistant turn in common templates, besides the tokenizer's EOS
TURN_END_TOKENS = ("<|im_end|>", "<|im_start|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def encode_chat(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of a conversation rendered with the tokenizer's chat template, ready for the assistant's reply."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    bos = tokenizer.special.get("bos")
    # a template that writes BOS itself is encoded as is; otherwise the tokenizer adds its specials
    add = not (bos and text.startswith(bos))
    return tokenizer.encode(text, add_special_tokens=add)


def turn_end_ids(tokenizer) -> list[int]:
    """Ids of the tokens that end an assistant turn in this tokenizer's vocabulary (besides EOS)."""
    return [i for i in (tokenizer.token_to_id(t) for t in TURN_END_TOKENS) if i is not None]


class ChatSession:
    def __init__(self, model, system: str | None = None, tokenizer=None, **options: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        if self.tokenizer is None:
            raise LmforgeError("chat needs a tokenizer; this checkpoint has none")
        if model.config.arch != "decoder":
            raise LmforgeError("chat needs a decoder-only model (GPT, Llama); this one is "
                               f"arch={model.config.arch}")
        options.setdefault("max_new_tokens", 256)
        self.opts = GenerationOptions.from_kwargs(**options)
        self.spec = ModelSpec.of(model, self.tokenizer, self.opts, extra_eos=turn_end_ids(self.tokenizer))
        self.system = system
        self.history: list[dict[str, str]] = []
        self.notices: list[str] = []
        room = self.spec.context - self.opts.max_new_tokens
        if room < 8:
            raise LmforgeError(f"max_new_tokens={self.opts.max_new_tokens} leaves no room for the conversation in "
                               f"the model's context of {self.spec.context} tokens; lower max_new_tokens")

    def reset(self) -> None:
        self.history = []

    def _messages(self, turns: list[dict[str, str]]) -> list[dict[str, str]]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + turns

    def _encode(self, turns: list[dict[str, str]]) -> list[int]:
        return encode_chat(self.tokenizer, self._messages(turns))

    def prompt_ids(self, user: str) -> list[int]:
        """The rendered conversation with the new user turn, oldest turns dropped until it fits."""
        turns = self.history + [{"role": "user", "content": user}]
        room = self.spec.context - self.opts.max_new_tokens
        ids = self._encode(turns)
        dropped = 0
        while len(ids) > room and len(turns) > 1:
            cut = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
            turns = turns[cut:]
            dropped += cut
            ids = self._encode(turns)
        if len(ids) > room:
            raise LmforgeError(f"this message needs {len(ids)} tokens with the template, but only {room} fit in the "
                               f"context ({self.spec.context} tokens, {self.opts.max_new_tokens} kept for the "
                               "reply); send a shorter message or lower --max-new-tokens")
        if dropped:
            self.history = turns[:-1]
            self.notices.append(f"[history trimmed: dropped the {dropped} oldest message(s) to fit the "
                                f"{self.spec.context}-token context]")
        return ids

    def send(self, user: str) -> Iterator[str]:
        """Stream the reply to `user`; the full reply joins the history when the stream ends."""
        ids = self.prompt_ids(user)
        reply: list[str] = []
        for piece in stream_text(self.model, ids, self.spec, self.opts, self.tokenizer):
            reply.append(piece)
            yield piece
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(reply).strip()}]

    def reply(self, user: str) -> str:
        return "".join(self.send(user))


HELP = "commands: /reset clears the history, /exit quits (so does Ctrl-D)"


def chat_repl(session: ChatSession, *, read: Callable[[str], str] = input, out: TextIO | None = None,
              banner: str = "") -> int:
    """The terminal loop: read a line, stream the reply, until /exit or end of input."""
    out = out or sys.stdout
    if banner:
        print(banner, file=out)
    print(HELP, file=out, flush=True)
    while True:
        try:
            line = read("you> ")
        except EOFError:
            print(file=out)
            break
        except KeyboardInterrupt:
            print("\n(interrupted; /exit quits)", file=out, flush=True)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            session.reset()
            print("[history cleared]", file=out, flush=True)
            continue
        if text == "/help":
            print(HELP, file=out, flush=True)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; {HELP}", file=out, flush=True)
            continue
        try:
            pieces = session.send(text)
            first = next(pieces, None)  # trimming happens before the first piece
        except LmforgeError as e:
            print(f"[error: {e}]", file=out, flush=True)
            continue
        for notice in session.notices:
            print(notice, file=out, flush=True)
        session.notices.clear()
        print("assistant> ", end="", file=out, flush=True)
        try:
            if first is not None:
                print(first, end="", file=out, flush=True)
                for piece in pieces:
                    print(piece, end="", file=out, flush=True)
        except KeyboardInterrupt:  # Ctrl-C stops the reply (it is not kept in the history), not the chat
            pieces.close()
            print("\n[reply interrupted]", end="", file=out, flush=True)
        print(file=out, flush=True)
    print("bye", file=out, flush=True)
    return 0


__all__ = ["ChatSession", "chat_repl", "TURN_END_TOKENS", "encode_chat", "turn_end_ids"]
