import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge import ModelConfig, build_model
from lmforge.cli import main
from lmforge.errors import ConfigError, DataError
from lmforge.finetune.classify import encode_examples, finetune_classify
from lmforge.finetune.data import Example, read_examples, split_dev
from lmforge.model.heads import with_head
from lmforge.model.word_vectors import init_embeddings
from lmforge.finetune.objectives import TaskObjective
from lmforge.train.logs import read_metrics

from _finetune_data import TINY, encoder_tokenizer, sentiment_rows, src, tiny_options, way, write_table


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    tok = root / "tok"
    encoder_tokenizer().save(tok)
    return {"train": write_table(root / "train.tsv", sentiment_rows(300, 0)),
            "dev": write_table(root / "dev.tsv", sentiment_rows(80, 1)), "tok": str(tok), "root": root}


def run(data, out, **kw):
    options = kw.pop("options", tiny_options())
    return finetune_classify(model=kw.pop("model", "bert-mini"), train=data["train"], dev=data["dev"], out=str(out),
                             source=src(data["tok"], set_=kw.pop("set_", TINY)), options=options, **kw)


def test_classifier_learns_a_separable_task_and_reloads_with_its_head(data, tmp_path, capsys):
    result = run(data, tmp_path / "run", options=tiny_options(max_steps=80))
    assert result["dev"]["accuracy"] >= 0.95, result["headline"]
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val"]
    assert [r["metric"] for r in val] == ["accuracy"] * 4 and result["best_val"] == max(r["value"] for r in val)
    model = lmforge.load(tmp_path / "run")  # no flags: the head comes from the config
    assert model.config.head == "classify" and model.config.labels == ["neg", "pos"]
    for name in ("report.json", "confusion_dev.png", "dev_metric.png", "loss.png", "run.json"):
        assert (tmp_path / "run" / name).exists(), name
    # predict writes the file; eval classify reads the training columns from the run
    new = write_table(tmp_path / "new.tsv", sentiment_rows(20, 5))
    assert main(["predict", str(tmp_path / "run"), "--input", new, "--out", str(tmp_path / "p.tsv")]) == 0
    lines = [line.split("\t") for line in (tmp_path / "p.tsv").read_text().splitlines()]
    assert lines[0] == ["label", "text", "prediction", "probability"] and len(lines) == 21
    assert sum(row[0] == row[2] for row in lines[1:]) >= 18 and all(0.5 <= float(row[3]) <= 1 for row in lines[1:])
    assert main(["eval", "classify", str(tmp_path / "run"), "--data", data["dev"], "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["accuracy"] == result["dev"]["accuracy"]
    # predict: a JSONL record without the text column is a one-line error naming file and line
    (tmp_path / "new.jsonl").write_text('{"text": "good film"}\n{"other": "bad"}\n')
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "new.jsonl"), "--out",
                 str(tmp_path / "p.jsonl")]) == 2
    assert "new.jsonl:2: the record has no 'text' field" in capsys.readouterr().err
    # a classifier is not a tagger: a one-line error naming the command that makes one
    capsys.readouterr()
    assert main(["eval", "ner", str(tmp_path / "run"), "--data", data["dev"]]) == 2
    assert "has a classify head, not a tagger; eval ner needs a model fine-tuned with `lmforge finetune ner`" in \
        capsys.readouterr().err


def test_a_decoder_classifier_pools_its_last_token(data, tmp_path):
    result = finetune_classify(model="gpt-nano", train=data["train"], dev=data["dev"], out=str(tmp_path / "run"),
                               source=src(vocab_size=300, set_=["n_layer=2", "d_model=32", "n_head=2"]),
                               options=tiny_options(max_steps=80))
    assert result["dev"]["accuracy"] >= 0.9, result["headline"]
    assert lmforge.load(tmp_path / "run").config.pooling == "last"
    with pytest.raises(ConfigError, match="--pooling cls on a decoder"):
        finetune_classify(model="gpt-nano", train=data["train"], out=str(tmp_path / "x"), pooling="cls",
                          options=tiny_options())


