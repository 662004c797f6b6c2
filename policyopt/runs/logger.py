"""Metrics: TensorBoard event files and a tidy CSV (``step,time,name,value``) in the run directory."""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping
from pathlib import Path

import torch

CSV_HEADER = ["step", "time", "name", "value"]


class MetricLogger:
    """Log scalar metrics under uniform names (``loss/policy``, ``stats/clip_frac``, ``eval/return``...).

    Values may be tensors; they are converted in one batch per call, so a trainer syncs with the host
    once per logging step, not once per metric. ``rows`` counts the CSV rows written so far; trainers store
    it in their checkpoint, and on resume (``resume_rows``) the CSV is cut back to exactly the rows that
    existed at that checkpoint, so nothing is duplicated (e.g. a final evaluation logged after the last
    checkpoint). ``resume_step`` purges later TensorBoard events and, for checkpoints without a row count,
    cuts the CSV by step.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None,
                 resume_rows: int | None = None):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.dir / "metrics.csv"
        self.rows = 0
        if (resume_step is not None or resume_rows is not None) and self.csv_path.exists():
            self._truncate(resume_step, resume_rows)
        new = not self.csv_path.exists()
        self._f = open(self.csv_path, "a", newline="")
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(CSV_HEADER)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(self.dir / "tb"), purge_step=purge)
        self._t0 = time.time()

    def _truncate(self, step: int | None, rows: int | None) -> None:
        with open(self.csv_path, newline="") as f:
            data = [r for r in list(csv.reader(f))[1:] if r]
        keep = data[:rows] if rows is not None else [r for r in data if int(float(r[0])) <= step]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            w.writerows(keep)
        self.rows = len(keep)

    def log(self, step: int, metrics: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
        names = list(metrics)
        tens = [metrics[n] for n in names if isinstance(metrics[n], torch.Tensor)]
        host = torch.stack([t.detach().float().reshape(()) for t in tens]).tolist() if tens else []
        it = iter(host)
        values = {n: (next(it) if isinstance(metrics[n], torch.Tensor) else float(metrics[n])) for n in names}
        now = round(time.time() - self._t0, 3)
        for n, v in values.items():
            if math.isnan(v):
                continue
            self._w.writerow([step, now, n, f"{v:.7g}"])
            self.rows += 1
            if self._tb is not None:
                self._tb.add_scalar(n, v, step)
        self._f.flush()
        return values

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value), ...]}`` from a run directory's metrics.csv."""
    out: dict[str, list[tuple[int, float]]] = {}
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return out
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["name"], []).append((int(float(row["step"])), float(row["value"])))
    return out
