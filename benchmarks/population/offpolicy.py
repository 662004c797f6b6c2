"""SAC / TD3 with many seeds: Stable-Baselines3 one process per seed vs a policyopt off-policy population.

Experiments (SB3's default hyper-parameters on both sides, as ``benchmarks/offpolicy/bench_speed.py``):

- ``sac``: SAC on Pendulum-v1, 5 seeds x 20k steps (targets: total throughput >= 2x SB3's, every member's
  final evaluation >= -200);
- ``td3``: TD3 on Hopper-v5, 3 seeds x 100k steps (target: throughput >= 2x SB3's).

Layout (``C`` = cores, ``--cores``, default ``os.cpu_count()``):

- SB3: one process per seed, ``C`` at a time, one torch thread each (``bench_speed.run_sb3``);
- policyopt ``--layout split`` (default): ``min(C, seeds)`` processes, the seeds split evenly, each process
  training its share as one population with one torch thread; ``--layout one``: one process, one population of
  every seed, ``C`` torch threads.

Throughput is seeds x steps / end-to-end wall-clock (first process started to last result), the same on both
sides; the training seconds measured inside each process are reported too. The arithmetic floor: the float32
FLOPs of the matmuls of one update, counted with ``torch.utils.flop_counter`` on the population's own update
(averaged over ``policy_delay`` updates; per environment step = per update at ``utd`` 1), at this core's float32
rate measured on the update's largest matmul shape, times ``C`` cores.

    python benchmarks/population/offpolicy.py sac [--seeds 5] [--steps 20000] [--json out.json]
    python benchmarks/population/offpolicy.py td3 [--seeds 3] [--steps 100000] [--json out.json]
    python benchmarks/population/offpolicy.py sac --quick      # smoke check (2 seeds, 600 steps)
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "offpolicy"))

EXPERIMENTS = {
    "sac": dict(env_id="Pendulum-v1", seeds=5, steps=20_000, quick_steps=600),
    "td3": dict(env_id="Hopper-v5", seeds=3, steps=100_000, quick_steps=600),
}


def _cfg(algo: str, env_id: str, seed: int, steps: int, threads: int):
    from bench_speed import sb3_config

    return sb3_config(algo, env_id, seed, steps, threads=threads)


# ---- workers (each a fresh process) -----------------------------------------------------------------------
def worker_population(algo: str, env_id: str, seeds: list[int], steps: int, threads: int) -> dict:
    from ppo_cartpole import train_members

    from policyopt.control import offpolicy_population

    return train_members(offpolicy_population, [_cfg(algo, env_id, s, steps, threads) for s in seeds])


def worker_sb3(algo: str, env_id: str, seed: int, steps: int) -> dict:
    import torch
    from bench_speed import run_sb3

    torch.set_num_threads(1)
    r = run_sb3(algo, env_id, steps, seed)
    return {"seeds": [seed], "eval_returns": [r["return"]], "train_seconds": steps / r["steps_per_s"]}


def _spawn(args: list[str]) -> tuple[subprocess.Popen, Path]:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [sys.executable, __file__, "--worker", json.dumps(args), "--json", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL), out


def _run_pool(jobs: list[list], at_once: int) -> tuple[float, list[dict]]:
    """Run the worker ``jobs``, ``at_once`` processes at a time; returns the wall-clock and their results."""
    t0, pending, running, results = time.perf_counter(), list(jobs), [], []
    while pending or running:
        while pending and len(running) < at_once:
            running.append(_spawn(pending.pop(0)))
        proc, out = running.pop(0)
        if proc.wait() != 0:
            raise SystemExit(f"worker failed: {proc.args}")
        results.append(json.loads(out.read_text()))
        out.unlink()
    return time.perf_counter() - t0, results


# ---- the arithmetic floor ---------------------------------------------------------------------------------
def floor(algo: str, env_id: str, seeds: int, threads: int) -> dict:
    """FLOPs of one member's update (counted on a population update) and the core's float32 matmul rate."""
    import gymnasium as gym
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from policyopt.control.normalize import ObsNormalizer
    from policyopt.control.offpolicy import Learner
    from policyopt.control.offpolicy_population import PopulationLearner, PopulationReplay

    torch.set_num_threads(threads)
    cfg = _cfg(algo, env_id, 0, 1000, threads)
    env = gym.make(env_id)
    od, ad = env.observation_space.shape[0], env.action_space.shape[0]
    learners = [Learner(cfg, od, ad, 1000, "cpu") for _ in range(seeds)]
    pl, replay = PopulationLearner([cfg] * seeds, learners), PopulationReplay(cfg, seeds, od, ad, "cpu")
    n = seeds * cfg.num_envs
    for _ in range(cfg.batch_size):
        z = torch.zeros(n)
        replay.buffer.add(torch.randn(n, od), torch.rand(n, ad) * 2 - 1, z, torch.randn(n, od), z, z, z + 1)
    gens = [torch.Generator().manual_seed(k) for k in range(seeds)]
    norms = [ObsNormalizer((od,), False)] * seeds
    with FlopCounterMode(display=False) as fc:
        for i in range(1, cfg.policy_delay + 1):
            pl.update(replay, norms, i, gens)
    flops_per_update = fc.get_total_flops() / cfg.policy_delay / seeds
    h = max(cfg.critic_hidden)
    a, b = torch.randn(seeds * cfg.n_critics, cfg.batch_size, h), torch.randn(seeds * cfg.n_critics, h, h)
    rates = {}
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        for _ in range(5):
            torch.bmm(a, b)
        reps, t0 = 50, time.perf_counter()
        for _ in range(reps):
            torch.bmm(a, b)
        rates[t] = 2 * a.shape[0] * cfg.batch_size * h * h * reps / (time.perf_counter() - t0)
    return {
        "flops_per_env_step": flops_per_update * cfg.utd,
        "matmul_flops_per_s_1_thread": rates[1],
        "matmul_flops_per_s": rates[threads],
        "threads": threads,
    }


# ---- main -------------------------------------------------------------------------------------------------
def _side(results: list[dict], wall: float, steps: int) -> dict:
    returns = [r for res in results for r in res["eval_returns"]]
    n = sum(len(res["seeds"]) for res in results)
    return {
        "wall_seconds": round(wall, 2),
        "steps_per_s": round(n * steps / wall, 1),
        "train_seconds": [round(res["train_seconds"], 2) for res in results],
        "seeds": [s for res in results for s in res["seeds"]],
        "eval_returns": [round(r, 1) for r in returns],  # in the order of "seeds"
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("algo", nargs="?", choices=tuple(EXPERIMENTS))
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cores", type=int, default=os.cpu_count())
    p.add_argument("--layout", choices=("split", "one"), default="split")
    p.add_argument("--quick", action="store_true", help="smoke check: 2 seeds, 600 steps")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        kind, *args = json.loads(a.worker)
        res = worker_population(*args) if kind == "population" else worker_sb3(*args)
        Path(a.json).write_text(json.dumps(res))
        return
    if a.algo is None:
        p.error("name an experiment: " + ", ".join(EXPERIMENTS))
    exp = EXPERIMENTS[a.algo]
    seeds = list(range(a.seeds or (2 if a.quick else exp["seeds"])))
    steps = a.steps or (exp["quick_steps"] if a.quick else exp["steps"])
    C, env_id = a.cores, exp["env_id"]
    if a.layout == "split":
        groups = [seeds[i :: min(C, len(seeds))] for i in range(min(C, len(seeds)))]
        pop_jobs, threads = [["population", a.algo, env_id, g, steps, 1] for g in groups], 1
    else:
        pop_jobs, threads = [["population", a.algo, env_id, seeds, steps, C]], C
    pop_wall, pop_res = _run_pool(pop_jobs, len(pop_jobs))
    sb3_wall, sb3_res = _run_pool([["sb3", a.algo, env_id, s, steps] for s in seeds], C)
    pop, sb3 = _side(pop_res, pop_wall, steps), _side(sb3_res, sb3_wall, steps)
    fl = floor(a.algo, env_id, max(len(g) for g in [s["seeds"] for s in pop_res]), threads)
    floor_sps = C * fl["matmul_flops_per_s"] / threads / fl["flops_per_env_step"]
    report = {
        "experiment": a.algo,
        "env": env_id,
        "seeds": len(seeds),
        "steps": steps,
        "cores": C,
        "layout": a.layout,
        "policyopt_population": pop,
        "sb3": sb3,
        "throughput_ratio": round(pop["steps_per_s"] / sb3["steps_per_s"], 2),
        "floor": {
            **{k: round(v / 1e9, 3) if "flops" in k else v for k, v in fl.items()},
            "steps_per_s": round(floor_sps, 1),
        },
        "machine": platform.processor() or platform.machine(),
    }
    report["floor"] = {k.replace("flops", "gflop"): v for k, v in report["floor"].items()}
    print(json.dumps(report, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