def test_frozen_backbone_stays_unchanged(data, tmp_path):
    run(data, tmp_path / "run", method=way("frozen"), options=tiny_options(max_steps=20))
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["method"]["trainable"] == 32 * 2 + 2
    first = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    last = load_file(str(tmp_path / "run" / "last" / "model.safetensors"))
    torch.manual_seed(1337)
    from lmforge.finetune.runs import load_base
    initial = with_head(load_base("bert-mini", tokenizer=data["tok"], set_=TINY, context=32), "classify",
                        ["neg", "pos"], seed=1337).state_dict()
    for key, value in last.items():
        assert torch.equal(value, initial[key]) != key.startswith("classifier."), key
    assert set(first) == set(last)


def test_pairs_get_segments_and_a_pair_task_is_learned(tmp_path):
    tok = encoder_tokenizer()
    ex = [Example(("the movie", "a plot"), "same", 2)]
    rows, _ = encode_examples(tok, ex, max_length=16, stride=None, labels=["diff", "same"], use_types=True)
    ids = rows.ids[0].tolist()
    assert ids[0] == tok.cls_id and ids.count(tok.sep_id) == 2 and rows.labels == [1]
    assert rows.types[0].tolist() == [0] * (ids.index(tok.sep_id) + 1) + [1] * (len(ids) - ids.index(tok.sep_id) - 1)
    rng = random.Random(0)
    colors = ["red", "blue", "green"]
    rows = []
    for _ in range(300):
        a, b = rng.choice(colors), rng.choice(colors)
        rows.append(("same" if a == b else "diff", a, b))
    train = write_table(tmp_path / "pairs.tsv", rows, ("label", "a", "b"))
    result = finetune_classify(model="bert-mini", train=train, out=str(tmp_path / "run"),
                               text_column="a", text_pair_column="b", pooling="mean",
                               source=src(vocab_size=300, set_=["n_layer=2", "d_model=48", "n_head=4", "dropout=0"]),
                               options=tiny_options(max_steps=200, lr=3e-3, warmup_steps=10))
    assert result["dev"]["accuracy"] >= 0.9, result["headline"]


