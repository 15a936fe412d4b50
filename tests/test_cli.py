"""The command line: bad input gives one clear line and exit status 2, and never overwrites anything."""

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from lmforge.cli import main

TEXT = "\n".join(f"Line {i}: to be, or not to be, that is the question {i % 13}." for i in range(400))


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "corpus.txt").write_text(TEXT)
    assert main(["tokenizer", "train", str(root / "corpus.txt"), "--vocab-size", "300", "--out", str(root / "tok")]) == 0
    assert main(["tokenizer", "train", str(root / "corpus.txt"), "--arch", "encoder", "--vocab-size", "300",
                 "--out", str(root / "tok-enc")]) == 0
    assert main(["prepare", str(root / "corpus.txt"), "--tokenizer", str(root / "tok"), "--out", str(root / "data")]) == 0
    assert main(["prepare", str(root / "corpus.txt"), "--tokenizer", str(root / "tok-enc"), "--out",
                 str(root / "data-enc")]) == 0
    tiny = ["--set", "n_layer=1", "--set", "d_model=32", "--set", "n_head=2", "--max-steps", "3", "--context", "32",
            "--batch-size", "2", "--no-progress", "--eval-batches", "1"]
    assert main(["pretrain", "--data", str(root / "data"), "--out", str(root / "run"), *tiny]) == 0
    assert main(["pretrain", "--model", "bert-mini", "--data", str(root / "data-enc"), "--out", str(root / "bert"),
                 *tiny]) == 0
    return root


def fails(capsys, args, match):
    code = main(args)
    stderr = capsys.readouterr().err.strip()
    err = stderr.splitlines()[-1]  # (a progress bar may come before it)
    assert code == 2, stderr
    assert err.startswith("lmforge: error: ") and "Traceback" not in stderr, stderr
    assert match in err, err
    return err


def test_missing_empty_and_binary_corpora(work, tmp_path, capsys):
    tok = str(work / "tok")
    fails(capsys, ["prepare", str(tmp_path / "none.txt"), "--tokenizer", tok, "--out", str(tmp_path / "d")],
          "does not exist")
    (tmp_path / "empty.txt").write_text("")
    fails(capsys, ["prepare", str(tmp_path / "empty.txt"), "--tokenizer", tok, "--out", str(tmp_path / "d")],
          "holds no text")
    (tmp_path / "bin.txt").write_bytes(bytes(range(256)))
    fails(capsys, ["tokenizer", "train", str(tmp_path / "bin.txt"), "--out", str(tmp_path / "t")], "looks binary")
    (tmp_path / "latin.txt").write_bytes("naïve".encode("latin-1"))
    fails(capsys, ["prepare", str(tmp_path / "latin.txt"), "--tokenizer", tok, "--out", str(tmp_path / "d")],
          "is not valid utf-8 at byte 2")
    assert not (tmp_path / "d" / "manifest.json").exists() and not (tmp_path / "t").exists()


def test_vocabulary_too_small_and_config_out_of_range(work, capsys):
    fails(capsys, ["tokenizer", "train", str(work / "corpus.txt"), "--vocab-size", "50", "--out", str(work / "t2")],
          "use --vocab-size >= 263")
    fails(capsys, ["pretrain", "--data", str(work / "data"), "--out", str(work / "r2"), "--set", "n_head=7"],
          "not divisible by n_head=7")
    fails(capsys, ["pretrain", "--data", str(work / "data"), "--out", str(work / "r2"), "--set", "dropout=2"],
          "dropout=2 is out of range")
    fails(capsys, ["pretrain", "--data", str(work / "data"), "--out", str(work / "r2"), "--set", "layers=2"],
          "unknown config field")
    fails(capsys, ["pretrain", "--data", str(work / "data"), "--out", str(work / "r2"), "--lr", "0"], "--lr must be > 0")
    assert not (work / "r2").exists()


