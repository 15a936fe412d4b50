"""`lmforge finetune seq2seq`: sequence-to-sequence on aligned source/target files (translation, summarisation).

- Encoder-decoder models (transformer-small / transformer-base presets, BART): teacher forcing on
  source + EOS -> start + target, predicting target + EOS (the pretraining `Seq2Seq` objective, bucketed by length).
- Decoder-only models: the source is written into a prompt (--prompt-template, default "{source}\\n"), the target
  follows it and ends with EOS; the loss covers the target only.

A preset is trained from scratch with a BPE tokenizer shared by both sides, trained on the training files inside
the run. The dev metric is BLEU (sacrebleu) of greedy decoding on --eval-samples dev pairs through
`lmforge.generate`; at the end the best checkpoint decodes the whole dev set (with --num-beams) and writes
samples.jsonl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .. import io as lio
from .. import metrics
from ..errors import ConfigError, LmforgeError
from ..model import Transformer
from ..tokenizer import Tokenizer
from .data import read_aligned, split_dev
from .objectives import CausalObjective, ListPairs, PairObjective, Rows
from .args import DEFAULT_TEMPLATE, Seq2SeqArgs, finetune_seq2seq
from .runs import eval_mode, is_model_path
from .task import TaskContext, TaskData, TaskParts, TaskSpec, data_files



def _eos(tokenizer: Tokenizer, model: Transformer) -> int:
    for i in (tokenizer.eos_id, model.config.eos_token_id, tokenizer.sep_id):
        if i is not None:
            return i
    raise LmforgeError("seq2seq needs an end-of-sequence token; the tokenizer has none")


def source_ids(tokenizer: Tokenizer, text: str, eos: int, limit: int) -> list[int]:
    """Source tokens as the encoder sees them: the tokenizer's own framing (BART's <s>) without its final EOS,
    cut to limit - 1, then EOS."""
    ids = tokenizer.encode(text, add_special_tokens=True)
    if ids and ids[-1] == eos:
        ids = ids[:-1]
    return ids[:limit - 1] + [eos]


def prompt_ids(tokenizer: Tokenizer, template: str, source: str) -> list[int]:
    return tokenizer.encode(template.format(source=source), add_special_tokens=True)


def causal_rows(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]], template: str, eos: int, max_length: int
                ) -> tuple[Rows, int]:
    """Prompt + target + EOS rows with the loss mask on target + EOS; the prompt is cut from the left (keeping
    BOS) when the pair does not fit in max_length."""
    rows = Rows()
    cut = 0
    for i, (src, tgt) in enumerate(pairs):
        p = prompt_ids(tokenizer, template, src)
        t = tokenizer.encode(tgt, add_special_tokens=False)[:max_length // 2] + [eos]
        room = max_length - len(t)
        if len(p) > room:
            cut += 1
            keep_bos = tokenizer.bos_id is not None and p and p[0] == tokenizer.bos_id
            p = ([p[0]] + p[len(p) - room + 1:]) if keep_bos else p[len(p) - room:]
        rows.ids.append(np.asarray(p + t, dtype=np.int64))
        rows.labels.append(np.asarray([0] * len(p) + [1] * len(t), dtype=np.int64))
        rows.owner.append(i)
    return rows, cut


def translate(model: Transformer, sources: Sequence[str], *, template: str = DEFAULT_TEMPLATE, max_length: int = 128,
              max_new_tokens: int | None = None, num_beams: int = 1, batch_size: int = 64, **options: Any) -> list[str]:
    """Outputs of a seq2seq model (encoder-decoder, or decoder-only with the prompt template) for source texts."""
    from ..generate import generate

    tok = model.tokenizer
    eos = _eos(tok, model)
    context = model.config.context_length
    if model.config.arch == "encoder_decoder":
        prompts = [source_ids(tok, s, eos, min(max_length, context)) for s in sources]
        new = max_new_tokens or min(max_length, context - 1)
    else:
        new = max_new_tokens or min(max_length // 2, context // 2)
        prompts = [prompt_ids(tok, template, s)[-(context - new):] for s in sources]
    with eval_mode(model):
        outs = generate(model, prompts, max_new_tokens=new, num_beams=num_beams, batch_size=batch_size,
                        return_dict=True, eos_token_id=eos, **options)
    return [o.text.strip() for o in outs]


def score(model: Transformer, pairs: Sequence[tuple[str, str]], **options: Any) -> tuple[dict[str, Any], list[str]]:
    hyps = translate(model, [s for s, _ in pairs], **options)
    return metrics.bleu(hyps, [t for _, t in pairs]), hyps


class Seq2SeqTask(TaskSpec):
    name, command, title = "seq2seq", "finetune seq2seq", "seq2seq"
    archs = ("encoder_decoder", "decoder")
    required = ("model", "train_src", "train_tgt", "out")
    example = "--model transformer-small --train-src train.en --train-tgt train.de --out runs/mt --lr 1e-3"
    lm_head_hint = "seq2seq needs a language-model head (a pretrained or preset encoder-decoder or decoder)"
    preset_objective = "seq2seq"
    args = Seq2SeqArgs

    def read(self, args: Seq2SeqArgs, seed: int) -> TaskData:
        pairs = read_aligned(args.train_src, args.train_tgt)
        files = data_files(args, "train_src", "train_tgt", "dev_src", "dev_tgt")
        if args.dev_src or args.dev_tgt:
            if not (args.dev_src and args.dev_tgt):
                raise ConfigError("--dev-src and --dev-tgt go together; give both aligned dev files")
            return TaskData(pairs, read_aligned(args.dev_src, args.dev_tgt), args.dev_src, files)
        pairs, dev = split_dev(pairs, args.dev_fraction, seed)
        return TaskData(pairs, dev, f"{args.train_src} (held-out {args.dev_fraction:.0%})", files)

    def texts(self, data: TaskData) -> Iterable[str]:
        return (x for p in data.train for x in p)

    def setup(self, ctx: TaskContext) -> TaskParts:
        args, train, tokenizer, model = ctx.args, ctx.train, ctx.tokenizer, ctx.model
        pairs, dev = ctx.data.train, ctx.data.dev
        if not ctx.resumed and not is_model_path(args.model) and train.lr < 1e-4:
            ctx.notes.append(f"note: --lr {train.lr:g} is a fine-tuning rate; a model trained from a preset usually "
                             "wants about 1e-3 (with --warmup-steps of a few hundred)")
        max_length = ctx.max_length
        eos = _eos(tokenizer, model)
        template = args.prompt_template
        if "{source}" not in template:
            raise ConfigError(f"--prompt-template {template!r} must contain {{source}}")
        if model.config.arch == "encoder_decoder":
            def encode(ps):
                return ListPairs([(np.asarray(source_ids(tokenizer, s, eos, max_length)[:-1], dtype=np.int64),
                                   np.asarray(tokenizer.encode(t, add_special_tokens=False), dtype=np.int64))
                                  for s, t in ps])

            objective = PairObjective(encode(pairs), encode(dev), max_length, train.seed, tokenizer, train.batch_size,
                                      train.label_smoothing, model.config.decoder_start_token_id)
        else:
            train_rows, cut = causal_rows(tokenizer, pairs, template, eos, max_length)
            dev_rows, _ = causal_rows(tokenizer, dev, template, eos, max_length)
            if cut:
                ctx.notes.append(f"{cut:,} training prompt(s) were cut from the left to fit --max-length={max_length}")
            objective = CausalObjective("seq2seq", train_rows, dev_rows, model.config.pad_id, train.seed,
                                        train.batch_size, train.label_smoothing)
        ctx.notes.append(f"seq2seq ({model.config.arch}): {len(pairs):,} training and {len(dev):,} dev pairs "
                         f"({ctx.data.dev_source})")
        longest = max(len(tokenizer.encode(t, add_special_tokens=False)) for _, t in dev)
        new_tokens = min(max(8, math.ceil(1.5 * longest) + 4), max_length - 1)
        decode = dict(template=template, max_length=max_length, max_new_tokens=new_tokens,
                      batch_size=max(train.batch_size, 32))
        eval_pairs = dev[:args.eval_samples] if args.eval_samples else dev

        def evaluate(net: Transformer) -> dict[str, Any]:
            net.tokenizer = tokenizer
            result, _ = score(net, eval_pairs, **decode)
            return {"metric": "bleu", "value": result["bleu"], "bleu_samples": len(eval_pairs)}

        def finish(best: Transformer, out: Path) -> dict[str, Any]:
            result, hyps = score(best, dev, num_beams=args.num_beams, **decode)
            lines = [json.dumps({"source": s, "reference": t, "output": h}, ensure_ascii=False)
                     for (s, t), h in zip(dev, hyps)]
            lio.write_text(out / "samples.jsonl", "\n".join(lines) + "\n")
            beams = "greedy" if args.num_beams == 1 else f"{args.num_beams} beams"
            head = f"dev BLEU {result['bleu']:.2f} ({len(dev)} pairs, {beams})"
            print(f"{head}; {result['signature']}", flush=True)
            for (s, t), h in list(zip(dev, hyps))[:3]:
                print(f"  {s}\n    -> {h}\n    reference: {t}", flush=True)
            return {"dev": result, "headline": head}

        higher = args.metric == "bleu"
        return TaskParts(objective, finish, evaluate if higher else None, higher_is_better=higher)


SEQ2SEQ = Seq2SeqTask()


__all__ = ["finetune_seq2seq", "translate", "score", "causal_rows", "source_ids", "SEQ2SEQ", "Seq2SeqArgs"]
