"""``policyopt train ALGO [--env ID | --task NAME ...] [--config FILE] [--set k=v ...]`` and ``--resume DIR``.

Everything that can be checked before training is, before the run directory is created: the config (types,
ranges, choices), the run directory (writable, not already a run), the environment with its kwargs, the dataset,
the reward functions, the device and the memory the sizes ask for (see ``policyopt.cli.config_cmd``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
from pathlib import Path

from policyopt import api
from policyopt.cli.config_cmd import IMPORT_NOTE, add_config_options, checked_config, total_steps_was_set
from policyopt.config import iteration_size, resolve
from policyopt.errors import UserError
from policyopt.runs import members, rundir


def add_parser(sub):
    p = sub.add_parser(
        "train",
        help="train an algorithm (or resume a run)",
        description="Train ALGO on an environment (control) or a task (language models). " + IMPORT_NOTE + ".",
    )
    add_config_options(p)
    p.add_argument(
        "--out", help="run directory (default: runs/ALGO-ENV-sSEED-TIME; with --seeds runs/ALGO-ENV-seedsSEEDS-TIME)"
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="disable the live progress bar")
    return p


def run(args) -> int:
    if args.resume:
        return _resume_population(args) if args.seeds is not None else _resume(args)
    if not args.algo:
        raise UserError("train needs an algorithm name (see `policyopt list`) or --resume RUN_DIR")
    if args.seeds is not None:
        return _train_population(args)
    run_dir: Path | None = None

    def check_out(algo, cfg) -> None:
        nonlocal run_dir
        tag = str(getattr(cfg, algo.target_key, None) or "run")
        run_dir = Path(args.out) if args.out else rundir.default_run_dir(args.algo, tag, getattr(cfg, "seed", 0))
        rundir.check_new_run_dir(run_dir)

    algo, cfg = checked_config(args, check_out)
    assert run_dir is not None
    if total_steps_was_set(args):
        _warn_rounding(cfg)
    return _report(api.train(cfg, run_dir, algo=args.algo), run_dir)


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
    if not (run_dir / "run.json").exists() and any(run_dir.glob("seed-*/run.json")):
        raise UserError(
            f"{str(run_dir)!r} is a population folder (seed-K run directories); resume it with "
            f"`policyopt train --resume {run_dir} --seeds SEEDS` or resume one member directory"
        )
    info = rundir.read_info(run_dir)
    if args.algo and args.algo != info.get("algo"):
        raise UserError(f"run {str(run_dir)!r} was trained with {info.get('algo')!r}, not {args.algo!r}")
    _check_resume_options(args)
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


def _check_resume_options(args) -> None:
    if args.sets or args.config or args.env or args.task or args.seed is not None or args.dataset or args.model:
        raise UserError(
            "--resume continues a run with its saved config; it takes no other config options "
            "(except --total-steps to extend the budget, --seeds for a population and --no-progress)"
        )
    if args.out:
        raise UserError("--resume continues a run in its own directory; it takes no --out")


# ---- populations (--seeds) ------------------------------------------------------------------------------
def _train_population(args) -> int:
    root: Path | None = None

    def check_out(algo, cfg) -> None:
        nonlocal root
        tag = str(getattr(cfg, algo.target_key, None) or "run")
        label = members.seeds_label(args.seed_list)
        root = Path(args.out) if args.out else rundir.default_run_dir(args.algo, tag, 0, seeds=label)
        if (root / "run.json").exists():
            raise UserError(f"{str(root)!r} already holds a single run; choose another --out for a population")
        for seed in args.seed_list:
            if (members.member_dir(root, seed) / "run.json").exists():
                raise UserError(
                    f"population folder {str(root)!r} already holds member seed-{seed}; continue it with "
                    f"`policyopt train --resume {root} --seeds {args.seeds}` or choose another --out"
                )
            rundir.check_new_run_dir(members.member_dir(root, seed))

    algo, cfg = checked_config(args, check_out)
    assert root is not None
    if total_steps_was_set(args):
        _warn_rounding(cfg)
    results = api.train_population((cfg, args.seed_list), root, algo=args.algo)
    return _population_report(results, args.seed_list, root)


def _resume_population(args) -> int:
    """Resume (or complete) the population ``RESUME/seed-K`` for the seeds of ``--seeds``; a member that never
    started gets the config of one that did, with its own seed."""
    from policyopt.runs.lifecycle import load_config

    _check_resume_options(args)
    root = Path(args.resume)
    seeds = members.parse_seeds(args.seeds)
    dirs = [members.member_dir(root, s) for s in seeds]
    started = [d for d in dirs if (d / "run.json").exists()]
    if not started:
        raise UserError(
            f"{str(root)!r} holds no member of population {args.seeds!r} (no seed-K/run.json); "
            "start it with `policyopt train ALGO --seeds SEEDS --out DIR`"
        )
    algo = rundir.read_info(started[0]).get("algo")
    if args.algo and args.algo != algo:
        raise UserError(f"population {str(root)!r} was trained with {algo!r}, not {args.algo!r}")
    template = load_config(started[0])
    layers: dict = {} if args.total_steps is None else {"total_steps": args.total_steps}
    if args.no_progress and hasattr(template, "progress"):
        layers["progress"] = False
    cfgs = []
    for seed, d in zip(seeds, dirs, strict=True):
        saved = load_config(d) if (d / "run.json").exists() else dataclasses.replace(template, seed=seed)
        cfgs.append(resolve(saved, layers))
    results = api.train_population(cfgs, dirs, resume=True, algo=algo)
    return _population_report(results, seeds, root)


def _population_report(results: list[dict], seeds: list[int], root: Path) -> int:
    print(population_table(results, seeds, [members.member_dir(root, s) for s in seeds]), end="")
    print(f"population directory: {root}")
    return 0


def population_table(results: list[dict], seeds: list[int], dirs: list[Path]) -> str:
    """A per-seed table (final evaluation mean ± std, steps, wall-clock, directory), then the mean across seeds
    with a 95% bootstrap interval."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from policyopt.bench.stats import interval_estimates, mean

    metric = "-"
    finals = []
    t = Table()
    for col in ("seed", "final evaluation", "steps", "wall-clock", "directory"):
        t.add_column(col, overflow="fold", justify="right" if col != "directory" else "left")
    for seed, res, d in zip(seeds, results, dirs, strict=True):
        metric, value, spread, step = members.headline(d)
        finals.append(value)
        shown = f"{value:.4g}" + (f" ± {spread:.4g}" if spread is not None else "")
        wall = "done before" if res.get("trained") == "before" else f"{res.get('wall_seconds', float('nan')):.1f}s"
        t.add_row(str(seed), shown, str(step if step is not None else "-"), wall, str(d))
    how = ", ".join(sorted({str(r.get("trained")) for r in results if r.get("trained") != "before"})) or "before"
    title = f"population of {len(seeds)} seeds (trained {how}): final evaluation {metric}\n"
    point, lo, hi = interval_estimates({"p": np.array(finals, dtype=np.float64).reshape(-1, 1)}, mean, 2000)["p"]
    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(t)
    ci = "" if np.isnan(lo) else f", 95% bootstrap interval [{lo:.4g}, {hi:.4g}]"
    return title + cap.get() + f"mean {metric} across {len(finals)} seeds: {point:.4g}{ci}\n"
