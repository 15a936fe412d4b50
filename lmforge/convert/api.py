"""`from_hf` (Hugging Face folder or hub id -> lmforge `Transformer`) and `to_hf` (lmforge -> Hugging Face folder),
(`lmforge convert from-hf | to-hf` are in `lmforge.commands.convert`).

Loading builds the model on the meta device and assigns each parameter straight from the memory-mapped weight
files: a tensor stored in the layout and dtype lmforge uses is the parameter itself (no copy); one that must be
sliced, transposed or cast is copied once and its file pages are released at once. Exporting streams one
tensor at a time into the output files, inside a temporary folder that replaces the destination only when
everything is written, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import collections
import os
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import io as lio
from .._version import __version__
from ..checkpoint import CONFIG, GENERATION_CONFIG, is_lmforge_checkpoint, load_native, resolve_checkpoint, save
from ..config import ModelConfig
from ..device import parse_dtype, resolve_device
from ..errors import CheckpointError, ConfigError, LmforgeError
from ..model import Transformer
from ..model.meta import build_empty, load_weights
from ..tensor_io import PlannedTensor, parse_size, write_safetensors_shards
from ..tokenizer import Tokenizer
from .base import ExportError, Family, HFConfig, Rule
from .hub import download, hub_repo
from .registry import REGISTRY, family_for
from .weights import WeightFiles

TOKENIZER_FILES = ("vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _is_qwen2_pipeline(tok: Tokenizer) -> bool:
    import json

    data = json.loads(tok.backend.to_str())
    pre = data.get("pre_tokenizer") or {}
    kinds = [p.get("type") for p in pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" else [pre.get("type")]
    return (data.get("normalizer") or {}).get("type") == "NFC" and kinds == ["Split", "ByteLevel"]


# model types whose tokenizer class transformers 5 forces, ignoring tokenizer.json's pipeline
FORCED_TOKENIZER = {"qwen2": _is_qwen2_pipeline}
FORCED_TOKENIZER_DOC = {"qwen2": "Qwen2Tokenizer: NFC, Qwen's split regex, byte-level BPE"}


# ---- reading ---------------------------------------------------------------------------------------------

def hf_folder(path: str | os.PathLike, revision: str | None = None) -> Path:
    """The local folder behind a path or a hub id (hf:org/name)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise CheckpointError(f"no model at {path!r}: give the path of a Hugging Face model folder or hf:org/name")
    repo = hub_repo(path)
    if repo is not None:
        return download(repo, revision)
    if revision is not None:
        raise ConfigError(f"--revision {revision!r} is for a hub id (hf:org/name); {path} is a local folder")
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise CheckpointError(f"{folder} is a file; point at the Hugging Face model folder that holds config.json")
    raise CheckpointError(f"no model at {path}: the folder does not exist{lio.not_found_hint(path)}")


def is_hf_folder(folder: Path) -> bool:
    try:
        data = lio.read_json(folder / CONFIG)
    except (FileNotFoundError, NotADirectoryError, ValueError):  # (an unreadable file is said as such, not guessed)
        return False
    return isinstance(data, dict) and "model_type" in data and "lmforge_config" not in data


def read_hf_config(folder: Path) -> HFConfig:
    file = folder / CONFIG
    if not file.exists():
        if (folder / "run.json").exists() or is_lmforge_checkpoint(folder / "best") or is_lmforge_checkpoint(folder / "last"):
            raise CheckpointError(f"{folder} is an lmforge run, not a Hugging Face folder: load it as it is "
                                  "(lmforge.load), or export it with `lmforge convert to-hf`")
        raise CheckpointError(f"{folder} has no config.json; a Hugging Face model folder needs one")
    data = lio.read_json(file)
    if isinstance(data, dict) and "lmforge_config" in data:
        raise CheckpointError(f"{folder} is an lmforge checkpoint, not a Hugging Face folder: load it as it is "
                              "(lmforge.load), or export it with `lmforge convert to-hf`")
    if not isinstance(data, dict) or "model_type" not in data:
        raise CheckpointError(f"{file} has no 'model_type'; lmforge converts Hugging Face configs with model_type "
                              f"in ({' | '.join(sorted(REGISTRY))})")
    return HFConfig(data, str(file))


