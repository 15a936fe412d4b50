"""Retrieval question answering: the k passages of an index most similar to a question, then a reader:

- extractive (a model from `lmforge finetune qa`, head=span): the best answer span over the k passages (the
  highest start + end logit, SQuAD-style), with its character span in the source document;
- generative (a decoder language model, e.g. a chat model): greedy decoding of a prompt holding the passages and
  the question (through its chat template when the tokenizer has one), up to the first line end.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError
from ..model import Transformer
from .search import Index

PROMPT = ("Answer the question with a short phrase taken from the context.\n\nContext:\n{context}\n\n"
          "Question: {question}\nAnswer:")


def read_extractive(reader: Transformer, question: str, passages: Sequence[dict[str, Any]], *, max_length: int = 256,
                    stride: int | None = None, max_answer_tokens: int = 30) -> dict[str, Any]:
    from ..finetune.qa import answer

    spans = answer(reader, question, [p["text"] for p in passages], max_length=max_length, stride=stride,
                   max_answer_tokens=max_answer_tokens)
    best = spans[0]
    passage = passages[best["context"]]
    return {"answer": best["text"], "score": round(best["score"], 4), "doc": passage["doc"],
            "start": passage["start"] + best["start"], "end": passage["start"] + best["end"], "passage": best["context"]}


def read_generative(reader: Transformer, question: str, passages: Sequence[dict[str, Any]], *,
                    max_new_tokens: int = 32) -> dict[str, Any]:
    from ..generate import generate

    context = "\n\n".join(p["text"] for p in passages)
    prompt = PROMPT.format(context=context, question=question)
    tok = reader.tokenizer
    if getattr(tok, "chat_template", None):
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    ids = tok.encode(prompt, add_special_tokens=True)
    room = reader.config.context_length - max_new_tokens
    if len(ids) > room:
        raise ConfigError(f"the prompt with {len(passages)} passages is {len(ids)} tokens, more than the reader's "
                          f"context leaves ({room}); use a smaller -k or shorter chunks")
    text = generate(reader, prompt, max_new_tokens=max_new_tokens, do_sample=False, stop=["\n"])
    text = text if isinstance(text, str) else getattr(text, "text", str(text))
    return {"answer": text.strip(), "score": None, "doc": None, "start": None, "end": None, "passage": None}


def ask(index: Index, question: str, reader: Transformer | None = None, *, k: int = 5,
        **options: Any) -> dict[str, Any]:
    """Retrieve the k best passages for `question`, then read an answer from them (no reader: passages only)."""
    passages = index.search(question, k)
    result: dict[str, Any] = {"question": question, "passages": passages}
    if reader is None:
        return result
    if reader.config.head == "span":
        result.update(read_extractive(reader, question, passages, **options))
    elif reader.config.head == "lm" and reader.config.arch == "decoder":
        result.update(read_generative(reader, question, passages, **{k_: v for k_, v in options.items()
                                                                     if k_ == "max_new_tokens"}))
    else:
        raise ConfigError(f"--reader has a {reader.config.head} head ({reader.config.arch}); use a model from "
                          "`lmforge finetune qa` (extractive) or a decoder language model (generative)")
    return result


__all__ = ["ask", "read_extractive", "read_generative", "PROMPT"]
