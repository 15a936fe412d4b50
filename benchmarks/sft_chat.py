"""Chat SFT of a small decoder: pretrained by lmforge on Tiny Shakespeare, then fine-tuned on a chat set built from
the same text, with the loss on assistant turns only. Reports, before and after SFT, the assistant-token loss on
held-out conversations, how many greedy replies end with the template's end-of-turn token, and how often the
speaker question is answered right.

    flock /tmp/lmforge-bench.lock python benchmarks/sft_chat.py [--shared ../shared/data] [--out bench-out/sft]

The chat set (built here, from real text): each speech of Tiny Shakespeare gives a conversation
  user: Who says: "<first line of the speech>"      assistant: <speaker>
and each pair of consecutive lines of a speech gives
  user: Continue: "<line>"                           assistant: <next line>
Training conversations come from the first 90% of the text (where the base model was pretrained), held-out ones from
the last 10%. The base model is a 4-layer, 256-wide GPT with a 2,000-token BPE (whose vocabulary has the ChatML
tokens, unused in pretraining); the chat template is ChatML.
"""

from __future__ import annotations

import collections
import json
import random
import re
import sys
import time
from pathlib import Path

import lmforge
from lmforge.data.prepare import prepare_corpus
from lmforge.finetune.objectives import CausalObjective
from lmforge.finetune.runs import FinetuneConfig, eval_mode
from lmforge.finetune.sft import chat_rows, finetune_sft, prompt_part, reply
from lmforge.tokenizer import train_tokenizer
from lmforge.train.logs import read_metrics
from lmforge.train.options import TrainConfig
from lmforge.train.pretrain import pretrain
from lmforge.train.trainer import eval_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import need, parser  # noqa: E402

SHAPE = ["n_layer=4", "d_model=256", "n_head=4"]


def speeches(text: str) -> list[tuple[str, list[str]]]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in block.strip().splitlines() if line.strip()]
        if len(lines) >= 2 and lines[0].endswith(":") and len(lines[0]) < 40:
            out.append((lines[0][:-1], lines[1:]))
    return out


def conversations(blocks: list[tuple[str, list[str]]], rng: random.Random) -> list[dict]:
    out = []
    for speaker, lines in blocks:
        out.append({"messages": [{"role": "user", "content": f'Who says: "{lines[0]}"'},
                                 {"role": "assistant", "content": speaker}], "task": "who"})
        for a, b in zip(lines, lines[1:]):
            out.append({"messages": [{"role": "user", "content": f'Continue: "{a}"'},
                                     {"role": "assistant", "content": b}], "task": "next"})
    rng.shuffle(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps({"messages": r["messages"]}) + "\n" for r in rows), encoding="utf-8")


def assistant_loss(model, tokenizer, chats: list[dict], max_length: int) -> float:
    rows, _ = chat_rows(tokenizer, [(i, c["messages"]) for i, c in enumerate(chats)], max_length, "dev")
    objective = CausalObjective("sft", rows, rows, tokenizer.pad_id or 0, 0, 32)
    with eval_mode(model):
        return eval_loss(model, objective, 32)[0]


def behaviour(model, chats: list[dict]) -> dict:
    prompts = [prompt_part(c["messages"]) for c in chats]
    replies = reply(model, [p for p, _ in prompts], max_new_tokens=48)
    who = [(r["reply"].strip(), ref) for (_, ref), r, c in zip(prompts, replies, chats) if c["task"] == "who"]
    return {"ended_turn": sum(r["ended_turn"] for r in replies) / len(replies),
            "speaker_accuracy": sum(a == b for a, b in who) / max(len(who), 1), "replies": replies}


