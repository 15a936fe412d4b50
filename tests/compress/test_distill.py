"""Knowledge distillation: the loss against a hand computation, a student initialised from every other teacher layer,
task distillation through the fine-tuning skeleton (the student moves toward the teacher and learns the task), next-
token distillation of a decoder on a prepared corpus, and the one-line errors of `lmforge distill`."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import lmforge
from lmforge import ModelConfig, build_model
from lmforge.cli import main
from lmforge.finetune.classify import encode_examples, example_logits
from lmforge.finetune.data import read_examples
from lmforge.finetune.distill import distill
from lmforge.train.distill import Distillation, soft_target_loss, student_from_teacher
from lmforge.train.objectives import CausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _finetune_data import encoder_tokenizer, sentiment_rows, src, tiny_options, write_table  # noqa: E402


def test_soft_target_loss_equals_a_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    T = 2.0
    hand = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        zs = sum(math.exp(x / T) for x in srow)
        zt = sum(math.exp(x / T) for x in trow)
        for a, b in zip(srow, trow):
            p, q = math.exp(b / T) / zt, math.exp(a / T) / zs
            hand += p * math.log(p / q)
    assert soft_target_loss(s, t, T).item() == pytest.approx(hand * T * T, rel=1e-6)
    assert soft_target_loss(t, t, T).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_objective_mixes_soft_hard_and_cosine_terms_as_documented():
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("gpt-nano", n_layer=2, d_model=32, n_head=2)
    student, teacher = build_model(cfg), build_model(cfg)
    tokens = torch.randint(0, 65, (400,)).numpy()
    inner = CausalLM(tokens, tokens, 16, seed=0)
    obj = Distillation(inner, teacher, temperature=3.0, alpha=0.7, cosine=0.5)
    batch = obj.batch(0, 4)
    student.train()
    total, count = obj.loss(student, batch)
    s_logits, t_logits = student(batch["input_ids"]), teacher(batch["input_ids"]).detach()
    hard = F.cross_entropy(s_logits.reshape(-1, 65), batch["labels"].reshape(-1), reduction="sum")
    log_q, log_p = F.log_softmax(s_logits / 3, -1), F.log_softmax(t_logits / 3, -1)
    soft = (log_p.exp() * (log_p - log_q)).sum() * 9
    h_s, h_t = student.encode(batch["input_ids"]), teacher.encode(batch["input_ids"])
    cos = (1 - F.cosine_similarity(h_s, h_t, dim=-1)).sum()
    assert count.item() == 64
    assert total.item() == pytest.approx((0.7 * soft + 0.3 * hard + 0.5 * cos).item(), rel=1e-5)
    total.backward()  # the gradient reaches the student, never the frozen teacher
    assert student.tok_embed.weight.grad is not None and teacher.tok_embed.weight.grad is None
    student.eval()  # evaluation: the student's own cross-entropy (a perplexity that compares with plain training)
    with torch.no_grad():
        assert obj.loss(student, batch)[0].item() == pytest.approx(hard.item(), rel=1e-5)
    for bad in (dict(temperature=0), dict(alpha=1.5), dict(cosine=-1)):
        with pytest.raises(lmforge.errors.ConfigError):
            Distillation(inner, teacher, **bad)
    # alpha 0 (hard labels only, the control of a distillation benchmark): the loss is the cross-entropy, and the
    # teacher is not run at all
    student.train()
    calls = []
    hook = teacher.tok_embed.register_forward_hook(lambda *a: calls.append(1))
    hard_only = Distillation(inner, teacher, alpha=0.0).loss(student, batch)[0]
    assert hard_only.item() == pytest.approx(hard.item(), rel=1e-5) and not calls
    Distillation(inner, teacher, alpha=0.1).loss(student, batch)
    hook.remove()
    assert calls


def test_every_other_layer_student_copies_the_teachers_layers():
    torch.manual_seed(0)
    teacher = build_model(ModelConfig.from_name("bert-mini", vocab_size=120, n_layer=4, d_model=32, n_head=2))
    student = student_from_teacher(teacher)
    assert student.config.n_layer == 2 and student.config.d_model == 32
    for i, j in ((0, 0), (1, 2)):
        a, b = student.encoder.layers[i].state_dict(), teacher.encoder.layers[j].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(student.tok_embed.weight, teacher.tok_embed.weight)
    assert student.num_parameters() < teacher.num_parameters()


@pytest.fixture(scope="module")
def clf(tmp_path_factory):
    """A 4-layer classifier teacher on the toy sentiment task."""
    from lmforge.finetune.classify import finetune_classify

    root = tmp_path_factory.mktemp("distill")
    tok = root / "tok"
    encoder_tokenizer().save(tok)
    train = write_table(root / "train.tsv", sentiment_rows(300, 0))
    dev = write_table(root / "dev.tsv", sentiment_rows(80, 1))
    result = finetune_classify(model="bert-mini", train=train, dev=dev, out=str(root / "teacher"),
                               source=src(str(tok), set_=["n_layer=4", "d_model=32", "n_head=2"]),
                               options=tiny_options(max_steps=80))
    assert result["dev"]["accuracy"] >= 0.95
    return {"root": root, "train": train, "dev": dev, "teacher": str(root / "teacher")}


def _dev_kl(student, teacher, dev: str) -> float:
    """Mean KL(teacher || student) of the class distributions on the dev file."""
    examples = read_examples(dev, ["text"], "label")
    rows, _ = encode_examples(teacher.tokenizer, examples, max_length=32, stride=None, labels=None, use_types=True)
    with torch.no_grad():
        p = torch.log_softmax(example_logits(teacher.eval(), rows, len(examples)), -1)
        q = torch.log_softmax(example_logits(student.eval(), rows, len(examples)), -1)
    return (p.exp() * (p - q)).sum(-1).mean().item()


def test_task_distillation_moves_a_half_depth_student_to_the_teacher(clf, tmp_path):
    teacher = lmforge.load(clf["teacher"])
    initial = student_from_teacher(teacher)  # the head swap of the skeleton gives it a new head: measure after
    result = distill(teacher=clf["teacher"], student_init="every-other-layer", train=clf["train"], dev=clf["dev"],
                     out=str(tmp_path / "small"), alpha=0.9, temperature=2.0, options=tiny_options(max_steps=40))
    student = lmforge.load(tmp_path / "small")
    assert student.config.n_layer == 2 and student.config.labels == teacher.config.labels
    assert result["dev"]["accuracy"] >= 0.95, result["headline"]
    info = json.loads((tmp_path / "small" / "run.json").read_text())
    assert info["command"] == "finetune distill" and info["args"]["alpha"] == 0.9
    from lmforge.model.heads import with_head

    fresh = with_head(initial, "classify", teacher.config.labels, seed=1337)
    assert _dev_kl(student, teacher, clf["dev"]) < 0.5 * _dev_kl(fresh, teacher, clf["dev"])
    # a resumed (finished) run continues through the same path, teacher and all
    again = main(["finetune", "distill", "--resume", str(tmp_path / "small"), "--max-steps", "44"])
    assert again == 0


def test_next_token_distillation_of_a_decoder_on_a_corpus(tmp_path):
    from lmforge.data.prepare import prepare_corpus
    from lmforge.tokenizer import train_tokenizer

    texts = [" ".join(r[1] for r in sentiment_rows(40, i)) for i in range(30)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(texts))
    tok = train_tokenizer(texts, "bpe", 300, "decoder", progress=False)
    prepare_corpus([str(tmp_path / "corpus.txt")], tok, tmp_path / "data", progress=False, val_fraction=0.2)
    torch.manual_seed(0)
    teacher = build_model(ModelConfig.from_name("gpt-nano", vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=2))
    lmforge.save(teacher, tmp_path / "teacher", tok)
    opts = tiny_options(max_steps=30, lr=3e-3, eval_every=30, save_every=30, context=32)
    result = distill(teacher=str(tmp_path / "teacher"), student="gpt-nano", data=str(tmp_path / "data"),
                     out=str(tmp_path / "student"), alpha=1.0, source=src(set_=["n_layer=1", "d_model=32", "n_head=2"]),
                     options=opts)
    assert result["steps"] == 30
    student = lmforge.load(tmp_path / "student")
    assert student.config.n_layer == 1 and student.tokenizer.sha256 == tok.sha256
    ids = torch.tensor([tok.encode(texts[0])[:32]])
    with torch.no_grad():
        p = torch.log_softmax(teacher(ids), -1)
        fresh = build_model(student.config)

        def kl(m):
            q = torch.log_softmax(m(ids), -1)
            return (p.exp() * (p - q)).sum(-1).mean().item()
        assert kl(student) < 0.5 * kl(fresh)
    assert json.loads((tmp_path / "student" / "run.json").read_text())["command"] == "distill"


def test_distill_errors_are_one_line_exit_2(clf, tmp_path, capsys):
    cases = [
        (["distill", "--teacher", clf["teacher"], "--train", clf["train"], "--out", str(tmp_path / "a")], "--student"),
        (["distill", "--teacher", clf["teacher"], "--student-init", "every-other-layer", "--train", clf["train"],
          "--out", str(tmp_path / "b"), "--alpha", "1.5"], "--alpha"),
        (["distill", "--teacher", clf["teacher"], "--student", "bert-mini", "--student-init", "every-other-layer",
          "--train", clf["train"], "--out", str(tmp_path / "c")], "not both"),
        (["distill", "--teacher", clf["teacher"], "--student-init", "every-other-layer", "--data", clf["train"],
          "--out", str(tmp_path / "d")], "decoder"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
