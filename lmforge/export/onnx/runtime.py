"""`OnnxModel`: an exported folder run by ONNX Runtime, which `lmforge.generate`, `predict` and the chat accept like
a model.

The generation engine sees a model through `decode(ids, ..., cache=...)`, `encode` and `last_logits`, and gets its
cache from `KVCache.for_model`, which asks a model that has `new_cache` for its own. `OnnxModel` gives exactly
those: `new_cache` returns an `OrtCache` (the present keys/values of the last call, kept as ONNX Runtime values, fed
back as the next call's past), `decode` runs the decoder graph and returns its logits (B, 1, V) in place of hidden
states, and `last_logits` takes the last position. Greedy, sampling and beam search (row selection through
`OrtCache.reorder`) therefore run the engine's own loops, unchanged.

Encoder-decoder folders: `encode` runs the encoder graph, which returns every decoder layer's cross-attention keys
and values as one batch-first tensor (B, 2L, K, S, D); the engine passes it back to `decode` at every step and
selects its rows for beams as it does with hidden states. Models with a task head: `forward(input_ids,
attention_mask, token_type_ids=...)` returns the head's logits, as the PyTorch model's does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import ConfigError, LmforgeError

LEVELS = ("disable", "basic", "extended", "all")


def session_options(threads: int | None = None, optimization: str = "all"):
    import onnxruntime as ort

    if optimization not in LEVELS:
        raise ConfigError(f"graph optimization {optimization!r} is not a level of ONNX Runtime; use "
                          f"{' | '.join(LEVELS)}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}: give at least 1 (or leave it unset for ONNX Runtime's choice)")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.intra_op_num_threads = threads or min(torch.get_num_threads(), os.cpu_count() or 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # warnings about unused initializers and the like stay quiet
    return so


class OrtCache:
    """The engine's KV cache for an ONNX Runtime decoder: the keys/values of every layer after the last call.

    Two forms. Grown (any decoder graph): `kv` holds the present keys/values of the last call, (B, K, length, D), fed
    back as the next call's past. Shared (ONNX Runtime's fused graph, `ortgraph`, when the engine says how long the
    sequence gets): `kv` holds buffers of (B, K, max_len, D) bound as both the past inputs and the present outputs, so
    GroupQueryAttention writes each step's keys/values in place; no copy of the cache and no allocation per step
    (0.4-1.2 ms a token on SmolLM2, docs/benchmarks.md)."""

    def __init__(self, batch_size: int, n_layers: int, kv_heads: int, head_dim: int,
                 max_len: int | None = None) -> None:
        self.kv: list[Any] | None = None  # 2 per layer, OrtValues (B, K, length or max_len, D)
        self.empty = (batch_size, kv_heads, 0, head_dim)
        self.n_layers = n_layers
        self.length = 0
        self.max_len = max_len  # set: the shared form

    @property
    def shared(self) -> bool:
        return self.max_len is not None

    def past(self, needed: int = 0) -> list[Any]:
        """The past inputs of a call that will hold `needed` positions in all."""
        import onnxruntime as ort

        if self.shared:
            if self.kv is None or needed > self.max_len:  # first call, or more positions than the engine said
                self._resize(max(needed, self.max_len if self.kv is None else 2 * self.max_len))
            return self.kv  # type: ignore[return-value]
        if self.kv is None:  # step 0: a past of length 0
            return [ort.OrtValue.ortvalue_from_numpy(np.zeros(self.empty, np.float32)) for _ in range(2 * self.n_layers)]
        return self.kv

    def _resize(self, max_len: int) -> None:
        import onnxruntime as ort

        B, K, _, D = self.empty
        bufs = []
        for i in range(2 * self.n_layers):
            a = np.zeros((B, K, max_len, D), np.float32)
            if self.kv is not None:
                a[:, :, :self.length] = self.kv[i].numpy()[:, :, :self.length]
            bufs.append(ort.OrtValue.ortvalue_from_numpy(a))
        self.kv, self.max_len = bufs, max_len

    def advance(self, n: int) -> None:
        self.length += n

    def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keep rows `index` (beams, several samples of one prompt), as `KVCache.reorder`."""
        import onnxruntime as ort

        idx = index.cpu().numpy()
        self.empty = (len(idx),) + self.empty[1:]
        if self.kv is not None:
            self.kv = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v.numpy()[idx])) for v in self.kv]


