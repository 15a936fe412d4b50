"""Command-line entries: `lmforge sample`, `lmforge generate`, `lmforge chat`.

The command line uses short names where the issue does (`--beams`, `--no-repeat-ngram`); each maps to the
transformers-named option of `lmforge.generate`. Sampling is on when a sampling option (temperature, top-k,
top-p, min-p) is given, unless `--no-sample`; `--temperature 0` is greedy.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Literal

from ..errors import ConfigError, LmforgeError


Runtime = Literal["auto", "torch", "onnx"]


def _load(checkpoint: str, device: str, dtype: str, runtime: Runtime = "auto", threads: int | None = None):
    from ..export.onnx import is_onnx_export, load_onnx
    from ..loading import load

    onnx = is_onnx_export(checkpoint)
    if runtime == "onnx" and not onnx:
        raise ConfigError(f"--runtime onnx needs an ONNX export folder, and {checkpoint} is not one; make one with "
                          f"`lmforge export onnx {checkpoint} --out DIR`, then pass DIR")
    if runtime == "torch" and onnx:
        raise ConfigError(f"{checkpoint} is an ONNX export: it holds no PyTorch weights; use --runtime onnx (or auto), "
                          "or the checkpoint it was exported from")
    if threads is not None and not onnx:
        raise ConfigError("--threads sets ONNX Runtime's threads; it applies to an ONNX export only")
    model = load_onnx(checkpoint, threads=threads) if onnx else load(checkpoint, device=device, dtype=dtype)
    if model.tokenizer is None:
        raise LmforgeError(f"{checkpoint} has no tokenizer (tokenizer.json); generation from the command line "
                           "needs one")
    return model


def _default_new(given: int | None, default: int, model) -> int:
    """The user's max_new_tokens, else `default` capped at half the context (small models have short ones)."""
    return given if given is not None else max(1, min(default, model.config.context_length // 2))


def _sampling_options(sample: bool | None, temperature: float | None, top_k: int | None, top_p: float | None,
                      min_p: float | None) -> dict[str, Any]:
    given = any(v is not None for v in (temperature, top_k, top_p, min_p))
    do_sample = given if sample is None else sample
    out: dict[str, Any] = {"do_sample": do_sample}
    if temperature is not None:
        out["temperature"] = temperature
    out["top_k"] = top_k if top_k is not None else 50  # transformers' default
    if top_p is not None:
        out["top_p"] = top_p
    if min_p is not None:
        out["min_p"] = min_p
    return out


def sample_cli(
    checkpoint: str,
    prompt: str = "",
    *,
    max_new_tokens: int | None = None,
    temperature: float = 0.8,
    top_k: int = 50,
    top_p: float = 1.0,
    num_samples: int = 1,
    seed: int | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> list[str]:
    """Sample continuations of a prompt from a checkpoint and print them as they are decoded.

    Args:
        checkpoint: a checkpoint or training run folder.
        prompt: the text to continue (empty: start from BOS).
        max_new_tokens: tokens to generate per sample (default: 200, at most half the model's context).
        temperature: sampling temperature (0 = greedy).
        top_k: sample among the k most likely tokens (0 = all).
        top_p: nucleus sampling mass, in (0, 1].
        num_samples: how many samples to print.
        seed: random seed (the same seed gives the same samples).
        device: cpu | cuda | mps | auto.
        dtype: fp32 | bf16 | fp16 | auto (as saved).
    """
    from ..config import check_minimum
    from ..generate.api import generate

    check_minimum(1, num_samples=num_samples, max_new_tokens=max_new_tokens)
    model = _load(checkpoint, device, dtype)
    max_new_tokens = _default_new(max_new_tokens, 200, model)
    outputs = []
    for i in range(num_samples):
        if num_samples > 1:
            print(f"--- sample {i + 1} ---", flush=True)
        pieces = []
        for piece in generate(model, prompt, stream=True, max_new_tokens=max_new_tokens, do_sample=True,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              seed=None if seed is None else seed + i):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        outputs.append("".join(pieces))
    return outputs


def generate_cli(
    checkpoint: str,
    prompt: str | None = None,
    *,
    prompts: str | None = None,
    out: str | None = None,
    max_new_tokens: int | None = None,
    sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: Literal["false", "true", "never"] = "false",
    num_return_sequences: int = 1,
    repetition_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
    stop: list[str] | None = None,
    seed: int | None = None,
    batch_size: int = 8,
    truncate: Literal["error", "left"] = "error",
    ignore_eos: bool = False,
    compile: Literal["off", "static", "on"] = "off",
    device: str = "cpu",
    dtype: str = "auto",
    runtime: Runtime = "auto",
    threads: int | None = None,
    overwrite: bool = False,
) -> list[Any]:
    """Generate continuations: greedy, sampling or beam search, for one prompt or a file of prompts.

    Args:
        checkpoint: a checkpoint or training run folder.
        prompt: the text to continue (or use --prompts).
        prompts: a file with one prompt per line, or JSONL with a "prompt" field per line.
        out: write one JSON object per prompt to this .jsonl file (default: print).
        max_new_tokens: tokens to generate at most per prompt (default: 100, at most half the model's context).
        sample: sample instead of greedy/beam decoding (default: on when a sampling option is given).
        temperature: sampling temperature (0 = greedy).
        top_k: sample among the k most likely tokens (0 = all).
        top_p: nucleus sampling mass, in (0, 1].
        min_p: drop tokens below min_p x the probability of the most likely one.
        beams: beam search with this many beams (1 = no beam search).
        length_penalty: beam search: scores are divided by length ** length_penalty.
        early_stopping: beam search: stop when num_beams hypotheses are finished (true), by a heuristic
            (false, transformers' default), or only when no beam can improve (never).
        num_return_sequences: outputs per prompt (at most --beams with beam search; sampling otherwise).
        repetition_penalty: > 1 discourages tokens already in the prompt or the output.
        no_repeat_ngram: never repeat an n-gram of this size (0 = off).
        stop: a stop string (repeat the option for several); the output ends before it.
        seed: random seed for sampling.
        batch_size: prompts decoded together.
        truncate: a prompt longer than the context is an error, or loses its start (left).
        ignore_eos: keep generating after the end-of-text token.
        compile: the decode step: off (the model's forward; on an AVX-512 CPU lmforge's fused layers where they apply) |
            static (a static KV cache, the step written out) | on (that step compiled by torch.compile: minutes on a
            small CPU the first time); decoders, equal-length prompts.
        device: cpu | cuda | mps | auto.
        dtype: fp32 | bf16 | fp16 | auto (as saved).
        runtime: torch | onnx (an ONNX export folder, run by ONNX Runtime: `lmforge export onnx`) | auto (onnx for
            an ONNX export folder, else torch).
        threads: ONNX Runtime's intra-op threads (default: torch's thread count); ONNX exports only.
        overwrite: replace an existing --out file.
    """
    from ..io import atomic_write, check_output, read_prompts
    from ..generate.api import generate
    from ..generate.options import GenerationOptions

    if (prompt is None) == (prompts is None):
        raise ConfigError("give either a prompt or --prompts FILE (one of them)")
    options: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens or 1, num_beams=beams, length_penalty=length_penalty,
        early_stopping={"false": False, "true": True, "never": "never"}[early_stopping],
        num_return_sequences=num_return_sequences, repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram, stop=stop or None, seed=seed, truncate=truncate,
        ignore_eos=ignore_eos, batch_size=batch_size, compile=compile,
        **_sampling_options(sample, temperature, top_k, top_p, min_p))
    GenerationOptions.from_kwargs(**options)  # bad options fail before the model loads
    if out is not None:
        check_output(out, what="generations", overwrite=overwrite, folder=False, inputs=[prompts, checkpoint])
    model = _load(checkpoint, device, dtype, runtime, threads)
    options["max_new_tokens"] = _default_new(max_new_tokens, 100, model)
    t0 = time.perf_counter()
    if prompt is not None and out is None:
        if beams == 1 and num_return_sequences == 1:
            pieces = []
            for piece in generate(model, prompt, stream=True, **options):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print(flush=True)
            return ["".join(pieces)]
        texts = generate(model, prompt, **options)
        texts = texts if isinstance(texts, list) else [texts]
        for i, text in enumerate(texts):
            if len(texts) > 1:
                print(f"--- output {i + 1} ---")
            print(text, flush=True)
        return texts
    items = [prompt] if prompt is not None else read_prompts(prompts)
    results = generate(model, items, return_dict=True, **options)
    lines, new_tokens = [], 0
    for p, result in zip(items, results):
        group = result if isinstance(result, list) else [result]
        new_tokens += sum(len(r.token_ids) for r in group)
        record: dict[str, Any] = {"prompt": p}
        if len(group) == 1:
            record.update(output=group[0].text, tokens=len(group[0].token_ids), finish_reason=group[0].finish_reason)
        else:
            record.update(outputs=[r.text for r in group], tokens=[len(r.token_ids) for r in group],
                          finish_reasons=[r.finish_reason for r in group])
        lines.append(json.dumps(record, ensure_ascii=False))
    seconds = time.perf_counter() - t0
    if out is not None:
        with atomic_write(out) as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} result(s) to {out}: {new_tokens} new tokens in {seconds:.1f} s "
              f"({new_tokens / max(seconds, 1e-9):.1f} tokens/s)", file=sys.stderr)
    else:
        print("\n".join(lines), flush=True)
    return results


