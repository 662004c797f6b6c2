"""policyopt vs Stable-Baselines3, same invocation, same hyperparameters, interleaved per seed or side by side.

    python benchmarks/offpolicy/bench_speed.py sac Pendulum-v1 --steps 20000 --seeds 0 1 2 --out results.json
    python benchmarks/offpolicy/bench_speed.py td3 Hopper-v5 --steps 100000 --seeds 0 1 2 --out td3.json --pairs

Default: one process, runs interleaved per seed (policyopt, SB3, policyopt, ...). ``--pairs``: for each seed
the two libraries run at the same time in two fresh processes, each pinned to its own CPU core, so
both see the same machine conditions (needs 2 free cores; nothing else should run meanwhile).

Both run with one torch thread on the CPU. SB3 uses its defaults (SAC: 256x256, batch 256, lr 3e-4, buffer
1e6, learning_starts 100, tau 0.005, auto temperature; TD3: 256x256, batch 256, lr 1e-3, learning_starts
100, policy_delay 2, Gaussian action noise 0.1); policyopt is configured to the same values. Env steps/s
is total_steps / wall time of training (policyopt's time includes its final 10-episode evaluation and
checkpoint write, SB3's does not). Returns: mean of 10 deterministic evaluation episodes at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SB3_DEFAULTS = {
    "sac": dict(
        actor="gaussian",
        actor_hidden=(256, 256),
        critic_hidden=(256, 256),
        actor_lr=3e-4,
        critic_lr=3e-4,
        alpha_lr=3e-4,
        batch_size=256,
        buffer_size=1_000_000,
        learning_starts=100,
        tau=0.005,
        gamma=0.99,
    ),
    "td3": dict(
        actor="deterministic",
        actor_hidden=(256, 256),
        critic_hidden=(256, 256),
        actor_lr=1e-3,
        critic_lr=1e-3,
        batch_size=256,
        buffer_size=1_000_000,
        learning_starts=100,
        tau=0.005,
        gamma=0.99,
        policy_delay=2,
        exploration_noise=0.1,
    ),
}


def sb3_config(algo: str, env_id: str, seed: int, steps: int, **extra):
    """policyopt's config for ``algo`` at SB3's default hyper-parameters, without checkpoints, evaluations or
    logging files (``extra``: more config values, e.g. ``threads``)."""
    from policyopt import algos
    from policyopt.config import resolve

    quiet = dict(checkpoint_every=0, eval_every=0, tensorboard=False, progress=False, save_buffer=False)
    run = dict(env_id=env_id, seed=seed, total_steps=steps, **quiet, **extra)
    return resolve(algos.get(algo).config(), algos.get(algo).defaults, SB3_DEFAULTS[algo], run)


def run_ours(algo: str, env_id: str, steps: int, seed: int) -> dict:
    from policyopt.control.offpolicy import train

    cfg = sb3_config(algo, env_id, seed, steps)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        r = train(cfg, d)
        wall = time.perf_counter() - t
    return {"lib": "policyopt", "seed": seed, "steps_per_s": steps / wall, "return": r["eval_return_mean"]}


def run_sb3(algo: str, env_id: str, steps: int, seed: int) -> dict:
    import gymnasium as gym
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.noise import NormalActionNoise

    env = gym.make(env_id)
    if algo == "sac":
        model = SAC("MlpPolicy", env, seed=seed, device="cpu")
    else:
        n = env.action_space.shape[0]
        model = TD3(
            "MlpPolicy",
            env,
            seed=seed,
            device="cpu",
            action_noise=NormalActionNoise(np.zeros(n), 0.1 * np.ones(n)),
        )
    t = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - t
    mean, _ = evaluate_policy(model, gym.make(env_id), n_eval_episodes=10, deterministic=True)
    return {"lib": "sb3", "seed": seed, "steps_per_s": steps / wall, "return": float(mean)}


def _write(a, rows: list[dict]) -> None:
    meta = {
        "algo": a.algo,
        "env": a.env_id,
        "steps": a.steps,
        "rows": rows,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    Path(a.out).write_text(json.dumps(meta, indent=1))


def _run_pair(a, seed: int) -> list[dict]:
    """Both libraries on one seed at the same time, each in a fresh process on its own core."""
    procs = []
    with tempfile.TemporaryDirectory() as d:
        for cpu, lib in enumerate(a.libs):
            out = Path(d) / f"{lib}.json"
            cmd = [
                sys.executable,
                __file__,
                a.algo,
                a.env_id,
                "--steps",
                str(a.steps),
                "--seeds",
                str(seed),
                "--libs",
                lib,
                "--out",
                str(out),
                "--cpu",
                str(cpu % os.cpu_count()),
            ]
            procs.append((subprocess.Popen(cmd, stdout=subprocess.DEVNULL), out))
        rows = []
        for proc, out in procs:
            if proc.wait() != 0:
                raise SystemExit(f"worker failed: {proc.args}")
            rows += json.loads(out.read_text())["rows"]
    for r in rows:
        print(json.dumps({**r, "paired": True}), flush=True)
    return [{**r, "paired": True} for r in rows]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("algo", choices=("sac", "td3"))
    p.add_argument("env_id")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--libs", nargs="+", default=["policyopt", "sb3"])
    p.add_argument("--out", default="bench.json")
    p.add_argument("--pairs", action="store_true", help="run the libraries of a seed side by side, one core each")
    p.add_argument("--cpu", type=int, default=None, help=argparse.SUPPRESS)  # worker: pin to this core
    a = p.parse_args()
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    torch.set_num_threads(1)
    rows = []
    for seed in a.seeds:
        if a.pairs:
            rows += _run_pair(a, seed)
        else:
            for lib in a.libs:
                r = (run_ours if lib == "policyopt" else run_sb3)(a.algo, a.env_id, a.steps, seed)
                rows.append(r)
                print(json.dumps(r), flush=True)
        _write(a, rows)
    for lib in a.libs:
        sps = [r["steps_per_s"] for r in rows if r["lib"] == lib]
        rets = [r["return"] for r in rows if r["lib"] == lib]
        print(f"{lib}: median steps/s {np.median(sps):.1f}  returns {[round(x, 1) for x in rets]}")


if __name__ == "__main__":
    main()
