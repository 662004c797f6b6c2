"""Populations: several seeds of one config trained as one unit, each into its own ordinary run directory.

A family may register a *batched* trainer (``Family.population = "module:train_population"``) that trains many
members in one process with batched kernels. Its module defines

- ``train_population(cfgs, run_dirs, resume=False) -> list[dict]``: one result per member, each member written to
  its own run directory (``config.yaml``, ``run.json``, ``metrics.csv``, checkpoint, ``eval.json``);
- ``population_unsupported(cfgs) -> str | None``: None when it can train these configs, else a one-line reason;
- optionally ``PER_MEMBER_KEYS``: the config keys (besides ``seed``) whose values may differ between members.

Every other case (no batched trainer, configs it does not support, ``population="off"``) runs the members one
after another through the family's ordinary ``train``: the reference path, with the same directory layout. Either
way a member's run directory can be evaluated, resumed and reported like any single run.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policyopt.config import SEED_MAX, flatten, parse_int, show_limit, to_dict
from policyopt.errors import UserError
from policyopt.runs import rundir

POPULATION_MAX = 4096  # members of one population
SEEDS_HELP = "write seeds as N, START-END or a comma list of both, e.g. 0-9, 0,3,5 or 0-4,7"
MODES = ("auto", "off")


# ---- seed lists ---------------------------------------------------------------------------------------
def _seed_value(text: str, spec: str) -> int:
    n = parse_int(text) if text.strip() else None
    if n is None or not 0 <= n <= SEED_MAX:
        raise UserError(
            f"--seeds {spec!r}: {text.strip()!r} is not a seed (an integer in [0, {show_limit(SEED_MAX)}]); "
            + SEEDS_HELP
        )
    return n


def parse_seeds(spec: str) -> list[int]:
    """``"0-9"``, ``"0,3,5"``, ``"0-4,7"`` -> the seeds in the order written; UserError (one line) for an empty
    item, a seed out of range, a backwards range, a repeated seed or more than :data:`POPULATION_MAX` members."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"--seeds {spec!r} names no seed; {SEEDS_HELP}")
    ranges: list[tuple[int, int]] = []
    for item in spec.split(","):
        ends = item.split("-")
        if len(ends) > 2 or not item.strip():
            raise UserError(f"--seeds {spec!r}: {item.strip()!r} is neither a seed nor a range; {SEEDS_HELP}")
        lo, hi = _seed_value(ends[0], spec), _seed_value(ends[-1], spec)
        if lo > hi:
            raise UserError(
                f"--seeds {spec!r}: the range {item.strip()} runs backwards; write START-END with START <= END"
            )
        ranges.append((lo, hi))
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > POPULATION_MAX:
        raise UserError(f"--seeds {spec!r} names {count} seeds; a population has at most {POPULATION_MAX} members")
    seeds = [s for lo, hi in ranges for s in range(lo, hi + 1)]
    seen: set[int] = set()
    for s in seeds:
        if s in seen:
            raise UserError(f"--seeds {spec!r} names seed {s} twice; each member needs its own seed")
        seen.add(s)
    return seeds


