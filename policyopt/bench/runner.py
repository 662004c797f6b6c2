"""Run a bench: expand the grid, skip finished cells, execute the rest, write the tidy results tables.

Bench directory layout::

    OUT/bench.json      spec, evaluation protocol, executor, cell outcomes
    OUT/.bench.lock     held while a bench runs here: a second bench on the same OUT is refused
    OUT/runs/ALGO__TARGET__sSEED/   ordinary run directories (policyopt eval / train --resume accept them)
    OUT/runs/.ALGO__TARGET__sSEED.lock   held while that cell trains
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

BENCH_LOCK = ".bench.lock"
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
    if old is None and (run_dir / "config.yaml").is_file():  # a population member stopped before its run info
        old = config_digest(rundir.read_config(run_dir))
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
    """Run the cells of ``spec`` that have not finished into ``out``; refuse if another bench runs there."""
    from policyopt.bench.executors import FileLock

    out = Path(out)
    cells = expand(spec, out)  # a spec the grid refuses creates nothing
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(out / BENCH_LOCK) as lock:
        if not lock.acquire():
            holder = lock.holder()
            raise UserError(
                f"another policyopt bench is running in {str(out)!r}{f' ({holder})' if holder else ''}; "
                "wait for it to finish or use another --out"
            )
        return _run_locked(spec, cells, out, workers, use_ray, ray_address, log)


def _jobs(cells: list[Cell], seeds: list[int], population: str = "auto") -> tuple[list[dict], int, list[str]]:
    """The jobs for the cells that have not finished (seed-major order), the number already finished and notes.

    With ``population`` "auto", the unfinished seeds of one cell (same algorithm, target and config but for the
    seed and the per-member keys of the family's batched trainer) form one population job when that trainer
    supports their configs: ``{"members": [cell jobs], "population": "module:function", ...}``."""
    pending, skipped = [], 0
    for c in cells:
        digest = config_digest(c.config)
        if cell_status(c, digest) == "finished":
            skipped += 1
            continue
        pending.append(
            {
                "algo": c.algo,
                "preset": c.preset or c.algo,
                "target": c.target,
                "seed": c.seed,
                "family": c.family,
                "config": c.config,
                "run_dir": str(Path(c.run_dir).absolute()),  # Ray workers need not share our working directory
                "digest": digest,
            }
        )
    jobs, notes = _populations(pending, population) if population != "off" else (pending, [])
    # Seed-major order: an interrupted bench holds whole seeds of every algorithm, not all seeds of the first.
    order = {s: i for i, s in enumerate(seeds)}
    jobs.sort(key=lambda j: (order[j["seed"]], j["target"], j["algo"]))
    return jobs, skipped, notes


def _populations(pending: list[dict], mode: str) -> tuple[list[dict], list[str]]:
    """Group cell jobs into population jobs where the family's batched trainer supports the group (see _jobs)."""
    from policyopt import algos
    from policyopt.config import resolve
    from policyopt.runs import members
    from policyopt.runs.lifecycle import FAMILIES

    groups: dict[tuple, list[dict]] = {}
    batched_for: dict[tuple, members.Batched | None] = {}
    for j in pending:
        batched, _ = members.batched_of(FAMILIES.get(j["family"]))
        shared = members.shared_config(j["config"], batched.per_member) if batched else j["run_dir"]
        key = (j["preset"], j["target"], config_digest({"shared": shared}))
        groups.setdefault(key, []).append(j)
        batched_for[key] = batched
    jobs, notes = [], []
    for key, group in groups.items():
        batched = batched_for[key]
        if batched is None or len(group) < 2:
            jobs += group
            continue
        cfgs = [resolve(algos.get(j["preset"]).config(), j["config"]) for j in group]
        chosen, note = members.plan(FAMILIES.get(group[0]["family"]), cfgs, mode)
        if chosen is None:
            notes.append(f"{group[0]['algo']} {group[0]['target']}: {note}")
            jobs += group
            continue
        seeds = [j["seed"] for j in group]
        jobs.append({**{k: group[0][k] for k in ("algo", "preset", "target", "seed", "family")}, "seeds": seeds})
        jobs[-1].update(members=group, population=batched.entry)
        labels = list(dict.fromkeys(j["algo"] for j in group))
        notes.append(f"{', '.join(labels)} {group[0]['target']} seeds {seeds}: {note}")
    return jobs, notes


def _run_locked(
    spec: BenchSpec, cells: list[Cell], out: Path, workers: int, use_ray: bool, ray_address: str | None, log
):
    from policyopt.bench.executors import executor, job_members

    jobs, skipped, notes = _jobs(cells, spec.seeds, spec.population)
    kind = f"ray({ray_address or 'local'})" if use_ray else "local process pool"
    todo = sum(len(job_members(j)) for j in jobs)
    pops = sum(1 for j in jobs if "members" in j)
    log(
        f"bench {spec.name!r}: {len(cells)} cells, {skipped} already finished, {todo} to run "
        f"({len(jobs)} jobs, {pops} of them populations) on {kind} with {workers} worker(s); out={out}"
    )
    for line in notes:
        log(f"  {line}")
    t0 = time.time()
    outcomes: dict[tuple, dict] = {}
    for i, res in enumerate(executor(ray_address, use_ray, workers)(jobs), 1):
        outcomes[(res["algo"], res["target"], res["seed"])] = res
        extra = f"error: {res.get('error')}" if res["status"] != "finished" else ""
        extra = "resumed from checkpoint" if res.get("resumed") else extra
        log(
            f"[{i}/{todo}] {res['algo']} {res['target']} seed={res['seed']}: {res['status']} "
            f"({res.get('seconds', 0):.1f}s) {extra}".rstrip()
        )
    wall = time.time() - t0
    rows, curves = collect(cells, spec.protocol, spec.reference_scores, outcomes)
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
            "ran": todo,
            "jobs": len(jobs),
            "populations": pops,
            "skipped": skipped,
            "wall_seconds": round(wall, 1),
            "cell_seconds": round(sum(r.get("seconds", 0) for r in outcomes.values()), 1),
            "outcomes": [
                {k: r.get(k) for k in ("algo", "target", "seed", "status", "resumed", "seconds", "error")}
                for r in outcomes.values()
            ],
        },
        "total_wall_seconds": round(prev.get("total_wall_seconds", 0) + wall, 1),
        "command": " ".join(["policyopt", *sys.argv[1:]]) if sys.argv and "policyopt" in sys.argv[0] else None,
    }
    atomic_write_text(out / "bench.json", json.dumps(meta, indent=2, default=str))
    log(f"done in {wall:.1f}s: {meta['finished']} finished, {len(failed)} failed; results: {out / 'results.csv'}")
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


