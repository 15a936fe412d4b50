"""The command line: `lmforge generate` (one prompt, a file of prompts to JSONL, options, errors), `lmforge sample`,
and `lmforge chat` driven for real through a pseudo-terminal with pexpect."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import lmforge
from lmforge.cli import main
from lmforge.generate import ChatSession, generate

from _generate_models import lmforge_decoder

ENV = dict(os.environ, TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")



@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "m"
    lmforge.save(lmforge_decoder("gpt", context=64), folder)
    return folder


@pytest.fixture(scope="module")
def model(checkpoint):
    return lmforge.load(checkpoint)


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_one_prompt_greedy_beam_and_sampling(checkpoint, model, capsys):
    prompt = "Once upon a time"
    code, out, _ = _cli(capsys, "generate", checkpoint, prompt, "--max-new-tokens", 12)
    assert code == 0 and out == generate(model, prompt, max_new_tokens=12) + "\n"
    code, out, _ = _cli(capsys, "generate", checkpoint, prompt, "--beams", 4, "--length-penalty", 0.8,
                        "--repetition-penalty", 1.3, "--no-repeat-ngram", 3, "--max-new-tokens", 12)
    assert code == 0 and out == generate(model, prompt, max_new_tokens=12, num_beams=4, length_penalty=0.8,
                                         repetition_penalty=1.3, no_repeat_ngram_size=3) + "\n"
    code, out, _ = _cli(capsys, "generate", checkpoint, prompt, "--max-new-tokens", 12, "--temperature", 0.8,
                        "--top-p", 0.95, "--seed", 1)
    assert code == 0 and out == generate(model, prompt, max_new_tokens=12, do_sample=True, temperature=0.8,
                                         top_p=0.95, seed=1) + "\n"
    code, out, _ = _cli(capsys, "generate", checkpoint, prompt, "--max-new-tokens", 8, "--beams", 3,
                        "--num-return-sequences", 2)
    texts = generate(model, prompt, max_new_tokens=8, num_beams=3, num_return_sequences=2)
    assert code == 0 and out == f"--- output 1 ---\n{texts[0]}\n--- output 2 ---\n{texts[1]}\n"


def test_sample_command(checkpoint, model, capsys):
    code, out, _ = _cli(capsys, "sample", checkpoint, "To be or not", "--max-new-tokens", 10, "--seed", 1)
    assert code == 0
    assert out == generate(model, "To be or not", max_new_tokens=10, do_sample=True, temperature=0.8, top_k=50,
                           seed=1) + "\n"


def test_generate_prompts_file_to_jsonl_in_a_real_process(checkpoint, model, tmp_path):
    prompts = ["Once upon a time", "The cat", "你好，世界", "To be or not to be, that is the question"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n", encoding="utf-8")
    out = tmp_path / "outputs.jsonl"
    run = subprocess.run([sys.executable, "-m", "lmforge", "generate", str(checkpoint), "--prompts",
                          str(tmp_path / "prompts.txt"), "--batch-size", "3", "--out", str(out),
                          "--max-new-tokens", "10"], capture_output=True, text=True, env=ENV, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "wrote 4 result(s)" in run.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["prompt"] for r in records] == prompts
    expected = [generate(model, p, max_new_tokens=10, return_dict=True) for p in prompts]
    assert [r["output"] for r in records] == [e.text for e in expected]
    assert [r["tokens"] for r in records] == [len(e.token_ids) for e in expected]
    assert all(r["finish_reason"] in ("eos", "length") for r in records)


def test_generate_jsonl_prompts_and_several_outputs(checkpoint, model, tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text('{"prompt": "The cat"}\n"Once upon"\n', encoding="utf-8")
    code, out, _ = _cli(capsys, "generate", checkpoint, "--prompts", tmp_path / "p.jsonl", "--max-new-tokens", 6,
                        "--sample", "--seed", 3, "--num-return-sequences", 2)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["outputs"] for r in records] == generate(model, ["The cat", "Once upon"], max_new_tokens=6,
                                                       do_sample=True, seed=3, num_return_sequences=2)


@pytest.mark.parametrize("args, words", [
    (["The cat", "--top-p", "1.5"], "top_p=1.5 is out of range"),
    (["The cat", "--temperature", "-1"], "temperature=-1.0 is out of range"),
    (["The cat", "--beams", "0"], "num_beams=0 is out of range"),
    ([], "give either a prompt or --prompts"),
    (["The cat " * 40], "truncate"),
    (["The cat", "--prompts", "nowhere.txt"], "give either a prompt or --prompts"),
    (["--prompts", "nowhere.txt"], "no such file"),
])
def test_generate_errors_are_one_line_exit_2(args, words, checkpoint, capsys):
    code, out, err = _cli(capsys, "generate", checkpoint, *args)
    assert code == 2 and out == ""
    assert err.startswith("lmforge: error: ") and words in err and err.count("\n") == 1


def test_truncate_left(checkpoint, model, capsys):
    long_prompt = "The cat sat on the mat. " * 40
    code, out, _ = _cli(capsys, "generate", checkpoint, long_prompt, "--truncate", "left", "--max-new-tokens", 8)
    assert code == 0 and out == generate(model, long_prompt, truncate="left", max_new_tokens=8) + "\n"


def test_chat_repl_in_a_terminal(checkpoint, model):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(sys.executable, ["-m", "lmforge", "chat", str(checkpoint), "--greedy",
                                           "--max-new-tokens", "12"], env=ENV, encoding="utf-8", timeout=60)
    try:
        child.expect("context 64 tokens")
        child.expect("you> ")
        session = ChatSession(model, max_new_tokens=12, do_sample=False)
        trimmed = False
        for turn in range(8):
            message = f"hello number {turn}, how are you today?"
            child.sendline(message)
            expected = session.reply(message)
            index = child.expect([r"\[history trimmed[^\]]*\]", "assistant> "])
            if index == 0:
                trimmed = True
                child.expect("assistant> ")
            child.expect("you> ")
            shown = child.before.replace("\r\n", "\n").rstrip("\n")
            assert shown == expected.replace("\r\n", "\n").rstrip("\n")
            if trimmed:
                break
        assert trimmed, "a 64-token context must overflow within a few turns"
        child.sendline("/reset")
        child.expect(r"\[history cleared\]")
        child.expect("you> ")
        child.sendline("/exit")
        child.expect("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_session_history_and_trimming(model):
    session = ChatSession(model, system="You are terse.", max_new_tokens=12, do_sample=False)
    first = session.reply("hi")
    assert session.history == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first.strip()}]
    rendered = model.tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}],
        add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nhi")
    for i in range(6):
        session.reply(f"ok {i}")
    assert session.notices and "history trimmed" in session.notices[0]
    assert len(session.prompt_ids("last one")) <= model.config.context_length - 12
    with pytest.raises(lmforge.LmforgeError, match="send a shorter message"):
        session.prompt_ids("far too long " * 60)
    session.reset()
    assert session.history == []
