"""`ModelConfig`: one dataclass for decoder-only, encoder-only and encoder-decoder Transformers.

Every choice is a plain value (strings for the kinds of norm, MLP and positions), so a config is plain JSON and
round-trips through `config.json`. Sizes that follow from others (`n_kv_head`, `head_dim`, `rotary_dim`, `d_ff`)
may be given as None and are filled in by `__post_init__`, so every field of a built config holds its value. Named presets give standard shapes; `ModelConfig.from_name(name, **overrides)`
or `--set key=value` on the command line changes any field. `__post_init__` validates every field and names the
allowed values in its error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ConfigError, choices

Arch = Literal["decoder", "encoder", "encoder_decoder"]
Norm = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]
Activation = Literal["gelu", "gelu_tanh", "relu", "silu", "swiglu", "geglu"]
Position = Literal["learned", "sinusoidal", "rope", "none"]
Head = Literal["lm", "classify", "tag", "span", "relations"]
Pooling = Literal["cls", "mean", "last"]


@dataclass
class ModelConfig:
    """Shape and options of a Transformer. Sizes are per layer unless noted."""

    arch: Arch = "decoder"
    vocab_size: int = 8000
    context_length: int = 256  # maximum positions (source and target for encoder-decoder)
    d_model: int = 256
    n_layer: int = 4  # encoder layers for encoder_decoder, all layers otherwise
    n_decoder_layer: int | None = None  # encoder_decoder only; None = n_layer
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention; None -> n_head (multi-head), 1 = multi-query
    head_dim: int | None = None  # None -> d_model // n_head
    d_ff: int | None = None  # None -> 4 * d_model (gelu/relu), or the Llama rule for gated MLPs
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    norm_position: NormPosition = "pre"
    activation: Activation = "gelu"
    pos: Position = "learned"
    pos_offset: int = 0  # learned positions start at this index (RoBERTa uses 2)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # as transformers' rope_scaling: {"rope_type": "linear" | "llama3" | ...}
    rotary_dim: int | None = None  # rope only; None -> head_dim (partial rotary when smaller)
    bias: bool = True  # biases of linear layers and layer norms
    qkv_bias: bool | None = None  # None = bias (Qwen2 has q/k/v biases and no others)
    attn_out_bias: bool | None = None  # None = bias
    mlp_bias: bool | None = None  # None = bias
    tie_embeddings: bool = True
    lm_head_bias: bool | None = None  # None = True for encoders (BERT's MLM decoder bias), False otherwise
    dropout: float = 0.0  # embeddings and residual branches
    attn_dropout: float | None = None  # None = dropout
    unique_layers: int | None = None  # ALBERT-style sharing: this many distinct blocks, reused in turn
    sliding_window: int | None = None  # local attention: each query sees this many most recent keys
    embed_scale: bool = False  # multiply token embeddings by sqrt(d_model) (Vaswani et al., Marian, BART)
    embed_norm: bool = False  # a norm right after the embeddings (BERT)
    final_norm: bool | None = None  # a norm on the last hidden states; None = True for pre-norm
    type_vocab_size: int = 0  # segment (token type) embeddings, BERT uses 2
    mlm_transform: bool = False  # BERT's dense + activation + norm before the MLM decoder
    nsp_head: bool = False  # BERT's pooler and next-sentence-prediction classifier
    pooler: bool = False  # BERT's dense+tanh pooler on the first token without NSP (BertModel); nsp_head has one
    init_std: float = 0.02
    # task heads (fine-tuning); "lm" is the language-model head of the architecture
    head: Head = "lm"
    num_labels: int = 0
    labels: list[str] | None = None
    pooling: Pooling = "cls"
    relation_labels: list[str] | None = None  # head=relations: the relation types scored over entity pairs
    # LoRA adapters on named linear layers: {"rank", "alpha", "dropout", "targets"} (see lmforge.adapters.lora)
    lora: dict | None = None
    # quantized linear layers: {"method", "group_size", "symmetric", "algo", "layers": {name: kind}} (model/quant.py)
    quant: dict | None = None
    # factorised linear layers: {"method", "rank_ratio", "layers": {name: rank}} (model/lowrank.py)
    lowrank: dict | None = None
    # what pruning did (informational; a pruned model is an ordinary shape): {"method", "sparsity" | "amount", ...}
    pruning: dict | None = None
    # token ids the model itself needs (from the tokenizer)
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    name: str | None = None  # preset the config came from, informational

    def __post_init__(self) -> None:
        check_field_types(self)
        self._check_choice("arch", Arch)
        self._check_choice("norm", Norm)
        self._check_choice("norm_position", NormPosition)
        self._check_choice("activation", Activation)
        self._check_choice("pos", Position)
        self._check_choice("head", Head)
        self._check_choice("pooling", Pooling)
        for name in ("vocab_size", "context_length", "d_model", "n_layer", "n_head"):
            self._check_positive(name)
        for name in ("n_decoder_layer", "n_kv_head", "head_dim", "d_ff", "unique_layers", "sliding_window",
                     "rotary_dim"):
            if getattr(self, name) is not None:
                self._check_positive(name)
        if self.head_dim is None and self.d_model % self.n_head:
            raise ConfigError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                f"choose n_head among {[h for h in range(1, 65) if self.d_model % h == 0]} or set head_dim")
        for name, value in derived_sizes(self.__dict__).items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}; "
                              "n_kv_head must divide n_head (1 = multi-query, n_head = multi-head)")
        if self.pos == "rope":
            if self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
                raise ConfigError(f"rotary_dim={self.rotary_dim} must be even and <= head_dim={self.head_dim}")
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value} is out of range; use 0 <= {name} < 1")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise ConfigError("norm_eps and init_std must be > 0")
        if self.unique_layers is not None and self.n_layer % self.unique_layers:
            raise ConfigError(f"unique_layers={self.unique_layers} must divide n_layer={self.n_layer}")
        if self.n_decoder_layer is not None and self.arch != "encoder_decoder":
            raise ConfigError("n_decoder_layer is only for arch=encoder_decoder; use n_layer")
        if self.head != "lm" and self.num_labels < (2 if self.head == "classify" else 1):
            raise ConfigError(f"head={self.head} needs num_labels >= {2 if self.head == 'classify' else 1} "
                              f"(got {self.num_labels})")
        if self.head == "span" and self.num_labels != 2:
            raise ConfigError(f"head=span predicts a start and an end logit per token: num_labels must be 2 (got "
                              f"{self.num_labels})")
        if (self.head == "relations") != bool(self.relation_labels):
            raise ConfigError("relation_labels (the relation types) go with head=relations, and head=relations "
                              "needs them")
        if self.labels is not None and len(self.labels) != self.num_labels:
            raise ConfigError(f"labels has {len(self.labels)} names but num_labels={self.num_labels}")
        if self.lora is not None and not (isinstance(self.lora, dict) and isinstance(self.lora.get("rank"), int)
                                          and self.lora["rank"] >= 1 and self.lora.get("targets")):
            raise ConfigError(f"lora={self.lora!r} needs a whole rank >= 1 and a non-empty list of targets")
        if self.nsp_head and self.arch != "encoder":
            raise ConfigError("nsp_head (next-sentence prediction) is only for arch=encoder")
        if self.pooler and self.arch != "encoder":
            raise ConfigError("pooler (BERT's first-token pooler) is only for arch=encoder")
        if self.type_vocab_size < 0 or self.pos_offset < 0:
            raise ConfigError("type_vocab_size and pos_offset must be >= 0")

    # ---- derived values -------------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        """The id that fills padded positions: pad_token_id, else 0 (padding is masked out either way)."""
        return self.pad_token_id if self.pad_token_id is not None else 0

    @property
    def label_names(self) -> list[str]:
        """The task head's label names (their indices as text when the config has none)."""
        return self.labels or [str(i) for i in range(self.num_labels)]

    @property
    def gated(self) -> bool:
        return self.activation in ("swiglu", "geglu")

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layer or self.n_layer

    @property
    def use_final_norm(self) -> bool:
        return self.norm_position == "pre" if self.final_norm is None else self.final_norm

    def resolved(self, name: str) -> Any:
        """A bias or dropout option with its None default resolved."""
        value = getattr(self, name)
        if value is not None:
            return value
        return {"qkv_bias": self.bias, "attn_out_bias": self.bias, "mlp_bias": self.bias,
                "attn_dropout": self.dropout, "lm_head_bias": self.arch == "encoder"}[name]

    # ---- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ModelConfig":
        """A named preset with optional overrides; exact names only (see `PRESETS`)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r}; choose one of: {choices(sorted(PRESETS))}")
        values = dict(PRESETS[name], name=name)
        values.update(overrides)
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ModelConfig":
        """A copy with `changes`; sizes that were derived (equal to what the other fields give) are derived again
        from the changed fields, so `replace(d_model=512)` also resizes head_dim and d_ff."""
        values = self.to_dict()
        for name, value in derived_sizes(values).items():
            if name not in changes and values[name] == value:
                values[name] = None
        return self.from_dict({**values, **changes})

    def to_json(self) -> str:
        return json.dumps({"lmforge_config": self.to_dict()}, indent=2)

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return cls.from_dict(data["lmforge_config"] if "lmforge_config" in data else data)

    def _check_choice(self, name: str, kind: Any) -> None:
        allowed = get_args(kind)
        if getattr(self, name) not in allowed:
            raise ConfigError(f"{name}={getattr(self, name)!r} is not supported; allowed: {choices(allowed)}")

    def _check_positive(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r} is out of range; it must be a whole number >= 1")


def _type_name(tp: Any) -> str:
    names = {int: "a whole number", float: "a finite number", bool: "true or false", str: "text", dict: "an object {...}",
             list: "a list [...]"}
    return names.get(get_origin(tp) or tp, str(tp))


def _fits(value: Any, tp: Any) -> tuple[bool, Any]:
    """Whether `value` is of type `tp` (ints pass as floats; bools are not numbers), and the value to keep."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):
            return True, None
        for option in get_args(tp):
            if option is not type(None):
                ok, kept = _fits(value, option)
                if ok:
                    return True, kept
        return False, value
    if origin is Literal:
        return True, value  # the field's own check names the allowed values
    if tp is Any:
        return True, value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return ok, value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if origin is list or tp is list:
        item = (get_args(tp) or (Any,))[0]
        return isinstance(value, list) and all(_fits(v, item)[0] for v in value), value
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    return isinstance(value, tp), value


