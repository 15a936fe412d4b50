"""Training metrics: JSONL and CSV files, TensorBoard events, and the loss-curve PNG.

On resume the files are cut back to the resumed step, so a killed-and-resumed run leaves exactly the log of an
uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any

from .. import io as lio

CSV_FIELDS = ["step", "split", "loss", "ppl", "lr", "grad_norm", "tokens", "tok_per_s", "elapsed", "metric", "value",
              "mfu"]


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill: drop it
            continue
    return rows


class MetricsLogger:
    def __init__(self, out: Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.jsonl = out / "metrics.jsonl"
        self.csv = out / "metrics.csv"
        rows = read_metrics(self.jsonl) if resume_step is not None else []
        rows = [r for r in rows if r.get("step", 0) <= (resume_step or 0)]
        lio.write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        lio.write_text(self.csv, buf.getvalue())
        self._jsonl = open(self.jsonl, "a", encoding="utf-8")
        self._csv = open(self.csv, "a", encoding="utf-8", newline="")
        self._csv_writer = csv.DictWriter(self._csv, fieldnames=CSV_FIELDS, extrasaction="ignore")
        self.tb = None
        if tensorboard:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out / "tensorboard"),
                                        purge_step=(resume_step + 1) if resume_step is not None else None)
            except ImportError:
                self.tb = None

    def log(self, row: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        self._csv_writer.writerow(row)
        self._csv.flush()
        if self.tb is not None:
            split = row.get("split", "train")
            for key in ("loss", "ppl", "lr", "grad_norm", "tok_per_s", "mfu", "value"):
                if isinstance(row.get(key), (int, float)):
                    name = row.get("metric", key) if key == "value" else key
                    self.tb.add_scalar(f"{split}/{name}", row[key], row["step"])

    def close(self) -> None:
        self._jsonl.close()
        self._csv.close()
        if self.tb is not None:
            self.tb.close()


def plot_losses(metrics: str | Path, out_png: str | Path, title: str = "") -> Path | None:
    """Train loss (raw and smoothed) and validation loss against steps, as a PNG."""
    rows = read_metrics(metrics)
    train = [(r["step"], r["loss"]) for r in rows if r.get("split") == "train" and "loss" in r]
    val = [(r["step"], r["loss"]) for r in rows if r.get("split") == "val" and "loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8, label="train")
        if len(losses) > 10:  # centred moving average over ~1/25 of the run: no lag, no start-up bias
            import numpy as np

            width = max(3, len(losses) // 25) | 1
            smooth = np.convolve(losses, np.ones(width) / width, mode="valid")
            ax.plot(steps[width // 2: width // 2 + len(smooth)], smooth, color="tab:blue", linewidth=1.6,
                    label="train (smoothed)")
    if val:
        steps, losses = zip(*val)
        ax.plot(steps, losses, "o-", color="tab:orange", linewidth=1.6, markersize=3, label="val")
        best = min(val, key=lambda p: p[1])
        ax.annotate(f"{best[1]:.3f} (ppl {math.exp(min(best[1], 50)):.1f})", best, textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8, color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{title}: training loss" if title else "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return lio.save_figure(fig, out_png)
