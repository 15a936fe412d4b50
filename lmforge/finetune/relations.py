"""`lmforge finetune relations`: joint entity and relation extraction (a knowledge graph from sentences), trained on
SpERT-format JSON (CoNLL04, SciERC, ADE): one encoder, two heads (config head=relations).

- Entities: BIO tags per word (B-Peop, I-Org, ...), predicted on each word's first sub-token as in `finetune ner`.
- Relations: every ordered pair of entities is classified into a relation type or "none" from [max-pool of the
  head entity's tokens; max-pool of the tail's; max-pool of the tokens between them] (SpERT's pair
  representation; `Transformer.pair_logits`). Training pairs are the gold entities' ordered pairs (those without a
  relation are the negatives); at prediction the pairs of the predicted entities are classified.

Why this design and not REBEL's (a seq2seq model writing linearised triples): it fine-tunes any encoder (the
pretrained one here is all-MiniLM-L6-v2, and no pretrained encoder-decoder is on this machine), it trains in
minutes on a CPU, and every entity keeps its exact word span, which `lmforge extract` maps back to characters.

Score (SpERT's strict setting): a relation counts when its type and both entities (boundaries and types) are
right; micro precision/recall/F1 over relations, and the same over entities.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import io as lio
from ..errors import DataError
from ..metrics import get_entities
from ..model import Transformer
from ..tokenizer import Tokenizer
from .args import RelationsArgs, finetune_relations
from .data import Sentence
from .ner import encode_sentences, special_frame
from .objectives import Rows, RowsObjective, collate, sorted_chunks
from .runs import eval_mode
from .task import TaskContext, TaskData, TaskParts, TaskSpec, data_files, train_and_dev

Entity = tuple[int, int, str]  # word start, word end (exclusive), type
Relation = tuple[Entity, Entity, str]  # head, tail, type


@dataclass
class RelationSentence:
    words: list[str]
    entities: list[Entity] = field(default_factory=list)
    relations: list[tuple[int, int, str]] = field(default_factory=list)  # head index, tail index, type

    def tags(self) -> list[str]:
        tags = ["O"] * len(self.words)
        for start, end, kind in self.entities:
            tags[start] = f"B-{kind}"
            for i in range(start + 1, end):
                tags[i] = f"I-{kind}"
        return tags

    def triples(self) -> set[Relation]:
        return {(self.entities[h], self.entities[t], kind) for h, t, kind in self.relations}


def read_spert(path: str) -> list[RelationSentence]:
    """A SpERT JSON file: [{"tokens": [...], "entities": [{"type", "start", "end"}], "relations": [{"type", "head",
    "tail"}]}] (entity ends exclusive, relation heads and tails index the entities)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} does not exist; give a SpERT-format JSON file (a list of tokens/entities/relations)")
    data = lio.read_json(p)
    if not isinstance(data, list):
        raise DataError(f"{path}: SpERT JSON is a list of sentences ({{tokens, entities, relations}}); this is a "
                        f"{type(data).__name__}")
    out = []
    for n, item in enumerate(data):
        where = f"{path}: sentence {n}"
        words = item.get("tokens") if isinstance(item, dict) else None
        if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
            raise DataError(f"{where}: \"tokens\" must be a non-empty list of words")
        entities = []
        for e in item.get("entities", []):
            start, end, kind = e.get("start"), e.get("end"), e.get("type")
            if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(words) and kind):
                raise DataError(f"{where}: entity {e} is not a typed word span inside the sentence (end exclusive)")
            entities.append((start, end, str(kind)))
        if len({(s, e) for s, e, _ in entities}) != len(entities) or _overlap(entities):
            raise DataError(f"{where}: entities overlap; BIO tagging needs separate spans")
        relations = []
        for r in item.get("relations", []):
            head, tail, kind = r.get("head"), r.get("tail"), r.get("type")
            if not (isinstance(head, int) and isinstance(tail, int) and 0 <= head < len(entities)
                    and 0 <= tail < len(entities) and head != tail and kind):
                raise DataError(f"{where}: relation {r} must name two different entities by index")
            relations.append((head, tail, str(kind)))
        out.append(RelationSentence([w.replace(" ", "_") for w in words], entities, relations))
    if not out:
        raise DataError(f"{path} holds no sentences")
    return out


def _overlap(entities: list[Entity]) -> bool:
    spans = sorted((s, e) for s, e, _ in entities)
    return any(b[0] < a[1] for a, b in zip(spans, spans[1:]))


