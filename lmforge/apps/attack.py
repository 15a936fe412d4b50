"""Adversarial probes of a text classifier, with TextAttack's measures, offline.

Both attacks are greedy searches over words in order of importance (the drop in the true label's probability
when the word is deleted, TextAttack's "delete" ranking):

- word (BAE-R / BERT-Attack): a word is replaced by the candidates a masked language model proposes at its
  position (`mlm`: an encoder with a masked-LM head), or, without one, by its nearest neighbours in the
  classifier's token-embedding table (TextFooler's candidate set, with the model's own embeddings). A substitution
  is kept only if the sentence embedding of the new text stays within `min_similarity` (cosine) of the original's
  (`similarity`: a sentence encoder such as all-MiniLM-L6-v2, TextAttack's USE constraint); stop words and words
  already changed are never replaced.
- char (DeepWordBug): a word gets one character edit: swap two neighbours, delete one, insert or substitute a
  letter.

A text is attacked until the prediction flips (success) or `max_change` of its words are changed (failure); among
flipping candidates the most similar one is kept, otherwise the one that lowers the true label's probability most.

Measures (TextAttack's attack summary): original accuracy; attack success rate (successes over attacked, i.e.
correctly classified, texts); accuracy under attack; the mean % of words changed in successful attacks; the mean
number of classifier queries per attacked text.
"""

from __future__ import annotations

import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import io as lio
from ..errors import ConfigError
from ..model import Transformer

STOPWORDS = frozenset("""a about above across after afterwards again against ain all almost alone along already also
although am among amongst an and another any anyhow anyone anything anyway anywhere are aren aren't around as at
be became because become becomes becoming been before beforehand behind being below beside besides between beyond
both but by can cannot could couldn couldn't d didn didn't do does doesn doesn't don don't down due during either
else elsewhere empty enough even ever everyone everything everywhere except first for former formerly from hadn
hadn't hasn hasn't haven haven't he hence her here hereafter hereby herein hereupon hers herself him himself his how
however hundred i if in indeed into is isn isn't it it's its itself just latter latterly least ll may me meanwhile
mightn mightn't mine more moreover most mostly must mustn mustn't my myself namely needn needn't neither never
nevertheless next no nobody none noone nor not nothing now nowhere o of off on once one only onto or other others
otherwise our ours ourselves out over per please s same shan shan't she she's should've shouldn shouldn't somehow
something sometime somewhere such t than that that'll the their theirs them themselves then thence there
thereafter thereby therefore therein thereupon these they this those through throughout thru thus to too toward
towards under unless until up upon used ve was wasn wasn't we were weren weren't what whatever when whence whenever
where whereafter whereas whereby wherein whereupon wherever whether which while whither who whoever whole whom whose
why with within without won won't would wouldn wouldn't y yet you you'd you'll you're you've your yours yourself
yourselves""".split())  # TextAttack's default stop words (NLTK's + sklearn's)
WORD = re.compile(r"^[a-zA-Z][a-zA-Z'-]*$")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass
class AttackConfig:
    method: str = "word"  # word | char
    max_candidates: int = 30  # substitutions tried per word
    min_similarity: float = 0.85  # cosine of sentence embeddings (word attack)
    max_change: float = 0.3  # of the words of a text
    max_length: int = 128
    batch_size: int = 64
    seed: int = 0


@dataclass
class AttackResult:
    index: int
    label: str
    original: str
    original_prediction: str
    status: str  # skipped (already wrong) | success | failure
    adversarial: str | None = None
    adversarial_prediction: str | None = None
    words_changed: int = 0
    words: int = 0
    queries: int = 0
    similarity: float | None = None
    changes: list[tuple[str, str]] = field(default_factory=list)