@pytest.mark.parametrize("pooling", ["cls", "mean", "last"])
def test_pooling_kinds(pooling):
    torch.manual_seed(0)
    model = with_head(build_model(ModelConfig(arch="encoder", vocab_size=50, d_model=8, n_layer=1, n_head=2)),
                      "classify", ["a", "b"], pooling=pooling)
    hidden = torch.arange(2 * 4 * 8, dtype=torch.float).view(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    pooled = model.pool(hidden, mask)
    want = {"cls": hidden[:, 0], "mean": torch.stack([hidden[0].mean(0), hidden[1, :2].mean(0)]),
            "last": torch.stack([hidden[0, 3], hidden[1, 1]])}[pooling]
    torch.testing.assert_close(pooled, want)
    # padding never changes a sequence's logits
    model.eval()
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    short = model(ids[:, :3])
    torch.testing.assert_close(model(ids, torch.tensor([[1, 1, 1, 0, 0]])), short, rtol=1e-5, atol=1e-6)


def test_bert_pooler_is_kept_for_cls_pooling_only():
    bert = build_model(ModelConfig(arch="encoder", vocab_size=50, d_model=8, n_layer=1, n_head=2, pooler=True))
    cls = with_head(bert, "classify", ["a", "b"], pooling="cls")
    torch.testing.assert_close(cls.pooler.weight, bert.pooler.weight)
    assert with_head(bert, "classify", ["a", "b"], pooling="mean").pooler is None


def test_stride_windows_cover_a_long_text_and_average(tmp_path):
    tok = encoder_tokenizer()
    text = " ".join(["the movie was very dull"] * 12)
    rows, cut = encode_examples(tok, [Example((text,), "neg", 2)], max_length=16, stride=4, labels=["neg", "pos"],
                                use_types=False)
    assert cut == 1 and len(rows) > 3 and set(rows.owner) == {0} and max(rows.lengths) <= 16
    rows1, cut1 = encode_examples(tok, [Example((text,), "neg", 2)], max_length=16, stride=None, labels=["neg", "pos"],
                                  use_types=False)
    assert len(rows1) == 1 and cut1 == 1


def test_class_weights_normalise_to_the_weighted_mean():
    rows, _ = encode_examples(encoder_tokenizer(), [Example(("a",), "x", 1), Example(("b",), "y", 2)] * 3,
                              max_length=8, stride=None, labels=["x", "y"], use_types=False)
    weights = torch.tensor([1.0, 3.0])
    obj = TaskObjective("classify", rows, None, 0, 0, 6, weights)
    batch = obj.batch(0, 6)
    assert float(obj.count(batch)) == 3 * 1.0 + 3 * 3.0
    model = with_head(build_model(ModelConfig(arch="encoder", vocab_size=400, d_model=8, n_layer=1, n_head=2)),
                      "classify", ["x", "y"]).eval()
    loss, count = obj.loss(model, batch)
    logits = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(loss / count, torch.nn.functional.cross_entropy(logits, batch["labels"], weight=weights))


def test_early_stopping_on_the_dev_metric(data, tmp_path):
    result = run(data, tmp_path / "run", options=tiny_options(max_steps=400, eval_every=5, patience=2,
                                                              schedule="constant", warmup_steps=0))
    val = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val"]
    assert result["stopped_early"] and result["steps"] < 400
    best = max(r["value"] for r in val)
    first_best = next(r["step"] for r in val if r["value"] == best)
    assert result["best_step"] == first_best and val[-1]["step"] == first_best + 10
    assert all(r["value"] <= best for r in val[val.index(next(r for r in val if r["step"] == first_best)):])


def test_glove_file_sets_the_rows_of_known_words(tmp_path):
    tok = encoder_tokenizer()
    model = with_head(build_model(ModelConfig(arch="encoder", vocab_size=tok.vocab_size, d_model=4, n_layer=1,
                                              n_head=2)), "classify", ["a", "b"])
    model.tokenizer = tok
    before = model.tok_embed.weight.detach().clone()
    (tmp_path / "vec.txt").write_text("3 4\nmovie 1 2 3 4\nplot -1 0 1 0\nzzzunknown 9 9 9 9\n")  # word2vec header
    info = init_embeddings(model, tok, tmp_path / "vec.txt")
    words = {i: tok.decode([i]).strip() for i in range(tok.vocab_size)}
    movie = [i for i, w in words.items() if w == "movie"]  # "Ġmovie" (word-initial after a space), maybe "movie"
    emb = model.tok_embed.weight.detach()
    assert len(movie) >= 1 and info["tokens_set"] == len(movie) + sum(w == "plot" for w in words.values())
    direction = torch.tensor([1.0, 2, 3, 4])
    for i in movie:
        torch.testing.assert_close(emb[i] / emb[i].norm(), direction / direction.norm())
    untouched = [i for i, w in words.items() if w not in ("movie", "plot")]
    assert torch.equal(emb[untouched], before[untouched])
    (tmp_path / "bad.txt").write_text("movie 1 2 3\n")
    with pytest.raises(ConfigError, match="3-dimensional vectors but the model's d_model is 4"):
        init_embeddings(model, tok, tmp_path / "bad.txt")


def test_a_label_that_the_held_out_dev_split_took_entirely_is_still_a_label(data, tmp_path):
    rows = sentiment_rows(40, 3) + [("rare", "an odd one")]
    train = write_table(tmp_path / "train.tsv", rows)
    items = read_examples(train, ["text"], "label")
    seed = next(s for s in range(200) if all(ex.label != "rare" for ex in split_dev(items, 0.1, s)[0]))
    result = finetune_classify(model="bert-mini", train=train, out=str(tmp_path / "run"),
                               source=src(data["tok"], set_=TINY), options=tiny_options(max_steps=2, seed=seed))
    assert lmforge.load(tmp_path / "run").config.labels == ["neg", "pos", "rare"] and result["steps"] == 2


def test_bad_inputs_are_one_line_errors_naming_file_line_or_option(data, tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.tsv is empty"):
        run(data, tmp_path / "a", train=str(empty)) if False else finetune_classify(
            model="bert-mini", train=str(empty), out=str(tmp_path / "a"), options=tiny_options())
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("label\ttext\npos\tgood\tfilm\n")
    with pytest.raises(DataError, match=r"ragged.tsv:2: 3 tab-separated fields but the header has 2"):
        read_examples(ragged, ["text"], "label")
    with pytest.raises(DataError, match=r"no column 'sentence'; its columns are label, text"):
        read_examples(data["train"], ["sentence"], "label")
    dev = write_table(tmp_path / "dev.tsv", [("pos", "good"), ("meh", "fine")])
    with pytest.raises(DataError, match=r"dev.tsv:3: label 'meh' does not occur in the training data"):
        finetune_classify(model="bert-mini", train=data["train"], dev=dev, out=str(tmp_path / "b"),
                          source=src(data["tok"], set_=TINY), options=tiny_options())
    with pytest.raises(ConfigError, match="classification needs an encoder or a decoder model.*is an encoder_decoder"):
        finetune_classify(model="transformer-small", train=data["train"], out=str(tmp_path / "c"),
                          source=src(data["tok"]), options=tiny_options())
    with pytest.raises(ConfigError, match="--lora-targets gate_proj: this model has no linear layer"):
        run(data, tmp_path / "d", method=way("lora", lora_targets="q,gate"))
    with pytest.raises(ConfigError, match="--model nosuch: not a checkpoint"):
        finetune_classify(model="nosuch", train=data["train"], out=str(tmp_path / "e"), options=tiny_options())
    assert not any((tmp_path / n).exists() for n in "bcde")


def test_cli_errors_are_one_line_with_exit_status_2(data, tmp_path, capsys):
    (tmp_path / "empty.tsv").write_text("")
    code = main(["finetune", "classify", "--model", "bert-mini", "--train", str(tmp_path / "empty.tsv"), "--out",
                 str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("lmforge: error: ") and "empty.tsv is empty" in err
    assert main(["finetune", "classify", "--train", data["train"]]) == 2
    assert "needs --model, --train, --out (or --resume RUN); missing --model, --out" in capsys.readouterr().err
    assert main(["finetune", "classify", "--model", "bert-mini", "--train", data["train"], "--out", str(tmp_path / "x"),
                 "--method", "lora", "--lora-rank", "0", "--tokenizer", data["tok"]]) == 2
    assert "--lora-rank=0 is out of range" in capsys.readouterr().err


def _cli(*args):
    return [sys.executable, "-m", "lmforge", *args]


def test_resume_after_sigkill_equals_an_uninterrupted_fine_tune(data, tmp_path):
    args = ["finetune", "classify", "--model", "bert-mini", "--train", data["train"], "--dev", data["dev"],
            "--tokenizer", data["tok"], *sum((["--set", s] for s in TINY), []), "--set", "dropout=0.1",
            "--max-steps", "40", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5", "--eval-every", "10",
            "--save-every", "2", "--log-every", "1", "--threads", "1", "--no-progress", "--max-length", "32"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(_cli(*args, "--out", str(tmp_path / "whole")), check=True, env=env, capture_output=True)
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--out", str(run_dir)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    kills = 0
    for stop_at in (9, 23):
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            rows = read_metrics(run_dir / "metrics.jsonl")
            if rows and rows[-1].get("step", 0) >= stop_at:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        proc = subprocess.Popen(_cli("finetune", "classify", "--resume", str(run_dir), "--no-progress"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert kills >= 1

    def curve(run, split):
        return {r["step"]: r.get("value", r["loss"]) for r in read_metrics(run / "metrics.jsonl") if r["split"] == split}

    assert curve(run_dir, "train") == curve(tmp_path / "whole", "train")
    assert curve(run_dir, "val") == curve(tmp_path / "whole", "val")
    a = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    b = load_file(str(run_dir / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert main(["finetune", "ner", "--resume", str(run_dir)]) == 2  # the wrong command names the right one
