"""Zero- and few-shot helpers for evaluation code.

- `few_shot_prompt(query, examples, k=...)` renders k solved examples and the query with one template;
- `score_continuations(model, prompt, candidates)` gives each candidate's log-likelihood after the prompt
  (the prompt runs once; the candidates share its KV cache), with the token count and whether greedy decoding
  would have produced it;
- `choose(model, prompt, candidates, normalize=...)` picks the most likely candidate (multiple choice).

Candidates are scored as tokens appended to the prompt's tokens (prompt and candidate are tokenized apart), so
write them with their leading space (" Paris") when the prompt ends before a word, as lm-evaluation-harness does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from ..errors import ConfigError, LmforgeError
from ..model.cache import KVCache
from ..model.fast import fast_inference
from .api import ModelSpec, _eval_mode, fit_prompt
from .options import GenerationOptions

Example = tuple[str, str] | dict[str, str]


def _pair(example: Example) -> tuple[str, str]:
    if isinstance(example, dict):
        if "input" not in example or "output" not in example:
            raise ConfigError("a few-shot example as a dict needs 'input' and 'output' keys")
        return str(example["input"]), str(example["output"])
    if isinstance(example, (tuple, list)) and len(example) == 2:
        return str(example[0]), str(example[1])
    raise ConfigError("a few-shot example must be an (input, output) pair or a dict with input and output")


def few_shot_prompt(
    query: str,
    examples: Sequence[Example] = (),
    k: int | None = None,
    *,
    template: str = "Q: {input}\nA: {output}",
    instruction: str | None = None,
    separator: str = "\n\n",
    seed: int | None = None,
) -> str:
    """A prompt with k solved examples, then the query, ending where the answer starts.

    Args:
        query: the input to answer.
        examples: solved examples, (input, output) pairs or {"input", "output"} dicts.
        k: how many examples to show (None = all, 0 = zero-shot).
        template: one example; must hold {input} and {output}. The query is rendered with the part of the
            template before {output}, trailing spaces removed ("Q: ...\\nA:"), so answers are scored with
            their leading space.
        instruction: an optional line before the examples.
        separator: between the instruction, the examples and the query.
        seed: with k < len(examples), a seed picks k examples at random (reproducibly); None takes the first k.
    """
    if "{input}" not in template or "{output}" not in template:
        raise ConfigError("template must contain {input} and {output}, e.g. 'Q: {input}\\nA: {output}'")
    pairs = [_pair(e) for e in examples]
    if k is not None:
        if not isinstance(k, int) or k < 0:
            raise ConfigError(f"k={k!r} is out of range; it must be a whole number >= 0")
        if k > len(pairs):
            raise ConfigError(f"k={k} but only {len(pairs)} examples were given")
        pairs = random.Random(seed).sample(pairs, k) if seed is not None else pairs[:k]
    head, _, _ = template.partition("{output}")
    parts = [instruction] if instruction else []
    parts += [template.format(input=i, output=o) for i, o in pairs]
    parts.append(head.format(input=query).rstrip(" "))
    return separator.join(parts)


@dataclass
class ContinuationScore:
    """How likely the model finds one candidate after the prompt."""

    logprob: float  # sum of the candidate tokens' log-probabilities
    num_tokens: int
    num_chars: int
    is_greedy: bool  # every candidate token is the model's most likely next token

    @property
    def mean_logprob(self) -> float:
        return self.logprob / max(self.num_tokens, 1)


def _ids(x: Any, tokenizer, add_special_tokens: bool, what: str) -> list[int]:
    if isinstance(x, str):
        if tokenizer is None:
            raise LmforgeError("this model has no tokenizer, so it cannot take text; pass token ids or tokenizer=")
        return tokenizer.encode(x, add_special_tokens=add_special_tokens)
    if isinstance(x, torch.Tensor):
        return x.view(-1).tolist()
    if isinstance(x, (list, tuple)) and all(isinstance(t, int) for t in x):
        return list(x)
    raise LmforgeError(f"{what} must be a string or a list of token ids")


@torch.inference_mode()
def score_continuations(
    model,
    prompt: str | list[int],
    candidates: Sequence[str | list[int]],
    *,
    tokenizer=None,
    batch_size: int = 16,
    truncate: Literal["error", "left"] = "error",
) -> list[ContinuationScore]:
    """Log-likelihood of each candidate continuation of `prompt` (decoder or encoder-decoder models).

    The prompt is encoded with the tokenizer's special tokens (BOS), the candidates without. For an
    encoder-decoder model the prompt is the source and each candidate is scored as the decoder's output.
    """
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if not candidates:
        raise LmforgeError("no candidates to score")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} is out of range; it must be >= 1")
    cands = [_ids(c, tok, False, "a candidate") for c in candidates]
    for c, raw in zip(cands, candidates):
        if not c:
            raise LmforgeError(f"candidate {raw!r} has no tokens; give non-empty candidates")
    longest = max(len(c) for c in cands)
    opts = GenerationOptions(max_new_tokens=longest, truncate=truncate)
    spec = ModelSpec.of(model, tok, opts)
    if spec.arch == "decoder" and longest >= spec.context:
        raise LmforgeError(f"a candidate has {longest} tokens, as many as the model's context of {spec.context}")
    context = fit_prompt(_ids(prompt, tok, True, "the prompt"), spec, opts)
    chars = [len(c) if isinstance(c, str) else (len(tok.decode(ids)) if tok is not None else len(ids))
             for c, ids in zip(candidates, cands)]
    out: list[ContinuationScore] = []
    with _eval_mode(model), fast_inference():
        for start in range(0, len(cands), batch_size):
            chunk = cands[start:start + batch_size]
            scored = (_score_decoder if spec.arch == "decoder" else _score_seq2seq)(model, context, chunk, spec)
            for (lp, greedy), c, n in zip(scored, chunk, chars[start:start + batch_size]):
                out.append(ContinuationScore(lp, len(c), n, greedy))
    return out


def _targets(cands: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(c) for c in cands)
    ids = torch.full((len(cands), width), pad, dtype=torch.long)
    mask = torch.zeros((len(cands), width), dtype=torch.long)
    for i, c in enumerate(cands):
        ids[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = 1
    return ids.to(device), mask.to(device)


def _collect(logp_first: torch.Tensor, logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
             ) -> list[tuple[float, bool]]:
    """logp_first (N, V): the distribution of the first candidate token; logits (N, W, V) after each token."""
    logp = torch.cat([logp_first[:, None], torch.log_softmax(logits[:, :-1].float(), dim=-1)], dim=1)
    chosen = logp.gather(-1, ids[..., None])[..., 0]
    greedy = logp.argmax(-1) == ids
    keep = mask.bool()
    return [(float(chosen[i][keep[i]].sum()), bool(greedy[i][keep[i]].all())) for i in range(ids.shape[0])]


def _score_decoder(model, context: list[int], cands: list[list[int]], spec: ModelSpec) -> list[tuple[float, bool]]:
    N = len(cands)
    device = model.device
    ids, mask = _targets(cands, spec.pad, device)
    cache = KVCache.for_model(model, 1, len(context) + ids.shape[1])
    first = model(torch.tensor([context], device=device), cache=cache, last_only=True)[:, -1].float()
    cache.reorder(torch.zeros(N, dtype=torch.long, device=device))  # the prompt's cache, once per candidate
    full_mask = torch.cat([torch.ones((N, len(context)), dtype=torch.long, device=device), mask], dim=1)
    logits = model(ids, attention_mask=full_mask, cache=cache)
    return _collect(torch.log_softmax(first, dim=-1).expand(N, -1), logits, ids, mask)


def _score_seq2seq(model, source: list[int], cands: list[list[int]], spec: ModelSpec) -> list[tuple[float, bool]]:
    N = len(cands)
    device = model.device
    ids, mask = _targets(cands, spec.pad, device)
    hidden = model.encode(torch.tensor([source], device=device)).expand(N, -1, -1)
    dec_in = torch.cat([torch.full((N, 1), spec.decoder_start, dtype=torch.long, device=device), ids], dim=1)
    dec_mask = torch.cat([torch.ones((N, 1), dtype=torch.long, device=device), mask], dim=1)
    logits = model.head_logits(model.decode(dec_in, hidden, decoder_attention_mask=dec_mask)).float()
    return _collect(torch.log_softmax(logits[:, 0], dim=-1), logits[:, 1:], ids, mask)


def choose(model, prompt: str | list[int], candidates: Sequence[str | list[int]], *,
           normalize: Literal["none", "tokens", "chars"] = "none", **kwargs: Any) -> int:
    """Index of the most likely candidate: by total log-likelihood, or per token, or per character (acc_norm)."""
    if normalize not in ("none", "tokens", "chars"):
        raise ConfigError(f"normalize={normalize!r} is not allowed; use none | tokens | chars")
    scores = score_continuations(model, prompt, candidates, **kwargs)
    key = {"none": lambda s: s.logprob, "tokens": lambda s: s.mean_logprob,
           "chars": lambda s: s.logprob / max(s.num_chars, 1)}[normalize]
    return max(range(len(scores)), key=lambda i: key(scores[i]))


__all__ = ["few_shot_prompt", "score_continuations", "choose", "ContinuationScore"]