class Victim:
    """The classifier under attack: probabilities of texts, counting every text scored as one query."""

    def __init__(self, model: Transformer, max_length: int, batch_size: int) -> None:
        if model.config.head != "classify":
            raise ConfigError(f"the model has a {model.config.head} head; attacks probe a classifier fine-tuned "
                              "with `lmforge finetune classify`")
        from ..finetune.classify import truncating_backend

        self.model, self.max_length, self.batch_size = model, max_length, batch_size
        self.labels = model.config.label_names
        self.queries = 0
        self.backend = truncating_backend(model.tokenizer, max_length, None)  # made once: a copy per call is slow
        self.use_types = model.config.type_vocab_size > 0

    @torch.no_grad()
    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities (n, labels), as `lmforge predict` computes them (truncated to max_length)."""
        from ..finetune.classify import example_logits
        from ..finetune.objectives import Rows

        self.queries += len(texts)
        rows = Rows(types=[] if self.use_types else None)
        for i, enc in enumerate(self.backend.encode_batch(list(texts), add_special_tokens=True)):
            rows.ids.append(np.asarray(enc.ids, dtype=np.int64))
            if rows.types is not None:
                rows.types.append(np.asarray(enc.type_ids, dtype=np.int64))
            rows.labels.append(0)
            rows.owner.append(i)
        was = self.model.training
        self.model.eval()
        try:
            return torch.softmax(example_logits(self.model, rows, len(texts), self.batch_size), -1).numpy()
        finally:
            self.model.train(was)


class Similarity:
    """Cosine similarity of sentence embeddings (cached per text)."""

    def __init__(self, model: Transformer, path: str | None = None) -> None:
        from .embed import pooling_spec

        self.model = model
        if not getattr(model, "pooling_spec", None):
            model.pooling_spec = pooling_spec(model, path)
        self.cache: dict[str, np.ndarray] = {}

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        from .embed import embed

        new = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if new:
            for t, v in zip(new, embed(self.model, new, normalize=True)):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts])

    def to(self, original: str, texts: Sequence[str]) -> np.ndarray:
        return self.vectors(texts) @ self.vectors([original])[0]


class Candidates:
    """Substitutions for the word at a position: from a masked LM, from embedding neighbours, or character edits."""

    def __init__(self, config: AttackConfig, mlm: Transformer | None, embeddings: Transformer | None) -> None:
        self.config, self.mlm = config, mlm
        self.rng = random.Random(config.seed)
        self.neighbours: dict[str, list[str]] = {}
        self.embeddings = embeddings
        if mlm is not None:
            if mlm.config.head != "lm" or mlm.config.arch != "encoder" or mlm.tokenizer is None:
                raise ConfigError("--mlm must be an encoder with its masked-LM head (a BERT-style model from "
                                  "`lmforge pretrain --objective mlm`, or a Hugging Face *ForMaskedLM folder)")
            self.mask_id = mlm.tokenizer.token_to_id("[MASK]") or mlm.tokenizer.token_to_id("<mask>")
            if self.mask_id is None:
                raise ConfigError("--mlm: the tokenizer has no [MASK] or <mask> token")
            self.whole, self.spelled = whole_words(mlm.tokenizer)

    def words(self, words: list[str], position: int) -> list[str]:
        if self.config.method == "char":
            return self.char_edits(words[position])
        if self.mlm is not None:
            return self.from_mlm(words, position)
        return self.from_embeddings(words[position])

    @torch.no_grad()
    def from_mlm(self, words: list[str], position: int) -> list[str]:
        tok = self.mlm.tokenizer
        left, right = " ".join(words[:position]), " ".join(words[position + 1:])
        ids = tok.encode(left, add_special_tokens=False) if left else []
        at = len(ids)
        ids = ids + [self.mask_id] + (tok.encode(right, add_special_tokens=False) if right else [])
        start, end = tok.encode("a", add_special_tokens=True), tok.encode("a", add_special_tokens=False)
        prefix = start[:start.index(end[0])] if end and end[0] in start else []
        suffix = start[len(prefix) + len(end):]
        limit = self.mlm.config.context_length - len(prefix) - len(suffix)
        lo = max(0, min(at - limit // 2, len(ids) - limit))
        window = prefix + ids[lo:lo + limit] + suffix
        device = next(self.mlm.parameters()).device
        logits = self.mlm(torch.tensor([window], device=device))[0, len(prefix) + at - lo].float()
        allowed = torch.full_like(logits, float("-inf"))
        allowed[self.whole] = 0
        top = (logits + allowed).topk(min(self.config.max_candidates * 2, len(self.whole))).indices.tolist()
        original = words[position].lower()
        out = []
        for i in top:
            word = self.spelled[i]
            if word.lower() != original and word.lower() not in STOPWORDS:
                out.append(word)
        return out[:self.config.max_candidates]

    @torch.no_grad()
    def from_embeddings(self, word: str) -> list[str]:
        if word in self.neighbours:
            return self.neighbours[word]
        model = self.embeddings
        tok = model.tokenizer
        ids = next((x for x in (tok.encode(" " + word), tok.encode(word)) if len(x) == 1), None)
        if ids is None:  # a word of several tokens has no one embedding
            self.neighbours[word] = []
            return []
        table = model.tok_embed.weight.float()
        if not hasattr(self, "_unit"):
            self._unit = torch.nn.functional.normalize(table, dim=1)
            whole, self._spelled = whole_words(tok)
            self._whole = torch.zeros(table.shape[0], dtype=torch.bool)
            self._whole[whole] = True
        scores = self._unit @ self._unit[ids[0]]
        scores[~self._whole] = -2
        scores[ids[0]] = -2
        top = scores.topk(min(self.config.max_candidates * 2, int(self._whole.sum()))).indices.tolist()
        out = [self._spelled[i] for i in top if self._spelled[i].lower() not in STOPWORDS
               and self._spelled[i].lower() != word.lower()]
        self.neighbours[word] = out[:self.config.max_candidates]
        return self.neighbours[word]

    def char_edits(self, word: str) -> list[str]:
        if len(word) < 3 or not word.isalpha():
            return []
        edits = set()
        for i in range(len(word) - 1):
            edits.add(word[:i] + word[i + 1] + word[i] + word[i + 2:])  # swap
        for i in range(len(word)):
            edits.add(word[:i] + word[i + 1:])  # delete
            edits.add(word[:i] + self.rng.choice(LETTERS) + word[i + 1:])  # substitute
            edits.add(word[:i] + self.rng.choice(LETTERS) + word[i:])  # insert
        edits.discard(word)
        edits = sorted(edits)
        self.rng.shuffle(edits)
        return edits[:self.config.max_candidates]


def whole_words(tokenizer) -> tuple[list[int], dict[int, str]]:
    """The ids of tokens that spell a whole word (letters; not a WordPiece continuation) and their spelling, for
    any tokenizer (WordPiece, byte-level BPE with its space marker, SentencePiece)."""
    ids, spelled = [], {}
    for i in range(tokenizer.vocab_size):
        token = tokenizer.id_to_token(i) or ""
        if token.startswith(("##", "\uff03\uff03")) or i in tokenizer.special_ids:
            continue
        word = tokenizer.decode([i]).strip()
        if WORD.match(word):
            ids.append(i)
            spelled[i] = word
    return ids, spelled


def attack_one(index: int, text: str, label: str, victim: Victim, candidates: Candidates,
               similarity: Similarity | None, config: AttackConfig) -> AttackResult:
    words = text.split()
    true = victim.labels.index(label)
    start_queries = victim.queries
    probs = victim.probs([text])[0]
    predicted = victim.labels[int(probs.argmax())]
    result = AttackResult(index, label, text, predicted, "skipped", words=len(words))
    if predicted != label or not words:
        result.queries = victim.queries - start_queries
        return result
    positions = [i for i, w in enumerate(words) if w.lower() not in STOPWORDS and any(c.isalnum() for c in w)]
    if len(words) > 1 and positions:
        deleted = [" ".join(words[:i] + words[i + 1:]) for i in positions]
        drop = probs[true] - victim.probs(deleted)[:, true]
        positions = [positions[i] for i in np.argsort(-drop, kind="stable")]
    budget = max(1, int(config.max_change * len(words)))
    current, current_p, changed = list(words), probs[true], []
    for position in positions:
        if len(changed) >= budget:
            break
        options = candidates.words(current, position)
        if not options:
            continue
        texts = [" ".join(current[:position] + [o] + current[position + 1:]) for o in options]
        sims = np.ones(len(texts))
        if similarity is not None:
            sims = similarity.to(text, texts)
            keep = sims >= config.min_similarity
            options, texts, sims = [o for o, k in zip(options, keep) if k], [t for t, k in zip(texts, keep) if k], \
                sims[keep]
            if not texts:
                continue
        p = victim.probs(texts)
        flipped = np.nonzero(p.argmax(1) != true)[0]
        if len(flipped):
            best = flipped[np.argmax(sims[flipped])]
            current[position] = options[best]
            changed.append((words[position], options[best]))
            result.status, result.adversarial = "success", texts[best]
            result.adversarial_prediction = victim.labels[int(p[best].argmax())]
            result.similarity = float(sims[best]) if similarity is not None else None
            break
        best = int(np.argmin(p[:, true]))
        if p[best, true] < current_p:
            current[position], current_p = options[best], p[best, true]
            changed.append((words[position], options[best]))
    if result.status != "success":
        result.status = "failure"
        result.adversarial = " ".join(current)
        result.adversarial_prediction = predicted
    result.words_changed = len(changed)
    result.changes = changed
    result.queries = victim.queries - start_queries
    return result


def summarize(results: Sequence[AttackResult]) -> dict[str, Any]:
    """TextAttack's attack summary."""
    total = len(results)
    skipped = sum(r.status == "skipped" for r in results)
    success = [r for r in results if r.status == "success"]
    failure = sum(r.status == "failure" for r in results)
    attacked = [r for r in results if r.status != "skipped"]
    return {
        "examples": total, "successful": len(success), "failed": failure, "skipped": skipped,
        "original_accuracy": (total - skipped) / total if total else 0.0,
        "accuracy_under_attack": failure / total if total else 0.0,
        "attack_success_rate": len(success) / len(attacked) if attacked else 0.0,
        "words_perturbed_pct": 100 * float(np.mean([r.words_changed / r.words for r in success])) if success else 0.0,
        "words_per_input": float(np.mean([r.words for r in results])) if results else 0.0,
        "queries_per_example": float(np.mean([r.queries for r in attacked])) if attacked else 0.0,
    }


