"""`lmforge finetune sft`: supervised fine-tuning of a decoder on chat conversations (JSONL `messages`).

Each conversation is rendered with the tokenizer's chat template (the default ChatML one when it has none) and
tokenized once. The loss covers the assistant turns only: the characters of turn i are those the full template adds
after the conversation up to turn i-1 with the generation prompt (`<|im_start|>assistant\\n`), up to the end of turn
i without trailing whitespace, so the content and the end-of-turn token (`<|im_end|>`) are learned and the role
headers and user turns are not. Tokens are mapped to characters through the tokenizer's offsets.

At the end the best checkpoint answers the dev conversations (greedy, stopping at the end-of-turn token) and
samples.jsonl records whether each reply ended with the template's end-of-turn token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import io as lio
from .. import metrics
from ..errors import DataError
from ..model import Transformer
from ..tokenizer import CHAT_TOKENS, Tokenizer
from ..train.trainer import eval_loss
from .data import read_chats
from .objectives import CausalObjective, Rows
from .args import SftArgs, finetune_sft
from .runs import eval_mode
from .task import TaskContext, TaskData, TaskParts, TaskSpec, data_files, train_and_dev



def render(tokenizer: Tokenizer, messages: Sequence[dict[str, str]], where: str = "") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns (content + end-of-turn token)."""
    text = tokenizer.apply_chat_template(list(messages))
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(list(messages[:i]), add_generation_prompt=True)
        upto = tokenizer.apply_chat_template(list(messages[:i + 1]))
        if not upto.startswith(before) or not text.startswith(upto):
            raise DataError(f"{where}the chat template does not render a conversation as a prefix of its continuation, "
                            "so the assistant turns cannot be located; use a prefix-consistent template (ChatML)")
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return text, spans


def encode_chat(tokenizer: Tokenizer, messages: Sequence[dict[str, str]], max_length: int, where: str = ""
                ) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of a conversation and its loss mask (1 on assistant tokens), cut to max_length."""
    text, spans = render(tokenizer, messages, where)
    bos = tokenizer.special.get("bos")
    enc = tokenizer.backend.encode(text, add_special_tokens=not (bos and text.startswith(bos)))
    mask = np.zeros(len(enc.ids), dtype=np.int64)
    for t, (s, e) in enumerate(enc.offsets):
        if e > s and any(s < b and e > a for a, b in spans):
            mask[t] = 1
    ids = np.asarray(enc.ids, dtype=np.int64)
    return ids[:max_length], mask[:max_length]


def chat_rows(tokenizer: Tokenizer, chats: Sequence[tuple[int, list[dict[str, str]]]], max_length: int, path: str
              ) -> tuple[Rows, int]:
    rows = Rows()
    dropped = 0
    for i, (line, messages) in enumerate(chats):
        ids, mask = encode_chat(tokenizer, messages, max_length, f"{path}:{line}: ")
        if mask[1:].sum() == 0:
            dropped += 1
            continue
        rows.ids.append(ids)
        rows.labels.append(mask)
        rows.owner.append(i)
    return rows, dropped


def turn_end_ids(tokenizer: Tokenizer, model: Transformer) -> list[int]:
    from ..generate.chat import TURN_END_TOKENS

    ids = [i for i in (tokenizer.token_to_id(t) for t in TURN_END_TOKENS) if i is not None]
    for i in (tokenizer.eos_id, model.config.eos_token_id):
        if i is not None and i not in ids:
            ids.append(i)
    return ids


def reply(model: Transformer, conversations: Sequence[Sequence[dict[str, str]]], max_new_tokens: int = 64,
          **options: Any) -> list[dict[str, Any]]:
    """Greedy replies to conversations (each ends before the assistant turn to write): text, and whether the reply
    ended with the end-of-turn token within max_new_tokens."""
    from ..generate import generate

    tok = model.tokenizer
    bos = tok.special.get("bos")
    context = model.config.context_length
    room = max(1, min(max_new_tokens, context // 2))  # what a prompt too long for the context leaves the reply
    prompts = []
    for messages in conversations:
        text = tok.apply_chat_template(list(messages), add_generation_prompt=True)
        ids = tok.encode(text, add_special_tokens=not (bos and text.startswith(bos)))
        # a prompt that fits stays whole and the reply gets the rest of the context (cutting the prompt's start, its
        # BOS and system turn, changes what the model sees: replies the model was not trained to give)
        prompts.append(ids if len(ids) < context else ids[-(context - room):])
    max_new_tokens = max(1, min(max_new_tokens, context - max((len(p) for p in prompts), default=0)))
    with eval_mode(model):
        outs = generate(model, prompts, max_new_tokens=max_new_tokens, eos_token_id=turn_end_ids(tok, model),
                        return_dict=True, batch_size=16, **options)
    return [{"reply": o.text, "ended_turn": o.finish_reason == "eos", "tokens": len(o.token_ids)} for o in outs]


def prompt_part(messages: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], str | None]:
    """The conversation before its last assistant turn, and that turn's content (the reference)."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return list(messages[:last]), messages[last]["content"]


