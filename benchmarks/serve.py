"""Serving under load: continuous batching against one-request-at-a-time, on SmolLM2-135M-Instruct (GGUF Q4_1).

Two `lmforge serve` processes on loopback serve the same GGUF file: one with continuous batching (--max-batch 16),
the reference with --max-batch 1 (each request waits for the one before it). `lmforge bench serve` sends the same
streamed completions (SQuAD dev questions as prompts, greedy, EOS ignored so every request generates --max-tokens)
at each concurrency to both, and prints throughput, time to first token, time per output token and latency
percentiles per server, then the ratios. Results and a plot go to --out.

    flock /tmp/lmforge-bench.lock python benchmarks/serve.py            # about 6 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import need, parser, smollm2_gguf  # noqa: E402


def start(gguf: Path, max_batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(gguf), "--port", "0", "--max-batch",
                             str(max_batch), "--name", "smollm2"], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "LMFORGE_API_KEY": ""})
    deadline = time.time() + 300
    while time.time() < deadline:
        text = log.read_text()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", text)
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            sys.exit(f"the server exited:\n{text}")
        time.sleep(0.5)
    proc.kill()
    sys.exit("the server did not start in 5 minutes")


def main() -> None:
    ap = parser(__doc__, "bench-out/serve")
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", default="1,4,8,16")
    args = ap.parse_args()
    gguf = smollm2_gguf()
    need(gguf)
    squad = json.loads(need(Path(args.shared) / "squad" / "dev-v1.1.json").read_text())
    questions = [qa["question"] for art in squad["data"] for para in art["paragraphs"] for qa in para["qas"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question: {q}\nAnswer:"}) + "\n" for q in questions[:500]))
    servers = []
    try:
        batched, url = start(gguf, 16, out / "server_batched.log")
        servers.append(batched)
        single, ref = start(gguf, 1, out / "server_single.log")
        servers.append(single)
        print(f"continuous batching (--max-batch 16): {url}; one at a time (--max-batch 1): {ref}", flush=True)
        cmd = [sys.executable, "-m", "lmforge", "bench", "serve", url, "--reference", ref, "--prompts", str(prompts),
               "--concurrency", args.concurrency, "--requests", str(args.requests), "--max-tokens",
               str(args.max_tokens), "--out", str(out / "results"), "--overwrite"]
        print("$ " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    finally:
        for p in servers:
            p.terminate()
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
