"""PROPS seed claim under its authors' protocol (``policyopt train props --protocol paper``; docs/protocols.md,
"props: paper"): sampling error of PROPS against a paired on-policy batch of the same size, and data efficiency.

    python benchmarks/seeds/props/run.py [--quick] [--report-only]

One process, one torch thread; restartable (finished runs are skipped, common.run_one). Runs go to
runs/seeds_claims/props_paper/...; the report (results_paper.json, sampling_error_paper.png) to this folder.

Parts, in the order they run (seed-major, so a partial sweep stays balanced):

1. targets: short PPO runs (``ppo`` preset) whose final checkpoints are the *trained* fixed targets.
2. fixed: the authors' fixed-target experiment -- target never updated (``epochs=0``), 16 rollouts x 64 steps
   kept (``props.buffer=16``), PROPS adapting every 16 steps; sampling error of the growing buffer and of the
   paired on-policy batch, against data size. CartPole-v1 and LunarLander-v3, random (initial) and trained target.
   Estimator: the fixed-target script's (2000 full-batch epochs, step size ramped from lr/3, two frozen layers).
3. train: PROPS (b = 2) and PPO (b = 1, on-policy) on CartPole-v1 and Hopper-v5, short runs.
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

from common import RUNS, final_eval, iqm_ci, mean_ci, run_one, runs_of, series  # noqa: E402

FIXED_ENVS = ("CartPole-v1", "LunarLander-v3")
TARGET_STEPS = {"CartPole-v1": 40_000, "LunarLander-v3": 150_000}  # ppo preset, seed 1
# The fixed-target script (NicholasCorrado/PROPS local/se_fixed.py): 16 batches x 64 steps, target fixed.
FIXED = {
    "protocol": "paper",
    "n_steps": 64,
    "minibatch_size": 64,
    "props": {"buffer": 16},
    "epochs": 0,
    "total_steps": 1024,
    "log_every": 64,
    "eval_episodes": 1,
    "sampling_error_mle": {"every": 4, "epochs": 2000, "minibatches": 1, "grad_clip": 0.0, "lr_start_factor": 1 / 3},
}
TRAIN_ENVS = {"CartPole-v1": 16_384, "Hopper-v5": 20_480}
# PPO (b = 1, on-policy sampling) under the same protocol; Hopper: the authors' tuned PPO (1024 steps, lr 1e-4).
PPO = {
    "CartPole-v1": {"sampler": "policy", "minibatch_size": 128, "sampling_error_ref": False},
    "Hopper-v5": {
        "sampler": "policy",
        "n_steps": 1024,
        "learning_rate": 1e-4,
        "minibatch_size": 32,
        "sampling_error_ref": False,
        "sampling_error_mle": {"minibatches": 2},
    },
}
TRAIN_COMMON = {"protocol": "paper", "log_every": 2048, "sampling_error_mle": {"every": 2}}


def scaled(quick: bool, train_seeds: int = 3):
    """(claim, seeds, fixed overrides, train steps, target steps, training seeds, training overrides): the full
    grid or a one-minute smoke check."""
    if not quick:
        return "props_paper", list(range(1, 11)), {}, TRAIN_ENVS, TARGET_STEPS, train_seeds, {}
    fixed = {"total_steps": 192, "sampling_error_mle": {"every": 1, "epochs": 20}}
    train = {"sampling_error_mle": {"every": 1, "epochs": 5}}
    return "props_paper_quick", [1], fixed, {k: 2048 for k in TRAIN_ENVS}, {k: 2048 for k in TARGET_STEPS}, 1, train


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def jobs(quick: bool, train_seeds: int = 3):
    claim, seeds, fixed_extra, train_steps, target_steps, train_seeds, train_extra = scaled(quick, train_seeds)
    targets = {
        env: ((claim, f"targets/{env}", "ppo", {"env_id": env, "total_steps": n, "seed": 1, "log_every": 4096}))
        for env, n in target_steps.items()
    }
    target_dir = {env: str((RUNS / claim / f"targets/{env}" / "s1").resolve()) for env in targets}
    out = list(targets.values())
    fixed = merge(FIXED, fixed_extra)
    train = []
    for s in seeds:
        for env in FIXED_ENVS:
            for kind, extra in (("random", {}), ("trained", {"init_from": target_dir[env]})):
                out.append((claim, f"fixed/{env}/{kind}", "props", merge(fixed, {"env_id": env, "seed": s, **extra})))
        if s <= train_seeds:
            for env, steps in train_steps.items():
                base = merge(merge(TRAIN_COMMON, train_extra), {"env_id": env, "total_steps": steps, "seed": s})
                train.append((claim, f"train/{env}/props", "props", base))
                train.append((claim, f"train/{env}/ppo", "props", merge(base, PPO[env])))
        if s in (2, len(seeds)):  # training runs of the first seeds after half the fixed-target grid
            out.extend(train)
            train = []
    return claim, out + train


# ---- report ----------------------------------------------------------------------------------------------
def _paired(runs, name_a, name_b):
    """Per run: steps and values of two diagnostics at the iterations where both were measured."""
    rows = []
    for r in runs:
        a, b = series(r, name_a), series(r, name_b)
        steps = np.intersect1d(a[:, 0], b[:, 0])
        rows.append((steps, a[np.isin(a[:, 0], steps), 1], b[np.isin(b[:, 0], steps), 1]))
    return [r for r in rows if len(r[0])]


def _ci(x, below: float = 1.0):
    """IQM and mean over seeds with 95% bootstrap intervals, and how many seeds lie below ``below``."""
    x = np.asarray(x, dtype=float)
    return {"iqm": iqm_ci(x), "mean": mean_ci(x), "n": int(len(x)), f"seeds_below_{below:g}": int((x < below).sum())}


def report_fixed(claim, axes):
    res = {}
    for i, env in enumerate(FIXED_ENVS):
        for j, kind in enumerate(("random", "trained")):
            runs = runs_of(claim, f"fixed/{env}/{kind}")
            if not runs:
                continue
            rows = _paired(runs, "diag/sampling_error", "diag/sampling_error_ref")
            sizes = rows[0][0]
            rows = [r for r in rows if np.array_equal(r[0], sizes)]
            props = np.stack([r[1] for r in rows])
            ref = np.stack([r[2] for r in rows])
            ratio = props / ref
            res[f"{env}/{kind}"] = {
                "seeds": [int(r.name[1:]) for r in runs],
                "data_sizes": sizes.astype(int).tolist(),
                "props_iqm_per_size": [iqm_ci(props[:, k]) for k in range(len(sizes))],
                "on_policy_iqm_per_size": [iqm_ci(ref[:, k]) for k in range(len(sizes))],
                "ratio_at_largest": _ci(ratio[:, -1]),
                "ratio_mean_over_sizes": _ci(ratio.mean(1)),
                "difference_at_largest": _ci(props[:, -1] - ref[:, -1], below=0.0),
                "difference_mean_over_sizes": _ci((props - ref).mean(1), below=0.0),
                "props_per_seed": props.tolist(),
                "on_policy_per_seed": ref.tolist(),
            }
            ax = axes[i][j]
            for vals, label in ((props, "PROPS"), (ref, "on-policy (paired)")):
                c = ax.plot(sizes, np.median(vals, 0), marker="o", label=f"{label}, median/IQR, {len(rows)} seeds")[0]
                lo, hi = np.percentile(vals, [25, 75], axis=0)
                ax.fill_between(sizes, lo, hi, color=c.get_color(), alpha=0.2)
            ax.set(title=f"{env}, {kind} target (fixed)", xlabel="data size (steps)", ylabel="sampling error")
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    return res


def report_train(claim, axes):
    res = {}
    for i, env in enumerate(TRAIN_ENVS):
        props_runs, ppo_runs = runs_of(claim, f"train/{env}/props"), runs_of(claim, f"train/{env}/ppo")
        if not props_runs:
            continue
        rows = _paired(props_runs, "diag/sampling_error", "diag/sampling_error_ref")
        if not rows:
            continue
        ratio = np.array([np.mean(a) / np.mean(b) for _, a, b in rows])
        entry = {
            "seeds": [int(r.name[1:]) for r in props_runs],
            "props_over_paired_on_policy": _ci(ratio),
            "props_minus_paired_on_policy": _ci([np.mean(a - b) for _, a, b in rows], below=0.0),
            "props_sampling_error_mean": _ci([np.mean(a) for _, a, _ in rows]),
            "paired_on_policy_sampling_error_mean": _ci([np.mean(b) for _, _, b in rows]),
        }
        ax_se, ax_ret = axes[0][i], axes[1][i]
        for steps, a, b in rows:
            ax_se.plot(steps, a / b, color="C0", alpha=0.5)
        ax_se.axhline(1.0, color="k", lw=0.8)
        ax_se.set(title=f"{env}: PROPS / paired on-policy (per seed)", xlabel="env steps", yscale="log")
        for name, runs in (("props", props_runs), ("ppo", ppo_runs)):
            if not runs:
                continue
            steps = int(min(series(r, "train/episode_return")[-1, 0] for r in runs))
            grid = np.linspace(2048, steps, 20)
            ret = np.stack([np.interp(grid, *series(r, "train/episode_return").T) for r in runs])
            entry[f"{name}_train_return_auc"] = _ci(ret.mean(1))
            entry[f"{name}_final_eval"] = _ci([final_eval(r) for r in runs])
            entry[f"{name}_final_eval_per_seed"] = [final_eval(r) for r in runs]
            ax_ret.plot(grid, ret.mean(0), label=f"{name} (mean, {len(runs)} seeds)")
        ax_ret.set(title=f"{env}: training episode return", xlabel="env steps")
        ax_ret.legend(fontsize=7)
        res[env] = entry
    return res


def report(claim: str, out_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    res = {"fixed_target": report_fixed(claim, [axes[0][:2], axes[0][2:]])}
    res["training"] = report_train(claim, [axes[1][:2], axes[1][2:]])
    targets = {}
    for env in FIXED_ENVS:
        runs = runs_of(claim, f"targets/{env}")
        if runs:
            targets[env] = {"final_eval": final_eval(runs[0]), "steps": TARGET_STEPS[env]}
    res["trained_targets"] = targets
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / "sampling_error_paper.png", dpi=80)
    (out_dir / "results_paper.json").write_text(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, tiny sizes: a smoke check (~1-2 min)")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--train-seeds", type=int, default=3, help="seeds of the training runs (fixed-target: 10)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    claim, todo = jobs(args.quick, args.train_seeds)
    if not args.report_only:
        for k, job in enumerate(todo):
            t = time.process_time()
            out = run_one(job)
            print(f"[{k + 1}/{len(todo)}] {out} cpu {time.process_time() - t:.1f}s", flush=True)
    out_dir = RUNS / claim / "report" if args.quick else HERE
    print(json.dumps(report(claim, out_dir), indent=1)[:3000])


if __name__ == "__main__":
    main()
