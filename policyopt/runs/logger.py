"""Metrics: a tidy CSV (``step,time,name,value``) and TensorBoard event files in the run directory, plus
optional experiment trackers (Weights & Biases, trackio), all fed the same names and steps.

Every destination is a :class:`Sink`; :class:`MetricLogger` converts a call's values once and hands them
to each sink. Trackers are entries of :data:`TRACKERS` (the package is imported only when a run asks for
it); see ``docs/tracking.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib
import io
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from policyopt.config import to_dict
from policyopt.errors import UserError
from policyopt.registry import Registry
from policyopt.runs.files import atomic_write, atomic_write_text

CSV_HEADER = ["step", "time", "name", "value"]
PROJECT = "policyopt"  # the tracker project every run is logged under
TRACKER_IDS = "trackers.json"  # run-directory file with the trackers' run ids (to continue them on resume)


class Sink(Protocol):
    """One destination of logged scalars: ``write`` gets the non-NaN values of one ``log`` call."""

    def write(self, step: int, values: Mapping[str, float], elapsed: float) -> None: ...

    def close(self) -> None: ...


# ---- the CSV ---------------------------------------------------------------------------------------------
class CsvSink:
    """``metrics.csv``, one row per value. ``rows`` counts the data rows in the file.

    On resume the file is cut back to the first ``rows`` data rows (or, without a row count, to the rows
    with ``step <= resume_step``) by writing a new file and renaming it over the old one, so a file that
    was a symlink becomes a regular file and the symlink's target is never written to.
    """

    def __init__(self, path: Path, resume_step: int | None = None, resume_rows: int | None = None):
        self.path = path
        self.rows = 0
        if (resume_step is not None or resume_rows is not None) and path.exists():
            self._cut_back(resume_step, resume_rows)
        new = not path.exists()
        self._f = open(path, "a", newline="")
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(CSV_HEADER)
            self._f.flush()

    def _cut_back(self, step: int | None, rows: int | None) -> None:
        with open(self.path, newline="") as f:
            data = [r for r in list(csv.reader(f))[1:] if r]
        keep = data[:rows] if rows is not None else [r for r in data if int(float(r[0])) <= step]
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(CSV_HEADER)
        w.writerows(keep)

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                f.write(buf.getvalue())

        atomic_write(self.path, write)
        self.rows = len(keep)

    def write(self, step: int, values: Mapping[str, float], elapsed: float) -> None:
        for n, v in values.items():
            self._w.writerow([step, elapsed, n, f"{v:.7g}"])
        self.rows += len(values)
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class TensorBoardSink:
    """TensorBoard event files under ``tb/``; on resume, events after ``resume_step`` are purged."""

    def __init__(self, folder: Path, resume_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(folder), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, step: int, values: Mapping[str, float], elapsed: float) -> None:
        for n, v in values.items():
            self._tb.add_scalar(n, v, step)

    def close(self) -> None:
        self._tb.close()


# ---- experiment trackers -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TrackerStart:
    """What a tracker's ``init`` is given: project, run name (the run directory's name), the resolved config,
    the run directory, whether the run resumes, and the tracker's run id saved by the first start (or None)."""

    project: str
    name: str
    config: dict[str, Any]
    dir: Path
    resume: bool
    run_id: str | None


Opener = Callable[[Any, TrackerStart], Any]  # (imported module, start) -> run object with log(values, step=), finish()

TRACKERS: Registry[Opener] = Registry("experiment tracker", module="", extra="")


@TRACKERS.register("wandb", module="wandb", extra="wandb")
def _open_wandb(wandb: Any, s: TrackerStart) -> Any:
    """Weights & Biases; a resumed run continues the W&B run whose id was saved at the first start."""
    kw: dict[str, Any] = dict(project=s.project, name=s.name, config=s.config, dir=str(s.dir))
    if s.resume and s.run_id:
        kw.update(id=s.run_id, resume="allow")
    return wandb.init(**kw)


@TRACKERS.register("trackio", module="trackio", extra="trackio")
def _open_trackio(trackio: Any, s: TrackerStart) -> Any:
    """trackio (local-first, wandb's API); runs are named, so a resumed run continues the run of that name."""
    return trackio.init(project=s.project, name=s.name, config=s.config, resume="allow" if s.resume else "never")


def check_trackers(names: Any) -> str | None:
    """Config check for a ``trackers`` field: distinct names of :data:`TRACKERS`."""
    names = list(names)
    bad = [n for n in names if n not in TRACKERS]
    if bad or len(set(names)) != len(names):
        return f"must be distinct names from: {', '.join(TRACKERS.names())} (got {names})"
    return None