# ---- encoding -------------------------------------------------------------------------------------------------

@dataclass
class PairRows(Rows):
    """Tag rows (as `finetune ner`) plus each row's gold entities as token spans and its relations by entity pair."""

    spans: list[list[tuple[int, int]]] = field(default_factory=list)  # token [start, end) of each gold entity
    pair_labels: list[dict[tuple[int, int], int]] = field(default_factory=list)


def word_token_spans(word_ids: np.ndarray, n_suffix: int) -> dict[int, tuple[int, int]]:
    """For each word present in a row: its token span [first sub-token, next word's first sub-token)."""
    firsts = [(int(w), p) for p, w in enumerate(word_ids) if w >= 0]
    spans = {}
    for k, (w, p) in enumerate(firsts):
        end = firsts[k + 1][1] if k + 1 < len(firsts) else len(word_ids) - n_suffix
        spans[w] = (p, end)
    return spans


def encode(tokenizer: Tokenizer, items: Sequence[RelationSentence], *, max_length: int, tags: Sequence[str],
           relation_types: Sequence[str], use_types: bool) -> tuple[PairRows, int]:
    sentences = [Sentence(s.words, s.tags(), i) for i, s in enumerate(items)]
    rows, long = encode_sentences(tokenizer, sentences, max_length=max_length, stride=None, tags=tags,
                                  use_types=use_types)
    n_suffix = len(special_frame(tokenizer)[1])
    index = {t: i + 1 for i, t in enumerate(relation_types)}  # 0 = no relation
    out = PairRows(ids=rows.ids, types=rows.types, labels=rows.labels, owner=rows.owner, word_ids=rows.word_ids)
    for row, owner in enumerate(rows.owner):
        item = items[owner]
        words = word_token_spans(rows.word_ids[row], n_suffix)
        spans = [(words[s][0], words[e - 1][1]) if s in words and e - 1 in words else None
                 for s, e, _ in item.entities]
        kept = [k for k, sp in enumerate(spans) if sp is not None]  # entities a truncated row still holds
        out.spans.append([spans[k] for k in kept])
        position = {k: i for i, k in enumerate(kept)}
        out.pair_labels.append({(position[h], position[t]): index.get(kind, 0) for h, t, kind in item.relations
                                if h in position and t in position})
    return out, long


