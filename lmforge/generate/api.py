"""`lmforge.generate(model, prompt_or_prompts, **options)`: text in, text out; token ids in, token ids out.

- a string gives a string (the continuation); a list of strings gives a list;
- a list of ints gives the new token ids; a list of lists gives a list of those;
- a LongTensor (B, T) (with `attention_mask` for left-padded rows) gives a LongTensor (B * n, T + new) holding
  prompt and continuation, padded with `pad_token_id`, like `transformers`' `generate`;
- `num_return_sequences=n > 1` gives a list of n per prompt;
- `return_dict=True` gives `GenerationOutput`s (text, token ids, per-token log-probabilities, finish reason,
  score) in the same nesting;
- `stream=True` (one prompt, no beams) returns an iterator of text pieces that never splits a character.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from ..errors import ConfigError, LmforgeError
from .engine import Hypothesis, RowState, Runner, beam_search, sample_seed, sample_steps
from .options import GenerationOptions
from .text import IncrementalDecoder, StopMatcher


@dataclass
class GenerationOutput:
    """One generated sequence with its details."""

    text: str | None  # the continuation (None when there is no tokenizer)
    token_ids: list[int]  # the new tokens, EOS included when it ended the sequence
    logprobs: list[float]  # the model's log-probability of each new token (before penalties and filters)
    finish_reason: str  # "eos" | "stop" (a stop string) | "length" (max_new_tokens)
    score: float  # sum of logprobs; for beam search, the length-penalized beam score transformers reports
    prompt_tokens: int  # tokens of the prompt as the model saw it (after truncation, BOS included)

    def __str__(self) -> str:
        return self.text if self.text is not None else str(self.token_ids)


# ---- model facts ---------------------------------------------------------------------------------------

@dataclass
class ModelSpec:
    arch: str
    context: int
    vocab: int
    bos: int | None
    eos: list[int]
    pad: int
    decoder_start: int

    @classmethod
    def of(cls, model, tokenizer, opts: GenerationOptions, extra_eos: Sequence[int] = ()) -> "ModelSpec":
        c = model.config
        if c.arch == "encoder":
            raise LmforgeError("this is an encoder-only model (BERT-style): it cannot generate text; use a "
                               "decoder (GPT, Llama) or an encoder-decoder model")
        if c.head != "lm":
            raise LmforgeError(f"this model has a {c.head!r} head, not a language-model head; it cannot generate")
        tok = tokenizer
        bos = c.bos_token_id if c.bos_token_id is not None else (tok.bos_id if tok is not None else None)
        if opts.ignore_eos:
            eos: list[int] = []
        elif opts.eos_token_id is not None:
            eos = list(opts.eos_token_id) if isinstance(opts.eos_token_id, (list, tuple)) else [opts.eos_token_id]
        else:
            first = c.eos_token_id if c.eos_token_id is not None else (tok.eos_id if tok is not None else None)
            eos = [first] if first is not None else []
        if not opts.ignore_eos:
            eos += [i for i in extra_eos if i not in eos]
        pad = next((i for i in (opts.pad_token_id, c.pad_token_id, tok.pad_id if tok is not None else None)
                    if i is not None), eos[0] if eos else 0)
        start = next((i for i in (c.decoder_start_token_id, bos, c.eos_token_id) if i is not None), 0)
        return cls(c.arch, c.context_length, c.vocab_size, bos, eos, pad, start)


# ---- inputs --------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    kind: str  # "text" | "ids" | "tensor"
    single: bool
    texts: list[str] | None
    ids: list[list[int]]
    tensor: torch.Tensor | None = None  # the caller's (B, T) ids, for tensor outputs


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_inputs(prompts: Any, tokenizer, attention_mask: torch.Tensor | None, add_special_tokens: bool = True
                ) -> Inputs:
    if isinstance(prompts, str):
        return _encode_texts([prompts], True, tokenizer, add_special_tokens)
    if isinstance(prompts, torch.Tensor):
        if prompts.dtype not in (torch.long, torch.int32, torch.int64, torch.int16, torch.uint8):
            raise LmforgeError(f"token ids must be integers; got a tensor of {prompts.dtype}")
        single = prompts.dim() == 1
        t = prompts[None] if single else prompts
        if t.dim() != 2:
            raise LmforgeError(f"token ids must have shape (batch, length); got {tuple(prompts.shape)}")
        if attention_mask is not None:
            m = attention_mask[None] if attention_mask.dim() == 1 else attention_mask
            if m.shape != t.shape:
                raise LmforgeError(f"attention_mask has shape {tuple(attention_mask.shape)} but the ids have "
                                   f"{tuple(prompts.shape)}")
            rows = [r[k.bool()].tolist() for r, k in zip(t.cpu(), m.cpu())]
        else:
            rows = t.tolist()
        return Inputs("tensor", single, None, rows, t.long())
    if isinstance(prompts, (list, tuple)):
        if not prompts:
            raise LmforgeError("no prompts given: pass a string, a list of strings or token ids")
        if all(isinstance(p, str) for p in prompts):
            return _encode_texts(list(prompts), False, tokenizer, add_special_tokens)
        if all(_is_int(p) for p in prompts):
            return Inputs("ids", True, None, [list(prompts)])
        if all(isinstance(p, (list, tuple)) and all(_is_int(x) for x in p) for p in prompts):
            return Inputs("ids", False, None, [list(p) for p in prompts])
    raise LmforgeError("prompts must be a string, a list of strings, a list of token ids, a list of such lists "
                       f"or a LongTensor; got {type(prompts).__name__}")


def _encode_texts(texts: list[str], single: bool, tokenizer, add_special_tokens: bool) -> Inputs:
    if tokenizer is None:
        raise LmforgeError("this model has no tokenizer, so it cannot take text; pass token ids or tokenizer=")
    return Inputs("text", single, texts, [tokenizer.encode(t, add_special_tokens=add_special_tokens) for t in texts])


def fit_prompt(ids: list[int], spec: ModelSpec, opts: GenerationOptions, what: str = "the prompt") -> list[int]:
    """Check one prompt against the vocabulary and the context; add BOS to an empty one; truncate on request."""
    if any(i < 0 or i >= spec.vocab for i in ids):
        bad = next(i for i in ids if i < 0 or i >= spec.vocab)
        raise LmforgeError(f"token id {bad} in {what} is outside the vocabulary (0..{spec.vocab - 1})")
    if not ids:
        if spec.arch == "decoder" and spec.bos is None:
            raise LmforgeError(f"{what} is empty and this model has no BOS token to start from; give at least "
                               "one token of prompt")
        ids = [spec.bos] if spec.bos is not None else []
        if not ids:
            raise LmforgeError(f"{what} (the source) is empty; give a non-empty source text")
    new = opts.max_new_tokens
    if spec.arch == "decoder":
        room = spec.context - new
        if room < 1:
            raise ConfigError(f"max_new_tokens={new} leaves no room for a prompt in the model's context of "
                              f"{spec.context} tokens; use max_new_tokens <= {spec.context - 1}")
    else:
        if new + 1 > spec.context:
            raise ConfigError(f"max_new_tokens={new} does not fit the decoder's context of {spec.context} tokens; "
                              f"use max_new_tokens <= {spec.context - 1}")
        room = spec.context
    if len(ids) > room:
        if opts.truncate != "left":
            extra = f" + max_new_tokens={new}" if spec.arch == "decoder" else ""
            raise LmforgeError(f"{what} has {len(ids)} tokens{extra}, more than the model's context of "
                               f"{spec.context} tokens; shorten it, lower max_new_tokens, or truncate the start "
                               "(truncate='left', --truncate left)")
        keep_bos = spec.bos is not None and ids[0] == spec.bos and room > 1
        ids = ([spec.bos] + ids[len(ids) - room + 1:]) if keep_bos else ids[len(ids) - room:]
    return ids


# ---- generation ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _eval_mode(model):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _base_seed(opts: GenerationOptions) -> int:
    if opts.seed is not None:
        return opts.seed
    return int(torch.randint(0, 2 ** 62, (1,)).item())  # follows torch.manual_seed


def final_text(tokenizer, prompt: list[int], tokens: list[int], eos: frozenset, stops: list[str],
               skip_special_tokens: bool = True) -> str:
    dec = IncrementalDecoder(tokenizer, prompt, skip_special_tokens)
    matcher = StopMatcher(stops)
    text = matcher.feed(dec.push([t for t in tokens if t not in eos]))
    return text + matcher.feed(dec.flush()) + matcher.finish()


def _run_chunk(model, prompts: list[list[int]], spec: ModelSpec, opts: GenerationOptions, tokenizer,
               seed: int) -> list[list[tuple[Hypothesis, str | None]]]:
    """Generate for one batch of prompts; per prompt, its hypotheses with their texts."""
    runner = Runner(model, prompts, opts.max_new_tokens, use_cache=opts.use_cache, compile=opts.compile,
                    pad_id=spec.pad, decoder_start_id=spec.decoder_start)
    eos = frozenset(spec.eos)
    stops = opts.stops
    dec = spec.arch == "decoder"
    text_prompts = [p if dec else [] for p in prompts]
    histories = [p if dec else [spec.decoder_start] for p in prompts]  # what the penalties see
    if opts.beam_search:
        seeds = [sample_seed(seed, 0)] * len(prompts) if opts.do_sample else None
        results = beam_search(runner, histories, opts, spec.eos, spec.pad, seeds, tokenizer, text_prompts)
        out = []
        for p, hyps in zip(text_prompts, results):
            out.append([(h, final_text(tokenizer, p, h.tokens, eos, stops, opts.skip_special_tokens)
                         if tokenizer is not None else None) for h in hyps])
        return out
    n = opts.num_return_sequences if opts.sampling else 1
    rows = []
    for h, tp in zip(histories, text_prompts):
        for _ in range(n):
            watch = tokenizer is not None and bool(stops)
            rows.append(RowState(h, eos,
                                 IncrementalDecoder(tokenizer, tp, opts.skip_special_tokens) if watch else None,
                                 StopMatcher(stops) if watch else None))
    seeds = [sample_seed(seed, j) for _ in prompts for j in range(n)]
    for _ in sample_steps(runner, rows, opts, spec.pad, seeds):
        pass
    out = []
    for i, tp in enumerate(text_prompts):
        group = []
        for r in rows[i * n:(i + 1) * n]:
            if tokenizer is None:
                text = None
            elif r.matcher is not None:
                text = r.matcher.text
            else:
                text = final_text(tokenizer, tp, r.tokens, eos, stops, opts.skip_special_tokens)
            group.append((r.hypothesis(), text))
        out.append(group)
    return out


def run_prompts(model, prompts: list[list[int]], spec: ModelSpec, opts: GenerationOptions, tokenizer
                ) -> list[list[tuple[Hypothesis, str | None]]]:
    """Generate for fitted prompts in batches of `batch_size` (longest first, results in the given order)."""
    seed = _base_seed(opts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    size = opts.batch_size or len(prompts)
    results: list[Any] = [None] * len(prompts)
    with _eval_mode(model):
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            for i, r in zip(chunk, _run_chunk(model, [prompts[i] for i in chunk], spec, opts, tokenizer, seed)):
                results[i] = r
    return results


def generate(model, prompts: Any, *, tokenizer=None, attention_mask: torch.Tensor | None = None,
             stream: bool = False, return_dict: bool = False, **options: Any) -> Any:
    """Generate continuations of one prompt or a batch (see the module docstring for inputs and outputs).

    Options keep transformers' names and meanings: max_new_tokens, do_sample, temperature, top_k, top_p, min_p,
    num_beams, length_penalty, early_stopping, num_return_sequences, repetition_penalty, no_repeat_ngram_size,
    stop, seed, plus eos_token_id, pad_token_id, ignore_eos, batch_size, truncate ("error" | "left"),
    use_cache, skip_special_tokens. Bad values raise `ConfigError` naming the option and its allowed range.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        raise LmforgeError(f"generate needs a model, not {type(model).__name__}: load one first, "
                           "model = lmforge.load(path)")
    opts = GenerationOptions.from_kwargs(**options)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    spec = ModelSpec.of(model, tok, opts)
    inputs = read_inputs(prompts, tok, attention_mask)
    if opts.stops and tok is None:
        raise LmforgeError("stop strings need a tokenizer to read the text; pass tokenizer= or use eos_token_id")
    ids = [fit_prompt(p, spec, opts, "the prompt" if inputs.single else f"prompt {i}")
           for i, p in enumerate(inputs.ids)]
    if stream:
        if not inputs.single:
            raise ConfigError("stream=True takes one prompt; loop over the prompts, or drop stream for a batch")
        if opts.beam_search or opts.num_return_sequences > 1:
            raise ConfigError("stream=True needs num_beams=1 and num_return_sequences=1 (beam search only knows "
                              "its answer at the end)")
        if tok is None:
            raise LmforgeError("stream=True yields text, and this model has no tokenizer; pass tokenizer=")
        return stream_text(model, ids[0], spec, opts, tok)
    results = run_prompts(model, ids, spec, opts, tok)
    return _format(inputs, ids, results, spec, opts, return_dict)


