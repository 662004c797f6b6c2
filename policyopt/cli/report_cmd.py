"""``policyopt report DIR [--out OUT]``: Markdown, PNG figures and a self-contained HTML page."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "report",
        help="write the report (Markdown, PNG figures, HTML) of a bench directory",
        description="Compute IQM/mean with stratified bootstrap CIs, performance profiles and "
        "probability of improvement from DIR/results.csv and DIR/curves.csv; write the same report as "
        "report.md and report.html (a standalone page with the figures embedded), figures/*.png and "
        "summary.json.",
    )
    p.add_argument("dir", help="bench directory (holds results.csv, curves.csv, bench.json)")
    p.add_argument("--out", help="report directory (default: DIR/report)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications (default 2000)")
    return p


def run(args) -> int:
    from policyopt.bench.report import write_report
    from policyopt.errors import UserError

    if args.reps < 100:
        raise UserError(f"--reps must be >= 100, got {args.reps}")
    paths = write_report(args.dir, args.out, reps=args.reps)
    print(f"report: {paths['markdown']}\nhtml:   {paths['html']}")
    return 0
