"""`lmforge eval classify | ner | bleu | rouge | zero-shot`: score a model (or a file of outputs) on labelled data.

Columns, --max-length, --stride and the prompt template default to those the run was trained with. Zero- and
few-shot classification scores each label's name as the continuation of a prompt (`generate.prompting`) and
picks the most likely one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

from .. import io as lio
from .. import metrics
from ..config import check_minimum
from ..errors import ConfigError, LmforgeError
from .data import Example, check_known_labels, check_known_tags, discover_labels, read_examples, read_text_lines
from .args import DecodeOptions, InferOptions, run_info, training_option


def is_report_folder(folder: Path) -> bool:
    """A folder of `lmforge eval` reports (a fine-tuning run holds a report.json too, and is not one)."""
    return (Path(folder) / "report.json").exists() and not (Path(folder) / "run.json").exists()


def _check_out(out: str | None, overwrite: bool, *inputs: Any) -> None:
    if out:
        lio.check_output(out, what="an evaluation report", overwrite=overwrite, ours=is_report_folder, inputs=inputs)


def _write(out: str | None, report: dict[str, Any], name: str = "report.json") -> None:
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        lio.write_json(Path(out) / name, report)


def eval_classify(
    checkpoint: str,
    *,
    data: str,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    label_column: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    infer: InferOptions | None = None,
) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 per class and macro, and the confusion matrix of a classifier on labelled data.

    Args:
        checkpoint: fine-tuning run folder (its best checkpoint) or checkpoint folder
        data: labelled .tsv, .csv or .jsonl file
        text_column: column of the text (default: the training run's)
        text_pair_column: column of the second text of pairs (default: the training run's)
        label_column: column of the gold label (default: the training run's)
        out: folder for report.json and confusion.png
        overwrite: replace a report already in --out
    """
    from .classify import CLASSIFY, score
    from .runs import load_for_inference

    _check_out(out, overwrite, checkpoint, data)
    info = run_info(checkpoint)
    infer = infer or InferOptions()
    model = load_for_inference(checkpoint, infer.device, CLASSIFY)
    columns = [training_option(info, "text_column", text_column, "text")]
    pair = training_option(info, "text_pair_column", text_pair_column, None)
    columns += [pair] if pair else []
    examples = read_examples(data, columns, training_option(info, "label_column", label_column, "label"))
    check_known_labels(examples, model.config.labels, data, "model's")
    max_length, stride = infer.resolved(info)
    report = score(model, examples, max_length=max_length, stride=stride, batch_size=infer.batch_size)
    print(metrics.format_classification(report))
    if out:
        metrics.plot_confusion(report["confusion"], report["labels"], Path(out) / "confusion.png", Path(data).name)
    _write(out, report)
    return report


def eval_ner(
    checkpoint: str,
    *,
    data: str,
    out: str | None = None,
    overwrite: bool = False,
    infer: InferOptions | None = None,
) -> dict[str, Any]:
    """Entity-level precision, recall and F1 (CoNLL semantics, as seqeval) of a tagger on a CoNLL file.

    Args:
        checkpoint: fine-tuning run folder (its best checkpoint) or checkpoint folder
        data: CoNLL file with gold tags
        out: folder for report.json
        overwrite: replace a report already in --out
    """
    from .data import read_conll
    from .ner import NER, score
    from .runs import load_for_inference

    _check_out(out, overwrite, checkpoint, data)
    info = run_info(checkpoint)
    infer = infer or InferOptions()
    model = load_for_inference(checkpoint, infer.device, NER)
    sentences = read_conll(data)
    check_known_tags(sentences, model.config.labels, data)
    max_length, stride = infer.resolved(info)
    report = score(model, sentences, max_length=max_length, stride=stride, batch_size=infer.batch_size)
    print(metrics.format_entities(report))
    _write(out, report)
    return report


