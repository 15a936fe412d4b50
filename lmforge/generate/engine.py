"""The decoding loops: a model runner over a KV cache, greedy/sampling, and beam search.

`Runner` feeds a batch of left-padded prompts through the model once (one forward pass, logits for the last
position only) and then one token per row per step, over a preallocated `KVCache`. Encoder-decoder models run
the encoder once; the decoder starts from `decoder_start_token_id` and reuses the cross-attention keys/values.

`sample_steps` (greedy and sampling) and `beam_search` follow transformers' `generate` step for step, so the
same weights and options give the same tokens. Each row of a batch gives what it gives alone: left padding
is masked, positions count real tokens only, penalties ignore padding, and every sampled row draws from its
own random generator seeded from `seed` (and its return index), not from a shared stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from ..model import kernels
from ..model.cache import KVCache
from ..model.fast import fast_inference
from . import processors as P
from . import static as S
from .options import GenerationOptions
from .text import IncrementalDecoder, StopMatcher

BIG = 1.0e9  # transformers' "very large" score offset in beam search


class Runner:
    """One batch of prompts on one model: prefill once, then a token per row per step."""

    def __init__(self, model, prompts: list[list[int]], max_new_tokens: int, *, use_cache: bool = True,
                 pad_id: int = 0, decoder_start_id: int = 0, compile: str = "off") -> None:
        self.model = model
        self.compile = compile  # "static" | "on": the static decode step (lmforge.generate.static), where it applies
        self.static: S.StaticDecoder | None = None
        self.fused: list | None = None  # padded batches: decode_layer's arguments per layer (S.fused_logits)
        self.enc_dec = model.config.arch == "encoder_decoder"
        self.use_cache = use_cache
        self.device = model.device
        B = len(prompts)
        T = max(len(p) for p in prompts)
        ids = torch.full((B, T), pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, T - len(p):] = 1
        self.padded = any(len(p) < T for p in prompts)
        self.prompt_len = T
        self.ids = ids.to(self.device)
        self.mask = mask.to(self.device) if self.padded else None
        self.max_new_tokens = max_new_tokens
        self.decoder_start_id = decoder_start_id
        self.cache: KVCache | None = None
        self.enc_hidden = self.enc_mask = None
        self.seq = None  # uncached decoding: the whole sequence so far

    # ---- model calls -----------------------------------------------------------------------------------
    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float logits (N, V) of the last position."""
        return self.model.last_logits(hidden)

    def start(self) -> torch.Tensor:
        """Logits (B, V) for the first new token."""
        with fast_inference():
            return self._start()

    def _start(self) -> torch.Tensor:
        model = self.model
        B = self.ids.shape[0]
        if self.enc_dec:
            self.enc_hidden = model.encode(self.ids, self.mask)
            self.enc_mask = self.mask
            dec = torch.full((B, 1), self.decoder_start_id, dtype=torch.long, device=self.device)
            if self.use_cache:
                self.cache = KVCache.for_model(model, B, 1 + self.max_new_tokens)
            else:
                self.seq = dec
            return self._logits(model.decode(dec, self.enc_hidden, self.enc_mask, cache=self.cache))
        static = self.compile != "off" and S.supports(model) is None
        if self.use_cache and not self.padded and (static or self.compile == "off" and S.fused_ok(model, B)):
            # (with compile="off", the fused CPU step where it applies: the same tokens, a third less time a token)
            mode = None if self.compile in ("off", "static") else (
                "reduce-overhead" if self.device.type == "cuda" else "default")
            self.static = S.StaticDecoder.get(model, B, self.prompt_len + self.max_new_tokens, mode)
            return self.static.prefill(self.ids)
        if self.use_cache:
            self.cache = KVCache.for_model(model, B, self.prompt_len + self.max_new_tokens)
            if self.padded and self.compile == "off" and S.fused_ok(model, 1):
                # prompts of different lengths: the fused CPU layer, each row at its own position, padding masked
                self.fused = S.fused_layers(model)
            if self.padded:  # the mask for every position the cache will hold: new tokens are real
                full = torch.ones((B, self.prompt_len + self.max_new_tokens), dtype=torch.long, device=self.device)
                full[:, : self.prompt_len] = self.mask
                self.mask = full
        else:
            self.seq = self.ids
        hidden = model.decode(self.ids, decoder_attention_mask=self.mask[:, : self.prompt_len] if self.padded else None,
                              cache=self.cache)
        return self._logits(hidden)

    def expand(self, n: int) -> None:
        """Repeat every row n times in place (row i becomes rows i*n .. i*n+n-1): beams, several samples."""
        if n == 1:
            return
        index = torch.arange(self.ids.shape[0], device=self.device).repeat_interleave(n)
        self._take(index, cross=True)

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row i continues old row index[i] (always a beam of the same prompt)."""
        self._take(index, cross=False)

    def _take(self, index: torch.Tensor, cross: bool) -> None:
        self.ids = self.ids.index_select(0, index)
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index)
        if self.enc_hidden is not None and (cross or self.cache is None):
            self.enc_hidden = self.enc_hidden.index_select(0, index)
            if self.enc_mask is not None:
                self.enc_mask = self.enc_mask.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index, cross=cross)
        if self.static is not None:
            self.static.reorder(index)
        if self.seq is not None:
            self.seq = self.seq.index_select(0, index)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row (N,); logits (N, V) for the next one."""
        with fast_inference():
            return self._step(tokens)

    def _step(self, tokens: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens = tokens.to(self.device).view(-1, 1)
        if self.static is not None:
            return self.static.step(tokens)
        if self.enc_dec:
            if self.cache is not None:
                hidden = model.decode(tokens, self.enc_hidden, self.enc_mask, cache=self.cache)
            else:
                self.seq = torch.cat([self.seq, tokens], dim=1)
                hidden = model.decode(self.seq, self.enc_hidden, self.enc_mask)
            return self._logits(hidden)
        if self.cache is not None:
            mask = self.mask[:, : self.cache.length + 1] if self.mask is not None else None
            if self.fused is not None and mask is not None and tokens.shape[0] <= kernels.MAX_ROWS:
                cache = self.cache
                logits = S.fused_logits(model, self.fused, tokens, mask.sum(1) - 1, cache.keys, cache.values,
                                        cache.length, mask.to(torch.uint8))
                cache.advance(1)
                return logits
            return self._logits(model.decode(tokens, decoder_attention_mask=mask, cache=self.cache))
        self.seq = torch.cat([self.seq, tokens], dim=1)
        mask = None
        if self.mask is not None:
            self.mask = torch.cat([self.mask, torch.ones_like(tokens)], dim=1)
            mask = self.mask
        return self._logits(model.decode(self.seq, decoder_attention_mask=mask))


# ---- per-row state -------------------------------------------------------------------------------------

@dataclass
class Hypothesis:
    """One generated sequence."""

    tokens: list[int]
    logprobs: list[float]  # the model's log-probability of each token (before penalties and filters)
    finish_reason: str  # "eos" | "stop" | "length"
    score: float  # greedy/sampling: sum of logprobs; beam search: its length-penalized beam score


@dataclass
class RowState:
    prompt: list[int]
    eos: frozenset
    decoder: IncrementalDecoder | None = None
    matcher: StopMatcher | None = None
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    done: bool = False
    reason: str = "length"
    pending: str = ""  # text ready for a stream reader

    def add(self, token: int, logprob: float, max_new: int) -> None:
        self.tokens.append(token)
        self.logprobs.append(logprob)
        if token in self.eos:
            self.finish("eos")
        elif self.decoder is not None:
            shown = self.matcher.feed(self.decoder.push([token]))
            self.pending += shown
            if self.matcher.stopped:
                self.finish("stop")
        if not self.done and len(self.tokens) >= max_new:
            self.finish("length")

    def finish(self, reason: str) -> None:
        self.done = True
        self.reason = reason
        if self.decoder is not None and not self.matcher.stopped:
            self.pending += self.matcher.feed(self.decoder.flush())
            self.pending += self.matcher.finish()

    def take(self) -> str:
        out, self.pending = self.pending, ""
        return out

    def hypothesis(self) -> Hypothesis:
        return Hypothesis(list(self.tokens), list(self.logprobs), self.reason, float(sum(self.logprobs)))


def row_generators(seeds: list[int], device: torch.device) -> list[torch.Generator]:
    gens = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(s)
        gens.append(g)
    return gens


def sample_seed(seed: int, copy: int) -> int:
    """The seed of the copy-th returned sample of a prompt."""
    return (seed * 1_000_003 + copy) % (2 ** 63 - 1)


# ---- greedy and sampling -------------------------------------------------------------------------------

class Picker:
    """How the rows of one set of options pick their next token: penalties, filters, then argmax or a draw from
    each row's own generator. `sample_steps` uses one for a whole batch; a server batch (lmforge.serve) one per
    request, each with its own options, over its rows of the shared logits."""

    def __init__(self, opts: GenerationOptions, histories: list[list[int]], vocab: int, device: torch.device,
                 seeds: list[int] | None) -> None:
        self.opts = opts
        self.seen = P.seen_mask(histories, vocab, device) if opts.repetition_penalty != 1.0 else None
        penalize = opts.presence_penalty != 0 or opts.frequency_penalty != 0
        self.counts = torch.zeros((len(histories), vocab), device=device) if penalize else None
        self.gens = row_generators(seeds, device) if opts.sampling else None

    def expand(self, n: int) -> None:
        """Every row repeated n times (row i becomes rows i*n .. i*n+n-1), as Runner.expand."""
        if self.seen is not None:
            self.seen = self.seen.repeat_interleave(n, dim=0)
        if self.counts is not None:
            self.counts = self.counts.repeat_interleave(n, dim=0)

    def keep(self, index: list[int]) -> None:
        """Keep only rows `index` (finished rows leave a server batch)."""
        t = torch.tensor(index, dtype=torch.long)
        if self.seen is not None:
            self.seen = self.seen.index_select(0, t.to(self.seen.device))
        if self.counts is not None:
            self.counts = self.counts.index_select(0, t.to(self.counts.device))
        if self.gens is not None:
            self.gens = [self.gens[i] for i in index]

    def pick(self, logits: torch.Tensor, rows: list[RowState], pad_id: int) -> torch.Tensor:
        """The chosen token (N,) of each row (pad_id for finished rows), from raw logits (N, V)."""
        opts = self.opts
        N = logits.shape[0]
        scores = logits
        if self.seen is not None:
            scores = P.repetition_penalty(scores, self.seen, opts.repetition_penalty)
        if self.counts is not None:
            scores = P.presence_frequency_penalty(scores, self.counts, opts.presence_penalty, opts.frequency_penalty)
        if opts.no_repeat_ngram_size:
            scores = scores.clone() if scores is logits else scores
            P.ban_ngrams(scores, [r.prompt + r.tokens for r in rows], opts.no_repeat_ngram_size,
                         [not r.done for r in rows])
        if opts.sampling:
            scores = P.warp(scores, opts.temperature, opts.top_k, opts.top_p, opts.min_p)
            probs = scores.softmax(dim=-1)
            chosen = torch.full((N,), pad_id, dtype=torch.long, device=logits.device)
            for i, r in enumerate(rows):
                if not r.done:
                    chosen[i] = torch.multinomial(probs[i], 1, generator=self.gens[i])[0]
        else:
            chosen = scores.argmax(dim=-1)
        done = torch.tensor([r.done for r in rows], device=logits.device)
        chosen = chosen.masked_fill(done, pad_id)
        arange = torch.arange(N, device=logits.device)
        if self.seen is not None:
            self.seen[arange, chosen] = self.seen[arange, chosen] | ~done
        if self.counts is not None:
            self.counts[arange, chosen] += (~done).to(self.counts.dtype)
        return chosen


def sample_steps(runner: Runner, rows: list[RowState], opts: GenerationOptions, pad_id: int,
                 seeds: list[int] | None) -> Iterator[None]:
    """Greedy decoding or sampling for rows already expanded for num_return_sequences.

    A generator: it yields after every step so a caller can stream the rows' `pending` text."""
    n_copies = opts.num_return_sequences if opts.sampling else 1
    with torch.inference_mode():
        logits = runner.start()
        if n_copies > 1:
            runner.expand(n_copies)
            logits = logits.repeat_interleave(n_copies, dim=0)
        N, V = logits.shape
        picker = Picker(opts, [r.prompt for r in rows], V, logits.device, seeds)
        arange = torch.arange(N, device=logits.device)
    max_new = opts.max_new_tokens
    for _ in range(max_new):
        with torch.inference_mode():
            chosen = picker.pick(logits, rows, pad_id)
            logprobs = logits[arange, chosen] - torch.logsumexp(logits, dim=-1)
        for r, t, lp in zip(rows, chosen.tolist(), logprobs.tolist()):
            if not r.done:
                r.add(t, lp, max_new)
        yield None
        if all(r.done for r in rows):
            return
        with torch.inference_mode():
            logits = runner.step(chosen)


# ---- beam search ---------------------------------------------------------------------------------------

def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """t (B, K, ...) indexed along dim 1 by index (B, K')."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def _has_stop(tokenizer, prompt: list[int], tokens: list[int], eos: frozenset, stops: list[str]) -> bool:
    dec = IncrementalDecoder(tokenizer, prompt)
    text = dec.push([t for t in tokens if t not in eos]) + dec.flush()
    return any(s in text for s in stops)


def beam_search(runner: Runner, prompts: list[list[int]], opts: GenerationOptions, eos_ids: list[int],
                pad_id: int, seeds: list[int] | None = None, tokenizer=None,
                text_prompts: list[list[int]] | None = None) -> list[list[Hypothesis]]:
    """transformers' beam search (vectorized form), returning num_return_sequences hypotheses per prompt.

    `prompts` are the tokens the penalties see before the new ones (the prompt, or the decoder start token of
    an encoder-decoder); `text_prompts` the tokens decoded before the new ones when looking for stop strings.
    """
    text_prompts = prompts if text_prompts is None else text_prompts
    K = opts.num_beams
    max_new = opts.max_new_tokens
    lp_exp = opts.length_penalty
    early = opts.early_stopping
    stops = opts.stops
    eos = frozenset(eos_ids)
    keep = max(2, 1 + len(eos_ids)) * K
    with torch.inference_mode():
        logits = runner.start()
        B, V = logits.shape
        device = logits.device
        runner.expand(K)
        logits = logits.repeat_interleave(K, dim=0)
        top_mask = torch.zeros(keep, dtype=torch.bool, device=device)
        top_mask[:K] = True
        eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=device)
        run_tok = torch.full((B, K, max_new), pad_id, dtype=torch.long, device=device)
        run_lp = torch.zeros((B, K, max_new), device=device)
        run_score = torch.zeros((B, K), device=device)
        run_score[:, 1:] = -BIG
        fin_tok, fin_lp = run_tok.clone(), run_lp.clone()
        fin_score = torch.full((B, K), -BIG, device=device)
        fin_len = torch.zeros((B, K), dtype=torch.long, device=device)
        fin_done = torch.zeros((B, K), dtype=torch.bool, device=device)
        open_ = torch.ones((B, 1), dtype=torch.bool, device=device)  # the best finished could still improve
        batch_offset = (torch.arange(B, device=device) * K)[:, None]
        seen = None
        if opts.repetition_penalty != 1.0:
            seen = P.seen_mask([p for p in prompts for _ in range(K)], V, device)
        gens = row_generators(seeds, device) if opts.do_sample else None
        min_keep = max(2, 1 + len(eos_ids))
        for step in range(max_new):
            raw = F.log_softmax(logits, dim=-1)  # (B*K, V)
            scores = raw
            if seen is not None:
                scores = P.repetition_penalty(scores, seen, opts.repetition_penalty)
            if opts.no_repeat_ngram_size:
                scores = scores.clone() if scores is raw else scores
                hist = run_tok[:, :, :step].reshape(B * K, step).tolist()
                P.ban_ngrams(scores, [prompts[i // K] + hist[i] for i in range(B * K)], opts.no_repeat_ngram_size)
            if opts.do_sample:
                scores = P.warp(scores, opts.temperature, opts.top_k, opts.top_p, opts.min_p, min_keep)
            acc = (scores.view(B, K, V) + run_score[:, :, None]).view(B, K * V)
            if opts.do_sample:
                probs = acc.softmax(dim=-1)
                idx = torch.stack([torch.multinomial(probs[b], keep, generator=gens[b]) for b in range(B)])
                vals = acc.gather(1, idx)
            else:
                vals, idx = torch.topk(acc, keep, dim=1)
            src = torch.div(idx, V, rounding_mode="floor")  # (B, keep) beam each candidate extends
            tok = idx % V
            cand_tok = _gather(run_tok, src)
            cand_tok[:, :, step] = tok
            cand_lp = _gather(run_lp, src)
            cand_lp[:, :, step] = raw.view(B, K * V).gather(1, idx)
            hits = torch.isin(tok, eos_t) if len(eos) else torch.zeros_like(tok, dtype=torch.bool)
            if step + 1 >= max_new:
                hits = torch.ones_like(hits)
            elif stops and tokenizer is not None:
                seqs = cand_tok[:, :, : step + 1].tolist()
                stop_hits = [[_has_stop(tokenizer, text_prompts[b], seqs[b][j], eos, stops) for j in range(keep)]
                             for b in range(B)]
                hits = hits | torch.tensor(stop_hits, device=device)
            # the best K unfinished candidates continue
            run_vals = vals + hits.float() * -BIG
            nxt = torch.topk(run_vals, K, dim=1).indices
            run_tok = _gather(cand_tok, nxt)
            run_lp = _gather(cand_lp, nxt)
            run_score = _gather(run_vals, nxt)
            beam_index = (_gather(src, nxt) + batch_offset).view(-1)
            # candidates among the top K that finished enter the finished set if they beat it
            just = hits & top_mask[None, :]
            fin_vals = vals / ((step + 1) ** lp_exp)
            if early is True:
                fin_vals = fin_vals + (fin_done.all(dim=-1, keepdim=True)).float() * -BIG
            fin_vals = fin_vals + (~open_).float() * -BIG
            fin_vals = fin_vals + (~just).float() * -BIG
            merged = torch.cat([fin_score, fin_vals], dim=1)
            best = torch.topk(merged, K, dim=1).indices
            fin_tok = _gather(torch.cat([fin_tok, cand_tok], dim=1), best)
            fin_lp = _gather(torch.cat([fin_lp, cand_lp], dim=1), best)
            fin_len = _gather(torch.cat([fin_len, torch.full_like(tok, step + 1)], dim=1), best)
            fin_done = _gather(torch.cat([fin_done, just], dim=1), best)
            fin_score = _gather(merged, best)
            # can a running beam still beat the worst finished one?
            best_len = max_new if (early == "never" and lp_exp > 0.0) else step + 1
            best_possible = run_score[:, :1] / (best_len ** lp_exp)
            worst = torch.where(fin_done, fin_score.min(dim=1, keepdim=True).values, -BIG)
            open_ = open_ & (best_possible > worst).any(dim=-1, keepdim=True)
            stop_all = (not bool(open_.any())) or (early is True and bool(fin_done.all())) or bool(hits.all())
            if stop_all:
                break
            runner.reorder(beam_index)
            new_tok = run_tok[:, :, step].reshape(-1)
            if seen is not None:
                seen = seen.index_select(0, beam_index)
                seen[torch.arange(B * K, device=device), new_tok] = True
            logits = runner.step(new_tok)
        n = opts.num_return_sequences
        toks, lps, lens, scs = fin_tok.tolist(), fin_lp.tolist(), fin_len.tolist(), fin_score.tolist()
    out = []
    for b in range(B):
        hyps = []
        for j in range(K):
            if scs[b][j] <= -BIG / 2 or len(hyps) == n:
                continue
            tokens = toks[b][j][: lens[b][j]]
            reason = "length"
            if tokens and tokens[-1] in eos:
                reason = "eos"
            elif stops and tokenizer is not None and _has_stop(tokenizer, text_prompts[b], tokens, eos, stops):
                reason = "stop"
            hyps.append(Hypothesis(tokens, lps[b][j][: lens[b][j]], reason, scs[b][j]))
        out.append(hyps)
    return out


__all__ = ["Runner", "Hypothesis", "RowState", "sample_steps", "beam_search", "sample_seed"]
