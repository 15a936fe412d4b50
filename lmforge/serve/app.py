"""`create_app(model)`: the FastAPI application of `lmforge serve`.

Endpoints: `/v1/models`, `/v1/completions`, `/v1/chat/completions` (decoders with a language-model head, through
the continuous-batching `Scheduler`), `/v1/embeddings` (any model with a tokenizer, pooled as `lmforge.embed`
pools), `/v1/classify` (classifiers), `/health`, `/metrics` (Prometheus text) and the chat page at `/`.
Every error is OpenAI's error JSON with its status; no request can stop the server.
"""

# no `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (Request, imported
# inside create_app so that lmforge.serve imports without FastAPI) as objects

import asyncio
import base64
import functools
import hmac
import json
import threading
import time
import uuid
from typing import Any, AsyncIterator

import numpy as np

from ..errors import LmforgeError
from ..generate.api import ModelSpec, fit_prompt
from ..generate.chat import encode_chat, turn_end_ids
from ..generate.options import GenerationOptions
from .metrics import Metrics
from .page import PAGE
from .protocol import (ApiError, ChatRequest, ClassifyRequest, CompletionRequest, EmbeddingRequest, Sampling,
                       validation_error)
from .scheduler import QueueFull, Scheduler, Work

DISCONNECT_POLL = 0.5  # seconds between checks that a non-streaming client is still there


class Served:
    """The model and what the endpoints need to know about it."""

    def __init__(self, model, name: str, *, max_batch: int, max_queue: int, max_tokens: int,
                 path: str | None = None, threads: int | None = None) -> None:
        self.model = model
        self.name = name
        self.tokenizer = model.tokenizer
        c = model.config
        self.generates = c.head == "lm" and c.arch == "decoder" and self.tokenizer is not None
        self.classifies = c.head == "classify" and self.tokenizer is not None
        self.embeds = self.tokenizer is not None and c.head in ("lm", "classify")
        self.context = c.context_length
        self.max_tokens = max(1, min(max_tokens, self.context - 1))
        self.metrics = Metrics()
        self.created = int(time.time())
        if self.embeds and getattr(model, "pooling_spec", None) is None:
            from ..apps.embed import pooling_spec

            model.pooling_spec = pooling_spec(model, path)
        self.scheduler: Scheduler | None = None
        if self.generates:
            spec = ModelSpec.of(model, self.tokenizer, GenerationOptions())
            self.eos = frozenset(spec.eos)
            self.chat_eos = frozenset(spec.eos + [i for i in turn_end_ids(self.tokenizer) if i not in spec.eos])
            self.scheduler = Scheduler(model, pad_id=spec.pad, max_batch=max_batch, max_queue=max_queue,
                                       metrics=self.metrics, threads=threads)
        self.lock = self.scheduler.lock if self.scheduler is not None else threading.Lock()

    async def run(self, work):
        """`work()` off the event loop: on the engine thread when there is one (Scheduler.call), else a worker
        thread."""
        if self.scheduler is not None:
            return await asyncio.wrap_future(self.scheduler.call(work))
        return await asyncio.to_thread(work)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    @functools.lru_cache(maxsize=65536)
    def token_text(self, token: int, shown: bool = False) -> str:
        """A token's text (special tokens spelled out); shown=True: as it appears in the text (specials left out)."""
        return self.tokenizer.decode([token], skip_special_tokens=shown)

    # ---- checks ----------------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.name:
            raise ApiError(404, f"the model '{name}' does not exist; this server serves '{self.name}' (GET /v1/models)",
                           param="model", code="model_not_found")

    def need(self, what: str) -> None:
        ok = {"generate": self.generates, "classify": self.classifies, "embed": self.embeds}[what]
        if not ok:
            c = self.model.config
            kind = f"{c.arch} with a {c.head!r} head"
            hint = {"generate": "completions need a decoder with a language-model head (GPT, Llama)",
                    "classify": "/v1/classify needs a classifier (lmforge finetune classify)",
                    "embed": "embeddings need a model with a tokenizer"}[what]
            raise ApiError(400, f"this server's model is {with_article(kind)}: {hint}")