def test_checkpoint_of_another_architecture(work, capsys):
    fails(capsys, ["pretrain", "--init", str(work / "bert"), "--data", str(work / "data-enc"), "--objective", "clm",
                   "--out", str(work / "r3")], "objective clm needs a decoder model (gpt-mini, llama-tiny, gpt2-124m); --init")
    fails(capsys, ["pretrain", "--model", "transformer-small", "--data", str(work / "data"), "--out", str(work / "r3")],
          "not source/target pairs")


def test_checkpoint_with_missing_or_misshaped_tensors(work, tmp_path, capsys):
    import shutil

    for how in ("missing", "shape"):
        ck = tmp_path / how
        shutil.copytree(work / "run" / "last", ck)
        tensors = load_file(str(ck / "model.safetensors"))
        if how == "missing":
            tensors.pop("decoder.final_norm.weight")
        else:
            tensors["decoder.final_norm.weight"] = tensors["decoder.final_norm.weight"][:-1].clone()
        save_file(tensors, str(ck / "model.safetensors"))
        err = fails(capsys, ["eval", "perplexity", str(ck), "--data", str(work / "data")], "decoder.final_norm.weight")
        assert ("missing 1 tensor" in err) if how == "missing" else ("has shape (31,)" in err)


def test_manifest_of_another_tokenizer(work, capsys):
    fails(capsys, ["eval", "perplexity", str(work / "run"), "--data", str(work / "data-enc")],
          "prepared with another tokenizer")
    fails(capsys, ["pretrain", "--init", str(work / "run"), "--data", str(work / "data-enc"), "--out", str(work / "r4")],
          "prepared with another tokenizer")


def test_an_output_folder_holding_another_run_is_left_alone(work, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (work / "run").rglob("*") if p.is_file()}
    fails(capsys, ["pretrain", "--model", "llama-tiny", "--data", str(work / "data"), "--out", str(work / "run")],
          "already holds a run")
    fails(capsys, ["prepare", str(work / "corpus.txt"), "--tokenizer", str(work / "tok"), "--out", str(work / "data")],
          "already holds prepared data")
    (work / "stuff").mkdir(exist_ok=True)
    (work / "stuff" / "notes.txt").write_text("mine")
    fails(capsys, ["pretrain", "--data", str(work / "data"), "--out", str(work / "stuff")], "is not empty")
    assert (work / "stuff" / "notes.txt").read_text() == "mine"
    after = {p.name: p.stat().st_mtime_ns for p in (work / "run").rglob("*") if p.is_file()}
    assert after == before


def test_unknown_command_and_resume_of_a_non_run(work, capsys):
    fails(capsys, ["pretrian"], "unknown command")
    fails(capsys, ["pretrain", "--resume", str(work / "data")], "is not a run folder")


def test_real_process_exit_status_and_no_traceback(work):
    done = subprocess.run([sys.executable, "-m", "lmforge", "pretrain", "--data", str(work / "nothing"), "--out",
                           str(work / "r5")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"lmforge: error: {work / 'nothing'} holds no prepared data (no manifest.json); "
                                   "run `lmforge prepare` first")


def test_info_and_help(capsys):
    assert main(["info", "gpt2-124m"]) == 0
    out = capsys.readouterr().out
    assert "124,439,808" in out and "FLOPs / token" in out
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--help"])
    assert e.value.code == 0
    assert "--max-steps" in capsys.readouterr().out


def test_manifest_records_the_run(work):
    run = json.loads((work / "run" / "run.json").read_text())
    assert run["objective"] == "clm" and run["train"]["max_steps"] == 3


def test_help_loads_no_torch():
    """`lmforge --help` and every `lmforge <verb> --help` are built without importing torch (start-up stays cheap;
    benchmarks/startup.py times it)."""
    script = ("import sys, contextlib, io\n"
              "from lmforge.cli import COMMANDS, main\n"
              "for argv in [['--help']] + [[*verb.split(), '--help'] for verb in COMMANDS]:\n"
              "    with contextlib.redirect_stdout(io.StringIO()):\n"
              "        try:\n"
              "            main(argv)\n"
              "        except SystemExit:\n"
              "            pass\n"
              "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
