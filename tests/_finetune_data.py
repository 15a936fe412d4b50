"""Tiny real data for the fine-tuning tests: toy sentiment tables, toy NER sentences, a trained tokenizer."""

from __future__ import annotations

import functools
import random

from lmforge.finetune.runs import FinetuneConfig, MethodConfig, ModelSource
from lmforge.tokenizer import train_tokenizer

POS = "great wonderful superb lovely brilliant".split()
NEG = "awful boring dull terrible poor".split()
FILLER = "the movie was a film plot actors it and very quite".split()
NAMES = ["anna smith", "bob jones", "carla diaz", "dan lee", "eva moss", "frank ng"]
CITIES = ["paris", "berlin", "tokyo", "lima"]
WORDS = "we met yesterday and talked about work in the office near old town".split()
TINY = ["n_layer=2", "d_model=32", "n_head=2"]


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        y = rng.random() < 0.5
        words = [rng.choice(FILLER) for _ in range(rng.randint(3, 10))]
        words.insert(rng.randint(0, len(words)), rng.choice(POS if y else NEG))
        rows.append(("pos" if y else "neg", " ".join(words)))
    return rows


def write_table(path, rows, header=("label", "text")) -> str:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return str(path)


def ner_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [(w, "O") for w in rng.sample(WORDS, rng.randint(3, 7))]
        first, last = rng.choice(NAMES).split()
        at = rng.randint(0, len(words))
        words[at:at] = [(first, "B-PER"), (last, "I-PER")]
        if rng.random() < 0.5:
            words.insert(rng.randint(0, len(words)), (rng.choice(CITIES), "B-LOC"))
        out.append(words)
    return out


def write_conll(path, sentences) -> str:
    path.write_text("\n".join("".join(f"{w}\t{t}\n" for w, t in s) for s in sentences))
    return str(path)


@functools.lru_cache(maxsize=None)
def encoder_tokenizer():
    texts = [t for _, t in sentiment_rows(300, 1)] + [" ".join(w for w, _ in s) for s in ner_sentences(300, 1)]
    return train_tokenizer(texts, "bpe", 400, "encoder", progress=False)


def src(tokenizer=None, vocab_size: int = 8000, set_=None) -> ModelSource:
    return ModelSource(tokenizer=tokenizer, vocab_size=vocab_size, set_=list(set_ or []))


def way(method: str = "full", **kw) -> MethodConfig:
    return MethodConfig(method=method, **kw)


def tiny_options(**kw) -> FinetuneConfig:
    base = dict(max_steps=60, batch_size=16, lr=3e-3, warmup_steps=5, eval_every=20, eval_batches=0, save_every=20,
                log_every=1, threads=1, progress=False, max_length=32, weight_decay=0.0)
    return FinetuneConfig(**{**base, **kw})