def with_article(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


# ---- generation requests ---------------------------------------------------------------------------------

def options_of(req: Sampling, max_tokens: int) -> GenerationOptions:
    """The GenerationOptions of a request (lmforge.generate's names and meanings)."""
    if req.logit_bias:
        raise ApiError(400, "logit_bias is not supported by this server; leave it out", param="logit_bias")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 16 or any(not s for s in stop):
        raise ApiError(400, "stop must be up to 16 non-empty strings", param="stop")
    temperature = 1.0 if req.temperature is None else req.temperature
    top_k = req.top_k if req.top_k and req.top_k > 0 else None
    try:
        return GenerationOptions.from_kwargs(
            max_new_tokens=max(1, max_tokens), do_sample=temperature > 0, temperature=temperature if temperature > 0
            else 1.0, top_k=top_k, top_p=req.top_p if req.top_p is not None else 1.0, min_p=req.min_p,
            repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, stop=stop or None, ignore_eos=req.ignore_eos)
    except LmforgeError as e:
        raise ApiError(400, str(e)) from None


def check_length(served: Served, prompt: list[int], max_tokens: int, param: str) -> None:
    total = len(prompt) + max_tokens
    if total > served.context:
        raise ApiError(400, f"This model's maximum context length is {served.context} tokens. However, you requested "
                       f"{total} tokens ({len(prompt)} in the {param}, {max_tokens} for the completion). Please "
                       "reduce the length of the prompt or the completion.", param=param,
                       code="context_length_exceeded")


def fitted(served: Served, ids: list[int], opts: GenerationOptions, param: str) -> list[int]:
    spec = ModelSpec.of(served.model, served.tokenizer, opts)
    try:
        return fit_prompt(ids, spec, opts, f"the {param}")
    except LmforgeError as e:
        raise ApiError(400, str(e), param=param) from None


async def run_work(served: Served, works: list[Work], request) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """Submit works and yield (work index, event) until each is done; cancel them all if we stop early."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    for i, w in enumerate(works):
        w.loop, w.queue = loop, queue
        w.tag = i
    try:
        for w in works:
            try:
                served.scheduler.submit(w)
            except QueueFull:
                raise ApiError(429, "the server's queue is full; retry later", kind="rate_limit_error",
                               code="queue_full") from None
        pending = len(works)
        while pending:
            try:
                ev = await asyncio.wait_for(queue.get(), DISCONNECT_POLL)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    return
                continue
            yield ev["_work"], ev
            if ev["type"] in ("done", "error"):
                pending -= 1
    finally:
        for w in works:
            w.cancel()


def _tagged(work: Work):
    """Events carry the index of their work among a request's works."""
    send = work.send

    def tagged_send(event):
        event["_work"] = work.tag
        send(event)
    work.send = tagged_send
    return work


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _response(rid: str, obj: str, created: int, model: str, choices: list, usage: dict | None) -> dict[str, Any]:
    """The envelope of a completion or chat response (or stream chunk); usage only when given."""
    out = {"id": rid, "object": obj, "created": created, "model": model, "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def _finish(reason: str | None) -> str | None:
    return None if reason is None else ("length" if reason == "length" else "stop")


class Choice:
    """What has been generated for one choice so far."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.tops: list[list[tuple[int, float]]] = []
        self.finish: str | None = None


def completion_logprobs(served: Served, tokens: list[int], logprobs: list[float | None],
                        tops: list[list[tuple[int, float]] | None], offset: int) -> dict[str, Any]:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset."""
    texts = [served.token_text(t) for t in tokens]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(served.token_text(t, True))
    top = [None if alts is None else {served.token_text(i): lp for i, lp in alts} for alts in tops]
    return {"tokens": texts, "token_logprobs": logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(served: Served, tokens: list[int], logprobs: list[float],
                  tops: list[list[tuple[int, float]]]) -> dict[str, Any]:
    def entry(t: int, lp: float) -> dict[str, Any]:
        s = served.token_text(t)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}
    return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in alts]}
                        for t, lp, alts in zip(tokens, logprobs, tops)]}


