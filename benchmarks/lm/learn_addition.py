"""Benchmark (not a test): GRPO on the embedded 2-digit addition task, 2 CPU cores, no downloads.

Target (issue 3): RL raises held-out greedy accuracy by >= 15 points absolute within 10 minutes.
Runs the supervised warm-start, then GRPO, evaluating every ``--eval-every`` steps, and prints a JSON
line with accuracy before/after, the best intermediate accuracy and the RL wall-clock time.

    python benchmarks/lm/learn_addition.py --out /tmp/lm_bench --steps 300
"""

from __future__ import annotations

import argparse
import json
import time

from policyopt import algos
from policyopt.lm.trainer import train
from policyopt.runs.logger import read_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="grpo")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    a = ap.parse_args()
    sets = dict(eval_every=a.eval_every, checkpoint_every=50, progress=False)
    sets.update(dict(s.split("=", 1) for s in a.sets))
    cfg = algos.build_config(a.preset, sets=sets, flags={"total_steps": a.steps})
    t0 = time.time()
    res = train(cfg, a.out)
    evals = read_metrics(a.out).get("eval/accuracy", [])
    print(
        json.dumps(
            {
                "preset": a.preset,
                "accuracy_before": res["accuracy_before"],
                "accuracy_after": res["accuracy_after"],
                "evals": evals,
                "gain_points": round(100 * (res["accuracy_after"] - res["accuracy_before"]), 1),
                "total_seconds": round(time.time() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
