"""The Python API: one ``train`` for every trainer family, one ``evaluate`` for every run directory.

>>> import policyopt
>>> cfg = policyopt.configure("ppo", env="CartPole-v1", total_steps=2048)   # doctest: +SKIP
>>> result = policyopt.train(cfg, "runs/ppo-cartpole")                   # doctest: +SKIP
>>> policyopt.evaluate("runs/ppo-cartpole", episodes=5)                  # doctest: +SKIP

The command line (``policyopt train``, ``policyopt bench``) goes through the same two functions, so a run
directory written from Python has ``config.yaml`` and ``run.json`` like any other and can be evaluated,
resumed and reported.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from policyopt.errors import UserError
from policyopt.runs import rundir
from policyopt.runs.files import atomic_write_text


def configure(algo: str, *, config_file: str | Path | None = None, sets: Mapping[str, Any] | None = None, **flags: Any):
    """The resolved config of preset ``algo``: dataclass defaults < preset < tuned env/task preset < authors'
    protocol (``protocol=NAME``) < YAML file < ``sets`` (dotted keys, as ``--set``) < ``flags`` (``env=``/``task=``
    select the target, any other field name sets that field)."""
    from policyopt import algos

    a = algos.get(algo)
    flags = dict(flags)
    for alias in ("env", "task"):
        if alias in flags:
            flags[a.target_key] = flags.pop(alias)
    return algos.build_config(algo, config_file=config_file, sets=sets, flags=flags)


def train(
    cfg: Any, out: str | Path, *, resume: bool = False, algo: str | None = None, **run_info: Any
) -> dict[str, Any]:
    """Train ``cfg`` (any family's config) into the run directory ``out``, or resume the run there.
    ``algo`` and ``run_info`` are recorded in ``run.json``."""
    from policyopt.runs.lifecycle import check_launch, family_of

    fam = family_of(cfg)
    check_launch(fam)
    info = {"algo": algo, **run_info} if algo else dict(run_info)
    return fam.load("train")(cfg, Path(out), resume=resume, **info)


def train_population(
    cfgs: Sequence[Any] | tuple[Any, Sequence[int] | str],
    out_dirs: str | Path | Sequence[str | Path],
    resume: bool = False,
    *,
    algo: str | None = None,
    population: str = "auto",
    note: Callable[[str], None] | None = None,
    **run_info: Any,
) -> list[dict[str, Any]]:
    """Train a population: ``cfgs`` (configs that differ only in ``seed`` and the per-member keys the family's
    batched trainer declares) or ``(cfg, seeds)`` (``seeds`` a list or a string such as ``"0-9"``), into
    ``out_dirs`` (one run directory per member, or one folder that gets ``seed-K`` per member). Returns one result
    per member, in order.

    The family's batched trainer trains them in one process when it has one that supports these configs
    (``population="auto"``); otherwise, or with ``population="off"``, the members train one after another through
    the ordinary single-run path. ``note`` receives one line saying which (default: printed to stderr). With
    ``resume`` a member that already finished with its config is not trained again and the others continue."""
    from policyopt.runs import members
    from policyopt.runs.lifecycle import check_launch, family_of

    if isinstance(cfgs, tuple) and len(cfgs) == 2 and not hasattr(cfgs[1], "__dataclass_fields__"):
        base, seeds = cfgs
        seeds = members.parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
        cfgs = [dataclasses.replace(copy.deepcopy(base), seed=s) for s in seeds]
    cfgs = list(cfgs)
    if isinstance(out_dirs, str | Path):
        dirs = [members.member_dir(out_dirs, c.seed) for c in cfgs]
    else:
        dirs = [Path(d) for d in out_dirs]
    if not cfgs:
        raise UserError("a population needs at least one member")
    fam = family_of(cfgs[0])
    check_launch(fam, population=True)
    members.check_members(cfgs, dirs, members.per_member_keys(fam))
    if not resume:  # refuse before any member trains
        for d in dirs:
            rundir.check_new_run_dir(d)
    batched, line = members.plan(fam, cfgs, population)
    (note or (lambda text: sys.stderr.write(f"policyopt: {text}\n")))(line)
    info = {"algo": algo, **run_info} if algo else dict(run_info)
    return members.run_members(fam, cfgs, dirs, resume=resume, batched=batched, infos=[info] * len(cfgs))


def resume(run_dir: str | Path, *, total_steps: int | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint with its saved config (``total_steps`` extends its budget)."""
    from policyopt.config import resolve
    from policyopt.runs.lifecycle import check_launch, load_family

    fam = load_family(run_dir)
    check_launch(fam)
    layers: list[dict[str, Any]] = [rundir.read_config(run_dir)]
    if total_steps is not None:
        layers.append({"total_steps": int(total_steps)})
    if progress is not None and "progress" in fam.config.__dataclass_fields__:
        layers.append({"progress": progress})
    cfg = resolve(fam.config(), *layers)
    return fam.load("train")(cfg, Path(run_dir), resume=True)


def evaluate(
    run_dir: str | Path,
    *,
    episodes: int | None = None,
    video: bool = False,
    deterministic: bool = True,
    save: bool = True,
) -> dict[str, Any]:
    """Evaluate a run's saved policy; with ``save`` the result is also written to ``RUN_DIR/evals/eval-N.json``."""
    from policyopt.runs.lifecycle import load_family

    if episodes is not None and (isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1):
        raise UserError(f"episodes must be a positive integer, got {episodes!r}")
    result = load_family(run_dir).load("evaluate")(run_dir, episodes=episodes, video=video, deterministic=deterministic)
    if save:
        folder = Path(run_dir) / "evals"
        folder.mkdir(exist_ok=True)
        n = 1 + max(
            (int(p.stem.split("-")[1]) for p in folder.glob("eval-*.json") if p.stem.split("-")[1].isdigit()), default=0
        )
        settings = {"episodes": episodes, "deterministic": deterministic, "video": video}
        atomic_write_text(folder / f"eval-{n}.json", json.dumps({**result, "settings": settings}, indent=2))
        result = {**result, "saved": str(folder / f"eval-{n}.json")}
    return result
