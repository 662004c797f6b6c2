"""PPO on CartPole-v1 with rl-zoo3's hyperparameters: policyopt vs Stable-Baselines3, same invocation.

Each (library, seed) run is a fresh subprocess; runs alternate between the libraries so machine load
affects both alike. Both use one torch thread, 8 sync envs, n_steps 32, batch 256, gae_lambda 0.8,
gamma 0.98, 20 epochs, lr 1e-3 and clip 0.2 linearly decayed, ent_coef 0, 1e5 steps; both are then
evaluated with the deterministic policy for 10 episodes. Wall-clock covers training only.

    python benchmarks/ppo_cartpole_vs_sb3.py --seeds 5 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

STEPS = 100_000


def run_policyopt(seed: int) -> dict:
    import tempfile

    from policyopt import algos
    from policyopt.control.onpolicy import train

    cfg = algos.build_config(
        "ppo",
        flags={"env_id": "CartPole-v1", "seed": seed, "total_steps": STEPS, "progress": False},
        sets={"tensorboard": "false", "checkpoint_every": 0},
    )
    with tempfile.TemporaryDirectory() as d:
        res = train(cfg, d)
    return {"seconds": res["train_seconds"], "steps": res["steps"], "eval_return": res["eval_return_mean"]}


def run_sb3(seed: int) -> dict:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    torch.set_num_threads(1)

    def linear(v):
        return lambda progress_remaining: progress_remaining * v

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=linear(1e-3),
        clip_range=linear(0.2),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    t0 = time.perf_counter()
    model.learn(total_timesteps=STEPS)
    seconds = time.perf_counter() - t0
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=seed + 10_000)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    return {"seconds": seconds, "steps": int(model.num_timesteps), "eval_return": float(mean)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", choices=["policyopt", "sb3"])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps((run_policyopt if args.worker == "policyopt" else run_sb3)(args.seed)))
        return
    results: dict[str, list[dict]] = {"policyopt": [], "sb3": []}
    for seed in range(1, args.seeds + 1):
        for lib in ("policyopt", "sb3") if seed % 2 else ("sb3", "policyopt"):
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--worker", lib, "--seed", str(seed)],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out) | {"seed": seed}
            r["steps_per_s"] = r["steps"] / r["seconds"]
            results[lib].append(r)
            print(
                f"{lib:10s} seed {seed}: {r['seconds']:.1f} s, {r['steps_per_s']:.0f} steps/s, "
                f"eval {r['eval_return']:.1f}",
                flush=True,
            )
    rows = []
    for lib, rs in results.items():
        rows.append(
            {
                "library": lib,
                "median_seconds": statistics.median(r["seconds"] for r in rs),
                "median_steps_per_s": statistics.median(r["steps_per_s"] for r in rs),
                "eval_returns": [r["eval_return"] for r in rs],
            }
        )
    ratio = rows[0]["median_steps_per_s"] / rows[1]["median_steps_per_s"]
    print("\n| library | median wall-clock (s) | median steps/s | final eval return per seed |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['library']} | {r['median_seconds']:.1f} | {r['median_steps_per_s']:.0f} | "
            f"{', '.join(f'{x:.0f}' for x in r['eval_returns'])} |"
        )
    print(f"\nspeed ratio policyopt / SB3 (median steps/s): {ratio:.2f}x")
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "ratio": ratio, "runs": results}, f, indent=2)


if __name__ == "__main__":
    main()
