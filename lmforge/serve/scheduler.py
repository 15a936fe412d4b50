"""Continuous batching: requests join and leave one running decode batch between steps.

One thread owns the model. Each loop it (1) admits waiting requests: a request's prompt is prefilled alone
(one forward pass over its tokens, into its own cache), its rows (one per choice, `n`) are merged into the
batch; (2) picks the next token of every row, each request with its own options (`generate.engine.Picker`:
the sampler of `lmforge.generate`); (3) sends the new text to the requests' queues; (4) drops finished and
cancelled rows; (5) runs one decode step over the batch.

The batch is a padded batch with per-row positions: one `KVCache` whose rows are right-aligned (every row
writes its next key/value at the same column) and a key-padding mask. Positions count each row's real tokens
(`Stack.positions`), so a row sees the same positions and keys it would see alone; rows that join or leave
re-pack the cache (one copy) and drop the columns no row uses any more, so the batch is never longer than its
longest row. The same request alone gives the same tokens as `lmforge.generate` (tested).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..generate.engine import Picker, RowState, sample_seed
from ..generate.options import GenerationOptions
from ..generate.static import fused_layers, fused_logits, fused_ok
from ..generate.text import IncrementalDecoder, StopMatcher
from ..model.cache import KVCache
from ..model import kernels
from ..model.fast import fast_inference

HEADROOM = 64  # cache columns allocated beyond the longest row when the batch is re-packed


class QueueFull(Exception):
    """The server has as many waiting requests as --max-queue allows."""


@dataclass
class Work:
    """One request for the engine: a prompt, its options, and where its events go."""

    prompt: list[int]
    opts: GenerationOptions
    n: int = 1
    logprobs: int | None = None  # top alternatives per generated token (0 = the chosen token's only)
    prompt_logprobs: int | None = None  # score the prompt too (echo), with this many alternatives
    generate: bool = True  # False: prompt scoring only (max_tokens=0)
    seed: int | None = None
    eos: frozenset = frozenset()
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue | None = None
    cancelled: bool = False
    arrived: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_token: dict[int, float] = field(default_factory=dict)  # choice index -> when its last token came

    def cancel(self) -> None:
        self.cancelled = True

    def send(self, event: dict[str, Any]) -> None:
        if self.loop is not None and self.queue is not None and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
            except RuntimeError:  # the loop closed meanwhile
                pass


@dataclass
class Row:
    """One sequence (a choice of a request) in the batch."""

    work: Work
    index: int  # the choice's index within its request
    state: RowState
    picker: Picker
    slot: int  # its row in the picker


class Scheduler:
    """The engine thread: admission, per-request picking, decode steps over a shared KV cache."""

    def __init__(self, model, *, pad_id: int, max_batch: int = 16, max_queue: int = 256, metrics=None,
                 threads: int | None = None) -> None:
        self.model = model
        self.threads = threads  # torch threads of the engine thread (None: as it finds them)
        self.tasks: collections.deque = collections.deque()  # (function, Future): other model work, run here
        self.tokenizer = model.tokenizer
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.metrics = metrics
        self.context = model.config.context_length
        self.lock = threading.Lock()  # held while the model runs (embeddings and classification take it too)
        self.waiting: collections.deque[Work] = collections.deque()
        self.cond = threading.Condition()
        self.rows: list[Row] = []
        self.cache: KVCache | None = None
        self.mask: torch.Tensor | None = None  # (N, capacity) 1 = a real token
        self.logits: torch.Tensor | None = None  # (N, V) for each row's next token
        self.peak = 0  # the most rows decoded together so far
        self.cancelled_rows = 0  # rows dropped because their client went away
        self.fused: list | None = None  # decode_layer's arguments per layer, where the fused CPU step applies
        self.fused_steps = 0  # decode steps taken through it (the rest: the model's forward)
        self.running = True
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="lmforge-serve-engine", daemon=True)
        self.thread.start()

    # ---- the caller's side -----------------------------------------------------------------------------
    def submit(self, work: Work) -> None:
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull()
            self.waiting.append(work)
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify()
        self.thread.join(timeout=10)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def active(self) -> int:
        return len(self.rows)

    # ---- the loop --------------------------------------------------------------------------------------
    def call(self, fn) -> concurrent.futures.Future:
        """Run `fn()` on the engine thread between two decode steps (embeddings, classification): every model call of
        the server then runs on one thread. OpenMP, which PyTorch's and lmforge's CPU kernels use, gives each
        calling thread a pool of its own, and once the process holds more of its threads than cores it stops letting
        idle workers spin: every parallel region then pays a wake-up, measured 25.5 against 14.5 ms a SmolLM2 token
        (docs/serving.md)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            if not self.running:
                raise RuntimeError("the server is shutting down")
            self.tasks.append((fn, future))
            self.cond.notify()
        return future

    def _run_tasks(self) -> None:
        with self.cond:
            tasks = list(self.tasks)
            self.tasks.clear()
        for fn, future in tasks:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as e:  # (the caller gets it; the engine goes on)
                    future.set_exception(e)

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        try:  # (in the engine thread: building lmforge's kernels on first use takes a few seconds, once)
            if fused_ok(self.model, 1):
                self.fused = fused_layers(self.model)  # (its weights onto huge pages too, as generate's)
        except Exception:  # the model's forward serves instead
            self.fused = None
        while True:
            with self.cond:
                while self.running and not self.waiting and not self.rows and not self.tasks:
                    self.cond.wait()
                if not self.running:
                    break
            self._run_tasks()
            if not self.waiting and not self.rows:
                continue
            try:
                with self.lock, torch.inference_mode(), fast_inference():
                    self._admit()
                    self.peak = max(self.peak, len(self.rows))
                    if self.rows:
                        self._advance()
            except Exception as e:  # a bug must not leave clients waiting forever: fail the batch, keep serving
                for w in {id(r.work): r.work for r in self.rows}.values():
                    w.send({"type": "error", "message": f"internal error: {type(e).__name__}: {e}"})
                self.rows, self.cache, self.mask, self.logits = [], None, None, None
        for w in list(self.waiting) + [r.work for r in self.rows]:
            w.send({"type": "error", "message": "the server is shutting down"})
        with self.cond:
            for _, future in self.tasks:
                future.cancel()
            self.tasks.clear()

    def _admit(self) -> None:
        while True:
            with self.cond:
                while self.waiting and self.waiting[0].cancelled:
                    self.waiting.popleft()
                if not self.waiting:
                    return
                work = self.waiting[0]
                if self.rows and len(self.rows) + work.n > self.max_batch:
                    return
                self.waiting.popleft()
            try:
                self._prefill(work)
            except Exception as e:  # this request only; the batch goes on
                self.rows = [r for r in self.rows if r.work is not work]
                work.send({"type": "error", "message": f"{type(e).__name__}: {e}"})

    def _prefill(self, work: Work) -> None:
        model = self.model
        ids = torch.tensor([work.prompt], dtype=torch.long, device=model.device)
        P = len(work.prompt)
        cache = KVCache.for_model(model, 1, P)
        hidden = model.decode(ids, cache=cache)
        if work.prompt_logprobs is not None:
            full = model.head_logits(hidden).float()[0]  # (P, V)
            work.send({"type": "prompt", "logprobs": self._scored(full[:-1], work.prompt[1:], work.prompt_logprobs)})
        if not work.generate:
            work.send({"type": "done"})
            return
        logits = model.last_logits(hidden)  # (1, V)
        n = work.n
        seed = work.seed if work.seed is not None else secrets.randbits(62)
        seeds = [sample_seed(seed, j) for j in range(n)]
        picker = Picker(work.opts, [work.prompt] * n, logits.shape[-1], logits.device, seeds)
        stops = work.opts.stops
        for j in range(n):
            state = RowState(work.prompt, work.eos, IncrementalDecoder(self.tokenizer, work.prompt,
                                                                       work.opts.skip_special_tokens),
                             StopMatcher(stops))
            self.rows.append(Row(work, j, state, picker, j))
        keys = [k.expand(n, -1, -1, -1) for k in cache.keys]
        values = [v.expand(n, -1, -1, -1) for v in cache.values]
        self._merge(keys, values, P, logits.expand(n, -1))

    # ---- the cache -------------------------------------------------------------------------------------
    def _pack(self, parts: list[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, int]]) -> None:
        """Build the batch cache from parts (keys, values, mask (r, L), L), right-aligned at the longest row."""
        length = max(int(m.sum(1).max()) for _, _, m, _ in parts)
        capacity = min(self.context, length + HEADROOM)
        rows = sum(m.shape[0] for _, _, m, _ in parts)
        model = self.model
        cache = KVCache.for_model(model, rows, capacity)
        mask = torch.zeros((rows, capacity), dtype=torch.long, device=model.device)
        r0 = 0
        for keys, values, m, L in parts:
            r = m.shape[0]
            take = min(L, length)  # the last `length` columns hold every real token of these rows
            for i in range(len(cache.keys)):
                cache.keys[i][r0:r0 + r, :, length - take:length] = keys[i][:, :, L - take:L]
                cache.values[i][r0:r0 + r, :, length - take:length] = values[i][:, :, L - take:L]
            mask[r0:r0 + r, length - take:length] = m[:, L - take:L]
            r0 += r
        cache.length = length
        self.cache, self.mask = cache, mask

    def _merge(self, keys, values, P: int, logits: torch.Tensor) -> None:
        n = logits.shape[0]
        new_mask = torch.ones((n, P), dtype=torch.long, device=logits.device)
        parts = [(keys, values, new_mask, P)]
        if self.cache is not None and self.mask is not None and self.mask.shape[0]:
            L = self.cache.length
            parts.insert(0, (self.cache.keys, self.cache.values, self.mask[:, :L], L))
            self.logits = torch.cat([self.logits, logits], dim=0)
        else:
            self.logits = logits.clone()
        self._pack(parts)

    def _keep(self, index: list[int]) -> None:
        """Keep rows `index` of the batch, dropping the columns only the others used."""
        if not index:
            self.cache = self.mask = self.logits = None
            return
        t = torch.tensor(index, dtype=torch.long, device=self.logits.device)
        L = self.cache.length
        keys = [k.index_select(0, t) for k in self.cache.keys]
        values = [v.index_select(0, t) for v in self.cache.values]
        self._pack([(keys, values, self.mask[:, :L].index_select(0, t), L)])
        self.logits = self.logits.index_select(0, t)

    # ---- one step --------------------------------------------------------------------------------------
    def _advance(self) -> None:
        rows = self.rows
        logits = self.logits
        chosen = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(id(r.picker), []).append(i)
        for members in groups.values():
            picker = rows[members[0]].picker
            slots = [rows[i].slot for i in members]
            sub = logits[members] if len(members) != logits.shape[0] else logits
            # a picker's rows are in slot order (a request's choices join together and leave only together
            # with their slots re-numbered), so its state lines up with `sub`
            assert slots == list(range(len(slots)))
            chosen[members] = picker.pick(sub, [rows[i].state for i in members], self.pad_id)
        lse = torch.logsumexp(logits, dim=-1)
        arange = torch.arange(len(rows), device=logits.device)
        token_lp = (logits[arange, chosen] - lse).tolist()
        top_k = max((r.work.logprobs or 0) for r in rows)
        top = None
        if top_k:
            values, ids = torch.topk(logits, top_k, dim=-1)
            top = ((values - lse[:, None]).tolist(), ids.tolist())
        now = time.perf_counter()
        events: dict[int, dict[str, Any]] = {}
        for i, (r, t) in enumerate(zip(rows, chosen.tolist())):
            st = r.state
            st.add(t, token_lp[i], r.work.opts.max_new_tokens)
            piece = {"index": r.index, "text": st.take(), "token": t, "logprob": token_lp[i]}
            if r.work.logprobs is not None:
                k = r.work.logprobs
                piece["top"] = list(zip(top[1][i][:k], top[0][i][:k])) if k else []
            if st.done:
                piece["finish_reason"] = st.reason
            w = r.work
            if w.first_token is None:
                w.first_token = now
                if self.metrics is not None:
                    self.metrics.observe_ttft(now - w.arrived)
            elif self.metrics is not None and r.index in w.last_token:
                self.metrics.observe_itl(now - w.last_token[r.index])
            w.last_token[r.index] = now
            events.setdefault(id(w), {"type": "tokens", "work": w, "pieces": []})["pieces"].append(piece)
        if self.metrics is not None:
            self.metrics.tokens(len(rows))
        for ev in events.values():
            w = ev.pop("work")
            w.send(ev)
        # rows that finished or whose client went away leave the batch
        keep = [i for i, r in enumerate(rows) if not r.state.done and not r.work.cancelled]
        finished = {id(r.work): r.work for r in rows if r.state.done or r.work.cancelled}
        self.cancelled_rows += sum(1 for r in rows if r.work.cancelled and not r.state.done)
        still = {id(rows[i].work) for i in keep}
        for wid, w in finished.items():
            if wid not in still and not w.cancelled:
                w.send({"type": "done"})
        if len(keep) != len(rows):
            self._renumber(keep)
            self._keep(keep)
            chosen = chosen[keep]
        if not self.rows:
            return
        # the step: each row appends its token at column L
        L = self.cache.length
        if L + 1 > self.cache.max_len:
            self._pack([(self.cache.keys, self.cache.values, self.mask[:, :L], L)])
        self.mask[:, L] = 1
        mask = self.mask[:, :L + 1]
        cache = self.cache
        if (self.fused is not None and len(self.rows) <= kernels.MAX_ROWS
                and all(t.is_contiguous() and t.dtype == torch.float32 for t in cache.keys + cache.values)):
            # one C++ call per layer (generate.static.fused_logits), each row at its own position, its padding
            # columns masked: the same tokens as the forward below (tested)
            pos = mask.sum(1) - 1
            self.logits = fused_logits(self.model, self.fused, chosen.view(-1, 1), pos, cache.keys, cache.values, L,
                                       mask.to(torch.uint8))
            cache.advance(1)
            self.fused_steps += 1
            return
        hidden = self.model.decode(chosen.view(-1, 1), decoder_attention_mask=mask, cache=cache)
        self.logits = self.model.last_logits(hidden)

    def _renumber(self, keep: list[int]) -> None:
        """Keep rows `keep`; a request that loses some of its rows keeps its picker's state for the others."""
        kept = [self.rows[i] for i in keep]
        before = collections.Counter(id(r.picker) for r in self.rows)
        groups: dict[int, list[Row]] = {}
        for r in kept:
            groups.setdefault(id(r.picker), []).append(r)
        for pid, group in groups.items():
            if len(group) != before[pid]:
                group[0].picker.keep([r.slot for r in group])
                for j, r in enumerate(group):
                    r.slot = j
        self.rows = kept

    # ---- prompt scoring --------------------------------------------------------------------------------
    @staticmethod
    def _scored(logits: torch.Tensor, targets: list[int], k: int) -> list[tuple[float, list[tuple[int, float]]]]:
        """Log-probability of each target under the logits before it, and the k most likely alternatives."""
        if not targets:
            return []
        lsm = torch.log_softmax(logits, dim=-1)
        t = torch.tensor(targets, dtype=torch.long, device=logits.device)
        chosen = lsm[torch.arange(len(targets), device=logits.device), t].tolist()
        if k:
            values, ids = torch.topk(lsm, k, dim=-1)
            tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
        else:
            tops = [[] for _ in targets]
        return list(zip(chosen, tops))


__all__ = ["Scheduler", "Work", "QueueFull"]
