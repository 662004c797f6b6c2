"""PPO-EWMA batch size-invariance under the paper's protocol (Hilton, Cobbe & Schulman, arXiv 2110.00641).

    python benchmarks/seeds/batch_size_invariance/run.py [--envs CartPole-v1] [--seeds 10] [--abl-seeds 8]
                                                         [--steps 30000] [--tune] [--report-only] [--quick]

From the ``ppo_ewma`` preset's ``paper`` protocol (16 envs x 32 steps, one policy epoch, 8 minibatches) the
batch is shrunk by c in {4, 16} with :func:`policyopt.control.proximal.batch_size_adjusted` (Adam lr / sqrt(c),
proximal EWMA centre of mass x c, advantage-normalization EWMA span x c). Ablations at the smallest batch drop
one adjustment each (linear lr, unadjusted proximal decay, unadjusted advantage normalization) or couple the
proximal policy to the behaviour policy (PPO with the other adjustments). Seeds are paired: seed s of every
variant shares its seed. Metric: final return (deterministic evaluation, 10 episodes) normalized by the
return's range; per seed the gap default-batch minus smallest-batch; mean over seeds with a 95% percentile
bootstrap CI (and IQMs with stratified-bootstrap CIs per variant).

``--tune`` first runs the default batch over a learning-rate grid on separate seeds (101-103) and prints the
best rate (the protocol's per-env ``learning_rate`` is that value). One process, one torch thread; finished
runs are skipped (restartable). Runs: runs/seeds_claims/bsi_paper/<env>/<variant>/s<seed>.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from common import RUNS, curve, final_eval, iqm_ci, mean_ci, run_one, runs_of, series  # noqa: E402

CLAIM = "bsi_paper"
SUFFIX = ""  # "_quick" for the smoke check (outputs are not the report's)
SCALES = (1, 4, 16)
# the return's range per env, for the normalized return (R - lo) / (hi - lo)
RETURN_RANGE = {"CartPole-v1": (0.0, 500.0), "Acrobot-v1": (-500.0, 0.0), "LunarLander-v3": (-200.0, 300.0)}
# ablations at the smallest batch: batch_size_adjusted keyword arguments, extra config overrides
ABLATIONS = {
    "linear_lr": ({"lr_rule": "linear"}, {}),
    "fixed_prox_decay": ({"keep": ("prox_decay",)}, {}),
    "fixed_adv_norm": ({"keep": ("adv_decay",)}, {}),
    "coupled_ppo": ({}, {"proximal": "behaviour"}),
}
EXTRA = {"sampling_error": False, "eval_episodes": 10}
LR_GRID = (2.5e-4, 5e-4, 1e-3, 2e-3)
TUNE_SEEDS = (101, 102, 103)


def base_settings(sets: dict) -> dict:
    """The values :func:`batch_size_adjusted` reads, from the resolved config."""
    from policyopt import algos

    cfg = algos.build_config("ppo_ewma", sets=sets)
    e = cfg.ewma
    return {
        "num_envs": cfg.num_envs,
        "minibatch_size": cfg.minibatch_size,
        "learning_rate": cfg.learning_rate,
        "ewma": {"prox_decay": e.prox_decay, "adv_decay": e.adv_decay},
    }


def variants(env: str, steps: int) -> dict[str, dict]:
    """Variant name -> config overrides (without the seed): the ``paper`` protocol, then the adjustments."""
    from policyopt.control.proximal import batch_size_adjusted

    base = {"env_id": env, "protocol": "paper", **EXTRA, "total_steps": steps}
    s = base_settings(base)
    out = {}
    for c in SCALES:
        out[f"c{c}"] = {**base, **batch_size_adjusted(s, c)}
    for name, (kw, extra) in ABLATIONS.items():
        out[f"c{SCALES[-1]}_{name}"] = {**base, **batch_size_adjusted(s, SCALES[-1], **kw), **extra}
    return out


def jobs(envs, steps, seeds, abl_seeds):
    main, abl = [], []
    for env in envs:
        vs = variants(env, steps)
        for seed in range(1, seeds + 1):
            main += [(CLAIM, f"{env}/{v}", "ppo_ewma", {**vs[v], "seed": seed}) for v in vs if "_" not in v]
        for seed in range(1, abl_seeds + 1):
            abl += [(CLAIM, f"{env}/{v}", "ppo_ewma", {**vs[v], "seed": seed}) for v in vs if "_" in v]
    return main + abl


def run_all(job_list, log: Path):
    import torch

    torch.set_num_threads(1)
    cpu = json.loads(log.read_text()) if log.exists() else {}
    for i, job in enumerate(job_list):
        key = f"{job[1]}/s{job[3]['seed']}"
        t0, w0 = time.process_time(), time.time()
        out = run_one(job)
        if key not in cpu and (Path(out) / "eval.json").exists():
            cpu[key] = {"cpu_s": time.process_time() - t0, "wall_s": time.time() - w0}
            log.write_text(json.dumps(cpu, indent=1))
        print(f"[{i + 1}/{len(job_list)}] {key} {cpu.get(key, {}).get('cpu_s', 0):.1f} cpu-s", flush=True)


def tune(env, steps):
    base = variants(env, steps)["c1"]
    res = {}
    for lr in LR_GRID:
        job_list = [
            (CLAIM, f"{env}/tune_lr{lr:g}", "ppo_ewma", {**base, "learning_rate": lr, "seed": s}) for s in TUNE_SEEDS
        ]
        run_all(job_list, RUNS / CLAIM / "cpu_tune.json")
        res[lr] = float(np.mean([_norm(env, final_eval(r)) for r in runs_of(CLAIM, f"{env}/tune_lr{lr:g}")]))
        print(f"{env} lr {lr:g}: mean final normalized return {res[lr]:.3f}", flush=True)
    best = max(res, key=res.get)
    print(f"{env}: best lr {best:g}")
    return {f"{k:g}": v for k, v in res.items()}


def _norm(env, r):
    lo, hi = RETURN_RANGE[env]
    return (r - lo) / (hi - lo)


def _finals(env, variant, metric="eval", steps=0):
    """Per seed: the final deterministic-evaluation return (``eval``) or the mean training-episode return over
    the last 20% of the steps (``late_train``), normalized."""
    runs = runs_of(CLAIM, f"{env}/{variant}")
    if metric == "eval":
        return {int(r.name[1:]): _norm(env, final_eval(r)) for r in runs}
    out = {}
    for r in runs:
        pts = series(r, "train/episode_return")
        out[int(r.name[1:])] = _norm(env, float(pts[pts[:, 0] >= 0.8 * steps, 1].mean()))
    return out


def _gap(a: dict, b: dict) -> dict | None:
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    d = np.array([a[s] - b[s] for s in seeds])
    m, ci = mean_ci(d)
    return {"seeds": seeds, "per_seed": d.round(4).tolist(), "mean": m, "ci95": ci}


def report(envs, steps):
    import matplotlib.pyplot as plt

    res = {"protocol": "ppo_ewma paper (docs/protocols.md)", "total_steps": steps, "return_range": RETURN_RANGE}
    fig, axes = plt.subplots(len(envs), 2, figsize=(12, 4 * len(envs)), squeeze=False)
    for row, env in zip(axes, envs):
        vs = variants(env, steps)
        finals = {v: _finals(env, v) for v in vs}
        small = f"c{SCALES[-1]}"
        e = res[env] = {
            "settings": {
                v: {k: vs[v][k] for k in ("num_envs", "minibatch_size", "learning_rate")}
                | {"ewma": vs[v]["ewma"], "proximal": vs[v].get("proximal", "ewma")}
                for v in vs
            }
        }
        e["final_normalized"] = {
            v: {
                "seeds": sorted(f),
                "values": [round(f[s], 4) for s in sorted(f)],
                "mean_ci": mean_ci(list(f.values())),
                "iqm_ci": iqm_ci(np.array(list(f.values()))),
            }
            for v, f in finals.items()
            if len(f) >= 2
        }
        e["gap_default_minus"] = {v: _gap(finals["c1"], finals[v]) for v in vs if v != "c1"}
        late = {v: _finals(env, v, "late_train", steps) for v in vs}
        e["late_train_normalized_mean_ci"] = {v: mean_ci(list(f.values())) for v, f in late.items() if len(f) >= 2}
        e["late_train_gap_default_minus"] = {v: _gap(late["c1"], late[v]) for v in vs if v != "c1"}
        e["gap_vs_full_adjustment_at_smallest"] = {
            v: _gap(finals[small], finals[v]) for v in vs if v.startswith(small + "_")
        }
        grid = np.linspace(steps / 30, steps, 30)
        for v in vs:
            runs = runs_of(CLAIM, f"{env}/{v}")
            if runs:
                c = curve(runs, "train/episode_return", grid)
                row[0].plot(grid, c.mean(0), label=f"{v} (n={len(runs)})", ls="-" if "_" not in v else "--")
        row[0].set(title=f"{env}: training return (mean over seeds)", xlabel="env steps")
        row[0].legend(fontsize=7)
        names = [v for v in vs if v in e["final_normalized"]]
        for i, v in enumerate(names):
            fn = e["final_normalized"][v]
            m, (lo, hi) = fn["mean_ci"]
            row[1].errorbar(i, m, yerr=[[m - lo], [hi - m]], fmt="o", capsize=4)
            row[1].scatter(np.full(len(fn["values"]), i) + 0.15, fn["values"], s=8, alpha=0.5)
        row[1].set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        row[1].set(title=f"{env}: final normalized return (mean, 95% bootstrap CI)", ylim=(-0.05, 1.05))
    fig.tight_layout()
    fig.savefig(ROOT / f"curves_paper{SUFFIX}.png", dpi=90)
    cpu_log = RUNS / CLAIM / "cpu.json"
    if cpu_log.exists():
        cpu = json.loads(cpu_log.read_text())
        res["cpu_minutes_main_grid"] = sum(v["cpu_s"] for v in cpu.values()) / 60
        res["cpu_s_per_run_mean"] = {
            v: float(np.mean([x["cpu_s"] for k, x in cpu.items() if k.rsplit("/", 1)[0].endswith("/" + v)]))
            for v in variants(envs[0], steps)
            if any(k.rsplit("/", 1)[0].endswith("/" + v) for k in cpu)
        }
    (ROOT / f"results_paper{SUFFIX}.json").write_text(json.dumps(res, indent=1))
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", default="CartPole-v1")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--abl-seeds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--tune", action="store_true", help="learning-rate grid at the default batch first")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke check: 2 seeds, 3k steps, into runs/.../quick")
    a = ap.parse_args()
    envs = a.envs.split(",")
    global CLAIM, SUFFIX
    if a.quick:
        SUFFIX = "_quick"
        CLAIM, a.seeds, a.abl_seeds, a.steps = CLAIM + "_quick", 2, 2, 3_000
    if a.tune and not a.report_only:
        print(json.dumps({env: tune(env, a.steps) for env in envs}))
        return
    if not a.report_only:
        run_all(jobs(envs, a.steps, a.seeds, a.abl_seeds), RUNS / CLAIM / "cpu.json")
    res = report(envs, a.steps)
    print(json.dumps({env: {"gap_default_minus": res[env]["gap_default_minus"]} for env in envs}, indent=1))


if __name__ == "__main__":
    main()
