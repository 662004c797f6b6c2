"""Bench specs: a YAML grid of presets x environments-or-tasks x seeds x budget, with per-cell overrides.

Example::

    name: classic-control
    algos: [ppo, a2c, reinforce]
    envs: [CartPole-v1, Acrobot-v1]     # control presets (target_key "env_id")
    tasks: []                           # language-model presets (target_key "task")
    seeds: 10                           # 1..10, or an explicit list
    budget: {CartPole-v1: 100000, Acrobot-v1: 200000}   # total_steps; an int for all; omit for preset default
    eval: {every: {CartPole-v1: 10000, Acrobot-v1: 20000}, episodes: 10, last: 3}
    metric: eval/return_mean            # the logged evaluation metric that is scored
    sets: {tensorboard: false}          # config overrides for every cell
    overrides:                          # per-cell overrides; match on any of algo / target / seed
      - {algo: a2c, target: Acrobot-v1, sets: {learning_rate: 0.001}}
    # optional: normalized score = (s - low) / (high - low)
    reference_scores: {CartPole-v1: {low: 22.0, high: 475.0}}
    population: auto                    # auto: the unfinished seeds of one cell train as one population job when
                                        # the family's batched trainer supports the config; off: one job per seed
    grid:                               # hyper-parameter variants: one algorithm entry per combination,
      ppo: {learning_rate: [0.001, 0.0003], ent_coef: [0.0, 0.01]}   # named ppo[learning_rate=0.001,ent_coef=0.0]

A cell names a *target*: an environment id for algorithms whose ``target_key`` is ``env_id`` and a task
name for those whose ``target_key`` is ``task`` (language-model presets). Each algorithm is paired with
the targets of its kind, so one spec can hold both.

A ``grid`` replaces an algorithm by its variants, each a cell of its own (its own row in the results and
the report); cells that differ only in the seed and in keys the family's batched trainer can vary per member
(for the on-policy trainer: learning rate, entropy coefficient, clip range) train as one population.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyopt.config import load_yaml, to_dict
from policyopt.errors import UserError

_KEYS = {
    "name",
    "out",
    "algos",
    "envs",
    "tasks",
    "seeds",
    "budget",
    "eval",
    "metric",
    "sets",
    "overrides",
    "reference_scores",
    "description",
    "population",
    "grid",
}
POPULATION_MODES = ("auto", "off")
_EVAL_KEYS = {"every", "episodes", "last"}


@dataclass
class EvalProtocol:
    """The declared evaluation protocol, written into every report."""

    every: dict[str, int] | int  # steps between evaluations (per target or one for all)
    episodes: int = 10
    last: int = 3  # final score = mean of the last `last` evaluations
    metric: str = "eval/return_mean"

    def every_for(self, target: str) -> int:
        return int(self.every[target]) if isinstance(self.every, dict) else int(self.every)

    def describe(self, control: bool = True, lm: bool = False) -> str:
        """The protocol in words, for the kinds of cells the bench holds (control envs, LM tasks, or both)."""
        every = (
            ", ".join(f"{k}: {v:,}" for k, v in self.every.items())
            if isinstance(self.every, dict)
            else f"{self.every:,}"
        )
        ctl = (
            f"deterministic policy (mode of the action distribution), normalizers frozen; {self.episodes} "
            f"evaluation episodes"
        )
        lms = (
            "greedy decoding of the task's held-out prompts (`eval_size` of them), accuracy = the fraction "
            "whose accuracy reward is 1, evaluated"
        )
        what = (
            f"Control: {ctl}; language models: {lms}"
            if control and lm
            else ctl[0].upper() + ctl[1:]
            if control
            else lms[0].upper() + lms[1:]
        )
        return (
            f"{what} every K steps (K = {every}) and once more at the end of training; metric "
            f"`{self.metric}`. Final score of a run = mean of its last {self.last} evaluations. Area under the "
            f"curve = mean of the evaluation curve over training (trapezoid rule over the evaluation steps)."
        )


@dataclass
class Cell:
    algo: str  # the algorithm entry: a preset name, or a grid variant's label
    target: str
    seed: int
    target_key: str
    family: str
    config: dict[str, Any]  # fully resolved config (plain dict, picklable)
    run_dir: str
    preset: str = ""  # the registered preset ("" = algo)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.algo, self.target, self.seed)

    @property
    def label(self) -> str:
        return f"{self.algo} {self.target} seed={self.seed}"


@dataclass
class BenchSpec:
    name: str
    algos: list[str]
    envs: list[str]
    tasks: list[str]
    seeds: list[int]
    budget: dict[str, int] | int | None
    protocol: EvalProtocol
    sets: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    reference_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    out: str | None = None
    description: str = ""
    population: str = "auto"
    variants: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # grid label -> (preset, sets)

    def variant(self, label: str) -> tuple[str, dict[str, Any]]:
        """The preset and the grid's config values of algorithm entry ``label``."""
        return self.variants.get(label, (label, {}))

    def budget_for(self, target: str) -> int | None:
        if self.budget is None:
            return None
        if isinstance(self.budget, dict):
            return int(self.budget[target]) if target in self.budget else None
        return int(self.budget)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _int(v: Any, what: str) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UserError(f"bench spec: {what} must be a positive integer, got {v!r}") from None
    if f <= 0 or not f.is_integer():
        raise UserError(f"bench spec: {what} must be a positive integer, got {v!r}")
    return int(f)


