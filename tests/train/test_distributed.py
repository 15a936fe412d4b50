"""Past one process: FSDP2 on two gloo processes trains like one process with the whole batch (decoder and
encoder), activation checkpointing changes nothing, a sharded checkpoint saved by 2 ranks resumes on 1 and on 2
and loads whole in one process, streamed JSONL resumed twice gives the batches of an uninterrupted run on 1 and 2
ranks (and across them), and `prepare --shard-tokens` trains like unsharded token files."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lmforge
from lmforge.cli import main
from lmforge.data.batches import PreparedData
from lmforge.data.prepare import prepare_corpus
from lmforge.data.stream import JsonlStream, StreamWindows, stream_files
from lmforge.errors import LmforgeError
from lmforge.tokenizer import train_tokenizer
from lmforge.train.logs import read_metrics
from lmforge.train.options import TrainConfig
from lmforge.train.pretrain import pretrain

WORDS = "the cat sat on a mat and the dog ran to the park while birds sang in tall green trees".split()
rng = random.Random(1)
DOCS = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(300)]
TINY = ["--set", "n_layer=2", "--set", "d_model=32", "--set", "n_head=2", "--set", "dropout=0.0"]
COMMON = ["--context", "16", "--lr", "3e-3", "--warmup-steps", "0", "--schedule", "constant", "--eval-every", "4",
          "--eval-batches", "2", "--save-every", "4", "--log-every", "1", "--threads", "1", "--dtype", "fp32",
          "--no-progress"]
PORTS = iter(range(29631, 29700))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    src = root / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    (root / "val.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:20]))
    (root / "small.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS[:12]))
    out = {"jsonl": src, "val": root / "val.jsonl", "small": root / "small.jsonl"}
    for arch in ("decoder", "encoder"):
        tok = train_tokenizer(DOCS, "bpe", 300, arch, progress=False)
        prepare_corpus([str(src)], tok, root / arch, progress=False)
        out[arch] = root / arch
        tok.save(root / f"tok-{arch}")
        out[f"tok-{arch}"] = root / f"tok-{arch}"
    return out


def losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if r.get("split") == "train"}


def one(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "lmforge", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def two(*args: str) -> None:
    """The same command on two gloo processes under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(next(PORTS)),
           "-m", "lmforge", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def close(a: dict[int, float], b: dict[int, float], steps, tol: float = 1e-4) -> None:
    for step in steps:
        assert abs(a[step] - b[step]) < tol, (step, a[step], b[step])