class _Converted(Mapping):
    """lmforge name -> tensor, made on demand from the weight files (see the module docstring)."""

    def __init__(self, files: WeightFiles, rules: dict[str, Rule], shapes: dict[str, tuple[int, ...]],
                 zeros: set[str], device: torch.device, dtype: torch.dtype | None) -> None:
        self.files, self.rules, self.shapes, self.zeros = files, rules, shapes, zeros
        self.device, self.dtype = device, dtype
        self.uses = collections.Counter(rules[name].hf for name in shapes if name not in zeros)
        self.kept: set[str] = set()

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.shapes[name]
        if name in self.zeros:
            return torch.zeros(shape, dtype=self.dtype or torch.float32, device=self.device)
        rule = self.rules[name]
        t = rule.to_lmforge(self.files.get(rule.hf), shape)
        want = self.dtype if (self.dtype is not None and t.is_floating_point()) else t.dtype
        if rule.is_view and t.dtype == want and self.device.type == "cpu":
            self.kept.add(rule.hf)  # the parameter is the mapped file itself
            return t
        out = torch.empty(shape, dtype=want, device=self.device)
        out.copy_(t)
        self.uses[rule.hf] -= 1
        if self.uses[rule.hf] == 0 and rule.hf not in self.kept:
            self.files.release(rule.hf)
        return out


def _plan_load(model: Transformer, family: Family, config: ModelConfig, rules: dict[str, Rule], files: WeightFiles,
               hf: HFConfig, folder: Path) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Check every tensor against config.json before touching data; errors name the Hugging Face key."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in model.tied_keys()}
    keys = set(files.keys())
    missing, zeros = [], set()
    summary = (f"vocab_size={config.vocab_size}, d_model={config.d_model}, n_layer={config.n_layer}, "
               f"n_head={config.n_head}, n_kv_head={config.n_kv_head}, head_dim={config.head_dim}, "
               f"d_ff={config.d_ff}, context_length={config.context_length}")
    for name, shape in shapes.items():
        rule = rules.get(name)
        if rule is None:
            raise LmforgeError(f"internal: no Hugging Face name for lmforge tensor {name} ({hf.model_type})")
        if rule.hf not in keys:
            (zeros.add(name) if rule.zeros_if_missing else missing.append(rule.hf))
            continue
        info = files.info(rule.hf)
        want = rule.expected_hf_shape(shape)
        if tuple(info.shape) != tuple(want):
            raise CheckpointError(f"{info.file}: tensor {rule.hf} has shape {list(info.shape)}, but {hf.source} "
                                  f"({summary}) implies {list(want)}; config.json and the weights disagree")
        if not info.dtype.is_floating_point:
            raise CheckpointError(f"{info.file}: tensor {rule.hf} is {info.dtype}, a weight must be floating point")
    if missing:
        raise CheckpointError(f"{folder} ({files.source}) is missing {len(missing)} tensor(s) that model_type="
                              f"{hf.model_type} with this config.json needs: {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''}; the download is incomplete or config.json "
                              "does not describe these weights")
    used = {r.hf for r in rules.values()}
    unexpected = sorted(k for k in keys if k not in used and not family.ignorable(k, config))
    if unexpected:
        raise CheckpointError(f"{folder} ({files.source}) has {len(unexpected)} tensor(s) lmforge does not convert "
                              f"for model_type={hf.model_type}: {', '.join(unexpected[:5])}"
                              f"{' ...' if len(unexpected) > 5 else ''}; lmforge reads {family.architectures_read} "
                              "(task heads such as sequence classification are not converted)")
    return shapes, zeros


