"""``policyopt eval RUN_DIR [--episodes N] [--video] [--stochastic]``: the result is printed and written to
``RUN_DIR/evals/eval-N.json``. The run's files are checked first (run.json, config.yaml, the environment it
names), so a damaged run directory gives one line and nothing is written."""

from __future__ import annotations

import json

from policyopt import algos, api
from policyopt.cli.config_cmd import EPISODES_ARG
from policyopt.config import resolve
from policyopt.errors import UserError
from policyopt.runs import rundir


def add_parser(sub):
    p = sub.add_parser("eval", help="evaluate a trained run", description="Evaluate the policy of a run directory.")
    p.add_argument("run_dir")
    p.add_argument("--episodes", type=EPISODES_ARG, default=None, help="evaluation episodes (control) or samples (LM)")
    p.add_argument("--video", action="store_true", help="record videos of the episodes into RUN_DIR/videos")
    p.add_argument(
        "--stochastic",
        action="store_true",
        help="sample actions (control) or completions (language models) instead of acting greedily",
    )
    return p


def saved_config(run_dir):
    """The run's config, resolved and validated with its family's (or, for older runs, its algorithm's) class."""
    from policyopt.runs.lifecycle import load_family

    info = rundir.read_info(run_dir)
    try:
        cls = load_family(run_dir).config
    except UserError:
        if info.get("algo") not in algos.load_all():
            raise
        cls = algos.get(info["algo"]).config
    return resolve(cls(), rundir.read_config(run_dir))


def run(args) -> int:
    cfg = saved_config(args.run_dir)
    if isinstance(getattr(cfg, "env_id", None), str):  # also registers a module:Class environment
        from policyopt.control.envs import probe_env

        probe_env(cfg.env_id, cfg.env_kwargs)
    result = api.evaluate(args.run_dir, episodes=args.episodes, video=args.video, deterministic=not args.stochastic)
    print(json.dumps(result))
    return 0
