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
from typing import Any, Literal, Sequence

import numpy as np

from .. import metrics
from ..errors import ConfigError, DataError
from ..model import Transformer
from ..tokenizer import Tokenizer
from .data import Sentence, check_known_tags, read_conll, tag_labels
from ..model.heads import check_arch, with_head
from ..model.word_vectors import init_embeddings
from .objectives import Rows, TaskObjective, class_weight_tensor, collate, sorted_chunks, task_logits
from .runs import (FinetuneConfig, MethodConfig, ModelSource, Task, adapt, base_model, command, eval_mode,
                   resumed_model, train_and_dev)

COMMAND = "finetune ner"


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


def build(args: dict[str, Any], train: FinetuneConfig, resumed: dict | None) -> Task:
    sentences, dev, dev_source = train_and_dev(args, read_conll, train.seed)
    notes: list[str] = []
    if resumed:
        model, tokenizer = resumed_model(resumed, Path(args["out"]))
        tags = model.config.labels
        method = resumed["method"]
    else:
        tags = tag_labels(sentences if args.get("dev") else sentences + dev)  # the held-out split's tags too
        if len(tags) < 2:
            raise DataError(f"{args['train']}: only the tag {tags[0]!r} occurs; NER needs entity tags (B-X, I-X)")
        base = base_model(args, lambda: (" ".join(s.words) for s in sentences), train, notes)
        check_arch(base.config, ("encoder", "decoder"), "NER (token classification)", f"--model {args['model']}")
        model = with_head(base, "tag", tags, seed=train.seed)
        tokenizer = model.tokenizer
        del base
        if args.get("word_vectors"):
            notes.append(init_embeddings(model, tokenizer, args["word_vectors"])["note"])
        method = adapt(model, args)
    check_known_tags(dev, tags, args.get("dev") or args["train"])
    max_length = min(train.max_length, model.config.context_length)
    use_types = model.config.type_vocab_size > 0
    stride = args.get("stride")
    train_rows, long = encode_sentences(tokenizer, sentences, max_length=max_length, stride=stride, tags=tags,
                                        use_types=use_types)
    dev_rows, _ = encode_sentences(tokenizer, dev, max_length=max_length, stride=stride, tags=tags, use_types=use_types)
    if long:
        notes.append(f"{long:,} training sentence(s) are longer than --max-length={max_length} tokens and were "
                     f"{'cut into windows' if stride is not None else 'truncated (use --stride for windows)'}")
    notes.append(f"ner: {len(sentences):,} training and {len(dev):,} dev sentences ({dev_source}); tags: {', '.join(tags)}")
    pad = model.config.pad_id
    weights = class_weight_tensor(args["class_weights"], np.concatenate([r[r >= 0] for r in train_rows.labels]),
                                  len(tags))
    objective = TaskObjective("ner", train_rows, dev_rows, pad, train.seed, train.batch_size, weights,
                              train.label_smoothing)

    def evaluate(net: Transformer) -> dict[str, Any]:
        pred = word_predictions(net, dev_rows, dev, train.batch_size * 2)
        report = metrics.entity_report([s.tags for s in dev], pred)
        return {"metric": "entity_f1", "value": report["f1"], "precision": report["precision"],
                "recall": report["recall"]}

    def finish(best: Transformer, out: Path) -> dict[str, Any]:
        report = score(best, dev, max_length=max_length, stride=stride, batch_size=train.batch_size * 2)
        print(metrics.format_entities(report), flush=True)
        return {"dev": report, "headline": f"dev entity F1 {report['f1']:.4f} (precision {report['precision']:.4f}, "
                                           f"recall {report['recall']:.4f})"}

    def test(best: Transformer, path: str) -> tuple[dict[str, Any], str]:
        sentences = read_conll(path)
        check_known_tags(sentences, tags, path)
        report = score(best, sentences, max_length=max_length, stride=stride, batch_size=train.batch_size * 2)
        return report, f"test entity F1 {report['f1']:.4f}"

    files = [args["train"]] + [p for p in (args.get("dev"), args.get("word_vectors")) if p]
    return Task("ner", model, tokenizer, objective, evaluate, True, finish, method, files, notes, test)


def finetune_ner(
    *,
    model: str | None = None,
    train: str | None = None,
    dev: str | None = None,
    test: str | None = None,
    out: str | None = None,
    class_weights: Literal["none", "balanced"] = "none",
    stride: int | None = None,
    dev_fraction: float = 0.1,
    word_vectors: str | None = None,
    resume: str | None = None,
    overwrite: bool = False,
    method: MethodConfig | None = None,
    source: ModelSource | None = None,
    options: FinetuneConfig | None = None,
) -> dict[str, Any]:
    """Fine-tune a token classifier (NER, BIO tags) on CoNLL files (token<TAB>tag, blank line between sentences).

    Args:
        model: checkpoint or run folder, Hugging Face folder or hub id, or a preset to train from scratch
        train: training CoNLL file
        dev: dev CoNLL file (default: a seeded --dev-fraction of the training sentences)
        test: test CoNLL file scored with the best checkpoint at the end
        out: run folder
        class_weights: balanced weighs each tag by n / (tags * count) in the loss
        stride: cut long sentences into --max-length windows overlapping by this many tokens
        dev_fraction: share of the training sentences held out as dev when --dev is not given
        word_vectors: GloVe / word2vec text file to initialise the token embeddings (models from scratch)
        resume: a run folder to continue exactly where it stopped
        overwrite: replace a run that already exists in --out
    """
    return command(COMMAND, locals(), build, ("model", "train", "out"),
                   "--model ./minilm --train train.conll --dev dev.conll --out runs/ner")


__all__ = ["finetune_ner", "predict_tags", "score", "encode_sentences", "special_frame"]
