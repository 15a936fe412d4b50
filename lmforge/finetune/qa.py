"""`lmforge finetune qa`: extractive question answering (SQuAD format): a span head predicts, for every token of
"question + context", the logit that the answer starts there and the logit that it ends there.

As in BERT and transformers' run_qa: the context is cut into windows of --max-length tokens overlapping by
--stride tokens, each window holds the whole question; a training window whose context does not hold the whole
answer points at the first token (the "no answer" position). An answer is the span (start <= end, at most
--max-answer-tokens long, inside the context) with the highest start + end logit over all windows of its context,
mapped back to the context's characters. Scores are SQuAD's exact match and F1 (the official normalisation:
lower case, no punctuation, no articles, single spaces), against the best of the gold answers.
"""

from __future__ import annotations

import collections
import functools
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as HFTokenizer

from .. import io as lio
from ..corpus import json_object, read_lines
from ..errors import ConfigError, DataError
from ..model import Transformer
from ..tokenizer import Tokenizer
from .args import QaArgs, finetune_qa
from .objectives import Rows, RowsObjective, collate, pad_rows, sorted_chunks
from .runs import eval_mode
from .task import TaskContext, TaskData, TaskParts, TaskSpec, data_files, train_and_dev


@dataclass
class QaExample:
    id: str
    question: str
    context: str
    answers: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # character offsets of the answers in the context
    title: str = ""


# ---- files -------------------------------------------------------------------------------------------------

def read_squad(path: str) -> list[QaExample]:
    """SQuAD JSON ({"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", "answers"}]}]}]}) or
    JSONL with one {"id", "question", "context", "answers": [{"text", "answer_start"}]} per line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} does not exist; give a SQuAD-format JSON file (or JSONL of question/context/answers)")
    if p.suffix == ".jsonl":
        records = [(json_object(p, n, line), "") for n, line in enumerate(read_lines(p), 1) if line.strip()]
        items = [_example(r, r.get("context"), title, f"{path}:{n}") for n, (r, title) in enumerate(records, 1)]
    else:
        data = lio.read_json(p)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            raise DataError(f"{path} is not SQuAD JSON: it needs a top-level \"data\" list of articles with "
                            "\"paragraphs\"")
        items = []
        for a, article in enumerate(data["data"]):
            for q, para in enumerate(article.get("paragraphs", [])):
                context = para.get("context")
                for k, qa in enumerate(para.get("qas", [])):
                    items.append(_example(qa, context, str(article.get("title", "")), f"{path}: article {a}, "
                                          f"paragraph {q}, question {k}"))
    if not items:
        raise DataError(f"{path} holds no questions")
    return items


def _example(record: dict, context: Any, title: str, where: str) -> QaExample:
    question = record.get("question")
    if not isinstance(question, str) or not question.strip() or not isinstance(context, str) or not context:
        raise DataError(f"{where}: a question needs a non-empty \"question\" and \"context\"")
    answers, starts = [], []
    for answer in record.get("answers", []):
        text, start = answer.get("text"), answer.get("answer_start")
        if not isinstance(text, str) or not isinstance(start, int) or context[start:start + len(text)] != text:
            raise DataError(f"{where}: the answer {text!r} is not at character {start} of its context")
        answers.append(text)
        starts.append(start)
    return QaExample(str(record.get("id", where)), question.strip(), context, answers, starts, title)


def split_by_title(items: list[QaExample], titles: Iterable[str]) -> tuple[list[QaExample], list[QaExample]]:
    wanted = set(titles)
    return [x for x in items if x.title not in wanted], [x for x in items if x.title in wanted]


# ---- encoding ----------------------------------------------------------------------------------------------

def window_backend(tokenizer: Tokenizer, max_length: int, stride: int) -> HFTokenizer:
    backend = HFTokenizer.from_str(tokenizer.backend.to_str())
    backend.no_padding()
    try:
        backend.enable_truncation(max_length, stride=stride, strategy="only_second")
    except ValueError as e:
        raise ConfigError(f"--stride={stride} does not fit --max-length={max_length} ({str(e).split(',')[0]}); "
                          "use a smaller stride") from None
    return backend


@dataclass
class Windows(Rows):
    """Rows of question + context windows; `offsets` holds each token's character span in the context (-1 where the
    token is not context) and `labels` the answer's (start, end) token positions (0, 0: not in this window)."""

    offsets: list[np.ndarray] = field(default_factory=list)


