"""Counters and histograms of the server, rendered in Prometheus' text format at /metrics."""

from __future__ import annotations

import collections
import threading

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: collections.Counter = collections.Counter()  # (path, status) -> count
        self.generated = 0
        self.prompt = 0
        self.ttft_counts = [0] * len(TTFT_BUCKETS)
        self.ttft_sum = 0.0
        self.ttft_n = 0

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
            self.ttft_sum += seconds
            self.ttft_n += 1
            for i, b in enumerate(TTFT_BUCKETS):
                if seconds <= b:
                    self.ttft_counts[i] += 1

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
                      "# HELP lmforge_time_to_first_token_seconds From arrival to the first generated token.",
                      "# TYPE lmforge_time_to_first_token_seconds histogram"]
            for b, n in zip(TTFT_BUCKETS, self.ttft_counts):
                lines.append(f'lmforge_time_to_first_token_seconds_bucket{{le="{b}"}} {n}')
            lines += [f'lmforge_time_to_first_token_seconds_bucket{{le="+Inf"}} {self.ttft_n}',
                      f"lmforge_time_to_first_token_seconds_sum {self.ttft_sum:.6f}",
                      f"lmforge_time_to_first_token_seconds_count {self.ttft_n}"]
        return "\n".join(lines) + "\n"


__all__ = ["Metrics"]