def chat_cli(
    checkpoint: str,
    *,
    system: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float = 0.7,
    top_k: int = 50,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    greedy: bool = False,
    seed: int | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    runtime: Runtime = "auto",
    threads: int | None = None,
) -> int:
    """Chat with a checkpoint in the terminal: replies stream as they are decoded.

    The conversation is rendered with the tokenizer's chat template (or a default ChatML one). When it no
    longer fits the context, the oldest turns are dropped and a notice says so. Type /reset to clear the
    history and /exit (or Ctrl-D) to quit.

    Args:
        checkpoint: a checkpoint or training run folder.
        system: a system message that opens the conversation.
        max_new_tokens: the longest reply, in tokens (default: 256, at most half the model's context).
        temperature: sampling temperature (0 = greedy).
        top_k: sample among the k most likely tokens (0 = all).
        top_p: nucleus sampling mass, in (0, 1].
        repetition_penalty: > 1 discourages repeating tokens of the conversation.
        greedy: always pick the most likely token (no sampling).
        seed: random seed for sampling.
        device: cpu | cuda | mps | auto.
        dtype: fp32 | bf16 | fp16 | auto (as saved).
        runtime: torch | onnx (an ONNX export folder: `lmforge export onnx`) | auto (onnx for an ONNX export folder).
        threads: ONNX Runtime's intra-op threads (default: torch's thread count); ONNX exports only.
    """
    from ..generate.chat import ChatSession, chat_repl

    model = _load(checkpoint, device, dtype, runtime, threads)
    session = ChatSession(model, system=system, max_new_tokens=_default_new(max_new_tokens, 256, model), do_sample=not greedy,
                          temperature=temperature, top_k=top_k, top_p=top_p,
                          repetition_penalty=repetition_penalty, seed=seed)
    try:  # line editing and history for a real terminal
        import readline  # noqa: F401
    except ImportError:
        pass
    banner = (f"lmforge chat: {checkpoint} ({model.num_parameters() / 1e6:.1f}M parameters, context "
              f"{model.config.context_length} tokens)")
    return chat_repl(session, banner=banner)


__all__ = ["sample_cli", "generate_cli", "chat_cli"]