def test_fsdp_on_two_ranks_trains_like_one_process_and_its_sharded_checkpoint_resumes_on_one_and_two(corpus, tmp_path):
    """A decoder: 2 FSDP ranks with batch 4 give the losses of 1 process with batch 8; the run stopped at step 4
    (a sharded checkpoint: last/model.dcp and state/optimizer.dcp, written by both ranks) resumes on 1 process with
    batch 8 and on 2 ranks with the next losses of the uninterrupted run, and loads whole in one process."""
    base = ["pretrain", "--model", "gpt-mini", "--data", str(corpus["decoder"]), *TINY, *COMMON]
    one(*base, "--max-steps", "8", "--batch-size", "8", "--out", str(tmp_path / "ref"))
    two(*base, "--max-steps", "4", "--batch-size", "4", "--strategy", "fsdp", "--out", str(tmp_path / "fsdp"))
    ref, half = losses(tmp_path / "ref"), losses(tmp_path / "fsdp")
    assert sorted(half) == [1, 2, 3, 4]
    close(ref, half, range(1, 5))

    last = tmp_path / "fsdp" / "last"
    assert (last / "model.dcp").is_dir() and not (last / "model.safetensors").exists()
    assert (last / "state" / "optimizer.dcp").is_dir()
    assert json.loads((last / "state" / "trainer_state.json").read_text())["world_size"] == 2
    # one process reads the 2-rank shards whole: the same logits as the 1-process run's step-4 checkpoint
    whole = lmforge.load(last)
    ids = torch.randint(0, whole.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    one(*base, "--max-steps", "4", "--batch-size", "8", "--out", str(tmp_path / "ref4"))
    with torch.no_grad():
        torch.testing.assert_close(whole(ids), lmforge.load(tmp_path / "ref4" / "last")(ids), rtol=1e-3, atol=1e-4)
        assert not torch.allclose(whole(ids), lmforge.load(tmp_path / "ref" / "last")(ids), atol=1e-3)  # step 8

    shutil.copytree(tmp_path / "fsdp", tmp_path / "fsdp-on-one")
    one("pretrain", "--resume", str(tmp_path / "fsdp-on-one"), "--max-steps", "8", "--batch-size", "8")
    two("pretrain", "--resume", str(tmp_path / "fsdp"), "--max-steps", "8")
    close(ref, losses(tmp_path / "fsdp-on-one"), range(5, 9))
    close(ref, losses(tmp_path / "fsdp"), range(5, 9))


def test_fsdp_with_activation_checkpointing_trains_an_encoder_like_one_process(corpus, tmp_path):
    base = ["pretrain", "--model", "bert-mini", "--data", str(corpus["encoder"]), *TINY, *COMMON, "--max-steps", "4"]
    one(*base, "--batch-size", "8", "--out", str(tmp_path / "ref"))
    two(*base, "--batch-size", "4", "--strategy", "fsdp", "--activation-checkpointing", "--out", str(tmp_path / "fsdp"))
    close(losses(tmp_path / "ref"), losses(tmp_path / "fsdp"), range(1, 5))


def tiny_train(**kw) -> TrainConfig:
    base = dict(max_steps=6, batch_size=4, context=16, lr=3e-3, warmup_steps=0, eval_every=3, eval_batches=2,
                save_every=3, log_every=1, threads=1, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("model,arch", [("gpt-mini", "decoder"), ("bert-mini", "encoder")])
def test_activation_checkpointing_gives_the_same_losses_with_dropout(corpus, tmp_path, model, arch):
    """Recomputed blocks replay the same dropout masks: losses equal, step for step."""
    sets = ["n_layer=2", "d_model=32", "n_head=2", "dropout=0.2"]
    pretrain(data=str(corpus[arch]), out=str(tmp_path / "plain"), model=model, set_=sets, train=tiny_train())
    pretrain(data=str(corpus[arch]), out=str(tmp_path / "ac"), model=model, set_=sets,
             train=tiny_train(activation_checkpointing=True))
    a, b = losses(tmp_path / "plain"), losses(tmp_path / "ac")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    close(a, b, a, tol=1e-6)


def _stream(corpus, shards: int) -> JsonlStream:
    tok = lmforge.Tokenizer.load(corpus["tok-decoder"])
    return JsonlStream(stream_files(corpus["small"]), tok, shards)  # read again within the test's steps


def _batches(corpus, world: int, shards: int, steps: range, state: dict | None, seen: int):
    """The windows each rank of `world` reads for `steps` (rank r takes sequences r*S/world... of each step), from
    fresh readers loaded with `state`; returns the batches and the merged positions after the last step."""
    per = shards // world
    ranks = [StreamWindows(_stream(corpus, shards), 16) for _ in range(world)]
    for windows in ranks:
        windows.load(state, seen)
    out = []
    for step in steps:
        out.append(torch.cat([w.windows(step * shards + r * per, per) for r, w in enumerate(ranks)]))
    merged: dict = {}
    for windows in ranks:
        merged.update(windows.state())
    return out, merged


@pytest.mark.parametrize("worlds", [(1, 1, 1), (2, 2, 2), (2, 1, 2)])
def test_a_stream_resumed_twice_gives_the_batches_of_an_uninterrupted_run(corpus, worlds):
    """Resume at step 5 and again at step 9 (each resume reads positions only: fresh readers, no replay), on 1
    rank, 2 ranks and 2 -> 1 -> 2: the batches are exactly those of one uninterrupted pass. The corpus is read
    more than once (its ranges start over), so passes are covered."""
    shards = 4
    whole, _ = _batches(corpus, 1, shards, range(0, 14), None, 0)
    first, state = _batches(corpus, worlds[0], shards, range(0, 5), None, 0)
    second, state = _batches(corpus, worlds[1], shards, range(5, 9), state, 5 * shards)
    third, end = _batches(corpus, worlds[2], shards, range(9, 14), state, 9 * shards)
    resumed = first + second + third
    for step, (a, b) in enumerate(zip(whole, resumed)):
        assert torch.equal(a, b), step
    assert min(int(position["pass"]) for position in end.values()) >= 1, "the corpus was never read again"
    # and the position check catches a state saved at another step
    with pytest.raises(LmforgeError, match="window"):
        StreamWindows(_stream(corpus, shards), 16).load(state, 7 * shards)


def test_a_streamed_run_resumed_twice_on_two_one_and_two_processes_equals_an_uninterrupted_run(corpus, tmp_path):
    stream = ["--data", str(corpus["jsonl"]), "--tokenizer", str(corpus["tok-decoder"]), "--val-data", str(corpus["val"])]
    base = ["pretrain", "--model", "gpt-mini", *stream, *TINY, *COMMON]
    one(*base, "--max-steps", "8", "--batch-size", "4", "--out", str(tmp_path / "ref"))
    two(*base, "--max-steps", "3", "--batch-size", "2", "--strategy", "fsdp", "--save-every", "3",
        "--out", str(tmp_path / "run"))
    one("pretrain", "--resume", str(tmp_path / "run"), "--max-steps", "6", "--batch-size", "4")
    two("pretrain", "--resume", str(tmp_path / "run"), "--max-steps", "8", "--batch-size", "2")
    ref, run = losses(tmp_path / "ref"), losses(tmp_path / "run")
    assert sorted(run) == list(range(1, 9))
    close(ref, run, range(1, 9))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["stream"]["shards"] == 4


def test_sharded_token_files_train_like_one_file(corpus, tmp_path):
    tok = lmforge.Tokenizer.load(corpus["tok-decoder"])
    prepare_corpus([str(corpus["jsonl"])], tok, tmp_path / "sharded", progress=False, shard_tokens=1024)
    manifest = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert len(manifest["splits"]["train"]["files"]) > 1
    a, b = PreparedData(corpus["decoder"]), PreparedData(tmp_path / "sharded")
    for split in ("train", "val"):
        assert np.array_equal(np.asarray(a.tokens(split)), np.asarray(b.tokens(split)))
    sets = ["n_layer=2", "d_model=32", "n_head=2"]
    pretrain(data=str(corpus["decoder"]), out=str(tmp_path / "r1"), model="gpt-mini", set_=sets, train=tiny_train())
    pretrain(data=str(tmp_path / "sharded"), out=str(tmp_path / "r2"), model="gpt-mini", set_=sets, train=tiny_train())
    assert losses(tmp_path / "r1") == losses(tmp_path / "r2")


@pytest.mark.parametrize("case,extra,message", [
    ("no-tokenizer", ["--data", "{dir}"], "needs --tokenizer"),
    ("epochs", ["--data", "{jsonl}", "--tokenizer", "{tok}", "--epochs", "1"], "--epochs needs data of known size"),
    ("nsp", ["--data", "{jsonl}", "--tokenizer", "{enc}", "--model", "bert-mini", "--nsp"], "stream"),
    ("tokenizer-for-prepared", ["--data", "{prepared}", "--tokenizer", "{tok}"], "for streamed JSONL"),
    ("fp16-fsdp", ["--data", "{prepared}", "--strategy", "fsdp", "--dtype", "fp16"], "fp16"),
])
def test_bad_distributed_and_stream_options_are_one_line_errors(corpus, tmp_path, capsys, case, extra, message):
    folder = tmp_path / "jsonl-folder"
    folder.mkdir()
    shutil.copy(corpus["jsonl"], folder / "a.jsonl")
    fill = {"dir": str(folder), "jsonl": str(corpus["jsonl"]), "tok": str(corpus["tok-decoder"]), "enc": str(corpus["tok-encoder"]),
            "prepared": str(corpus["decoder"])}
    args = [a.format(**fill) for a in extra]
    model = [] if "--model" in args else ["--model", "gpt-mini"]
    steps = [] if "--epochs" in args else ["--max-steps", "2"]
    code = main(["pretrain", *model, *args, "--out", str(tmp_path / "out"), *steps, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_resume_must_keep_the_samples_per_step_and_a_damaged_stream_entry_is_named(corpus, tmp_path, capsys):
    stream = ["--data", str(corpus["jsonl"]), "--tokenizer", str(corpus["tok-decoder"])]
    run = tmp_path / "run"
    assert main(["pretrain", "--model", "gpt-mini", *stream, *TINY, *COMMON, "--max-steps", "2", "--save-every", "2",
                 "--batch-size", "4", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "--max-steps", "4", "--batch-size", "3"]) == 2
    err = capsys.readouterr().err
    assert "4 sequences per step" in err and "--batch-size" in err and err.strip().count("\n") == 0, err
    info = json.loads((run / "run.json").read_text())
    info["stream"] = {"shards": 4}
    (run / "run.json").write_text(json.dumps(info))
    assert main(["pretrain", "--resume", str(run), "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "run.json" in err and "stream" in err and err.strip().count("\n") == 0, err


def test_info_estimates_per_device_memory_close_to_what_autograd_keeps(capsys):
    """`lmforge info --world-size N --strategy fsdp --activation-checkpointing`: the training state is split N ways,
    recomputation shrinks the activations, and the activation estimate (bf16) is within 25% of the fp32 tensors
    autograd really saves for the backward pass (halved), for a GPT-2-style and a Llama-style block."""
    from dataclasses import replace

    from lmforge import ModelConfig, build_model
    from lmforge.commands.info import analyse, training_memory
    from lmforge.config import PRESETS

    for name in ("gpt-mini", "llama-tiny"):
        config = replace(ModelConfig(**PRESETS[name]), dropout=0.0, n_layer=2)
        model = build_model(config).train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(torch.randint(0, config.vocab_size, (2, 128)))
        r = analyse(config, 128, 2)
        plain, recompute = training_memory(config, r), training_memory(config, r, activation_checkpointing=True)
        assert 0.75 < plain["activations"] / (sum(seen.values()) / 2) < 1.25, name
        assert recompute["activations"] < plain["activations"] / 1.5
        sharded = training_memory(config, r, world_size=8, strategy="fsdp")
        assert 16 * r["parameters"] // 8 < sharded["states"] < plain["states"]
    assert main(["info", "gpt2-124m", "--world-size", "8", "--strategy", "fsdp", "--activation-checkpointing"]) == 0
    assert "sharded" in capsys.readouterr().out
    assert main(["info", "gpt2-124m", "--strategy", "zero"]) == 2
    assert "use ddp or fsdp" in capsys.readouterr().err
