"""Benchmark (not a test): GRPO on the embedded 2-digit addition task, 2 CPU cores, no downloads.

Target: RL raises held-out greedy accuracy by >= 15 points absolute within 10 minutes.
For each seed: the preset's defaults (``policyopt train grpo --seed S``: supervised warm-start, then
GRPO), evaluating every ``--eval-every`` RL steps; prints one JSON line per seed (accuracy before/after,
the intermediate evaluations, wall-clock seconds) and a summary line.

    python benchmarks/lm/learn_addition.py --out /tmp/lm_bench --seeds 0,1,2,3,4,5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from policyopt import algos
from policyopt.lm.trainer import train
from policyopt.runs.logger import read_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="grpo")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=None, help="RL steps (default: the preset's)")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    gains = []
    for seed in (int(s) for s in a.seeds.split(",")):
        sets = dict(eval_every=a.eval_every, progress=False)
        sets.update(dict(s.split("=", 1) for s in a.sets))
        flags = {"seed": seed, **({"total_steps": a.steps} if a.steps else {})}
        cfg = algos.build_config(a.preset, sets=sets, flags=flags)
        out = Path(a.out) / f"seed{seed}"
        t0 = time.time()
        res = train(cfg, out)
        gain = round(100 * (res["accuracy_after"] - res["accuracy_before"]), 1)
        gains.append(gain)
        row = {
            "preset": a.preset,
            "seed": seed,
            "accuracy_before": res["accuracy_before"],
            "accuracy_after": res["accuracy_after"],
            "evals": read_metrics(out).get("eval/accuracy", []),
            "gain_points": gain,
            "total_seconds": round(time.time() - t0, 1),
        }
        print(json.dumps(row), flush=True)
    print(json.dumps({"gain_points": gains, "min_gain": min(gains), "target_met": min(gains) >= 15}))


if __name__ == "__main__":
    main()
