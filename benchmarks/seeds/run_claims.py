"""Reproduce (at CPU-sized budgets) the seeds' claims for PROPS, PPO-EWMA and FixPO.

    python benchmarks/seeds/run_claims.py [--seeds props=10,fixpo=10,ewma=10] [--workers W]
                                          [--only props,ewma,fixpo] [--report-only]

Runs go to runs/seeds_claims/<claim>/<variant>/s<seed> (skipped when already finished; a lock file
lets several processes share one job list); each claim's figures, results.json and the numbers
quoted in its README are written to benchmarks/seeds/<claim>/. Aggregates are IQMs over seeds with
95% stratified-bootstrap CIs (rliable). The PROPS claim measures sampling error with PROPS' own
definition (``sampling_error=mle``: an MLE-fit copy of the policy network, KL to pi_theta).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from common import curve, iqm_ci, run_one, runs_of, series  # noqa: E402

# PROPS' sampling error with its own definition: KL(pi_D || pi_theta), pi_D a copy of the policy network fit
# by maximum likelihood on the update data (sampling_error=mle), every 2nd iteration.
PROPS_SE = {"sampling_error": "mle", "sampling_error_mle": {"every": 2}}
PROPS_VARIANTS = (("ppo", "ppo", {}), ("ppo_buffer", "props", {"props": {"epochs": 0}}), ("props", "props", {}))
PROPS_ENVS = {
    "CartPole-v1": (50_000, {}),  # props preset: behaviour adapted every 64 env steps
    "Pendulum-v1": (40_000, {"props": {"every": 1024, "epochs": 8}}),
}
# Sensitivity of the estimator to how long the empirical policy is trained: 5x the step cap (CartPole).
PROPS_FIT_CHECK = {"sampling_error": "mle", "sampling_error_mle": {"every": 4, "max_steps": 1000}}


def props_runs(seeds):
    out = []
    for s in seeds:
        for env, (steps, extra) in PROPS_ENVS.items():
            for name, algo, sets in PROPS_VARIANTS:
                sets = {**sets, **(extra if name == "props" else {})}
                out.append(
                    (
                        "props_mle",
                        f"{env}/{name}",
                        algo,
                        {"env_id": env, "total_steps": steps, "seed": s, **PROPS_SE, **sets},
                    )
                )
        if s <= 5:
            for name, algo, sets in PROPS_VARIANTS:
                out.append(
                    (
                        "props_mle_fit1000",
                        f"CartPole-v1/{name}",
                        algo,
                        {"env_id": "CartPole-v1", "total_steps": 50_000, "seed": s, **PROPS_FIT_CHECK, **sets},
                    )
                )
    return out


def ewma_runs(seeds):
    out = []
    base_lr, d1 = 2.5e-4, 8 / 9  # 1x: 16 gradient steps/iteration -> PPO's proximal age ~8 steps -> EWMA com 8
    for k in (1, 4, 16):
        size = dict(
            num_envs=4 * k,
            n_steps=32,
            minibatch_size=32 * k,
            epochs=4,
            learning_rate=base_lr * k,
            lr_schedule="constant",
            clip_schedule="constant",
            total_steps=50_000,
            env_id="CartPole-v1",
        )
        for name in ("ppo", "ppo_ewma"):
            sets = dict(size)
            if name == "ppo_ewma":
                # proximal EWMA: per gradient step (16 per iteration at every k); advantage moments: per
                # iteration, (8/9)^4 at 1x = the age the per-minibatch 8/9 had (4 minibatches/iteration)
                sets["ewma"] = {"prox_decay": d1**k, "adv_decay": d1 ** (4 * k)}
            for s in seeds:
                out.append(("batch_size_invariance", f"{name}/{k}x", name, {**sets, "seed": s}))
    return out


def fixpo_runs(seeds):
    out = []
    for name, sets in (
        ("preset", {}),  # PPO's CartPole preset: 1 minibatch x 20 epochs per 256-step rollout
        ("mb64", dict(num_envs=8, n_steps=128, minibatch_size=64, epochs=10, learning_rate=3e-4)),
    ):
        for s in seeds:
            out.append(("fixpo", name, "fixpo", {"env_id": "CartPole-v1", "total_steps": 50_000, "seed": s, **sets}))
    return out


def _props_section(claim, env, ax_err, ax_ret, title):
    res, err, ret = {}, {}, {}
    for name, _, _ in PROPS_VARIANTS:
        runs = runs_of(claim, f"{env}/{name}")
        if not runs:
            continue
        se = series(runs[0], "diag/sampling_error")
        grid = np.linspace(se[0, 0], se[-1, 0], 60)
        err[name] = curve(runs, "diag/sampling_error", grid)
        ret[name] = curve(runs, "train/episode_return", grid)
        final = np.array([json.loads((r / "eval.json").read_text())["return_mean"] for r in runs])
        fit_steps = np.concatenate([series(r, "diag/sampling_error_fit_steps")[:, 1] for r in runs])
        cap = (PROPS_FIT_CHECK if "fit1000" in claim else PROPS_SE)["sampling_error_mle"].get("max_steps", 200)
        res[f"{env}/{name}"] = {
            "seeds": [int(r.name[1:]) for r in runs],
            "sampling_error_mean_iqm": iqm_ci(err[name].mean(1)),
            "train_return_auc_iqm": iqm_ci(ret[name].mean(1)),
            "final_eval_iqm": iqm_ci(final),
            "final_eval_per_seed": final.tolist(),
            "mle_fit_steps_mean": float(fit_steps.mean()),
            "mle_fit_steps_capped_frac": float((fit_steps >= cap).mean()),
        }
        c = ax_err.plot(grid, np.median(err[name], 0), label=f"{name} (median, IQR; {len(runs)} seeds)")[0]
        lo, hi = np.percentile(err[name], [25, 75], axis=0)
        ax_err.fill_between(grid, lo, hi, color=c.get_color(), alpha=0.15)
        ax_ret.plot(grid, ret[name].mean(0), label=name, color=c.get_color())
    # paired by seed: per-seed ratio of the run's mean sampling error
    for name in ("ppo_buffer", "props"):
        for base in ("ppo", "ppo_buffer"):
            if name == base or name not in err or base not in err or len(err[name]) != len(err[base]):
                continue
            ratio = err[name].mean(1) / err[base].mean(1)
            res[f"{env}/{name}"][f"sampling_error_ratio_to_{base}_iqm"] = iqm_ci(ratio)
            res[f"{env}/{name}"][f"seeds_with_lower_sampling_error_than_{base}"] = int((ratio < 1).sum())
            res[f"{env}/{name}"][f"frac_of_training_below_{base}"] = float(
                (np.median(err[name], 0) < np.median(err[base], 0)).mean()
            )
    ax_err.set(title=f"{title}: KL(pi_D || pi_theta)", yscale="log", xlabel="env steps")
    ax_ret.set(title=f"{title}: training episode return (mean)", xlabel="env steps")
    ax_err.legend(fontsize=7)
    ax_ret.legend(fontsize=7)
    return res


def report_props():
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(11, 11))
    res = {}
    res.update(_props_section("props_mle", "CartPole-v1", *axes[0], "CartPole"))
    res.update(_props_section("props_mle", "Pendulum-v1", *axes[1], "Pendulum"))
    res["fit_cap_1000"] = _props_section("props_mle_fit1000", "CartPole-v1", *axes[2], "CartPole, fit cap 1000")
    fig.tight_layout()
    (ROOT / "props").mkdir(exist_ok=True)
    fig.savefig(ROOT / "props" / "sampling_error.png", dpi=80)
    (ROOT / "props" / "results.json").write_text(json.dumps(res, indent=2))
    return res


def report_ewma():
    import matplotlib.pyplot as plt

    res = {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, name in zip(axes, ("ppo", "ppo_ewma")):
        curves = {}
        for k in (1, 4, 16):
            runs = runs_of("batch_size_invariance", f"{name}/{k}x")
            if not runs:
                continue
            grid = np.linspace(2_000, 50_000, 49)
            c = curve(runs, "train/episode_return", grid)
            curves[k] = c.mean(0)
            ax.plot(grid, c.mean(0), label=f"{k}x")
            res[f"{name}/{k}x"] = {"seeds": [int(r.name[1:]) for r in runs], "auc_iqm": iqm_ci(c.mean(1))}
        if len(curves) == 3:
            aucs = {
                k: curve(runs_of("batch_size_invariance", f"{name}/{k}x"), "train/episode_return", grid).mean(1)
                for k in (1, 4, 16)
            }
            for k in (4, 16):  # per seed index: AUC at kx / AUC at 1x (1 = invariant)
                if len(aucs[k]) == len(aucs[1]):
                    res[f"{name}/auc_ratio_{k}x_to_1x_iqm"] = iqm_ci(aucs[k] / aucs[1])
            stack = np.stack(list(curves.values()))
            res[f"{name}/spread"] = {
                "mean_abs_dev_across_sizes": float(np.abs(stack - stack.mean(0)).mean()),
                "max_minus_min_auc": float(stack.mean(1).max() - stack.mean(1).min()),
            }
        ax.set(title=f"{name}: CartPole training return vs env steps", xlabel="env steps")
        ax.legend()
    fig.tight_layout()
    (ROOT / "batch_size_invariance").mkdir(exist_ok=True)
    fig.savefig(ROOT / "batch_size_invariance" / "curves.png", dpi=90)
    (ROOT / "batch_size_invariance" / "results.json").write_text(json.dumps(res, indent=2))
    return res


def report_fixpo():
    import matplotlib.pyplot as plt

    res = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("preset", "mb64"):
        runs = runs_of("fixpo", name)
        if not runs:
            continue
        fr = [series(r, "fixpo/extra_step_frac")[-1, 1] for r in runs]
        kl = [series(r, "stats/proximal_kl")[:, 1].max() for r in runs]
        final = np.array([json.loads((r / "eval.json").read_text())["return_mean"] for r in runs])
        res[name] = {
            "seeds": [int(r.name[1:]) for r in runs],
            "extra_step_frac_per_seed": fr,
            "extra_step_frac_iqm": iqm_ci(np.array(fr)),
            "final_eval_iqm": iqm_ci(final),
            "max_logged_mean_kl": max(kl),
            "fixup_capped": [series(r, "fixpo/fixup_capped")[-1, 1] for r in runs],
        }
        s = series(runs[0], "fixpo/extra_step_frac")
        ax.plot(s[:, 0], s[:, 1], label=f"{name} (seed {runs[0].name[1:]})")
    ax.axhline(0.05, color="k", ls="--", label="paper: 5%")
    ax.set(title="FixPO: cumulative fix-up steps / primary steps", xlabel="env steps")
    ax.legend()
    fig.tight_layout()
    (ROOT / "fixpo").mkdir(exist_ok=True)
    fig.savefig(ROOT / "fixpo" / "extra_steps.png", dpi=90)
    (ROOT / "fixpo" / "results.json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="props=10,fixpo=5,ewma=5", help="seeds per claim, e.g. props=10,fixpo=5")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="props,ewma,fixpo")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    n_seeds = {k: int(v) for k, v in (kv.split("=") for kv in a.seeds.split(","))}
    only = a.only.split(",")
    makers = {"props": props_runs, "fixpo": fixpo_runs, "ewma": ewma_runs}
    # seed-major across claims, so that a stopped sweep leaves every claim with its first seeds
    jobs = [
        job
        for s in range(1, max(n_seeds.values()) + 1)
        for name in ("props", "fixpo", "ewma")
        if name in only and s <= n_seeds.get(name, 0)
        for job in makers[name]([s])
    ]
    if not a.report_only:
        with mp.get_context("spawn").Pool(a.workers) as pool:
            for done in pool.imap_unordered(run_one, jobs):
                print("done", done, flush=True)
    for name, fn in (("fixpo", report_fixpo), ("props", report_props), ("ewma", report_ewma)):
        if name in only:
            print(name, json.dumps(fn(), indent=1))
