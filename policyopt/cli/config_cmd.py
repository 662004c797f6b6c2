"""``policyopt config ALGO [--env ID | --task NAME] [--config FILE] [--set k=v ...] [--keys]``: the resolved config
(YAML) without training, after the same checks ``train`` runs before it creates a run directory; ``--keys`` prints
every key with its type, default, current value and help.

The options that select and override a config are declared here once and shared with ``policyopt train``, and so
are the checks made before training (:func:`preflight`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from collections.abc import Callable
from typing import Any

from policyopt import algos
from policyopt.config import (
    EPISODES_MAX,
    SEED_MAX,
    STEPS_MAX,
    check_machine,
    describe,
    load_yaml,
    parse_int,
    parse_sets,
    plain,
    show_limit,
    to_yaml,
)
from policyopt.errors import UnknownChoice, UserError
from policyopt.runs.members import parse_seeds

IMPORT_NOTE = (
    "module:Name values (--env mymod:MyEnv, --set rewards.mymod:fn=1) import mymod from the current "
    "directory or the Python path"
)


def int_arg(lo: int, hi: int) -> Any:
    """An argparse ``type`` for an integer in ``[lo, hi]`` written as ``1000``, ``1_000`` or ``1e3``."""

    def parse(text: str) -> int:
        n = parse_int(text)
        if n is None or not lo <= n <= hi:
            raise argparse.ArgumentTypeError(
                f"must be an integer in [{show_limit(lo)}, {show_limit(hi)}], got {text!r}"
            )
        return n

    return parse


STEPS_ARG = int_arg(1, STEPS_MAX)
EPISODES_ARG = int_arg(1, EPISODES_MAX)


def add_config_options(p: argparse.ArgumentParser) -> None:
    """The options that choose and override a config (shared by ``config`` and ``train``)."""
    p.add_argument("algo", nargs="?", help="algorithm / preset name (see `policyopt list`)")
    p.add_argument(
        "--env",
        help="Gymnasium environment id, module:Id (importing module registers Id) or "
        "module:Class (a gymnasium.Env subclass); control algorithms",
    )
    p.add_argument("--task", help="task name (language-model presets; see `policyopt list tasks`)")
    p.add_argument("--dataset", help="JSONL or datasets file on disk (language-model presets)")
    p.add_argument("--model", help="model path or config (language-model presets)")
    p.add_argument("--config", help="YAML file of config overrides")
    p.add_argument(
        "--protocol",
        help="a named authors' protocol of the preset, applied over its tuned settings (see `policyopt list presets`)",
    )
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key (repeatable); dotted keys reach nested sections and dict fields "
        "(env_kwargs.max_episode_steps=200, rewards.mymod:fn=1); values are read by the key's "
        "type, else as YAML. See `policyopt config ALGO --keys`",
    )
    p.add_argument("--seed", type=int_arg(0, SEED_MAX), help=f"random seed in [0, {SEED_MAX}]")
    p.add_argument(
        "--seeds",
        metavar="SEEDS",
        help="a population of seeds, e.g. 0-9, 0,3,5 or 0-4,7: train trains one run per seed (batched when the "
        "family has a batched trainer for this config) into OUT/seed-K; config shows the first member's config",
    )
    p.add_argument(
        "--total-steps",
        type=STEPS_ARG,
        help="training budget in environment steps (control) or "
        f"optimizer steps (language models), at most {show_limit(STEPS_MAX)}",
    )


def build(args) -> tuple[algos.Algorithm, Any]:
    """The algorithm and its resolved, validated config from the parsed options."""
    if not args.algo:
        raise UserError("an algorithm name is needed (see `policyopt list`)")
    algo = algos.get(args.algo)
    if algo.target_key == "env_id" and args.task:
        raise UserError(f"--task does not apply to control algorithm {args.algo!r}; use --env")
    if algo.target_key != "env_id" and args.env:
        raise UserError(f"--env does not apply to language-model preset {args.algo!r}; use --task or --dataset")
    seed = args.seed
    if getattr(args, "seeds", None) is not None:
        if args.seed is not None:
            raise UserError("--seed and --seeds cannot be combined; list every seed in --seeds")
        args.seed_list = parse_seeds(args.seeds)
        seed = args.seed_list[0]
    flags = {
        algo.target_key: args.env if algo.target_key == "env_id" else args.task,
        "seed": seed,
        "dataset": args.dataset,
        "model": args.model,
        "total_steps": args.total_steps,
        "protocol": args.protocol,
    }
    if getattr(args, "no_progress", False):
        flags["progress"] = False
    cfg = algos.build_config(args.algo, config_file=args.config, sets=parse_sets(args.sets), flags=flags)
    return algo, cfg


def total_steps_was_set(args) -> bool:
    """Whether the user chose the budget (a flag, ``--set total_steps`` or the config file), not a preset."""
    sets = parse_sets(args.sets)
    return (
        args.total_steps is not None
        or "total_steps" in sets
        or bool(args.config and "total_steps" in load_yaml(args.config))
    )


# ---- checks made before a run directory is created ------------------------------------------------------
def _environment(cfg) -> tuple[int, int]:
    from policyopt.control.envs import probe_env

    return probe_env(cfg.env_id, cfg.env_kwargs)


def _lm_inputs(cfg) -> None:
    from policyopt.lm.rewards import resolve_reward
    from policyopt.lm.tasks import load_rows

    rg = not cfg.dataset and cfg.task.startswith("rg:")
    if cfg.dataset:
        load_rows(cfg.dataset)
    elif rg:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from reasoning_gym.factory import DATASETS
        except ImportError:
            DATASETS = None  # noqa: N806 (the trainer reports the missing package)
        if DATASETS is not None and cfg.task[3:] not in DATASETS:
            raise UserError(
                f"config key 'task'={cfg.task!r}: {UnknownChoice('reasoning-gym task', cfg.task[3:], DATASETS)}"
            )
    for name in cfg.rewards:
        if not (name == "rg_score" and rg):
            resolve_reward(str(name))


# config field -> a check of what it names (returns the flat observation/action sizes when it learns them)
PREFLIGHT = (("env_id", _environment), ("rewards", _lm_inputs))


def preflight(cfg) -> None:
    """Find bad input before training: build one environment with its kwargs, load the dataset, import the
    reward functions, then check the device and the memory the sizes ask for."""
    dims = (1, 1)
    for field, check in PREFLIGHT:
        if hasattr(cfg, field):
            dims = check(cfg) or dims
    check_machine(cfg, *dims)


def checked_config(args, before_preflight: Callable[[Any, Any], None] | None = None) -> tuple[Any, Any]:
    """:func:`build` then :func:`preflight` (``before_preflight(algo, cfg)`` in between). Notes written to stderr
    meanwhile are shown only when every check passes, so bad input gets exactly one line."""
    notes = io.StringIO()
    with contextlib.redirect_stderr(notes):
        algo, cfg = build(args)
        if before_preflight is not None:
            before_preflight(algo, cfg)
        preflight(cfg)
    sys.stderr.write(notes.getvalue())
    return algo, cfg


# ---- the command ---------------------------------------------------------------------------------------
def add_parser(sub):
    p = sub.add_parser(
        "config",
        help="print the resolved config of an algorithm without training",
        description="Print the resolved config (YAML) of ALGO after every override and check, "
        "without training. " + IMPORT_NOTE + ".",
    )
    add_config_options(p)
    p.add_argument("--keys", action="store_true", help="a table of every key: type, default, current value, help")
    return p


def _value_of(cfg, key: str) -> Any:
    v: Any = cfg
    for part in key.split("."):
        v = getattr(v, part)
    return plain(v)


def keys_table(cfg) -> str:
    """Every key of ``cfg``'s class: type, default, current value (``*`` = changed) and help."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{type(cfg).__name__} keys (* = not the default)", title_justify="left")
    for col in ("key", "type", "default", "value", "help"):
        t.add_column(col, overflow="fold", no_wrap=col == "key")
    for key, tp, default, help_text in describe(type(cfg)):
        shown_default = plain(default)
        value = _value_of(cfg, key)
        mark = "" if value == shown_default else " *"
        t.add_row(key, tp, repr(shown_default), f"{value!r}{mark}", help_text)
    console = Console(width=160, record=True, force_terminal=False)
    with console.capture() as cap:
        console.print(t)
    return cap.get()


def run(args) -> int:
    _, cfg = checked_config(args)
    print(keys_table(cfg) if args.keys else to_yaml(cfg), end="")
    return 0