def check_field_types(obj: Any, prefix: str = "") -> None:
    """Every field of a dataclass holds a value of its annotated type (config.json, run.json and --set give JSON
    values of any type); a wrong one is a one-line error naming the field and what it must be."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        tp = hints[f.name]
        ok, kept = _fits(getattr(obj, f.name), tp)
        if not ok:
            wanted = " or ".join(_type_name(t) for t in get_args(tp) if t is not type(None)) \
                if get_origin(tp) in (Union, types.UnionType) else _type_name(tp)
            if get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp):
                wanted += " (or null)"
            name = f.name.rstrip("_").replace("_", "-") if prefix == "--" else f.name
            raise ConfigError(f"{prefix}{name}={getattr(obj, f.name)!r} is not valid: it must be {wanted}")
        object.__setattr__(obj, f.name, kept)


def check_minimum(low: float, **values: Any) -> None:
    """Options (given by name) that must be at least `low` when given: a one-line error naming the first that is not."""
    for name, value in values.items():
        if value is not None and value < low:
            raise ConfigError(f"--{name.rstrip('_').replace('_', '-')}={value} is out of range; it must be >= {low}")


def check_options(obj: Any, minimum: dict[str, int] | None = None) -> None:
    """Command options held in a dataclass: every field of its type, and each field of `minimum` (when not None) at
    least that value; errors name the option as the command line does (--batch-size)."""
    check_field_types(obj, prefix="--")
    for name, low in (minimum or {}).items():
        check_minimum(low, **{name: getattr(obj, name)})


def derived_sizes(values: dict[str, Any]) -> dict[str, int | None]:
    """What n_kv_head, head_dim, rotary_dim and d_ff are when not given, from the other fields of `values`."""
    d, heads = values["d_model"], values["n_head"]
    head_dim = values["head_dim"] or d // heads
    if values["activation"] in ("swiglu", "geglu"):  # Llama's rule: 2/3 of 4d, rounded up to 256 (16 when small)
        multiple = 256 if d >= 1024 else 16
        d_ff = multiple * math.ceil(int(2 * 4 * d / 3) / multiple)
    else:
        d_ff = 4 * d
    return {"n_kv_head": heads, "head_dim": d // heads, "d_ff": d_ff,
            "rotary_dim": head_dim if values["pos"] == "rope" else None}


def parse_overrides(pairs: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    """Parse `--set key=value` pairs; values are read as JSON where they parse (4, 0.1, true, null)."""
    known = {f.name: f for f in fields(ModelConfig)}
    out: dict[str, Any] = {}
    for pair in pairs or ():
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r} is not key=value; for example --set n_layer=4")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key not in known:
            raise ConfigError(f"--set {key}: unknown config field; known fields: {', '.join(sorted(known))}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key] = value
    return out


_GPT2 = dict(arch="decoder", vocab_size=50257, context_length=1024, d_model=768, n_layer=12, n_head=12,
             norm="layernorm", activation="gelu_tanh", pos="learned", bias=True, tie_embeddings=True,
             bos_token_id=50256, eos_token_id=50256)
_LLAMA = dict(arch="decoder", norm="rmsnorm", norm_eps=1e-5, activation="swiglu", pos="rope", bias=False,
              tie_embeddings=False)
_BERT = dict(arch="encoder", vocab_size=30522, context_length=512, norm="layernorm", norm_eps=1e-12,
             norm_position="post", activation="gelu", pos="learned", type_vocab_size=2, embed_norm=True,
             mlm_transform=True, tie_embeddings=True, dropout=0.1, pad_token_id=0)

PRESETS: dict[str, dict[str, Any]] = {
    # GPT-2 family (Radford et al. 2019)
    "gpt2-124m": _GPT2,
    "gpt2-medium": {**_GPT2, "d_model": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {**_GPT2, "d_model": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {**_GPT2, "d_model": 1600, "n_layer": 48, "n_head": 25},
    # about 10M parameters with an 8k vocabulary: the default small causal model
    "gpt-mini": dict(arch="decoder", vocab_size=8000, context_length=256, d_model=320, n_layer=6, n_head=5,
                     norm="layernorm", activation="gelu", pos="learned", bias=False, tie_embeddings=True),
    # nanoGPT's CPU recipe shape (Tiny Shakespeare, character level)
    "gpt-nano": dict(arch="decoder", vocab_size=65, context_length=64, d_model=128, n_layer=4, n_head=4,
                     norm="layernorm", activation="gelu", pos="learned", bias=False, tie_embeddings=True),
    # the same shape with a Llama block (RoPE, RMSNorm, SwiGLU sized to the same parameter count)
    "llama-nano": dict(arch="decoder", vocab_size=65, context_length=64, d_model=128, n_layer=4, n_head=4, d_ff=352,
                       norm="rmsnorm", activation="swiglu", pos="rope", bias=False, tie_embeddings=True),
    # Llama family shapes
    "llama-tiny": {**_LLAMA, "vocab_size": 8000, "context_length": 512, "d_model": 256, "n_layer": 6,
                   "n_head": 8, "n_kv_head": 4},
    "llama2-7b": {**_LLAMA, "vocab_size": 32000, "context_length": 4096, "d_model": 4096, "n_layer": 32,
                  "n_head": 32, "d_ff": 11008},
    "llama3-8b": {**_LLAMA, "vocab_size": 128256, "context_length": 8192, "d_model": 4096, "n_layer": 32,
                  "n_head": 32, "n_kv_head": 8, "d_ff": 14336, "rope_theta": 500000.0},
    "mistral-7b": {**_LLAMA, "vocab_size": 32000, "context_length": 32768, "d_model": 4096, "n_layer": 32,
                   "n_head": 32, "n_kv_head": 8, "d_ff": 14336, "rope_theta": 1000000.0},
    # BERT family (Devlin et al. 2019); bert-mini is Google's 4-layer, 256-wide BERT shape
    "bert-base": {**_BERT, "d_model": 768, "n_layer": 12, "n_head": 12, "nsp_head": True},
    "bert-mini": {**_BERT, "vocab_size": 8000, "d_model": 256, "n_layer": 4, "n_head": 4, "context_length": 256},
    # the original Transformer (Vaswani et al. 2017), base size: post-norm, ReLU, sinusoidal, shared embeddings
    "transformer-base": dict(arch="encoder_decoder", vocab_size=37000, context_length=512, d_model=512,
                             n_layer=6, n_decoder_layer=6, n_head=8, d_ff=2048, norm="layernorm",
                             norm_position="post", activation="relu", pos="sinusoidal", dropout=0.1,
                             embed_scale=True, tie_embeddings=True, bias=True),
    # a small encoder-decoder for CPU experiments (Multi30k-sized data)
    "transformer-small": dict(arch="encoder_decoder", vocab_size=8000, context_length=128, d_model=256,
                              n_layer=3, n_decoder_layer=3, n_head=4, d_ff=1024, norm="layernorm",
                              norm_position="pre", activation="relu", pos="sinusoidal", dropout=0.1,
                              embed_scale=True, tie_embeddings=True, bias=True),
}


__all__ = ["ModelConfig", "PRESETS", "parse_overrides", "derived_sizes", "check_field_types", "check_options", "check_minimum"]
