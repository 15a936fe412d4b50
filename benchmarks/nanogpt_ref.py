"""The reference for the Tiny Shakespeare benchmark: nanoGPT's recipe, reimplemented in plain PyTorch.

It follows nanoGPT (karpathy/nanoGPT, model.py and train.py) as its CPU example runs it: a GPT with a fused
c_attn projection, LayerNorm without bias, exact GELU, learned positions, tied embeddings, init N(0, 0.02) with
residual projections scaled by 1/sqrt(2 * n_layer); training on random windows drawn with torch.randint; AdamW
(weight decay on matrices and embeddings, PyTorch's default non-fused kernel on CPU), linear warm-up then
cosine decay to min_lr, gradient clipping at 1.0, eager mode (the example passes --compile=False).
Written here, not copied, so that the reference runs in the same process and on the same data as lmforge.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d, bias=False)
        self.c_proj = nn.Linear(d, d, bias=False)
        self.n_head = n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d, bias=False)
        self.attn = CausalSelfAttention(d, n_head)
        self.ln_2 = nn.LayerNorm(d, bias=False)
        self.c_fc = nn.Linear(d, 4 * d, bias=False)
        self.c_proj = nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, d: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.h = nn.ModuleList(Block(d, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d, bias=False)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.lm_head.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.shape[1])
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def lr_at(it: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def make_step(train_data: np.ndarray, vocab: int, *, iters: int = 2000, batch: int = 12, block: int = 64,
              n_layer: int = 4, n_head: int = 4, d: int = 128, lr: float = 1e-3, min_lr: float = 1e-4,
              warmup: int = 100, beta2: float = 0.99, weight_decay: float = 0.1, seed: int = 1337):
    """nanoGPT's model and one iteration of its loop: (model, step) where step(it) trains iteration `it` and returns
    its loss tensor (train() reads it with .item() each step, as nanoGPT's logging does)."""
    torch.manual_seed(seed)
    model = GPT(vocab, block, n_layer, n_head, d)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2))
    data = torch.from_numpy(train_data.astype(np.int64))

    def step(it: int) -> torch.Tensor:
        for g in opt.param_groups:
            g["lr"] = lr_at(it, lr, min_lr, warmup, iters)
        ix = torch.randint(len(data) - block, (batch,))
        x = torch.stack([data[i:i + block] for i in ix])
        y = torch.stack([data[i + 1:i + 1 + block] for i in ix])
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def train(train_data: np.ndarray, vocab: int, *, iters: int = 2000, on_step=None,
          **kw) -> tuple[GPT, list[float], list[float]]:
    """Train nanoGPT's way; returns the model, per-step losses and per-step times (seconds)."""
    model, step = make_step(train_data, vocab, iters=iters, **kw)
    losses, times = [], []
    for it in range(iters):
        t0 = time.perf_counter()
        losses.append(step(it).item())
        times.append(time.perf_counter() - t0)
        if on_step:
            on_step(it, losses[-1])
    return model, losses, times


@torch.no_grad()
def val_loss(model: GPT, val_data: np.ndarray, block: int = 64, batch: int = 64) -> float:
    """Mean loss over the whole val split in non-overlapping windows (the same windows lmforge evaluates)."""
    model.eval()
    data = torch.from_numpy(val_data.astype(np.int64))
    total, count = 0.0, 0
    starts = list(range(0, len(data) - 1, block))
    rows = [data[s: s + block + 1] for s in starts]
    full, partial = [r for r in rows if len(r) == block + 1], [r for r in rows if len(r) < block + 1]
    batches = [torch.stack(full[i: i + batch]) for i in range(0, len(full), batch)] + [r[None] for r in partial]
    for w in batches:
        loss = model(w[:, :-1].contiguous(), w[:, 1:].contiguous())
        total += loss.item() * w[:, 1:].numel()
        count += w[:, 1:].numel()
    model.train()
    return total / count
