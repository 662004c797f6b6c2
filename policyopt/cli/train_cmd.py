"""``policyopt train ALGO [--env ID | --task NAME ...] [--config FILE] [--set k=v ...]`` and ``--resume DIR``."""

from __future__ import annotations

import json
from pathlib import Path

from policyopt import algos, api
from policyopt.config import parse_sets
from policyopt.errors import UserError
from policyopt.runs import rundir


def add_parser(sub):
    p = sub.add_parser("train", help="train an algorithm (or resume a run)",
                       description="Train ALGO on an environment (control) or a task (language models).")
    p.add_argument("algo", nargs="?", help="algorithm / preset name (see `policyopt list`)")
    p.add_argument("--env", help="Gymnasium environment id (control algorithms)")
    p.add_argument("--task", help="task name (language-model presets)")
    p.add_argument("--dataset", help="JSONL or datasets file on disk (language-model presets)")
    p.add_argument("--model", help="model path or config (language-model presets)")
    p.add_argument("--config", help="YAML file of config overrides")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable); dotted keys reach nested sections")
    p.add_argument("--seed", type=int)
    p.add_argument("--total-steps", type=float, help="training budget in environment steps (control) or "
                                                     "optimizer steps (language models)")
    p.add_argument("--out", help="run directory (default: runs/ALGO-ENV-sSEED-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="disable the live progress bar")
    return p


def run(args) -> int:
    if args.resume:
        return _resume(args)
    if not args.algo:
        raise UserError("train needs an algorithm name (see `policyopt list`) or --resume RUN_DIR")
    algo = algos.get(args.algo)
    flags = {algo.target_key: args.env if algo.target_key == "env_id" else args.task,
             "seed": args.seed, "dataset": args.dataset, "model": args.model}
    if args.total_steps is not None:
        if args.total_steps <= 0 or not float(args.total_steps).is_integer():
            raise UserError(f"--total-steps must be a positive integer, got {args.total_steps!r}")
        flags["total_steps"] = int(args.total_steps)
    if algo.target_key == "env_id" and args.task:
        raise UserError(f"--task does not apply to control algorithm {args.algo!r}; use --env")
    if algo.target_key != "env_id" and args.env:
        raise UserError(f"--env does not apply to language-model preset {args.algo!r}; use --task or --dataset")
    if args.no_progress:
        flags["progress"] = False
    cfg = algos.build_config(args.algo, config_file=args.config, sets=parse_sets(args.sets), flags=flags)
    tag = str(getattr(cfg, algo.target_key, None) or "run")
    run_dir = Path(args.out) if args.out else rundir.default_run_dir(args.algo, tag, getattr(cfg, "seed", 0))
    return _report(api.train(cfg, run_dir, algo=args.algo), run_dir)


def _resume(args) -> int:
    run_dir = Path(args.resume)
    info = rundir.read_info(run_dir)
    if args.algo and args.algo != info.get("algo"):
        raise UserError(f"run {str(run_dir)!r} was trained with {info.get('algo')!r}, not {args.algo!r}")
    if args.sets or args.config or args.env or args.task or args.seed is not None:
        raise UserError("--resume continues a run with its saved config; it takes no other config options "
                        "(except --total-steps to extend the budget and --no-progress)")
    total = int(args.total_steps) if args.total_steps is not None else None
    return _report(api.resume(run_dir, total_steps=total, progress=False if args.no_progress else None), run_dir)


def _report(result: dict, run_dir: Path) -> int:
    summary = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
    print(json.dumps(summary, indent=None))
    print(f"run directory: {run_dir}")
    return 0
