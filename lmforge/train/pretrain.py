"""`lmforge pretrain`: causal LM (decoders), masked LM (encoders) or seq2seq (encoder-decoders) from scratch,
from a checkpoint on new data (`--init`), or resumed exactly (`--resume`).

A run folder holds `run.json` (everything needed to resume), `last/` and `best/` checkpoints, `metrics.jsonl`,
`metrics.csv`, `tensorboard/`, `loss.png` and `summary.json`.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any, Literal

import torch

from .. import __version__
from .. import io as lio
from ..config import ModelConfig, parse_overrides
from ..data.batches import PreparedData
from ..data.prepare import check_tokenizer
from ..errors import ConfigError, LmforgeError
from ..model import Transformer
from ..tokenizer import Tokenizer
from .objectives import CausalLM, MaskedLM, Objective, Seq2Seq
from .options import TrainConfig
from .trainer import Trainer, setup_distributed

ObjectiveName = Literal["auto", "clm", "mlm", "seq2seq"]
ARCH_OF = {"clm": "decoder", "mlm": "encoder", "seq2seq": "encoder_decoder"}
EXAMPLES = {"decoder": "gpt-mini, llama-tiny, gpt2-124m", "encoder": "bert-mini, bert-base",
            "encoder_decoder": "transformer-small, transformer-base"}
RUN_FILES = ("run.json", "last", "best", "metrics.jsonl", "metrics.csv", "tensorboard", "loss.png", "summary.json")


def default_objective(arch: str) -> str:
    return {v: k for k, v in ARCH_OF.items()}[arch]


def check_objective(objective: str, config: ModelConfig, source: str) -> None:
    want = ARCH_OF[objective]
    if config.arch != want:
        def a(word: str) -> str:
            return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"

        raise ConfigError(f"objective {objective} needs {a(want)} model ({EXAMPLES[want]}); {source} is "
                          f"{a(config.arch)}")


def make_objective(name: str, data: PreparedData, tokenizer: Tokenizer, context: int, train: TrainConfig) -> Objective:
    if name == "seq2seq":
        val = data.pairs("val")
        return Seq2Seq(data.pairs("train"), val if len(val) else None, context, train.seed, tokenizer,
                       train.label_smoothing)
    val = data.tokens("val")
    if name == "mlm":
        return MaskedLM(data.tokens("train"), val, context, train.seed, tokenizer, train.mlm_probability, train.nsp)
    return CausalLM(data.tokens("train"), val, context, train.seed)


def check_out_folder(out: Path, overwrite: bool, extra: tuple[str, ...] = ()) -> None:
    """Refuse a non-empty --out unless overwrite is set; then remove the files of a run there (and `extra` ones)."""
    if not out.exists() or not any(out.iterdir()):
        return
    if overwrite:
        for name in RUN_FILES + tuple(extra):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        return
    run_file = out / "run.json"
    if run_file.exists():
        run = lio.read_json(run_file)
        raise LmforgeError(f"{out} already holds a run ({run.get('objective')} on {run.get('data')}); continue it with "
                           f"`lmforge {run.get('command', 'pretrain')} --resume {out}`, choose another --out, or pass --overwrite to replace it")
    raise LmforgeError(f"{out} is not empty and is not an lmforge run; choose another --out or pass --overwrite")


def build_config(preset: str, overrides: dict[str, Any], tokenizer: Tokenizer, context: int | None,
                 objective: str) -> ModelConfig:
    values: dict[str, Any] = {"vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_id,
                              "bos_token_id": tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.cls_id,
                              "eos_token_id": tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id}
    if context:
        values["context_length"] = context
    if objective == "seq2seq":
        values["decoder_start_token_id"] = tokenizer.bos_id
    values.update(overrides)
    return ModelConfig.from_name(preset, **values)


def pretrain(
    *,
    data: str | None = None,
    out: str | None = None,
    model: str = "gpt-mini",
    resume: str | None = None,
    init: str | None = None,
    objective: ObjectiveName = "auto",
    set_: list[str] | None = None,
    overwrite: bool = False,
    train: TrainConfig | None = None,
) -> dict[str, Any]:
    """Pretrain a model on prepared data: causal LM, masked LM (+ NSP) or seq2seq.

    Args:
        data: prepared data folder (from `lmforge prepare`)
        out: run folder for checkpoints, logs and plots
        model: preset to build (gpt-mini, gpt2-124m, llama-tiny, bert-mini, bert-base, transformer-base, ...)
        resume: a run folder to continue exactly where it stopped (other options come from its run.json)
        init: start from this checkpoint's weights (continual training on new data)
        objective: clm, mlm or seq2seq; auto picks the one of the model's architecture
        set_: override a model config field of the preset, e.g. --set n_layer=4 --set d_model=128
        overwrite: replace a run that already exists in --out
    """
    train = train or TrainConfig()
    if resume:
        return _resume(Path(resume), train)
    if not data or not out:
        raise LmforgeError("pretrain needs --data and --out (or --resume RUN); e.g. lmforge pretrain --model gpt-mini "
                           "--data data/ --out runs/gpt-mini")
    out_path = Path(out)
    dist = setup_distributed()
    if dist.main:
        check_out_folder(out_path, overwrite)
    dist.barrier()
    prepared = PreparedData(data)
    tokenizer = prepared.tokenizer()
    torch.manual_seed(train.seed)
    if init:
        import lmforge

        net = lmforge.load(init)
        if net.tokenizer is not None:
            check_tokenizer(prepared.manifest, net.tokenizer, data, init)
        config = net.config
        if parse_overrides(set_):
            config = config.replace(**{k: v for k, v in parse_overrides(set_).items() if k in ("dropout", "attn_dropout")})
        source = f"--init {init}"
    else:
        config = build_config(model, parse_overrides(set_), tokenizer, train.context,
                              objective if objective != "auto" else default_objective(ModelConfig.from_name(model).arch))
        net = Transformer(config)
        source = f"--model {model}"
    name = default_objective(config.arch) if objective == "auto" else objective
    check_objective(name, config, source)
    if name == "mlm" and train.nsp and not config.nsp_head:
        if init:
            raise ConfigError(f"--nsp needs a model with a next-sentence head; {init} has none")
        config = config.replace(nsp_head=True)
        torch.manual_seed(train.seed)
        net = Transformer(config)
    context = train.context or config.context_length
    if context > config.context_length:
        raise ConfigError(f"--context={context} is longer than the model's context_length={config.context_length}")
    if prepared.kind == "pairs" and name != "seq2seq":
        raise ConfigError(f"{data} holds source/target pairs; pair data trains seq2seq models ({EXAMPLES['encoder_decoder']})")
    obj = make_objective(name, prepared, tokenizer, context, train)
    out_path.mkdir(parents=True, exist_ok=True)
    if dist.main:
        lio.write_json(out_path / "run.json", {
            "lmforge_version": __version__, "command": "pretrain", "objective": name,
            "model": model if not init else None, "init": str(Path(init).resolve()) if init else None,
            "data": str(Path(data).resolve()), "tokenizer_sha256": tokenizer.sha256,
            "model_config": config.to_dict(), "train": train.to_dict(),
            "created": datetime.datetime.now().isoformat(timespec="seconds"),
        })
    dist.barrier()
    return _run(net, obj, train, out_path, tokenizer, resume=False)


def read_run(run: Path, overrides: TrainConfig, config_cls: type[TrainConfig] = TrainConfig
             ) -> tuple[dict[str, Any], TrainConfig]:
    """A run folder's run.json and training options, with the resuming command's --max-steps, --max-time and
    --progress applied (and recorded in run.json)."""
    run_file = run / "run.json"
    if not run_file.exists():
        raise LmforgeError(f"{run} is not a run folder (no run.json); give the --out folder of an earlier run")
    info = lio.read_json(run_file)
    train = config_cls.from_dict(info["train"])
    changes = {k: getattr(overrides, k) for k in ("max_steps", "max_time") if getattr(overrides, k) is not None}
    changes["progress"] = overrides.progress
    if changes:
        train = config_cls.from_dict({**train.to_dict(), **changes})
        info["train"] = train.to_dict()
        if setup_distributed().main:
            lio.write_json(run_file, info)
    return info, train


def _resume(run: Path, overrides: TrainConfig) -> dict[str, Any]:
    info, train = read_run(run, overrides)
    if not Path(info["data"]).exists():
        raise LmforgeError(f"the run's data folder {info['data']} is gone; restore it to resume")
    prepared = PreparedData(info["data"])
    tokenizer = prepared.tokenizer()
    if tokenizer.sha256 != info["tokenizer_sha256"]:
        raise LmforgeError(f"{info['data']} now holds data of another tokenizer than the run used; restore the data")
    config = ModelConfig.from_dict(info["model_config"])
    torch.manual_seed(train.seed)
    net = Transformer(config)
    obj = make_objective(info["objective"], prepared, tokenizer, train.context or config.context_length, train)
    return _run(net, obj, train, run, tokenizer, resume=True)


def _run(net: Transformer, objective: Objective, train: TrainConfig, out: Path, tokenizer: Tokenizer,
         resume: bool) -> dict[str, Any]:
    trainer = Trainer(net, objective, train, out, tokenizer, resume=resume)
    if trainer.dist.main:
        params = net.num_parameters()
        what = "resuming" if resume else "training"
        print(f"{what} {net.config.name or net.config.arch} ({params / 1e6:.2f}M parameters, {objective.name}) on "
              f"{trainer.device} for {trainer.max_steps} steps of {trainer.samples_per_step} sequences -> {out}",
              flush=True)
    summary = trainer.fit()
    if trainer.dist.main:
        val = f"val loss {summary['val_loss']:.4f} (ppl {summary['val_ppl']:.2f})" if summary["val_loss"] else "no val split"
        print(f"done: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['seconds']:.0f}s "
              f"({summary['tok_per_s']:,.0f} tok/s); {val}; checkpoints in {out}/last and {out}/best; "
              f"plot {out}/loss.png", flush=True)
    return summary

