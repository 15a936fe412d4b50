"""Command-line entries: `lmforge serve` and `lmforge bench serve` (docs/serving.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LmforgeError


def serve_cli(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key_file: str | None = None,
    name: str | None = None,
    max_batch: int = 16,
    max_queue: int = 256,
    max_tokens: int = 2048,
    device: str = "cpu",
    dtype: str = "auto",
) -> None:
    """Serve a model with an OpenAI-compatible API (completions, chat, embeddings, classify) and a chat page at /.

    Args:
        model: a checkpoint or run folder, a Hugging Face folder, a .gguf file, or hf:org/name
        host: the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface)
        port: the TCP port (0: any free port)
        api_key_file: a file holding the API key; requests then need "Authorization: Bearer KEY" (LMFORGE_API_KEY works too)
        name: the model's id in the API (default: the folder or file name)
        max_batch: sequences decoded together at most (continuous batching; 1 = one request at a time)
        max_queue: requests waiting at most (more are answered 429)
        max_tokens: the largest max_tokens a request may ask for
        device: cpu | cuda | mps | auto
        dtype: fp32 | bf16 | fp16 | auto (as saved)
    """
    import torch

    # Every model call runs on the engine thread (serve.scheduler.Scheduler.call), with torch's threads; this thread
    # imports and loads on one, so that it never starts an OpenMP pool of its own (a tensor operation at import time
    # with two threads is enough): with more OpenMP threads than cores in the process, idle workers stop spinning and
    # each decoding step pays for waking them (SmolLM2: 29-33 ms a token against 17-22 ms measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from ..loading import load
    from ..serve.bench import read_api_key
    from ..serve.server import need_server_libraries, serve

    need_server_libraries()
    for option, value in (("--max-batch", max_batch), ("--max-queue", max_queue), ("--max-tokens", max_tokens)):
        if value < 1:
            raise ConfigError(f"{option} {value} must be >= 1")
    key = read_api_key(api_key_file) if api_key_file else os.environ.get("LMFORGE_API_KEY") or None
    served_name = name or Path(str(model).rstrip("/")).name or "lmforge"
    m = load(model, device=device, dtype=dtype)
    if m.tokenizer is None:
        raise LmforgeError(f"{model} has no tokenizer (tokenizer.json); the server reads and writes text")

    def ready(url: str) -> None:
        c = m.config
        print(f"lmforge serve: {served_name} ({c.arch}, head {c.head}, context {c.context_length}) on {url}  "
              f"[chat page: {url}/  API: {url}/v1  max batch {max_batch}{', API key required' if key else ''}]",
              flush=True)
        if host not in ("127.0.0.1", "localhost", "::1") and not key:
            print("warning: listening beyond this machine without an API key (--api-key-file or LMFORGE_API_KEY)",
                  flush=True)

    serve(m, host=host, port=port, name=served_name, api_key=key, max_batch=max_batch, max_queue=max_queue,
          max_tokens=max_tokens, path=str(model), ready=ready, threads=threads)


def bench_serve_cli(
    url: str,
    *,
    prompts: str,
    concurrency: str = "1,4,8,16",
    requests: int = 64,
    max_tokens: int = 64,
    reference: str | None = None,
    out: str | None = None,
    overwrite: bool = False,
    api_key_file: str | None = None,
) -> dict[str, Any]:
    """Load-test an OpenAI-compatible server: requests/s, tokens/s, time to first token, latency p50/p95/p99.

    Args:
        url: the server, e.g. http://127.0.0.1:8000
        prompts: a .jsonl file with a "prompt" field per line, or a text file with one prompt per line
        concurrency: comma-separated numbers of concurrent clients
        requests: requests per concurrency level
        max_tokens: tokens generated per request (EOS ignored)
        reference: a second server for the same load (e.g. the same model with --max-batch 1); ratios are printed
        out: a folder for results.json and serve_bench.png
        overwrite: replace an earlier --out folder of this command
        api_key_file: a file holding the API key (or set LMFORGE_API_KEY)
    """
    from ..serve.bench import bench_serve

    return bench_serve(url, prompts=prompts, concurrency=concurrency, requests=requests, max_tokens=max_tokens,
                       reference=reference, out=out, overwrite=overwrite, api_key_file=api_key_file)
