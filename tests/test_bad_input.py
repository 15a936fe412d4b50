"""Bad input, across every verb and the Python API: each case exits with status 2 (or raises the documented
`LmforgeError`), prints exactly one line on stderr that names the file, field or option, and leaves every input and
output folder exactly as it was (a hash of the whole tree before and after). The cases come from a review that tried
544 bad inputs as a new user would (the destinations, the operating system saying no, typed and range-checked
fields, explicit hub ids, messages, runs that fail early, API misuse, interop).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.errors import LmforgeError

from _finetune_data import ner_sentences, sentiment_rows, write_conll, write_table

TEXT = "\n".join(f"Line {i}: to be, or not to be, that is the question {i % 13}." for i in range(400))
TINY = ["--set", "n_layer=1", "--set", "d_model=32", "--set", "n_head=2"]
TR = ["--max-steps", "3", "--batch-size", "2", "--no-progress", "--eval-batches", "1", "--threads", "1", "--context",
      "32"]
FT = ["--max-steps", "3", "--batch-size", "4", "--no-progress", "--eval-every", "3", "--save-every", "3", "--threads",
      "1", "--max-length", "32"]


def ok(args: list[str]) -> None:
    assert main(args) == 0, args


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """Real outputs of every kind, made by the commands themselves: tokenizers, prepared data, a pretraining run,
    a BERT run, classify / LoRA / NER / seq2seq runs, a merged checkpoint, a Hugging Face export, task files."""
    root = tmp_path_factory.mktemp("bad")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        Path("corpus.txt").write_text(TEXT)
        Path("lat.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 20)
        Path("blob.txt").write_bytes(b"\x00\x01\x02" * 50)
        Path("mine").mkdir()
        Path("mine/notes.txt").write_text("my own notes")
        ok(["tokenizer", "train", "corpus.txt", "--vocab-size", "300", "--out", "tok"])
        ok(["tokenizer", "train", "corpus.txt", "--arch", "encoder", "--vocab-size", "300", "--out", "tok-enc"])
        ok(["tokenizer", "train", "corpus.txt", "--arch", "encoder_decoder", "--vocab-size", "300", "--out", "tok-s2s"])
        ok(["prepare", "corpus.txt", "--tokenizer", "tok", "--out", "data"])
        ok(["prepare", "corpus.txt", "--tokenizer", "tok-enc", "--out", "data-enc"])
        Path("pairs.jsonl").write_text("".join(json.dumps({"source": x, "target": x[::-1]}) + "\n"
                                               for x in TEXT.splitlines()))
        ok(["prepare", "pairs.jsonl", "--pairs", "--tokenizer", "tok-s2s", "--out", "data-s2s"])
        ok(["pretrain", "--data", "data", "--out", "run", *TINY, *TR])
        ok(["pretrain", "--model", "bert-mini", "--data", "data-enc", "--out", "bert", *TINY, *TR])
        write_table(root / "train.tsv", sentiment_rows(60, 1))
        write_table(root / "dev.tsv", sentiment_rows(20, 2))
        write_table(root / "one-label.tsv", [("pos", "great film")] * 10)
        Path("lat.tsv").write_bytes("label\ttext\npos\tcaf\xe9\nneg\tbad\n".encode("latin-1"))
        write_conll(root / "train.conll", ner_sentences(60, 1))
        Path("one-col.conll").write_text("Paris\nis\nnice\n")
        Path("train.src").write_text("".join(f"a b {i % 7} c\n" for i in range(60)))
        Path("train.tgt").write_text("".join(f"c {i % 7} b a\n" for i in range(60)))
        Path("short.tgt").write_text("c b a\n")
        Path("p.txt").write_text("to be\nor not\n")
        Path("chats.jsonl").write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"hi {n}"}, {
            "role": "assistant", "content": f"hello {n}"}]}) + "\n" for n in range(20)))
        Path("chats-no-assistant.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
        ok(["finetune", "classify", "--model", "bert", "--train", "train.tsv", "--dev", "dev.tsv", "--out", "clf", *FT])
        ok(["finetune", "classify", "--model", "bert", "--train", "train.tsv", "--dev", "dev.tsv", "--out", "clf-lora",
            "--method", "lora", *FT])
        ok(["finetune", "ner", "--model", "bert", "--train", "train.conll", "--out", "ner", *FT])
        ok(["finetune", "seq2seq", "--model", "transformer-small", "--tokenizer", "tok-s2s", *TINY, "--train-src",
            "train.src", "--train-tgt", "train.tgt", "--out", "s2s", "--eval-samples", "4", *FT])
        ok(["lora", "merge", "clf-lora", "--out", "merged"])
        ok(["convert", "to-hf", "run", "hf-gpt2"])
        Path("proj").mkdir()
        shutil.copytree("run", "proj/run")
    finally:
        os.chdir(cwd)
    return root


def tree(root: Path) -> str:
    """A digest of every file (name and bytes) and folder under root."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file() and not path.is_symlink():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def one_line_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("lmforge: error: ") and "Traceback" not in lines[0], lines
    return lines[0]