def import_tracker(name: str) -> Any:
    """The tracker's package, imported now; a missing package is a one-line :class:`UserError`."""
    meta = TRACKERS.meta(name)
    try:
        return importlib.import_module(meta["module"])
    except ImportError:
        raise UserError(
            f"tracker {name!r} needs the {meta['module']!r} package: pip install 'policyopt[{meta['extra']}]'"
        ) from None


class TrackerSink:
    """One experiment tracker's run: every ``log`` call becomes ``run.log(values, step=step)``."""

    def __init__(self, run: Any):
        self.run = run

    def write(self, step: int, values: Mapping[str, float], elapsed: float) -> None:
        if values:
            self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return to_dict(config)
    return dict(config)


def open_trackers(run_dir: Path, names: Sequence[str], config: Any, resume: bool) -> list[TrackerSink]:
    """Start each named tracker's run (project :data:`PROJECT`, named after ``run_dir``); the ids of the
    started runs are saved in ``run_dir/trackers.json`` so a resume continues the same runs."""
    msg = check_trackers(names)
    if msg:
        raise UserError(f"config key 'trackers' {msg}")
    modules = {n: import_tracker(n) for n in names}  # every package checked before any run starts
    id_file = run_dir / TRACKER_IDS
    saved = json.loads(id_file.read_text()) if resume and id_file.exists() else {}
    cfg = _config_dict(config)
    sinks: list[TrackerSink] = []
    try:
        for n in names:
            start = TrackerStart(PROJECT, run_dir.name, cfg, run_dir, resume, saved.get(n))
            sinks.append(TrackerSink(TRACKERS.get(n)(modules[n], start)))
    except BaseException:
        for s in sinks:
            s.close()
        raise
    ids = {n: str(s.run.id) for n, s in zip(names, sinks) if getattr(s.run, "id", None) is not None}
    if {**saved, **ids} != saved:
        atomic_write_text(id_file, json.dumps({**saved, **ids}, indent=2))
    return sinks


# ---- the logger ----------------------------------------------------------------------------------------------
class MetricLogger:
    """Log scalar metrics under uniform names (``loss/policy``, ``stats/clip_frac``, ``eval/return``...) to the
    CSV, TensorBoard (``tensorboard``) and the experiment trackers named in ``trackers``.

    Values may be tensors; they are converted in one batch per call, so a trainer syncs with the host once per
    logging step, not once per metric. NaN values are skipped by every sink. ``rows`` counts the CSV rows
    written so far; the lifecycle stores it in the checkpoint, and on resume (``resume_rows``) the CSV is cut
    back to exactly the rows that existed at that checkpoint, so nothing is duplicated (e.g. a final evaluation
    logged after the last checkpoint). ``resume_step`` purges later TensorBoard events and, for checkpoints
    without a row count, cuts the CSV by step. ``config`` (a dataclass or mapping) is the trackers' run config.
    """

    def __init__(
        self,
        run_dir: str | Path,
        tensorboard: bool = True,
        resume_step: int | None = None,
        resume_rows: int | None = None,
        trackers: Sequence[str] = (),
        config: Any = None,
    ):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        resume = resume_step is not None or resume_rows is not None
        self.sinks: list[Sink] = list(open_trackers(self.dir, list(trackers), config, resume))
        try:
            self._csv = CsvSink(self.dir / "metrics.csv", resume_step, resume_rows)
            self.sinks.insert(0, self._csv)
            if tensorboard:
                self.sinks.insert(1, TensorBoardSink(self.dir / "tb", resume_step))
        except BaseException:
            self.close()
            raise
        self.csv_path = self._csv.path
        self._t0 = time.time()

    @property
    def rows(self) -> int:
        return self._csv.rows

    def log(self, step: int, metrics: Mapping[str, float | torch.Tensor]) -> dict[str, float]:
        names = list(metrics)
        tens = [metrics[n] for n in names if isinstance(metrics[n], torch.Tensor)]
        host = torch.stack([t.detach().float().reshape(()) for t in tens]).tolist() if tens else []
        it = iter(host)
        values = {n: (next(it) if isinstance(metrics[n], torch.Tensor) else float(metrics[n])) for n in names}
        kept = {n: v for n, v in values.items() if not math.isnan(v)}
        elapsed = round(time.time() - self._t0, 3)
        for sink in self.sinks:
            sink.write(step, kept, elapsed)
        return values

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self.sinks = []


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
