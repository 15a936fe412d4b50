import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmforge
from lmforge import io as lio
from lmforge.cli import main
from lmforge.data.prepare import prepare_corpus, prepare_pairs
from lmforge.errors import ConfigError, LmforgeError
from lmforge.tokenizer import train_tokenizer
from lmforge.train.logs import read_metrics
from lmforge.train.options import TrainConfig
from lmforge.train.pretrain import pretrain

WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in tall green trees".split()
rng = random.Random(0)
DOCS = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))) + "." for _ in range(400)]
TINY = ["n_layer=2", "d_model=32", "n_head=2"]


def tiny_train(**kw) -> TrainConfig:
    base = dict(max_steps=30, batch_size=4, context=32, lr=3e-3, warmup_steps=5, eval_every=10, eval_batches=4,
                save_every=10, log_every=1, threads=1, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    out = {}
    for arch in ("decoder", "encoder", "encoder_decoder"):
        tok = train_tokenizer(DOCS, "bpe", 300, arch, progress=False)
        if arch == "encoder_decoder":
            pairs = [(d, " ".join(reversed(d.split()))) for d in DOCS]
            prepare_pairs(iter(pairs), tok, root / arch, progress=False)
        else:
            prepare_corpus([str(src)], tok, root / arch, progress=False)
        out[arch] = root / arch
    return out


def losses(run: Path, split: str = "train") -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r.get("split") == split}


@pytest.mark.parametrize("arch,model,extra", [
    ("decoder", "gpt-mini", {}),
    ("decoder", "llama-tiny", {}),
    ("encoder", "bert-mini", {}),
    ("encoder", "bert-mini", {"nsp": True}),
    ("encoder_decoder", "transformer-small", {"label_smoothing": 0.1}),
])
def test_loss_falls_for_every_objective(corpus, tmp_path, arch, model, extra):
    train = tiny_train(max_steps=40, lr=5e-3, **extra)
    sets = TINY + (["n_kv_head=1"] if model == "llama-tiny" else [])
    summary = pretrain(data=str(corpus[arch]), out=str(tmp_path / "run"), model=model, set_=sets, train=train)
    curve = losses(tmp_path / "run")
    first = sum(curve[s] for s in range(1, 6)) / 5
    last = sum(curve[s] for s in range(36, 41)) / 5
    assert last < 0.8 * first, (first, last)
    val = losses(tmp_path / "run", "val")
    assert val[40] < val[10] and summary["val_loss"] == val[40]
    for name in ("loss.png", "metrics.csv", "summary.json", "best/model.safetensors", "last/state/trainer_state.json"):
        assert (tmp_path / "run" / name).exists(), name
    assert (tmp_path / "run" / "tensorboard").is_dir()
    loaded = lmforge.load(tmp_path / "run")
    assert loaded.tokenizer is not None and loaded.config.arch == arch


@pytest.mark.parametrize("arch,model", [("decoder", "gpt-mini"), ("encoder", "bert-mini")])
def test_gradient_accumulation_gives_the_gradient_of_one_big_batch(corpus, tmp_path, arch, model):
    """Masked LM has a different number of targets in each micro-batch: a per-micro-batch mean would differ."""
    from lmforge.data.batches import PreparedData
    from lmforge.train.objectives import make_objective
    from lmforge.train.runs import build_config
    from lmforge.train.trainer import Trainer

    data = PreparedData(corpus[arch])
    tok = data.tokenizer()
    config = build_config(model, {"n_layer": 2, "d_model": 32, "n_head": 2}, tok, 32, "clm")
    grads, losses_seen = {}, {}
    for name, bs, accum in (("big", 8, 1), ("accum", 4, 2), ("accum8", 1, 8)):
        train = tiny_train(batch_size=bs, grad_accum=accum, dtype="fp32")
        torch.manual_seed(0)
        net = lmforge.build_model(config)
        objective = make_objective("clm" if arch == "decoder" else "mlm", data, tok, 32, train.seed)
        trainer = Trainer(net, objective, train, tmp_path / name, tok)
        trainer.model.eval()  # no dropout: the same function for every split of the batch
        loss_sum, count, _ = trainer.accumulate_gradients(step=3)
        losses_seen[name] = float(loss_sum / count)
        grads[name] = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    counts = [int(objective.count(objective.batch(24 + i, 1))) for i in range(8)]
    if arch == "encoder":
        assert len(set(counts)) > 1  # micro-batches really differ in their number of targets
    for name in ("accum", "accum8"):
        assert abs(losses_seen[name] - losses_seen["big"]) < 1e-5
        for key, grad in grads["big"].items():
            torch.testing.assert_close(grads[name][key], grad, rtol=1e-4, atol=1e-7)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lmforge", *args]


