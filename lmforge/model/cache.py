"""A preallocated key/value cache for incremental decoding.

One tensor per layer of shape (B, K, max_len, D) is allocated once; each forward pass writes its new keys and
values at `[length : length + T]` and attends over `[: length + T]`. The model advances `length` after the
last layer. Cross-attention keys/values (encoder-decoder) are computed once and kept. Beam search reorders
rows with `reorder`.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_head: int,
        head_dim: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.cross: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers
        self.max_len = max_len
        self.length = 0  # filled positions

    @classmethod
    def for_model(cls, model, batch_size: int, max_len: int | None = None, dtype: torch.dtype | None = None):
        make = getattr(model, "new_cache", None)
        if make is not None:  # a model that keeps its keys/values elsewhere (ONNX Runtime: export/onnx) makes its own
            return make(batch_size, max_len, dtype)
        config = model.config
        param = next(model.parameters())
        return cls(model.cache_layers, batch_size, config.n_kv_head, config.head_dim,
                   max_len or config.context_length, param.device, dtype or param.dtype)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        end = self.length + T
        if end > self.max_len:
            from ..errors import LmforgeError

            raise LmforgeError(f"the KV cache holds {self.max_len} positions and {end} are needed; "
                               "shorten the prompt or max_new_tokens")
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def has_cross(self, layer: int) -> bool:
        return self.cross[layer] is not None

    def get_cross(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross[layer]  # type: ignore[return-value]

    def set_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.cross[layer] = (k, v)

    def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keep rows `index` (beam search): row i of the result is old row index[i].

        With as many rows as before, only the filled positions are copied, in place; a longer `index` (one
        prompt's cache expanded to several beams or samples) allocates new buffers. `cross=False` leaves the
        cross-attention keys/values alone (beams of one source share them).
        """
        n = self.length
        same = index.numel() == self.keys[0].shape[0]
        for i in range(len(self.keys)):
            if same:
                self.keys[i][:, :, :n] = self.keys[i][:, :, :n].index_select(0, index)
                self.values[i][:, :, :n] = self.values[i][:, :, :n].index_select(0, index)
            else:
                self.keys[i] = self.keys[i].index_select(0, index)
                self.values[i] = self.values[i].index_select(0, index)
            if cross and self.cross[i] is not None:
                k, v = self.cross[i]
                self.cross[i] = (k.index_select(0, index), v.index_select(0, index))