class SftTask(TaskSpec):
    name, command, title = "sft", "finetune sft", "chat SFT"
    archs = ("decoder",)
    example = "--model runs/gpt --train chats.jsonl --out runs/chat"
    lm_head_hint = "SFT needs a language model"
    args = SftArgs

    def read(self, args: SftArgs, seed: int) -> TaskData:
        return train_and_dev(args, read_chats, seed, data_files(args, "train", "dev"))

    def texts(self, data: TaskData) -> Iterable[str]:
        return (m["content"] for _, c in data.train for m in c)

    def setup(self, ctx: TaskContext) -> TaskParts:
        args, train, tokenizer = ctx.args, ctx.train, ctx.tokenizer
        chats, dev = ctx.data.train, ctx.data.dev
        if not ctx.resumed and tokenizer.chat_template is None:
            ctx.notes.append("the tokenizer has no chat template: using ChatML (<|im_start|>role ... <|im_end|>)")
            missing = [t for t in CHAT_TOKENS if tokenizer.token_to_id(t) is None]
            if missing:
                ctx.notes.append(f"note: {', '.join(missing)} are not single tokens of this vocabulary; they are "
                                 "learned as text")
        max_length = ctx.max_length
        train_rows, dropped = chat_rows(tokenizer, chats, max_length, args.train)
        dev_rows, _ = chat_rows(tokenizer, dev, max_length, args.dev or args.train)
        if not len(train_rows):
            raise DataError(f"{args.train}: no conversation has an assistant token within --max-length={max_length}")
        if dropped:
            ctx.notes.append(f"{dropped:,} conversation(s) have no assistant token within --max-length={max_length} "
                             "and were left out")
        targets = sum(int(m[1:].sum()) for m in train_rows.labels)
        ctx.notes.append(f"sft: {len(train_rows):,} training conversations ({targets:,} assistant tokens) and "
                         f"{len(dev):,} dev ({ctx.data.dev_source})")
        objective = CausalObjective("sft", train_rows, dev_rows, ctx.model.config.pad_id, train.seed,
                                    train.batch_size, train.label_smoothing)

        def finish(best: Transformer, out: Path) -> dict[str, Any]:
            with eval_mode(best):  # the objective's own loss over the whole dev set
                dev_loss, count = eval_loss(best, objective, train.batch_size)
            sample = [prompt_part(m) for _, m in dev[:args.samples]]
            replies = reply(best, [p for p, _ in sample], max_new_tokens=args.sample_tokens) if sample else []
            lio.write_text(out / "samples.jsonl", "".join(
                json.dumps({"messages": p, "reference": ref, **r}, ensure_ascii=False) + "\n"
                for (p, ref), r in zip(sample, replies)))
            ended = sum(r["ended_turn"] for r in replies) / max(len(replies), 1)
            head = f"dev assistant-token loss {dev_loss:.4f} (ppl {metrics.perplexity(dev_loss):.2f})"
            if replies:
                head += f"; {ended:.0%} of {len(replies)} sample replies end with the end-of-turn token"
            for (p, ref), r in list(zip(sample, replies))[:3]:
                print(f"  user: {p[-1]['content'][:100]!r}\n    -> {r['reply'][:120]!r}"
                      f"{'' if r['ended_turn'] else ' [no end-of-turn]'}", flush=True)
            return {"dev_loss": dev_loss, "dev_assistant_tokens": count, "template_following": ended,
                    "headline": head}

        return TaskParts(objective, finish, higher_is_better=False)


SFT = SftTask()


__all__ = ["finetune_sft", "render", "encode_chat", "reply", "chat_rows", "SFT", "SftArgs"]
