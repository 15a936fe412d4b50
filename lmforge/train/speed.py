"""How fast training runs against what the hardware can do: the matrix-multiply peak (for MFU) and the
`--compile auto` decision.

MFU (model FLOPs utilisation, PaLM's definition) = model FLOPs per token (`lmforge.model.flops`, the count `lmforge
info` prints: 6 N + 12 L T d per trained token) x tokens/s / the device's peak FLOP/s. The peak is measured, not
looked up: the best of a few large matrix multiplies at the training dtype (bf16 under bf16 autocast, fp32
otherwise), cached per machine, device, thread count, dtype and torch version in
`$XDG_CACHE_HOME/lmforge/peak_flops.json` (~/.cache), so a run pays for it once (about half a second on a CPU);
`--peak-tflops` gives it instead (a GPU's datasheet figure, say). On a CPU a measurement during which this process
got less than 80% of its threads' time (other jobs running) is used for the run but not cached; the peak it gives
is low and the MFU high.

`--compile auto` compiles only where it pays: a run whose remaining eager time is short next to the cost of
compiling stays eager (compiling the blocks of a small model takes ~20-60 s on a 2-core CPU, more than the whole
Tiny Shakespeare recipe saves); a longer one compiles each block after a short eager probe, times the compiled
steps, and goes back to eager when they are not faster. A time-boxed run (`--max-time`) counts the time it has left,
not the steps it would need. The decision is kept in the trainer state, so a resumed
run continues the way it was running.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from .. import io as lio

# --compile auto: how long compiling is assumed to take before it is measured, and how many times that the rest of
# the run must last in eager time before compiling is tried (so a wrong guess costs at most ~1/MIN_PAYBACK of the run)
COMPILE_GUESS_S = {"cpu": 60.0, "cuda": 40.0}
MIN_PAYBACK = 10.0
PROBE_STEPS = 10  # steps timed per mode (after warm-up steps that are not timed)
WARMUP_STEPS = 3
MIN_GAIN = 1.03  # the compiled step must be at least this much faster to be kept


def cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "lmforge" / "peak_flops.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> tuple[float, bool]:
    """FLOP/s of the best of `repeats` square matrix multiplies at `dtype` (2048 on a CPU, 8192 on a GPU), and
    whether the measurement had the CPU to itself (on a CPU: this process got at least 80% of its threads' time;
    other jobs on a shared machine make the peak, and so the cached figure, too low)."""
    n = 8192 if device.type == "cuda" else 2048
    t0, c0 = time.perf_counter(), sum(os.times()[:2])
    gen = torch.Generator(device=device).manual_seed(0)  # (its own generator: the run's random stream is untouched)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    best = float("inf")
    with torch.no_grad():
        for i in range(repeats + 2):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            if i >= 2:  # (two warm-up products)
                best = min(best, time.perf_counter() - t)
    wall, cpu = time.perf_counter() - t0, sum(os.times()[:2]) - c0
    alone = device.type != "cpu" or cpu >= 0.8 * wall * torch.get_num_threads()
    return 2 * n ** 3 / best, alone


def peak_flops(device: torch.device, dtype: torch.dtype, given_tflops: float | None = None) -> float:
    """The device's peak FLOP/s at `dtype`: `given_tflops` when given, else measured once and cached."""
    if given_tflops:
        return given_tflops * 1e12
    key = (f"{device.type}:{device_name(device)}|threads={torch.get_num_threads() if device.type == 'cpu' else '-'}|"
           f"{str(dtype).replace('torch.', '')}|torch {torch.__version__}")
    path = cache_file()
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    value = cached.get(key)
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    value, alone = measure_peak_flops(device, dtype)
    if not alone:  # other jobs took the CPU: use the figure for this run, but measure again next time
        return value
    try:
        lio.write_json(path, {**cached, key: value})
    except OSError:  # a read-only home: measure again next time
        pass
    return value


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation (0..1) of a training throughput, or None without a peak."""
    if not peak or not flops_per_token:
        return None
    return flops_per_token * tokens_per_s / peak


class CompileProbe:
    """--compile auto, step by step: time eager steps, decide whether compiling could pay for itself in the rest of
    the run, compile, time compiled steps, keep the faster. `observe(seconds)` after each step; `decision` is None
    while probing, then "on" or "off"; the trainer compiles when `wants_compile` turns True and uncompiles on "off".
    """

    def __init__(self, device: torch.device, remaining_steps: int, time_left: float | None = None) -> None:
        self.device = device
        self.remaining = remaining_steps
        self.time_left = time_left  # seconds of a time-boxed run (--max-time) left when probing starts
        self.phase = "eager"
        self.seen = 0
        self.eager: list[float] = []
        self.compiled: list[float] = []
        self.compile_s: float | None = None
        self.decision: str | None = None
        self.wants_compile = False
        self.report: dict = {}

    @staticmethod
    def _median(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2]

    def observe(self, seconds: float) -> None:
        if self.decision is not None:
            return
        self.seen += 1
        self.remaining -= 1
        if self.time_left is not None:
            self.time_left -= seconds
        if self.phase == "eager":
            if self.seen > WARMUP_STEPS:
                self.eager.append(seconds)
            if len(self.eager) < PROBE_STEPS:
                return
            eager = self._median(self.eager)
            guess = COMPILE_GUESS_S.get(self.device.type, 60.0)
            remaining = eager * self.remaining  # the rest of the run in eager time: its steps, or its time box
            if self.time_left is not None:
                remaining = min(remaining, self.time_left)
            self.report = {"eager_ms": round(eager * 1000, 2), "compile_guess_s": guess,
                           "remaining_eager_s": round(remaining, 1)}
            if remaining < MIN_PAYBACK * guess:
                self._decide("off", "the rest of the run is too short to pay for compiling")
                return
            self.phase, self.seen, self.wants_compile = "compiled", 0, True
            return
        if self.seen <= 2:  # the first compiled steps compile (forward, then backward)
            self.compile_s = (self.compile_s or 0.0) + seconds
            return
        self.compiled.append(seconds)
        if len(self.compiled) < PROBE_STEPS:
            return
        eager, compiled = self._median(self.eager), self._median(self.compiled)
        self.report.update(compiled_ms=round(compiled * 1000, 2), compile_s=round(self.compile_s or 0.0, 1),
                           speedup=round(eager / compiled, 3))
        if eager / compiled >= MIN_GAIN:
            self._decide("on", f"compiled steps are {eager / compiled:.2f}x faster")
        else:
            self._decide("off", f"compiled steps are only {eager / compiled:.2f}x as fast")

    def _decide(self, decision: str, why: str) -> None:
        self.decision = decision
        self.report["decision"] = decision
        self.report["why"] = why
