"""Generation options: transformers' names, meanings and defaults, validated with one-line errors.

`GenerationOptions.from_kwargs(**options)` is what `lmforge.generate` accepts. Every value is checked up front
and a bad one raises `ConfigError` naming the option and its allowed range, before any model work starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError


@dataclass
class GenerationOptions:
    """How to pick tokens. Names and meanings follow `transformers.GenerationConfig`."""

    max_new_tokens: int = 20  # tokens to generate at most (transformers' default budget is 20)
    do_sample: bool = False  # False: greedy (num_beams=1) or beam search; True: sampling or beam sampling
    temperature: float = 1.0  # sampling only; 0 means greedy
    top_k: int | None = 50  # sampling only; 0 or None disables (transformers' default is 50)
    top_p: float | None = 1.0  # sampling only; nucleus mass in (0, 1]
    min_p: float | None = None  # sampling only; drop tokens below min_p * p(most likely token)
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search: score = sum log p / (generated length ** length_penalty)
    early_stopping: bool | str = False  # beam search: True | False | "never"
    num_return_sequences: int = 1
    repetition_penalty: float = 1.0  # > 1 penalizes tokens already in the prompt or the output (CTRL paper)
    presence_penalty: float = 0.0  # OpenAI's: subtracted from the logit of every token already generated
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per earlier occurrence in the generated tokens
    no_repeat_ngram_size: int = 0  # > 0: an n-gram of this size never occurs twice
    stop: list[str] | None = None  # stop strings: generation ends when the text contains one (it is cut off)
    seed: int | None = None  # sampling: the same seed gives the same text, alone or in any batch
    eos_token_id: int | list[int] | None = None  # None: the model's (config, then tokenizer)
    pad_token_id: int | None = None  # fills finished rows in token-id outputs; None: the model's
    ignore_eos: bool = False  # never stop at EOS (benchmarks)
    use_cache: bool = True  # False recomputes the whole sequence at every step (for testing)
    compile: str = "off"  # the decode step: "off" (the model's forward, or lmforge's fused CPU layers where they apply:
    # lmforge.generate.static.fused_ok), "static" (a static KV cache and the step
    # written out, lmforge.generate.static), "on" (that step torch.compile'd: inductor on a CPU, CUDA graphs on a GPU)
    batch_size: int | None = None  # prompts per forward pass; None: all at once
    truncate: str = "error"  # "error": a prompt that does not fit the context is an error; "left": drop its start
    skip_special_tokens: bool = True  # text outputs leave out special tokens (EOS, chat markers)

    @classmethod
    def from_kwargs(cls, **options: Any) -> "GenerationOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown generation option(s) {', '.join(unknown)}; known options: "
                              f"{', '.join(sorted(known))}")
        opts = cls(**options)
        opts.validate()
        return opts

    def replace(self, **changes: Any) -> "GenerationOptions":
        opts = dataclasses.replace(self, **changes)
        opts.validate()
        return opts

    # ---- derived ---------------------------------------------------------------------------------------
    @property
    def sampling(self) -> bool:
        return self.do_sample and self.temperature != 0

    @property
    def beam_search(self) -> bool:
        return self.num_beams > 1

    @property
    def stops(self) -> list[str]:
        return list(self.stop or [])

    # ---- checks ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        _whole("max_new_tokens", self.max_new_tokens, 1)
        _whole("num_beams", self.num_beams, 1)
        _whole("num_return_sequences", self.num_return_sequences, 1)
        _whole("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        if self.top_k is not None:
            _whole("top_k", self.top_k, 0)
        if self.batch_size is not None:
            _whole("batch_size", self.batch_size, 1)
        if self.seed is not None:
            _whole("seed", self.seed, 0)
        if not isinstance(self.do_sample, bool):
            raise ConfigError(f"do_sample={self.do_sample!r} must be true or false")
        _number("temperature", self.temperature)
        if self.temperature < 0:
            raise ConfigError(f"temperature={self.temperature} is out of range; use temperature >= 0 "
                              "(0 = greedy, 1 = the model's distribution)")
        if self.top_p is not None:
            _number("top_p", self.top_p)
            if not 0 < self.top_p <= 1:
                raise ConfigError(f"top_p={self.top_p} is out of range; use 0 < top_p <= 1 (1 = no nucleus filter)")
        if self.min_p is not None:
            _number("min_p", self.min_p)
            if not 0 <= self.min_p <= 1:
                raise ConfigError(f"min_p={self.min_p} is out of range; use 0 <= min_p <= 1")
        _number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ConfigError(f"repetition_penalty={self.repetition_penalty} is out of range; use "
                              "repetition_penalty > 0 (1 = none, > 1 discourages repeats)")
        for name in ("presence_penalty", "frequency_penalty"):
            _number(name, getattr(self, name))
            if not -2 <= getattr(self, name) <= 2:
                raise ConfigError(f"{name}={getattr(self, name)} is out of range; use -2 <= {name} <= 2 "
                                  "(0 = none, > 0 discourages repeats), as OpenAI's API")
        if self.compile not in ("off", "static", "on"):
            raise ConfigError(f"compile={self.compile!r} is not allowed; use off | static | on (a static KV cache with the "
                              "decode step compiled)")
        _number("length_penalty", self.length_penalty)
        if self.early_stopping not in (True, False, "never"):
            raise ConfigError(f"early_stopping={self.early_stopping!r} is not allowed; use true | false | never")
        if self.truncate not in ("error", "left"):
            raise ConfigError(f"truncate={self.truncate!r} is not allowed; use error | left")
        if self.stop is not None:
            if isinstance(self.stop, str):
                self.stop = [self.stop]
            if not all(isinstance(s, str) and s for s in self.stop):
                raise ConfigError("stop must be a list of non-empty strings")
        if self.eos_token_id is not None:
            ids = self.eos_token_id if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]
            for i in ids:
                _whole("eos_token_id", i, 0)
        if self.pad_token_id is not None:
            _whole("pad_token_id", self.pad_token_id, 0)
        n, beams = self.num_return_sequences, self.num_beams
        if beams > 1 and n > beams:
            raise ConfigError(f"num_return_sequences={n} is larger than num_beams={beams}; beam search returns "
                              f"at most num_beams sequences, so use num_return_sequences <= {beams}")
        if beams > 1 and (self.presence_penalty or self.frequency_penalty):
            raise ConfigError("presence_penalty and frequency_penalty apply to greedy decoding and sampling, not to "
                              "beam search; use repetition_penalty with num_beams > 1")
        if beams == 1 and n > 1 and not self.sampling:
            raise ConfigError(f"num_return_sequences={n} needs do_sample=True or num_beams >= {n}: greedy "
                              "decoding has only one answer")


def _whole(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{name}={value!r} is out of range; it must be a whole number >= {low}")


def _number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name}={value!r} must be a number")


__all__ = ["GenerationOptions"]
