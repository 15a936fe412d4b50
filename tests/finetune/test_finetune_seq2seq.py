import json
import random

import pytest
import sacrebleu

import lmforge
from lmforge.cli import main
from lmforge.errors import ConfigError, DataError
from lmforge.finetune.seq2seq import causal_rows, finetune_seq2seq, translate

from _finetune_data import src, tiny_options

WORDS = "red blue green cat dog sun moon tree fish bird".split()


def write_pairs(root, name, n, seed):
    rng = random.Random(seed)
    src = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) for _ in range(n)]
    (root / f"{name}.src").write_text("".join(s + "\n" for s in src))
    (root / f"{name}.tgt").write_text("".join(s + "\n" for s in src))  # copy task
    return str(root / f"{name}.src"), str(root / f"{name}.tgt")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2s")
    return {"train": write_pairs(root, "train", 400, 0), "dev": write_pairs(root, "dev", 40, 1), "root": root}


@pytest.mark.parametrize("model,sets", [
    ("transformer-small", ["n_layer=1", "n_decoder_layer=1", "d_model=64", "n_head=4", "d_ff=128", "dropout=0",
                           "pos=learned", "embed_scale=false"]),
    ("gpt-nano", ["n_layer=2", "d_model=64", "n_head=4"]),  # decoder-only: source in the prompt, loss on the target
])
def test_seq2seq_from_a_preset_learns_to_copy_and_scores_bleu(pairs, tmp_path, model, sets):
    (train_src, train_tgt), (dev_src, dev_tgt) = pairs["train"], pairs["dev"]
    result = finetune_seq2seq(model=model, train_src=train_src, train_tgt=train_tgt, dev_src=dev_src, dev_tgt=dev_tgt,
                              out=str(tmp_path / "run"), source=src(vocab_size=300, set_=sets),
                              options=tiny_options(max_steps=300, lr=3e-3, eval_every=150, max_length=48))
    assert result["dev"]["bleu"] >= 80, result["headline"]
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    refs = [s["reference"] for s in samples]
    assert result["dev"]["bleu"] == sacrebleu.corpus_bleu([s["output"] for s in samples], [refs]).score
    net = lmforge.load(tmp_path / "run")
    assert translate(net, [samples[0]["source"]], max_length=48) == [samples[0]["output"]]  # greedy, as at the end
    assert main(["eval", "bleu", str(tmp_path / "run"), "--src", dev_src, "--ref", dev_tgt, "--num-beams", "2",
                 "--save-outputs", str(tmp_path / "hyp.txt")]) == 0
    assert main(["eval", "bleu", "--hyp", str(tmp_path / "hyp.txt"), "--ref", dev_tgt]) == 0
    assert main(["predict", str(tmp_path / "run"), "--input", dev_src, "--out", str(tmp_path / "p.txt")]) == 0
    assert len((tmp_path / "p.txt").read_text().splitlines()) == 40


def test_decoder_prompt_rows_put_the_loss_on_the_target_only():
    tok = lmforge.train_tokenizer(["sun moon tree => tree moon sun"] * 20, "bpe", 300, "decoder", progress=False)
    rows, cut = causal_rows(tok, [("sun moon", "moon sun")], "{source} =>", tok.eos_id, 32)
    ids, mask = rows.ids[0].tolist(), rows.labels[0].tolist()
    prompt = tok.encode("sun moon =>", add_special_tokens=True)
    target = tok.encode("moon sun", add_special_tokens=False) + [tok.eos_id]
    assert ids == prompt + target and mask == [0] * len(prompt) + [1] * len(target) and cut == 0
    rows, cut = causal_rows(tok, [("sun " * 40, "moon")], "{source} =>", tok.eos_id, 16)
    assert cut == 1 and len(rows.ids[0]) == 16 and rows.ids[0][0] == tok.bos_id  # the prompt is cut, BOS kept


def test_seq2seq_bad_inputs(pairs, tmp_path):
    (train_src, _), _ = pairs["train"], pairs["dev"]
    short = tmp_path / "short.tgt"
    short.write_text("a\nb\n")
    with pytest.raises(DataError, match="train.src has 400 lines but .*short.tgt has 2"):
        finetune_seq2seq(model="transformer-small", train_src=train_src, train_tgt=str(short), out=str(tmp_path / "a"),
                         options=tiny_options())
    with pytest.raises(ConfigError, match="seq2seq needs an encoder_decoder or a decoder model.*is an encoder"):
        finetune_seq2seq(model="bert-mini", train_src=train_src, train_tgt=train_src, out=str(tmp_path / "b"),
                         source=src(vocab_size=300), options=tiny_options())
    with pytest.raises(ConfigError, match="--dev-src and --dev-tgt go together"):
        finetune_seq2seq(model="transformer-small", train_src=train_src, train_tgt=train_src, dev_src=train_src,
                         out=str(tmp_path / "c"), options=tiny_options())
