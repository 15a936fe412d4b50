"""`lmforge bench serve URL`: a load test in the style of `vllm bench serve`.

For each concurrency level, `requests` streamed completions are sent by that many clients at once (each client
sends its next request when the last one ends). Per request: time to first token (TTFT), time per output token
after the first (TPOT), inter-token latencies (ITL) and end-to-end latency; per level: requests/s and output
tokens/s. With `reference=URL2` the same load runs against a second server (e.g. the same model with
`--max-batch 1`: one request at a time) and the ratios are printed. Only the standard library talks HTTP here,
so the numbers do not depend on a client library's overhead.
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, LmforgeError
from ..io import read_prompts


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    e2e: float = 0.0
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str = ""


def one_request(url: urllib.parse.ParseResult, headers: dict[str, str], body: dict[str, Any],
                timeout: float) -> Result:
    conn_cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout=timeout)
    start = time.perf_counter()
    r = Result(ok=False)
    try:
        conn.request("POST", url.path.rstrip("/") + "/v1/completions", json.dumps(body), headers)
        resp = conn.getresponse()
        if resp.status != 200:
            r.error = f"HTTP {resp.status}: {resp.read()[:200].decode('utf-8', 'replace')}"
            return r
        last = None
        for raw in resp:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                r.error = chunk["error"].get("message", "error")
                return r
            now = time.perf_counter()
            if chunk.get("usage"):
                r.tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices"):
                if last is None:
                    r.ttft = now - start
                else:
                    r.itl.append(now - last)
                last = now
        r.e2e = time.perf_counter() - start
        r.ok = last is not None
        if not r.ok:
            r.error = "no tokens came back"
    except (OSError, http.client.HTTPException, json.JSONDecodeError) as e:
        r.error = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return r


def run_level(url: str, model: str, prompts: list[str], concurrency: int, requests: int, max_tokens: int,
              api_key: str | None, timeout: float) -> dict[str, Any]:
    parsed = urllib.parse.urlparse(url)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    results: list[Result] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body = {"model": model, "prompt": prompts[i % len(prompts)], "max_tokens": max_tokens,
                    "temperature": 0, "stream": True, "ignore_eos": True,
                    "stream_options": {"include_usage": True}}
            r = one_request(parsed, headers, body, timeout)
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    duration = time.perf_counter() - start
    return summarize(results, duration, concurrency)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(results: list[Result], duration: float, concurrency: int) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    tpot = [(r.e2e - r.ttft) / (r.tokens - 1) for r in ok if r.tokens > 1]
    itl = [x for r in ok for x in r.itl]
    out: dict[str, Any] = {"concurrency": concurrency, "requests": len(results), "failed": len(results) - len(ok),
                           "duration_s": duration, "requests_per_s": len(ok) / duration,
                           "output_tokens_per_s": sum(r.tokens for r in ok) / duration,
                           "errors": sorted({r.error for r in results if not r.ok})[:3]}
    for name, values in (("ttft", [r.ttft for r in ok]), ("tpot", tpot), ("itl", itl), ("e2e", [r.e2e for r in ok])):
        out[f"{name}_mean_ms"] = 1000 * statistics.fmean(values) if values else float("nan")
        out[f"{name}_p50_ms"] = 1000 * _pct(values, 0.5)
        out[f"{name}_p95_ms"] = 1000 * _pct(values, 0.95)
        out[f"{name}_p99_ms"] = 1000 * _pct(values, 0.99)
    return out


def model_of(url: str, api_key: str | None, timeout: float) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(f"URL {url!r} is not an http(s) address; use e.g. http://127.0.0.1:8000")
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout)
    try:
        conn.request("GET", parsed.path.rstrip("/") + "/v1/models",
                     headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise LmforgeError(f"{url}/v1/models answered HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}")
        return json.loads(body)["data"][0]["id"]
    except OSError as e:
        raise LmforgeError(f"cannot reach {url} ({e}); start the server first (lmforge serve MODEL)") from None
    finally:
        conn.close()


COLUMNS = [("concurrency", "conc", "{:d}"), ("requests_per_s", "req/s", "{:.2f}"),
           ("output_tokens_per_s", "out tok/s", "{:.1f}"), ("ttft_p50_ms", "TTFT p50", "{:.0f}"),
           ("ttft_p95_ms", "TTFT p95", "{:.0f}"), ("ttft_p99_ms", "TTFT p99", "{:.0f}"),
           ("tpot_mean_ms", "TPOT mean", "{:.1f}"), ("itl_p50_ms", "ITL p50", "{:.1f}"),
           ("itl_p99_ms", "ITL p99", "{:.1f}"), ("e2e_p50_ms", "E2E p50", "{:.0f}"), ("e2e_p95_ms", "E2E p95", "{:.0f}"),
           ("e2e_p99_ms", "E2E p99", "{:.0f}"), ("failed", "failed", "{:d}")]


def table(rows: list[dict[str, Any]], title: str) -> str:
    head = [c[1] for c in COLUMNS]
    body = [[fmt.format(r[k]) for k, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = [title, "  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import save_figure

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for label, rows in runs.items():
        c = [r["concurrency"] for r in rows]
        axes[0].plot(c, [r["output_tokens_per_s"] for r in rows], "o-", label=label)
        axes[1].plot(c, [r["ttft_p50_ms"] for r in rows], "o-", label=f"{label} p50")
        axes[1].plot(c, [r["ttft_p99_ms"] for r in rows], "x--", label=f"{label} p99")
        axes[2].plot(c, [r["e2e_p50_ms"] for r in rows], "o-", label=f"{label} p50")
        axes[2].plot(c, [r["e2e_p95_ms"] for r in rows], "x--", label=f"{label} p95")
    for ax, title in zip(axes, ("output tokens/s", "time to first token (ms)", "end-to-end latency (ms)")):
        ax.set_title(title)
        ax.set_xlabel("concurrent clients")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def bench_serve(url: str, *, prompts: str, concurrency: str = "1,4,8,16", requests: int = 64, max_tokens: int = 64,
                reference: str | None = None, out: str | None = None, overwrite: bool = False,
                api_key_file: str | None = None, timeout: float = 600.0) -> dict[str, Any]:
    """Load-test an OpenAI-compatible server: throughput, time to first token and latency per concurrency.

    Args:
        url: the server, e.g. http://127.0.0.1:8000
        prompts: a .jsonl file with a "prompt" field per line, or a text file with one prompt per line
        concurrency: comma-separated numbers of concurrent clients
        requests: requests per concurrency level
        max_tokens: tokens generated per request (EOS ignored, so every request generates exactly this many)
        reference: a second server to run the same load against (e.g. the same model with --max-batch 1); its ratios are printed
        out: a folder for results.json and serve_bench.png
        overwrite: replace an earlier --out folder of this command
        api_key_file: a file holding the API key (or set LMFORGE_API_KEY)
        timeout: seconds before one request counts as failed
    """
    import os

    from .. import io as lio

    try:
        levels = [int(x) for x in str(concurrency).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--concurrency {concurrency!r} must be comma-separated whole numbers, e.g. 1,4,8,16") from None
    if not levels or any(c < 1 for c in levels):
        raise ConfigError(f"--concurrency {concurrency!r} must be whole numbers >= 1, e.g. 1,4,8,16")
    if requests < 1 or max_tokens < 1:
        raise ConfigError("--requests and --max-tokens must be >= 1")
    key = read_api_key(api_key_file) if api_key_file else os.environ.get("LMFORGE_API_KEY") or None
    texts = read_prompts(prompts)
    out_dir = None
    if out is not None:
        out_dir = lio.check_output(out, what="benchmark results", overwrite=overwrite,
                                   ours=lambda p: (p / "results.json").is_file(), inputs=[prompts])
    targets = {"server": url} | ({"reference": reference} if reference else {})
    runs: dict[str, list[dict[str, Any]]] = {}
    from tqdm.auto import tqdm

    for label, target in targets.items():
        model = model_of(target, key, timeout)
        rows = []
        for c in tqdm(levels, desc=f"bench {label} ({target})", unit="level"):
            rows.append(run_level(target, model, texts, c, requests, max_tokens, key, timeout))
        runs[label] = rows
        print(table(rows, f"{label}: {target} (model {model}, {requests} requests per level, {max_tokens} tokens "
                          "each)"), flush=True)
    ratios = None
    if reference:
        ratios = [{"concurrency": a["concurrency"],
                   "requests_per_s_ratio": a["requests_per_s"] / b["requests_per_s"] if b["requests_per_s"] else None,
                   "ttft_p50_ratio": a["ttft_p50_ms"] / b["ttft_p50_ms"] if b["ttft_p50_ms"] else None}
                  for a, b in zip(runs["server"], runs["reference"])]
        print("server / reference: " + ", ".join(
            f"c={r['concurrency']}: {r['requests_per_s_ratio']:.2f}x req/s, TTFT p50 {r['ttft_p50_ratio']:.2f}x"
            for r in ratios), flush=True)
    result = {"url": url, "reference": reference, "requests": requests, "max_tokens": max_tokens, "runs": runs,
              "ratios": ratios}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        lio.write_json(out_dir / "results.json", result)
        plot(runs, out_dir / "serve_bench.png")
        print(f"wrote {out_dir / 'results.json'} and {out_dir / 'serve_bench.png'}")
    return result


def read_api_key(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise LmforgeError(f"--api-key-file {path} does not exist; write the key alone in a file")
    key = p.read_text(encoding="utf-8").strip()
    if not key or "\n" in key:
        raise LmforgeError(f"--api-key-file {path} must hold the key alone on one line")
    return key


__all__ = ["bench_serve", "read_api_key", "summarize"]