def from_hf(
    path: str | os.PathLike,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    tokenizer: bool = True,
    revision: str | None = None,
) -> Transformer:
    """Load a Hugging Face model folder or hub id ("org/name") as an lmforge `Transformer` (eval mode).

    `dtype` is the compute dtype (fp32 | bf16 | fp16); None keeps the stored one. The model has `.tokenizer`
    (from tokenizer.json, unless tokenizer=False) and `.hf_source` (model_type, architectures, generation config).
    """
    folder = hf_folder(path, revision)
    hf, family, files, keys, prefix, config = _describe(folder)
    rules = family.rules(config, prefix, hf.model_type, keys)
    model = build_empty(config)
    shapes, zeros = _plan_load(model, family, config, rules, files, hf, folder)
    tok = _load_tokenizer(folder, config) if tokenizer else None  # before the weights: fail fast
    target = resolve_device(device)
    want = parse_dtype(dtype) or files.stored_dtype or torch.float32
    load_weights(model, _Converted(files, rules, shapes, zeros, target, want), device=target, dtype=want,
                 source=str(folder))
    model.tokenizer = tok
    generation = folder / GENERATION_CONFIG
    model.hf_source = {
        "model_type": hf.model_type, "architectures": hf.data.get("architectures"), "folder": str(folder),
        "generation_config": lio.read_json(generation) if generation.exists() else None,
    }
    return model.eval()


def _describe(folder: Path) -> tuple[HFConfig, Family, WeightFiles, set[str], str, ModelConfig]:
    """A Hugging Face folder's config, family, weight files (headers only), tensor names, prefix and the
    lmforge config it maps to."""
    if is_lmforge_checkpoint(folder):
        raise CheckpointError(f"{folder} is an lmforge checkpoint, not a Hugging Face folder; use lmforge.load")
    hf = read_hf_config(folder)
    family = family_for(hf.model_type, hf.source)
    files = WeightFiles(folder)
    keys = set(files.keys())
    prefix = family.prefix(hf, keys)
    try:
        config = family.to_lmforge(hf, keys, prefix)
    except ConfigError as e:
        raise (e if hf.source in str(e) else ConfigError(f"{hf.source}: {e}")) from None
    config = config.replace(name=str(hf.data.get("_name_or_path") or folder.name))
    return hf, family, files, keys, prefix, config


def hf_model_config(path: str | os.PathLike, revision: str | None = None) -> ModelConfig:
    """The lmforge `ModelConfig` of a Hugging Face folder or hub id, without reading any weights."""
    return _describe(hf_folder(path, revision))[-1]


def _load_tokenizer(folder: Path, config: ModelConfig) -> Tokenizer | None:
    """The folder's tokenizer: tokenizer.json, or WordPiece rebuilt from vocab.txt; with neither, the weights load
    alone (tokenizer None, and a one-line note), as transformers loads a model without its tokenizer."""
    if not (folder / "tokenizer.json").exists() and not (folder / "vocab.txt").exists():
        found = [name for name in TOKENIZER_FILES if (folder / name).exists()]
        has = f" (it has {', '.join(found)}, which lmforge cannot read)" if found else ""
        print(f"note: {folder} has no tokenizer.json{has}: loading the weights without a tokenizer; the commands that "
              "read text need one (create it once with transformers: AutoTokenizer.from_pretrained(FOLDER)"
              ".save_pretrained(FOLDER))", file=sys.stderr)
        return None
    tok = Tokenizer.load(folder)
    if tok.vocab_size > config.vocab_size:
        source = folder / ("tokenizer.json" if (folder / "tokenizer.json").exists() else "vocab.txt")
        raise CheckpointError(f"{source} has {tok.vocab_size} tokens but the model's vocab_size is {config.vocab_size}: "
                              "ids past the embedding table would crash; tokenizer and weights do not belong together")
    return tok


# ---- writing ---------------------------------------------------------------------------------------------

def _export_family(config: ModelConfig, model_type: str | None) -> Family:
    families = REGISTRY
    if model_type is not None:
        if model_type not in families:
            raise ConfigError(f"model_type={model_type!r} cannot be exported; choose one of "
                              f"{' | '.join(sorted(families))}")
        return families[model_type]
    if config.arch == "encoder":
        return families["bert"]
    if config.arch == "encoder_decoder":
        return families["bart"]
    return families["llama"] if config.pos == "rope" else families["gpt2"]


