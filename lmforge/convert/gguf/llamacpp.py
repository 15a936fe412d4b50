"""llama.cpp itself on a GGUF file, through llama-cpp-python (optional: `pip install "lmforge[llamacpp]"`, which
compiles llama.cpp for many minutes): logits of given token ids, tokenization, and greedy decoding speed. The
parity checks and benchmarks compare lmforge with these; nothing else in lmforge needs llama.cpp.

llama.cpp keeps its KV cache in f16 by default, which moves f32 logits by about 1e-3; `f32_cache=True` (the
default here) keeps it in f32, so that what remains is llama.cpp's own arithmetic (about 1e-5 for an f32 file).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Sequence

import numpy as np
import torch

from ...errors import LmforgeError

INSTALL = ('llama.cpp is not installed: pip install "lmforge[llamacpp]" (llama-cpp-python compiles llama.cpp, which '
           "takes many minutes)")


def llamacpp_available() -> bool:
    """True when llama-cpp-python can be imported."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def open_llama(path: str | os.PathLike, *, n_ctx: int = 512, n_threads: int | None = None, logits_all: bool = False,
               f32_cache: bool = True, vocab_only: bool = False, **options) -> Iterator["llama_cpp.Llama"]:  # noqa: F821
    """A `llama_cpp.Llama` on `path`, closed on exit."""
    try:
        import llama_cpp
    except ImportError:
        raise LmforgeError(INSTALL) from None
    if f32_cache:
        options.update(type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    threads = n_threads or torch.get_num_threads()
    try:
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              logits_all=logits_all, vocab_only=vocab_only, verbose=False, **options)
    except ValueError as e:  # llama.cpp refused the file; its reason went to its own log
        raise LmforgeError(f"llama.cpp cannot load {path} ({e}); run with verbose llama.cpp logs to see why") from None
    try:
        yield llm
    finally:
        llm.close()


def llamacpp_logits(path: str | os.PathLike, sequences: Sequence[Sequence[int]], *, n_threads: int | None = None,
                    f32_cache: bool = True) -> list[torch.Tensor]:
    """llama.cpp's logits for each token id sequence: a list of float32 (len(ids), vocab) tensors, as lmforge's
    `model(torch.tensor([ids]))[0]` gives them."""
    longest = max((len(s) for s in sequences), default=1)
    out = []
    with open_llama(path, n_ctx=max(64, longest), n_threads=n_threads, logits_all=True, f32_cache=f32_cache) as llm:
        for ids in sequences:
            llm.reset()
            llm.eval(list(ids))
            out.append(torch.from_numpy(np.array(llm.scores[:len(ids)], dtype=np.float32)))
    return out


def llamacpp_tokenize(path: str | os.PathLike, texts: Sequence[str], *, add_special: bool = False) -> list[list[int]]:
    """llama.cpp's token ids for each text (special tokens written in the text are parsed, as lmforge does;
    `add_special` adds BOS/EOS where the file says to)."""
    with open_llama(path, vocab_only=True) as llm:
        return [llm.tokenize(t.encode("utf-8"), add_bos=add_special, special=True) if t or add_special else []
                for t in texts]


def llamacpp_decode_speed(path: str | os.PathLike, prompt: Sequence[int], new_tokens: int, *,
                          n_threads: int | None = None) -> tuple[list[int], float]:
    """Greedy decoding in llama.cpp at batch 1: (the new token ids, seconds for the whole call, prompt included),
    end-of-sequence ignored, so that exactly `new_tokens` are decoded."""
    import llama_cpp

    with open_llama(path, n_ctx=len(prompt) + new_tokens + 8, n_threads=n_threads, f32_cache=False) as llm:
        llm.reset()
        out: list[int] = []
        vocab = llm.n_vocab()
        start = time.perf_counter()
        llm.eval(list(prompt))
        for step in range(new_tokens):
            # without logits_all, llama-cpp-python leaves `scores` unwritten: read the last logits from llama.cpp
            last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))
            token = int(np.argmax(last))
            out.append(token)
            if step < new_tokens - 1:
                llm.eval([token])
        return out, time.perf_counter() - start


__all__ = ["llamacpp_available", "llamacpp_logits", "llamacpp_tokenize", "llamacpp_decode_speed", "open_llama"]
