"""``policyopt bench SPEC.yaml [--out DIR] [--workers N] [--ray [ADDRESS]]``: a multi-seed comparison grid."""

from __future__ import annotations

import os
from pathlib import Path

from policyopt.errors import UserError


def add_parser(sub):
    p = sub.add_parser(
        "bench",
        help="run a multi-seed benchmark grid from a spec (resumable)",
        description="Run every cell (algorithm x env-or-task x seed) of SPEC as an ordinary run "
        "directory under OUT/runs, skipping cells that already finished, then write "
        "OUT/results.csv and OUT/curves.csv and (unless --no-report) the report. Only one bench runs in an "
        "OUT at a time (a second is refused); worker processes die with the bench, and a re-run resumes "
        "interrupted cells from their checkpoints.",
    )
    p.add_argument("spec", help="bench spec YAML (see benchmarks/bench/classic_control.yaml)")
    p.add_argument("--out", help="bench directory (default: the spec's `out`, else runs/bench/NAME)")
    p.add_argument("--workers", type=int, help="parallel cells (default: one per CPU core)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run cells on Ray: local Ray without ADDRESS, else an existing cluster (e.g. auto)",
    )
    p.add_argument("--no-report", action="store_true", help="only write the results tables")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications for the report")
    return p


def run(args) -> int:
    from policyopt.bench.runner import run_bench
    from policyopt.bench.spec import load_spec

    spec = load_spec(args.spec)
    out = Path(args.out or spec.out or Path("runs") / "bench" / spec.name)
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    meta = run_bench(spec, out, workers=workers, use_ray=args.ray is not None, ray_address=args.ray or None)
    if not args.no_report and meta["finished"]:
        from policyopt.bench.report import write_report

        paths = write_report(out, reps=args.reps)
        print(f"report: {paths['markdown']} and {paths['html']}")
    return 1 if meta["failed"] else 0
