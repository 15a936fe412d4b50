"""`lmforge finetune ner`: token classification (BIO tags) on CoNLL files, scored by entities.

Words are joined with spaces and tokenized once; each sub-token is mapped back to its word through the
tokenizer's character offsets, so any tokenizer works (WordPiece, byte-level BPE, SentencePiece). The first
sub-token of a word carries the word's tag and the others are ignored (-100); a word's prediction is that of its
first sub-token, and entities are decoded from word tags with CoNLL semantics (`lmforge.metrics.get_entities`).
Sentences longer than --max-length are truncated, or with --stride cut into overlapping windows where each word
takes the prediction of the window in which it is farthest from an edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import metrics
from ..errors import ConfigError, DataError
from ..model import Transformer
from ..tokenizer import Tokenizer
from .data import Sentence, check_known_tags, read_conll, tag_labels
from .objectives import Rows, collate, sorted_chunks, task_logits
from .args import NerArgs, finetune_ner
from .runs import eval_mode
from .task import LabelledTask, TaskData



def special_frame(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text ([CLS] / [SEP], <s>, ...)."""
    full = tokenizer.encode("a", add_special_tokens=True)
    bare = tokenizer.encode("a", add_special_tokens=False)
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []


def word_tokens(tokenizer: Tokenizer, words: Sequence[str], encoding) -> np.ndarray:
    """For each token of `" ".join(words)`, the index of the word it starts (its first sub-token), else -1."""
    text_len = sum(len(w) for w in words) + max(len(words) - 1, 0)
    word_at = np.full(text_len + 1, -1, dtype=np.int64)
    pos = 0
    for i, w in enumerate(words):
        word_at[pos:pos + len(w)] = i
        pos += len(w) + 1
    out = np.full(len(encoding.ids), -1, dtype=np.int64)
    seen = set()
    for t, (begin, end) in enumerate(encoding.offsets):
        if end <= begin:
            continue
        w = int(word_at[min(end - 1, text_len)])
        if w >= 0 and w not in seen:
            seen.add(w)
            out[t] = w
    return out


def encode_sentences(tokenizer: Tokenizer, sentences: Sequence[Sentence], *, max_length: int, stride: int | None,
                     tags: Sequence[str] | None, use_types: bool) -> tuple[Rows, int]:
    """Rows of sub-token ids with the tag index on each word's first sub-token (-100 elsewhere), the word of each
    first sub-token, and the sentence of each row; also how many sentences did not fit in one window."""
    prefix, suffix = special_frame(tokenizer)
    inner = max_length - len(prefix) - len(suffix)
    if inner < 2:
        raise ConfigError(f"--max-length={max_length} leaves no room for words besides the special tokens")
    if stride is not None and not 0 <= stride < inner // 2:
        raise ConfigError(f"--stride={stride} must be >= 0 and less than half of the {inner} tokens of a window")
    index = {t: i for i, t in enumerate(tags or [])}
    encodings = tokenizer.backend.encode_batch([" ".join(s.words) for s in sentences], add_special_tokens=False)
    rows = Rows(types=[] if use_types else None, word_ids=[])
    long = 0
    for si, (s, enc) in enumerate(zip(sentences, encodings)):
        first = word_tokens(tokenizer, s.words, enc)
        ids = np.asarray(enc.ids, dtype=np.int64)
        n = len(ids)
        if n <= inner:
            spans = [(0, n)]
        else:
            long += 1
            if stride is None:
                spans = [(0, inner)]
            else:
                step = inner - stride
                spans = [(a, min(a + inner, n)) for a in range(0, max(n - stride, 1), step)]
                spans = [sp for k, sp in enumerate(spans) if k == 0 or sp[1] > spans[k - 1][1]]
        for a, b in spans:
            word_ids = np.concatenate([np.full(len(prefix), -1), first[a:b], np.full(len(suffix), -1)]).astype(np.int64)
            rows.ids.append(np.concatenate([np.asarray(prefix, dtype=np.int64), ids[a:b],
                                            np.asarray(suffix, dtype=np.int64)]))
            if s.tags is not None and tags is not None:
                labels = np.array([index.get(s.tags[w], -100) if w >= 0 else -100 for w in word_ids], dtype=np.int64)
            else:
                labels = np.full(len(word_ids), -100, dtype=np.int64)
            rows.labels.append(labels)
            rows.word_ids.append(word_ids)
            rows.owner.append(si)
            if rows.types is not None:
                rows.types.append(np.zeros(len(word_ids), dtype=np.int64))
    return rows, long


