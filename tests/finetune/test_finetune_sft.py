import json
import random

import pytest

import lmforge
from lmforge.cli import main
from lmforge.errors import ConfigError, DataError
from lmforge.finetune.data import read_chats
from lmforge.finetune.evaluate import eval_zero_shot, label_names
from lmforge.finetune.sft import encode_chat, finetune_sft
from lmforge.train.logs import read_metrics

from _finetune_data import src, tiny_options, write_table

NAMES = "anna bob carla dan eva frank gina hugo".split()


def chats(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name = rng.choice(NAMES)
        out.append({"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": f"greet {name}"},
                                 {"role": "assistant", "content": f"hello {name}!"}]})
    return out


def write_chats(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_the_loss_mask_covers_assistant_turns_and_their_end_token_only():
    tok = lmforge.train_tokenizer(["greet anna", "hello anna!", "Be brief."] * 20, "bpe", 300, "decoder", progress=False)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "greet anna"},
                {"role": "assistant", "content": "hello anna!"}, {"role": "user", "content": "again"},
                {"role": "assistant", "content": "hello!"}]
    ids, mask = encode_chat(tok, messages, 200)
    learned = [tok.decode(ids[i:i + 1], skip_special_tokens=False) for i in range(len(ids)) if mask[i]]
    assert "".join(learned) == "hello anna!<|im_end|>hello!<|im_end|>"
    assert ids[0] == tok.bos_id and not mask[0]
    ids, mask = encode_chat(tok, messages, 20)
    assert len(ids) == 20


def test_sft_lowers_the_assistant_loss_and_follows_the_template(tmp_path, capsys):
    train = write_chats(tmp_path / "train.jsonl", chats(300, 0))
    dev = write_chats(tmp_path / "dev.jsonl", chats(20, 1))
    result = finetune_sft(model="gpt-nano", train=train, dev=dev, out=str(tmp_path / "run"), samples=8,
                          source=src(vocab_size=300, set_=["n_layer=2", "d_model=64", "n_head=4"]),
                          options=tiny_options(max_steps=400, lr=3e-3, eval_every=100, max_length=64))
    val = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "val"]
    assert val[-1] < 0.5 * val[0] and abs(result["dev_loss"] - min(val)) < 1e-4  # the best checkpoint's dev loss
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert result["template_following"] == 1.0 and all(s["ended_turn"] for s in samples)
    # (8 of 8 with every attention kernel since the sample prompts stay whole; 3-6 when their start was cut)
    assert sum(s["reply"] == s["reference"] for s in samples) >= 7, samples
    (tmp_path / "q.txt").write_text("greet eva\n")
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "q.txt"), "--out",
                 str(tmp_path / "a.jsonl")]) == 0
    answer = json.loads((tmp_path / "a.jsonl").read_text())
    assert answer["messages"][-1] == {"role": "assistant", "content": "hello eva!"} and answer["ended_turn"]
    # a conversation with nothing to answer is a one-line error naming file and line
    (tmp_path / "q.jsonl").write_text(json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}) + "\n")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "run"), "--input", str(tmp_path / "q.jsonl"), "--out",
                 str(tmp_path / "b.jsonl")]) == 2
    assert "q.jsonl:1: the conversation has only assistant messages" in capsys.readouterr().err
    assert not (tmp_path / "b.jsonl").exists()


def test_sft_bad_inputs(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: every message needs a role \(system, user, assistant, tool\)"):
        read_chats(bad)
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match=r"none.jsonl:1: the conversation has no assistant message"):
        read_chats(none)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": [}\n')
    with pytest.raises(DataError, match=r"broken.jsonl:1: invalid JSON"):
        read_chats(broken)
    good = write_chats(tmp_path / "good.jsonl", chats(10, 0))
    with pytest.raises(ConfigError, match="chat SFT needs a decoder model.*bert-mini is an encoder"):
        finetune_sft(model="bert-mini", train=good, out=str(tmp_path / "x"), source=src(vocab_size=300),
                     options=tiny_options())


def test_zero_shot_picks_the_right_label_on_an_easy_case(tmp_path):
    from lmforge.data.prepare import prepare_corpus
    from lmforge.train.options import TrainConfig
    from lmforge.train.pretrain import pretrain

    rng = random.Random(0)
    good, bad = ["great", "superb", "lovely"], ["awful", "dull", "poor"]
    lines = []
    for _ in range(400):
        y = rng.random() < 0.5
        lines.append(f"review: a {rng.choice(good if y else bad)} film\nanswer: {'positive' if y else 'negative'}")
    (tmp_path / "corpus.txt").write_text("\n\n".join(lines))
    tok = lmforge.train_tokenizer(lines, "bpe", 300, "decoder", progress=False)
    prepare_corpus([str(tmp_path / "corpus.txt")], tok, tmp_path / "data", doc_split="blank", progress=False)
    pretrain(data=str(tmp_path / "data"), out=str(tmp_path / "lm"), model="gpt-nano",
             set_=["n_layer=2", "d_model=64", "n_head=4", f"vocab_size={tok.vocab_size}"],
             train=TrainConfig(max_steps=150, batch_size=16, context=32, lr=3e-3, warmup_steps=10, eval_every=0,
                               threads=1, progress=False))
    test = write_table(tmp_path / "test.tsv", [("1", "a lovely film"), ("0", "a dull film"), ("1", "a great film"),
                                               ("0", "a poor film")])
    report = eval_zero_shot(str(tmp_path / "lm"), data=test, labels="negative,positive", template="review: {input}\n"
                            "answer: {output}")
    assert report["accuracy"] == 1.0 and report["majority_accuracy"] == 0.5
    few = eval_zero_shot(str(tmp_path / "lm"), data=test, labels="0=negative,1=positive", shots=2,
                         template="review: {input}\nanswer: {output}")
    # (the 2-shot prompt, 38 tokens, is cut to this model's 32-token context, and it joins examples by a blank line,
    # which the model never saw inside a document: its 2-shot accuracy is near chance and moves with rounding,
    # 0.5-1.0 over training seeds and attention kernels; the prompt itself is tested in
    # tests/generate/test_generate_prompting.py)
    assert few["shots"] == 2 and few["accuracy"] >= 0.5 and few["majority_accuracy"] == 0.5
    assert label_names("negative,positive", ["0", "1"]) == {"0": "negative", "1": "positive"}
    with pytest.raises(ConfigError, match="does not cover the data's labels"):
        label_names("negative,positive", ["neg", "pos"])
