"""The `lmforge` command: a table from subcommand to a typed entry function.

Options are generated from each entry function's signature (types, defaults, `Literal` choices) and its
docstring's `Args:` section, so `lmforge <verb> --help` always matches the Python API. A parameter typed with a
dataclass (the training options) is expanded into one option per field. Modules are imported only for the
command that runs, so `lmforge --help` is instant.

Errors a user can fix are `LmforgeError`s: printed as one line, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import inspect
import math
import os
import re
import sys
import types
import typing
from typing import Any, Callable, Literal, get_args, get_origin

# subcommand -> (module:function, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("lmforge.commands.demo:demo", "train a tokenizer and a tiny GPT on a built-in corpus, end to end (~3 min)"),
    "tokenizer train": ("lmforge.commands.tokenizer:train", "train a BPE, WordPiece, Unigram or character tokenizer"),
    "tokenizer encode": ("lmforge.commands.tokenizer:encode", "show the tokens of a text"),
    "prepare": ("lmforge.data.prepare:prepare", "tokenize a corpus into memory-mapped token files + manifest"),
    "pretrain": ("lmforge.train.pretrain:pretrain", "pretrain a model: causal LM, masked LM or seq2seq"),
    "sample": ("lmforge.commands.generate:sample_cli", "sample a continuation from a checkpoint"),
    "generate": ("lmforge.commands.generate:generate_cli", "generate: greedy, sampling or beam search; one prompt or a file"),
    "chat": ("lmforge.commands.generate:chat_cli", "chat with a checkpoint in the terminal (streamed, /reset, /exit)"),
    "eval perplexity": ("lmforge.commands.evaluate:perplexity_cli", "perplexity of a checkpoint on prepared data"),
    "finetune classify": ("lmforge.finetune.args:finetune_classify", "fine-tune a text (or text-pair) classifier "
                          "on a TSV/CSV/JSONL file: full, frozen or LoRA"),
    "finetune ner": ("lmforge.finetune.args:finetune_ner", "fine-tune a token classifier (NER, BIO tags) on CoNLL files"),
    "finetune seq2seq": ("lmforge.finetune.args:finetune_seq2seq", "train or fine-tune a seq2seq model on aligned "
                         "source/target files (BLEU on dev)"),
    "finetune sft": ("lmforge.finetune.args:finetune_sft", "supervised chat fine-tuning of a decoder (loss on "
                     "assistant turns)"),
    "finetune qa": ("lmforge.finetune.args:finetune_qa", "fine-tune an extractive QA reader (answer spans; SQuAD "
                    "format)"),
    "finetune relations": ("lmforge.finetune.args:finetune_relations", "fine-tune joint entity + relation extraction "
                           "(SpERT JSON, e.g. CoNLL04)"),
    "predict": ("lmforge.finetune.predict:predict", "apply a fine-tuned model to a file (labels, tags, outputs, replies)"),
    "eval classify": ("lmforge.finetune.evaluate:eval_classify", "accuracy, P/R/F1 and confusion matrix of a classifier"),
    "eval ner": ("lmforge.finetune.evaluate:eval_ner", "entity-level P/R/F1 (CoNLL semantics) of a tagger"),
    "eval bleu": ("lmforge.finetune.evaluate:eval_bleu", "sacreBLEU of a seq2seq model (or of an output file)"),
    "eval rouge": ("lmforge.finetune.evaluate:eval_rouge", "ROUGE-1/2/L of a seq2seq model (or of an output file)"),
    "eval zero-shot": ("lmforge.finetune.evaluate:eval_zero_shot", "zero-/few-shot classification by each label's "
                       "log-likelihood"),
    "attention": ("lmforge.commands.apps:attention", "attention maps of every layer and head: PNG grid + offline "
                  "HTML view"),
    "embed": ("lmforge.commands.apps:embed", "sentence embeddings of a file of texts (.npy or .jsonl)"),
    "index build": ("lmforge.commands.apps:index_build", "chunk, embed and index documents for semantic search"),
    "search": ("lmforge.commands.apps:search", "semantic search in an index"),
    "ask": ("lmforge.commands.apps:ask", "answer a question from an index: retrieve passages, then read the answer"),
    "extract": ("lmforge.commands.apps:extract", "entities and relations of texts: JSONL triples + graph (GraphML/DOT, "
                "PNG)"),
    "ngram train": ("lmforge.commands.apps:ngram_train", "train a modified Kneser-Ney n-gram model (ARPA file)"),
    "attack": ("lmforge.commands.apps:attack", "adversarial robustness of a classifier: word- and character-level "
               "attacks"),
    "lora merge": ("lmforge.commands.lora:merge_cli", "merge a LoRA adapter into plain weights (export, serving)"),
    "info": ("lmforge.commands.info:info", "parameters, FLOPs per token and memory of a preset or checkpoint"),
    "convert from-hf": ("lmforge.commands.convert:from_hf_cli", "convert a Hugging Face model (folder or hub id) to an "
                        "lmforge checkpoint"),
    "convert to-hf": ("lmforge.commands.convert:to_hf_cli", "export an lmforge checkpoint as a Hugging Face folder"),
    "convert from-gguf": ("lmforge.commands.convert:from_gguf_cli", "convert a GGUF file (llama.cpp) to an lmforge "
                          "checkpoint"),
    "prune": ("lmforge.commands.prune:prune_cli", "prune a model: zero weights (magnitude, Wanda, 2:4) or remove heads "
              "and MLP neurons (physically smaller)"),
    "lowrank": ("lmforge.commands.prune:lowrank_cli", "factorise linear layers into two low-rank ones (SVD, ASVD, "
                "whitened SVD)"),
    "finetune distill": ("lmforge.finetune.distill:distill", "task distillation (the same as `lmforge distill`)"),
    "distill": ("lmforge.finetune.distill:distill", "knowledge distillation: a smaller student trained on a teacher's "
                "soft targets (classifiers, or decoders on a corpus)"),
    "export gguf": ("lmforge.commands.export:gguf_cli", "export a model as a GGUF file for llama.cpp (f32 ... q4_0)"),
    "export onnx": ("lmforge.commands.export:onnx_cli", "export a model to ONNX (decoder with KV cache, encoder-decoder, "
                    "task heads) for ONNX Runtime; int8 quantization"),
    "export check": ("lmforge.commands.check:check_cli", "parity report of a model across formats and runtimes "
                     "(transformers, ONNX Runtime, GGUF, llama.cpp): logits, KL, greedy, tokens/s; table + PNG"),
    "serve": ("lmforge.commands.serve:serve_cli", "serve a model: OpenAI-compatible API with continuous batching, "
              "embeddings, a chat page"),
    "bench serve": ("lmforge.commands.serve:bench_serve_cli", "load-test a server: req/s, tokens/s, TTFT and latency "
                    "per concurrency"),
    "quantize": ("lmforge.compress.commands:quantize_cli", "quantize a checkpoint: weight-only int8/int4 (RTN or GPTQ), "
                 "dynamic int8"),
    "compress report": ("lmforge.compress.commands:report_cli", "compressed models vs their original: size, speed, "
                        "perplexity, KL, top-1 agreement (table + PNG)"),
}


# ---- docstrings ----------------------------------------------------------------------------------------

def _doc_parts(func: Callable) -> tuple[str, dict[str, str]]:
    """The description and the per-argument help of a Google-style docstring."""
    doc = inspect.getdoc(func) or ""
    description, _, args_block = doc.partition("\nArgs:\n")
    helps: dict[str, str] = {}
    current = None
    for line in args_block.splitlines():
        m = re.match(r"\s{0,4}(\w+):\s*(.*)", line)
        if m and not line.startswith(" " * 5):
            current = m.group(1)
            helps[current] = m.group(2)
        elif current and line.strip():
            if re.match(r"^[A-Z][a-z]+:$", line.strip()):  # the next section (Returns:)
                break
            helps[current] += " " + line.strip()
    return description.strip(), helps


# ---- types -> argparse ---------------------------------------------------------------------------------

def _unwrap_optional(tp: Any) -> Any:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _option_name(name: str) -> str:
    return "--" + name.rstrip("_").replace("_", "-")


def _add_argument(parser: argparse.ArgumentParser, name: str, tp: Any, default: Any, help_text: str,
                  positional: bool, option: str | None = None) -> None:
    tp = _unwrap_optional(tp)
    kwargs: dict[str, Any] = {"help": help_text or None}
    origin = get_origin(tp)
    if origin is Literal:
        kwargs["choices"] = list(get_args(tp))
        kwargs["type"] = type(get_args(tp)[0])
    elif origin in (list, tuple) or tp in (list, tuple):
        item = (get_args(tp) or (str,))[0]
        kwargs["type"] = item if item in (int, float, str) else str
        if positional:
            kwargs["nargs"] = "+" if default is inspect.Parameter.empty else "*"
        else:
            kwargs["action"] = "append"
    elif tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif tp in (int, float, str):
        kwargs["type"] = tp
    else:
        kwargs["type"] = str
    if positional:
        kwargs["metavar"] = name.upper().rstrip("_")
        if default is not inspect.Parameter.empty:
            kwargs["default"] = default
            kwargs.setdefault("nargs", "?")
        parser.add_argument(name, **kwargs)
        return
    if default is not inspect.Parameter.empty:
        kwargs["default"] = None if isinstance(default, (list, tuple)) and not default else default
        if kwargs.get("help") and default not in (None, False, (), []) and tp is not bool:
            kwargs["help"] += f" (default: {default})"
    else:
        kwargs["required"] = True
    if kwargs.get("action") not in (argparse.BooleanOptionalAction,) and "choices" not in kwargs:
        kwargs["metavar"] = name.split("__")[-1].rstrip("_").upper()
    flags = [option or _option_name(name)] + ([f"-{name}"] if len(name) == 1 else [])  # -k as well as --k
    parser.add_argument(*flags, dest=name, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse, whose mistakes (an unknown option, a missing value) are one line like every other error."""

    def error(self, message: str):
        from .errors import LmforgeError

        raise LmforgeError(f"{self.prog}: {message}; see `{self.prog} --help`")