def word_predictions(model: Transformer, rows: Rows, sentences: Sequence[Sentence], batch_size: int = 64
                     ) -> list[list[str]]:
    """Predicted tags of every word ("O" for words the tokenizer gave no token or that were truncated away)."""
    tags = model.config.label_names
    out = [["O"] * len(s.words) for s in sentences]
    best = [np.full(len(s.words), -1) for s in sentences]
    pad = model.config.pad_id
    device = next(model.parameters()).device
    for chunk in sorted_chunks(rows.lengths, batch_size):
        batch = {k: v.to(device) for k, v in collate(rows, chunk, pad).items()}
        pred = task_logits(model, batch).argmax(-1).cpu().numpy()
        for r, row in enumerate(chunk):
            word_ids = rows.word_ids[row]
            real = np.nonzero(word_ids >= 0)[0]
            if not len(real):
                continue
            lo, hi = 0, len(word_ids) - 1
            for p in real:
                w = int(word_ids[p])
                centre = min(p - lo, hi - p)
                si = rows.owner[row]
                if centre > best[si][w]:
                    best[si][w] = centre
                    out[si][w] = tags[int(pred[r, p])]
    return out


def predict_tags(model: Transformer, sentences: Sequence[Sentence], *, max_length: int, stride: int | None = None,
                 batch_size: int = 64) -> list[list[str]]:
    rows, _ = encode_sentences(model.tokenizer, sentences, max_length=max_length, stride=stride, tags=None,
                               use_types=model.config.type_vocab_size > 0)
    with eval_mode(model):
        return word_predictions(model, rows, sentences, batch_size)


def score(model: Transformer, sentences: Sequence[Sentence], *, max_length: int, stride: int | None = None,
          batch_size: int = 64) -> dict[str, Any]:
    pred = predict_tags(model, sentences, max_length=max_length, stride=stride, batch_size=batch_size)
    return metrics.entity_report([s.tags for s in sentences], pred)


class NerTask(LabelledTask):
    name, command, head, noun, title = "ner", "finetune ner", "tag", "a tagger", "NER (token classification)"
    archs = ("encoder", "decoder")
    example = "--model ./minilm --train train.conll --dev dev.conll --out runs/ner"
    args = NerArgs
    item, items, label_word = "sentence", "sentences", "tags"
    score = staticmethod(score)

    def read_file(self, path: str, args: NerArgs) -> list[Sentence]:
        return read_conll(path)

    def texts(self, data: TaskData) -> Iterable[str]:
        return (" ".join(s.words) for s in data.train)

    def labels(self, data: TaskData, args: NerArgs) -> list[str]:
        tags = tag_labels(data.train if args.dev else data.train + data.dev)  # the held-out split's tags too
        if len(tags) < 2:
            raise DataError(f"{args.train}: only the tag {tags[0]!r} occurs; NER needs entity tags (B-X, I-X)")
        return tags

    def check_known(self, items: list[Sentence], labels: Sequence[str], path: str) -> None:
        check_known_tags(items, labels, path)

    def encode(self, tokenizer: Tokenizer, items: list[Sentence], *, labels: Sequence[str], **options: Any
               ) -> tuple[Rows, int]:
        return encode_sentences(tokenizer, items, tags=labels, **options)

    def label_ids(self, rows: Rows) -> Sequence[int]:
        return np.concatenate([r[r >= 0] for r in rows.labels])

    def dev_metric(self, model: Transformer, rows: Rows, items: list[Sentence], batch_size: int,
                   args: NerArgs) -> dict[str, Any]:
        report = metrics.entity_report([s.tags for s in items], word_predictions(model, rows, items, batch_size))
        return {"metric": "entity_f1", "value": report["f1"], "precision": report["precision"],
                "recall": report["recall"]}

    def report(self, report: dict[str, Any], split: str, labels: Sequence[str], out: Path | None) -> str:
        if out is None:
            return f"{split} entity F1 {report['f1']:.4f}"
        print(metrics.format_entities(report), flush=True)
        return f"{split} entity F1 {report['f1']:.4f} (precision {report['precision']:.4f}, recall {report['recall']:.4f})"


NER = NerTask()
__all__ = ["finetune_ner", "predict_tags", "score", "encode_sentences", "special_frame", "NER", "NerArgs"]
