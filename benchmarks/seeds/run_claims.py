"""Reproduce (at CPU-sized budgets) the seeds' claims for PROPS, PPO-EWMA and FixPO.

    python benchmarks/seeds/run_claims.py [--seeds N] [--workers W] [--only props,ewma,fixpo]

Runs go to runs/seeds_claims/<claim>/<variant>/s<seed> (skipped when already finished); each claim's
figures, results.json and the numbers quoted in its README are written to benchmarks/seeds/<claim>/.
Aggregates are IQMs over seeds with 95% stratified-bootstrap CIs (rliable).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RUNS = Path("runs/seeds_claims")

COMMON = {"tensorboard": False, "progress": False, "log_every": 256, "checkpoint_every": 0}


def props_runs(seeds):
    out = []
    for env, steps, extra in (("CartPole-v1", 50_000, {}),
                              ("Pendulum-v1", 40_000, {"props": {"every": 1024, "epochs": 8}})):
        for name, algo, sets in (("ppo", "ppo", {}), ("ppo_buffer", "props", {"props": {"epochs": 0}}),
                                 ("props", "props", extra)):
            for s in seeds[: (3 if env == "CartPole-v1" else 1)]:
                out.append(("props", f"{env}/{name}", algo, {"env_id": env, "total_steps": steps, "seed": s, **sets}))
    return out


def ewma_runs(seeds):
    out = []
    base_lr, d1 = 2.5e-4, 8 / 9  # 1x: 16 gradient steps/iteration -> PPO's proximal age ~8 steps -> EWMA com 8
    for k in (1, 4, 16):
        size = dict(num_envs=4 * k, n_steps=32, minibatch_size=32 * k, epochs=4, learning_rate=base_lr * k,
                    lr_schedule="constant", clip_schedule="constant", total_steps=50_000, env_id="CartPole-v1")
        for name in ("ppo", "ppo_ewma"):
            sets = dict(size)
            if name == "ppo_ewma":
                sets["ewma"] = {"prox_decay": d1**k, "adv_decay": d1**k}
            for s in seeds[:2]:
                out.append(("batch_size_invariance", f"{name}/{k}x", name, {**sets, "seed": s}))
    return out


def fixpo_runs(seeds):
    out = []
    for name, sets in (("preset", {}),  # PPO's CartPole preset: 1 minibatch x 20 epochs per 256-step rollout
                       ("mb64", dict(num_envs=8, n_steps=128, minibatch_size=64, epochs=10, learning_rate=3e-4))):
        for s in seeds[:2]:
            out.append(("fixpo", name, "fixpo", {"env_id": "CartPole-v1", "total_steps": 50_000, "seed": s, **sets}))
    return out


def run_one(job):
    claim, variant, algo, sets = job
    from policyopt import algos

    out = RUNS / claim / variant / f"s{sets['seed']}"
    if (out / "eval.json").exists():
        return str(out)
    cfg = algos.build_config(algo, sets={**COMMON, **sets})
    out.mkdir(parents=True, exist_ok=True)
    algos.get(algo).load("train")(cfg, out)
    return str(out)


def series(run: Path, name: str):
    pts = [(int(r["step"]), float(r["value"])) for r in csv.DictReader(open(run / "metrics.csv")) if r["name"] == name]
    return np.array(pts) if pts else np.zeros((0, 2))


def iqm_ci(x: np.ndarray):
    from rliable import library as rly
    from rliable import metrics

    est, ci = rly.get_interval_estimates({"a": x.reshape(-1, 1)}, lambda s: np.array([metrics.aggregate_iqm(s)]),
                                         reps=2000)
    return float(est["a"][0]), [float(ci["a"][0][0]), float(ci["a"][1][0])]


def runs_of(claim, variant):
    return sorted(p for p in (RUNS / claim / variant).glob("s*") if (p / "eval.json").exists())


def curve(runs, name, grid):
    return np.stack([np.interp(grid, *series(r, name).T) for r in runs])


def report_props():
    import matplotlib.pyplot as plt

    res = {}
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for j, env in enumerate(("CartPole-v1", "Pendulum-v1")):
        for name in ("ppo", "ppo_buffer", "props"):
            runs = runs_of("props", f"{env}/{name}")
            if not runs:
                continue
            se = series(runs[0], "diag/sampling_error")
            grid = np.linspace(se[0, 0], se[-1, 0], 50)
            err = curve(runs, "diag/sampling_error", grid)
            ret = curve(runs, "train/episode_return", grid)
            final = np.array([json.loads((r / "eval.json").read_text())["return_mean"] for r in runs])
            res[f"{env}/{name}"] = {
                "seeds": len(runs), "sampling_error_mean_iqm": iqm_ci(err.mean(1)),
                "train_return_auc_iqm": iqm_ci(ret.mean(1)), "final_eval_iqm": iqm_ci(final),
                "frac_of_training_below_ppo": None}
            axes[0, j].plot(grid, err.mean(0), label=name)
            axes[1, j].plot(grid, ret.mean(0), label=name)
        ppo = res.get(f"{env}/ppo")
        if ppo:
            runs_p = runs_of("props", f"{env}/ppo")
            se = series(runs_p[0], "diag/sampling_error")
            grid = np.linspace(se[0, 0], se[-1, 0], 50)
            base = curve(runs_p, "diag/sampling_error", grid).mean(0)
            for name in ("ppo_buffer", "props"):
                runs = runs_of("props", f"{env}/{name}")
                if runs:
                    res[f"{env}/{name}"]["frac_of_training_below_ppo"] = float(
                        (curve(runs, "diag/sampling_error", grid).mean(0) < base).mean())
        axes[0, j].set(title=f"{env}: sampling error (mean over seeds)", yscale="log", xlabel="env steps")
        axes[1, j].set(title=f"{env}: training episode return", xlabel="env steps")
        axes[0, j].legend()
    fig.tight_layout()
    (ROOT / "props").mkdir(exist_ok=True)
    fig.savefig(ROOT / "props" / "sampling_error.png", dpi=90)
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
            res[f"{name}/{k}x"] = {"seeds": len(runs), "auc_iqm": iqm_ci(c.mean(1))}
        if len(curves) == 3:
            stack = np.stack(list(curves.values()))
            res[f"{name}/spread"] = {"mean_abs_dev_across_sizes": float(np.abs(stack - stack.mean(0)).mean()),
                                     "max_minus_min_auc": float(stack.mean(1).max() - stack.mean(1).min())}
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
        res[name] = {"seeds": len(runs), "extra_step_frac_per_seed": fr, "extra_step_frac_iqm": iqm_ci(np.array(fr)),
                     "final_eval_iqm": iqm_ci(final), "max_logged_mean_kl": max(kl),
                     "fixup_capped": [series(r, "fixpo/fixup_capped")[-1, 1] for r in runs]}
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
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="props,ewma,fixpo")
    ap.add_argument("--report-only", action="store_true")
    a = ap.parse_args()
    seeds = list(range(1, a.seeds + 1))
    only = a.only.split(",")
    jobs = ((fixpo_runs(seeds) if "fixpo" in only else []) + (props_runs(seeds) if "props" in only else [])
            + (ewma_runs(seeds) if "ewma" in only else []))
    if not a.report_only:
        with mp.get_context("spawn").Pool(a.workers) as pool:
            for done in pool.imap_unordered(run_one, jobs):
                print("done", done, flush=True)
    for name, fn in (("fixpo", report_fixpo), ("props", report_props), ("ewma", report_ewma)):
        if name in only:
            print(name, json.dumps(fn(), indent=1))