def _wait_for_step(run: Path, proc: subprocess.Popen, step: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return
        rows = read_metrics(run / "metrics.jsonl")
        if rows and rows[-1].get("step", 0) >= step:
            return
        time.sleep(0.02)
    raise AssertionError("training did not progress")


def test_resume_after_sigkill_gives_exactly_the_losses_of_an_uninterrupted_run(corpus, tmp_path):
    args = ["pretrain", "--model", "gpt-mini", "--data", str(corpus["decoder"]), *sum((["--set", s] for s in TINY), []),
            "--max-steps", "60", "--batch-size", "4", "--context", "32", "--lr", "3e-3", "--warmup-steps", "5",
            "--eval-every", "15", "--eval-batches", "4", "--save-every", "3", "--log-every", "1", "--threads", "1",
            "--no-progress", "--set", "dropout=0.1"]  # dropout: the RNG state must resume too
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(_cli(*args, "--out", str(tmp_path / "whole")), check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args, "--out", str(run)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kills = 0
    for stop_at in (13, 31, 47):  # kill it three times at different moments, resume after each
        _wait_for_step(run, proc, stop_at)
        if proc.poll() is None:
            time.sleep(random.Random(stop_at).random() * 0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        # whatever moment the kill hit, the latest checkpoint is complete and loads
        assert lmforge.load(run / "last").config.n_layer == 2
        proc = subprocess.Popen(_cli("pretrain", "--resume", str(run), "--no-progress"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert kills >= 2
    whole, resumed = losses(tmp_path / "whole"), losses(run)
    assert sorted(resumed) == list(range(1, 61))
    assert resumed == whole  # bit-for-bit the same losses
    assert losses(run, "val") == losses(tmp_path / "whole", "val")
    a = load_file(str(tmp_path / "whole" / "last" / "model.safetensors"))
    b = load_file(str(run / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_saves_the_step_and_the_run_resumes_exactly(corpus, tmp_path):
    """SIGINT (Ctrl-C) with --save-every far away: the loop finishes its step, saves last/ and exits 130; --resume
    then gives exactly the losses of an uninterrupted run."""
    args = ["pretrain", "--model", "gpt-mini", "--data", str(corpus["decoder"]), *sum((["--set", s] for s in TINY), []),
            "--max-steps", "40", "--batch-size", "4", "--context", "32", "--lr", "3e-3", "--warmup-steps", "5",
            "--eval-every", "0", "--eval-batches", "4", "--save-every", "1000", "--log-every", "1", "--threads", "1",
            "--no-progress"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(_cli(*args, "--out", str(tmp_path / "whole")), check=True, env=env, capture_output=True)
    run = tmp_path / "interrupted"
    proc = subprocess.Popen(_cli(*args, "--out", str(run)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_step(run, proc, 12)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    state = json.loads((run / "last" / "state" / "trainer_state.json").read_text())["state"]
    assert state["step"] >= 12 and f"interrupted at step {state['step']}" in out.decode()
    subprocess.run(_cli("pretrain", "--resume", str(run), "--no-progress"), check=True, env=env, capture_output=True)
    assert losses(run) == losses(tmp_path / "whole")


def test_atomic_dir_never_leaves_a_torn_checkpoint(tmp_path):
    target = tmp_path / "last"
    with lio.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError):
        with lio.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash while writing")
    scratch, previous = lio.scratch_paths(target)
    assert (target / "a.txt").read_text() == "v1" and not scratch.exists()
    # a crash between the two renames leaves only the previous copy: readers recover it
    os.replace(target, previous)
    assert lio.recover_dir(target) == target and (target / "a.txt").read_text() == "v1"


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "x.json"
    lio.write_json(path, {"v": 1})
    with pytest.raises(ValueError):
        with lio.atomic_write(path) as f:
            f.write('{"v": 2')
            raise ValueError("boom")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_early_stopping_and_max_time(corpus, tmp_path):
    train = tiny_train(max_steps=400, lr=3e-2, warmup_steps=0, eval_every=5, patience=2, schedule="constant")
    summary = pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "es"), model="gpt-mini", set_=TINY, train=train)
    assert summary["stopped_early"] and summary["steps"] < 400
    assert summary["best_step"] == summary["steps"] - 10
    timed = pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "t"), model="gpt-mini", set_=TINY,
                     train=tiny_train(max_steps=100000, max_time=2, eval_every=0))
    assert timed["steps"] < 100000 and timed["seconds"] < 30


def test_continual_training_from_a_checkpoint_and_tokenizer_mismatch(corpus, tmp_path):
    pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "a"), model="gpt-mini", set_=TINY,
             train=tiny_train(max_steps=20))
    first = losses(tmp_path / "a")
    pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "b"), init=str(tmp_path / "a"),
             train=tiny_train(max_steps=5))
    assert losses(tmp_path / "b")[1] < first[1] - 0.5  # starts from the trained weights, not from scratch
    with pytest.raises(LmforgeError, match="prepared with another tokenizer"):
        pretrain(data=str(corpus["encoder"]), out=str(tmp_path / "c"), init=str(tmp_path / "a"),
                 train=tiny_train(max_steps=5))


def test_an_output_folder_with_another_run_is_never_overwritten(corpus, tmp_path):
    pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "run"), model="gpt-mini", set_=TINY,
             train=tiny_train(max_steps=5))
    before = (tmp_path / "run" / "last" / "model.safetensors").read_bytes()
    with pytest.raises(LmforgeError, match=r"already holds a run.*--resume"):
        pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "run"), model="bert-mini", set_=TINY,
                 train=tiny_train(max_steps=5))
    assert (tmp_path / "run" / "last" / "model.safetensors").read_bytes() == before


