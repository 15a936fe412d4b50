"""The application verbs: `lmforge attention | embed | index build | search | ask | extract | ngram train | attack`
(the library is `lmforge.apps`; the fine-tuning verbs `finetune qa` and `finetune relations` are tasks in
`lmforge.finetune`). Everything heavy is imported inside the functions, so `--help` loads no torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal


def attention(checkpoint: str, text: str, *, out: str, max_length: int | None = None, device: str = "cpu",
              overwrite: bool = False) -> dict[str, Any]:
    """Attention maps of every layer and head on a text: attention.png (grid of layers x heads), attention.html (an
    interactive view that needs no network) and attention.json (the weights).

    Args:
        checkpoint: model: run or checkpoint folder, Hugging Face folder or hub id
        text: the text to look at
        out: folder for attention.png, attention.html and attention.json
        max_length: tokens at most (default: the model's context)
        device: cpu, cuda or auto
        overwrite: replace attention maps already in --out
    """
    from .. import io as lio
    from ..apps.attention import attention_maps, is_attention_folder, save_maps
    from ..config import check_minimum
    from ..device import resolve_device
    from ..loading import load

    check_minimum(1, max_length=max_length)
    lio.check_output(out, what="attention maps", overwrite=overwrite, ours=is_attention_folder, inputs=[checkpoint])
    model = load(checkpoint, device=resolve_device(device), dtype="fp32")
    maps = attention_maps(model, text, max_length=max_length)
    title = f"{Path(checkpoint).name}: {maps.stack} self-attention"
    folder = save_maps(maps, out, overwrite=True, title=title)
    print(f"{len(maps.tokens)} tokens, {maps.layers} layers x {maps.heads} heads -> {folder}/attention.png, "
          f"attention.html (opens offline), attention.json")
    return {"out": str(folder), "tokens": maps.tokens, "layers": maps.layers, "heads": maps.heads}


def embed(checkpoint: str, *, input: str, out: str, pooling: Literal["mean", "cls", "last", "max"] | None = None,
          normalize: bool | None = None, batch_size: int = 64, max_length: int | None = None, device: str = "cpu",
          overwrite: bool = False) -> dict[str, Any]:
    """Sentence embeddings of the lines of a text file, as a float32 .npy array (or .jsonl).

    Args:
        checkpoint: encoder (or decoder): run or checkpoint folder, Hugging Face or sentence-transformers folder
        input: text file, one sentence per line (empty lines skipped)
        out: .npy file (rows in the order of the lines) or .jsonl file
        pooling: mean, cls, last or max (default: as the model was trained: sentence-transformers' configuration, a classifier's pooling, else mean for encoders and last for decoders)
        normalize: L2-normalise the vectors (default: as the model was trained; sentence-transformers' Normalize)
        batch_size: sentences per forward pass
        max_length: tokens per sentence at most (default: the model's limit)
        device: cpu, cuda or auto
        overwrite: replace an existing --out file
    """
    from .. import io as lio
    from ..apps.embed import embed as embed_texts, load_encoder, read_lines_file, write_embeddings
    from ..config import check_minimum
    from ..device import resolve_device

    check_minimum(1, batch_size=batch_size, max_length=max_length)
    lio.check_output(out, what="embeddings", overwrite=overwrite, folder=False, inputs=[input, checkpoint])
    lines = read_lines_file(input)
    model = load_encoder(checkpoint, device=resolve_device(device))
    vectors = embed_texts(model, lines, pooling=pooling, normalize=normalize, batch_size=batch_size,
                          max_length=max_length)
    write_embeddings(vectors, out)
    spec = model.pooling_spec
    print(f"{len(lines):,} sentences -> {out} ({vectors.shape[0]} x {vectors.shape[1]} float32; pooling "
          f"{pooling or spec.pooling}, {'normalised' if (spec.normalize if normalize is None else normalize) else 'not normalised'}"
          f"; {spec.source})")
    return {"out": out, "shape": list(vectors.shape)}


def index_build(checkpoint: str, *, docs: list[str], out: str, chunk_tokens: int = 200, overlap: int = 40,
                backend: Literal["exact", "faiss"] = "exact", text_field: str = "text", batch_size: int = 64,
                device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Cut documents into overlapping chunks, embed them and save a search index.

    Args:
        checkpoint: the encoder that embeds chunks and queries (e.g. all-MiniLM-L6-v2)
        docs: text/markdown files, JSONL files ({"text", "id", "title"} per line), or folders of them
        out: index folder (index.json, chunks.jsonl, embeddings.npy, faiss.index)
        chunk_tokens: tokens per chunk
        overlap: tokens shared by consecutive chunks of a document
        backend: exact (a matrix product; nothing to install) or faiss (an HNSW graph for large collections; pip install faiss-cpu)
        text_field: JSONL field holding the text
        batch_size: chunks per forward pass
        device: cpu, cuda or auto
        overwrite: replace an index already in --out
    """
    from .. import io as lio
    from ..apps.search import build_index, is_index, read_documents
    from ..config import check_minimum
    from ..device import resolve_device
    from ..apps.embed import load_encoder

    check_minimum(1, batch_size=batch_size)
    lio.check_output(out, what="a search index", overwrite=overwrite, ours=is_index, inputs=[*docs, checkpoint])
    documents = read_documents(docs, text_field=text_field)
    model = load_encoder(checkpoint, device=resolve_device(device))
    index = build_index(checkpoint, documents, chunk_tokens=chunk_tokens, overlap=overlap, backend=backend,
                        batch_size=batch_size, model=model)
    index.save(out, overwrite=True)
    meta = index.meta
    print(f"{meta['documents']:,} documents -> {meta['chunks']:,} chunks of <= {chunk_tokens} tokens (overlap "
          f"{overlap}), {meta['dim']}-d, {backend} index in {out} ({meta['seconds']}s)")
    return meta


def search(index: str, query: str, *, k: int = 5, json_: bool = False) -> list[dict[str, Any]]:
    """Search an index: the k chunks most similar to the query (cosine of sentence embeddings).

    Args:
        index: index folder (from lmforge index build)
        query: what to look for
        k: results
        json_: print the results as JSON lines (score, doc, start, end, text, title)
    """
    from ..apps.search import Index, iter_results
    from ..config import check_minimum

    check_minimum(1, k=k)
    results = Index.load(index).search(query, k)
    if json_:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        for line in iter_results(results):
            print(line)
    return results


def ask(index: str, question: str, *, reader: str | None = None, k: int = 5, max_length: int | None = None,
        max_new_tokens: int = 32, json_: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Answer a question from an index: retrieve the k best passages, then read the answer (an extractive span
    reader from `lmforge finetune qa`, or a decoder language model that writes it).

    Args:
        index: index folder (from lmforge index build)
        question: the question
        reader: the reader model (default: none, the passages only)
        k: passages given to the reader
        max_length: extractive reader: tokens per question + passage window (default: the reader's training run's, else 256)
        max_new_tokens: generative reader: tokens of the answer at most
        json_: print the result as JSON
        device: cpu, cuda or auto
    """
    from ..apps.ask import ask as ask_index
    from ..apps.search import Index, iter_results
    from ..config import check_minimum
    from ..device import resolve_device
    from ..loading import load

    check_minimum(1, k=k, max_length=max_length, max_new_tokens=max_new_tokens)
    idx = Index.load(index)
    model = load(reader, device=resolve_device(device), dtype="fp32") if reader else None
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
    if model is not None and model.config.head == "span":
        from ..finetune.args import run_info, training_option

        info = run_info(reader)
        length = training_option(info, "max_length", max_length, 256)
        stride = min(training_option(info, "stride", None, 64), length // 4)
        options = {"max_length": length, "stride": stride}
    result = ask_index(idx, question, model, k=k, **options)
    if json_:
        print(json.dumps(result, ensure_ascii=False))
    else:
        if "answer" in result:
            where = f"  ({result['doc']} [{result['start']}:{result['end']}])" if result.get("doc") else ""
            print(f"answer: {result['answer']}{where}")
        for line in iter_results(result["passages"]):
            print(line)
    return result


def extract(checkpoint: str, *, input: list[str], out: str, graph: list[str] | None = None, max_length: int = 128,
            batch_size: int = 64, device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Entities and relations of text files (a knowledge graph) with a model from `lmforge finetune relations`:
    one JSONL record per sentence with character spans, and graph files.

    Args:
        checkpoint: run or checkpoint folder of a relation extraction model
        input: text files (sentences, one or more per line)
        out: JSONL file of {source, sentence, start, entities: [{text, type, start, end}], relations: [{head, type, tail}]}
        graph: graph files to write: .graphml, .dot, .png (repeat the option for several)
        max_length: tokens per sentence at most
        batch_size: sentences per forward pass
        device: cpu, cuda or auto
        overwrite: replace existing output files
    """
    from .. import io as lio
    from ..apps.extract import build_graph, extract_text, read_inputs, write_graph
    from ..config import check_minimum
    from ..device import resolve_device
    from ..errors import ConfigError
    from ..finetune.runs import load_for_inference
    from ..finetune.tasks import TASKS

    check_minimum(1, max_length=max_length, batch_size=batch_size)
    outputs = [out, *(graph or [])]
    if len(set(map(str, map(Path, outputs)))) != len(outputs):
        raise ConfigError("--out and --graph name the same file twice; give each output its own path")
    for path in outputs:
        if Path(path).suffix not in (".jsonl", ".graphml", ".dot", ".gv", ".png") or (path == out) != (Path(path).suffix == ".jsonl"):
            raise ConfigError(f"{path}: --out is a .jsonl file, --graph a .graphml, .dot or .png file")
        lio.check_output(path, what="extraction output", overwrite=overwrite, folder=False,
                         inputs=[*input, checkpoint], option="--out" if path == out else "--graph")
    texts = read_inputs(input)
    model = load_for_inference(checkpoint, resolve_device(device), TASKS["relations"], verb="extract")
    records = []
    for source, text in texts:
        records += extract_text(model, text, source=source, max_length=max_length, batch_size=batch_size)
    lio.write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    g = build_graph(records)
    for path in graph or []:
        write_graph(g, path)
    n_rel = sum(len(r["relations"]) for r in records)
    print(f"{len(records):,} sentences: {sum(len(r['entities']) for r in records):,} entities, {n_rel:,} relations "
          f"-> {out}" + (f"; graph ({len(g.nodes)} nodes, {len(g.edges)} edges) -> {', '.join(graph)}" if graph else ""))
    return {"sentences": len(records), "relations": n_rel, "nodes": len(g.nodes), "edges": len(g.edges)}


def ngram_train(inputs: list[str], *, out: str, order: int = 5, tokenizer: str | None = None,
                split: Literal["train", "val"] = "train", overwrite: bool = False) -> dict[str, Any]:
    """Train an interpolated modified Kneser-Ney n-gram model and write it as an ARPA file (KenLM reads it).

    Args:
        inputs: text files or folders (one sentence per line), or one prepared data folder (lmforge prepare: its token ids, documents as sentences)
        out: the ARPA file to write
        order: n-gram order (1-9; 5 is usual)
        tokenizer: count this tokenizer's ids (the ARPA words are the ids) instead of whitespace words
        split: with a prepared data folder: the split to count
        overwrite: replace an existing --out file
    """
    from .. import io as lio
    from ..apps import ngram

    lio.check_output(out, what="an ARPA file", overwrite=overwrite, folder=False, inputs=[*inputs, tokenizer])
    header, vocab, sentences = _ngram_corpus(inputs, tokenizer, split)
    result = ngram.train(sentences, vocab, order, out, header)
    result.pop("model")
    counts = ", ".join(f"{n + 1}-grams {c:,}" for n, c in enumerate(result["ngrams"]))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"{result['tokens']:,} {header['unit']} in {result['sentences']:,} sentences, vocabulary "
          f"{result['vocabulary']:,}: {counts} -> {out} ({result['seconds']}s)")
    return result


def _ngram_corpus(inputs: list[str], tokenizer: str | None, split: str):
    """The ARPA header, the vocabulary and the sentences of `ngram train`'s inputs."""
    from ..apps import ngram
    from ..corpus import list_files, read_lines
    from ..data.prepare import is_prepared
    from ..errors import ConfigError, DataError

    vocab = ngram.Vocabulary()
    if len(inputs) == 1 and Path(inputs[0]).is_dir() and is_prepared(Path(inputs[0])):
        from ..data.batches import PreparedData

        if tokenizer:
            raise ConfigError(f"{inputs[0]} is prepared data: its tokenizer is its own; drop --tokenizer")
        data = PreparedData(inputs[0])
        if split not in data.manifest["splits"] or not data.manifest["splits"][split]["tokens"]:
            raise DataError(f"{inputs[0]} has no {split} tokens")
        tok = data.tokenizer()
        stream = ngram.sentences_from_stream(data.tokens(split), _boundaries(tok))
        header = {"unit": "ids", "tokenizer_sha256": tok.sha256, "source": str(Path(inputs[0]).resolve())}
        return header, vocab, ngram.encode_ids(vocab, stream, grow=True)
    lines = (line for f in list_files(inputs) for line in read_lines(f))
    if tokenizer:
        from ..tokenizer import Tokenizer

        tok = Tokenizer.load(tokenizer)
        batch, sentences = [], []
        for line in lines:
            if line.strip():
                batch.append(line)
            if len(batch) == 4096:
                sentences += ngram.encode_ids(vocab, [_ids(x) for x in tok.encode_batch(batch)], grow=True)
                batch = []
        if batch:
            sentences += ngram.encode_ids(vocab, [_ids(x) for x in tok.encode_batch(batch)], grow=True)
        return {"unit": "ids", "tokenizer_sha256": tok.sha256}, vocab, sentences
    return {"unit": "words"}, vocab, ngram.encode_words(vocab, lines, grow=True)


def _ids(ids):
    import numpy as np

    return np.asarray(ids, dtype=np.int64)


def _boundaries(tokenizer) -> set[int]:
    return {i for i in (tokenizer.bos_id, tokenizer.end_id) if i is not None}


def ngram_perplexity(arpa: str, data: str, split: str = "val") -> dict[str, Any]:
    """Perplexity of an ARPA model on a split of prepared data (the same tokenizer's ids) or on a text file."""
    import time

    from ..apps import ngram
    from ..data.prepare import is_prepared
    from ..errors import DataError

    start = time.time()
    model = ngram.read_arpa(arpa)
    if Path(data).is_dir() and is_prepared(Path(data)):
        from ..data.batches import PreparedData

        prepared = PreparedData(data)
        if model.meta.get("unit") != "ids":
            raise DataError(f"{arpa} counts words (it was not trained on token ids), and {data} holds token ids; score "
                            "it on a text file, or train the n-gram model on prepared data (lmforge ngram train DATA/)")
        expected = prepared.manifest["tokenizer"]["sha256"]
        if model.meta.get("tokenizer_sha256") not in (None, expected):
            raise DataError(f"{data} was prepared with another tokenizer (sha256 {expected[:12]}) than {arpa} counts "
                            f"({model.meta['tokenizer_sha256'][:12]}); train the n-gram model on this data")
        if split not in prepared.manifest["splits"] or not prepared.manifest["splits"][split]["tokens"]:
            raise DataError(f"{data} has no {split} tokens")
        tok = prepared.tokenizer()
        sentences = ngram.encode_ids(model.vocab, ngram.sentences_from_stream(prepared.tokens(split),
                                                                              _boundaries(tok)), grow=False)
    else:
        from ..corpus import list_files, read_lines

        if model.meta.get("unit") == "ids":
            raise DataError(f"{arpa} counts token ids; score it on prepared data (lmforge prepare ... --tokenizer the "
                            "same tokenizer)")
        sentences = ngram.encode_words(model.vocab, (line for f in list_files([data]) for line in read_lines(f)),
                                       grow=False)
    result = ngram.perplexity_of(model, sentences)
    result.update(split=split, objective=f"{model.order}-gram", context=model.order - 1,
                  seconds=round(time.time() - start, 2), ppl=result["ppl"])
    return result


def attack(checkpoint: str, *, data: str, out: str, method: str = "word,char", text_column: str | None = None,
           label_column: str = "label", limit: int | None = None, mlm: str | None = None,
           similarity: str | None = None, min_similarity: float = 0.85, max_candidates: int = 30,
           max_change: float = 0.3, max_length: int | None = None, augment: str | None = None, seed: int = 0,
           device: str = "cpu", overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Attack a classifier with adversarial word substitutions and character edits; report TextAttack's measures
    (original accuracy, accuracy under attack, attack success rate, % words perturbed, queries per example).

    Args:
        checkpoint: a classifier: run or checkpoint folder from lmforge finetune classify
        data: labelled table (.tsv, .csv, .jsonl) with the text and label columns
        out: report folder: report.json, one <method>.jsonl per attack (every text, its adversarial version and changes), adversarial.tsv
        method: word, char, or both separated by a comma
        text_column: column of the text (default: the training run's)
        label_column: column of the label
        limit: attack only the first N rows
        mlm: masked language model that proposes word substitutions (BAE / BERT-Attack); without it, the nearest neighbours in the classifier's token embeddings
        similarity: sentence encoder for the similarity constraint of word substitutions (e.g. all-MiniLM-L6-v2; default: the classifier's own encoder)
        min_similarity: cosine of the sentence embeddings that a word substitution must keep
        max_candidates: substitutions tried per word
        max_change: largest share of a text's words that may change
        max_length: tokens per text (default: the training run's)
        augment: a training table: also write augmented.tsv, its rows plus the successful adversarial texts with their true labels (adversarial training: fine-tune on it, then attack again)
        seed: seed of the character edits
        device: cpu, cuda or auto
        overwrite: replace a report already in --out
        progress: show a progress bar
    """
    from .. import io as lio
    from ..apps.attack import AttackConfig, format_summary, run_attack, write_results
    from ..config import check_minimum
    from ..device import resolve_device
    from ..errors import ConfigError
    from ..finetune.args import run_info, training_option
    from ..finetune.data import read_examples
    from ..finetune.runs import load_for_inference
    from ..finetune.tasks import TASKS
    from ..loading import load

    check_minimum(1, limit=limit, max_candidates=max_candidates, max_length=max_length)
    methods = [m.strip() for m in method.split(",") if m.strip()]
    if not methods or set(methods) - {"word", "char"}:
        raise ConfigError(f"--method {method!r}: use word, char or word,char")
    lio.check_output(out, what="an attack report", overwrite=overwrite,
                     ours=lambda p: (p / "report.json").is_file() and (p / "attack.txt").is_file(),
                     inputs=[data, checkpoint, augment])
    info = run_info(checkpoint)
    column = training_option(info, "text_column", text_column, "text")
    examples = read_examples(data, [column], label_column)
    if limit:
        examples = examples[:limit]
    augment_rows = read_examples(augment, [column], label_column) if augment else None
    victim = load_for_inference(checkpoint, resolve_device(device), TASKS["classify"], verb="attack")
    mlm_model = load(mlm, device=resolve_device(device), dtype="fp32").eval() if mlm else None
    sim_model = load(similarity, device=resolve_device(device), dtype="fp32").eval() if similarity else victim
    max_length = max_length or training_option(info, "max_length", None, 128)
    texts, labels = [ex.texts[0] for ex in examples], [ex.label for ex in examples]
    report: dict[str, Any] = {"checkpoint": checkpoint, "data": data, "examples": len(examples), "attacks": {}}
    all_results = {}
    for name in methods:
        config = AttackConfig(method=name, max_candidates=max_candidates, min_similarity=min_similarity,
                              max_change=max_change, max_length=max_length, seed=seed)
        results, summary = run_attack(victim, texts, labels, config, mlm=mlm_model,
                                      similarity=sim_model if similarity or name == "word" else None,
                                      progress=progress)
        summary["similarity_model"] = similarity or "the classifier's own encoder"
        report["attacks"][name] = summary
        all_results[name] = results
        print(format_summary(summary), flush=True)
    with lio.atomic_dir(out) as tmp:
        for name, results in all_results.items():
            write_results(tmp, name, results)
        adversarial = [(r.adversarial, r.label) for rs in all_results.values() for r in rs if r.status == "success"]
        lio.write_text(tmp / "adversarial.tsv", f"{label_column}\t{column}\n" + "".join(
            f"{label}\t{text}\n" for text, label in adversarial))
        if augment_rows is not None:
            rows = [(ex.label, ex.texts[0]) for ex in augment_rows] + [(label, text) for text, label in adversarial]
            lio.write_text(tmp / "augmented.tsv", f"{label_column}\t{column}\n" + "".join(
                f"{label}\t{' '.join(text.split())}\n" for label, text in rows))
            report["augmented"] = {"rows": len(rows), "adversarial": len(adversarial), "from": augment}
        lio.write_json(tmp / "report.json", report)
        lio.write_text(tmp / "attack.txt", "".join(format_summary(s) + "\n" for s in report["attacks"].values()))
    return report


__all__ = ["attention", "embed", "index_build", "search", "ask", "extract", "ngram_train", "ngram_perplexity",
           "attack"]
