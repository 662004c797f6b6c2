"""Bookkeeping of finished training episodes and throughput, shared by the control trainers."""

from __future__ import annotations

import collections
import time
from typing import Any

import numpy as np


class EpisodeLog:
    """The finished training episodes ``(return, length)``: those since the last log (their means are logged
    as ``train/episode_return`` and ``train/episode_length``) and the last 100 (shown by the progress bar and
    kept in the run's counters, so a resumed run shows the same), plus environment steps per second since the
    stage (re)started."""

    def __init__(self, run) -> None:
        run.counters.setdefault("recent", [])
        self.since_log: list[tuple[float, int]] = []
        self.recent: collections.deque = collections.deque(maxlen=100)
        self.t_start, self.steps_at_start = time.time(), 0

    def begin(self, run) -> None:
        """After the run's state is restored (or at the start): reload the recent episodes, restart the clock."""
        self.recent = collections.deque((tuple(e) for e in run.counters["recent"]), maxlen=100)
        self.t_start, self.steps_at_start = time.time(), run.counters["global_step"]

    def add(self, finished: list[tuple[float, int]]) -> None:
        self.since_log += finished
        self.recent.extend(finished)

    def save(self, run) -> None:
        run.counters["recent"] = [list(e) for e in self.recent]

    def recent_return(self) -> float | None:
        return float(np.mean([e[0] for e in self.recent])) if self.recent else None

    def steps_per_second(self, run) -> float:
        return (run.counters["global_step"] - self.steps_at_start) / max(time.time() - self.t_start, 1e-9)

    def seconds(self) -> float:
        return time.time() - self.t_start

    def metrics(self, run) -> dict[str, Any]:
        """Throughput and the means over the episodes finished since the last call."""
        out: dict[str, Any] = {"train/steps_per_s": self.steps_per_second(run)}
        if self.since_log:
            out["train/episode_return"] = float(np.mean([e[0] for e in self.since_log]))
            out["train/episode_length"] = float(np.mean([e[1] for e in self.since_log]))
        self.since_log = []
        return out