def encode_questions(tokenizer: Tokenizer, items: Sequence[QaExample], *, max_length: int, stride: int,
                     use_types: bool, max_question_tokens: int = 64) -> tuple[Windows, int]:
    """Windows of every example (see the module docstring); also how many questions were cut to
    `max_question_tokens`."""
    backend = window_backend(tokenizer, max_length, stride)
    rows, cut = Windows(types=[] if use_types else None), 0
    for i, ex in enumerate(items):
        question = ex.question
        q_ids = tokenizer.encode(question)
        if len(q_ids) > max_question_tokens:
            cut += 1
            question = tokenizer.decode(q_ids[:max_question_tokens])
        try:
            enc = backend.encode(question, ex.context, add_special_tokens=True)
        except Exception as e:  # tokenizers: the question leaves no room for the context
            raise ConfigError(f"--max-length={max_length} leaves no room for the context after the question "
                              f"({e}); raise --max-length or lower --stride") from None
        for window in [enc] + list(enc.overflowing):
            seq = window.sequence_ids
            offsets = np.array([o if s == 1 else (-1, -1) for o, s in zip(window.offsets, seq)], dtype=np.int64)
            rows.ids.append(np.asarray(window.ids, dtype=np.int64))
            if rows.types is not None:
                rows.types.append(np.asarray(window.type_ids, dtype=np.int64))
            rows.offsets.append(offsets)
            rows.labels.append(np.asarray(answer_tokens(offsets, ex), dtype=np.int64))
            rows.owner.append(i)
    return rows, cut


def answer_tokens(offsets: np.ndarray, ex: QaExample) -> tuple[int, int]:
    """Token positions of the first answer's first and last characters in a window; (0, 0) when the window's
    context does not hold the whole answer (or there is none)."""
    if not ex.answers:
        return 0, 0
    a, b = ex.starts[0], ex.starts[0] + len(ex.answers[0])
    inside = np.nonzero(offsets[:, 1] > offsets[:, 0])[0]
    if not len(inside) or offsets[inside[0], 0] > a or offsets[inside[-1], 1] < b:
        return 0, 0
    start = inside[offsets[inside, 1] > a][0]
    end = inside[offsets[inside, 0] < b][-1]
    return int(start), int(end)


# ---- training ------------------------------------------------------------------------------------------------

class SpanObjective(RowsObjective):
    """Cross-entropy of the start position plus that of the end position (over the real tokens of each window);
    two targets per window."""

    perplexity = False

    def loss(self, model: Transformer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = span_logits(model, batch)
        labels = batch["labels"]
        smoothing = self.label_smoothing if model.training else 0.0
        loss = (F.cross_entropy(start, labels[:, 0], reduction="sum", label_smoothing=smoothing)
                + F.cross_entropy(end, labels[:, 1], reduction="sum", label_smoothing=smoothing))
        return loss, torch.tensor(2 * labels.shape[0], device=labels.device)

    def tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())


