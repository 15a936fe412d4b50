"""Model surgery for fine-tuning: task-head swaps, the training methods (full, frozen, LoRA) and embeddings
initialised from word vectors.

A head swap builds the same configuration with `head=classify|tag`, `num_labels` and the label names, copies
every backbone tensor of the source model (embeddings, blocks, norms, BERT's pooler) and initialises the new
head; the result is an ordinary `Transformer` whose config names its head, so `lmforge.load` rebuilds it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Sequence

import torch

from ..adapters.lora import apply_lora, head_prefixes, lora_spec, mark_trainable, trainable_fraction
from ..config import ModelConfig
from ..errors import ConfigError, DataError
from ..model import Transformer

Method = Literal["full", "frozen", "lora"]
ARCHS = {"classify": ("encoder", "decoder"), "tag": ("encoder", "decoder")}


def check_arch(config: ModelConfig, allowed: Sequence[str], task: str, source: str) -> None:
    if config.arch not in allowed:
        hint = {"encoder": "bert-mini, a BERT/MiniLM folder", "decoder": "gpt-mini, llama-tiny, a GPT-2 folder",
                "encoder_decoder": "transformer-small, transformer-base, a BART folder"}
        raise ConfigError(f"{task} needs {' or '.join(f'an {a}' if a[0] in 'aeiou' else f'a {a}' for a in allowed)} "
                          f"model ({'; '.join(hint[a] for a in allowed)}); {source} is "
                          f"{'an' if config.arch[0] in 'aeiou' else 'a'} {config.arch} model")


def with_head(model: Transformer, head: Literal["classify", "tag"], labels: Sequence[str],
              pooling: str | None = None, pooler: bool | None = None, dropout: float | None = None,
              seed: int = 0) -> Transformer:
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
                                   nsp_head=False, lora=None)
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
    keep = {k: v for k, v in state.items() if k in target and not k.startswith(("classifier.", "lm_head.", "nsp.",
                                                                               "mlm_")) and v.shape == target[k].shape}
    if not pooler:
        keep = {k: v for k, v in keep.items() if not k.startswith("pooler.")}
    new.load_state_dict(keep, strict=False)
    missing = [k for k in target if k not in keep and not k.startswith(("classifier.", "pooler."))]
    if missing:
        raise ConfigError(f"the head swap left {len(missing)} backbone tensor(s) uninitialised ({', '.join(missing[:3])})")
    new.tokenizer = getattr(model, "tokenizer", None)
    return new


def top_layers(model: Transformer, k: int) -> list[str]:
    """Parameter-name prefixes of the top k blocks (of the encoder for encoders, of the decoder otherwise),
    with the final norm."""
    stack_name = "encoder" if model.config.arch == "encoder" else "decoder"
    stack = getattr(model, stack_name)
    n = len(stack.layers)
    if k > n:
        raise ConfigError(f"--unfreeze-layers={k} but the model has {n} layers")
    prefixes = [f"{stack_name}.layers.{i}." for i in range(n - k, n)]
    if k and stack.final_norm is not None:
        prefixes.append(f"{stack_name}.final_norm.")
    return prefixes


def apply_method(model: Transformer, method: Method, *, unfreeze_layers: int = 0, lora_rank: int = 8,
                 lora_alpha: float = 16.0, lora_targets: Sequence[str] | str = ("q_proj", "v_proj"),
                 lora_dropout: float = 0.0) -> dict[str, Any]:
    """Set what trains: everything (full), the head and the top k layers (frozen), or LoRA matrices and the head
    (lora). Returns a summary."""
    if method not in ("full", "frozen", "lora"):
        raise ConfigError(f"--method {method!r} is not supported; use full | frozen | lora")
    if unfreeze_layers < 0:
        raise ConfigError(f"--unfreeze-layers={unfreeze_layers} must be >= 0")
    heads = tuple(head_prefixes(model))
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "frozen":
        keep = heads + tuple(top_layers(model, unfreeze_layers))
        if not keep:
            raise ConfigError("--method frozen on a language-model head would train nothing; use --method lora or full")
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(keep))
    else:
        if not model.config.lora:
            apply_lora(model, **lora_spec(lora_rank, lora_alpha, lora_targets, lora_dropout))
        mark_trainable(model, heads + tuple(top_layers(model, unfreeze_layers)))
    trainable, total = trainable_fraction(model)
    return {"method": method, "trainable": trainable, "total": total, "fraction": trainable / total,
            "lora": model.config.lora, "unfreeze_layers": unfreeze_layers}


def restore_method(model: Transformer, info: dict[str, Any]) -> None:
    """Set requires_grad as `apply_method` did for a run being resumed (the adapter is rebuilt from the config)."""
    apply_method(model, info["method"], unfreeze_layers=info.get("unfreeze_layers", 0))


# ---- word vectors ----------------------------------------------------------------------------------------

def read_word_vectors(path: str | Path, wanted: set[str] | None = None) -> tuple[dict[str, torch.Tensor], int]:
    """Vectors of a GloVe or word2vec text file (`word v1 v2 ...` per line; word2vec's `count dim` header line is
    skipped). Only the words in `wanted` are kept (all when None)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such word-vector file")
    vectors: dict[str, torch.Tensor] = {}
    dim = None
    opener = __import__("gzip").open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip().split(" ")
            if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])  # word2vec header: count dim
                continue
            if len(parts) < 2:
                continue
            if dim is None:
                dim = len(parts) - 1
            if len(parts) - 1 != dim:
                raise DataError(f"{path}:{lineno}: {len(parts) - 1} numbers but the file's vectors have {dim}")
            word = parts[0]
            if wanted is not None and word not in wanted:
                continue
            try:
                vectors[word] = torch.tensor([float(x) for x in parts[1:]])
            except ValueError:
                raise DataError(f"{path}:{lineno}: not a number among the vector's values") from None
    if dim is None:
        raise DataError(f"{path} holds no vectors")
    return vectors, dim


