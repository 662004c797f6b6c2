"""FixPO's claim under its authors' protocol: the fix-up phase adds < 5% gradient steps.

    python benchmarks/seeds/fixpo/run.py              # the whole grid, one process, then the report
    python benchmarks/seeds/fixpo/run.py --report-only
    python benchmarks/seeds/fixpo/run.py --quick      # smoke check: 2 tiny runs under runs/seeds_claims_quick

Every run uses the ``fixpo`` preset with the ``paper`` protocol's values (``FIXPO_PAPER`` in
policyopt/control/presets.py: 64 envs x 128 steps, 16 minibatches of 512 x 10 epochs, fix-up minibatch
1024, eps_kl 0.5, C_beta 3, no advantage normalization, ...); variants change C_beta or the environment.
The CartPole ``mb64`` variant is the previous report's setting (eps_kl 0.2, C_beta 2, advantage
normalization), re-run with the current fix-up sweep. Runs go to runs/seeds_claims/fixpo_paper/<variant>/s<seed>
(finished runs are skipped, so a stopped sweep resumes); the job list is seed-major inside each tier, so a
stopped sweep leaves every variant with its first seeds. The report (results_paper.json, paper_steps.png
beside this file) reads each run's per-update counts ``fixpo/update_fixup_steps`` and
``fixpo/update_primary_steps`` from metrics.csv (logged every update).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from common import RUNS, iqm_ci, mean_ci, run_one, runs_of, series  # noqa: E402

CLAIM = "fixpo_paper"
BURN_IN = 0.1  # "without the first 10% of training"


def _paper(**fixpo):
    from policyopt.control.presets import FIXPO_PAPER

    return {**FIXPO_PAPER, "fixpo": {**FIXPO_PAPER["fixpo"], **fixpo}}


# variant -> (env, env steps, sets); the authors ran 10M steps per MuJoCo task, 10 seeds
def variants() -> dict[str, tuple[str, int, dict]]:
    mb64 = dict(num_envs=8, n_steps=128, minibatch_size=64, epochs=10, learning_rate=3e-4)
    return {
        "Pendulum-v1/cbeta3": ("Pendulum-v1", 196_608, _paper()),
        "InvertedPendulum-v5/cbeta3": ("InvertedPendulum-v5", 98_304, _paper()),
        "InvertedPendulum-v5/cbeta2": ("InvertedPendulum-v5", 98_304, _paper(c_beta=2.0)),
        "InvertedPendulum-v5/cbeta1": ("InvertedPendulum-v5", 98_304, _paper(c_beta=1.0)),
        "Hopper-v5/cbeta3": ("Hopper-v5", 98_304, _paper()),
        "CartPole-v1/cbeta3": ("CartPole-v1", 49_152, _paper()),
        "CartPole-v1/mb64": ("CartPole-v1", 50_000, mb64),  # the previous report's setting (class defaults)
        "Pendulum-v1/cbeta2": ("Pendulum-v1", 196_608, _paper(c_beta=2.0)),
        "Pendulum-v1/cbeta1": ("Pendulum-v1", 196_608, _paper(c_beta=1.0)),
        "Pendulum-v1/cbeta3_500k": ("Pendulum-v1", 499_712, _paper()),
    }


# tiers run in order, seed-major inside each: (variants, seeds)
TIERS = (
    (
        (
            "Pendulum-v1/cbeta3",
            "InvertedPendulum-v5/cbeta3",
            "InvertedPendulum-v5/cbeta2",
            "InvertedPendulum-v5/cbeta1",
            "CartPole-v1/cbeta3",
            "CartPole-v1/mb64",
        ),
        range(1, 6),
    ),
    (("Pendulum-v1/cbeta1", "Hopper-v5/cbeta3", "Pendulum-v1/cbeta2"), range(1, 4)),
    (("InvertedPendulum-v5/cbeta3", "Pendulum-v1/cbeta3"), range(6, 11)),
    (("Pendulum-v1/cbeta1", "Pendulum-v1/cbeta2", "Hopper-v5/cbeta3"), range(4, 6)),
    (("Pendulum-v1/cbeta3_500k",), range(1, 3)),
)


def jobs(quick: bool = False) -> list[tuple]:
    table = variants()
    if quick:
        env, _, sets = table["Pendulum-v1/cbeta3"]
        tiny = {
            **sets,
            "num_envs": 8,
            "n_steps": 128,
            "minibatch_size": 64,
            "fixpo": {**sets["fixpo"], "fixup_minibatch_size": 128},
        }
        return [
            (
                CLAIM,
                f"quick/{c}",
                "fixpo",
                {**tiny, "env_id": env, "total_steps": 2048, "seed": 1, "fixpo": {**tiny["fixpo"], "c_beta": c}},
            )
            for c in (1.0, 3.0)
        ]
    out = []
    for names, seeds in TIERS:
        for s in seeds:
            for name in names:
                env, steps, sets = table[name]
                out.append((CLAIM, name, "fixpo", {**sets, "env_id": env, "total_steps": steps, "seed": s}))
    return out


def run_ratios(run: Path, total_steps: int) -> dict:
    """Fix-up / primary gradient steps of one run: over all updates, without the first 10% of env steps, and
    the per-update distribution."""
    fix, prim = series(run, "fixpo/update_fixup_steps"), series(run, "fixpo/update_primary_steps")
    steps, f, p = fix[:, 0], fix[:, 1], prim[:, 1]
    late = steps > BURN_IN * total_steps
    per_update = f / np.maximum(p, 1)
    cum = series(run, "fixpo/extra_step_frac")[-1, 1]
    assert abs(cum - f.sum() / p.sum()) < 1e-6, (run, cum)  # every update was logged
    return {
        "all": float(f.sum() / p.sum()),
        "late": float(f[late].sum() / p[late].sum()),
        "updates": len(f),
        "median_update": float(np.median(per_update)),
        "max_update": float(per_update.max()),
        "updates_over_5pct": float((per_update > 0.05).mean()),
        "capped": float(series(run, "fixpo/fixup_capped")[-1, 1]),
        "per_update": per_update.tolist(),
        "steps": steps.tolist(),
    }


def report(root: Path = RUNS, out_dir: Path = HERE, quick: bool = False) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = variants()
    names = sorted({j[1] for j in jobs(quick)}, key=lambda n: [j[1] for j in jobs(quick)].index(n))
    res = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        runs = runs_of(CLAIM, name, root)
        if not runs:
            continue
        total = table[name][1] if name in table else 2048
        per = [run_ratios(r, total) for r in runs]
        final = np.array([json.loads((r / "eval.json").read_text())["return_mean"] for r in runs])
        a, late = np.array([x["all"] for x in per]), np.array([x["late"] for x in per])
        agg = iqm_ci if len(runs) >= 4 else mean_ci
        res[name] = {
            "seeds": [int(r.name[1:]) for r in runs],
            "env_steps": total,
            "updates_per_run": per[0]["updates"],
            "aggregate": agg.__name__.replace("_ci", ""),
            "extra_frac_all": agg(a),
            "extra_frac_late": agg(late),
            "extra_frac_all_per_seed": a.round(5).tolist(),
            "extra_frac_late_per_seed": late.round(5).tolist(),
            "seeds_over_5pct_late": int((late > 0.05).sum()),
            "median_update_frac": float(np.median([x["median_update"] for x in per])),
            "max_update_frac": float(max(x["max_update"] for x in per)),
            "updates_over_5pct": float(np.mean([x["updates_over_5pct"] for x in per])),
            "fixup_capped": sum(x["capped"] for x in per),
            "max_logged_primary_mean_kl": float(max(series(r, "stats/proximal_kl")[:, 1].max() for r in runs)),
            "final_eval": agg(final),
        }
        grid = np.array(per[0]["steps"])
        mean_curve = np.mean([np.interp(grid, x["steps"], x["per_update"]) for x in per], axis=0)
        label, style = f"{name} ({len(runs)} seeds)", "-" if "Pendulum-v1" in name else "--"
        if "cbeta3" in name or "mb64" in name or quick:
            axes[0].plot(grid / total, mean_curve, label=label)
        if name.split("/")[0] in ("Pendulum-v1", "InvertedPendulum-v5"):
            axes[1].plot(grid / total, mean_curve, style, label=label)
    for ax, title in zip(axes, ("C_beta 3 (paper) by env; CartPole mb64: old setting", "C_beta sweep (1, 2, 3)")):
        ax.axhline(0.05, color="k", ls="--", lw=1, label="claim: 5%")
        ax.axvline(BURN_IN, color="grey", ls=":", lw=1)
        ax.set(title=title, xlabel="fraction of training", ylabel="fix-up / primary steps, per update (mean)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "paper_steps.png", dpi=90)
    (out_dir / "results_paper.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke check: two tiny runs, report to a temp folder")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    root = Path("runs/seeds_claims_quick") if a.quick else RUNS
    if not a.report_only:
        for job in jobs(a.quick):
            t = time.time()
            print("done", run_one(job, root), f"{time.time() - t:.1f}s", flush=True)
    out = report(root, root / "report" if a.quick else HERE, a.quick)
    print(
        json.dumps(
            {k: {kk: v[kk] for kk in ("extra_frac_all", "extra_frac_late", "final_eval")} for k, v in out.items()},
            indent=1,
        )
    )
