"""``policyopt list [WHAT]``: algorithms, tuned presets, the registries of every box, LM tasks and rewards, and
(``policyopt list envs``) every Gymnasium environment id."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from policyopt import algos
from policyopt.registry import doc_line

SECTIONS = [
    "algorithms",
    "presets",
    "advantages",
    "losses",
    "aggregations",
    "kl",
    "corrections",
    "selectors",
    "generation-backends",
    "actor-losses",
    "critic-losses",
    "optimizers",
    "tasks",
    "rewards",
    "envs",
]
DEFAULT = [s for s in SECTIONS if s != "envs"]  # the environment list is long: only on request


def add_parser(sub):
    p = sub.add_parser("list", help="list algorithms, presets, registered parts, LM tasks/rewards, environments")
    p.add_argument("what", nargs="?", choices=SECTIONS, help="one section only (envs: every Gymnasium id)")
    return p


def _registries():
    from policyopt.advantages import ADVANTAGES
    from policyopt.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES
    from policyopt.losses.actor_critic import ACTOR_LOSSES, CRITIC_LOSSES
    from policyopt.losses.correction import CORRECTIONS
    from policyopt.optim import OPTIMIZERS

    out = {
        "advantages": ("advantage estimators", ADVANTAGES),
        "losses": ("policy losses", POLICY_LOSSES),
        "aggregations": ("loss aggregations", AGGREGATIONS),
        "kl": ("KL estimators", KL_ESTIMATORS),
        "corrections": ("rollout corrections (LM: correction.name)", CORRECTIONS),
        "actor-losses": ("off-policy actor losses", ACTOR_LOSSES),
        "critic-losses": ("off-policy critic losses", CRITIC_LOSSES),
        "optimizers": ("optimizers", OPTIMIZERS),
    }
    try:
        from policyopt.lm.backends import BACKENDS
        from policyopt.lm.selection import SELECTORS
    except ImportError:  # the LM extra is not installed
        return out
    return {
        **out,
        "selectors": ("LM data selectors (selectors: [...])", SELECTORS),
        "generation-backends": ("LM generation backends (generation_backend: auto | name)", BACKENDS),
    }


def _table(title: str, columns: tuple[str, ...], rows) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*r)
    return t


def _tasks(full: bool = True) -> Table:
    from policyopt.lm.tasks import TASKS

    about = {
        "addition": "2-digit addition a+b= (embedded, no download)",
        "addition3": "3-digit addition a+b=",
        "rg:<name>": "a reasoning-gym task, scored by its own scorer",
    }
    rows = [(name, about.get(name, "")) for name in TASKS]
    try:
        if not full:
            raise LookupError
        from reasoning_gym.factory import DATASETS

        rows.append(("rg: names", ", ".join(sorted(DATASETS))))
    except LookupError:
        rows.append(("rg: names", "see `policyopt list tasks`"))
    except ImportError:
        rows.append(("rg: names", "reasoning-gym is not installed: pip install 'policyopt[lm]'"))
    rows.append(
        (
            "--dataset PATH",
            "your own rows {prompt, answer}: .jsonl, .json, .parquet, .csv, .arrow or a datasets save_to_disk folder",
        )
    )
    return _table("language-model tasks (--task)", ("task", "description"), rows)


def _rewards() -> Table:
    from policyopt.lm.rewards import REWARDS

    rows = [(name, doc_line(fn)) for name, fn in REWARDS.items()]
    rows.append(("rg_score", "reasoning-gym tasks: the task's own scorer (their default)"))
    rows.append(
        (
            "module:function",
            "your own fn(prompts, completions, **fields) -> list[float], e.g. "
            "--set rewards.mymod:fn=1 (mymod.py in the current directory)",
        )
    )
    return _table("language-model rewards (--set rewards.NAME=WEIGHT)", ("name", "description"), rows)


def _envs() -> Table:
    import gymnasium as gym

    rows = []
    for env_id, spec in sorted(gym.registry.items()):
        ep = spec.entry_point
        rows.append((env_id, ep if isinstance(ep, str) else f"{ep.__module__}:{getattr(ep, '__qualname__', ep)}"))
    return _table(
        "Gymnasium environments (--env ID, or module:Id / module:Class for your own)", ("id", "entry point"), rows
    )


def run(args) -> int:
    console = Console(width=140)
    reg = algos.load_all()
    show = [args.what] if args.what else DEFAULT
    if "algorithms" in show:
        console.print(
            _table(
                "algorithms", ("name", "family", "description"), [(name, a.family, a.doc) for name, a in reg.items()]
            )
        )
    if "presets" in show:
        console.print(
            _table(
                "tuned presets (used automatically for these environments / tasks)",
                ("algorithm", "environments / tasks"),
                [(name, ", ".join(sorted(a.presets))) for name, a in reg.items() if a.presets],
            )
        )
        console.print(
            _table(
                "authors' protocols (--protocol NAME, over the tuned preset; sources in docs/protocols.md)",
                ("algorithm", "protocol", "what it sets"),
                [(name, p, proto.doc) for name, a in reg.items() for p, proto in sorted(a.protocols.items())],
            )
        )
    for key, (title, registry) in _registries().items():
        if key in show:
            console.print(_table(title, ("name", "description"), [(n, doc_line(fn)) for n, fn in registry.items()]))
    if "tasks" in show:
        console.print(_tasks(full=args.what == "tasks"))
    if "rewards" in show:
        console.print(_rewards())
    if "envs" in show:
        console.print(_envs())
    return 0