def stream_text(model, prompt: list[int], spec: ModelSpec, opts: GenerationOptions, tokenizer) -> Iterator[str]:
    """Text pieces of one continuation as they are decoded (complete characters only)."""
    eos = frozenset(spec.eos)
    text_prompt = prompt if spec.arch == "decoder" else []
    row = RowState(prompt if spec.arch == "decoder" else [spec.decoder_start], eos,
                   IncrementalDecoder(tokenizer, text_prompt, opts.skip_special_tokens), StopMatcher(opts.stops))
    runner = Runner(model, [prompt], opts.max_new_tokens, use_cache=opts.use_cache, compile=opts.compile,
                    pad_id=spec.pad, decoder_start_id=spec.decoder_start)
    seeds = [sample_seed(_base_seed(opts), 0)]
    with _eval_mode(model):
        for _ in sample_steps(runner, [row], opts, spec.pad, seeds):
            piece = row.take()
            if piece:
                yield piece
    piece = row.take()
    if piece:
        yield piece


def _format(inputs: Inputs, prompts: list[list[int]], results, spec: ModelSpec, opts: GenerationOptions,
            return_dict: bool) -> Any:
    n = opts.num_return_sequences
    if inputs.kind == "tensor" and not return_dict:
        t = inputs.tensor
        gen = [h.tokens for group in results for h, _ in group]
        width = max((len(g) for g in gen), default=0)
        out = torch.full((len(gen), t.shape[1] + width), spec.pad, dtype=torch.long)
        row = 0
        for i, group in enumerate(results):
            for h, _ in group:
                out[row, : t.shape[1]] = t[i]
                out[row, t.shape[1]: t.shape[1] + len(h.tokens)] = torch.tensor(h.tokens, dtype=torch.long)
                row += 1
        out = out.to(t.device)
        return out[0] if inputs.single and n == 1 else out
    formatted = []
    for p, group in zip(prompts, results):
        items = []
        for h, text in group:
            if return_dict:
                items.append(GenerationOutput(text, h.tokens, h.logprobs, h.finish_reason, h.score, len(p)))
            elif inputs.kind == "text":
                items.append(text)
            else:
                items.append(h.tokens)
        formatted.append(items if n > 1 else items[0])
    return formatted[0] if inputs.single else formatted


__all__ = ["generate", "GenerationOutput", "ModelSpec", "read_inputs", "fit_prompt", "run_prompts",
           "stream_text", "final_text"]
