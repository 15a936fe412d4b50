"""Crash safety of the commands that write folders: killed (SIGKILL) at random moments while they write, `lora merge`,
`convert from-hf`, `convert to-hf`, `tokenizer train` and `prepare` leave either no output or a complete one, and an
earlier output being replaced (--overwrite) stays whole until the new one is complete; a partial output is never
taken for a complete one (the readers either refuse it as missing or load it whole).

(Training runs are tested the same way in tests/train/test_train.py and tests/finetune/test_finetune_classify.py.)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lmforge
from lmforge import io as lio
from lmforge.cli import main
from lmforge.data.batches import PreparedData
from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer

from _finetune_data import TINY, encoder_tokenizer, sentiment_rows, tiny_options, write_table

TEXT = "\n".join(f"Line {i}: to be, or not to be, that is the question number {i % 17}." for i in range(3000))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    (root / "corpus.txt").write_text(TEXT)
    assert main(["tokenizer", "train", str(root / "corpus.txt"), "--vocab-size", "400", "--out", str(root / "tok")]) == 0
    assert main(["pretrain", "--data", _prepare(root), "--out", str(root / "run"), *sum((["--set", s] for s in TINY), []),
                 "--set", "d_model=128", "--set", "n_layer=4", "--max-steps", "1", "--context", "32", "--batch-size",
                 "2", "--no-progress"]) == 0
    assert main(["convert", "to-hf", str(root / "run"), str(root / "hf")]) == 0
    from lmforge.finetune.classify import finetune_classify
    from lmforge.finetune.options import MethodConfig, ModelSource

    write_table(root / "train.tsv", sentiment_rows(40, 1))
    encoder_tokenizer().save(root / "tok-enc")
    finetune_classify(model="bert-mini", train=str(root / "train.tsv"), out=str(root / "lora"),
                      method=MethodConfig("lora"), source=ModelSource(tokenizer=str(root / "tok-enc"),
                                                                      set_=[*TINY[:1], "d_model=128", "n_head=2"]),
                      options=tiny_options(max_steps=1))
    return root


def _prepare(root: Path) -> str:
    assert main(["prepare", str(root / "corpus.txt"), "--tokenizer", str(root / "tok"), "--out", str(root / "data")]) == 0
    return str(root / "data")


def _complete_or_absent(kind: str, out: Path) -> str:
    """'absent' or 'complete'; anything else fails: a reader must never take a partial output for a complete one."""
    lio.recover_dir(out)
    if not out.exists():
        return "absent"
    if kind in ("checkpoint",):
        model = lmforge.load(out)
        assert model.tokenizer is not None
    elif kind == "hf":
        import transformers

        assert transformers.AutoModelForCausalLM.from_pretrained(out).config.n_layer == 4
    elif kind == "tokenizer":
        assert Tokenizer.load(out).vocab_size == 400
    elif kind == "data":
        data = PreparedData(out)
        assert len(data.tokens("train")) == data.manifest["splits"]["train"]["tokens"]
    return "complete"


OPERATIONS = {
    "lora merge": (lambda r, o: ["lora", "merge", str(r / "lora"), "--out", str(o)], "checkpoint"),
    "convert from-hf": (lambda r, o: ["convert", "from-hf", str(r / "hf"), str(o)], "checkpoint"),
    "convert to-hf": (lambda r, o: ["convert", "to-hf", str(r / "run"), str(o), "--max-shard-size", "100KB"], "hf"),
    "tokenizer train": (lambda r, o: ["tokenizer", "train", str(r / "corpus.txt"), "--vocab-size", "400", "--out",
                                      str(o)], "tokenizer"),
    "prepare": (lambda r, o: ["prepare", str(r / "corpus.txt"), "--tokenizer", str(r / "tok"), "--out", str(o)], "data"),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_killed_writers_leave_nothing_partial(work, operation):
    argv, kind = OPERATIONS[operation]
    out = work / f"out-{operation.replace(' ', '-')}"
    cmd = [sys.executable, "-m", "lmforge"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    subprocess.run(cmd + argv(work, out), check=True, env=env, capture_output=True, timeout=300)
    took = time.perf_counter() - start
    assert _complete_or_absent(kind, out) == "complete"
    seen, rng = set(), random.Random(operation)
    scratch = lio.scratch_paths(out)[0]
    for attempt in range(5):  # killed at random moments, each time over the complete earlier output; the first
        proc = subprocess.Popen(cmd + [*argv(work, out), "--overwrite"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # two while the new folder is being written
        if attempt < 2:
            deadline = time.time() + 120
            while not scratch.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.02))
        else:
            time.sleep(rng.uniform(0.3, 1.0) * took)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.add(_complete_or_absent(kind, out))
    assert seen == {"complete"}, seen  # the earlier output was never lost, nor replaced by a partial one
    fresh = work / f"fresh-{operation.replace(' ', '-')}"
    for attempt in range(3):  # no earlier output: nothing, or the whole new one
        proc = subprocess.Popen(cmd + argv(work, fresh), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * took)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _complete_or_absent(kind, fresh)
        if state == "complete":
            break
    if not fresh.exists():  # (a folder that exists is complete: loading it worked above)
        with pytest.raises(LmforgeError):  # and the reader refuses an absent one clearly, never half of one
            READERS[kind](fresh)


READERS = {"checkpoint": lmforge.load, "hf": lmforge.load, "tokenizer": Tokenizer.load, "data": PreparedData}