def seeds_label(seeds: Sequence[int]) -> str:
    """A short name for a seed list, for folder names: ``[0, ..., 9]`` -> ``0-9``, ``[0, 1, 2, 7]`` -> ``0-2_7``."""
    parts: list[str] = []
    start = prev = seeds[0]
    for s in [*seeds[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if s is not None:
            start = prev = s
    label = "_".join(parts)
    return label if len(label) <= 40 else f"{seeds[0]}_to_{seeds[-1]}_n{len(seeds)}"


def member_dir(root: str | Path, seed: int) -> Path:
    """``ROOT/seed-K``: the run directory of the member with seed ``K`` in population folder ``ROOT``."""
    return Path(root) / f"seed-{seed}"


# ---- the batched trainer of a family --------------------------------------------------------------------
@dataclass(frozen=True)
class Batched:
    """A family's batched population trainer, loaded from its ``"module:function"`` entry."""

    entry: str
    train: Callable[..., list[dict]]
    unsupported: Callable[[list[Any]], str | None]
    per_member: tuple[str, ...]


def load_batched(entry: str) -> Batched:
    module_name, _, fn = entry.partition(":")
    module = importlib.import_module(module_name)
    return Batched(
        entry,
        getattr(module, fn),
        module.population_unsupported,
        tuple(getattr(module, "PER_MEMBER_KEYS", ())),
    )


def batched_of(family: Any) -> tuple[Batched | None, str]:
    """The family's batched trainer, or None and why there is none."""
    entry = getattr(family, "population", None)
    if not entry:
        return None, f"family {family.name!r} has no batched trainer"
    module_name = entry.partition(":")[0]
    try:
        return load_batched(entry), ""
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            return None, f"the batched trainer {module_name} is not available ({e})"
        raise


def per_member_keys(family: Any) -> tuple[str, ...]:
    batched, _ = batched_of(family)
    return batched.per_member if batched else ()


def member_key(key: str, per_member: Sequence[str]) -> bool:
    """Whether config key ``key`` (dotted) may differ between members: ``seed`` or a per-member key (or under one)."""
    return any(key == k or key.startswith(k + ".") for k in ("seed", *per_member))


def shared_config(cfg: Any, per_member: Sequence[str]) -> dict[str, Any]:
    """The flattened config (a config or its plain mapping) without the keys that may differ between members:
    what members must share."""
    flat = flatten(cfg if isinstance(cfg, Mapping) else to_dict(cfg))
    return {k: v for k, v in flat.items() if not member_key(k, per_member) and k != "progress"}


def check_members(cfgs: Sequence[Any], dirs: Sequence[Path], per_member: Sequence[str]) -> None:
    """UserError (one line) unless the members share one config class and every key but ``seed`` and the
    per-member keys, and each has its own run directory and its own config."""
    if not cfgs:
        raise UserError("a population needs at least one member")
    if len(cfgs) != len(dirs):
        raise UserError(f"a population of {len(cfgs)} configs needs {len(cfgs)} run directories, got {len(dirs)}")
    kinds = {type(c).__name__ for c in cfgs}
    if len(kinds) > 1:
        raise UserError(f"population members must share one config class, got {sorted(kinds)}")
    allowed = ", ".join(["seed", *per_member])
    first = shared_config(cfgs[0], per_member)
    for i, cfg in enumerate(cfgs[1:], 1):
        other = shared_config(cfg, per_member)
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                raise UserError(
                    f"population members may differ only in {allowed}; members 0 and {i} differ in config key "
                    f"{key!r} ({first.get(key)!r} vs {other.get(key)!r})"
                )
    seen_dirs: dict[Path, int] = {}
    seen_cfgs: dict[str, int] = {}
    for i, (cfg, d) in enumerate(zip(cfgs, dirs, strict=True)):
        where = Path(d).absolute()
        if where in seen_dirs:
            raise UserError(f"population members {seen_dirs[where]} and {i} share the run directory {str(d)!r}")
        seen_dirs[where] = i
        key = json.dumps(to_dict(cfg), sort_keys=True, default=str)
        if key in seen_cfgs:
            raise UserError(f"population members {seen_cfgs[key]} and {i} have the same config (seed {cfg.seed})")
        seen_cfgs[key] = i


def plan(family: Any, cfgs: Sequence[Any], mode: str = "auto") -> tuple[Batched | None, str]:
    """The batched trainer to use for ``cfgs`` (None: members one after another) and a one-line note saying which."""
    if mode not in MODES:
        raise UserError(f"population mode {mode!r} is not one of {', '.join(MODES)}")
    n = f"population of {len(cfgs)}"
    batched, why = batched_of(family)
    if mode == "off":
        batched, why = None, "population: off"
    elif batched is not None:
        reason = batched.unsupported(list(cfgs))
        if reason:
            batched, why = None, f"the batched trainer does not support this config: {reason}"
    if batched is None:
        return None, f"{n}: members one after another (the single-run path); {why}"
    return batched, f"{n}: batched trainer {batched.entry} (one process)"


# ---- running the members ---------------------------------------------------------------------------------
def finished_as_asked(run_dir: str | Path, cfg: Any) -> bool:
    """Whether ``run_dir`` holds a finished run (status and ``eval.json``) of exactly ``cfg`` (``progress`` aside):
    such a member is not trained again on resume."""
    from policyopt.runs.lifecycle import load_config

    d = Path(run_dir)
    if not (d / "eval.json").is_file() or not (d / "run.json").is_file():
        return False
    if rundir.read_info(d).get("status") != "finished":
        return False
    saved = {k: v for k, v in to_dict(load_config(d, type(cfg))).items() if k != "progress"}
    return saved == {k: v for k, v in to_dict(cfg).items() if k != "progress"}


def finished_result(run_dir: str | Path) -> dict[str, Any]:
    """The final evaluation of a finished member (its ``eval.json``)."""
    return json.loads((Path(run_dir) / "eval.json").read_text())


def run_members(
    family: Any,
    cfgs: Sequence[Any],
    dirs: Sequence[Path],
    *,
    resume: bool,
    batched: Batched | None,
    infos: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Train the members (``batched`` or one after another) and return one result per member, in order, each
    with ``wall_seconds`` (a batched population's is the whole population's) and ``trained`` ("batched", "one
    after another" or "before": finished by an earlier call). On ``resume`` a member already
    finished with its config is not trained again; the batched trainer resumes the others together when each
    of them was started before (or none was), else the members run one after another."""
    results: list[dict[str, Any] | None] = [None] * len(cfgs)
    todo = []
    for i, (cfg, d) in enumerate(zip(cfgs, dirs, strict=True)):
        if resume and finished_as_asked(d, cfg):
            results[i] = {**finished_result(d), "wall_seconds": 0.0, "trained": "before"}
        else:
            todo.append(i)
    started = [(Path(dirs[i]) / "run.json").is_file() for i in todo]
    if batched is not None and todo and (all(started) or not any(started)):
        t0 = time.time()
        try:
            out = batched.train([cfgs[i] for i in todo], [Path(dirs[i]) for i in todo], resume=resume and all(started))
        finally:
            for i in todo:
                if (Path(dirs[i]) / "run.json").is_file():
                    rundir.write_info(dirs[i], **infos[i])
        wall = round(time.time() - t0, 2)
        for i, res in zip(todo, out, strict=True):
            results[i] = {**res, "wall_seconds": wall, "trained": "batched"}
    else:
        train = family.load("train")
        for i, was_started in zip(todo, started, strict=True):
            t0 = time.time()
            res = train(cfgs[i], Path(dirs[i]), resume=resume and was_started, **infos[i])
            results[i] = {**res, "wall_seconds": round(time.time() - t0, 2), "trained": "one after another"}
    return [r for r in results if r is not None]


# ---- summaries ------------------------------------------------------------------------------------------
HEADLINES = (("return_mean", "return_std"), ("accuracy", None))  # (metric, its spread) in a final evaluation


def headline(run_dir: str | Path) -> tuple[str, float, float | None, int | None]:
    """(metric name, value, spread or None, step) of a member's final evaluation (``eval.json``)."""
    res = json.loads((Path(run_dir) / "eval.json").read_text())
    for metric, spread in HEADLINES:
        if isinstance(res.get(metric), int | float):
            sd = res.get(spread) if spread else None
            return metric, float(res[metric]), (float(sd) if isinstance(sd, int | float) else None), res.get("step")
    return "-", float("nan"), None, res.get("step")