# ---- the app -------------------------------------------------------------------------------------------

def create_app(model, *, name: str | None = None, api_key: str | None = None, max_batch: int = 16,
               max_queue: int = 256, max_tokens: int = 2048, max_body: int = 4 << 20, path: str | None = None,
               threads: int | None = None):
    """The FastAPI app serving `model` (an lmforge `Transformer` with its tokenizer).

    Args:
        model: the model (lmforge.load(...))
        name: the model's id in the API (default: "lmforge")
        api_key: when set, every /v1 and /metrics request needs "Authorization: Bearer <api_key>"
        max_batch: sequences decoded together at most (1 = one request at a time)
        max_queue: requests waiting for a place in the batch at most (more get 429)
        max_tokens: the largest max_tokens a request may ask for
        max_body: the largest request body in bytes (more get 413)
        path: the folder the model came from (for a sentence-transformers pooling configuration)
        threads: torch threads for the engine thread, which runs every model call (None: as it finds them)
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    if max_batch < 1 or max_queue < 1 or max_tokens < 1:
        raise LmforgeError("max_batch, max_queue and max_tokens must be >= 1")
    served = Served(model, name or "lmforge", max_batch=max_batch, max_queue=max_queue, max_tokens=max_tokens,
                    path=path, threads=threads)
    key = api_key.encode("utf-8") if api_key else None

    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.served = served

    def error_response(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        served.metrics.request(request.url.path, e.status)
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        served.metrics.request(request.url.path, 400)
        return error_response(validation_error(list(e.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=code))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        served.metrics.request(request.url.path, 500)
        return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}", kind="server_error"))

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if key is not None and (path.startswith("/v1") or path == "/metrics"):
            header = request.headers.get("authorization", "")
            given = header[7:].strip().encode("utf-8") if header[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(given, key):
                served.metrics.request(path, 401)
                return error_response(ApiError(401, "Incorrect or missing API key: send the header "
                                               "'Authorization: Bearer <key>'", kind="invalid_request_error",
                                               code="invalid_api_key"))
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body):
            return error_response(ApiError(413, f"the request body is larger than {max_body} bytes",
                                           code="request_too_large"))
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE, headers={"Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                           "style-src 'unsafe-inline'", "X-Content-Type-Options": "nosniff"})

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics():
        s = served.scheduler
        return served.metrics.render(queue=s.queue_depth if s else 0, running=s.active if s else 0)

    @app.get("/v1/models")
    async def models():
        c = served.model.config
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": served.created,
                                            "owned_by": "lmforge", "max_model_len": c.context_length,
                                            "arch": c.arch, "head": c.head,
                                            "endpoints": [e for e, ok in (("completions", served.generates),
                                                                          ("chat.completions", served.generates),
                                                                          ("embeddings", served.embeds),
                                                                          ("classify", served.classifies)) if ok]}]}

    # ---- /v1/completions -------------------------------------------------------------------------------
    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        served.check_model(req.model)
        served.need("generate")
        if req.suffix:
            raise ApiError(400, "suffix is not supported by this server; leave it out", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise ApiError(400, "best_of is not supported (other than best_of = n); leave it out", param="best_of")
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        if max_tokens > served.max_tokens:
            raise ApiError(400, f"max_tokens={max_tokens} is more than this server allows ({served.max_tokens})",
                           param="max_tokens")
        if max_tokens == 0 and not req.echo:
            raise ApiError(400, "max_tokens=0 generates nothing; use it with echo=true (to score the prompt)",
                           param="max_tokens")
        if max_tokens == 0 and req.stream:
            raise ApiError(400, "max_tokens=0 (prompt scoring) cannot stream; set stream=false", param="stream")
        if req.n > served.scheduler.max_batch:
            raise ApiError(400, f"n={req.n} is more than this server decodes together ({served.scheduler.max_batch})",
                           param="n")
        opts = options_of(req, max_tokens)
        p = req.prompt
        if isinstance(p, str):
            prompts: list[Any] = [p]
        elif p and all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        else:
            prompts = list(p)
        if not prompts:
            raise ApiError(400, "prompt is empty; give a string, a list of strings or token ids", param="prompt")
        if len(prompts) * req.n > 4 * served.scheduler.max_queue:
            raise ApiError(400, f"{len(prompts)} prompts x n={req.n} is too many for one request", param="prompt")
        ids_list = []
        for x in prompts:
            ids = served.tokenizer.encode(x, add_special_tokens=True) if isinstance(x, str) else list(x)
            check_length(served, ids, max_tokens, "prompt")
            ids_list.append(fitted(served, ids, opts, "prompt"))
        want_lp = req.logprobs is not None
        works = [_tagged(Work(ids, opts, n=req.n, logprobs=req.logprobs if want_lp else None,
                              prompt_logprobs=(req.logprobs or 0) if req.echo else None,
                              generate=max_tokens > 0, seed=req.seed,
                              eos=frozenset() if req.ignore_eos else served.eos)) for ids in ids_list]
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        n_prompt = sum(len(i) for i in ids_list)
        served.metrics.prompt_tokens(n_prompt)
        echo_text = [served.tokenizer.decode(ids, skip_special_tokens=True) if isinstance(x, list) else x
                     for x, ids in zip(prompts, ids_list)] if req.echo else None

        def prompt_lp(w: int, scored) -> dict[str, Any]:
            return completion_logprobs(served, ids_list[w], [None] + [lp for lp, _ in scored],
                                       [None] + [list(alts) for _, alts in scored], 0)

        def base(choices, usage=None):
            return _response(rid, "text_completion", created, served.name, choices, usage)

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def completion_stream():
                generated = 0
                offsets = [0] * (len(works) * req.n)
                async for w, ev in run_work(served, works, request):
                    if ev["type"] == "error":
                        raise ApiError(500, ev["message"], kind="server_error")
                    if ev["type"] == "prompt":  # echo: the prompt first, as one chunk per choice
                        chunks = []
                        for j in range(req.n):
                            idx = w * req.n + j
                            offsets[idx] = len(echo_text[w])
                            chunks.append({"index": idx, "text": echo_text[w],
                                           "logprobs": prompt_lp(w, ev["logprobs"]) if want_lp else None,
                                           "finish_reason": None})
                        yield base(chunks)
                    elif ev["type"] == "tokens":
                        chunks = []
                        for piece in ev["pieces"]:
                            idx = w * req.n + piece["index"]
                            generated += 1
                            if not piece["text"] and "finish_reason" not in piece and not want_lp:
                                continue  # a token that completes no character yet
                            lp = None
                            if want_lp:
                                lp = completion_logprobs(served, [piece["token"]], [piece["logprob"]],
                                                         [piece.get("top")], offsets[idx])
                            offsets[idx] += len(piece["text"])
                            chunks.append({"index": idx, "text": piece["text"], "logprobs": lp,
                                           "finish_reason": _finish(piece.get("finish_reason"))})
                        if chunks:
                            yield base(chunks)
                if include_usage:
                    yield base([], _usage(n_prompt, generated))

            return StreamingResponse(sse(completion_stream(), served, request.url.path),
                                     media_type="text/event-stream")

        choices = {w * req.n + j: Choice() for w in range(len(works)) for j in range(req.n)}
        prompt_scores: dict[int, Any] = {}
        async for w, ev in run_work(served, works, request):
            if ev["type"] == "error":
                raise ApiError(500, ev["message"], kind="server_error")
            if ev["type"] == "prompt":
                prompt_scores[w] = ev["logprobs"]
            elif ev["type"] == "tokens":
                for piece in ev["pieces"]:
                    c = choices[w * req.n + piece["index"]]
                    c.text.append(piece["text"])
                    c.tokens.append(piece["token"])
                    c.logprobs.append(piece["logprob"])
                    c.tops.append(piece.get("top") or [])
                    if "finish_reason" in piece:
                        c.finish = piece["finish_reason"]
        if await request.is_disconnected():
            return None
        out = []
        generated = 0
        for idx in sorted(choices):
            w = idx // req.n
            c = choices[idx]
            generated += len(c.tokens)
            text = "".join(c.text)
            lp = None
            if want_lp:
                lp = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                start = 0
                if req.echo:
                    lp = prompt_lp(w, prompt_scores.get(w, []))
                    start = len(echo_text[w])
                gen = completion_logprobs(served, c.tokens, c.logprobs, c.tops, start)
                for k in lp:
                    lp[k] = lp[k] + gen[k]
            if req.echo:
                text = echo_text[w] + text
            out.append({"index": idx, "text": text, "logprobs": lp,
                        "finish_reason": _finish(c.finish) if max_tokens > 0 else "length"})
        served.metrics.request(request.url.path, 200)
        return base(out, _usage(n_prompt, generated))

    # ---- /v1/chat/completions --------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        served.check_model(req.model)
        served.need("generate")
        if req.n > served.scheduler.max_batch:
            raise ApiError(400, f"n={req.n} is more than this server decodes together ({served.scheduler.max_batch})",
                           param="n")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
        try:
            ids = encode_chat(served.tokenizer, messages)
        except LmforgeError as e:
            raise ApiError(400, str(e), param="messages") from None
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and asked > served.max_tokens:
            raise ApiError(400, f"max_tokens={asked} is more than this server allows ({served.max_tokens})",
                           param="max_tokens")
        max_tokens = asked if asked is not None else min(served.max_tokens, served.context - len(ids))
        if max_tokens < 1:
            max_tokens = 1
        check_length(served, ids, max_tokens, "messages")
        opts = options_of(req, max_tokens)
        ids = fitted(served, ids, opts, "messages")
        top = req.top_logprobs if req.logprobs else None
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", param="top_logprobs")
        work = _tagged(Work(ids, opts, n=req.n, logprobs=(top or 0) if req.logprobs else None, seed=req.seed,
                            eos=frozenset() if req.ignore_eos else served.chat_eos))
        works = [work]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        served.metrics.prompt_tokens(len(ids))

        def base(choices, usage=None, obj="chat.completion"):
            return _response(rid, obj, created, served.name, choices, usage)

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            async def chat_stream():
                yield base([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None} for j in range(req.n)], obj="chat.completion.chunk")
                generated = 0
                async for _, ev in run_work(served, works, request):
                    if ev["type"] == "error":
                        raise ApiError(500, ev["message"], kind="server_error")
                    if ev["type"] != "tokens":
                        continue
                    chunks = []
                    for piece in ev["pieces"]:
                        generated += 1
                        if not piece["text"] and "finish_reason" not in piece and not req.logprobs:
                            continue  # a token that completes no character yet
                        lp = (chat_logprobs(served, [piece["token"]], [piece["logprob"]], [piece.get("top") or []])
                              if req.logprobs else None)
                        delta = {"content": piece["text"]} if piece["text"] or "finish_reason" not in piece else {}
                        chunks.append({"index": piece["index"], "delta": delta, "logprobs": lp,
                                       "finish_reason": _finish(piece.get("finish_reason"))})
                    if chunks:
                        yield base(chunks, obj="chat.completion.chunk")
                if include_usage:
                    yield base([], _usage(len(ids), generated), obj="chat.completion.chunk")

            return StreamingResponse(sse(chat_stream(), served, request.url.path), media_type="text/event-stream")

        choices = [Choice() for _ in range(req.n)]
        async for _, ev in run_work(served, works, request):
            if ev["type"] == "error":
                raise ApiError(500, ev["message"], kind="server_error")
            if ev["type"] == "tokens":
                for piece in ev["pieces"]:
                    c = choices[piece["index"]]
                    c.text.append(piece["text"])
                    c.tokens.append(piece["token"])
                    c.logprobs.append(piece["logprob"])
                    c.tops.append(piece.get("top") or [])
                    if "finish_reason" in piece:
                        c.finish = piece["finish_reason"]
        if await request.is_disconnected():
            return None
        served.metrics.request(request.url.path, 200)
        out = [{"index": j, "message": {"role": "assistant", "content": "".join(c.text)},
                "logprobs": chat_logprobs(served, c.tokens, c.logprobs, c.tops) if req.logprobs else None,
                "finish_reason": _finish(c.finish)} for j, c in enumerate(choices)]
        return base(out, _usage(len(ids), sum(len(c.tokens) for c in choices)))

    # ---- /v1/embeddings and /v1/classify ---------------------------------------------------------------
    def texts_of(value, param: str = "input") -> list[str]:
        texts = [value] if isinstance(value, str) else list(value)
        if not texts or len(texts) > 2048:
            raise ApiError(400, f"{param} must hold 1 to 2048 texts", param=param)
        return texts

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest, request: Request):
        served.check_model(req.model)
        served.need("embed")
        texts = texts_of(req.input)
        d = served.model.config.d_model
        if req.dimensions is not None and req.dimensions != d:
            raise ApiError(400, f"dimensions={req.dimensions}: this model's embeddings have {d} dimensions",
                           param="dimensions")

        def work():
            from ..apps.embed import embed

            with served.lock:
                vectors = embed(served.model, texts)
                count = sum(len(e) for e in served.tokenizer.encode_batch(texts, add_special_tokens=True))
            return vectors, count

        vectors, count = await served.run(work)
        data = []
        for i, v in enumerate(vectors):
            emb: Any = (base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
                        if req.encoding_format == "base64" else [float(x) for x in v])
            data.append({"object": "embedding", "index": i, "embedding": emb})
        served.metrics.request(request.url.path, 200)
        return {"object": "list", "data": data, "model": served.name,
                "usage": {"prompt_tokens": count, "total_tokens": count}}

    @app.post("/v1/classify")
    async def classify(req: ClassifyRequest, request: Request):
        served.check_model(req.model)
        served.need("classify")
        texts = texts_of(req.input)

        def work():
            from ..finetune.classify import predict_labels
            from ..finetune.data import Example

            with served.lock:
                examples = [Example((t,), None, i) for i, t in enumerate(texts)]
                return predict_labels(served.model, examples, max_length=served.context)

        labels, probs = await served.run(work)
        names = served.model.config.label_names
        served.metrics.request(request.url.path, 200)
        return {"object": "list", "model": served.name,
                "data": [{"index": i, "label": label, "probs": {n: float(x) for n, x in zip(names, p)},
                          "num_classes": len(names)} for i, (label, p) in enumerate(zip(labels, probs.tolist()))]}

    return app


async def sse(events: AsyncIterator[dict[str, Any]], served: Served, path: str) -> AsyncIterator[str]:
    """Server-sent events: `data: {json}` per chunk, then `data: [DONE]`; an error mid-stream is sent as an
    OpenAI error object before [DONE] (the status line has gone already)."""
    status = 200
    try:
        async for chunk in events:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
    except ApiError as e:
        status = e.status
        yield f"data: {json.dumps(e.body())}\n\n"
    served.metrics.request(path, status)
    yield "data: [DONE]\n\n"


__all__ = ["create_app", "Served"]