def _field_help(field: dataclasses.Field) -> str:
    return field.metadata.get("help", "")


def build_parser(command: str, func: Callable) -> tuple[argparse.ArgumentParser, dict[str, type]]:
    description, helps = _doc_parts(func)
    parser = _Parser(prog=f"lmforge {command}", description=description,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(func)
    dataclass_params: dict[str, type] = {}
    for name, param in inspect.signature(func).parameters.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        tp = _unwrap_optional(hints.get(name, str))
        if dataclasses.is_dataclass(tp):
            dataclass_params[name] = tp
            group = parser.add_argument_group(f"{name} options")
            field_hints = typing.get_type_hints(tp)
            for field in dataclasses.fields(tp):
                default = field.default if field.default is not dataclasses.MISSING else (
                    field.default_factory() if field.default_factory is not dataclasses.MISSING else None)
                _add_argument(group, f"{name}__{field.name}", field_hints[field.name], default,
                              _field_help(field), positional=False, option=_option_name(field.name))
            continue
        positional = param.kind != param.KEYWORD_ONLY
        _add_argument(parser, name, hints.get(name, str), param.default, helps.get(name, ""), positional)
    return parser, dataclass_params


def _resolve(command: str) -> Callable:
    target, _ = COMMANDS[command]
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _split_command(argv: list[str]) -> tuple[str | None, list[str]]:
    for n in (2, 1):
        key = " ".join(argv[:n])
        if key in COMMANDS:
            return key, argv[n:]
    return None, argv


def _top_help() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: lmforge <command> [options]   (lmforge <command> --help for its options)", "", "commands:"]
    lines += [f"  {c.ljust(width)}  {d}" for c, (_, d) in COMMANDS.items()]
    return "\n".join(lines)


def run(argv: list[str]) -> Any:
    command, rest = _split_command(argv)
    if command is None:
        if not argv or argv[0] in ("-h", "--help", "help"):
            print(_top_help())
            return None
        if argv[0] in ("--version", "-V"):
            from ._version import __version__

            print(f"lmforge {__version__}")
            return None
        groups = sorted({c.split()[0] for c in COMMANDS if c.split()[0] == argv[0]})
        hint = ("; its subcommands: " + ", ".join(c for c in COMMANDS if c.startswith(argv[0] + " "))) if groups else ""
        from .errors import LmforgeError

        raise LmforgeError(f"unknown command {' '.join(argv[:2])!r}{hint}; run `lmforge --help` for the list")
    func = _resolve(command)
    parser, dataclass_params = build_parser(command, func)
    namespace = vars(parser.parse_args(rest))
    kwargs: dict[str, Any] = {}
    grouped: dict[str, dict[str, Any]] = {name: {} for name in dataclass_params}
    for key, value in namespace.items():
        if "__" in key and key.split("__")[0] in dataclass_params:
            group, field = key.split("__", 1)
            grouped[group][field] = value
        else:
            kwargs[key] = value
    for name, value in [*kwargs.items(), *((k, v) for g in grouped.values() for k, v in g.items())]:
        if isinstance(value, float) and not math.isfinite(value):
            from .errors import ConfigError

            raise ConfigError(f"{_option_name(name.split('__')[-1])}={value} is not a number lmforge can use; give a "
                              "finite value")
    for name, cls in dataclass_params.items():
        kwargs[name] = cls(**grouped[name])
    return func(**kwargs)


OS_HINTS = {errno.ENOSPC: "free some space or write elsewhere", errno.EDQUOT: "free some space or write elsewhere",
            errno.EROFS: "write elsewhere",
            errno.EACCES: "check its permissions, or write elsewhere", errno.EPERM: "check its permissions, or write elsewhere",
            errno.EISDIR: "it is a folder: give a file path", errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.ENOENT: "check the path", errno.ENAMETOOLONG: "use a shorter path"}


def os_error(e: OSError) -> str:
    """One line for an error of the operating system: the path, the cause, what to do."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f) or "a file"
    cause = (e.strerror or str(e) or type(e).__name__).rstrip(".").lower()
    hint = OS_HINTS.get(e.errno or 0)
    return f"{where}: {cause}" + (f"; {hint}" if hint else "")


def main(argv: list[str] | None = None) -> int:
    from .errors import LmforgeError

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    try:
        run(sys.argv[1:] if argv is None else argv)
    except LmforgeError as e:
        print(f"lmforge: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the operating system said no: a full disk, a read-only folder, a missing permission
        print(f"lmforge: error: {os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
