"""``policyopt report DIR``: Markdown + PNG figures + a self-contained HTML page from a bench directory.

Reads only ``results.csv``, ``curves.csv`` and ``bench.json``, so a committed bench table can be re-reported
without its run directories. Writes ``DIR/report/{report.md, report.html, summary.json, figures/*.png}``.
The report is built once as a :class:`policyopt.bench.document.Document` (:func:`build_document`) and rendered
to Markdown and to HTML, so both files carry the same text, tables and figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from policyopt.bench import stats
from policyopt.bench.document import (
    BulletList,
    Code,
    Column,
    Document,
    Emph,
    Figure,
    Heading,
    Note,
    Paragraph,
    Strong,
    Table,
    Text,
    code_spans,
    render_html,
    render_markdown,
)
from policyopt.bench.runner import read_tables
from policyopt.runs.files import atomic_write_text

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
NORMALIZED = "all tasks (normalized)"


def _f(v: float, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _digits(values) -> int:
    """Decimals for a table of scores: 3 for scores on a 0-1 scale (accuracies), else 1 (returns)."""
    finite = [abs(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return 3 if finite and max(finite) <= 1.5 else 1


def _ci(point: float, lo: float, hi: float, digits: int = 1) -> str:
    if math.isnan(lo):
        return _f(point, digits)
    return f"{_f(point, digits)} [{_f(lo, digits)}, {_f(hi, digits)}]"


def compute(rows: list[dict], curves: list[dict], meta: dict, reps: int) -> dict[str, Any]:
    spec = meta.get("spec", {})
    algos = spec.get("algos") or list(dict.fromkeys(r["algo"] for r in rows))
    targets = (spec.get("envs") or []) + (spec.get("tasks") or []) or list(dict.fromkeys(r["target"] for r in rows))
    targets = [t for t in targets if any(r["target"] == t for r in rows)]
    refs = spec.get("reference_scores") or {}
    out: dict[str, Any] = {
        "algos": algos,
        "targets": targets,
        "per_target": {},
        "auc": {},
        "curves": {},
        "metric": (spec.get("protocol") or {}).get("metric", "evaluation score"),
    }
    for t in targets:
        algos_t = [a for a in algos if any(r["algo"] == a and r["target"] == t for r in rows)]
        out["per_target"][t] = stats.summary_table(rows, algos_t, [t], "final_score", reps)
        out["auc"][t] = stats.summary_table(rows, algos_t, [t], "auc", reps)
        out["curves"][t] = {a: stats.curve_intervals(curves, a, t, reps) for a in algos_t}
    normalized_targets = [t for t in targets if t in refs]
    out["normalized_targets"] = normalized_targets
    # Multi-task aggregates need a common scale: only over targets with reference scores.
    agg_algos = [
        a for a in algos if all(any(r["algo"] == a and r["target"] == t for r in rows) for t in normalized_targets)
    ]
    if normalized_targets:
        out["aggregate"] = stats.summary_table(rows, agg_algos, normalized_targets, "normalized_score", reps)
        mats = {a: stats.score_matrix(rows, a, normalized_targets, "normalized_score") for a in agg_algos}
        hi = max([1.0] + [float(m.max()) for m in mats.values() if m.size])
        taus = np.linspace(min([0.0] + [float(m.min()) for m in mats.values() if m.size]), hi, 61)
        prof, prof_ci = stats.performance_profiles(mats, taus, reps)
        out["profiles"] = (taus, prof, prof_ci)
    else:
        out["aggregate"] = []
        out["profiles"] = None
    poi_algos = [a for a in algos if all(any(r["algo"] == a and r["target"] == t for r in rows) for t in targets)]
    out["poi"] = stats.probability_of_improvement(rows, poi_algos, targets, reps)
    out["failed"] = [r for r in rows if r["status"] != "finished"]
    return out


# ------------------------------------------------------------------------------------------------ figures
def _figures(res: dict, fig_dir: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig_dir.mkdir(parents=True, exist_ok=True)
    color = {a: COLORS[i % len(COLORS)] for i, a in enumerate(res["algos"])}
    targets = res["targets"]
    paths = {}

    # Learning curves: IQM over seeds with 95% bootstrap CI bands.
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 3.8), squeeze=False)
    for ax, t in zip(axes[0], targets):
        for a, c in res["curves"][t].items():
            if c is None:
                continue
            steps, point, lo, hi = c
            ax.plot(steps, point, color=color[a], label=a, lw=1.8)
            if not np.isnan(lo).all():
                ax.fill_between(steps, lo, hi, color=color[a], alpha=0.2, lw=0)
        ax.set_title(t)
        ax.set_xlabel("training steps")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_steps_label))
        ax.set_ylabel(f"{res['metric']} (IQM over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    paths["curves"] = fig_dir / "learning_curves.png"
    fig.savefig(paths["curves"], dpi=110)
    plt.close(fig)

    # IQM (bars) and mean (diamonds) of final scores, 95% CIs; plus the normalized aggregate.
    panels = [(t, res["per_target"][t], "final score") for t in targets]
    if res["aggregate"]:
        panels.append((NORMALIZED, res["aggregate"], "normalized score"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (title, table, ylabel) in zip(axes[0], panels):
        x = np.arange(len(table))
        vals = [v for r in table for v in (r["iqm"], r["iqm_lo"], r["mean"]) if not math.isnan(v)]
        # Bars grow from 0, or from just below the lowest value when scores are negative (Acrobot), so a
        # longer bar always means a higher score.
        span = (max(vals) - min(vals)) if vals else 1.0
        bottom = 0.0 if not vals or min(vals) >= 0 else min(vals) - 0.08 * (span or abs(min(vals)) or 1.0)
        for i, row in enumerate(table):
            err = None
            if not math.isnan(row["iqm_lo"]):
                err = [[row["iqm"] - row["iqm_lo"]], [row["iqm_hi"] - row["iqm"]]]
            ax.bar(
                i,
                row["iqm"] - bottom,
                bottom=bottom,
                color=color[row["algo"]],
                alpha=0.8,
                yerr=err,
                capsize=5,
            )
            ax.plot(i, row["mean"], "kD", ms=4)
        ax.set_xticks(x, [r["algo"] for r in table])
        ax.set_title(title)
        ax.set_ylabel(f"IQM {ylabel} (bar), mean (◆)")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    paths["iqm"] = fig_dir / "iqm_bars.png"
    fig.savefig(paths["iqm"], dpi=110)
    plt.close(fig)

    if res["profiles"] is not None and res["profiles"][1]:
        taus, prof, prof_ci = res["profiles"]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for a, p in prof.items():
            ax.plot(taus, p, color=color[a], label=a, lw=1.8)
            ax.fill_between(taus, prof_ci[a][0], prof_ci[a][1], color=color[a], alpha=0.2, lw=0)
        ax.set_xlabel("normalized score τ")
        ax.set_ylabel("fraction of runs with score > τ")
        ax.set_title("performance profile (" + ", ".join(res["normalized_targets"]) + ")")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["profile"] = fig_dir / "performance_profile.png"
        fig.savefig(paths["profile"], dpi=110)
        plt.close(fig)
    return paths


def _steps_label(x, _pos=None) -> str:
    return f"{x / 1e6:g}M" if abs(x) >= 1e6 else f"{x / 1e3:g}k" if abs(x) >= 1e3 else f"{x:g}"


# ------------------------------------------------------------------------------------------------ document
_R = "right"


def _tables(res: dict) -> list[tuple[str, Table]]:
    """(title, table) for every results table."""
    out = []
    for t in res["targets"]:
        auc = {r["algo"]: r for r in res["auc"][t]}
        d = _digits([r[k] for r in res["per_target"][t] for k in ("iqm_lo", "iqm_hi", "mean", "median")])
        rows = [
            (
                r["algo"],
                str(r["runs"]),
                str(r["failed"]),
                _ci(r["iqm"], r["iqm_lo"], r["iqm_hi"], d),
                _ci(r["mean"], r["mean_lo"], r["mean_hi"], d),
                _f(r["median"], d),
                _f(r["std"], d),
                _ci(auc[r["algo"]]["iqm"], auc[r["algo"]]["iqm_lo"], auc[r["algo"]]["iqm_hi"], d),
            )
            for r in res["per_target"][t]
        ]
        names = ["runs", "failed", "IQM [95% CI]", "mean [95% CI]", "median", "std", "AUC IQM [95% CI]"]
        cols = (Column("algorithm"), *(Column(n, _R) for n in names))
        out.append((f"{t}: final score", Table(cols, rows)))
    if res["aggregate"]:
        rows = [
            (
                r["algo"],
                str(r["runs"]),
                _ci(r["iqm"], r["iqm_lo"], r["iqm_hi"], 3),
                _ci(r["mean"], r["mean_lo"], r["mean_hi"], 3),
                _f(r["median"], 3),
            )
            for r in res["aggregate"]
        ]
        names = ["runs (seeds on every task)", "IQM [95% CI]", "mean [95% CI]", "median"]
        cols = (Column("algorithm"), *(Column(n, _R) for n in names))
        out.append((f"Normalized score over {', '.join(res['normalized_targets'])}", Table(cols, rows)))
    if res["poi"]:
        rows = [(p["x"], p["y"], _ci(p["p"], p["lo"], p["hi"], 2)) for p in res["poi"]]
        cols = (Column("X"), Column("Y"), Column("P [95% CI]", _R))
        out.append(("Probability of improvement P(X > Y), averaged over tasks", Table(cols, rows)))
    return out


def _intro(meta: dict) -> tuple[str, list[tuple[str, str]]]:
    spec = meta.get("spec", {})
    budget = spec.get("budget")
    budget_s = (
        "preset defaults"
        if budget is None
        else ", ".join(f"{k}: {v:,}" for k, v in budget.items())
        if isinstance(budget, dict)
        else f"{budget:,}"
    )
    seeds = spec.get("seeds", [])
    items = [
        ("Algorithms", ", ".join(spec.get("algos", []))),
        ("Environments / tasks", ", ".join((spec.get("envs") or []) + (spec.get("tasks") or []))),
        ("Seeds", f"{len(seeds)} ({', '.join(map(str, seeds))})"),
        ("Budget (total_steps)", budget_s),
        (
            "Cells",
            f"{meta.get('finished', '?')} finished, {meta.get('failed', '?')} failed of {meta.get('cells', '?')}",
        ),
        (
            "Executor",
            f"{meta.get('executor', '?')}, {meta.get('workers', '?')} worker(s); total bench wall "
            f"time {meta.get('total_wall_seconds', '?')} s",
        ),
    ]
    if spec.get("reference_scores"):
        items.append(
            (
                "Reference scores (normalized = (s - low) / (high - low))",
                "; ".join(f"{k}: low {v['low']}, high {v['high']}" for k, v in spec["reference_scores"].items()),
            )
        )
    return spec.get("description", ""), items


def _stats_note(reps: int) -> Text:
    return (
        "Statistics follow Agarwal et al. (2021), ",
        Emph("Deep RL at the Edge of the Statistical Precipice"),
        ", via ",
        Code("rliable"),
        ": IQM = mean of the middle 50% of runs; 95% percentile confidence intervals from a stratified "
        f"bootstrap over runs ({reps} replications, fixed seed); performance profile = fraction of runs above "
        "each normalized-score threshold; probability of improvement = P(X > Y) from the Mann-Whitney U "
        "statistic, averaged over tasks. Learning-curve bands are the same bootstrap applied per evaluation "
        "step. Multi-task aggregates use only seeds that finished on every task.",
    )


def _caption(key: str, metric: str) -> Text:
    return {
        "curves": ("Learning curves: IQM of ", Code(metric), " over seeds, shaded 95% bootstrap CI."),
        "iqm": ("Final score: IQM (bars, 95% bootstrap CI) and mean (diamonds) per algorithm.",),
        "profile": ("Performance profile of normalized final scores, shaded 95% bootstrap CI.",),
    }[key]


def build_document(res: dict, meta: dict, figures: dict[str, str], reps: int, name: str) -> Document:
    """The report as one document: ``figures`` maps a figure key (curves, iqm, profile) to its path relative to
    the report folder."""
    desc, items = _intro(meta)
    blocks: list = [Paragraph(code_spans(desc))] if desc else []
    blocks.append(BulletList([(Strong(k), f": {v}") for k, v in items]))
    protocol = meta.get("protocol", "(not recorded)")
    blocks += [Heading(2, "Evaluation protocol"), Paragraph(code_spans(protocol)), Heading(2, "Results")]
    for title, table in _tables(res):
        blocks += [Heading(3, title), table]
    if not res["normalized_targets"]:
        blocks.append(
            Note(
                (
                    "No target has ",
                    Code("reference_scores"),
                    " in the spec: no normalized aggregate and no performance profile.",
                )
            )
        )
    blocks.append(Heading(2, "Figures"))
    blocks += [Figure(path, _caption(k, res["metric"]), id=f"fig-{k}") for k, path in figures.items()]
    if res["failed"]:
        lines = [
            (f"{r['algo']} {r['target']} seed={r['seed']}: ", Code(r["error"] or r["status"])) for r in res["failed"]
        ]
        blocks += [Heading(2, "Failed cells"), BulletList(lines)]
    blocks += [Heading(2, "Statistics"), Paragraph(_stats_note(reps))]
    blocks.append(
        Paragraph(
            (
                "Tables: ",
                Code("results.csv"),
                " (one row per run), ",
                Code("curves.csv"),
                " (evaluation curves), ",
                Code("summary.json"),
                ".",
            )
        )
    )
    return Document(f"Bench report: {name}", blocks)


def write_report(bench_dir: str | Path, out_dir: str | Path | None = None, reps: int = 2000) -> dict[str, Path]:
    """Write ``report.md`` and ``report.html`` (the same document; the page embeds its figures), the figures
    and ``summary.json`` into ``out_dir`` (default ``BENCH_DIR/report``)."""
    bench_dir = Path(bench_dir)
    rows, curves, meta = read_tables(bench_dir)
    out = Path(out_dir) if out_dir else bench_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    res = compute(rows, curves, meta, reps)
    figs = _figures(res, out / "figures")
    name = meta.get("spec", {}).get("name", bench_dir.name)
    doc = build_document(res, meta, {k: p.relative_to(out).as_posix() for k, p in figs.items()}, reps, name)
    atomic_write_text(out / "report.md", render_markdown(doc))
    atomic_write_text(out / "report.html", render_html(doc, embed_from=out))

    summary = {
        "protocol": meta.get("protocol", "(not recorded)"),
        "per_target": res["per_target"],
        "auc": res["auc"],
        "aggregate_normalized": res["aggregate"],
        "probability_of_improvement": res["poi"],
        "failed": [{k: r[k] for k in ("algo", "target", "seed", "error")} for r in res["failed"]],
    }
    atomic_write_text(out / "summary.json", json.dumps(_clean(summary), indent=2))
    return {
        "markdown": out / "report.md",
        "html": out / "report.html",
        "summary": out / "summary.json",
        "figures": out / "figures",
        **{f"fig_{k}": p for k, p in figs.items()},
    }


def _clean(v):
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v