def export_plan(model: Transformer, family: Family, model_type: str, dtype: torch.dtype
                ) -> list[PlannedTensor]:
    """The Hugging Face tensors of `model`, each produced from lmforge's tensors only when written.

    A bias the Hugging Face format always has and the lmforge model does not (bias=false, no LM-head bias) is
    written as zeros, which computes exactly the same thing."""
    config = model.config
    full = family.export_config(config)
    shapes = {k: tuple(v.shape) for k, v in build_empty(full).state_dict().items()}
    rules = family.rules(full, family.export_prefix(config, model_type), model_type)
    state = model.state_dict()
    saved = {k for k in state if k not in model.tied_keys()}
    uncovered = sorted(saved - set(rules))
    if uncovered:
        raise ExportError(f"cannot export to Hugging Face model_type={model_type}: lmforge tensor(s) "
                          f"{', '.join(uncovered[:5])} have no place there (this configuration has parts "
                          f"{model_type} does not)")
    for name in rules:
        if name not in state and not name.endswith("bias"):
            raise ExportError(f"internal: model_type={model_type} needs {name}, which the lmforge model lacks")
    groups: dict[str, list[tuple[str, Rule]]] = {}
    for name, rule in rules.items():
        groups.setdefault(rule.hf, []).append((name, rule))
    plan = []
    for hf_name, members in groups.items():
        members.sort(key=lambda m: m[1].part[0] if m[1].part else 0)

        def produce(members=members) -> torch.Tensor:
            pieces = []
            for name, rule in members:
                t = state[name].detach() if name in state else torch.zeros(shapes[name], dtype=dtype)
                if rule.hf_shape is not None and rule.part is None:
                    t = t.reshape(rule.hf_shape)
                if rule.transpose:
                    t = t.t()
                pieces.append(t)
            out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)
            return out.to(dtype=dtype if out.is_floating_point() else out.dtype)

        first_name, first_rule = members[0]
        shape = list(first_rule.expected_hf_shape(shapes[first_name]))
        if first_rule.part is not None:
            shape[-1] = sum(shapes[n][0 if r.transpose else -1] for n, r in members)
        first = state.get(first_name)
        kind = first.dtype if first is not None and not first.is_floating_point() else dtype
        plan.append(PlannedTensor(hf_name, kind, tuple(shape), produce))
    for name, tensor in family.extra_export_tensors(config, model_type, model).items():
        plan.append(PlannedTensor(name, dtype, tuple(tensor.shape), lambda t=tensor: t.to(dtype)))
    return plan


def _source_info(src: str | os.PathLike | Transformer) -> tuple[Transformer, dict[str, Any]]:
    if isinstance(src, Transformer):
        return src, dict(getattr(src, "hf_source", None) or {})
    folder = resolve_checkpoint(src)
    if is_hf_folder(folder):
        raise CheckpointError(f"{folder} is already a Hugging Face folder (config.json has model_type); "
                              "to-hf reads an lmforge checkpoint")
    model = load_native(folder, device="cpu")
    info = dict(lio.read_json(folder / CONFIG).get("hf_source") or {})
    if (folder / GENERATION_CONFIG).exists():
        info["generation_config"] = lio.read_json(folder / GENERATION_CONFIG)
    return model, info


def _generation_config(config: ModelConfig, info: dict[str, Any]) -> dict[str, Any]:
    generation = dict(info.get("generation_config") or {})
    for key, value in (("bos_token_id", config.bos_token_id), ("eos_token_id", config.eos_token_id),
                       ("pad_token_id", config.pad_token_id)):
        if value is not None:
            generation.setdefault(key, value)
    if config.arch == "encoder_decoder":
        start = config.decoder_start_token_id
        generation.setdefault("decoder_start_token_id", start if start is not None else config.eos_token_id)
        if config.eos_token_id is not None:
            generation.setdefault("forced_eos_token_id", config.eos_token_id)
    generation.pop("transformers_version", None)
    generation["_from_model_config"] = False
    return generation