def test_objective_and_architecture_must_agree(corpus, tmp_path):
    with pytest.raises(ConfigError, match="objective mlm needs an encoder model"):
        pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "x"), model="gpt-mini", objective="mlm",
                 set_=TINY, train=tiny_train())
    with pytest.raises(LmforgeError, match="mask token"):
        pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "y"), model="bert-mini", set_=TINY, train=tiny_train())
    with pytest.raises(LmforgeError, match="not source/target pairs"):
        pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "z"), model="transformer-small", set_=TINY,
                 train=tiny_train())


def test_bad_training_options_are_clear_errors():
    with pytest.raises(ConfigError, match="--batch-size=0 must be >= 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="--min-lr"):
        TrainConfig(lr=1e-3, min_lr=1e-2)


def test_eval_perplexity_matches_the_trainers_validation_loss(corpus, tmp_path, capsys):
    summary = pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "run"), model="gpt-mini", set_=TINY,
                       train=tiny_train(max_steps=20, eval_batches=0, dtype="fp32"))  # the eval command's dtype
    capsys.readouterr()  # the training's own output
    code = main(["eval", "perplexity", str(tmp_path / "run" / "last"), "--data", str(corpus["decoder"]),
                 "--batch-size", "4", "--context", "32"])
    assert code == 0
    out = capsys.readouterr().out
    loss = float(out.split("loss ")[1].split()[0])
    assert abs(loss - summary["val_loss"]) < 1e-4
    # the data of another tokenizer is refused
    assert main(["eval", "perplexity", str(tmp_path / "run"), "--data", str(corpus["encoder"])]) == 2
    assert "prepared with another tokenizer" in capsys.readouterr().err


def test_torchrun_two_processes_train_like_one_process_with_the_whole_batch(corpus, tmp_path):
    """Two gloo processes with batch 4 each see the samples one process sees with batch 8 (data sharding),
    average their gradients (DDP) and only rank 0 writes: the loss curves agree."""
    common = ["pretrain", "--model", "bert-mini", "--data", str(corpus["encoder"]), *sum((["--set", s] for s in TINY), []),
              "--max-steps", "8", "--context", "32", "--lr", "3e-3", "--warmup-steps", "2", "--eval-every", "4",
              "--eval-batches", "2", "--save-every", "4", "--log-every", "1", "--threads", "1", "--dtype", "fp32",
              "--no-progress", "--set", "dropout=0.0"]
    subprocess.run(_cli(*common, "--batch-size", "8", "--out", str(tmp_path / "one")), check=True, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
                "-m", "lmforge", *common, "--batch-size", "4", "--out", str(tmp_path / "two")]
    done = subprocess.run(torchrun, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(two) == list(range(1, 9))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])
    a = load_file(str(tmp_path / "one" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "last" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-5)


def test_masked_lm_training_follows_transformers_bert_step_for_step(corpus, tmp_path):
    """The same weights (through lmforge.convert), the same masked batches, the same AdamW: lmforge's encoder and
    transformers' BertForMaskedLM give the same losses step after step (forward, backward and head agree)."""
    transformers = pytest.importorskip("transformers")
    from lmforge.data.batches import PreparedData
    from lmforge.train.objectives import MaskedLM

    data = PreparedData(corpus["encoder"])
    tok = data.tokenizer()
    objective = MaskedLM(data.tokens("train"), data.tokens("val"), 32, 7, tok)
    torch.manual_seed(0)
    hf = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0))
    hf.save_pretrained(tmp_path / "hf")
    ours = lmforge.convert.from_hf(tmp_path / "hf", tokenizer=False).train()
    runs = {}
    for name, model, loss_of in (
        ("transformers", hf.train(), lambda b: hf(input_ids=b["input_ids"], labels=b["labels"]).loss),
        ("lmforge", ours, lambda b: objective.loss(ours, b)[0] / objective.count(b)),
    ):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        runs[name] = []
        for step in range(6):
            loss = loss_of(objective.batch(step * 8, 8))
            loss.backward()
            opt.step()
            opt.zero_grad()
            runs[name].append(loss.item())
    assert runs["lmforge"][-1] < runs["lmforge"][0] - 0.1
    for a, b in zip(runs["lmforge"], runs["transformers"]):
        assert abs(a - b) < 2e-4, (runs["lmforge"], runs["transformers"])
