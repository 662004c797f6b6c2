"""``policyopt list [WHAT]``: algorithms, tuned presets and the registries of every box."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from policyopt import algos
from policyopt.registry import doc_line

SECTIONS = ["algorithms", "presets", "advantages", "losses", "aggregations", "kl"]


def add_parser(sub):
    p = sub.add_parser("list", help="list algorithms, presets and registered parts")
    p.add_argument("what", nargs="?", choices=SECTIONS, help="one section only")
    return p


def _registries():
    from policyopt.advantages import ADVANTAGES
    from policyopt.losses import AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES

    return {"advantages": ("advantage estimators", ADVANTAGES), "losses": ("policy losses", POLICY_LOSSES),
            "aggregations": ("loss aggregations", AGGREGATIONS), "kl": ("KL estimators", KL_ESTIMATORS)}


def run(args) -> int:
    console = Console(width=140)
    reg = algos.load_all()
    show = [args.what] if args.what else SECTIONS
    if "algorithms" in show:
        t = Table(title="algorithms", title_justify="left")
        for c in ("name", "family", "description"):
            t.add_column(c)
        for name, a in reg.items():
            t.add_row(name, a.family, a.doc)
        console.print(t)
    if "presets" in show:
        t = Table(title="tuned presets (used automatically for these environments / tasks)", title_justify="left")
        t.add_column("algorithm")
        t.add_column("environments / tasks")
        for name, a in reg.items():
            if a.presets:
                t.add_row(name, ", ".join(sorted(a.presets)))
        console.print(t)
    for key, (title, registry) in _registries().items():
        if key in show:
            t = Table(title=title, title_justify="left")
            t.add_column("name")
            t.add_column("description")
            for name, fn in registry.items():
                t.add_row(name, doc_line(fn))
            console.print(t)
    return 0
