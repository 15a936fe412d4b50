"""Task-head swaps: a copy of a model with a classification, tagging, span or relation head, and the architecture
check of a task.

A head swap builds the same configuration with `head=classify|tag`, `num_labels` and the label names, copies
every backbone tensor of the source model (embeddings, blocks, norms, BERT's pooler) and initialises the new
head; the result is an ordinary `Transformer` whose config names its head, so `lmforge.load` rebuilds it.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch

from ..config import ModelConfig
from ..errors import ConfigError
from .transformer import Transformer

HEAD_PREFIXES = ("classifier.", "lm_head.", "nsp.", "mlm_", "relation_classifier.")  # parameters of a head, never copied by a swap


def check_arch(config: ModelConfig, allowed: Sequence[str], task: str, source: str) -> None:
    if config.arch not in allowed:
        hint = {"encoder": "bert-mini, a BERT/MiniLM folder", "decoder": "gpt-mini, llama-tiny, a GPT-2 folder",
                "encoder_decoder": "transformer-small, transformer-base, a BART folder"}
        raise ConfigError(f"{task} needs {' or '.join(f'an {a}' if a[0] in 'aeiou' else f'a {a}' for a in allowed)} "
                          f"model ({'; '.join(hint[a] for a in allowed)}); {source} is "
                          f"{'an' if config.arch[0] in 'aeiou' else 'a'} {config.arch} model")


def with_head(model: Transformer, head: Literal["classify", "tag", "span", "relations"], labels: Sequence[str],
              pooling: str | None = None, pooler: bool | None = None, dropout: float | None = None,
              seed: int = 0, relation_labels: Sequence[str] | None = None) -> Transformer:
    """A copy of `model` with a classification or tagging head for `labels` (the backbone weights copied, the
    head newly initialised with `seed`). With `pooling` cls, BERT's pooler is kept where the source has one
    (BertForSequenceClassification's head); `pooler` forces it on or off. Decoders pool the last token by default."""
    source = model.config
    if source.lora:
        raise ConfigError("the model carries a LoRA adapter; merge it first (lmforge lora merge) to fine-tune it again")
    labels = [str(x) for x in labels]
    if source.arch == "decoder":  # under causal attention only the last token has seen the whole text
        pooling = pooling or "last"
        if pooling == "cls" and head == "classify":
            raise ConfigError("--pooling cls on a decoder pools the first token, which sees nothing after itself; "
                              "use --pooling last or mean")
    pooling = pooling or source.pooling
    if pooler is None:
        pooler = bool(source.pooler or source.nsp_head) and pooling == "cls" and head == "classify"
    if pooler and source.arch != "encoder":
        raise ConfigError("the BERT pooler exists only on encoders; drop --pooler")
    changes: dict[str, Any] = dict(head=head, num_labels=len(labels), labels=labels, pooling=pooling, pooler=pooler,
                                   nsp_head=False, lora=None,
                                   relation_labels=[str(x) for x in relation_labels] if relation_labels else None)
    if dropout is not None:
        changes["dropout"] = dropout
    config = source.replace(**changes)
    devices = {p.device for p in model.parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = Transformer(config)
    new.to(next(iter(devices)) if devices else "cpu")
    state = {k: v for k, v in model.state_dict().items() if ".lora_" not in k}
    target = new.state_dict()
    keep = {k: v for k, v in state.items()
            if k in target and not k.startswith(HEAD_PREFIXES) and v.shape == target[k].shape}
    if not pooler:
        keep = {k: v for k, v in keep.items() if not k.startswith("pooler.")}
    new.load_state_dict(keep, strict=False)
    missing = [k for k in target if k not in keep and not k.startswith(("classifier.", "pooler.", "relation_classifier."))]
    if missing:
        raise ConfigError(f"the head swap left {len(missing)} backbone tensor(s) uninitialised ({', '.join(missing[:3])})")
    new.tokenizer = getattr(model, "tokenizer", None)
    return new


__all__ = ["with_head", "check_arch", "HEAD_PREFIXES"]
