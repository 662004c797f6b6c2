"""``policyopt train ALGO [--env ID | --task NAME ...] [--config FILE] [--set k=v ...]`` and ``--resume DIR``.

Everything that can be checked before training is, before the run directory is created: the config (types,
ranges, choices), the run directory (writable, not already a run), the environment with its kwargs, the dataset,
the reward functions, the device and the memory the sizes ask for (see ``policyopt.cli.config_cmd``).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

from policyopt import api
from policyopt.cli.config_cmd import IMPORT_NOTE, add_config_options, checked_config, total_steps_was_set
from policyopt.config import iteration_size
from policyopt.errors import UserError
from policyopt.runs import rundir


def add_parser(sub):
    p = sub.add_parser(
        "train",
        help="train an algorithm (or resume a run)",
        description="Train ALGO on an environment (control) or a task (language models). " + IMPORT_NOTE + ".",
    )
    add_config_options(p)
    p.add_argument("--out", help="run directory (default: runs/ALGO-ENV-sSEED-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="disable the live progress bar")
    return p


def run(args) -> int:
    if args.resume:
        return _resume(args)
    if not args.algo:
        raise UserError("train needs an algorithm name (see `policyopt list`) or --resume RUN_DIR")
    run_dir: Path | None = None

    def check_out(algo, cfg) -> None:
        nonlocal run_dir
        tag = str(getattr(cfg, algo.target_key, None) or "run")
        run_dir = Path(args.out) if args.out else rundir.default_run_dir(args.algo, tag, getattr(cfg, "seed", 0))
        run_dir, main_rank = _agreed(run_dir)
        if main_rank:  # rank 0 creates it; the other ranks of a torchrun launch take its name
            rundir.check_new_run_dir(run_dir)

    algo, cfg = checked_config(args, check_out)
    assert run_dir is not None
    if total_steps_was_set(args):
        _warn_rounding(cfg)
    return _report(api.train(cfg, run_dir, algo=args.algo), run_dir)


def _agreed(run_dir: Path) -> tuple[Path, bool]:
    """``(rank 0's run directory, whether this is rank 0)``; a single process is rank 0."""
    from policyopt.lm import distributed

    if distributed.launch_size() == 1:
        return run_dir, True
    world = distributed.world()
    return Path(world.broadcast_object(str(run_dir))), world.is_main


def _warn_rounding(cfg) -> None:
    """A warning when ``total_steps`` is not a whole number of training iterations (the run rounds it up)."""
    size = iteration_size(cfg)
    if size and cfg.total_steps % size[0]:
        rounded = -(-cfg.total_steps // size[0]) * size[0]
        sys.stderr.write(
            f"policyopt: warning: total_steps={cfg.total_steps} is not a multiple of {size[1]} "
            f"= {size[0]} steps per iteration; the run takes {rounded} steps\n"
        )


def _resume(args) -> int:
    run_dir = Path(args.resume)
    info = rundir.read_info(run_dir)
    if args.algo and args.algo != info.get("algo"):
        raise UserError(f"run {str(run_dir)!r} was trained with {info.get('algo')!r}, not {args.algo!r}")
    if (
        args.sets
        or args.config
        or args.env
        or args.task
        or args.seed is not None
        or args.dataset
        or args.model
        or args.out
    ):
        raise UserError(
            "--resume continues a run with its saved config; it takes no other config options "
            "(except --total-steps to extend the budget and --no-progress)"
        )
    saved = rundir.read_config(run_dir)
    total = args.total_steps
    if total is not None:
        sizes = {k: v for k, v in saved.items() if k in ("n_steps", "num_envs") and type(v) is int}
        _warn_rounding(types.SimpleNamespace(**sizes, env_id=saved.get("env_id"), total_steps=total))
    return _report(api.resume(run_dir, total_steps=total, progress=False if args.no_progress else None), run_dir)


def _report(result: dict, run_dir: Path) -> int:
    summary = {k: v for k, v in result.items() if isinstance(v, int | float | str)}
    print(json.dumps(summary, indent=None))
    print(f"run directory: {run_dir}")
    return 0