PT, F = " ".join(TINY + TR), " ".join(FT)

# (case, command, what the one line must name)
CASES = [
    # ---- destinations ----------------------------------------------------------------------------------------
    ("tokenizer-out-existing", "tokenizer train corpus.txt --vocab-size 300 --out tok", "--overwrite"),
    ("tokenizer-out-data", "tokenizer train corpus.txt --out data --overwrite", "does not hold a tokenizer"),
    ("tokenizer-out-run", "tokenizer train corpus.txt --out run --overwrite", "does not hold a tokenizer"),
    ("tokenizer-out-file", "tokenizer train corpus.txt --out train.tsv", "is a file"),
    ("tokenizer-out-cwd", "tokenizer train corpus.txt --out . --overwrite", "is a folder holding an input"),
    ("prepare-out-existing", "prepare corpus.txt --tokenizer tok --out data", "already holds prepared data"),
    ("prepare-out-run", "prepare corpus.txt --tokenizer tok --out run --overwrite", "does not hold prepared data"),
    ("prepare-out-tokenizer", "prepare corpus.txt --tokenizer tok --out tok-enc --overwrite", "does not hold prepared"),
    ("prepare-out-file", "prepare corpus.txt --tokenizer tok --out train.tsv", "is a file"),
    ("prepare-out-unrelated", "prepare corpus.txt --tokenizer tok --out mine --overwrite", "not empty"),
    ("pretrain-out-existing-run", f"pretrain --data data --out run {PT}", "already holds a run"),
    ("pretrain-overwrite-bad-data", f"pretrain --data nodata --out run --overwrite {PT}", "nodata"),
    ("pretrain-overwrite-bad-preset", f"pretrain --model gpt-nope --data data --out run --overwrite {PT}", "gpt-nope"),
    ("pretrain-overwrite-bad-set", f"pretrain --data data --out run --overwrite {PT} --set dropout=abc", "dropout"),
    ("pretrain-out-unrelated", f"pretrain --data data --out mine --overwrite {PT}", "not empty"),
    ("pretrain-out-checkpoint", f"pretrain --data data --out run/best --overwrite {PT}", "does not hold an"),
    ("pretrain-out-finetune-run", f"pretrain --data data --out clf --overwrite {PT}", "lmforge pretrain` run"),
    ("finetune-overwrite-bad-train", f"finetune classify --model bert --train nope.tsv --out clf --overwrite {F}",
     "nope.tsv"),
    ("finetune-out-pretrain-run", f"finetune classify --model bert --train train.tsv --out run --overwrite {F}",
     "lmforge finetune classify` run"),
    ("finetune-out-other-task", f"finetune ner --model bert --train train.conll --out clf --overwrite {F}",
     "lmforge finetune ner` run"),
    ("lora-merge-out-run", "lora merge clf-lora --out clf", "does not hold an lmforge checkpoint"),
    ("lora-merge-out-input", "lora merge clf-lora --out clf-lora --overwrite", "is also an input"),
    ("lora-merge-out-existing", "lora merge clf-lora --out merged", "--overwrite"),
    ("lora-merge-out-file", "lora merge clf-lora --out corpus.txt", "is a file"),
    ("to-hf-out-run", "convert to-hf run clf --overwrite", "does not hold a Hugging Face model folder"),
    ("to-hf-out-own-checkpoint", "convert to-hf run run/best --overwrite", "does not hold a Hugging Face"),
    ("to-hf-out-parent", "convert to-hf proj/run proj --overwrite", "holding an input"),
    ("to-hf-out-existing", "convert to-hf run hf-gpt2", "--overwrite"),
    ("to-hf-out-file", "convert to-hf run corpus.txt", "is a file"),
    ("from-hf-out-run", "convert from-hf hf-gpt2 run --overwrite", "does not hold an lmforge checkpoint"),
    ("from-hf-out-unrelated", "convert from-hf hf-gpt2 mine --overwrite", "does not hold an lmforge checkpoint"),
    ("predict-out-input", "predict clf --input dev.tsv --out dev.tsv", "is also an input"),
    ("predict-out-existing", "predict clf --input dev.tsv --out train.tsv", "--overwrite"),
    ("predict-out-folder", "predict clf --input dev.tsv --out mine", "is a folder"),
    ("generate-out-existing", "generate run 'to be' --max-new-tokens 2 --out corpus.txt", "--overwrite"),
    ("generate-out-prompts", "generate run --prompts p.txt --max-new-tokens 2 --out p.txt", "is also an input"),
    ("eval-out-run", "eval classify clf --data dev.tsv --out ner --overwrite", "does not hold an evaluation report"),
    ("eval-out-checkpoint", "eval classify clf --data dev.tsv --out clf", "is also an input"),
    ("eval-save-outputs-ref", "eval bleu s2s --src train.src --ref train.tgt --save-outputs train.tgt "
                              "--max-new-tokens 2", "is also an input"),
    ("eval-save-outputs-existing", "eval rouge s2s --src train.src --ref train.tgt --save-outputs corpus.txt "
                                   "--max-new-tokens 2", "--overwrite"),
    ("demo-out-unrelated", "demo --fast --out mine", "does not hold an lmforge demo"),
    ("demo-out-file", "demo --fast --out corpus.txt", "is a file"),
    # ---- typed and range-checked fields ------------------------------------------------------------------------
    ("set-dropout-text", f"pretrain --data data --out x {PT} --set dropout=abc", "dropout='abc'"),
    ("set-labels-number", f"pretrain --data data --out x {PT} --set labels=5", "labels=5"),
    ("set-vocab-too-small", f"pretrain --data data --out x {PT} --set vocab_size=100", "vocab_size=100"),
    ("set-n-head", f"pretrain --data data --out x {PT} --set n_head=7", "n_head=7"),
    ("set-unknown-field", f"pretrain --data data --out x {PT} --set bogus=1", "bogus"),
    ("set-not-key-value", f"pretrain --data data --out x {PT} --set n_layer", "key=value"),
    ("set-null-width", f"pretrain --data data --out x {PT} --set d_model=null", "d_model"),
    ("set-bias-text", f"pretrain --data data --out x {PT} --set bias=maybe", "bias"),
    ("lr-nan", f"pretrain --data data --out x {PT} --lr nan", "--lr=nan"),
    ("epochs-inf", f"pretrain --data data --out x {PT} --epochs inf", "--epochs=inf"),
    ("batch-size-zero", f"pretrain --data data --out x {PT} --batch-size 0", "--batch-size"),
    ("seed-negative", f"pretrain --data data --out x {PT} --seed -1", "--seed"),
    ("max-time-negative", f"pretrain --data data --out x {PT} --max-time -5", "--max-time"),
    ("grad-clip-nan", f"pretrain --data data --out x {PT} --grad-clip nan", "--grad-clip=nan"),
    ("patience-without-evaluations", f"pretrain --data data --out x {PT} --patience 1 --eval-every 0", "--patience"),
    ("context-too-long", f"pretrain --data data --out x {PT.replace('--context 32', '--context 100000')}",
     "--context"),
    ("fp16-on-cpu", f"pretrain --data data --out x {PT} --dtype fp16", "fp16"),
    ("device-cuda", f"pretrain --data data --out x {PT} --device cuda", "cuda"),
    ("objective-mismatch", f"pretrain --data data --out x {PT} --objective mlm", "objective mlm"),
    ("pair-data-for-decoder", f"pretrain --data data-s2s --out x {PT}", "pairs"),
    ("init-with-set-shape", f"pretrain --init run --data data --out x {PT} --set n_layer=4", "with --init the model keeps the shape"),
    ("init-missing", f"pretrain --init nope --data data --out x {PT}", "nope"),
    ("data-other-tokenizer-init", f"pretrain --init run --data data-enc --out x {PT}", "another tokenizer"),
    ("unknown-option", "pretrain --bogus", "unrecognized arguments: --bogus"),
    ("bad-int", "pretrain --max-steps abc", "--max-steps"),
    ("tokenizer-vocab-too-small", "tokenizer train corpus.txt --vocab-size 100 --out t1", "vocab_size=100"),
    ("tokenizer-min-frequency", "tokenizer train corpus.txt --out t1 --min-frequency -1", "--min-frequency"),
    ("tokenizer-encoding", "tokenizer train corpus.txt --out t1 --encoding latin-9x", "--encoding"),
    ("tokenizer-kind", "tokenizer train corpus.txt --out t1 --kind bogus", "--kind"),
    ("prepare-val-fraction", "prepare corpus.txt --tokenizer tok --out d1 --val-fraction 1.5", "val_fraction"),
    ("prepare-encoding", "prepare corpus.txt --tokenizer tok --out d1 --encoding latin-9x", "--encoding"),
    ("perplexity-batch-zero", "eval perplexity run --data data --batch-size 0", "--batch-size"),
    ("perplexity-context-negative", "eval perplexity run --data data --context -5", "--context"),
    ("perplexity-max-batches", "eval perplexity run --data data --max-batches 0", "--max-batches"),
    ("perplexity-other-tokenizer", "eval perplexity run --data data-enc", "another tokenizer"),
    ("perplexity-split", "eval perplexity run --data data --split test", "--split"),
    ("generate-top-p", "generate run 'to be' --top-p 1.5", "top_p"),
    ("generate-temperature-negative", "generate run 'to be' --temperature -1", "temperature"),
    ("generate-temperature-nan", "generate run 'to be' --temperature nan", "--temperature=nan"),
    ("generate-beams-zero", "generate run 'to be' --beams 0", "num_beams"),
    ("generate-no-prompt", "generate run", "give either a prompt"),
    ("generate-encoder", "generate bert 'to be'", "encoder-only"),
        ("sample-num-samples", "sample run 'to be' --num-samples 0", "--num-samples"),
    ("predict-batch-zero", "predict clf --input dev.tsv --out p.tsv --batch-size 0", "--batch-size"),
    ("predict-max-length", "predict clf --input dev.tsv --out p.tsv --max-length 0", "--max-length"),
    ("predict-beams", "predict s2s --input train.src --out p.txt --num-beams 0", "--num-beams"),
    ("eval-classify-batch-zero", "eval classify clf --data dev.tsv --batch-size 0", "--batch-size"),
    ("eval-ner-batch-zero", "eval ner ner --data train.conll --batch-size 0", "--batch-size"),
    ("eval-bleu-tokenize", "eval bleu --hyp train.tgt --ref train.tgt --tokenize banana", "--tokenize"),
    ("eval-zero-shot-shots", "eval zero-shot run --data dev.tsv --labels neg,pos --shots -1", "--shots"),
    ("eval-zero-shot-limit", "eval zero-shot run --data dev.tsv --labels neg,pos --limit 0", "--limit"),
    ("info-context", "info gpt-mini --context -5", "--context"),
    ("info-batch", "info gpt-mini --batch-size 0", "--batch-size"),
    ("info-preset", "info gpt-nope", "gpt-nope"),
    ("to-hf-model-type", "convert to-hf run h2 --model-type t5", "--model-type"),
    ("to-hf-shard-size", "convert to-hf run h2 --max-shard-size 0", "max_shard_size"),
    ("from-hf-revision-local", "convert from-hf hf-gpt2 c2 --revision v9", "--revision"),
    ("finetune-dev-fraction", f"finetune classify --model bert --train train.tsv --out x {F} --dev-fraction 1.5",
     "--dev-fraction"),
    ("finetune-lora-rank", f"finetune classify --model bert --train train.tsv --out x {F} --method lora "
                           "--lora-rank 0", "--lora-rank"),
    ("finetune-lora-alpha-nan", f"finetune classify --model bert --train train.tsv --out x {F} --method lora "
                                "--lora-alpha nan", "--lora-alpha=nan"),
    ("finetune-max-length", f"finetune classify --model bert --train train.tsv --out x {F} --max-length 2",
     "--max-length"),
    ("finetune-set-shape", f"finetune classify --model bert --train train.tsv --out x {F} --set n_layer=4",
     "keeps its shape"),
    ("seq2seq-beams", f"finetune seq2seq --model s2s --train-src train.src --train-tgt train.tgt --out x {F} "
                      "--num-beams 0", "--num-beams"),
    ("seq2seq-template", f"finetune seq2seq --model run --train-src train.src --train-tgt train.tgt --out x {F} "
                         "--prompt-template nothing", "{source}"),
    ("seq2seq-dev-pair", f"finetune seq2seq --model s2s --train-src train.src --train-tgt train.tgt --out x {F} "
                         "--dev-src train.src", "--dev-tgt"),
    ("seq2seq-misaligned", f"finetune seq2seq --model s2s --train-src train.src --train-tgt short.tgt --out x {F}",
     "short.tgt"),
    ("sft-samples", f"finetune sft --model run --train chats-no-assistant.jsonl --out x {F} --samples -1",
     "--samples"),
    # ---- runs: resume, early failures ----------------------------------------------------------------------------
    ("resume-max-steps-below", "pretrain --resume run --max-steps 1 --no-progress", "--max-steps"),
    ("resume-lr", "pretrain --resume run --lr 0.5 --no-progress", "--lr"),
    ("resume-data", "pretrain --resume run --data data --no-progress", "cannot be given with --resume"),
    ("resume-finetune-run-with-pretrain", "pretrain --resume clf --no-progress", "lmforge finetune classify --resume"),
    ("resume-pretrain-run-with-finetune", "finetune classify --resume run --no-progress", "lmforge pretrain --resume"),
    ("resume-not-a-run", "pretrain --resume mine", "not a run folder"),
    ("resume-finetune-option", "finetune classify --resume clf --train dev.tsv --no-progress",
     "cannot be given with --resume"),
    ("resume-device", "pretrain --resume run --device banana --max-steps 4 --no-progress", "banana"),
    # ---- hub ids and paths -----------------------------------------------------------------------------------------
    ("typo-path-not-hub", "generate runs/gpt-mini 'to be'", "hf:runs/gpt-mini"),
    ("hub-id-malformed", "generate hf:nope 'to be'", "hf:ORG/NAME"),
    ("missing-checkpoint", "eval perplexity nope --data data", "nope"),
    ("from-hf-missing", "convert from-hf org/model c2", "hf:org/model"),
    ("from-hf-lmforge-run", "convert from-hf run c2", "is an lmforge run"),
    # ---- messages that point the right way ---------------------------------------------------------------------
    ("finetune-latin1-no-foreign-flags", f"finetune classify --model bert --train lat.tsv --out x {F}",
     "not valid utf-8"),
    ("prepare-binary", "prepare blob.txt --tokenizer tok --out d1", "looks binary"),
    ("prepare-latin1", "prepare lat.txt --tokenizer tok --out d1", "--encoding"),
    ("ner-on-a-table", f"finetune ner --model bert --train train.tsv --out x {F}", "looks like a table"),
    ("ner-one-column", f"finetune ner --model bert --train one-col.conll --out x {F}", "one column"),
    ("classify-one-label", f"finetune classify --model bert --train one-label.tsv --out x {F}", "only one label"),
    ("classify-label-column", f"finetune classify --model bert --train train.tsv --out x {F} --label-column nope",
     "nope"),
    ("classify-encoder-decoder", f"finetune classify --model s2s --train train.tsv --out x {F}", "encoder_decoder"),
    ("sft-on-encoder", f"finetune sft --model bert --train chats.jsonl --out x {F}", "decoder"),
    ("sft-no-assistant", f"finetune sft --model run --train chats-no-assistant.jsonl --out x {F}", "no assistant"),
    ("finetune-missing-out", "finetune classify --model bert --train train.tsv", "--out"),
    ("predict-plain-lm", "predict run --input p.txt --out p2.txt", "no fine-tuning run made"),
    ("predict-missing-input", "predict clf --input nope.tsv --out p.tsv", "nope.tsv"),
    ("eval-classify-on-tagger", "eval classify ner --data dev.tsv", "not a classifier"),
    ("eval-ner-on-classifier", "eval ner clf --data train.conll", "not a tagger"),
    ("eval-bleu-both", "eval bleu s2s --hyp train.tgt --ref train.tgt", "either --hyp"),
    ("eval-bleu-lengths", "eval bleu --hyp short.tgt --ref train.tgt", "pair up"),
    ("lora-merge-no-adapter", "lora merge clf --out m2", "no LoRA adapter"),
    ("lora-merge-foreign-adapter", "lora merge run --adapter clf-lora/adapter --out m2", "another base model"),
    ("lora-merge-stacked-adapter", "lora merge clf-lora --adapter clf-lora/adapter --out m2", "already carries"),
    ("lora-merge-adapter-missing", "lora merge run --adapter mine --out m2", "not a LoRA adapter folder"),
    ("huge-model", f"pretrain --data data --out x {PT} --set n_layer=1000000 --set d_model=4096", "GiB"),
    ("finetune-set-head-field", f"finetune classify --model bert-mini --tokenizer tok-enc --train train.tsv --out x "
                                f"{F} --set num_labels=7", "--set num_labels"),
    ("finetune-vocab-size-zero", f"finetune classify --model bert --train train.tsv --out x {F} --vocab-size 0",
     "--vocab-size"),
    ("unknown-command", "bogus", "unknown command"),
    ("unknown-subcommand", "eval bogus", "its subcommands"),
]


