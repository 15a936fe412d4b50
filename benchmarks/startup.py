"""Start-up cost of the command line: time and peak memory of `lmforge --help` and of every `lmforge <verb> --help`,
against `python -c "import torch"` (what each of them cost when the package imported torch at import time).

    python benchmarks/startup.py [--repeat 5]

Each command runs in a fresh process, --repeat times; the table shows the median wall time and the peak resident
memory (from the kernel's accounting of the child, `ru_maxrss`). Target: under 0.3 s for every row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lmforge.cli import COMMANDS  # noqa: E402  (the table alone: cheap)


def measure(argv: list[str], repeat: int) -> tuple[float, float]:
    """Median seconds and peak MB of running argv `repeat` times, each in a new process."""
    times, peaks = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.execv(argv[0], argv)
        _, status, usage = os.wait4(pid, 0)
        times.append(time.perf_counter() - start)
        peaks.append(usage.ru_maxrss / 1024)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{' '.join(argv)} failed")
    return statistics.median(times), max(peaks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    rows = [("python -c 'import torch' (reference)", [py, "-c", "import torch"]),
            ("lmforge --help", [py, "-m", "lmforge", "--help"])]
    rows += [(f"lmforge {verb} --help", [py, "-m", "lmforge", *verb.split(), "--help"]) for verb in COMMANDS]
    print(f"{'command':42s} {'median s':>9s} {'peak MB':>8s}")
    results = []
    for name, argv in rows:
        seconds, peak = measure(argv, args.repeat)
        results.append((name, seconds, peak))
        print(f"{name:42s} {seconds:9.3f} {peak:8.1f}", flush=True)
    torch_s = results[0][1]
    worst = max(results[1:], key=lambda r: r[1])
    print(f"\nslowest: {worst[0]} {worst[1]:.3f} s ({worst[1] / torch_s:.2f}x the time of importing torch); "
          f"target under 0.3 s for every command: {'met' if worst[1] < 0.3 else 'NOT met'}")
    print(f"load average during the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