def gold_pairs(rows: PairRows, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair of gold entities of the rows: (P, 5) (row in batch, head span, tail span) and labels (P,)."""
    pairs, labels = [], []
    for b, row in enumerate(index):
        spans = rows.spans[row]
        for h, (hs, he) in enumerate(spans):
            for t, (ts, te) in enumerate(spans):
                if h != t:
                    pairs.append((b, hs, he, ts, te))
                    labels.append(rows.pair_labels[row].get((h, t), 0))
    if not pairs:
        return torch.zeros((0, 5), dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.tensor(pairs, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


class RelationObjective(RowsObjective):
    """Per sentence: the mean tag cross-entropy of its words plus `relation_weight` x the mean relation
    cross-entropy of its entity pairs; one target per sentence."""

    perplexity = False

    def __init__(self, *args: Any, relation_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.relation_weight = relation_weight

    def _collate(self, rows: Rows, index: Sequence[int]) -> dict:
        batch = collate(rows, index, self.pad_id)
        batch["pairs"], batch["pair_labels"] = gold_pairs(rows, index)
        return batch

    def loss(self, model: Transformer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = model.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        logits = model.head_logits(hidden).float()
        labels = batch["labels"]
        B = labels.shape[0]
        tag_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                   reduction="sum") / (labels != -100).sum().clamp(min=1)
        loss = tag_loss * B
        if batch["pairs"].shape[0]:
            rel = model.pair_logits(hidden, batch["pairs"]).float()
            loss = loss + self.relation_weight * B * F.cross_entropy(rel, batch["pair_labels"])
        return loss, torch.tensor(B, device=labels.device)

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())


# ---- prediction and scores ------------------------------------------------------------------------------------

def predict(model: Transformer, rows: PairRows, items: Sequence[RelationSentence], batch_size: int = 64
            ) -> list[RelationSentence]:
    """Entities (from the tags of each word's first sub-token) and the relations between them."""
    tags = model.config.label_names
    relation_types = model.config.relation_labels
    n_suffix = len(special_frame(model.tokenizer)[1])
    out = [RelationSentence(s.words) for s in items]
    device = next(model.parameters()).device
    for chunk in sorted_chunks(rows.lengths, batch_size):
        batch = {k: v.to(device) for k, v in collate(rows, chunk, model.config.pad_id).items()}
        hidden = model.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        pred = model.head_logits(hidden).argmax(-1).cpu().numpy()
        pairs, owners = [], []
        for b, row in enumerate(chunk):
            word_ids = rows.word_ids[row]
            sentence = out[rows.owner[row]]
            word_tags = ["O"] * len(sentence.words)
            for p, w in enumerate(word_ids):
                if w >= 0:
                    word_tags[w] = tags[int(pred[b, p])]
            sentence.entities = [(s, e + 1, kind) for kind, s, e in get_entities(word_tags)]
            spans = word_token_spans(word_ids, n_suffix)
            for h, (hs, he, _) in enumerate(sentence.entities):
                for t, (ts, te, _) in enumerate(sentence.entities):
                    if h != t:
                        pairs.append((b, spans[hs][0], spans[he - 1][1], spans[ts][0], spans[te - 1][1]))
                        owners.append((rows.owner[row], h, t))
        if pairs:
            logits = model.pair_logits(hidden, torch.tensor(pairs, dtype=torch.long, device=device))
            for (owner, h, t), k in zip(owners, logits.argmax(-1).tolist()):
                if k > 0:
                    out[owner].relations.append((h, t, relation_types[k - 1]))
    return out


def prf(gold: int, predicted: int, correct: int) -> dict[str, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "gold": gold, "predicted": predicted,
            "correct": correct}


def relation_report(gold: Sequence[RelationSentence], pred: Sequence[RelationSentence]) -> dict[str, Any]:
    """Strict micro P/R/F1 of relations (type + both entities' boundaries and types), per relation type, and of
    entities (boundaries + type)."""
    g_rel = {(i, r) for i, s in enumerate(gold) for r in s.triples()}
    p_rel = {(i, r) for i, s in enumerate(pred) for r in s.triples()}
    g_ent = {(i, e) for i, s in enumerate(gold) for e in s.entities}
    p_ent = {(i, e) for i, s in enumerate(pred) for e in s.entities}
    kinds = sorted({r[1][2] for r in g_rel | p_rel})
    per_type = {k: prf(sum(r[1][2] == k for r in g_rel), sum(r[1][2] == k for r in p_rel),
                       sum(r[1][2] == k for r in g_rel & p_rel)) for k in kinds}
    return {"relations": prf(len(g_rel), len(p_rel), len(g_rel & p_rel)), "relation_types": per_type,
            "entities": prf(len(g_ent), len(p_ent), len(g_ent & p_ent)), "sentences": len(gold)}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'':<12} precision  recall      f1  support"]
    for name, r in report["relation_types"].items():
        lines.append(f"{name:<12} {r['precision']:9.4f} {r['recall']:7.4f} {r['f1']:7.4f} {r['gold']:8d}")
    for name in ("relations", "entities"):
        r = report[name]
        lines.append(f"{name + ' (micro)':<12} {r['precision']:9.4f} {r['recall']:7.4f} {r['f1']:7.4f} {r['gold']:8d}")
    return "\n".join(lines)


def extract(model: Transformer, items: Sequence[RelationSentence], *, max_length: int = 128, batch_size: int = 64
            ) -> list[RelationSentence]:
    """Entities and relations of tokenized sentences with a model fine-tuned by `finetune relations`."""
    if model.config.head != "relations":
        raise DataError(f"the model has a {model.config.head} head; extraction needs a model fine-tuned with "
                        "`lmforge finetune relations`")
    rows, _ = encode(model.tokenizer, items, max_length=max_length, tags=model.config.label_names,
                     relation_types=model.config.relation_labels, use_types=model.config.type_vocab_size > 0)
    with eval_mode(model):
        return predict(model, rows, items, batch_size)


def score(model: Transformer, items: Sequence[RelationSentence], *, max_length: int, batch_size: int = 64
          ) -> dict[str, Any]:
    return relation_report(items, extract(model, items, max_length=max_length, batch_size=batch_size))


# ---- the task ---------------------------------------------------------------------------------------------------

class RelationsTask(TaskSpec):
    name, command, head, noun, title = "relations", "finetune relations", "relations", "a relation extractor", \
        "joint entity and relation extraction"
    archs = ("encoder", "decoder")
    example = "--model ./minilm --train conll04/train.json --dev conll04/dev.json --out runs/re"
    args = RelationsArgs

    def read(self, args: RelationsArgs, seed: int) -> TaskData:
        return train_and_dev(args, read_spert, seed, data_files(args, "train", "dev"))

    def texts(self, data: TaskData) -> Iterable[str]:
        return (" ".join(s.words) for s in data.train)

    def labels(self, data: TaskData, args: RelationsArgs) -> list[str]:
        kinds = sorted({e[2] for s in data.train + data.dev for e in s.entities})
        if not kinds:
            raise DataError(f"{args.train}: no sentence has an entity")
        return ["O"] + [f"{p}-{k}" for k in kinds for p in "BI"]

    def head_options(self, data: TaskData, args: RelationsArgs) -> dict[str, Any]:
        kinds = sorted({r[2] for s in data.train + data.dev for r in s.relations})
        if not kinds:
            raise DataError(f"{args.train}: no sentence has a relation")
        return {"relation_labels": kinds}

    def setup(self, ctx: TaskContext) -> TaskParts:
        args, train, model = ctx.args, ctx.train, ctx.model
        tags, kinds = model.config.label_names, model.config.relation_labels
        for items, path in ((ctx.data.dev, args.dev or args.train),):
            _check_known(items, tags, kinds, path)
        enc = functools.partial(encode, ctx.tokenizer, max_length=ctx.max_length, tags=tags, relation_types=kinds,
                                use_types=model.config.type_vocab_size > 0)
        (train_rows, long), (dev_rows, _) = enc(ctx.data.train), enc(ctx.data.dev)
        if long:
            ctx.notes.append(f"{long:,} training sentence(s) are longer than --max-length={ctx.max_length} tokens "
                             "and were truncated")
        n_rel = sum(len(s.relations) for s in ctx.data.train)
        ctx.notes.append(f"relations: {len(ctx.data.train):,} training and {len(ctx.data.dev):,} dev sentences "
                         f"({ctx.data.dev_source}); {n_rel:,} training relations; relation types: {', '.join(kinds)}")
        objective = RelationObjective(self.name, train_rows, dev_rows, model.config.pad_id, train.seed,
                                      train.batch_size, relation_weight=args.relation_weight)
        dev = ctx.data.dev
        batch_size = train.batch_size * 2

        def evaluate(net: Transformer) -> dict[str, Any]:
            report = relation_report(dev, predict(net, dev_rows, dev, batch_size))
            return {"metric": "relation_f1", "value": report["relations"]["f1"],
                    "entity_f1": report["entities"]["f1"]}

        def finish(best: Transformer, out: Path) -> dict[str, Any]:
            with eval_mode(best):
                found = predict(best, dev_rows, dev, batch_size)
            report = relation_report(dev, found)
            lio.write_text(out / "predictions_dev.jsonl", "".join(json.dumps(to_record(s), ensure_ascii=False) + "\n"
                                                                  for s in found))
            print(format_report(report), flush=True)
            headline = (f"dev relation F1 {report['relations']['f1']:.4f} (strict), entity F1 "
                        f"{report['entities']['f1']:.4f}")
            return {"dev": report, "headline": headline}

        def test(best: Transformer, path: str) -> tuple[dict[str, Any], str]:
            items = read_spert(path)
            _check_known(items, tags, kinds, path)
            report = score(best, items, max_length=ctx.max_length, batch_size=batch_size)
            return report, f"test relation F1 {report['relations']['f1']:.4f}"

        return TaskParts(objective, finish, evaluate, test=test)


def _check_known(items: Sequence[RelationSentence], tags: Sequence[str], kinds: Sequence[str], path: str) -> None:
    known_entities = {t[2:] for t in tags if t != "O"}
    for s in items:
        for e in s.entities:
            if e[2] not in known_entities:
                raise DataError(f"{path}: entity type {e[2]!r} is not among the model's ({', '.join(sorted(known_entities))})")
        for r in s.relations:
            if r[2] not in kinds:
                raise DataError(f"{path}: relation type {r[2]!r} is not among the model's ({', '.join(kinds)})")


def to_record(s: RelationSentence) -> dict[str, Any]:
    """SpERT JSON of one sentence."""
    return {"tokens": s.words, "entities": [{"type": k, "start": a, "end": b} for a, b, k in s.entities],
            "relations": [{"type": k, "head": h, "tail": t} for h, t, k in s.relations]}


RELATIONS = RelationsTask()
__all__ = ["finetune_relations", "RELATIONS", "RelationsArgs", "RelationSentence", "read_spert", "encode", "predict",
           "extract", "score", "relation_report", "format_report", "to_record", "RelationObjective"]