def _per_target(v: Any, what: str, targets: list[str]) -> dict[str, int] | int | None:
    if v is None:
        return None
    if isinstance(v, dict):
        unknown = set(v) - set(targets)
        if unknown:
            raise UserError(f"bench spec: {what} names unknown targets {sorted(unknown)}; targets: {targets}")
        return {str(k): _int(x, f"{what}[{k}]") for k, x in v.items()}
    return _int(v, what)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _name(v: Any) -> str:
    if v is None:
        return "bench"
    if not isinstance(v, str | int) or isinstance(v, bool):
        raise UserError(f"bench spec: 'name' must be a string, got {v!r}")
    return safe_component(str(v), "bench")


def _metric(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise UserError(
            f"bench spec: 'metric' must be the name of a logged evaluation metric (e.g. eval/return_mean, "
            f"eval/accuracy), got {v!r}"
        )
    return v


def _optional_str(v: Any, key: str) -> str | None:
    if v is not None and not isinstance(v, str):
        raise UserError(f"bench spec: {key!r} must be a string, got {v!r}")
    return v


def _reference_scores(refs: Any, targets: list[str]) -> dict[str, dict[str, float]]:
    """``{target: {low, high}}`` with finite numbers, high != low, for targets of the spec."""
    if refs is None:
        return {}
    if not isinstance(refs, dict):
        raise UserError(f"bench spec: 'reference_scores' must map targets to {{low, high}}, got {refs!r}")
    for t, r in refs.items():
        if t not in targets:
            raise UserError(f"bench spec: reference_scores names {t!r}, which is not a target; targets: {targets}")
        if (
            not isinstance(r, dict)
            or set(r) != {"low", "high"}
            or not all(_is_number(r[k]) for k in ("low", "high"))
            or r["high"] == r["low"]
        ):
            raise UserError(
                f"bench spec: reference_scores[{t!r}] must be {{low: number, high: number}} with high != low, got {r!r}"
            )
    return {t: {"low": float(r["low"]), "high": float(r["high"])} for t, r in refs.items()}


def _population_mode(v: Any) -> str:
    if v is False:  # YAML reads a bare `off` as false
        v = "off"
    if v not in POPULATION_MODES:
        raise UserError(f"bench spec: 'population' must be one of {', '.join(POPULATION_MODES)}, got {v!r}")
    return v


def parse_spec(data: dict[str, Any]) -> BenchSpec:
    if not isinstance(data, dict):
        raise UserError("bench spec must be a YAML mapping")
    unknown = set(data) - _KEYS
    if unknown:
        raise UserError(f"bench spec: unknown keys {sorted(unknown)}; valid keys: {sorted(_KEYS)}")

    def str_list(key: str) -> list[str]:
        v = data.get(key) or []
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise UserError(f"bench spec: {key!r} must be a list of names")
        return list(dict.fromkeys(v))

    algos_, envs, tasks = str_list("algos"), str_list("envs"), str_list("tasks")
    if not algos_:
        raise UserError("bench spec: 'algos' is empty")
    variants = _grid(data.get("grid"), algos_)
    algos_ = [label for a in algos_ for label in ([v for v in variants if variants[v][0] == a] or [a])]
    if not envs and not tasks:
        raise UserError("bench spec: give 'envs' (control) and/or 'tasks' (language-model presets)")
    seeds = data.get("seeds", 3)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(1, _int(seeds, "seeds") + 1))
    elif isinstance(seeds, list) and seeds and all(_is_int(s) for s in seeds):
        seeds = list(dict.fromkeys(seeds))
    else:
        raise UserError(f"bench spec: 'seeds' must be a count or a list of integers, got {seeds!r}")
    targets = envs + tasks
    ev = data.get("eval") or {}
    if not isinstance(ev, dict) or set(ev) - _EVAL_KEYS:
        raise UserError(f"bench spec: 'eval' must be a mapping with keys {sorted(_EVAL_KEYS)}")
    if "every" not in ev:
        raise UserError(
            "bench spec: eval.every (steps between evaluations) is required: the final score is the "
            "mean of the last evaluations, so a run needs several"
        )
    protocol = EvalProtocol(
        every=_per_target(ev["every"], "eval.every", targets),
        episodes=_int(ev.get("episodes", 10), "eval.episodes"),
        last=_int(ev.get("last", 3), "eval.last"),
        metric=_metric(data.get("metric", "eval/return_mean")),
    )
    if isinstance(protocol.every, dict) and set(targets) - set(protocol.every):
        raise UserError(f"bench spec: eval.every has no value for {sorted(set(targets) - set(protocol.every))}")
    sets = data.get("sets") or {}
    if not isinstance(sets, dict):
        raise UserError("bench spec: 'sets' must be a mapping of config keys to values")
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list):
        raise UserError("bench spec: 'overrides' must be a list")
    for i, o in enumerate(overrides):
        if (
            not isinstance(o, dict)
            or set(o) - {"algo", "target", "seed", "sets"}
            or not isinstance(o.get("sets"), dict)
            or not isinstance(o.get("algo", ""), str)
            or not isinstance(o.get("target", ""), str)
            or not _is_int(o.get("seed", 0))
        ):
            raise UserError(
                f"bench spec: overrides[{i}] must be {{algo?: name, target?: name, seed?: integer, sets: {{...}}}}, "
                f"got {o!r}"
            )
    return BenchSpec(
        name=_name(data.get("name")),
        algos=algos_,
        envs=envs,
        tasks=tasks,
        seeds=seeds,
        budget=_per_target(data.get("budget"), "budget", targets),
        protocol=protocol,
        sets=sets,
        overrides=overrides,
        reference_scores=_reference_scores(data.get("reference_scores"), targets),
        out=_optional_str(data.get("out"), "out"),
        description=_optional_str(data.get("description"), "description") or "",
        population=_population_mode(data.get("population", "auto")),
        variants=variants,
    )


