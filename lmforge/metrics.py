"""Task metrics: classification (accuracy, precision/recall/F1, confusion matrix), entities in BIO tags with
CoNLL semantics, BLEU (sacrebleu), ROUGE-1/2/L, and perplexity.

Entity extraction follows conlleval and seqeval's default (non-strict) mode: a chunk starts at B-X, at I-X after
O or after a chunk of another type (an I- without a B- opens a chunk), at E-/S- where those schemes are used; it
ends where the next tag does not continue it. An entity counts as correct only when its type, start and end all
match; precision, recall and F1 are micro-averaged over entities, as seqeval's `f1_score`.

ROUGE is computed here (no rouge-score dependency) with rouge-score's definitions: lower-cased tokens of letters and
digits, n-gram overlap with clipped counts, ROUGE-L from the longest common subsequence, and the F-measure of
each pair averaged over the corpus. Our tokens keep non-ASCII letters (rouge-score's drop them), so German or
French text is scored on its words.
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path
from typing import Any, Hashable, Sequence

from . import io as lio
from .errors import LmforgeError

# ---- classification ------------------------------------------------------------------------------------


def _check_lengths(gold: Sequence, pred: Sequence) -> None:
    if len(gold) != len(pred):
        raise LmforgeError(f"{len(gold)} gold labels but {len(pred)} predictions; they must pair up one to one")
    if not gold:
        raise LmforgeError("no examples to score")


def accuracy(gold: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    _check_lengths(gold, pred)
    return sum(g == p for g, p in zip(gold, pred)) / len(gold)


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def confusion_matrix(gold: Sequence[Hashable], pred: Sequence[Hashable], labels: Sequence[Hashable]) -> list[list[int]]:
    """Counts with gold labels as rows and predictions as columns, in the order of `labels`."""
    _check_lengths(gold, pred)
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, pred):
        if g not in index or p not in index:
            raise LmforgeError(f"label {g if g not in index else p!r} is not among {list(labels)}")
        matrix[index[g]][index[p]] += 1
    return matrix


def classification_report(gold: Sequence[Hashable], pred: Sequence[Hashable],
                          labels: Sequence[Hashable] | None = None) -> dict[str, Any]:
    """Accuracy; precision, recall, F1 and support per class; their macro averages (unweighted mean over
    classes, as scikit-learn) and support-weighted averages; the confusion matrix."""
    _check_lengths(gold, pred)
    labels = list(labels) if labels is not None else sorted(set(gold) | set(pred), key=str)
    matrix = confusion_matrix(gold, pred, labels)
    per_class = {}
    for i, label in enumerate(labels):
        tp = matrix[i][i]
        n_gold = sum(matrix[i])
        n_pred = sum(row[i] for row in matrix)
        p, r, f = _prf(tp, n_pred, n_gold)
        per_class[str(label)] = {"precision": p, "recall": r, "f1": f, "support": n_gold}
    n = len(gold)
    classes = list(per_class.values())
    report = {"accuracy": accuracy(gold, pred), "examples": n, "labels": [str(x) for x in labels],
              "per_class": per_class, "confusion": matrix}
    for key in ("precision", "recall", "f1"):
        report[f"macro_{key}"] = sum(c[key] for c in classes) / len(classes)
        report[f"weighted_{key}"] = sum(c[key] * c["support"] for c in classes) / n
    return report


def _prf_table(first: str, rows: dict[str, dict[str, Any]], total: tuple[str, dict[str, Any], int]) -> list[str]:
    width = max(8, *(len(name) for name in rows), len(total[0]))
    lines = [f"{first.ljust(width)}  precision  recall     f1  support"]
    for name, c in [*rows.items(), total[:2]]:
        support = c["support"] if name in rows else total[2]
        lines.append(f"{name.ljust(width)}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:.4f}  {support:7d}")
    return lines


def format_classification(report: dict[str, Any]) -> str:
    macro = {k: report[f"macro_{k}"] for k in ("precision", "recall", "f1")}
    lines = _prf_table("label", report["per_class"], ("macro", macro, report["examples"]))
    return "\n".join(lines + [f"accuracy {report['accuracy']:.4f} ({report['examples']} examples)"])


def plot_confusion(matrix: list[list[int]], labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """The confusion matrix as a PNG: counts, and colour by the share of each gold row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    size = min(2.0 + 0.6 * n, 14)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    shares = [[v / max(sum(row), 1) for v in row] for row in matrix]
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), [str(x) for x in labels], rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), [str(x) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=8,
                        color="white" if shares[i][j] > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of gold row")
    ax.set_title(title or "confusion matrix")
    return lio.save_figure(fig, path)


# ---- entities (CoNLL semantics) ------------------------------------------------------------------------

def _split_tag(tag: str) -> tuple[str, str]:
    """('B', 'PER') from 'B-PER'; ('O', '') for O; a tag without a prefix is an I- of its own type."""
    if tag in ("O", "", "."):
        return "O", ""
    if len(tag) > 1 and tag[1] in "-_" and tag[0] in "BIESLU":
        prefix = {"L": "E", "U": "S"}.get(tag[0], tag[0])
        return prefix, tag[2:]
    return "I", tag


def _ends(prev: str, prev_type: str, cur: str, cur_type: str) -> bool:
    """Whether the chunk open at the previous tag ends before the current one."""
    if prev == "O":
        return False
    if prev in ("E", "S"):
        return True
    if cur in ("B", "S", "O"):
        return True
    return prev_type != cur_type


def _starts(prev: str, prev_type: str, cur: str, cur_type: str) -> bool:
    """Whether a chunk starts at the current tag."""
    if cur == "O":
        return False
    if cur in ("B", "S"):
        return True
    if prev in ("E", "S", "O"):
        return True  # I- or E- with no open chunk before it
    return prev_type != cur_type


def get_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks of one tag sequence as (type, first, last) with inclusive word indices."""
    chunks: list[tuple[str, int, int]] = []
    prev, prev_type, start = "O", "", -1
    for i, tag in enumerate(list(tags) + ["O"]):
        cur, cur_type = _split_tag(tag)
        if _ends(prev, prev_type, cur, cur_type):
            chunks.append((prev_type, start, i - 1))
        if _starts(prev, prev_type, cur, cur_type):
            start = i
        prev, prev_type = cur, cur_type
    return chunks


def entity_report(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (micro over entities, and per type) of tag sequences."""
    if len(gold) != len(pred):
        raise LmforgeError(f"{len(gold)} gold sentences but {len(pred)} predicted ones; they must pair up")
    gold_set, pred_set = set(), set()
    for s, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise LmforgeError(f"sentence {s + 1}: {len(g)} gold tags but {len(p)} predicted ones")
        gold_set.update((s, *e) for e in get_entities(g))
        pred_set.update((s, *e) for e in get_entities(p))
    correct = gold_set & pred_set
    types = sorted({e[1] for e in gold_set | pred_set})
    per_type = {}
    for t in types:
        tp = sum(1 for e in correct if e[1] == t)
        n_pred = sum(1 for e in pred_set if e[1] == t)
        n_gold = sum(1 for e in gold_set if e[1] == t)
        p, r, f = _prf(tp, n_pred, n_gold)
        per_type[t] = {"precision": p, "recall": r, "f1": f, "support": n_gold, "predicted": n_pred}
    p, r, f = _prf(len(correct), len(pred_set), len(gold_set))
    tokens = sum(len(g) for g in gold)
    token_acc = sum(a == b for g, q in zip(gold, pred) for a, b in zip(g, q)) / max(tokens, 1)
    return {"precision": p, "recall": r, "f1": f, "gold_entities": len(gold_set), "predicted_entities": len(pred_set),
            "correct_entities": len(correct), "per_type": per_type, "token_accuracy": token_acc,
            "sentences": len(gold)}


def format_entities(report: dict[str, Any]) -> str:
    lines = _prf_table("type", report["per_type"], ("all", report, report["gold_entities"]))
    return "\n".join(lines + [f"token accuracy {report['token_accuracy']:.4f} ({report['sentences']} sentences)"])


# ---- generation metrics --------------------------------------------------------------------------------

def bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
         tokenize: str = "13a", lowercase: bool = False) -> dict[str, Any]:
    """Corpus BLEU through sacrebleu (its default 13a tokenization): the score, its n-gram precisions, the
    brevity penalty and sacrebleu's signature. `references` is one reference per hypothesis, or several
    reference streams (each a list as long as the hypotheses)."""
    import sacrebleu

    streams = [list(references)] if references and isinstance(references[0], str) else [list(r) for r in references]
    for stream in streams:
        if len(stream) != len(hypotheses):
            raise LmforgeError(f"{len(hypotheses)} hypotheses but {len(stream)} references; they must pair up line by line")
    if not hypotheses:
        raise LmforgeError("no hypotheses to score")
    metric = sacrebleu.metrics.BLEU(tokenize=tokenize, lowercase=lowercase)
    score = metric.corpus_score(list(hypotheses), streams)
    return {"bleu": score.score, "precisions": list(score.precisions), "bp": score.bp,
            "sys_len": score.sys_len, "ref_len": score.ref_len, "signature": str(metric.get_signature())}