def collect(
    cells: list[Cell],
    protocol: EvalProtocol,
    refs: dict[str, dict[str, float]],
    outcomes: dict[tuple, dict] | None = None,
):
    """The results rows and tidy curves of ``cells``, read from their run directories. A cell this invocation
    skipped (its lock was held by another process) is reported as skipped, without reading a run directory
    that other process may be writing."""
    from policyopt.runs.logger import read_metrics

    rows, curves = [], []
    for c in cells:
        run_dir = Path(c.run_dir)
        outcome = (outcomes or {}).get(c.key, {})
        if outcome.get("status") == "skipped":
            info, status = {"error": outcome.get("error", "")}, "skipped"
        else:
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
        curves += [{"algo": c.algo, "target": c.target, "seed": c.seed, "step": s, "value": v} for s, v in series]
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


REPORT_COLUMNS = ["algo", "target", "seed", "status", "final_score", "auc", "normalized_score", "error"]
CURVE_COLUMNS = ["algo", "target", "seed", "step", "value"]
RESULT_NUMBERS = ("final_score", "auc", "normalized_score")


def _read_csv(path: Path, columns: list[str], convert) -> list[dict]:
    """The rows of ``path`` with ``convert`` applied; UserError (one line) for a file that is not such a table."""
    what = f"{str(path)!r} is not a bench table"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{what}: missing columns {missing} (expected {columns})")
            rows = []
            for r in reader:
                try:
                    rows.append(convert(r))
                except (TypeError, ValueError) as e:
                    raise UserError(f"{what}: line {reader.line_num}: {e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return rows


def _number(v: Any, column: str) -> float:
    if v in ("", None):
        return math.nan
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"column {column!r} holds {v!r}, not a number") from None


def _integer(v: Any, column: str) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise ValueError(f"column {column!r} holds {v!r}, not an integer") from None


def _result_row(r: dict) -> dict:
    if None in r:
        raise ValueError("more fields than the header has columns")
    if any(r[c] in ("", None) for c in ("algo", "target", "status")):
        raise ValueError("empty algo, target or status")
    return dict(r, seed=_integer(r["seed"], "seed"), **{c: _number(r[c], c) for c in RESULT_NUMBERS})


def _curve_row(r: dict) -> dict:
    if None in r:
        raise ValueError("more fields than the header has columns")
    step = _number(r["step"], "step")
    if math.isnan(step):
        raise ValueError("empty step")
    return dict(r, seed=_integer(r["seed"], "seed"), step=int(step), value=_number(r["value"], "value"))


def read_tables(bench_dir: str | Path) -> tuple[list[dict], list[dict], dict]:
    """``results.csv`` rows, ``curves.csv`` rows and ``bench.json`` of a bench directory, checked: anything
    that is not such a table (missing columns, non-numbers, no cells) is a one-line UserError."""
    d = Path(bench_dir)
    if not (d / "results.csv").is_file():
        raise UserError(f"{str(d)!r} is not a bench directory (no results.csv); run `policyopt bench SPEC` first")
    rows = _read_csv(d / "results.csv", REPORT_COLUMNS, _result_row)
    if not rows:
        raise UserError(f"{str(d / 'results.csv')!r} has no cells (only a header); run `policyopt bench SPEC` first")
    seen: set[tuple] = set()
    for r in rows:
        key = (r["algo"], r["target"], r["seed"])
        if key in seen:
            raise UserError(f"{str(d / 'results.csv')!r} lists cell {key} twice; one row per cell is expected")
        seen.add(key)
    curves = _read_csv(d / "curves.csv", CURVE_COLUMNS, _curve_row) if (d / "curves.csv").is_file() else []
    meta: dict = {}
    if (d / "bench.json").is_file():
        try:
            meta = json.loads((d / "bench.json").read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{str(d / 'bench.json')!r} is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise UserError(f"{str(d / 'bench.json')!r} must hold a JSON object")
    return rows, curves, meta