def main() -> None:
    ap = parser(__doc__, "bench-out/sft")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument("--sft-epochs", type=float, default=1.0)
    ap.add_argument("--dev", type=int, default=200, help="held-out conversations")
    args = ap.parse_args()
    source = need(Path(args.shared) / "tinyshakespeare" / "input.txt")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = source.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    train_text, val_text = text[:cut], text[cut:]
    rng = random.Random(0)
    train_chats = conversations(speeches(train_text), rng)
    dev_chats = conversations(speeches(val_text), rng)[:args.dev]
    write_jsonl(out / "train.jsonl", train_chats)
    write_jsonl(out / "dev.jsonl", dev_chats)
    speakers = collections.Counter(c["messages"][1]["content"] for c in train_chats if c["task"] == "who")
    majority = speakers.most_common(1)[0][0]
    dev_who = [c for c in dev_chats if c["task"] == "who"]
    majority_acc = sum(c["messages"][1]["content"] == majority for c in dev_who) / max(len(dev_who), 1)
    print(f"chat set: {len(train_chats):,} training and {len(dev_chats)} held-out conversations "
          f"({len(dev_who)} speaker questions)", flush=True)

    timings = {}
    start = time.perf_counter()
    (out / "train.txt").write_text(train_text, encoding="utf-8")
    tok = train_tokenizer([train_text], "bpe", 2000, "decoder", progress=False)
    prepare_corpus([str(out / "train.txt")], tok, out / "data", val_fraction=0.05, overwrite=True, progress=False)
    pretrain(data=str(out / "data"), out=str(out / "base"), model="gpt-mini", set_=SHAPE + ["context_length=256"],
             overwrite=True, train=TrainConfig(max_steps=args.pretrain_steps, batch_size=16, context=128, lr=1e-3,
                                               min_lr=1e-4, warmup_steps=100, beta2=0.99, eval_every=500,
                                               eval_batches=10, save_every=500, log_every=50, progress=False))
    timings["pretraining"] = time.perf_counter() - start
    base = lmforge.load(out / "base")
    before = {"loss": assistant_loss(base, base.tokenizer, dev_chats, 256), **behaviour(base, dev_chats)}

    start = time.perf_counter()
    result = finetune_sft(model=str(out / "base"), train=str(out / "train.jsonl"), dev=str(out / "dev.jsonl"),
                          out=str(out / "chat"), overwrite=True, samples=0,
                          options=FinetuneConfig(epochs=args.sft_epochs, batch_size=16, lr=5e-4, warmup_steps=100,
                                                 eval_every=250, eval_batches=0, save_every=250, max_length=256,
                                                 progress=False))
    timings["SFT"] = time.perf_counter() - start
    chat = lmforge.load(out / "chat")
    after = {"loss": assistant_loss(chat, chat.tokenizer, dev_chats, 256), **behaviour(chat, dev_chats)}
    train_rows = [r for r in read_metrics(out / "chat" / "metrics.jsonl") if r["split"] == "train"]
    first = sum(r["loss"] for r in train_rows[:5]) / 5
    last = sum(r["loss"] for r in train_rows[-5:]) / 5

    print(f"\nheld-out conversations: {len(dev_chats)} (from the last 10% of Tiny Shakespeare)")
    print(f"{'':44s} {'base LM':>9s} {'after SFT':>10s}")
    print(f"{'assistant-token loss (nats/token)':44s} {before['loss']:9.3f} {after['loss']:10.3f}")
    print(f"{'replies ending with <|im_end|> (<= 48 tokens)':44s} {before['ended_turn']:9.1%} {after['ended_turn']:10.1%}")
    print(f"{'speaker answered right (majority: ' + f'{majority_acc:.1%})':44s} {before['speaker_accuracy']:9.1%} "
          f"{after['speaker_accuracy']:10.1%}")
    print(f"SFT training loss on assistant tokens: {first:.3f} (first 5 logged steps) -> {last:.3f} (last 5); "
          f"{result['steps']} steps")
    for k, v in timings.items():
        print(f"  {k}: {v / 60:.1f} min")
    for c, r in list(zip(dev_chats, after["replies"]))[:6]:
        print(f"  user: {c['messages'][0]['content'][:70]}\n    -> {r['reply'][:90]!r}"
              f"{'' if r['ended_turn'] else '  [no <|im_end|>]'}")
    (out / "results.json").write_text(json.dumps({
        "before": {k: v for k, v in before.items() if k != "replies"},
        "after": {k: v for k, v in after.items() if k != "replies"}, "train_loss_first": first,
        "train_loss_last": last, "majority_speaker_accuracy": majority_acc, "timings_s": timings,
        "samples": [{"user": c["messages"][0]["content"], "reference": c["messages"][1]["content"], **r}
                    for c, r in list(zip(dev_chats, after["replies"]))[:20]]}, indent=2))


if __name__ == "__main__":
    main()