def _outputs(checkpoint: str | None, src: str | None, hyp: str | None, ref: str,
             decode: DecodeOptions | None) -> tuple[list[str], list[str]]:
    """The references and the outputs to score: read from --hyp, or decoded from --src by the checkpoint."""
    refs = read_text_lines(ref)
    decode = decode or DecodeOptions()
    if hyp:
        if checkpoint or src:
            raise ConfigError("give either --hyp (outputs to score) or a checkpoint with --src, not both")
        outputs = read_text_lines(hyp)
    else:
        if not (checkpoint and src):
            raise ConfigError("give a checkpoint and --src to decode, or --hyp with the outputs to score")
        if decode.save_outputs:
            lio.check_output(decode.save_outputs, what="decoded outputs", overwrite=decode.overwrite, folder=False,
                             inputs=[checkpoint, src, ref], option="--save-outputs")
        from .runs import load_for_inference
        from .seq2seq import DEFAULT_TEMPLATE, translate

        info = run_info(checkpoint)
        model = load_for_inference(checkpoint, decode.device)
        outputs = translate(model, read_text_lines(src), template=training_option(info, "prompt_template", None,
                                                                                    DEFAULT_TEMPLATE),
                            max_length=training_option(info, "max_length", None, 128),
                            max_new_tokens=decode.max_new_tokens, num_beams=decode.num_beams,
                            batch_size=decode.batch_size)
        if decode.save_outputs:
            lio.write_text(decode.save_outputs, "".join(o.replace("\n", " ") + "\n" for o in outputs))
    if len(outputs) != len(refs):
        raise LmforgeError(f"{len(outputs)} outputs but {len(refs)} references; they must pair up line by line")
    return outputs, refs


def eval_bleu(checkpoint: str | None = None, *, ref: str, src: str | None = None, hyp: str | None = None,
              tokenize: Literal["13a", "intl", "zh", "char", "none", "ja-mecab", "ko-mecab", "flores101",
                                "flores200"] = "13a", decode: DecodeOptions | None = None) -> dict[str, Any]:
    """Corpus BLEU (sacrebleu) of a seq2seq model decoding --src, or of a file of outputs (--hyp), against --ref.

    Args:
        checkpoint: seq2seq run folder or checkpoint folder (omit with --hyp)
        ref: reference file, one line per source line
        src: source file to decode
        hyp: outputs to score instead of decoding
        tokenize: sacrebleu tokenizer (13a, intl, zh, char, none)
    """
    outputs, refs = _outputs(checkpoint, src, hyp, ref, decode)
    result = metrics.bleu(outputs, refs, tokenize=tokenize)
    print(f"BLEU {result['bleu']:.2f}  ({'/'.join(f'{p:.1f}' for p in result['precisions'])}, BP {result['bp']:.3f}, "
          f"{len(refs)} lines)  {result['signature']}")
    return result


def eval_rouge(checkpoint: str | None = None, *, ref: str, src: str | None = None, hyp: str | None = None,
               decode: DecodeOptions | None = None) -> dict[str, Any]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures (mean over lines) of a seq2seq model decoding --src, or of --hyp.

    Args:
        checkpoint: seq2seq run folder or checkpoint folder (omit with --hyp)
        ref: reference file, one line per source line
        src: source file to decode
        hyp: outputs to score instead of decoding
    """
    outputs, refs = _outputs(checkpoint, src, hyp, ref, decode)
    result = metrics.rouge(outputs, refs)
    print(f"ROUGE-1 {100 * result['rouge1']:.2f}  ROUGE-2 {100 * result['rouge2']:.2f}  ROUGE-L "
          f"{100 * result['rougeL']:.2f}  (F-measure, mean of {len(refs)} lines)")
    return result


def label_names(spec: str, values: list[str]) -> dict[str, str]:
    """Map the data's label values to the words scored: "negative,positive" (by index for integer labels, or the
    labels themselves) or "0=negative,1=positive"."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if len(parts) < 2:
        raise ConfigError(f"--labels {spec!r}: give at least two label words, e.g. --labels negative,positive")
    if all("=" in p for p in parts):
        mapping = dict(p.split("=", 1) for p in parts)
    elif set(values) <= set(parts):
        mapping = {p: p for p in parts}
    elif all(v.isdigit() and int(v) < len(parts) for v in values):
        mapping = {str(i): p for i, p in enumerate(parts)}
    else:
        raise ConfigError(f"--labels {spec!r} does not cover the data's labels ({', '.join(values[:10])}); list them "
                          "in index order for integer labels, or map them: --labels 0=negative,1=positive")
    missing = [v for v in values if v not in mapping]
    if missing:
        raise ConfigError(f"--labels has no word for the label {missing[0]!r}; map it: --labels {missing[0]}=word,...")
    return mapping


