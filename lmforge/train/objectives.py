"""Training objectives: what a batch is and what its loss is. The Trainer knows nothing else about a task.

An objective gives
- `batch(first, size)`: the training batch of samples first .. first + size - 1 (a pure function of them),
- `eval_batches(size, limit)`: fixed evaluation batches,
- `loss(model, batch)`: the *summed* loss and the number of targets, so the loop can normalise over all
  micro-batches of a step (and all processes) exactly,
- `tokens(batch)`: input tokens, for throughput.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..data.batches import PairSet, PreparedData, TokenWindows, mask_tokens
from ..data.stream import JsonlStream, StreamWindows
from ..errors import ConfigError, DataError, with_article
from ..model import Transformer, cross_entropy
from ..tokenizer import Tokenizer

Batch = dict[str, torch.Tensor]


def _pad(rows: list[np.ndarray | list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.as_tensor(np.asarray(r, dtype=np.int64))
    return out


class Objective:
    name = "objective"
    perplexity = True  # the loss is per predicted token, so exp(loss) is a perplexity worth reporting

    def batch(self, first: int, size: int) -> Batch:
        raise NotImplementedError

    def eval_batches(self, size: int, limit: int | None) -> Iterator[Batch]:
        raise NotImplementedError

    def loss(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def count(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"] != -100).sum()

    def tokens(self, batch: Batch) -> int:
        return int(batch["input_ids"].numel())

    def samples_per_epoch(self) -> int:
        raise NotImplementedError

    def data_state(self) -> dict | None:
        """Where this process's readers of streamed data stand (None: batches are pure functions of the step)."""
        return None

    def load_data_state(self, state: dict | None, samples_seen: int) -> None:
        """Continue streamed data from `data_state()`s merged over processes, at `samples_seen` samples."""


def _train_windows(train: np.ndarray | JsonlStream, length: int, seed: int, extra: int) -> TokenWindows | StreamWindows:
    """Training windows from token files (shuffled per epoch) or from a streamed corpus (read in order)."""
    if isinstance(train, JsonlStream):
        return StreamWindows(train, length, extra)
    return TokenWindows(train, length, seed, "train")


class _Windowed(Objective):
    """An objective over windows of a token stream (prepared token files or a streamed corpus)."""

    train: TokenWindows | StreamWindows

    def samples_per_epoch(self) -> int:
        if isinstance(self.train, StreamWindows):
            raise ConfigError("--epochs needs data of known size, and a streamed corpus is read as it comes; give "
                              "--max-steps")
        return self.train.per_epoch

    def data_state(self) -> dict | None:
        return self.train.state() if isinstance(self.train, StreamWindows) else None

    def load_data_state(self, state: dict | None, samples_seen: int) -> None:
        if isinstance(self.train, StreamWindows):
            self.train.load(state, samples_seen)


class CausalLM(_Windowed):
    """Next-token prediction on windows of a packed token stream."""

    name = "clm"

    def __init__(self, train: np.ndarray | JsonlStream, val: np.ndarray | None, context: int, seed: int) -> None:
        self.train = _train_windows(train, context, seed, extra=1)
        self.val = TokenWindows(val, context, seed, "val") if val is not None and len(val) > 1 else None

    def batch(self, first: int, size: int) -> Batch:
        w = self.train.windows(first, size)  # (B, T + 1)
        return {"input_ids": w[:, :-1], "labels": w[:, 1:]}

    def eval_batches(self, size: int, limit: int | None) -> Iterator[Batch]:
        if self.val is None:
            return
        chunks = self.val.sequential()
        for n, i in enumerate(range(0, len(chunks), size)):
            if limit and n >= limit:
                return
            rows = chunks[i: i + size]
            yield {"input_ids": _pad([r[:-1] for r in rows], 0), "labels": _pad([r[1:] for r in rows], -100)}

    def loss(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["input_ids"])
        return cross_entropy(logits, batch["labels"]), self.count(batch)


