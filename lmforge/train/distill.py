"""Knowledge distillation as an objective of the one training loop, and students initialised from a teacher.

`Distillation(inner, teacher, temperature=2.0, alpha=0.5, cosine=0.0)` wraps any objective whose batches carry
`labels` aligned with the model's logits (a classifier's label per row, a tagger's per token, next-token targets of
a causal LM): it keeps the inner objective's batches, epochs and target count, and its loss is (Hinton et al. 2015;
DistilBERT's triple loss, Sanh et al. 2019)

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))   (soft targets, per target)
  + (1 - alpha) * cross-entropy(student, labels)                       (hard labels)
  + cosine * (1 - cos(student hidden, teacher hidden))                 (last hidden states, per real token)

summed over targets (the loop divides by their count, so every term is a mean per target). T^2 keeps the soft
term's gradients at the scale of the hard term's as T changes. In evaluation (model.eval()) the loss is the
student's own cross-entropy, so the validation loss and perplexity compare with a student trained without a teacher.

The teacher is frozen, in eval mode, run under no_grad on the student's device (moved there at the first batch), in
the loop's precision (its autocast); its vocabulary or labels must be the student's (`label_map` reorders a
classifier's labels).

`student_from_teacher(teacher, "every-other")` is DistilBERT's initialisation: the teacher's config with half the
layers, embeddings, norms and heads copied, and block i of the student copied from block 2i of the teacher.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..model import Transformer
from .objectives import Batch, Objective


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), summed over rows (the last axis is the classes)."""
    t = temperature
    log_q = F.log_softmax(student.float() / t, dim=-1)
    log_p = F.log_softmax(teacher.float() / t, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum() * t * t


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum over rows of 1 - cos(student row, teacher row)."""
    return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).sum()


def _hidden(model: Transformer, batch: Batch) -> torch.Tensor:
    """Final hidden states, as the objectives compute them (decoders without the right-padding mask)."""
    if model.config.arch == "decoder":
        return model.encode(batch["input_ids"])
    return model.encode(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))


class Distillation(Objective):
    """An objective with a teacher's soft targets (see the module docstring)."""

    def __init__(self, inner: Objective, teacher: Transformer, *, temperature: float = 2.0, alpha: float = 0.5,
                 cosine: float = 0.0, label_map: Sequence[int] | None = None) -> None:
        if not temperature > 0:
            raise ConfigError(f"--temperature {temperature} must be > 0 (1 = the teacher's own distribution; 2-4 is usual)")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"--alpha {alpha} must be in [0, 1] (the weight of the soft targets; 1 - alpha weighs the "
                              "hard labels)")
        if cosine < 0:
            raise ConfigError(f"--cosine {cosine} must be >= 0 (the weight of the hidden-state cosine loss)")
        self.inner, self.teacher = inner, teacher
        self.temperature, self.alpha, self.cosine = float(temperature), float(alpha), float(cosine)
        self.label_map = torch.as_tensor(list(label_map), dtype=torch.long) if label_map is not None else None
        self.name = f"distill-{inner.name}"
        self.perplexity = inner.perplexity
        teacher.eval()
        teacher.requires_grad_(False)

    # the inner objective's data, untouched
    def batch(self, first: int, size: int) -> Batch:
        return self.inner.batch(first, size)

    def eval_batches(self, size: int, limit: int | None) -> Iterator[Batch]:
        return self.inner.eval_batches(size, limit)

    def tokens(self, batch: Batch) -> int:
        return self.inner.tokens(batch)

    def samples_per_epoch(self) -> int:
        return self.inner.samples_per_epoch()

    def data_state(self) -> dict | None:
        return self.inner.data_state()

    def load_data_state(self, state: dict | None, samples_seen: int) -> None:
        self.inner.load_data_state(state, samples_seen)

    def count(self, batch: Batch) -> torch.Tensor:
        return (batch["labels"] != -100).sum()

    def _teacher_on(self, device: torch.device) -> Transformer:
        if self.teacher.device != device:
            self.teacher.to(device)
        return self.teacher

    def parts(self, model: Transformer, batch: Batch) -> dict[str, torch.Tensor]:
        """The summed terms of the loss: "hard", and in training "soft" and (with cosine) "cosine"."""
        labels = batch["labels"]
        chosen = labels != -100
        hidden = _hidden(model, batch)
        mask = batch.get("attention_mask")
        lm = model.config.head == "lm"
        # a language model's head runs only where there are targets (the vocabulary projection is the large one)
        logits = model.head_logits(hidden[chosen]) if lm else model.head_logits(hidden, mask)[chosen]
        out = {"hard": F.cross_entropy(logits.float(), labels[chosen], reduction="sum")}
        if not model.training or (self.alpha == 0 and not self.cosine):  # (alpha 0: the teacher is not needed)
            return out
        teacher = self._teacher_on(labels.device)
        with torch.no_grad():
            t_hidden = _hidden(teacher, batch)
            t_logits = teacher.head_logits(t_hidden[chosen]) if lm else teacher.head_logits(t_hidden, mask)[chosen]
            if self.label_map is not None:
                t_logits = t_logits[..., self.label_map.to(t_logits.device)]
        if t_logits.shape != logits.shape:
            raise ConfigError(f"the teacher gives {t_logits.shape[-1]} outputs per target and the student "
                              f"{logits.shape[-1]}; distillation needs the same vocabulary (or labels)")
        out["soft"] = soft_target_loss(logits, t_logits, self.temperature)
        if self.cosine:
            if t_hidden.shape[-1] != hidden.shape[-1]:
                raise ConfigError(f"--cosine aligns hidden states: the teacher's are {t_hidden.shape[-1]} wide, the "
                                  f"student's {hidden.shape[-1]}; use a student of the teacher's width or --cosine 0")
            real = mask.bool() if mask is not None else torch.ones(hidden.shape[:2], dtype=torch.bool,
                                                                  device=hidden.device)
            # the mean over real tokens, weighted by the target count: after the loop's division, a mean per token
            out["cosine"] = cosine_loss(hidden[real], t_hidden[real]) * chosen.sum() / real.sum().clamp(min=1)
        return out

    def loss(self, model: Transformer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        parts = self.parts(model, batch)
        if "soft" not in parts:
            return parts["hard"], self.count(batch)
        total = self.alpha * parts["soft"] + (1 - self.alpha) * parts["hard"]
        if "cosine" in parts:
            total = total + self.cosine * parts["cosine"]
        return total, self.count(batch)


# ---- students ------------------------------------------------------------------------------------------------

STUDENT_INITS = ("every-other-layer",)


def student_from_teacher(teacher: Transformer, init: str = "every-other-layer") -> Transformer:
    """A student of half the teacher's depth (layers 0, 2, 4, ... of the teacher; DistilBERT's initialisation),
    everything else (embeddings, norms, heads) copied. Its config is the teacher's with n_layer halved."""
    if init not in STUDENT_INITS:
        raise ConfigError(f"--student-init {init!r} is not supported; use {' | '.join(STUDENT_INITS)}")
    config = teacher.config
    if config.arch == "encoder_decoder":
        raise ConfigError("--student-init every-other-layer is for encoder or decoder models, not encoder-decoders")
    if config.unique_layers:
        raise ConfigError("--student-init every-other-layer needs one block per layer; this teacher shares layers "
                          "(unique_layers)")
    for field in ("lora", "quant", "lowrank"):
        if getattr(config, field, None):
            raise ConfigError(f"the teacher has {field} layers; distil from a plain model (merge or use the original)")
    keep = list(range(0, config.n_layer, 2))
    student_config = config.replace(n_layer=len(keep), name=(config.name or config.arch) + "-half")
    student = Transformer(student_config)
    stack = "encoder" if config.arch == "encoder" else "decoder"
    state = {}
    for key, value in teacher.state_dict().items():
        prefix = f"{stack}.layers."
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in keep:
                state[f"{prefix}{keep.index(int(index))}.{rest}"] = value.clone()
        else:
            state[key] = value.clone()
    missing, unexpected = student.load_state_dict(state, strict=False)
    if set(missing) - student.tied_keys() or unexpected:
        raise ConfigError(f"the student's tensors do not match the teacher's ({(missing or unexpected)[:3]})")
    student.tokenizer = getattr(teacher, "tokenizer", None)
    return student.to(teacher.device)


__all__ = ["Distillation", "soft_target_loss", "cosine_loss", "student_from_teacher", "STUDENT_INITS"]
