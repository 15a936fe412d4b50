"""The one Transformer: decoder-only (GPT, Llama), encoder-only (BERT) and encoder-decoder (Vaswani et al.).

The whole forward pass is here and in `blocks.py`. An architecture is a choice of stacks: a causal `Stack`
(decoder), a bidirectional `Stack` (encoder), or both with cross-attention in the decoder. Token embeddings
are shared by both stacks (and tied to the output layer when `tie_embeddings`). The head on top is chosen by
`config.head`: the language-model head ("lm": next-token for decoders, masked-token for encoders), a
sequence classifier ("classify"), a token tagger ("tag"), an answer-span head ("span": start and end logits per
token) or a tagger with a relation classifier over entity pairs ("relations").
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..config import ModelConfig
from ..errors import LmforgeError
from .blocks import AttnMask, Block, Rotary, activation_fn, build_attn_mask, make_norm, sinusoidal_table
from .cache import KVCache
from .fast import Linear, linear
from .lora import apply_lora
from .lowrank import apply_lowrank_layout
from .quant import apply_quant_layout


class Stack(nn.Module):
    """Embeddings (positions, segments) + a stack of blocks + the final norm."""

    def __init__(self, config: ModelConfig, n_layers: int, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.n_layers = n_layers
        d = config.d_model
        self.pos_embed = nn.Embedding(config.context_length + config.pos_offset, d) if config.pos == "learned" else None
        if config.pos == "sinusoidal":
            self.register_buffer("sinusoid", sinusoidal_table(config.context_length, d), persistent=False)
        self.rotary = Rotary(config) if config.pos == "rope" else None
        self.type_embed = nn.Embedding(config.type_vocab_size, d) if config.type_vocab_size else None
        self.embed_norm = make_norm(config) if config.embed_norm else None
        self.drop = nn.Dropout(config.dropout)
        n_unique = config.unique_layers or n_layers
        self.layers = nn.ModuleList(Block(config, cross=cross) for _ in range(n_unique))
        self.final_norm = make_norm(config) if config.use_final_norm else None
        self.embed_scale = math.sqrt(d) if config.embed_scale else 1.0
        self.checkpointing = False  # activation checkpointing in training (Transformer.set_activation_checkpointing)

    def block(self, i: int) -> Block:
        """Layer i; with ALBERT-style sharing, consecutive layers reuse the same block."""
        return self.layers[i * len(self.layers) // self.n_layers]

    def positions(self, attention_mask: torch.Tensor | None, T: int, start: int, device) -> torch.Tensor:
        """Position of each token: counted over real tokens when there is a padding mask (so left padding
        does not shift them), else start..start+T-1."""
        if attention_mask is not None:
            return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        return torch.arange(start, start + T, device=device)[None]

    def forward(
        self,
        tok_embed: nn.Embedding,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, S) 1 = real token; S = cached + T
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T = input_ids.shape
        start = cache.length if cache is not None else 0
        # ONNX export (export/onnx) traces with symbolic sizes: no checks that would guard on them, and the mask,
        # always given there, always applied (whether a mask is all ones depends on the data)
        exporting = torch.compiler.is_exporting()
        if not exporting and attention_mask is not None and tuple(attention_mask.shape) != (B, start + T):
            raise LmforgeError(f"attention_mask has shape {tuple(attention_mask.shape)}; it must be (batch, cached + "
                               f"new tokens) = {(B, start + T)}")
        if not exporting and start + T > self.config.context_length:
            raise LmforgeError(f"sequence of {start + T} tokens is longer than the model's context_length="
                               f"{self.config.context_length}; truncate the input or use a longer context")
        if not exporting and attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # no padding: the fast unmasked path
        if position_ids is None:
            position_ids = self.positions(attention_mask, T, start, input_ids.device)
        x = tok_embed(input_ids)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if self.pos_embed is not None:
            x = x + self.pos_embed(position_ids + self.config.pos_offset)
        elif self.rotary is None and self.config.pos == "sinusoidal":
            x = x + self.sinusoid[position_ids].to(x.dtype)
        if self.type_embed is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.type_embed(token_type_ids)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.drop(x)
        rope = self.rotary(position_ids, x.dtype) if self.rotary is not None else None
        mask = build_attn_mask(T, start + T, causal=self.causal, key_padding=attention_mask,
                               window=self.config.sliding_window, device=x.device)
        cross_mask = None
        if memory is not None:
            cross_mask = build_attn_mask(T, memory.shape[1], causal=False, key_padding=memory_mask,
                                         device=x.device)
        recompute = self.checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i in range(self.n_layers):
            if recompute:  # keep only the block's input; its activations are recomputed in the backward pass
                x = torch.utils.checkpoint.checkpoint(self.block(i), x, mask, rope, None, i, memory, cross_mask,
                                                      use_reentrant=False)
            else:
                x = self.block(i)(x, mask, rope, cache, i, memory, cross_mask)
        if cache is not None:
            cache.advance(T)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x


class Transformer(nn.Module):
    """One model class for all three architectures and their task heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = None  # set by lmforge.load
        self.tok_embed = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = None
        self.decoder = None
        if config.arch in ("encoder", "encoder_decoder"):
            self.encoder = Stack(config, config.n_layer, causal=False)
        if config.arch == "decoder":
            self.decoder = Stack(config, config.n_layer, causal=True)
        elif config.arch == "encoder_decoder":
            self.decoder = Stack(config, config.decoder_layers, causal=True, cross=True)
        self._build_head(config)
        self.apply(self._init_weights)
        self._init_residual_scale()
        if self.tied:
            self.lm_head.weight = self.tok_embed.weight
        if config.lora:  # LoRA layer swap, rebuilt from the config
            apply_lora(self, **config.lora)
        if config.lowrank:  # factorised layers, rebuilt empty from the config (the checkpoint fills them)
            apply_lowrank_layout(self, config.lowrank)
        if config.quant:  # quantized layers, rebuilt empty from the config (the checkpoint fills them)
            apply_quant_layout(self, config.quant)

    # ---- construction ---------------------------------------------------------------------------------
    def _build_head(self, config: ModelConfig) -> None:
        d = config.d_model
        self.mlm_dense = self.mlm_norm = self.lm_head = None
        self.pooler = self.nsp = self.classifier = None
        if config.head == "lm":
            if config.arch == "encoder" and config.mlm_transform:
                self.mlm_dense = nn.Linear(d, d)
                self.mlm_norm = make_norm(config)
            self.lm_head = nn.Linear(d, config.vocab_size, bias=config.resolved("lm_head_bias"))
            if config.nsp_head or config.pooler:
                self.pooler = nn.Linear(d, d)
            if config.nsp_head:
                self.nsp = nn.Linear(d, 2)
        else:
            self.head_dropout = nn.Dropout(config.dropout)
            self.classifier = nn.Linear(d, config.num_labels)
            if config.head == "classify" and config.pooler:  # BERT's dense+tanh pooler (BertForSequenceClassification)
                self.pooler = nn.Linear(d, d)
            if config.head == "relations":  # SpERT-style: [head entity; tail entity; context between] -> types + none
                self.relation_classifier = nn.Linear(3 * d, len(config.relation_labels) + 1)

    @property
    def tied(self) -> bool:  # (a quantized LM head holds its own integers, no longer the embedding)
        return (self.config.tie_embeddings and self.lm_head is not None
                and "lm_head" not in (self.config.quant or {}).get("layers", {}))

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # with scaled embeddings (x * sqrt(d)), d^-1/2 keeps the scaled vectors at unit size
            scale = self.config.d_model ** -0.5 if self.config.embed_scale and module is self.tok_embed else std
            nn.init.normal_(module.weight, mean=0.0, std=scale)

    def _init_residual_scale(self) -> None:
        """GPT-2: the projections into the residual stream start 1/sqrt(2 * layers) smaller."""
        n = self.config.n_layer + (self.config.decoder_layers if self.config.arch == "encoder_decoder" else 0)
        std = self.config.init_std / math.sqrt(2 * n)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=std)

    # ---- properties -----------------------------------------------------------------------------------
    @property
    def cache_layers(self) -> int:
        """Layers that keep keys and values while decoding (the decoder's); encoders do not decode."""
        if self.decoder is None:
            raise LmforgeError("an encoder-only model has no decoder and keeps no KV cache")
        return self.decoder.n_layers

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self, trainable_only: bool = False, exclude_embeddings: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (trainable_only and not p.requires_grad):
                continue
            if exclude_embeddings and (name.startswith("tok_embed") or "pos_embed" in name):
                continue
            seen.add(id(p))
            total += p.numel()
        if not trainable_only:  # quantized layers hold their weights as integer buffers: counted as the weights
            total += sum(m.in_features * m.out_features for m in self.modules() if hasattr(m, "qweight"))
        return total

    # ---- forward --------------------------------------------------------------------------------------
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, d_model) of the input: the encoder's for encoder and encoder-decoder models,
        the decoder's for decoder-only models."""
        self._check_ids(input_ids)
        stack = self.encoder if self.encoder is not None else self.decoder
        return stack(self.tok_embed, input_ids, attention_mask, position_ids, token_type_ids)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden: torch.Tensor | None = None,
        encoder_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        decoder_position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Decoder hidden states (B, T, d_model), continuing the sequence held by `cache` when given (the step of
        generation). Encoder-decoder models attend to `encoder_hidden`; decoder-only models take none."""
        self._check_ids(decoder_input_ids)
        if self.decoder is None:
            raise LmforgeError("this is an encoder-only model (BERT-style): it has no decoder")
        if (encoder_hidden is None) != (self.config.arch == "decoder"):
            raise LmforgeError("encoder_hidden is needed by an encoder-decoder model and taken by no other")
        return self.decoder(self.tok_embed, decoder_input_ids, decoder_attention_mask, decoder_position_ids,
                            None, cache, memory=encoder_hidden, memory_mask=encoder_mask)

    def forward(
        self,
        input_ids: torch.Tensor | None,  # (B, T); the source for encoder-decoder models
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 = token, 0 = padding
        *,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        decoder_position_ids: torch.Tensor | None = None,
        encoder_hidden: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits of the model's head: (B, T, vocab) for language models, (B, labels) for classifiers,
        (B, T, labels) for taggers. Encoder-decoder models without `decoder_input_ids` decode the input
        shifted right (as BART does)."""
        if self.config.arch == "encoder_decoder":
            if encoder_hidden is None:
                encoder_hidden = self.encode(input_ids, attention_mask, token_type_ids)
            if decoder_input_ids is None:
                if input_ids is None:
                    raise LmforgeError("an encoder-decoder forward needs input_ids or decoder_input_ids")
                decoder_input_ids = self.shift_right(input_ids)
            hidden = self.decode(decoder_input_ids, encoder_hidden, attention_mask, decoder_attention_mask,
                                 decoder_position_ids, cache)
            return self.head_logits(hidden, decoder_attention_mask, last_only)
        if self.config.arch == "decoder":
            self._check_ids(input_ids)
            hidden = self.decoder(self.tok_embed, input_ids, attention_mask, position_ids, token_type_ids, cache)
        else:
            hidden = self.encode(input_ids, attention_mask, token_type_ids, position_ids)
        return self.head_logits(hidden, attention_mask, last_only)

    def head_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    last_only: bool = False) -> torch.Tensor:
        if self.config.head == "classify":
            pooled = self.pool(hidden, attention_mask)
            if self.pooler is not None:
                pooled = torch.tanh(self.pooler(pooled))
            return self.classifier(self.head_dropout(pooled))
        if self.config.head in ("tag", "span", "relations"):  # a logit vector per token (tags; span start/end)
            return self.classifier(self.head_dropout(hidden))
        if last_only:
            hidden = hidden[:, -1:]
        if self.mlm_dense is not None:
            act = activation_fn({"swiglu": "silu", "geglu": "gelu"}.get(self.config.activation,
                                                                        self.config.activation))
            hidden = self.mlm_norm(act(self.mlm_dense(hidden)))
        return self.lm_head(hidden)

    def last_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float logits (B, vocab) of the language-model head at the last position of `hidden` (B, T, d_model):
        what decoding needs at each step. A plain linear LM head goes through the fast inference path."""
        head = self.lm_head
        if self.mlm_dense is None and type(head) in (nn.Linear, Linear):
            return linear(hidden[:, -1], head.weight, head.bias).float()
        return self.head_logits(hidden, last_only=True)[:, -1].float()

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One vector per sequence: the first token (cls), the mean of real tokens, or the last real token."""
        kind = self.config.pooling
        if kind == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(1) if kind == "mean" else hidden[:, -1]
        mask = attention_mask.to(hidden.dtype)
        if kind == "mean":
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        last = (attention_mask.long().cumsum(1).argmax(1))  # index of the last real token (right padding)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def pair_logits(self, hidden: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Relation logits (P, relation types + 1; index 0 = no relation) of entity pairs, for head=relations.

        `pairs` (P, 5) holds (row, head start, head end, tail start, tail end) as token indices, ends exclusive. An
        entity is the max-pool of its tokens' hidden states, the context the max-pool of the tokens between the two
        (zeros when they touch), as in SpERT (Eberts and Ulges, 2020)."""
        if self.config.head != "relations":
            raise LmforgeError(f"pair_logits needs a model with head=relations; this one has head={self.config.head}")
        T = hidden.shape[1]
        pos = torch.arange(T, device=hidden.device)[None]  # (1, T)
        out = []
        for chunk in pairs.split(256):  # (P, T, d) copies of the rows: bounded memory for many pairs
            rows = hidden[chunk[:, 0]]  # (p, T, d)
            spans = ((chunk[:, 1:2], chunk[:, 2:3]), (chunk[:, 3:4], chunk[:, 4:5]),  # head, tail, between
                     (torch.minimum(chunk[:, 2:3], chunk[:, 4:5]), torch.maximum(chunk[:, 1:2], chunk[:, 3:4])))
            pooled = []
            for start, end in spans:
                inside = (pos >= start) & (pos < end)  # (p, T)
                x = rows.masked_fill(~inside[..., None], float("-inf")).amax(1)  # (p, d)
                pooled.append(torch.where(inside.any(1, keepdim=True), x, torch.zeros_like(x)))
            out.append(self.relation_classifier(self.head_dropout(torch.cat(pooled, -1))))
        if not out:
            return hidden.new_zeros((0, len(self.config.relation_labels) + 1))
        return torch.cat(out)

    def nsp_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-sentence prediction logits (B, 2) from the first token (BERT's pooler)."""
        if self.nsp is None:
            raise LmforgeError("this model has no next-sentence-prediction head; build it with nsp_head=true")
        return self.nsp(torch.tanh(self.pooler(hidden[:, 0])))

    def shift_right(self, ids: torch.Tensor) -> torch.Tensor:
        c = self.config
        start = next((t for t in (c.decoder_start_token_id, c.bos_token_id, c.eos_token_id) if t is not None), 0)
        shifted = ids.new_full(ids.shape, start)
        shifted[:, 1:] = ids[:, :-1]
        if c.pad_token_id is not None:
            shifted.masked_fill_(shifted == -100, c.pad_token_id)
        return shifted

    def _check_ids(self, ids: torch.Tensor) -> None:
        if not isinstance(ids, torch.Tensor):
            raise LmforgeError(f"token ids must be a tensor of shape (batch, length); got {type(ids).__name__}")
        if ids.dim() != 2:
            raise LmforgeError(f"token ids must have shape (batch, length); got {tuple(ids.shape)}")
        if ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
            raise LmforgeError(f"token ids must be integers; got {ids.dtype}")
        if ids.device.type == "cpu" and ids.numel() and not torch.compiler.is_compiling():  # (on a GPU: no sync)
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.config.vocab_size:
                raise LmforgeError(f"token id {low if low < 0 else high} is out of range: this model's ids are 0 .. "
                                   f"{self.config.vocab_size - 1} (is the tokenizer the model's own?)")

    # ---- weights --------------------------------------------------------------------------------------
    def set_activation_checkpointing(self, enabled: bool = True) -> "Transformer":
        """Recompute every block's activations in the backward pass (training only): memory for activations drops
        from one set per layer to one per model, for about a third more compute; results are unchanged."""
        for stack in (self.encoder, self.decoder):
            if stack is not None:
                stack.checkpointing = enabled
        return self

    def tied_keys(self) -> set[str]:
        return {"lm_head.weight"} if self.tied else set()

    def state_dict_to_save(self) -> dict[str, torch.Tensor]:
        """State dict without the tied output weight (it is the token embedding)."""
        return {k: v for k, v in self.state_dict().items() if k not in self.tied_keys()}


