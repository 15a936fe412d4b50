"""The n-gram baseline: interpolated modified Kneser-Ney (Chen and Goodman 1998, as KenLM's lmplz estimates it) of
order 1-5 over words or any lmforge tokenizer's ids, written as an ARPA file, and scored from ARPA files (ours or
KenLM's) on text or on prepared token files, so it sits beside a Transformer on the same tokens.

Estimation, for each order n (sentences padded with <s> ... </s>):
- adjusted counts a: the raw count for the highest order and for n-grams that start with <s>; otherwise the
  number of distinct words seen before the n-gram (its continuation count);
- discounts D1, D2, D3+ of each order from the counts of counts t1..t4 of its adjusted counts:
  Y = t1 / (t1 + 2 t2), Dk = k - (k + 1) Y t(k+1) / tk (when a t is 0, KenLM's fallback 0.5, 1, 1.5);
- p(w | h) = (a(hw) - D(a(hw))) / sum_x a(hx) + gamma(h) p(w | h'), with
  gamma(h) = (D1 N1(h.) + D2 N2(h.) + D3+ N3+(h.)) / sum_x a(hx); unigrams interpolate with the uniform
  distribution over the vocabulary (<s> excluded, <unk> included, whose whole probability is that share).
The ARPA file stores p(w | h) for every seen n-gram and gamma(h) as the backoff weight of h, so ARPA's backoff
rule gives the interpolated probability of every n-gram, seen or not (the kenlm module computes the same
perplexity from it: tested).

Everything is numpy over integer n-gram arrays (rows compared as big-endian bytes, so a sort is lexicographic):
the 2.1M tokens of WikiText-2 give a 5-gram model in well under a minute.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from .. import io as lio
from ..errors import ConfigError, DataError

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK = (0.5, 1.0, 1.5)  # KenLM's --discount_fallback
HEADER = "# lmforge ngram"


# ---- n-gram arrays -------------------------------------------------------------------------------------------

def _keys(rows: np.ndarray) -> np.ndarray:
    """One comparable (void) key per row of a (M, n) integer array: big-endian uint32 bytes, so byte order is
    lexicographic order."""
    rows = np.ascontiguousarray(rows, dtype=">u4")
    return rows.view(np.dtype((np.void, 4 * rows.shape[1]))).ravel()


def _rows(keys: np.ndarray, n: int) -> np.ndarray:
    return keys.view(">u4").reshape(-1, n).astype(np.int64)


def _lookup(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each key in the sorted `table`, -1 where absent."""
    if not len(table):
        return np.full(len(keys), -1, dtype=np.int64)
    at = np.searchsorted(table, keys)
    at = np.minimum(at, len(table) - 1)
    return np.where(table[at] == keys, at, -1)


def windows(stream: np.ndarray, sentence: np.ndarray, n: int) -> np.ndarray:
    """All n-grams of a padded stream that stay inside one sentence: (M, n)."""
    if len(stream) < n:
        return np.zeros((0, n), dtype=np.int64)
    view = np.lib.stride_tricks.sliding_window_view(stream, n)
    same = sentence[: len(stream) - n + 1] == sentence[n - 1:]
    return view[same]


@dataclass
class Vocabulary:
    """Words (or token ids written as numbers) <-> ids; 0, 1, 2 are <s>, </s>, <unk>."""

    words: list[str] = field(default_factory=lambda: [BOS, EOS, UNK])
    index: dict[str, int] = field(default_factory=lambda: {BOS: 0, EOS: 1, UNK: 2})

    def add(self, word: str) -> int:
        i = self.index.get(word)
        if i is None:
            i = self.index[word] = len(self.words)
            self.words.append(word)
        return i

    def get(self, word: str) -> int:
        return self.index.get(word, 2)

    def __len__(self) -> int:
        return len(self.words)


