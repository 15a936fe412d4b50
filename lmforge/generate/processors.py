"""Score processing, with the semantics of transformers' logits processors.

All functions take scores of shape (N, V) (one row per running sequence) and return new scores; removed tokens
get -inf. Order, as in transformers: repetition penalty, no-repeat n-gram, then (sampling only) temperature,
top-k, top-p, min-p.
"""

from __future__ import annotations

import torch

NEG_INF = float("-inf")


# ---- penalties (greedy, sampling and beam search) ------------------------------------------------------

def seen_mask(rows: list[list[int]], vocab_size: int, device: torch.device) -> torch.Tensor:
    """(N, V) booleans: True where the token occurs in the row (prompt + output, padding excluded)."""
    mask = torch.zeros(len(rows), vocab_size + 1, dtype=torch.bool, device=device)
    width = max((len(r) for r in rows), default=0)
    if width:
        index = torch.full((len(rows), width), vocab_size, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                index[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask.scatter_(1, index.to(device), True)
    return mask[:, :vocab_size].contiguous()


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: a seen token's score is divided by `penalty` when positive
    and multiplied by it when negative (so > 1 always makes a repeat less likely)."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalized, scores)


def presence_frequency_penalty(scores: torch.Tensor, counts: torch.Tensor, presence: float,
                               frequency: float) -> torch.Tensor:
    """OpenAI's penalties: logit - frequency * count - presence * (count > 0), counts (N, V) of the tokens
    generated so far (the prompt is not counted, as in vLLM)."""
    return scores - counts * frequency - (counts > 0).to(scores.dtype) * presence


def banned_ngram_tokens(tokens: list[int], n: int) -> set[int]:
    """Tokens that would complete an n-gram already present in `tokens` (transformers' no_repeat_ngram)."""
    length = len(tokens)
    if n < 1 or length + 1 < n:
        return set()
    if n == 1:
        return set(tokens)
    prefix = tokens[length - n + 1:]
    first = prefix[0]
    banned = set()
    for i in range(length - n + 1):
        if tokens[i] == first and tokens[i: i + n - 1] == prefix:
            banned.add(tokens[i + n - 1])
    return banned


def ban_ngrams(scores: torch.Tensor, rows: list[list[int]], n: int, active: list[bool] | None = None) -> torch.Tensor:
    """Set to -inf (in place) every token that would repeat an n-gram of its row."""
    rows_idx, cols = [], []
    for i, tokens in enumerate(rows):
        if active is not None and not active[i]:
            continue
        for t in banned_ngram_tokens(tokens, n):
            rows_idx.append(i)
            cols.append(t)
    if rows_idx:
        scores[torch.tensor(rows_idx, device=scores.device), torch.tensor(cols, device=scores.device)] = NEG_INF
    return scores


# ---- sampling filters ----------------------------------------------------------------------------------

def apply_temperature(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    return scores if temperature == 1.0 else scores / temperature


def top_k_filter(scores: torch.Tensor, k: int | None, min_keep: int = 1) -> torch.Tensor:
    """Keep the k best scores of each row (ties with the k-th are kept)."""
    if not k:
        return scores
    k = min(max(k, min_keep), scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, NEG_INF)


def top_p_filter(scores: torch.Tensor, p: float | None, min_keep: int = 1) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p."""
    if p is None or p >= 1.0:
        return scores
    sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= (1 - p)  # the least likely tokens whose total mass is at most 1 - p
    drop_sorted[..., -min_keep:] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, NEG_INF)


def min_p_filter(scores: torch.Tensor, min_p: float | None, min_keep: int = 1) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p is None or min_p <= 0:
        return scores
    probs = scores.softmax(dim=-1)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
    order = torch.argsort(scores, dim=-1, descending=True)
    drop_sorted = drop.gather(-1, order)
    drop_sorted[..., :min_keep] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, NEG_INF)


def warp(scores: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
         min_p: float | None, min_keep: int = 1) -> torch.Tensor:
    """The sampling filters in transformers' order: temperature, top-k, top-p, min-p."""
    scores = apply_temperature(scores, temperature)
    scores = top_k_filter(scores, top_k, min_keep)
    scores = top_p_filter(scores, top_p, min_keep)
    return min_p_filter(scores, min_p, min_keep)


__all__ = ["seen_mask", "repetition_penalty", "presence_frequency_penalty", "banned_ngram_tokens", "ban_ngrams", "apply_temperature",
           "top_k_filter", "top_p_filter", "min_p_filter", "warp"]
