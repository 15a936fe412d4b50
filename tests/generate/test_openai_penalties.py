"""presence_penalty and frequency_penalty (OpenAI's, counted over generated tokens) against a plain greedy loop."""

import pytest
import torch

import lmforge
from lmforge.errors import ConfigError

from _generate_models import lmforge_decoder


@pytest.mark.parametrize("presence,frequency", [(0.0, 1.5), (0.8, 0.0), (0.5, 2.0), (-1.0, -0.5)])
def test_penalties_equal_a_plain_loop(presence, frequency):
    model = lmforge_decoder("llama")
    prompt = model.tokenizer.encode("The cat sat on the mat", add_special_tokens=True)
    ids, counts = list(prompt), torch.zeros(model.config.vocab_size)
    with torch.no_grad():
        for _ in range(15):
            logits = model(torch.tensor([ids])).float()[0, -1]
            t = int((logits - frequency * counts - presence * (counts > 0).float()).argmax())
            ids.append(t)
            counts[t] += 1
            if t == model.config.eos_token_id:
                break
    out = lmforge.generate(model, prompt, max_new_tokens=15, presence_penalty=presence, frequency_penalty=frequency)
    assert out == ids[len(prompt):]


def test_penalties_checked():
    model = lmforge_decoder("llama")
    with pytest.raises(ConfigError, match="presence_penalty=3"):
        lmforge.generate(model, "x", presence_penalty=3)
    with pytest.raises(ConfigError, match="beam search"):
        lmforge.generate(model, "x", frequency_penalty=1.0, num_beams=2)