@contextlib.contextmanager
def record_attention(model: Transformer) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Inside the block, every forward pass of `model` computes attention written out and records its weights:
    {"encoder": [...], "decoder": [...], "cross": [...]}, one (B, H, T, S) float32 tensor per layer and call, in
    order (a decoder's self-attention, an encoder-decoder's cross-attention). Outside it the fused path runs."""
    recorded: dict[str, list[torch.Tensor]] = {"encoder": [], "decoder": [], "cross": []}
    attentions = []
    for name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        for block in (stack.layers if stack is not None else ()):
            attentions.append((block.attn, recorded[name]))
            if block.cross_attn is not None:
                attentions.append((block.cross_attn, recorded["cross"]))
    for attention, sink in attentions:
        attention.record = sink
    try:
        yield recorded
    finally:
        for attention, _ in attentions:
            attention.record = None


def build_model(config: ModelConfig | str, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None) -> Transformer:
    """A model with fresh weights from a config, or from a preset's name ("gpt-nano")."""
    if isinstance(config, str):
        config = ModelConfig.from_name(config)
    if not isinstance(config, ModelConfig):
        raise LmforgeError(f"build_model needs a ModelConfig or a preset name; got {type(config).__name__}")
    model = Transformer(config)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "sum",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Token cross-entropy over the last axis; targets of -100 are ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=-100, reduction=reduction, label_smoothing=label_smoothing)


__all__ = ["Transformer", "Stack", "build_model", "KVCache", "AttnMask", "cross_entropy", "record_attention"]
