"""Counters and histograms of the server, rendered in Prometheus' text format at /metrics."""

from __future__ import annotations

import collections
import threading

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count (the caller holds the lock)."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help_text, buckets
        self.counts = [0] * len(buckets)
        self.sum, self.n = 0.0, 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.n += 1
        for i, b in enumerate(self.buckets):
            if value <= b:
                self.counts[i] += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        out += [f'{self.name}_bucket{{le="{b}"}} {n}' for b, n in zip(self.buckets, self.counts)]
        return out + [f'{self.name}_bucket{{le="+Inf"}} {self.n}', f"{self.name}_sum {self.sum:.6f}",
                      f"{self.name}_count {self.n}"]


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # (path, status) -> count
        self.generated = 0
        self.prompt = 0
        self.ttft = Histogram("lmforge_time_to_first_token_seconds", "From arrival to the first generated token.",
                              TTFT_BUCKETS)
        self.itl = Histogram("lmforge_inter_token_latency_seconds",
                             "Between two tokens of one sequence (time per output token after the first).", ITL_BUCKETS)

    def request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[(path, status)] += 1

    def tokens(self, n: int) -> None:
        with self._lock:
            self.generated += n

    def prompt_tokens(self, n: int) -> None:
        with self._lock:
            self.prompt += n

    def observe_ttft(self, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(seconds)

    def observe_itl(self, seconds: float) -> None:
        with self._lock:
            self.itl.observe(seconds)

    def render(self, *, queue: int, running: int) -> str:
        with self._lock:
            lines = ["# HELP lmforge_requests_total Requests answered, by path and status.",
                     "# TYPE lmforge_requests_total counter"]
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f'lmforge_requests_total{{path="{path}",status="{status}"}} {n}')
            lines += ["# HELP lmforge_generated_tokens_total Tokens generated.",
                      "# TYPE lmforge_generated_tokens_total counter", f"lmforge_generated_tokens_total {self.generated}",
                      "# HELP lmforge_prompt_tokens_total Prompt tokens received.",
                      "# TYPE lmforge_prompt_tokens_total counter", f"lmforge_prompt_tokens_total {self.prompt}",
                      "# HELP lmforge_queue_depth Requests waiting for a place in the batch.",
                      "# TYPE lmforge_queue_depth gauge", f"lmforge_queue_depth {queue}",
                      "# HELP lmforge_running_sequences Sequences in the decode batch.",
                      "# TYPE lmforge_running_sequences gauge", f"lmforge_running_sequences {running}",
                      *self.ttft.lines(), *self.itl.lines()]
        return "\n".join(lines) + "\n"


__all__ = ["Metrics"]
