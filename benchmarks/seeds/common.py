"""Helpers shared by the seed-claim scripts: run one job (skipped when finished, shareable by several
processes through a lock file), read a run's metrics, and aggregate over seeds (IQM with a 95%
stratified-bootstrap interval, rliable)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np

RUNS = Path("runs/seeds_claims")
COMMON = {"tensorboard": False, "progress": False, "log_every": 256, "checkpoint_every": 0}


def run_one(job, runs: Path = RUNS):
    """Train ``job = (claim, variant, algo, sets)`` into ``runs/claim/variant/s<seed>`` unless finished; a run
    left unfinished by a stopped sweep (and not running in another process) starts afresh (the runs keep no
    checkpoint: ``checkpoint_every`` 0)."""
    claim, variant, algo, sets = job
    from policyopt import algos

    out = runs / claim / variant / f"s{sets['seed']}"
    if (out / "eval.json").exists():
        return str(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pid = int(lock.read_text() or 0)
        try:
            os.kill(pid, 0)
            return f"{out} (running in pid {pid})"
        except OSError:
            lock.unlink()
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    for leftover in out.iterdir():
        if leftover.is_dir():
            shutil.rmtree(leftover)
        elif leftover != lock:
            leftover.unlink()
    try:
        cfg = algos.build_config(algo, sets={**COMMON, **sets})
        algos.get(algo).load("train")(cfg, out)
    finally:
        lock.unlink(missing_ok=True)
    return str(out)


def series(run: Path, name: str) -> np.ndarray:
    """``(step, value)`` rows of one metric from a run's metrics.csv."""
    pts = [(int(r["step"]), float(r["value"])) for r in csv.DictReader(open(run / "metrics.csv")) if r["name"] == name]
    return np.array(pts) if pts else np.zeros((0, 2))


def iqm_ci(x: np.ndarray, reps: int = 2000):
    """IQM over seeds and its 95% stratified-bootstrap interval."""
    from rliable import library as rly
    from rliable import metrics

    est, ci = rly.get_interval_estimates(
        {"a": np.asarray(x, dtype=float).reshape(-1, 1)}, lambda s: np.array([metrics.aggregate_iqm(s)]), reps=reps
    )
    return float(est["a"][0]), [float(ci["a"][0][0]), float(ci["a"][1][0])]


def mean_ci(x: np.ndarray, reps: int = 2000, seed: int = 0):
    """Mean over seeds and its 95% percentile-bootstrap interval."""
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    boots = rng.choice(x, size=(reps, len(x)), replace=True).mean(1)
    return float(x.mean()), [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def runs_of(claim: str, variant: str, runs: Path = RUNS) -> list[Path]:
    """Finished runs of one variant, by seed."""
    return sorted(
        (p for p in (runs / claim / variant).glob("s*") if (p / "eval.json").exists()), key=lambda p: int(p.name[1:])
    )


def final_eval(run: Path) -> float:
    return float(json.loads((run / "eval.json").read_text())["return_mean"])


def curve(runs: list[Path], name: str, grid: np.ndarray) -> np.ndarray:
    """One row per run: the metric interpolated on ``grid``."""
    return np.stack([np.interp(grid, *series(r, name).T) for r in runs])
