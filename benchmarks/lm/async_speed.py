"""Benchmark (not a test): the synchronous LM trainer vs one asynchronous generation worker beside the learner.

The default GRPO run on the embedded addition task (``policyopt train grpo``: supervised warm-start, then GRPO),
torch 1 thread in every process, 2 CPU cores: ``sync`` (``async_workers=0``: generate, then train, in one
process) and ``async`` (``async_workers=1``, ``max_staleness=1``, rollout correction ``tis`` in decoupled
mode: a Ray actor generates batch i+1 with the weights of step i while the learner trains on batch i). For each
seed (the two modes interleaved) it prints one JSON line per run: RL samples per second in the steady state
(completions of RL steps 2..N / wall-clock seconds from the end of step 1 to the end of step N, read from
``metrics.csv``; step 1's seconds are printed apart: they hold any worker start-up the warm-start did not hide),
accuracy before / after RL. Then a summary: the speed-up (ratio of mean samples per second, target >= 1.5) and
each mode's mean final held-out accuracy with a 95% t-interval over seeds (target: the async mean inside the
synchronous interval).

    python benchmarks/lm/async_speed.py --out /tmp/async_speed --seeds 0,1,2,3,4
    python benchmarks/lm/async_speed.py --out /tmp/async_speed_quick --quick   # smoke check, ~1 minute
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from policyopt import algos
from policyopt.lm.trainer import train
from policyopt.runs.logger import read_metrics

MODES = {
    "sync": {"async_workers": 0},
    "async": {"async_workers": 1, "max_staleness": 1, "correction.name": "tis"},
}
QUICK = {"sft_steps": 50, "eval_size": 32, "eval_k": 1, "checkpoint_every": 0}
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(xs: list[float]) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the 95% Student-t interval of the mean (``lo = hi = mean`` for one value)."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, m, m
    half = T_975.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def rl_seconds(run_dir: Path) -> tuple[float, float]:
    """``(steps 2..N, step 1)``: wall-clock seconds from the end of RL step 1 to the end of the last one (the
    steady state), and of step 1 alone (from the pre-RL evaluation; for ``async`` it includes any worker start-up
    the warm-start did not hide)."""
    rows = [r.split(",") for r in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    start = max(float(r[1]) for r in rows if r[0] == "0" and r[2] == "eval/accuracy")
    ends = {int(r[0]): float(r[1]) for r in rows if r[2] == "reward/mean"}
    return ends[max(ends)] - ends[1], ends[1] - start


def run_one(mode: str, seed: int, a) -> dict:
    sets = {"threads": 1, "progress": False, "tensorboard": False, **MODES[mode], **(QUICK if a.quick else {})}
    sets.update(dict(s.split("=", 1) for s in a.sets))
    flags = {"seed": seed, **({"total_steps": a.steps} if a.steps else {})}
    cfg = algos.build_config("grpo", sets=sets, flags=flags)
    out = Path(a.out) / f"{mode}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    res = train(cfg, out)
    seconds, first = rl_seconds(out)
    samples = (cfg.total_steps - 1) * cfg.prompts_per_step * cfg.group_size
    staleness = read_metrics(out).get("stats/staleness", [])
    return {
        "mode": mode,
        "seed": seed,
        "samples_per_s": round(samples / seconds, 2),
        "steady_seconds": round(seconds, 2),
        "first_step_seconds": round(first, 2),
        "accuracy_before": res["accuracy_before"],
        "accuracy_after": res["accuracy_after"],
        "staleness_max": max((v for _, v in staleness), default=0.0),
        "total_seconds": round(time.time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", type=int, default=None, help="RL steps (default: the preset's; --quick: 6)")
    ap.add_argument("--quick", action="store_true", help="one seed, a short warm-start, 6 RL steps (smoke check)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config key=value (both modes)")
    a = ap.parse_args()
    if a.quick:
        a.seeds, a.steps = a.seeds.split(",")[0], a.steps or 6
    rows: dict[str, list[dict]] = {m: [] for m in MODES}
    for seed in (int(s) for s in a.seeds.split(",")):
        for mode in MODES:
            row = run_one(mode, seed, a)
            rows[mode].append(row)
            print(json.dumps(row), flush=True)
    speed = {m: statistics.fmean(r["samples_per_s"] for r in rows[m]) for m in MODES}
    acc = {m: interval([r["accuracy_after"] for r in rows[m]]) for m in MODES}
    sync_lo, sync_hi = acc["sync"][1], acc["sync"][2]
    summary = {
        "samples_per_s": {m: round(v, 2) for m, v in speed.items()},
        "speedup": round(speed["async"] / speed["sync"], 2),
        "accuracy_after_mean_ci95": {m: [round(x, 3) for x in v] for m, v in acc.items()},
        "speedup_target_met": speed["async"] / speed["sync"] >= 1.5,
        "accuracy_target_met": sync_lo <= acc["async"][0] <= sync_hi,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