_WORD = re.compile(r"[^\W_]+")


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters and digits."""
    return _WORD.findall(text.lower())


def _ngrams(tokens: list[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _lcs(a: list[str], b: list[str]) -> int:
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_pair(hypothesis: str, reference: str) -> dict[str, dict[str, float]]:
    """ROUGE-1, ROUGE-2 and ROUGE-L precision, recall and F-measure of one hypothesis against one reference."""
    h, r = rouge_tokens(hypothesis), rouge_tokens(reference)
    out = {}
    for n in (1, 2):
        hn, rn = _ngrams(h, n), _ngrams(r, n)
        overlap = sum((hn & rn).values())
        p, rec, f = _prf(overlap, sum(hn.values()), sum(rn.values()))
        out[f"rouge{n}"] = {"precision": p, "recall": rec, "f1": f}
    p, rec, f = _prf(_lcs(h, r), len(h), len(r))
    out["rougeL"] = {"precision": p, "recall": rec, "f1": f}
    return out


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus ROUGE-1/2/L: each pair's F-measure (and precision, recall) averaged over the pairs, in [0, 1]."""
    if len(hypotheses) != len(references):
        raise LmforgeError(f"{len(hypotheses)} hypotheses but {len(references)} references; they must pair up")
    if not hypotheses:
        raise LmforgeError("no hypotheses to score")
    sums: dict[str, float] = collections.defaultdict(float)
    for h, r in zip(hypotheses, references):
        for name, scores in rouge_pair(h, r).items():
            for key, value in scores.items():
                sums[f"{name}_{key}" if key != "f1" else name] += value
    return {k: v / len(hypotheses) for k, v in sums.items()}


def perplexity(mean_loss: float) -> float:
    """exp of a mean loss in nats (capped to stay finite)."""
    return math.exp(min(mean_loss, 50.0))


__all__ = ["accuracy", "classification_report", "confusion_matrix", "plot_confusion", "format_classification",
           "get_entities", "entity_report", "format_entities", "bleu", "rouge", "rouge_pair", "rouge_tokens",
           "perplexity"]