def eval_zero_shot(
    checkpoint: str,
    *,
    data: str,
    labels: str,
    shots: int = 0,
    shots_from: str | None = None,
    template: str = "{input}\nAnswer: {output}",
    instruction: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    normalize: Literal["none", "tokens", "chars"] = "none",
    limit: int | None = None,
    seed: int = 1234,
    out: str | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Zero- or few-shot classification with a language model: each label word is scored as the continuation of
    the prompt (its log-likelihood), and the most likely label is the prediction.

    Args:
        checkpoint: language model (decoder or encoder-decoder): run folder, checkpoint, Hugging Face folder or hub id
        data: labelled .tsv, .csv or .jsonl file
        labels: the word of each label: negative,positive (integer labels by index) or 0=negative,1=positive
        shots: solved examples shown before each query (drawn per query with --seed)
        shots_from: file to draw the shots from (default: --data, never the query itself)
        template: one example, with {input} and {output}; the query ends where {output} would start
        instruction: a line before the examples
        text_column: column of the text
        label_column: column of the gold label
        normalize: compare total log-likelihoods (none), per token, or per character
        limit: score only the first N examples
        seed: seed of the shot draws
        out: folder for report.json
        overwrite: replace a report already in --out
        device: cpu, cuda or auto
    """
    from ..device import resolve_device
    from ..loading import load
    from ..generate.prompting import few_shot_prompt, score_continuations

    _check_out(out, overwrite, checkpoint, data)
    check_minimum(1, limit=limit)
    check_minimum(0, shots=shots, seed=seed)
    every = read_examples(data, [text_column], label_column)
    examples = every[:limit] if limit else every
    values = discover_labels([ex.label for ex in examples])
    mapping = label_names(labels, values)
    pool: list[Example] = read_examples(shots_from, [text_column], label_column) if shots_from else every
    if shots < 0 or (shots and len(pool) <= shots):
        raise ConfigError(f"--shots={shots} needs more than {shots} examples to draw from; {len(pool)} available")
    missing = {ex.label for ex in pool if ex.label not in mapping} if shots else set()
    if missing:
        raise ConfigError(f"--labels has no word for the label {sorted(missing)[0]!r} of the shots file")
    model = load(checkpoint, device=resolve_device(device))
    if model.config.head != "lm":
        raise ConfigError(f"{checkpoint} has a {model.config.head} head; zero-shot scoring needs a language model")
    if model.config.arch == "encoder":
        raise ConfigError(f"{checkpoint} is an encoder; zero-shot scoring needs a decoder or an encoder-decoder model")
    names = sorted(set(mapping.values()), key=list(mapping.values()).index)
    candidates = [" " + n for n in names]
    key = {"none": lambda s: s.logprob, "tokens": lambda s: s.mean_logprob,
           "chars": lambda s: s.logprob / max(s.num_chars, 1)}[normalize]
    gold, pred = [], []
    for i, ex in enumerate(examples):
        shown = []
        if shots:
            rng = random.Random(seed * 1_000_003 + i)
            chosen = [p for p in rng.sample(pool, shots + 1) if not (shots_from is None and p.line == ex.line)][:shots]
            shown = [(p.texts[0], mapping[p.label]) for p in chosen]
        prompt = few_shot_prompt(ex.texts[0], shown, template=template, instruction=instruction)
        scores = score_continuations(model, prompt, candidates, truncate="left")
        pred.append(names[max(range(len(scores)), key=lambda j: key(scores[j]))])
        gold.append(mapping[ex.label])
    report = metrics.classification_report(gold, pred, names)
    majority = max(names, key=gold.count)
    report.update({"shots": shots, "template": template, "majority_label": majority,
                   "majority_accuracy": gold.count(majority) / len(gold)})
    print(metrics.format_classification(report))
    print(f"{shots}-shot accuracy {report['accuracy']:.4f} vs majority-label baseline {report['majority_accuracy']:.4f}")
    _write(out, report)
    return report


__all__ = ["eval_classify", "eval_ner", "eval_bleu", "eval_rouge", "eval_zero_shot", "label_names", "DecodeOptions"]
