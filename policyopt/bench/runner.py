"""Run a bench: expand the grid, skip finished cells, execute the rest, write the tidy results tables.

Bench directory layout::

    OUT/bench.json      spec, evaluation protocol, executor, cell outcomes
    OUT/runs/ALGO__TARGET__sSEED/   ordinary run directories (policyopt eval / train --resume accept them)
    OUT/results.csv     one row per cell: status, error, final score, AUC, normalized score
    OUT/curves.csv      tidy evaluation curves: algo,target,seed,step,value
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from policyopt.bench.spec import BenchSpec, Cell, EvalProtocol, config_digest, expand
from policyopt.errors import UserError
from policyopt.runs.files import atomic_write_text

RESULT_COLUMNS = [
    "algo",
    "target",
    "seed",
    "status",
    "final_score",
    "auc",
    "normalized_score",
    "num_evals",
    "last_eval_step",
    "error",
    "run_dir",
]


def cell_status(cell: Cell, digest: str) -> str:
    """'finished' (skip), 'partial' (resume or restart) or 'new'. Refuses a cell run with another config."""
    from policyopt.runs import rundir

    run_dir = Path(cell.run_dir)
    if not (run_dir / "run.json").exists():
        return "new"
    info = json.loads((run_dir / "run.json").read_text())
    old = (info.get("bench") or {}).get("digest")
    if old is not None and old != digest:
        raise UserError(
            f"cell {cell.label} in {str(run_dir)!r} was run with a different config than the spec "
            "now gives; use another --out (or delete that run directory)"
        )
    if info.get("status") == "finished" and (run_dir / "eval.json").exists():
        return "finished"
    return "partial" if rundir.checkpoint_path(run_dir).exists() else "new"


def run_bench(
    spec: BenchSpec,
    out: str | Path,
    *,
    workers: int = 1,
    use_ray: bool = False,
    ray_address: str | None = None,
    log=print,
) -> dict[str, Any]:
    from policyopt.bench.executors import executor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cells = expand(spec, out)
    jobs, skipped = [], 0
    for c in cells:
        digest = config_digest(c.config)
        if cell_status(c, digest) == "finished":
            skipped += 1
            continue
        jobs.append(
            {
                "algo": c.algo,
                "target": c.target,
                "seed": c.seed,
                "config": c.config,
                "run_dir": c.run_dir,
                "digest": digest,
            }
        )
    # Seed-major order: an interrupted bench holds whole seeds of every algorithm, not all seeds of the first.
    order = {s: i for i, s in enumerate(spec.seeds)}
    jobs.sort(key=lambda j: (order[j["seed"]], j["target"], j["algo"]))
    kind = f"ray({ray_address or 'local'})" if use_ray else "local process pool"
    log(
        f"bench {spec.name!r}: {len(cells)} cells, {skipped} already finished, {len(jobs)} to run "
        f"on {kind} with {workers} worker(s); out={out}"
    )
    t0 = time.time()
    outcomes: dict[tuple, dict] = {}
    for i, res in enumerate(executor(ray_address, use_ray, workers)(jobs), 1):
        outcomes[(res["algo"], res["target"], res["seed"])] = res
        extra = f"error: {res.get('error')}" if res["status"] != "finished" else ""
        extra = "resumed from checkpoint" if res.get("resumed") else extra
        log(
            f"[{i}/{len(jobs)}] {res['algo']} {res['target']} seed={res['seed']}: {res['status']} "
            f"({res.get('seconds', 0):.1f}s) {extra}".rstrip()
        )
    wall = time.time() - t0
    rows, curves = collect(cells, spec.protocol, spec.reference_scores)
    failed = [r for r in rows if r["status"] != "finished"]
    write_tables(out, rows, curves)
    prev = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else {}
    meta = {
        "spec": spec.to_json(),
        "protocol": spec.protocol.describe(control=bool(spec.envs), lm=bool(spec.tasks)),
        "executor": kind,
        "workers": workers,
        "cells": len(cells),
        "finished": len(rows) - len(failed),
        "failed": len(failed),
        "last_invocation": {
            "ran": len(jobs),
            "skipped": skipped,
            "wall_seconds": round(wall, 1),
            "cell_seconds": round(sum(r.get("seconds", 0) for r in outcomes.values()), 1),
        },
        "total_wall_seconds": round(prev.get("total_wall_seconds", 0) + wall, 1),
        "command": " ".join(["policyopt", *sys.argv[1:]])
        if sys.argv and "policyopt" in sys.argv[0]
        else None,
    }
    atomic_write_text(out / "bench.json", json.dumps(meta, indent=2, default=str))
    log(
        f"done in {wall:.1f}s: {meta['finished']} finished, {len(failed)} failed; "
        f"results: {out / 'results.csv'}"
    )
    for r in failed:
        log(f"  FAILED {r['algo']} {r['target']} seed={r['seed']}: {r['error']}")
    return meta


def final_score(values: list[float], last: int) -> float:
    """Mean of the last ``last`` evaluations (fewer if the run has fewer)."""
    tail = values[-last:]
    return float(sum(tail) / len(tail)) if tail else math.nan


def curve_auc(steps: list[int], values: list[float]) -> float:
    """Area under the evaluation curve divided by its step span: the mean return over training.

    Not in rliable (which aggregates scores, not curves); a trapezoid over the evaluation points. A single
    evaluation gives that evaluation's value."""
    if not values:
        return math.nan
    if len(values) == 1 or steps[-1] == steps[0]:
        return float(values[-1])
    area = sum((steps[i + 1] - steps[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(values) - 1))
    return float(area / (steps[-1] - steps[0]))


def normalize(score: float, ref: dict[str, float] | None) -> float:
    if ref is None or math.isnan(score):
        return math.nan
    return (score - ref["low"]) / (ref["high"] - ref["low"])


def collect(cells: list[Cell], protocol: EvalProtocol, refs: dict[str, dict[str, float]]):
    from policyopt.runs.logger import read_metrics

    rows, curves = [], []
    for c in cells:
        run_dir = Path(c.run_dir)
        info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
        status = info.get("status", "missing")
        if status == "finished" and not (run_dir / "eval.json").exists():
            status = "failed"
        series = sorted(read_metrics(run_dir).get(protocol.metric, [])) if status == "finished" else []
        steps, values = [s for s, _ in series], [v for _, v in series]
        score = final_score(values, protocol.last)
        if status == "finished" and not values:
            status, info["error"] = "failed", f"no {protocol.metric!r} evaluations in metrics.csv"
        rows.append(
            {
                "algo": c.algo,
                "target": c.target,
                "seed": c.seed,
                "status": status,
                "final_score": score,
                "auc": curve_auc(steps, values),
                "normalized_score": normalize(score, refs.get(c.target)),
                "num_evals": len(values),
                "last_eval_step": steps[-1] if steps else "",
                "error": info.get("error", "") if status != "finished" else "",
                "run_dir": c.run_dir,
            }
        )
        curves += [
            {"algo": c.algo, "target": c.target, "seed": c.seed, "step": s, "value": v} for s, v in series
        ]
    return rows, curves


def _fmt(v):
    return "" if isinstance(v, float) and math.isnan(v) else (f"{v:.6g}" if isinstance(v, float) else v)


def write_tables(out: Path, rows: list[dict], curves: list[dict]) -> None:
    for name, cols, data in (
        ("results.csv", RESULT_COLUMNS, rows),
        ("curves.csv", ["algo", "target", "seed", "step", "value"], curves),
    ):
        tmp = out / f".{name}.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            for r in data:
                w.writerow({k: _fmt(r[k]) for k in cols})
        tmp.replace(out / name)


def read_tables(bench_dir: str | Path) -> tuple[list[dict], list[dict], dict]:
    d = Path(bench_dir)
    if not (d / "results.csv").exists():
        raise UserError(
            f"{str(d)!r} is not a bench directory (no results.csv); run `policyopt bench SPEC` first"
        )

    def num(v):
        return math.nan if v in ("", None) else float(v)

    with open(d / "results.csv", newline="") as f:
        rows = [
            dict(
                r,
                seed=int(r["seed"]),
                final_score=num(r["final_score"]),
                auc=num(r["auc"]),
                normalized_score=num(r["normalized_score"]),
            )
            for r in csv.DictReader(f)
        ]
    curves = []
    if (d / "curves.csv").exists():
        with open(d / "curves.csv", newline="") as f:
            curves = [
                dict(r, seed=int(r["seed"]), step=int(float(r["step"])), value=float(r["value"]))
                for r in csv.DictReader(f)
            ]
    meta = json.loads((d / "bench.json").read_text()) if (d / "bench.json").exists() else {}
    return rows, curves, meta
