"""`lmforge predict RUN --input FILE --out FILE`: apply a fine-tuned model to new data.

The task comes from the run (run.json) or, for a bare checkpoint, from its head: a classifier labels the rows of a
table (writing the input columns + prediction + probability), a tagger tags CoNLL tokens (or whitespace-split text
lines), a seq2seq model writes one output line per input line, a chat model answers JSONL conversations. Options
default to those of training (columns, --max-length, --stride, prompt template).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from .. import io as lio
from ..config import check_minimum
from ..errors import ConfigError, DataError, LmforgeError
from .data import Sentence, file_kind, read_chats, read_conll, read_examples, read_text_lines
from .args import InferOptions, run_info, training_option


def write_table(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    kind = file_kind(path)
    if kind == "jsonl":
        lio.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        return
    if kind == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        lio.write_text(path, buf.getvalue())
        return
    clean = [[str(r.get(c, "")).replace("\t", " ").replace("\n", " ") for c in columns] for r in rows]
    lio.write_text(path, "\t".join(columns) + "\n" + "".join("\t".join(r) + "\n" for r in clean))


def read_sentences(path: str) -> list[Sentence]:
    """CoNLL (tokens with or without tags) or, for .txt files, one whitespace-tokenized sentence per line."""
    if Path(path).suffix == ".txt":
        lines = [line for line in read_text_lines(path) if line.strip()]
        if not lines:
            raise LmforgeError(f"{path} holds no sentences")
        return [Sentence(line.split(), None, i) for i, line in enumerate(lines, 1)]
    return read_conll(path, require_tags=False)


def predict(
    checkpoint: str,
    *,
    input: str,
    out: str,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    num_beams: int = 1,
    max_new_tokens: int | None = None,
    overwrite: bool = False,
    infer: InferOptions | None = None,
) -> dict[str, Any]:
    """Predict with a fine-tuned model: labels for a table, tags for CoNLL tokens, outputs for source lines,
    replies for chat conversations.

    Args:
        checkpoint: fine-tuning run folder (its best checkpoint) or checkpoint folder
        input: classify: .tsv/.csv/.jsonl table; ner: CoNLL file or .txt sentences; seq2seq: text lines; sft: chat JSONL or text lines (user turns)
        out: output file (classify: its extension chooses TSV, CSV or JSONL)
        text_column: column of the text (default: the training run's)
        text_pair_column: column of the second text of a pair (default: the training run's)
        num_beams: seq2seq: beams of the beam search (1 = greedy)
        max_new_tokens: seq2seq and chat: new tokens at most per output
        overwrite: replace an existing --out file
    """
    from .runs import load_for_inference
    from .tasks import task_of

    check_minimum(1, num_beams=num_beams, max_new_tokens=max_new_tokens)
    out_path = lio.check_output(out, what="predictions", overwrite=overwrite, folder=False, inputs=[input, checkpoint])
    info = run_info(checkpoint)
    infer = infer or InferOptions()
    model = load_for_inference(checkpoint, infer.device)
    if model.tokenizer is None:
        raise LmforgeError(f"{checkpoint} has no tokenizer; it cannot read text")
    if model.config.head == "lm" and model.config.arch == "decoder" and info.get("command", "").split(" ")[0] != "finetune":
        raise ConfigError(f"{checkpoint} is a language model that no fine-tuning run made; predict needs a model "
                          "fine-tuned with `lmforge finetune classify | ner | seq2seq | sft` (to continue text, use "
                          "`lmforge generate`)")
    task = task_of(model.config.head, info.get("objective")).name
    max_length, stride = infer.resolved(info)
    batch_size = infer.batch_size
    if task == "classify":
        from .classify import predict_labels

        text = training_option(info, "text_column", text_column, "text")
        pair = training_option(info, "text_pair_column", text_pair_column, None)
        examples = read_examples(input, [text] + ([pair] if pair else []), None, require_label=False)
        columns = list(dict.fromkeys(k for ex in examples for k in ex.row))  # the file's columns, in order
        labels, probs = predict_labels(model, examples, max_length=max_length, stride=stride, batch_size=batch_size)
        names = model.config.labels
        jsonl = file_kind(out_path) == "jsonl"
        out_rows = []
        for ex, label, p in zip(examples, labels, probs):
            extra = {"prediction": label, "probability": round(float(p.max()), 6)}
            if jsonl:
                extra["probabilities"] = {n: round(float(x), 6) for n, x in zip(names, p)}
            out_rows.append({**ex.row, **extra})
        write_table(out_path, columns + ["prediction", "probability"], out_rows)
        count = len(out_rows)
    elif task == "ner":
        from .ner import predict_tags

        sentences = read_sentences(input)
        tags = predict_tags(model, sentences, max_length=max_length, stride=stride, batch_size=batch_size)
        blocks = []
        for s, pred in zip(sentences, tags):
            gold = s.tags or [None] * len(s.words)
            blocks.append("".join(f"{w}\t{g}\t{p}\n" if g is not None else f"{w}\t{p}\n"
                                  for w, g, p in zip(s.words, gold, pred)))
        lio.write_text(out_path, "\n".join(blocks))
        count = len(sentences)
    elif task == "seq2seq" and model.config.arch in ("encoder_decoder", "decoder"):
        from .seq2seq import DEFAULT_TEMPLATE, translate

        sources = read_text_lines(input)
        template = training_option(info, "prompt_template", None, DEFAULT_TEMPLATE)
        outputs = translate(model, sources, template=template, max_length=max_length, max_new_tokens=max_new_tokens,
                            num_beams=num_beams, batch_size=batch_size)
        lio.write_text(out_path, "".join(o.replace("\n", " ") + "\n" for o in outputs))
        count = len(outputs)
    elif task == "sft":
        from .sft import reply

        if file_kind(Path(input)) == "jsonl":
            conversations = []
            for line, msgs in read_chats(input, require_assistant=False):
                asks = [i for i, m in enumerate(msgs) if m["role"] != "assistant"]
                if not asks:
                    raise DataError(f"{input}:{line}: the conversation has only assistant messages; a reply needs "
                                    "a user (or system) message to answer")
                conversations.append(msgs[:asks[-1] + 1])  # up to the last user/system turn
        else:
            conversations = [[{"role": "user", "content": line}] for line in read_text_lines(input) if line.strip()]
        replies = reply(model, conversations, max_new_tokens=max_new_tokens or 128)
        lio.write_text(out_path, "".join(json.dumps({"messages": c + [{"role": "assistant", "content": r["reply"]}],
                                                     "ended_turn": r["ended_turn"]}, ensure_ascii=False) + "\n"
                                         for c, r in zip(conversations, replies)))
        count = len(replies)
    else:
        raise ConfigError(f"{checkpoint} is a {model.config.arch} model with a {model.config.head} head; predict "
                          "needs a classifier, a tagger, a seq2seq or a chat model")
    print(f"{task}: wrote {count:,} prediction(s) to {out_path}")
    return {"task": task, "count": count, "out": str(out_path)}


__all__ = ["predict", "write_table", "read_sentences", "InferOptions"]
