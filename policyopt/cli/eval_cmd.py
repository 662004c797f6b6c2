"""``policyopt eval RUN_DIR [--episodes N] [--video] [--stochastic]``: the result is printed and written to
``RUN_DIR/evals/eval-N.json``."""

from __future__ import annotations

import json

from policyopt import api
from policyopt.errors import UserError


def add_parser(sub):
    p = sub.add_parser("eval", help="evaluate a trained run", description="Evaluate the policy of a run directory.")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=int, default=None, help="evaluation episodes (control) or samples (LM)")
    p.add_argument("--video", action="store_true", help="record videos of the episodes into RUN_DIR/videos")
    p.add_argument("--stochastic", action="store_true",
                   help="sample actions (control) or completions (language models) instead of acting greedily")
    return p


def run(args) -> int:
    if args.episodes is not None and args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    result = api.evaluate(args.run_dir, episodes=args.episodes, video=args.video, deterministic=not args.stochastic)
    print(json.dumps(result))
    return 0