def to_hf(
    src: str | os.PathLike | Transformer,
    dst: str | os.PathLike,
    *,
    model_type: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    tokenizer: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write an lmforge checkpoint (folder or `Transformer`) as a Hugging Face folder: config.json,
    model.safetensors (sharded past max_shard_size), tokenizer files and generation_config.json.

    `model_type` picks the target when several fit (llama | mistral | qwen2, bert | roberta); by default the one
    the model came from, else the one its options imply. An option the target cannot express raises an error
    naming it, before anything is written.
    """
    dst = lio.check_output(dst, what="a Hugging Face model folder", overwrite=overwrite, ours=is_hf_folder,
                           inputs=[] if isinstance(src, Transformer) else [src], option="destination")
    shard_bytes = parse_size(max_shard_size)
    model, info = _source_info(src)
    config = model.config
    wanted = model_type or info.get("model_type")
    if model_type is not None and model_type not in REGISTRY:
        raise ConfigError(f"--model-type {model_type!r} cannot be exported; choose one of {' | '.join(sorted(REGISTRY))}")
    family = _export_family(config, wanted if wanted in REGISTRY else None)
    chosen = family.export_model_type(config, model_type or (info.get("model_type")
                                                             if info.get("model_type") in family.model_types else None))
    hf_config = family.to_hf_config(config, chosen)
    out_dtype = parse_dtype(dtype) or model.dtype
    if out_dtype not in DTYPE_NAMES:
        raise ConfigError(f"dtype {out_dtype} cannot be exported; use fp32 | bf16 | fp16")
    plan = export_plan(model, family, chosen, out_dtype)
    tok = model.tokenizer if tokenizer else None
    if tokenizer and tok is None:
        raise CheckpointError("the model has no tokenizer to export (its checkpoint has no tokenizer.json); "
                              "pass tokenizer=False (--no-tokenizer) to export the weights alone")
    if tok is not None and tok.vocab_size > config.vocab_size:
        raise CheckpointError(f"the tokenizer has {tok.vocab_size} tokens but vocab_size={config.vocab_size}")
    if tok is not None and chosen in FORCED_TOKENIZER and not FORCED_TOKENIZER[chosen](tok):
        warnings.warn(f"transformers tokenizes model_type={chosen} with its own pipeline whatever tokenizer.json says "
                      f"({FORCED_TOKENIZER_DOC[chosen]}); this tokenizer differs, so AutoTokenizer will give other ids "
                      "than lmforge. Export as another model_type or use a tokenizer of that kind", stacklevel=2)
    hf_config.update(dtype=DTYPE_NAMES[out_dtype], torch_dtype=DTYPE_NAMES[out_dtype], lmforge_version=__version__)
    with lio.atomic_dir(dst) as tmp:
        lio.write_json(tmp / CONFIG, dict(sorted(hf_config.items())))
        write_safetensors_shards(tmp, plan, shard_bytes)
        if tok is not None:
            tok.save(tmp)
            tok_config = lio.read_json(tmp / "tokenizer_config.json")
            for key in [k for k in tok_config if k.startswith("lmforge_")]:
                tok_config.pop(key)
            if tok_config.get("tokenizer_class") == "TokenizersBackend":  # transformers 5's name; 4.x knows this one
                tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
            if not isinstance(tok_config.get("model_max_length"), int) or \
                    tok_config["model_max_length"] > config.context_length:
                tok_config["model_max_length"] = config.context_length
            lio.write_json(tmp / "tokenizer_config.json", tok_config)
        lio.write_json(tmp / GENERATION_CONFIG, _generation_config(config, info))
    return dst


# ---- lmforge checkpoint from a Hugging Face model ---------------------------------------------------------

def write_lmforge(model: Transformer, dst: Path) -> None:
    """Write `model` as an lmforge checkpoint, keeping where it came from (model_type, generation config) for a
    later export; `dst` has been checked (`io.check_output`) by the caller."""
    info = dict(getattr(model, "hf_source", None) or {})
    generation = info.pop("generation_config", None)
    save(model, dst, extra={"hf_source": info} if info else None, generation=generation, overwrite=True)


__all__ = ["from_hf", "to_hf", "hf_folder", "is_hf_folder", "read_hf_config", "export_plan", "write_lmforge",
           "hf_model_config", "DTYPE_NAMES"]