def run_attack(victim_model: Transformer, texts: Sequence[str], labels: Sequence[str], config: AttackConfig, *,
               mlm: Transformer | None = None, similarity: Transformer | None = None,
               progress: bool = False) -> tuple[list[AttackResult], dict[str, Any]]:
    """Attack every (text, label); returns the per-text results and the summary."""
    if config.method not in ("word", "char"):
        raise ConfigError(f"--method {config.method!r}: use word, char or word,char")
    if not 0 < config.max_change <= 1 or not -1 <= config.min_similarity <= 1 or config.max_candidates < 1:
        raise ConfigError("--max-change must be in (0, 1], --min-similarity in [-1, 1] and --max-candidates >= 1")
    unknown = sorted(set(labels) - set(victim_model.config.label_names))
    if unknown:
        raise ConfigError(f"label(s) {', '.join(map(repr, unknown[:5]))} of the data are not among the classifier's "
                          f"({', '.join(victim_model.config.label_names)})")
    victim = Victim(victim_model, config.max_length, config.batch_size)
    candidates = Candidates(config, mlm if config.method == "word" else None, victim_model)
    sim = Similarity(similarity) if (similarity is not None and config.method == "word") else None
    start = time.time()
    results = []
    from tqdm.auto import tqdm

    for i, (text, label) in enumerate(tqdm(list(zip(texts, labels)), desc=f"{config.method} attack",
                                           disable=not progress)):
        results.append(attack_one(i, text, label, victim, candidates, sim, config))
    summary = summarize(results)
    summary.update(method=config.method, seconds=round(time.time() - start, 1),
                   candidates="masked LM" if (mlm is not None and config.method == "word") else
                   ("embedding neighbours" if config.method == "word" else "character edits"),
                   config=asdict(config))
    return results, summary


def write_results(out: Path, method: str, results: Sequence[AttackResult]) -> None:
    lio.write_text(out / f"{method}.jsonl", "".join(json.dumps(asdict(r), ensure_ascii=False) + "\n"
                                                    for r in results))


def format_summary(summary: dict[str, Any]) -> str:
    return (f"{summary['method']} attack ({summary['candidates']}): {summary['examples']} examples, original accuracy "
            f"{100 * summary['original_accuracy']:.1f}%, accuracy under attack "
            f"{100 * summary['accuracy_under_attack']:.1f}%, attack success rate "
            f"{100 * summary['attack_success_rate']:.1f}%, {summary['words_perturbed_pct']:.1f}% words perturbed, "
            f"{summary['queries_per_example']:.1f} queries per example ({summary['seconds']}s)")


__all__ = ["AttackConfig", "AttackResult", "Victim", "Similarity", "Candidates", "attack_one", "run_attack",
           "summarize", "write_results", "format_summary", "STOPWORDS"]