def padded_stream(sentences: Iterable[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """<s> w1 .. wk </s> for every sentence, end to end, and the sentence index of each position."""
    parts, owner = [], []
    for s, ids in enumerate(sentences):
        arr = np.empty(len(ids) + 2, dtype=np.int64)
        arr[0], arr[-1] = 0, 1
        arr[1:-1] = ids
        parts.append(arr)
        owner.append(np.full(len(arr), s, dtype=np.int64))
    if not parts:
        raise DataError("no sentences to count; give a corpus with text")
    return np.concatenate(parts), np.concatenate(owner)


# ---- estimation ---------------------------------------------------------------------------------------------

@dataclass
class Order:
    """The n-grams of one order, sorted: keys, log10 probabilities and log10 backoffs (0 where not a context)."""

    keys: np.ndarray
    logp: np.ndarray
    backoff: np.ndarray
    discounts: tuple[float, float, float] = FALLBACK

    def __len__(self) -> int:
        return len(self.keys)


@dataclass
class NgramModel:
    orders: list[Order]  # orders[0] = unigrams
    vocab: Vocabulary
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def order(self) -> int:
        return len(self.orders)


def discounts(adjusted: np.ndarray, notes: list[str], n: int) -> tuple[float, float, float]:
    t = [int((adjusted == k).sum()) for k in (1, 2, 3, 4)]
    try:
        y = t[0] / (t[0] + 2 * t[1])
        d = tuple(k - (k + 1) * y * t[k] / t[k - 1] for k in (1, 2, 3))
    except ZeroDivisionError:
        d = (-1.0, -1.0, -1.0)
    if not all(0 < x < k + 1 for x, k in zip(d, (1, 2, 3))):
        notes.append(f"order {n}: counts of counts {t} give no valid discounts; using KenLM's fallback "
                     f"{FALLBACK} (a corpus this small gives a weak model)")
        return FALLBACK
    return d  # type: ignore[return-value]


def estimate(sentences: Iterable[Sequence[int]], vocab: Vocabulary, order: int, notes: list[str] | None = None
             ) -> NgramModel:
    """Interpolated modified Kneser-Ney of `order` over sentences of word ids (see the module docstring)."""
    if not 1 <= order <= 9:
        raise ConfigError(f"--order={order} must be between 1 and 9 (5 is usual)")
    notes = notes if notes is not None else []
    stream, sentence = padded_stream(sentences)
    counted: list[tuple[np.ndarray, np.ndarray]] = []  # per order: sorted unique keys, raw counts
    for n in range(1, order + 1):
        grams = windows(stream, sentence, n)
        if n > 1:
            grams = grams[(grams[:, 1:] != 0).all(1)]  # <s> only opens an n-gram
        keys, counts = np.unique(_keys(grams), return_counts=True)
        counted.append((keys, counts))
    vocab_ids = np.arange(len(vocab), dtype=np.int64)
    uni = _keys(vocab_ids[:, None])  # every vocabulary word is a unigram (unseen <unk>: adjusted count 0)
    adjusted: list[np.ndarray] = []
    keys_by_order: list[np.ndarray] = []
    for n in range(1, order + 1):
        keys, raw = counted[n - 1]
        if n == 1:
            keys, raw = uni, np.zeros(len(uni), dtype=np.int64)
            raw[_lookup(uni, counted[0][0])] = counted[0][1]
        rows = _rows(keys, n)
        if n == order:
            a = raw.astype(np.int64)
        else:
            longer = _rows(counted[n][0], n + 1)
            suffix_at = _lookup(keys, _keys(longer[:, 1:]))
            a = np.bincount(suffix_at[suffix_at >= 0], minlength=len(keys)).astype(np.int64)
            a = np.where(rows[:, 0] == 0, raw, a)  # n-grams that start with <s>: raw counts
        keys_by_order.append(keys)
        adjusted.append(a)
    orders: list[Order] = []
    for n in range(1, order + 1):
        keys, a = keys_by_order[n - 1], adjusted[n - 1]
        rows = _rows(keys, n)
        scored = rows[:, -1] != 0 if n == 1 else np.ones(len(keys), dtype=bool)  # <s> is never predicted
        d = discounts(a[scored & (a > 0)], notes, n)
        disc = np.where(a >= 3, d[2], np.where(a == 2, d[1], np.where(a == 1, d[0], 0.0)))
        context = np.zeros(len(keys), dtype=np.int64) if n == 1 else _context_index(rows, keys_by_order[n - 2])
        n_ctx = 1 if n == 1 else len(keys_by_order[n - 2])
        total = np.bincount(context[scored], weights=a[scored], minlength=n_ctx)
        mass = np.bincount(context[scored], weights=disc[scored], minlength=n_ctx)
        gamma = np.divide(mass, total, out=np.zeros(n_ctx), where=total > 0)
        prob = np.divide(a - disc, total[context], out=np.zeros(len(keys)), where=total[context] > 0)
        if n == 1:
            uniform = 1.0 / int(scored.sum())
            prob = prob + gamma[0] * uniform
        else:
            lower = _lookup(orders[-1].keys, _keys(rows[:, 1:]))
            prob = prob + gamma[context] * 10.0 ** orders[-1].logp[lower]
            orders[-1].backoff = np.where(total > 0, np.log10(np.maximum(gamma, 1e-300)), 0.0)
            orders[-1].backoff[total == 0] = 0.0
        logp = np.where(scored, np.log10(np.maximum(prob, 1e-300)), -99.0)
        orders.append(Order(keys, logp, np.zeros(len(keys)), d))
    return NgramModel(orders, vocab, {"order": order, "tokens": int(len(stream)), "notes": notes})


def _context_index(rows: np.ndarray, lower_keys: np.ndarray) -> np.ndarray:
    at = _lookup(lower_keys, _keys(rows[:, :-1]))
    if (at < 0).any():  # every context of a counted n-gram is a counted (n-1)-gram
        raise AssertionError("an n-gram context is missing from the lower order")
    return at


# ---- scoring ----------------------------------------------------------------------------------------------------

def score_sentences(model: NgramModel, sentences: Iterable[Sequence[int]]) -> dict[str, Any]:
    """log10 probability of every word and </s> of the sentences under ARPA's backoff rule, vectorised: per
    position, the longest n-gram in the model gives log p, plus the backoffs of the longer contexts that exist."""
    stream, sentence = padded_stream(sentences)
    N = model.order
    positions = np.nonzero(stream != 0)[0]  # every token but <s> is predicted
    start = np.zeros(len(stream), dtype=np.int64)  # the position of each token's sentence start
    first = np.r_[0, np.nonzero(np.diff(sentence))[0] + 1]
    start[first] = first
    start = np.maximum.accumulate(start)
    logp = np.zeros(len(positions))
    found = np.zeros(len(positions), dtype=bool)
    backoff_sum = np.zeros(len(positions))
    for n in range(N, 0, -1):  # longest first: the first n-gram found wins; longer contexts add their backoffs
        ok = positions - (n - 1) >= start[positions]
        idx = positions[ok]
        grams = np.stack([stream[idx - (n - 1) + j] for j in range(n)], 1)
        at = _lookup(model.orders[n - 1].keys, _keys(grams))
        sel = np.nonzero(ok)[0]
        new = (at >= 0) & ~found[sel]
        logp[sel[new]] = model.orders[n - 1].logp[at[new]]
        found[sel[new]] = True
        if n > 1:  # the context (n-1 words) of positions not yet found contributes its backoff
            ctx_at = _lookup(model.orders[n - 2].keys, _keys(grams[:, :-1]))
            pending = ~found[sel] & (ctx_at >= 0)
            backoff_sum[sel[pending]] += model.orders[n - 2].backoff[ctx_at[pending]]
    total = logp + backoff_sum
    unknown = int((stream[positions] == 2).sum())
    log10 = float(total.sum())
    count = len(positions)
    return {"log10_prob": log10, "tokens": count, "oov": unknown,
            "ppl": 10 ** (-log10 / count) if count else float("nan"), "per_token": total}


# ---- ARPA ----------------------------------------------------------------------------------------------------------

def write_arpa(model: NgramModel, path: str | Path, header: dict[str, Any] | None = None) -> Path:
    """The model as an ARPA file (atomically): comment lines, then \\data\\ and one section per order."""
    def lines() -> Iterator[str]:
        for key, value in (header or {}).items():
            yield f"{HEADER} {key}={value}\n"
        yield "\n\\data\\\n"
        for n, o in enumerate(model.orders, 1):
            yield f"ngram {n}={len(o)}\n"
        words = np.array(model.vocab.words, dtype=object)
        for n, o in enumerate(model.orders, 1):
            yield f"\n\\{n}-grams:\n"
            rows = _rows(o.keys, n)
            text = words[rows[:, 0]] if n == 1 else [" ".join(r) for r in words[rows]]
            last = n == model.order
            for k in range(0, len(o), 65536):
                chunk = []
                for i in range(k, min(k + 65536, len(o))):
                    lp = "-99" if o.logp[i] <= -99 else f"{o.logp[i]:.7g}"
                    if last or o.backoff[i] == 0:
                        chunk.append(f"{lp}\t{text[i]}\n")
                    else:
                        chunk.append(f"{lp}\t{text[i]}\t{o.backoff[i]:.7g}\n")
                yield "".join(chunk)
        yield "\n\\end\\\n"

    with lio.atomic_write(path, "w") as f:
        for part in lines():
            f.write(part)
    return Path(path)


def read_arpa(path: str | Path) -> NgramModel:
    """An ARPA file (ours, KenLM's, SRILM's) as a model to score with; its `# lmforge ngram` header as meta."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{path} does not exist; give an ARPA file (lmforge ngram train ... --out model.arpa)")
    vocab = Vocabulary()
    meta: dict[str, Any] = {}
    sections: dict[int, tuple[list, list, list]] = {}
    counts: dict[int, int] = {}
    n = 0
    with open(p, encoding="utf-8", errors="strict") as f:
        try:
            for lineno, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if n == 0:
                    if line.startswith(HEADER):
                        key, _, value = line[len(HEADER):].strip().partition("=")
                        meta[key] = value
                    elif line.startswith("ngram "):
                        k, _, c = line[6:].partition("=")
                        counts[int(k)] = int(c)
                    elif line.startswith("\\") and line.endswith("-grams:"):
                        n = int(line[1:line.index("-")])
                        sections[n] = ([], [], [])
                    continue
                if not line:
                    continue
                if line.startswith("\\"):
                    if line == "\\end\\":
                        break
                    n = int(line[1:line.index("-")])
                    sections[n] = ([], [], [])
                    continue
                parts = line.split("\t") if "\t" in line else line.split()
                if "\t" in line:
                    words = parts[1].split(" ")
                    bo = float(parts[2]) if len(parts) > 2 else 0.0
                else:
                    words, bo = parts[1:1 + n], float(parts[1 + n]) if len(parts) > 1 + n else 0.0
                keys, logps, backoffs = sections[n]
                keys.append([vocab.add(w) for w in words])
                logps.append(float(parts[0]))
                backoffs.append(bo)
        except (ValueError, IndexError, KeyError, UnicodeDecodeError) as e:
            raise DataError(f"{path}:{lineno}: not an ARPA n-gram line ({e}); is it an ARPA file?") from None
    if not sections or sorted(sections) != list(range(1, max(sections) + 1)):
        raise DataError(f"{path} is not an ARPA file (no \\data\\ and \\1-grams: sections)")
    orders = []
    for k in range(1, max(sections) + 1):
        keys, logps, backoffs = sections[k]
        if counts.get(k, len(keys)) != len(keys):
            raise DataError(f"{path}: the header announces {counts[k]:,} {k}-grams but the file holds {len(keys):,}; "
                            "it is truncated")
        key_arr = _keys(np.array(keys, dtype=np.int64).reshape(-1, k))
        order = np.argsort(key_arr, kind="stable")
        orders.append(Order(key_arr[order], np.array(logps)[order], np.array(backoffs)[order]))
    return NgramModel(orders, vocab, meta)


# ---- corpora -------------------------------------------------------------------------------------------------------

def sentences_from_stream(ids: np.ndarray, boundaries: set[int]) -> list[np.ndarray]:
    """A prepared token stream cut at its document boundaries (the tokenizer's BOS/EOS ids, which are dropped):
    each document is one sentence, its end predicted as </s>."""
    ids = np.asarray(ids, dtype=np.int64)
    cut = np.isin(ids, list(boundaries)) if boundaries else np.zeros(len(ids), dtype=bool)
    at = np.nonzero(cut)[0]
    edges = np.r_[-1, at, len(ids)]
    return [ids[a + 1:b] for a, b in zip(edges[:-1], edges[1:]) if b > a + 1]


def encode_ids(vocab: Vocabulary, sentences: Iterable[np.ndarray], grow: bool) -> list[np.ndarray]:
    """Token-id sentences as vocabulary indices (the id written as a number is the word)."""
    out = []
    for s in sentences:
        out.append(np.array([vocab.add(str(int(t))) if grow else vocab.get(str(int(t))) for t in s], dtype=np.int64)
                   if len(s) < 64 else _map_ids(vocab, s, grow))
    return out


def _map_ids(vocab: Vocabulary, s: np.ndarray, grow: bool) -> np.ndarray:
    uniq, inverse = np.unique(s, return_inverse=True)
    mapped = np.array([vocab.add(str(int(t))) if grow else vocab.get(str(int(t))) for t in uniq], dtype=np.int64)
    return mapped[inverse]


def encode_words(vocab: Vocabulary, lines: Iterable[str], grow: bool) -> list[np.ndarray]:
    """Whitespace words; <s>, </s> written in the text count as <unk>, and so does <unk>."""
    out = []
    for line in lines:
        words = line.split()
        if not words:
            continue
        ids = [2 if w in (BOS, EOS, UNK) else (vocab.add(w) if grow else vocab.get(w)) for w in words]
        out.append(np.array(ids, dtype=np.int64))
    return out


def train(sentences: list[np.ndarray], vocab: Vocabulary, order: int, out: str | Path, header: dict[str, Any]
          ) -> dict[str, Any]:
    notes: list[str] = []
    start = time.time()
    model = estimate(sentences, vocab, order, notes)
    write_arpa(model, out, {**header, "order": order})
    return {"out": str(out), "order": order, "ngrams": [len(o) for o in model.orders],
            "discounts": [list(map(float, o.discounts)) for o in model.orders], "vocabulary": len(vocab),
            "sentences": len(sentences), "tokens": int(sum(len(s) for s in sentences)), "notes": notes,
            "seconds": round(time.time() - start, 2), "model": model}


def perplexity_of(model: NgramModel, sentences: list[np.ndarray]) -> dict[str, Any]:
    result = score_sentences(model, sentences)
    result.pop("per_token")
    result["loss"] = -result["log10_prob"] * math.log(10) / max(result["tokens"], 1)
    result["bits_per_token"] = result["loss"] / math.log(2)
    return result


__all__ = ["Vocabulary", "NgramModel", "Order", "estimate", "score_sentences", "write_arpa", "read_arpa",
           "sentences_from_stream", "encode_ids", "encode_words", "train", "perplexity_of", "padded_stream",
           "BOS", "EOS", "UNK"]