def span_logits(model: Transformer, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end logits (B, T), padding at -inf."""
    logits = model(batch["input_ids"], batch["attention_mask"], token_type_ids=batch.get("token_type_ids")).float()
    pad = batch["attention_mask"] == 0
    return logits[..., 0].masked_fill(pad, -1e4), logits[..., 1].masked_fill(pad, -1e4)


# ---- answers and scores ---------------------------------------------------------------------------------------

def best_spans(model: Transformer, rows: Windows, items: Sequence[QaExample], *, batch_size: int = 32,
               max_answer_tokens: int = 30, n_best: int = 20) -> list[dict[str, Any]]:
    """The best answer of every example: {"text", "score", "start", "end"} (character span in its context)."""
    best: list[dict[str, Any]] = [{"text": "", "score": float("-inf"), "start": 0, "end": 0} for _ in items]
    device = next(model.parameters()).device
    for chunk in sorted_chunks(rows.lengths, batch_size):
        batch = {k: v.to(device) for k, v in collate(rows, chunk, model.config.pad_id).items() if k != "labels"}
        start_logits, end_logits = (x.cpu().numpy() for x in span_logits(model, batch))
        for r, row in enumerate(chunk):
            offsets = rows.offsets[row]
            context = offsets[:, 1] > offsets[:, 0]
            s_log = np.where(context, start_logits[r, :len(offsets)], -np.inf)
            e_log = np.where(context, end_logits[r, :len(offsets)], -np.inf)
            top_s = np.argsort(-s_log)[:n_best]
            top_e = np.argsort(-e_log)[:n_best]
            ex = items[rows.owner[row]]
            here = best[rows.owner[row]]
            for s in top_s:
                if not context[s]:
                    break
                for e in top_e:
                    if not context[e] or e < s or e - s + 1 > max_answer_tokens:
                        continue
                    score = float(s_log[s] + e_log[e])
                    if score > here["score"]:
                        a, b = int(offsets[s, 0]), int(offsets[e, 1])
                        while a < b and ex.context[a].isspace():  # byte-level tokens carry the space before them
                            a += 1
                        while b > a and ex.context[b - 1].isspace():
                            b -= 1
                        here.update(text=ex.context[a:b], score=score, start=a, end=b)
    return best


def answer(model: Transformer, question: str, contexts: Sequence[str], *, max_length: int = 256,
           stride: int | None = None, max_answer_tokens: int = 30, batch_size: int = 32) -> list[dict[str, Any]]:
    """The best span of each context for `question`: [{"text", "score", "start", "end", "context"}], best first
    (`stride` defaults to 64 tokens, at most a quarter of `max_length`)."""
    stride = min(64, max_length // 4) if stride is None else stride
    if model.config.head != "span":
        raise ConfigError(f"the reader has a {model.config.head} head; extractive answers need a model fine-tuned "
                          "with `lmforge finetune qa`")
    items = [QaExample(str(i), question, c) for i, c in enumerate(contexts)]
    rows, _ = encode_questions(model.tokenizer, items, max_length=max_length, stride=stride,
                               use_types=model.config.type_vocab_size > 0)
    with eval_mode(model):
        spans = best_spans(model, rows, items, batch_size=batch_size, max_answer_tokens=max_answer_tokens)
    found = [{**s, "context": i} for i, s in enumerate(spans)]
    return sorted(found, key=lambda s: -s["score"])


PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def f1_score(prediction: str, truth: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and F1 (x100), each against the best of an example's gold answers (SQuAD v1.1's evaluate)."""
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0, "count": 0}
    em = [max(float(normalize_answer(p) == normalize_answer(g)) for g in gold) for p, gold in zip(predictions, answers)]
    f1 = [max(f1_score(p, g) for g in gold) for p, gold in zip(predictions, answers)]
    return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1)), "count": len(em)}


def score(model: Transformer, items: Sequence[QaExample], *, max_length: int, stride: int, batch_size: int = 32,
          max_answer_tokens: int = 30) -> dict[str, Any]:
    items = [x for x in items if x.answers]
    if not items:
        raise DataError("no question with an answer to score")
    rows, _ = encode_questions(model.tokenizer, items, max_length=max_length, stride=stride,
                               use_types=model.config.type_vocab_size > 0)
    with eval_mode(model):
        spans = best_spans(model, rows, items, batch_size=batch_size, max_answer_tokens=max_answer_tokens)
    report = squad_scores([s["text"] for s in spans], [x.answers for x in items])
    report["predictions"] = {x.id: s["text"] for x, s in zip(items, spans)}
    return report


# ---- the task ------------------------------------------------------------------------------------------------