@pytest.mark.parametrize("command,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(fx, command, match, capsys, monkeypatch):
    monkeypatch.chdir(fx)
    before = tree(fx)
    assert main(shlex.split(command)) == 2
    line = one_line_error(capsys)
    assert match in line, line
    assert tree(fx) == before


# ---- damaged files of lmforge's own outputs ----------------------------------------------------------------

def _damage(folder: Path, name: str, how: str) -> None:
    path = folder / name
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
    elif how == "garbage":
        path.write_text("{not json")
    elif how == "folder":
        path.unlink()
        path.mkdir()
    elif how.startswith(("drop:", "set:", "state-step", "list", "manifest-count")):
        data = json.loads(path.read_text())
        if how.startswith("drop:"):
            data.pop(how[5:])
        elif how.startswith("set:"):
            key, value = how[4:].split("=")
            data[key] = value
        elif how == "state-step":
            data["state"]["step"] = "3"
        elif how == "manifest-count":
            data["splits"]["train"]["tokens"] = "many"
        else:
            data = [data]
        path.write_text(json.dumps(data))
    elif how == "odd":
        path.write_bytes(path.read_bytes()[:-1])
    elif how == "half-even":
        path.write_bytes(path.read_bytes()[: (path.stat().st_size // 4) * 2])


DAMAGED = [
    ("trainer-state-truncated", "run", "last/state/trainer_state.json", "truncate",
     "pretrain --resume {dir} --max-steps 6 --no-progress", "damaged"),
    ("optimizer-truncated", "run", "last/state/optimizer.safetensors", "truncate",
     "pretrain --resume {dir} --max-steps 6 --no-progress", "damaged"),
    ("rng-truncated", "run", "last/state/rng.safetensors", "truncate",
     "pretrain --resume {dir} --max-steps 6 --no-progress", "damaged"),
    ("run-json-garbage", "run", "run.json", "garbage", "pretrain --resume {dir} --no-progress", "damaged"),
    ("config-garbage", "run", "best/config.json", "garbage", "generate {dir} 'to be' --max-new-tokens 2", "damaged"),
    ("config-is-a-folder", "run", "best/config.json", "folder", "generate {dir} 'to be' --max-new-tokens 2",
     "config.json"),
    ("weights-truncated", "run", "best/model.safetensors", "truncate", "generate {dir} 'to be' --max-new-tokens 2",
     "model.safetensors"),
    ("weights-is-a-folder", "run", "best/model.safetensors", "folder", "generate {dir} 'to be' --max-new-tokens 2",
     "model.safetensors"),
    ("manifest-garbage", "data", "manifest.json", "garbage", "eval perplexity run --data {dir}", "manifest.json"),
    ("adapter-config-garbage", "clf-lora", "adapter/adapter_config.json", "garbage",
     "lora merge bert --adapter {dir}/adapter --out m3", "adapter_config.json"),
    ("adapter-weights-truncated", "clf-lora", "adapter/adapter.safetensors", "truncate",
     "lora merge bert --adapter {dir}/adapter --out m3", "adapter.safetensors"),
    ("tokenizer-garbage", "tok", "tokenizer.json", "garbage", "tokenizer encode {dir} 'to be'", "tokenizer.json"),
    ("run-json-no-model-config", "run", "run.json", "drop:model_config", "pretrain --resume {dir} --no-progress",
     "damaged"),
    ("run-json-no-data", "run", "run.json", "drop:data", "pretrain --resume {dir} --no-progress", "damaged"),
    ("run-json-objective", "run", "run.json", "set:objective=foo", "pretrain --resume {dir} --max-steps 6 "
                                                                    "--no-progress", "objective 'foo'"),
    ("finetune-run-json-no-args", "clf", "run.json", "drop:args", "finetune classify --resume {dir} --no-progress",
     "damaged"),
    ("trainer-state-step-text", "run", "last/state/trainer_state.json", "state-step",
     "pretrain --resume {dir} --max-steps 6 --no-progress", "damaged"),
    ("adapter-config-no-rank", "clf-lora", "adapter/adapter_config.json", "drop:rank",
     "lora merge bert --adapter {dir}/adapter --out m3", "damaged"),
    ("adapter-config-list", "clf-lora", "adapter/adapter_config.json", "list",
     "lora merge bert --adapter {dir}/adapter --out m3", "not an lmforge LoRA adapter"),
    ("manifest-count-text", "data", "manifest.json", "manifest-count", "eval perplexity run --data {dir}", "damaged"),
    ("tokens-odd-length", "data", "train.bin", "odd", "eval perplexity run --data {dir} --split train", "truncated"),
    ("tokens-shorter", "data", "val.bin", "half-even", "eval perplexity run --data {dir}", "manifest.json says"),
]


@pytest.mark.parametrize("source,name,how,command,match", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_a_damaged_file_is_named_in_one_line(fx, tmp_path, source, name, how, command, match, capsys,
                                             monkeypatch):
    shutil.copytree(fx / source, tmp_path / source)
    _damage(tmp_path / source, name, how)
    monkeypatch.chdir(fx)
    before = tree(fx), tree(tmp_path)
    assert main(shlex.split(command.format(dir=tmp_path / source))) == 2
    line = one_line_error(capsys)
    assert match in line, line
    assert (tree(fx), tree(tmp_path)) == before


def test_a_shard_index_may_name_only_files_beside_it(fx, tmp_path, capsys):
    folder = tmp_path / "hf"
    shutil.copytree(fx / "hf-gpt2", folder)
    (tmp_path / "outside.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    keys = json.loads((folder / "model.safetensors").read_bytes()[8:8 + int.from_bytes(
        (folder / "model.safetensors").read_bytes()[:8], "little")])
    (folder / "model.safetensors").unlink()
    for shard in ("../outside.safetensors", str(tmp_path / "outside.safetensors")):
        index = {"metadata": {}, "weight_map": {k: shard for k in keys if k != "__metadata__"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        assert main(["convert", "from-hf", str(folder), str(tmp_path / "c")]) == 2
        assert "shards must sit beside the index" in one_line_error(capsys)
        assert not (tmp_path / "c").exists()


# ---- the operating system says no ----------------------------------------------------------------------------

def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder (a read-only bind mount: permission bits do not stop root)."""
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    if os.geteuid() != 0 or not _mount("--bind", "-o", "ro", str(src), str(ro)):
        pytest.skip("needs root and mount (CI runs as root) for a read-only bind mount")
    yield ro
    subprocess.run(["umount", str(ro)], check=True)


@pytest.fixture
def full_disk(tmp_path):
    """A file system of 64 KiB (a tmpfs)."""
    full = tmp_path / "full"
    full.mkdir()
    if os.geteuid() != 0 or not _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)):
        pytest.skip("needs root and mount (CI runs as root) for a small tmpfs")
    (full / "filler").write_bytes(b"x" * 56_000)  # 8 KiB left
    yield full
    subprocess.run(["umount", str(full)], check=True)


@pytest.mark.parametrize("command", ["tokenizer train corpus.txt --vocab-size 300 --out {dir}/tok",
                                     "prepare corpus.txt --tokenizer tok --out {dir}/d",
                                     "lora merge clf-lora --out {dir}/m",
                                     "convert to-hf run {dir}/h",
                                     f"pretrain --data data --out {{dir}}/r {PT}"])
def test_a_read_only_folder_is_one_line(fx, read_only, command, capsys, monkeypatch):
    monkeypatch.chdir(fx)
    before = tree(fx)
    assert main(shlex.split(command.format(dir=read_only))) == 2
    line = one_line_error(capsys)
    assert str(read_only) in line and "read-only file system" in line, line
    assert tree(fx) == before


@pytest.mark.parametrize("command", ["prepare corpus.txt --tokenizer tok --out {dir}/d",
                                     "tokenizer train corpus.txt --vocab-size 300 --out {dir}/t",
                                     "convert to-hf run {dir}/h",
                                     "lora merge clf-lora --out {dir}/m"])
def test_a_full_disk_is_one_line_and_leaves_nothing(fx, full_disk, command, capsys, monkeypatch):
    monkeypatch.chdir(fx)
    before = tree(fx)
    assert main(shlex.split(command.format(dir=full_disk))) == 2
    line = one_line_error(capsys)
    assert str(full_disk) in line and "no space left on device" in line, line
    assert tree(fx) == before and [p.name for p in full_disk.iterdir()] == ["filler"]


def test_a_failed_save_keeps_the_previous_checkpoint(fx, tmp_path, monkeypatch):
    """A disk that fills up while a checkpoint is replaced (injected): one error naming the file, and the previous
    checkpoint loads as it was."""
    model = lmforge.load(fx / "run")
    target = tmp_path / "ckpt"
    lmforge.save(model, target)
    before = tree(target)
    monkeypatch.setattr("lmforge.io.os.fdopen", lambda fd, *a, **k: _FullFile(fd))
    with pytest.raises(OSError) as e:
        lmforge.save(model, target, overwrite=True)
    assert e.value.errno == errno.ENOSPC and str(target) in str(e.value.filename)
    monkeypatch.undo()
    assert tree(target) == before and lmforge.load(target).config == model.config


class _FullFile:
    """A file whose writes fail as on a full disk."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
        return False

    def write(self, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


# ---- the Python API ------------------------------------------------------------------------------------------------

def _ids(*values: int) -> torch.Tensor:
    return torch.tensor([list(values)])


API = [
    ("load-none", lambda fx: lmforge.load(None), "load needs the path"),
    ("load-empty", lambda fx: lmforge.load(""), "load needs the path"),
    ("load-number", lambda fx: lmforge.load(123), "load needs the path"),
    ("load-typo", lambda fx: lmforge.load(fx / "runs/gpt-mini"), "does not exist"),
    ("save-over-file", lambda fx: lmforge.save(lmforge.load(fx / "run"), fx / "corpus.txt"), "is a file"),
    ("save-over-unrelated", lambda fx: lmforge.save(lmforge.load(fx / "run"), fx / "mine", overwrite=True),
     "does not hold an lmforge checkpoint"),
    ("save-over-run", lambda fx: lmforge.save(lmforge.load(fx / "run"), fx / "clf", overwrite=True),
     "does not hold an lmforge checkpoint"),
    ("save-over-checkpoint", lambda fx: lmforge.save(lmforge.load(fx / "run"), fx / "merged"), "overwrite=True"),
    ("generate-path", lambda fx: lmforge.generate(str(fx / "run"), "to be"), "lmforge.load"),
    ("ids-out-of-range", lambda fx: lmforge.load(fx / "run")(_ids(1, 100000)), "out of range"),
    ("ids-negative", lambda fx: lmforge.load(fx / "run")(_ids(-1, 2)), "out of range"),
    ("ids-float", lambda fx: lmforge.load(fx / "run")(torch.ones(1, 3)), "integers"),
    ("mask-shape", lambda fx: lmforge.load(fx / "run")(_ids(1, 2, 3), torch.ones(1, 5)), "attention_mask"),
    ("build-model-number", lambda fx: lmforge.build_model(5), "ModelConfig or a preset name"),
    ("config-type", lambda fx: lmforge.ModelConfig.from_name("gpt-nano", dropout="abc"), "dropout"),
    ("generate-option", lambda fx: lmforge.generate(lmforge.load(fx / "run"), "to be", top_p=2.0), "top_p"),
    ("tokenizer-load-none", lambda fx: lmforge.Tokenizer.load(None), "Tokenizer.load needs"),
    ("from-hf-none", lambda fx: lmforge.convert.from_hf(None), "no model at None"),
    ("save-a-path", lambda fx: lmforge.save(str(fx / "run"), fx / "x"), "save needs a model"),
    ("options-as-dict", lambda fx: __import__("lmforge.finetune.classify").finetune.classify.finetune_classify(
        model=str(fx / "bert"), train=str(fx / "train.tsv"), out=str(fx / "x"), options={"max_steps": 2}),
     "options= takes a FinetuneConfig"),
    ("pretrain-train-as-dict", lambda fx: __import__("lmforge.train.pretrain").train.pretrain.pretrain(
        data=str(fx / "data"), out=str(fx / "x"), train={"max_steps": 2}), "train= takes a TrainConfig"),
    ("decode-negative", lambda fx: lmforge.Tokenizer.load(fx / "tok").decode([-1]), "token id -1"),
    ("decode-too-large", lambda fx: lmforge.Tokenizer.load(fx / "tok").decode([10**9]), "not in this tokenizer"),
    ("encode-none", lambda fx: lmforge.Tokenizer.load(fx / "tok").encode(None), "encode takes a text"),
    ("train-tokenizer-nothing", lambda fx: lmforge.train_tokenizer([], "bpe", 300), "no text"),
    ("train-tokenizer-a-path", lambda fx: lmforge.train_tokenizer(str(fx / "corpus.txt"), "bpe", 300),
     "train_tokenizer_files"),
]


@pytest.mark.parametrize("call,match", [c[1:] for c in API], ids=[c[0] for c in API])
def test_python_api_misuse_is_an_lmforge_error(fx, call, match):
    before = tree(fx)
    with pytest.raises(LmforgeError) as e:
        call(fx)
    assert match in str(e.value) and "\n" not in str(e.value)
    assert tree(fx) == before


def test_build_model_takes_a_preset_name():
    assert lmforge.build_model("gpt-nano").config.name == "gpt-nano"