def _grid(grid: Any, algos_: list[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """``{preset: {key: [values]}}`` -> ``{label: (preset, {key: value})}``, one entry per combination, labels
    ``preset[key=value,...]`` in the order the spec gives the keys."""
    if grid is None:
        return {}
    shape = "bench spec: 'grid' must map algorithm names to {config key: [values, ...]}"
    if not isinstance(grid, dict) or not all(isinstance(g, dict) and g for g in grid.values()):
        raise UserError(f"{shape}, got {grid!r}")
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for preset, axes in grid.items():
        if preset not in algos_:
            raise UserError(f"bench spec: grid names {preset!r}, which is not in 'algos' ({', '.join(algos_)})")
        for key, values in axes.items():
            if not isinstance(key, str) or not isinstance(values, list) or not values:
                raise UserError(f"{shape}; {preset}.{key} is {values!r}")
        for combo in itertools.product(*axes.values()):
            sets = dict(zip(axes, combo))
            label = f"{preset}[{','.join(f'{k}={json.dumps(v)}' for k, v in sets.items())}]"
            if label in out:
                raise UserError(f"bench spec: grid gives {label} twice (repeated values in {preset}'s lists)")
            out[label] = (preset, sets)
    return out


def load_spec(path: str | Path) -> BenchSpec:
    return parse_spec(load_yaml(path))


def safe_component(s: str, default: str) -> str:
    """``s`` as one path component, cleaned like run names: every character but ASCII letters, digits, ``-``,
    ``_`` and ``.`` becomes ``_``, and leading dots are dropped, so no ``..``, absolute path, separator
    (``ALE/Pong-v5``) or drive letter (``a:b``) leaves or hides in the folder it is joined to; ``default`` if
    nothing is left."""
    cleaned = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in s)
    return cleaned.lstrip(".") or default


def cell_dir_name(algo: str, target: str, seed: int) -> str:
    return f"{safe_component(algo, 'algo')}__{safe_component(target, 'target')}__s{seed}"


def expand(spec: BenchSpec, out: str | Path) -> list[Cell]:
    """The grid: one :class:`Cell` per (algorithm, target of its kind, seed), each with a resolved config.

    Precedence per cell: preset < tuned target preset < ``sets`` < matching ``overrides`` (in order) <
    the grid's own keys (target, seed, budget, evaluation protocol)."""
    from policyopt import algos

    cells: list[Cell] = []
    dirs: dict[str, str] = {}
    for name in spec.algos:
        preset, grid_sets = spec.variant(name)
        algo = algos.get(preset)
        targets = spec.envs if algo.target_key == "env_id" else spec.tasks
        if not targets:
            kind = "envs" if algo.target_key == "env_id" else "tasks"
            raise UserError(f"bench spec: algorithm {name!r} needs {kind!r} (its target is {algo.target_key!r})")
        fields = set(algo.config.__dataclass_fields__)
        for target in targets:
            for seed in spec.seeds:
                sets = {**spec.sets, **grid_sets}
                for o in spec.overrides:
                    if (
                        o.get("algo", name) in (name, preset)
                        and o.get("target", target) == target
                        and o.get("seed", seed) == seed
                    ):
                        sets.update(o["sets"])
                flags: dict[str, Any] = {algo.target_key: target, "seed": seed}
                budget = spec.budget_for(target)
                if budget is not None:
                    if "total_steps" not in fields:
                        raise UserError(f"bench spec: 'budget' sets total_steps, which {name!r} does not have")
                    flags["total_steps"] = budget
                # The evaluation protocol, for configs that expose these keys (control presets do; a preset
                # family with other names gets them through `sets`).
                for k, v in (
                    ("eval_every", spec.protocol.every_for(target)),
                    ("eval_episodes", spec.protocol.episodes),
                    ("progress", False),
                ):
                    if k in fields:
                        flags[k] = v
                cfg = algos.build_config(preset, sets=sets, flags=flags)
                run_dir = str(Path(out) / "runs" / cell_dir_name(name, target, seed))
                if run_dir in dirs:
                    raise UserError(
                        f"bench spec: cells {dirs[run_dir]} and {name} {target} seed={seed} would share the run "
                        f"directory {run_dir!r} (their names differ only in characters a path cannot hold)"
                    )
                dirs[run_dir] = f"{name} {target} seed={seed}"
                cells.append(
                    Cell(
                        algo=name,
                        target=target,
                        seed=seed,
                        target_key=algo.target_key,
                        family=algo.family,
                        config=to_dict(cfg),
                        run_dir=run_dir,
                        preset=preset,
                    )
                )
    return cells


def config_digest(config: dict[str, Any]) -> str:
    c = {k: v for k, v in config.items() if k != "progress"}
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]
