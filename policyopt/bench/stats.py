"""Statistics over bench results, following Agarwal et al. (2021), "Deep RL at the Edge of the Statistical
Precipice", through their ``rliable`` library: IQM and mean with stratified bootstrap CIs, performance
profiles and probability of improvement. Score matrices are ``(num_runs, num_tasks)`` per algorithm, as
rliable expects; a run is one seed of one algorithm on all tasks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from rliable import library as rly
from rliable import metrics

CI_SIZE = 0.95
# _RLIABLE_RNG: rliable's StratifiedBootstrap overrides arch's index draw with the global ``np.random.choice``, so
# the ``random_state`` it hands to arch is never used for resampling; every bootstrap call below seeds the global
# NumPy generator first: the same tables give the same intervals in every report.


def _quiet(fn):
    """arch (rliable's bootstrap backend) warns that RandomState is deprecated; the CIs are unaffected."""

    def wrapped(*a, **kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return fn(*a, **kw)

    return wrapped


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean over all entries (rliable's ``aggregate_iqm``: 25% trimmed mean)."""
    return float(metrics.aggregate_iqm(np.asarray(scores, dtype=np.float64)))


def mean(scores: np.ndarray) -> float:
    return float(metrics.aggregate_mean(np.asarray(scores, dtype=np.float64)))


def score_matrix(rows: list[dict], algo: str, targets: list[str], field: str = "final_score") -> np.ndarray:
    """``(num_runs, num_tasks)`` for ``algo``: the seeds that finished on every target (rliable's stratified
    bootstrap needs a full matrix; a seed that failed on one target is left out of multi-task aggregates)."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["algo"] == algo and r["target"] in targets and r["status"] == "finished" and not math.isnan(r[field]):
            by_seed.setdefault(r["seed"], {})[r["target"]] = r[field]
    full = [s for s in sorted(by_seed) if all(t in by_seed[s] for t in targets)]
    return np.array([[by_seed[s][t] for t in targets] for s in full], dtype=np.float64).reshape(len(full), len(targets))


@_quiet
def interval_estimates(
    scores: dict[str, np.ndarray], func: Callable[[np.ndarray], float], reps: int, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """``{algo: (point, lo, hi)}`` with a 95% percentile stratified-bootstrap CI (rliable). With fewer than
    two runs there is no interval (lo = hi = nan)."""
    out = {}
    for k, s in scores.items():
        if s.shape[0] == 0:
            out[k] = (math.nan, math.nan, math.nan)
        elif s.shape[0] == 1:
            out[k] = (func(s), math.nan, math.nan)
        else:
            np.random.seed(seed)  # see _RLIABLE_RNG
            point, ci = rly.get_interval_estimates(
                {k: s},
                lambda x: np.array([func(x)]),
                reps=reps,
                confidence_interval_size=CI_SIZE,
            )
            out[k] = (float(point[k][0]), float(ci[k][0, 0]), float(ci[k][1, 0]))
    return out


def summary_table(rows: list[dict], algos: list[str], targets: list[str], field: str, reps: int) -> list[dict]:
    """IQM and mean (with CIs) of ``field`` per algorithm over ``targets`` (one target: a per-task table)."""
    scores = {a: score_matrix(rows, a, targets, field) for a in algos}
    iq = interval_estimates(scores, iqm, reps)
    mn = interval_estimates(scores, mean, reps)
    out = []
    for a in algos:
        n_failed = sum(1 for r in rows if r["algo"] == a and r["target"] in targets and r["status"] != "finished")
        s = scores[a]
        out.append(
            {
                "algo": a,
                "runs": int(s.shape[0]),
                "failed": n_failed,
                "iqm": iq[a][0],
                "iqm_lo": iq[a][1],
                "iqm_hi": iq[a][2],
                "mean": mn[a][0],
                "mean_lo": mn[a][1],
                "mean_hi": mn[a][2],
                "median": float(np.median(s)) if s.size else math.nan,
                "std": float(s.std(ddof=1)) if s.shape[0] > 1 else math.nan,
            }
        )
    return out


@_quiet
def probability_of_improvement(
    rows: list[dict], algos: list[str], targets: list[str], reps: int, seed: int = 0
) -> list[dict]:
    """P(X > Y) for every ordered pair, averaged over tasks (Mann-Whitney U per task; scale-free, so raw
    scores
    are fine), with a stratified independent-bootstrap CI (rliable)."""
    out = []
    mats = {a: score_matrix(rows, a, targets) for a in algos}
    for x in algos:
        for y in algos:
            if x == y or mats[x].shape[0] == 0 or mats[y].shape[0] == 0:
                continue
            p = float(metrics.probability_of_improvement(mats[x], mats[y]))
            lo = hi = math.nan
            if mats[x].shape[0] > 1 and mats[y].shape[0] > 1:
                np.random.seed(seed)  # see _RLIABLE_RNG
                _, ci = rly.get_interval_estimates(
                    {"p": (mats[x], mats[y])},
                    lambda a, b: np.array([metrics.probability_of_improvement(a, b)]),
                    reps=reps,
                    confidence_interval_size=CI_SIZE,
                )
                lo, hi = float(ci["p"][0, 0]), float(ci["p"][1, 0])
            out.append({"x": x, "y": y, "p": p, "lo": lo, "hi": hi})
    return out


@_quiet
def performance_profiles(scores: dict[str, np.ndarray], taus: np.ndarray, reps: int, seed: int = 0):
    """Run-score distributions: fraction of runs (over all tasks) with score > tau, with bootstrap CIs."""
    scores = {k: v for k, v in scores.items() if v.shape[0] > 1}
    if not scores:
        return {}, {}
    np.random.seed(seed)  # see _RLIABLE_RNG
    return rly.create_performance_profile(scores, taus, reps=reps, confidence_interval_size=CI_SIZE)


@_quiet
def curve_intervals(curves: list[dict], algo: str, target: str, reps: int, seed: int = 0):
    """IQM over seeds at each evaluation step, with a stratified bootstrap CI band (rliable).

    Returns ``(steps, iqm, lo, hi)``; only steps every seed reached are used. The per-step IQM is
    ``scipy.stats.trim_mean(..., 0.25)`` vectorized over steps: the same statistic as rliable's
    ``aggregate_iqm`` applied per step, computed in one call instead of one per step, which keeps the
    bootstrap fast."""
    from scipy.stats import trim_mean

    by_seed: dict[int, dict[int, float]] = {}
    for c in curves:
        if c["algo"] == algo and c["target"] == target:
            by_seed.setdefault(c["seed"], {})[c["step"]] = c["value"]
    if not by_seed:
        return None
    steps = sorted(set.intersection(*(set(v) for v in by_seed.values())))
    if not steps:
        return None
    arr = np.array([[by_seed[s][t] for t in steps] for s in sorted(by_seed)], dtype=np.float64)
    point = trim_mean(arr, 0.25, axis=0)
    if arr.shape[0] < 2:
        return np.array(steps), point, point * np.nan, point * np.nan
    np.random.seed(seed)  # see _RLIABLE_RNG
    _, ci = rly.get_interval_estimates(
        {"c": arr[:, None, :]},
        lambda x: trim_mean(x[:, 0, :], 0.25, axis=0),
        reps=reps,
        confidence_interval_size=CI_SIZE,
    )
    return np.array(steps), point, ci["c"][0], ci["c"][1]
