"""Schedules: a hyper-parameter as a function of training progress.

A schedule maps the 1-based index ``i`` of an iteration out of ``total`` to a value. ``linear`` decays
from ``start`` at the first iteration towards ``end`` (reached after the last one, as in CleanRL's and
the transformers Trainer's learning-rate annealing: ``start + (end - start) * (i - 1) / total``);
``constant`` is ``start`` throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class Schedule:
    kind: str
    start: float
    total: int
    end: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; valid: {', '.join(SCHEDULES)}")

    def fraction(self, i: int) -> float:
        """Remaining fraction ``1 - (i - 1) / total`` of a linear schedule (1 for constant)."""
        return 1.0 - (i - 1) / self.total if self.kind == "linear" else 1.0

    def __call__(self, i: int) -> float:
        if self.kind == "constant":
            return self.start
        return self.end + (self.start - self.end) * self.fraction(i)


def linear_interpolation(start: float, end: float, i: int, total: int) -> float:
    """``start`` at ``i = 1``, ``end`` at ``i = total`` (linear in between, clamped outside; ``start`` for a
    one-iteration run): for ratios annealed over a run."""
    if total <= 1:
        return start
    return start + (end - start) * (min(max(i, 1), total) - 1) / (total - 1)
