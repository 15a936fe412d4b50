"""`lmforge pretrain`: causal LM (decoders), masked LM (encoders) or seq2seq (encoder-decoders) from scratch,
from a checkpoint on new data (`--init`), or resumed exactly (`--resume`).

A run folder holds `run.json` (everything needed to resume), `last/` and `best/` checkpoints, `metrics.jsonl`,
`metrics.csv`, `tensorboard/`, `loss.png` and `summary.json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from ..config import ModelConfig, parse_overrides
from ..errors import ConfigError, FileError, LmforgeError
from .options import TrainConfig

if TYPE_CHECKING:  # the library is imported inside the functions, so `lmforge pretrain --help` stays cheap
    from ..data.batches import PreparedData
    from ..model import Transformer
    from ..tokenizer import Tokenizer
    from .objectives import Objective

ObjectiveName = Literal["auto", "clm", "mlm", "seq2seq"]


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
    tokenizer: str | None = None,
    val_data: str | None = None,
    text_field: str = "text",
    train: TrainConfig | None = None,
) -> dict[str, Any]:
    """Pretrain a model on prepared data, or on JSONL streamed as it is read: causal LM, masked LM (+ NSP) or seq2seq.

    Args:
        data: prepared data folder (from `lmforge prepare`), or JSONL files (a file or a folder) to stream with
            --tokenizer
        out: run folder for checkpoints, logs and plots
        model: preset to build (gpt-mini, gpt2-124m, llama-tiny, bert-mini, bert-base, transformer-base, ...)
        resume: a run folder to continue exactly where it stopped (other options come from its run.json)
        init: start from this checkpoint's weights (continual training on new data)
        objective: clm, mlm or seq2seq; auto picks the one of the model's architecture
        set_: override a model config field of the preset, e.g. --set n_layer=4 --set d_model=128
        overwrite: replace a run that already exists in --out
        tokenizer: streaming: the tokenizer (a folder with tokenizer.json, or a checkpoint; default: --init's)
        val_data: streaming: a JSONL file to evaluate on
        text_field: streaming: the JSONL field that holds the text
    """
    import torch

    from ..data.batches import PreparedData
    from ..data.prepare import check_tokenizer
    from ..data.stream import StreamData
    from ..loading import load
    from ..model import Transformer
    from ..model.meta import check_fits_in_memory
    from .objectives import EXAMPLES, check_objective, default_objective
    from .runs import build_config, check_out_folder, clear_run, new_run, write_run
    from .distributed import setup_distributed

    train = train or TrainConfig()
    if not isinstance(train, TrainConfig):
        raise ConfigError(f"train= takes a TrainConfig (lmforge.train.options.TrainConfig(max_steps=...)); got "
                          f"{type(train).__name__}")
    if resume:
        given = {"--data": data, "--out": out, "--init": init, "--set": set_, "--overwrite": overwrite,
                 "--objective": objective != "auto", "--model": model != "gpt-mini", "--tokenizer": tokenizer,
                 "--val-data": val_data, "--text-field": text_field != "text"}
        if any(given.values()):
            raise ConfigError(f"{', '.join(k for k, v in given.items() if v)} cannot be given with --resume: the run "
                              "continues with its own model and data (start a new run to change them)")
        return _resume(Path(resume), train)
    if not data or not out:
        raise LmforgeError("pretrain needs --data and --out (or --resume RUN); e.g. lmforge pretrain --model gpt-mini "
                           "--data data/ --out runs/gpt-mini")
    out_path = Path(out)
    dist = setup_distributed()
    if dist.main:
        check_out_folder(out_path, overwrite)
    dist.barrier()
    folder = Path(data)
    streamed = not (folder / "manifest.json").exists() and (tokenizer is not None or folder.is_file() or (
        folder.is_dir() and any(folder.rglob("*.jsonl"))))
    if not streamed and (tokenizer or val_data or text_field != "text"):
        raise ConfigError(f"--tokenizer, --val-data and --text-field are for streamed JSONL; {data} is prepared data, "
                          "which has its own tokenizer and val split")
    torch.manual_seed(train.seed)
    net = load(init) if init else None
    if streamed:
        tokenizer_source = tokenizer or init
        if tokenizer_source is None:
            raise ConfigError(f"streaming {data} needs --tokenizer (a folder with tokenizer.json, e.g. from `lmforge "
                              "tokenizer train`), or prepare it first with `lmforge prepare`")
        tok = net.tokenizer if tokenizer is None else _load_tokenizer(tokenizer)
        if tok is None:
            raise ConfigError(f"{init} has no tokenizer to stream {data} with; give --tokenizer")
        if net is not None and net.tokenizer is not None and net.tokenizer.sha256 != tok.sha256:
            raise ConfigError(f"--tokenizer {tokenizer} is not the tokenizer of {init}; leave --tokenizer out to use "
                              "the checkpoint's own")
        prepared: Any = StreamData(data, tok, train.batch_size * train.grad_accum * dist.world, text_field, val_data)
    else:
        prepared = PreparedData(data)
        tok = prepared.tokenizer()
    tokenizer = tok
    if init:
        if net.tokenizer is not None and not streamed:
            check_tokenizer(prepared.manifest, net.tokenizer, data, init)
        config = net.config
        overrides = parse_overrides(set_)
        kept = set(overrides) - {"dropout", "attn_dropout"}
        if kept:
            raise ConfigError(f"--set {', '.join(sorted(kept))}: with --init the model keeps the shape of {init}; only "
                              "dropout and attn_dropout can change")
        if overrides:
            config = config.replace(**overrides)
        source = f"--init {init}"
    else:
        config = build_config(model, parse_overrides(set_), tokenizer, train.context,
                              objective if objective != "auto" else default_objective(ModelConfig.from_name(model).arch))
        check_fits_in_memory(config)
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
    obj = _objective(name, prepared, tokenizer, context, train)
    if dist.main:
        clear_run(out_path)  # everything above is checked: only now does an earlier run (--overwrite) go
    with new_run(out_path):
        if dist.main:
            stream = {"tokenizer": str(Path(tokenizer_source).resolve()), "val_data": str(Path(val_data).resolve())
                      if val_data else None, "text_field": text_field, "shards": prepared.shards} if streamed else None
            write_run(out_path, "pretrain", name, str(Path(data).resolve()), config, train,
                      model=model if not init else None, init=str(Path(init).resolve()) if init else None,
                      tokenizer_sha256=tokenizer.sha256, data_sha256=_data_digest(prepared), stream=stream)
        dist.barrier()
        return _run(net, obj, train, out_path, tokenizer, resume=False)


def _resume(run: Path, overrides: TrainConfig) -> dict[str, Any]:
    import torch

    from ..data.batches import PreparedData
    from ..data.stream import StreamData
    from ..model import Transformer
    from .runs import read_run, record_run

    info, train = read_run(run, overrides)
    if info["objective"] not in ("clm", "mlm", "seq2seq"):
        raise LmforgeError(f"{run / 'run.json'} is damaged: objective {info['objective']!r} is none of clm | mlm | "
                           "seq2seq")
    if not Path(info["data"]).exists():
        raise LmforgeError(f"the run's data {info['data']} is gone; restore it to resume")
    stream = info.get("stream")
    if stream is not None and not (isinstance(stream, dict) and isinstance(stream.get("tokenizer"), str) and
                                   isinstance(stream.get("shards"), int) and isinstance(stream.get("text_field"), str)):
        raise FileError(f"{run / 'run.json'} is damaged (its 'stream' entry lacks tokenizer, shards or text_field); the "
                        "run cannot be resumed from it")
    if stream:
        tokenizer = _load_tokenizer(stream["tokenizer"])
        prepared: Any = StreamData(info["data"], tokenizer, stream["shards"], stream["text_field"], stream["val_data"])
    else:
        prepared = PreparedData(info["data"])
        tokenizer = prepared.tokenizer()
    if tokenizer.sha256 != info.get("tokenizer_sha256"):
        raise LmforgeError(f"{stream['tokenizer'] if stream else info['data']} now holds another tokenizer than the run "
                           "used; restore it")
    if info.get("data_sha256") not in (None, _data_digest(prepared)):
        raise LmforgeError(f"{info['data']} changed since the run started ({'its files differ' if stream else 'its manifest or token files differ'}); "
                           "restore the data to resume exactly, or start a new run")
    config = ModelConfig.from_dict(info["model_config"])
    torch.manual_seed(train.seed)
    net = Transformer(config)
    obj = _objective(info["objective"], prepared, tokenizer, train.context or config.context_length, train)
    return _run(net, obj, train, run, tokenizer, resume=True, ready=lambda: record_run(run, info))


def _load_tokenizer(path: str) -> Tokenizer:
    """A tokenizer folder (tokenizer.json), or a checkpoint / run folder's tokenizer."""
    from ..checkpoint import resolve_checkpoint
    from ..tokenizer import Tokenizer

    folder = Path(path)
    if folder.is_dir() and not (folder / "tokenizer.json").exists():
        folder = resolve_checkpoint(folder)
    return Tokenizer.load(folder)


def _data_digest(data: Any) -> str:
    """A fingerprint of the data: of prepared data, its manifest and the sizes of its files (hashing the tokens would
    cost a full read of a large corpus; a changed corpus changes its manifest's counts or the files' sizes); of a
    streamed corpus, its files' names, sizes and times."""
    import hashlib

    from .. import io as lio

    if hasattr(data, "digest"):
        return data.digest()
    root = Path(data.folder)
    digest = hashlib.sha256(lio.sha256_file(root / "manifest.json").encode())
    for file in sorted(root.glob("*.bin")):
        digest.update(f"{file.name}:{file.stat().st_size}".encode())
    return digest.hexdigest()


def _objective(name: str, data: PreparedData, tokenizer: Tokenizer, context: int, train: TrainConfig) -> Objective:
    from .objectives import make_objective

    return make_objective(name, data, tokenizer, context, train.seed, mlm_probability=train.mlm_probability,
                          nsp=train.nsp, label_smoothing=train.label_smoothing)


def _run(net: Transformer, objective: Objective, train: TrainConfig, out: Path, tokenizer: Tokenizer,
         resume: bool, ready: Callable[[], None] | None = None) -> dict[str, Any]:
    from .trainer import Trainer

    trainer = Trainer(net, objective, train, out, tokenizer, resume=resume)
    if ready is not None:  # everything is checked: a resume records its changed options now
        ready()
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