def token_words(tokenizer) -> dict[int, str]:
    """The word each word-initial vocabulary entry spells (decoded, spaces stripped); continuation pieces
    (WordPiece's ## or ＃＃) and special tokens are left out."""
    out = {}
    special = tokenizer.special_ids
    for i in range(tokenizer.vocab_size):
        token = tokenizer.id_to_token(i)
        if i in special or token is None or token.startswith(("##", "＃＃")):
            continue
        text = tokenizer.decode([i]).strip()
        if text and "\ufffd" not in text:
            out[i] = text
    return out


@torch.no_grad()
def init_embeddings(model: Transformer, tokenizer, path: str | Path, lowercase_fallback: bool = True) -> dict[str, Any]:
    """Set the token-embedding rows of vocabulary entries that spell a word of the vector file (as is, or lower-cased),
    rescaled so the vectors have the spread of the model's initialisation; returns coverage figures."""
    words = token_words(tokenizer)
    wanted = set(words.values()) | ({w.lower() for w in words.values()} if lowercase_fallback else set())
    vectors, dim = read_word_vectors(path, wanted)
    d = model.config.d_model
    if dim != d:
        raise ConfigError(f"{path} has {dim}-dimensional vectors but the model's d_model is {d}; build the model "
                          f"with --set d_model={dim} (and n_head dividing it) or use vectors of size {d}")
    found = {}
    for i, w in words.items():
        vec = vectors.get(w)
        if vec is None and lowercase_fallback:
            vec = vectors.get(w.lower())
        if vec is not None:
            found[i] = vec
    if not found:
        raise DataError(f"no word of {path} matches a token of the vocabulary; is it a vector file for this language?")
    stacked = torch.stack(list(found.values()))
    emb = model.tok_embed.weight
    target_std = float(emb.std()) or model.config.init_std
    scale = target_std / max(float(stacked.std()), 1e-8)
    index = torch.tensor(list(found), dtype=torch.long, device=emb.device)
    emb.index_copy_(0, index, (stacked * scale).to(emb.dtype).to(emb.device))
    coverage = len(found) / max(len(words), 1)
    return {"vectors_file": str(path), "vector_dim": dim, "tokens_set": len(found), "vocab": tokenizer.vocab_size,
            "coverage": coverage, "scale": scale if math.isfinite(scale) else None,
            "note": f"embeddings: {len(found):,} of {tokenizer.vocab_size:,} token rows set from {path} "
                    f"({coverage:.1%} of word-initial tokens)"}


__all__ = ["with_head", "apply_method", "restore_method", "check_arch", "top_layers", "read_word_vectors",
           "init_embeddings", "token_words"]