class MaskedLM(_Windowed):
    """BERT's masked LM (15%, 80/10/10) with optional next-sentence prediction, on windows of a token stream."""

    name = "mlm"

    def __init__(self, train: np.ndarray, val: np.ndarray | None, context: int, seed: int, tokenizer: Tokenizer,
                 probability: float = 0.15, nsp: bool = False) -> None:
        if tokenizer.mask_id is None:
            raise DataError("masked LM needs a tokenizer with a mask token; train it with "
                            "`lmforge tokenizer train ... --arch encoder`")
        self.cls, self.sep = tokenizer.start_id, tokenizer.end_id
        if self.cls is None or self.sep is None:
            raise DataError("masked LM needs [CLS]/[SEP] (or BOS/EOS) tokens; train the tokenizer with --arch encoder")
        self.nsp = nsp
        self.inner = context - (3 if nsp else 2)
        if nsp and isinstance(train, JsonlStream):
            raise DataError("--nsp draws second segments from anywhere in the corpus, which a stream cannot; prepare the "
                            "data with `lmforge prepare`, or train without --nsp")
        self.train = _train_windows(train, self.inner, seed, extra=0)
        self.val = TokenWindows(val, self.inner, seed + 1, "val") if val is not None and len(val) > self.inner else None
        self.seed, self.probability = seed, probability
        self.vocab_size, self.mask_id = tokenizer.vocab_size, tokenizer.mask_id
        self.special = tokenizer.special_ids

    def _row(self, window: torch.Tensor, sample: int, source: TokenWindows) -> tuple[torch.Tensor, ...]:
        """One masked sequence; every random draw comes from a generator seeded by the sample's index, so a
        sample is the same however samples are grouped into micro-batches or processes."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + sample)
        cls, sep = torch.tensor([self.cls]), torch.tensor([self.sep])
        if self.nsp:
            split = int(torch.randint(1, self.inner, (1,), generator=gen))
            a, rest = window[:split], window[split:]
            is_next = bool(torch.rand(1, generator=gen) < 0.5)
            if not is_next:  # B from a random place in the stream
                start = int(torch.randint(0, len(source.tokens) - len(rest), (1,), generator=gen))
                rest = torch.from_numpy(np.asarray(source.tokens[start: start + len(rest)], dtype=np.int64))
            ids = torch.cat([cls, a, sep, rest, sep])
            types = torch.cat([torch.zeros(len(a) + 2, dtype=torch.long), torch.ones(len(rest) + 1, dtype=torch.long)])
        else:
            ids, types, is_next = torch.cat([cls, window, sep]), None, True
        inputs, labels = mask_tokens(ids, vocab_size=self.vocab_size, mask_id=self.mask_id, special_ids=self.special,
                                     probability=self.probability, generator=gen)
        return inputs, labels, types, torch.tensor(0 if is_next else 1)  # NSP label 0 = B follows A, as BERT

    def _build(self, windows: torch.Tensor, first: int, source: TokenWindows) -> Batch:
        rows = [self._row(w, first + i, source) for i, w in enumerate(windows)]
        batch: Batch = {"input_ids": torch.stack([r[0] for r in rows]), "labels": torch.stack([r[1] for r in rows])}
        if self.nsp:
            batch["token_type_ids"] = torch.stack([r[2] for r in rows])
            batch["nsp_labels"] = torch.stack([r[3] for r in rows])
        return batch

    def batch(self, first: int, size: int) -> Batch:
        return self._build(self.train.windows(first, size, extra=0), first, self.train)

    def eval_batches(self, size: int, limit: int | None) -> Iterator[Batch]:
        if self.val is None:
            return
        chunks = [c for c in self.val.sequential(extra=0) if len(c) == self.inner]
        for n, i in enumerate(range(0, len(chunks), size)):
            if limit and n >= limit:
                return
            yield self._build(torch.from_numpy(np.stack(chunks[i: i + size])), 10**9 + i, self.val)

    def loss(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = model.encode(batch["input_ids"], token_type_ids=batch.get("token_type_ids"))
        labels = batch["labels"]
        chosen = labels != -100
        logits = model.head_logits(hidden[chosen])  # the vocabulary projection only where it is needed
        loss = cross_entropy(logits, labels[chosen])
        count = chosen.sum()
        if self.nsp:
            nsp = F.cross_entropy(model.nsp_logits(hidden).float(), batch["nsp_labels"], reduction="sum")
            # weighted so that, after dividing by the target count, it is the mean NSP loss per sequence
            loss = loss + nsp * count / labels.shape[0]
        return loss, count


class Seq2Seq(Objective):
    """Target given source (teacher forcing): source + EOS -> BOS + target, predicting target + EOS."""

    name = "seq2seq"

    def __init__(self, train: PairSet, val: PairSet | None, context: int, seed: int, tokenizer: Tokenizer,
                 label_smoothing: float = 0.0) -> None:
        self.train, self.val, self.context, self.seed = train, val, context, seed
        self.bos, self.eos = tokenizer.start_id, tokenizer.end_id
        self.pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
        if self.bos is None or self.eos is None:
            raise DataError("seq2seq needs BOS and EOS tokens; train the tokenizer with --arch encoder_decoder")
        if len(train) == 0:
            raise DataError("the train split holds no pairs")
        self.label_smoothing = label_smoothing
        self._orders: dict[int, np.ndarray] = {}

    def samples_per_epoch(self) -> int:
        return len(self.train)

    def _collate(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
        n = self.context - 1
        src = [list(s[:n]) + [self.eos] for s, _ in pairs]
        tgt_in = [[self.bos] + list(t[:n]) for _, t in pairs]
        labels = [list(t[:n]) + [self.eos] for _, t in pairs]
        input_ids = _pad(src, self.pad)
        return {"input_ids": input_ids, "attention_mask": (_pad([[1] * len(s) for s in src], 0)),
                "decoder_input_ids": _pad(tgt_in, self.pad),
                "decoder_attention_mask": _pad([[1] * len(t) for t in tgt_in], 0),
                "labels": _pad(labels, -100)}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: self.train.order(self.seed, epoch)}
        return self._orders[epoch]

    def batch(self, first: int, size: int) -> Batch:
        pairs = []
        for i in range(first, first + size):
            epoch, k = divmod(i, len(self.train))
            pairs.append(self.train.pair(int(self._order(epoch)[k])))
        return self._collate(pairs)

    def eval_batches(self, size: int, limit: int | None) -> Iterator[Batch]:
        if self.val is None or len(self.val) == 0:
            return
        for n, i in enumerate(range(0, len(self.val), size)):
            if limit and n >= limit:
                return
            yield self._collate([self.val.pair(j) for j in range(i, min(i + size, len(self.val)))])

    def loss(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch["input_ids"], batch["attention_mask"], decoder_input_ids=batch["decoder_input_ids"],
                       decoder_attention_mask=batch["decoder_attention_mask"])
        smoothing = self.label_smoothing if model.training else 0.0
        return cross_entropy(logits, batch["labels"], label_smoothing=smoothing), self.count(batch)

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum() + batch["decoder_attention_mask"].sum())


# ---- choosing an objective -------------------------------------------------------------------------------

ARCH_OF = {"clm": "decoder", "mlm": "encoder", "seq2seq": "encoder_decoder"}
EXAMPLES = {"decoder": "gpt-mini, llama-tiny, gpt2-124m", "encoder": "bert-mini, bert-base",
            "encoder_decoder": "transformer-small, transformer-base"}


def default_objective(arch: str) -> str:
    """The pretraining objective of an architecture: clm (decoder), mlm (encoder), seq2seq (encoder-decoder)."""
    return {v: k for k, v in ARCH_OF.items()}[arch]


def check_objective(objective: str, config: ModelConfig, source: str) -> None:
    want = ARCH_OF[objective]
    if config.arch != want:
        raise ConfigError(f"objective {objective} needs {with_article(want)} model ({EXAMPLES[want]}); {source} is "
                          f"{with_article(config.arch)}")


def make_objective(name: str, data: PreparedData, tokenizer: Tokenizer, context: int, seed: int, *,
                   train_split: str = "train", val_split: str = "val", mlm_probability: float = 0.15,
                   nsp: bool = False, label_smoothing: float = 0.0) -> Objective:
    """The objective `name` (clm | mlm | seq2seq) over a prepared data folder's splits."""
    if name == "seq2seq":
        val = data.pairs(val_split)
        return Seq2Seq(data.pairs(train_split), val if len(val) else None, context, seed, tokenizer, label_smoothing)
    val = data.tokens(val_split)
    if name == "mlm":
        return MaskedLM(data.tokens(train_split), val, context, seed, tokenizer, mlm_probability, nsp)
    return CausalLM(data.tokens(train_split), val, context, seed)
