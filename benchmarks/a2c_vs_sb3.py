"""policyopt's a2c preset vs Stable-Baselines3's A2C with rl-baselines3-zoo's settings, same budget.

Environments: CartPole-v1 (zoo entry: 8 envs, ent_coef 0, SB3's A2C defaults otherwise) and Acrobot-v1 (16 envs,
``normalize: true`` = VecNormalize of observations and rewards, ent_coef 0). policyopt runs its `a2c` preset
for the environment (the same settings translated, docs/control.md "A2C presets"); SB3 is built as rl-zoo3
builds it (``make_vec_env`` + ``VecNormalize(gamma=gamma)`` where the entry normalizes). Budget: 200k
environment steps on each environment (the zoo's is 500k on both; the shorter one fits the shared machine and
equals the classic_control bench's Acrobot budget). Each run: one torch thread, a fresh subprocess, seeds one
after the other, libraries alternating. Final evaluation: 10 deterministic episodes (SB3 through a frozen copy
of the training VecNormalize statistics, rewards unnormalized). Reported: per-seed returns, the mean and a 95%
percentile-bootstrap interval of the mean over seeds.

    python benchmarks/a2c_vs_sb3.py                 # 3 seeds, writes benchmarks/a2c_vs_sb3.json
    python benchmarks/a2c_vs_sb3.py --quick         # smoke check: 1 seed, 10k steps, no JSON
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ENVS = {"CartPole-v1": 200_000, "Acrobot-v1": 200_000}
ZOO = {  # rl-baselines3-zoo hyperparams/a2c.yml; every other key is SB3's A2C default
    "CartPole-v1": dict(n_envs=8, normalize=False, ent_coef=0.0),
    "Acrobot-v1": dict(n_envs=16, normalize=True, ent_coef=0.0),
}
EVAL_EPISODES = 10


def run_policyopt(env_id: str, seed: int, steps: int) -> dict:
    import tempfile

    from policyopt import algos
    from policyopt.control.onpolicy import train

    cfg = algos.build_config(
        "a2c",
        flags={"env_id": env_id, "seed": seed, "total_steps": steps, "progress": False},
        sets={"tensorboard": "false", "threads": 1, "eval_episodes": EVAL_EPISODES},
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res = train(cfg, d)
    return {"seconds": time.perf_counter() - t0, "steps": res["steps"], "eval_return": res["eval_return_mean"]}


def run_sb3(env_id: str, seed: int, steps: int) -> dict:
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize

    torch.set_num_threads(1)
    zoo = ZOO[env_id]
    env = make_vec_env(env_id, n_envs=zoo["n_envs"], seed=seed)
    if zoo["normalize"]:
        env = VecNormalize(env, gamma=0.99)  # the zoo passes the entry's gamma (SB3's default 0.99 here)
    model = A2C("MlpPolicy", env, ent_coef=zoo["ent_coef"], seed=seed, device="cpu", verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps)
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 10_000)
    if zoo["normalize"]:
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_env.obs_rms = env.obs_rms.copy()
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
    return {"seconds": time.perf_counter() - t0, "steps": int(model.num_timesteps), "eval_return": float(mean)}


def bootstrap_ci(x: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean over seeds."""
    a = np.asarray(x, dtype=float)
    means = a[np.random.default_rng(seed).integers(0, len(a), (n, len(a)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _worker(lib: str, env_id: str, seed: int, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", lib, "--env", env_id, "--seed", str(seed), "--steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 seed, 10k steps per environment, no JSON")
    ap.add_argument("--json", default=None, help="output path (default: a2c_vs_sb3.json next to this script)")
    ap.add_argument("--worker", choices=["policyopt", "sb3"])
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10_000)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps((run_policyopt if args.worker == "policyopt" else run_sb3)(args.env, args.seed, args.steps)))
        return
    seeds = 1 if args.quick else args.seeds
    budgets = {e: 10_000 for e in ENVS} if args.quick else ENVS
    runs: dict[str, dict[str, list[dict]]] = {e: {"policyopt": [], "sb3": []} for e in budgets}
    t_all = time.perf_counter()
    for env_id, steps in budgets.items():
        for seed in range(1, seeds + 1):
            for lib in ("policyopt", "sb3") if seed % 2 else ("sb3", "policyopt"):
                r = _worker(lib, env_id, seed, steps) | {"seed": seed}
                runs[env_id][lib].append(r)
                print(
                    f"{env_id:12s} {lib:9s} seed {seed}: eval {r['eval_return']:7.1f} ({r['seconds']:.0f} s)",
                    flush=True,
                )
    summary = []
    print("\n| env | steps | library | final eval return, mean [95% bootstrap CI] | per seed |")
    print("|---|---|---|---|---|")
    for env_id, libs in runs.items():
        for lib, rs in libs.items():
            x = [r["eval_return"] for r in rs]
            lo, hi = bootstrap_ci(x)
            summary.append({"env": env_id, "steps": budgets[env_id], "library": lib, "mean": float(np.mean(x)),
                            "ci95": [lo, hi], "per_seed": x})  # fmt: skip
            print(f"| {env_id} | {budgets[env_id]} | {lib} | {np.mean(x):.1f} [{lo:.1f}, {hi:.1f}] | "
                  f"{', '.join(f'{v:.1f}' for v in x)} |")  # fmt: skip
    wall = time.perf_counter() - t_all
    print(f"\nwall {wall / 60:.1f} min; machine: {platform.machine()}, python {platform.python_version()}")
    if not args.quick or args.json:
        path = Path(args.json or Path(__file__).with_name("a2c_vs_sb3.json"))
        meta = {"seeds": seeds, "budgets": budgets, "eval_episodes": EVAL_EPISODES, "wall_seconds": wall}
        path.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