class QaTask(TaskSpec):
    name, command, head, noun, title = "qa", "finetune qa", "span", "a span reader", "extractive QA"
    archs = ("encoder", "decoder")
    example = "--model ./minilm --train qa-train.json --dev qa-dev.json --out runs/qa"
    args = QaArgs

    def read(self, args: QaArgs, seed: int) -> TaskData:
        files = data_files(args, "train", "dev")
        if args.dev_titles:
            items = read_squad(args.train)
            train, dev = split_by_title(items, args.dev_titles.split("|"))
            if not dev or not train:
                raise DataError(f"--dev-titles {args.dev_titles!r}: {len(train)} training and {len(dev)} dev "
                                f"questions in {args.train}; name article titles of the file, separated by |")
            return TaskData(train, dev, f"{args.train} (articles {args.dev_titles})", files)
        return train_and_dev(args, read_squad, seed, files)

    def texts(self, data: TaskData) -> Iterable[str]:
        seen = set()
        for ex in data.train:
            if ex.context not in seen:
                seen.add(ex.context)
                yield ex.context
            yield ex.question

    def labels(self, data: TaskData, args: QaArgs) -> list[str]:
        return ["start", "end"]

    def setup(self, ctx: TaskContext) -> TaskParts:
        args, train = ctx.args, ctx.train
        if not 0 <= args.stride < ctx.max_length // 2:
            raise ConfigError(f"--stride={args.stride} must be >= 0 and less than half of --max-length="
                              f"{ctx.max_length}")
        encode = functools.partial(encode_questions, ctx.tokenizer, max_length=ctx.max_length, stride=args.stride,
                                   use_types=ctx.model.config.type_vocab_size > 0)
        items = [x for x in ctx.data.train if x.answers]
        if not items:
            raise DataError(f"{args.train}: no training question has an answer")
        dev = [x for x in ctx.data.dev if x.answers]
        (train_rows, cut), (dev_rows, _) = encode(items), encode(dev)
        inside = sum(int(label[0] > 0) for label in train_rows.labels)
        ctx.notes.append(f"qa: {len(items):,} training questions in {len(train_rows):,} windows ({inside:,} hold "
                         f"the answer), {len(dev):,} dev questions ({ctx.data.dev_source})"
                         + (f"; {cut} long questions cut to 64 tokens" if cut else ""))
        objective = SpanObjective(self.name, train_rows, dev_rows, ctx.model.config.pad_id, train.seed,
                                  train.batch_size, train.label_smoothing)
        sample = dev if not args.eval_samples else dev[:args.eval_samples]
        run = functools.partial(score, max_length=ctx.max_length, stride=args.stride, batch_size=train.batch_size * 2,
                                max_answer_tokens=args.max_answer_tokens)

        def evaluate(net: Transformer) -> dict[str, Any]:
            report = run(net, sample)
            return {"metric": "f1", "value": report["f1"], "exact_match": report["exact_match"]}

        def finish(best: Transformer, out: Path) -> dict[str, Any]:
            report = run(best, dev)
            predictions = report.pop("predictions")
            lio.write_text(out / "predictions_dev.json", json.dumps(predictions, ensure_ascii=False, indent=1))
            headline = f"dev exact match {report['exact_match']:.2f}, F1 {report['f1']:.2f} ({report['count']:,} questions)"
            print(headline, flush=True)
            return {"dev": report, "headline": headline}

        def test(best: Transformer, path: str) -> tuple[dict[str, Any], str]:
            report = run(best, read_squad(path))
            report.pop("predictions")
            return report, f"test exact match {report['exact_match']:.2f}, F1 {report['f1']:.2f}"

        return TaskParts(objective, finish, evaluate, test=test)


QA = QaTask()
__all__ = ["finetune_qa", "QA", "QaArgs", "QaExample", "read_squad", "split_by_title", "encode_questions", "answer",
           "best_spans", "squad_scores", "normalize_answer", "f1_score", "score", "SpanObjective", "pad_rows"]