class _Deferred:
    """`encode` of a decoder with a task head: the ids, run through the graph once the pooling mask is known
    (`task_logits` calls encode(ids) and then head_logits(hidden, mask))."""

    def __init__(self, ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> None:
        self.ids, self.token_type_ids = ids, token_type_ids


class OnnxModel(nn.Module):
    """A folder written by `export_onnx`, on ONNX Runtime's CPU provider."""

    runtime = "onnx"

    def __init__(self, folder: str | os.PathLike, config, tokenizer, info: dict[str, Any], *,
                 threads: int | None = None, optimization: str = "all") -> None:
        super().__init__()
        import onnxruntime as ort

        self.folder = Path(folder)
        # an empty fp32 CPU tensor, so code that reads `next(model.parameters()).device` (or dtype) works as for a model
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self.config = config
        self.tokenizer = tokenizer
        self.info = info
        options = session_options(threads, optimization)
        self.sessions = {}
        for role, name in info["graphs"].items():
            path = self.folder / name
            if not path.is_file():
                raise LmforgeError(f"{path} is missing: the ONNX export is incomplete; export it again")
            # from the path, so ONNX Runtime finds the external data file beside the graph
            self.sessions[role] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.kind = info["kind"]  # decoder | seq2seq | head
        self.n_layers = info.get("layers", 0)
        self._outputs = {r: [o.name for o in s.get_outputs()] for r, s in self.sessions.items()}
        self._inputs = {r: [i.name for i in s.get_inputs()] for r, s in self.sessions.items()}

    def extra_repr(self) -> str:
        return f"folder={self.folder}, kind={self.kind}, graphs={list(self.info['graphs'])}, " \
               f"quantize={self.info.get('quantize')}"

    # ---- what the engine reads of a model ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def cache_layers(self) -> int:
        if self.kind == "head":
            raise LmforgeError("this ONNX export is a model with a task head: it keeps no KV cache")
        return self.n_layers

    def num_parameters(self, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        """The exported model's parameter count (recorded at export)."""
        return int(self.info.get("parameters", 0))

    def new_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> OrtCache:
        shared = max_len if self.info.get("graph") == "ort" else None  # see OrtCache
        return OrtCache(batch_size, self.cache_layers, self.config.n_kv_head, self.config.head_dim, shared)

    def _run(self, role: str, feeds: dict[str, Any], past: list[Any] | None = None,
             shared: bool = False) -> tuple[np.ndarray, list[Any]]:
        """Run graph `role`; `shared`: the past buffers are also the present outputs (written in place)."""
        session = self.sessions[role]
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        names = self._inputs[role][-len(past):] if past is not None else []
        for name, value in zip(names, past or []):
            binding.bind_ortvalue_input(name, value)
        outputs = self._outputs[role]
        binding.bind_output(outputs[0], "cpu")
        for name, value in zip(outputs[1:], past if shared else [None] * (len(outputs) - 1)):
            if value is None:
                binding.bind_output(name, "cpu")
            else:
                binding.bind_ortvalue_output(name, value)
        session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return outs[0].numpy(), (list(past) if shared else list(outs[1:]))

    def decode(self, decoder_input_ids: torch.Tensor, encoder_hidden: torch.Tensor | None = None,
               encoder_mask: torch.Tensor | None = None, decoder_attention_mask: torch.Tensor | None = None,
               decoder_position_ids: torch.Tensor | None = None, cache: OrtCache | None = None) -> torch.Tensor:
        """Logits (B, 1, V) of the last new token (what `last_logits` reads), continuing `cache` when given."""
        if self.kind == "head":
            raise LmforgeError("this ONNX export is a model with a task head, not a language model: it cannot decode")
        ids = decoder_input_ids.cpu().long().numpy()
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.context_length:
            raise LmforgeError(f"sequence of {start + T} tokens is longer than the model's context_length="
                               f"{self.config.context_length}; truncate the input or use a longer context")
        if decoder_attention_mask is not None:
            mask = decoder_attention_mask.cpu().long().numpy()
        else:
            mask = np.ones((B, start + T), np.int64)
        if decoder_position_ids is not None:
            pos = decoder_position_ids.cpu().long().numpy()
        elif decoder_attention_mask is not None:  # Stack.positions: real tokens only
            pos = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)[:, -T:]
        else:
            pos = np.arange(start, start + T, dtype=np.int64)[None].repeat(B, 0)
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "position_ids": pos.astype(np.int64)}
        if self.kind == "seq2seq":
            if encoder_hidden is None:
                raise LmforgeError("an encoder-decoder needs the output of encode(source) to decode")
            S = encoder_hidden.shape[3]
            feeds["encoder_attention_mask"] = (encoder_mask.cpu().long().numpy() if encoder_mask is not None
                                               else np.ones((B, S), np.int64))
            feeds["cross_kv"] = encoder_hidden.cpu().float().numpy()
        own = cache if cache is not None else OrtCache(B, self.n_layers, self.config.n_kv_head, self.config.head_dim)
        logits, present = self._run("decoder", feeds, own.past(start + T), shared=own.shared)
        if cache is not None:
            cache.kv = present
            cache.advance(T)
        return torch.from_numpy(logits)

    def last_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[:, -1].float()

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None):
        if self.kind == "seq2seq":
            ids = input_ids.cpu().long().numpy()
            mask = attention_mask.cpu().long().numpy() if attention_mask is not None else np.ones_like(ids)
            out, _ = self._run("encoder", {"input_ids": ids, "attention_mask": mask})
            return torch.from_numpy(out)
        if self.kind == "head":
            return _Deferred(input_ids, token_type_ids)
        raise LmforgeError("this ONNX export is a decoder language model; its graph gives logits, not hidden states "
                           "(use lmforge.generate, or the PyTorch model for hidden states)")

    def head_logits(self, hidden, attention_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        if isinstance(hidden, _Deferred):
            return self.forward(hidden.ids, attention_mask, token_type_ids=hidden.token_type_ids)
        return hidden  # decode already gave logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                token_type_ids: torch.Tensor | None = None, **unsupported: Any) -> torch.Tensor:
        """Logits of the head: (B, labels) for a classifier, (B, T, labels) for a tagger, (B, T, V) for a masked LM."""
        if self.kind != "head":
            raise LmforgeError("this ONNX export decodes with a KV cache: use lmforge.generate (or decode with "
                               "new_cache()); its graph gives the last position's logits only")
        extra = [k for k, v in unsupported.items() if v is not None]
        if extra:
            raise LmforgeError(f"an ONNX model with a head takes input_ids, attention_mask and token_type_ids; not "
                               f"{', '.join(extra)}")
        ids = input_ids.cpu().long().numpy()
        feeds = {"input_ids": ids,
                 "attention_mask": attention_mask.cpu().long().numpy() if attention_mask is not None else np.ones_like(ids)}
        if "token_type_ids" in self._inputs["model"]:
            feeds["token_type_ids"] = (token_type_ids.cpu().long().numpy() if token_type_ids is not None
                                       else np.zeros_like(ids))
        out, _ = self._run("model", feeds)
        return torch.from_numpy(out)

    def token_logits(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (T, V) of a decoder at every position of one sequence: the first token as a prefill,
        then one cached step per token (the graph gives the last position only). For parity reports and KL."""
        ids = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
        cache = self.new_cache(1)
        rows = [self.decode(ids[:, :1], cache=cache)[:, -1]]
        for t in range(1, ids.shape[1]):
            rows.append(self.decode(ids[:, t:t + 1], cache=cache)[:, -1])
        return torch.cat(rows).float()


__all__ = ["OnnxModel", "OrtCache", "session_options", "LEVELS"]
