"""PPO on CartPole-v1 (rl-zoo3 settings), many seeds: Stable-Baselines3 one process per seed vs a policyopt
population of seeds.

Layout (``C`` = cores, ``--cores``, default ``os.cpu_count()``; every process uses one torch thread):

- SB3: the seeds run as separate processes, ``C`` at a time (``benchmarks/ppo_cartpole_vs_sb3.py``'s setup);
- policyopt population: ``C`` processes (fewer if there are fewer seeds), the seeds split evenly between them,
  each process training its share as one population (``policyopt.control.population.train_population``);
- policyopt single: one single-seed run, to compare the population's wall-clock with.

Wall-clock is end to end (process start to the last result), the same on both sides; the training time measured
inside each process (no interpreter start, imports or evaluation) is reported too. The arithmetic floor is the
float32 multiply-adds of the networks per environment step (rollout forward + the update's forward and backward)
at this core's measured matmul rate, times steps times seeds, divided by ``C``.

    python benchmarks/population/ppo_cartpole.py [--seeds 10] [--steps 100000] [--json out.json]
    python benchmarks/population/ppo_cartpole.py --quick      # smoke check (2 seeds, 2048 steps)
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
sys.path.insert(0, str(HERE.parent))


def _cfg(seed: int, steps: int):
    from policyopt import algos

    return algos.build_config(
        "ppo",
        flags={"env_id": "CartPole-v1", "seed": seed, "total_steps": steps, "progress": False},
        sets={"tensorboard": "false", "checkpoint_every": 0, "threads": 1},
    )


def train_members(batched, cfgs: list) -> dict:
    """Train ``cfgs`` as one population with the batched trainer module ``batched`` (its ``train_population``,
    after ``population_unsupported`` agrees) in a temporary folder; the members' final evaluations and the
    longest training time."""
    reason = batched.population_unsupported(cfgs)
    if reason:
        raise SystemExit(f"population not supported: {reason}")
    with tempfile.TemporaryDirectory() as d:
        res = batched.train_population(cfgs, [Path(d) / f"s{c.seed}" for c in cfgs])
    return {
        "seeds": [c.seed for c in cfgs],
        "eval_returns": [r["eval_return_mean"] for r in res],
        "train_seconds": max(r["train_seconds"] for r in res),
    }


def worker_population(seeds: list[int], steps: int) -> dict:
    from policyopt.control import population

    return train_members(population, [_cfg(s, steps) for s in seeds])


def worker_single(seed: int, steps: int) -> dict:
    from policyopt.control.onpolicy import train

    with tempfile.TemporaryDirectory() as d:
        res = train(_cfg(seed, steps), d)
    return {"seeds": [seed], "eval_returns": [res["eval_return_mean"]], "train_seconds": res["train_seconds"]}


def worker_sb3(seed: int, steps: int) -> dict:
    import ppo_cartpole_vs_sb3 as ref

    ref.STEPS = steps
    r = ref.run_sb3(seed)
    return {"seeds": [seed], "eval_returns": [r["eval_return"]], "train_seconds": r["seconds"]}


def _launch(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=env)


def _result(p: subprocess.Popen) -> dict:
    out, _ = p.communicate()
    if p.returncode:
        raise SystemExit(f"worker failed with exit status {p.returncode}")
    return json.loads(out.strip().splitlines()[-1])


def run_pool(jobs: list[list[str]], cores: int) -> tuple[float, list[dict]]:
    """Run worker command lines, at most ``cores`` at a time; returns (wall seconds, results in job order)."""
    t0 = time.perf_counter()
    running: dict[int, subprocess.Popen] = {}
    results: dict[int, dict] = {}
    pending = list(enumerate(jobs))
    while pending or running:
        while pending and len(running) < cores:
            i, job = pending.pop(0)
            running[i] = _launch(job)
        for i, p in list(running.items()):
            if p.poll() is not None:
                results[i] = _result(p)
                del running[i]
        time.sleep(0.05)
    return time.perf_counter() - t0, [results[i] for i in range(len(jobs))]


def matmul_rate() -> float:
    """Single-thread float32 matmul rate (FLOP/s) on the update's shapes (256 x 64 by 64 x 64), best of 5."""
    import torch

    torch.set_num_threads(1)
    a, b = torch.randn(256, 64), torch.randn(64, 64)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(200):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / 200)
    return 2 * 256 * 64 * 64 / best


def flops_per_env_step(obs: int = 4, act: int = 2, hidden: int = 64) -> float:
    """Multiply-add FLOPs of the networks per environment step with the rl-zoo3 settings (batch 256 = 8 envs x 32
    steps, minibatch 256, 20 epochs): the rollout forward of actor and critic, and per sample and epoch the
    update's forward (1x) and backward (2x, weights and inputs; the first layer's input gradient is skipped)."""
    actor = [(obs, hidden), (hidden, hidden), (hidden, act)]
    critic = [(obs, hidden), (hidden, hidden), (hidden, 1)]
    fwd = sum(2 * i * o for i, o in actor + critic)
    first = 2 * (obs * hidden) * 2  # no input gradient for the first layer of either network
    epochs = 20
    return fwd + epochs * (3 * fwd - first)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--quick", action="store_true", help="smoke check: 2 seeds, 2048 steps, one population process")
    ap.add_argument("--skip-sb3", action="store_true")
    ap.add_argument("--json", default=str(HERE / "ppo_cartpole.json"))
    ap.add_argument("--worker", choices=["population", "single", "sb3"])
    ap.add_argument("--worker-seeds", default="1")
    args = ap.parse_args()
    if args.worker:
        seeds = [int(s) for s in args.worker_seeds.split(",")]
        fn = {"population": lambda: worker_population(seeds, args.steps)}.get(args.worker)
        res = fn() if fn else (worker_single if args.worker == "single" else worker_sb3)(seeds[0], args.steps)
        print(json.dumps(res))
        return
    if args.quick:
        args.seeds, args.steps = 2, 2048
    seeds = list(range(1, args.seeds + 1))
    procs = 1 if args.quick else min(args.cores, len(seeds))  # quick: one process with both members
    chunks = [seeds[i::procs] for i in range(procs)]
    steps = ["--steps", str(args.steps)]
    print(f"{len(seeds)} seeds x {args.steps} steps, {args.cores} cores", flush=True)
    pop_s, pop = run_pool(
        [["--worker", "population", "--worker-seeds", ",".join(map(str, c)), *steps] for c in chunks], procs
    )
    print(f"policyopt population ({procs} processes x {[len(c) for c in chunks]} members): {pop_s:.1f} s", flush=True)
    single_s, single = run_pool([["--worker", "single", "--worker-seeds", "1", *steps]], 1)
    print(f"policyopt single seed: {single_s:.1f} s", flush=True)
    sb3_s, sb3 = None, []
    if not args.skip_sb3:
        sb3_s, sb3 = run_pool([["--worker", "sb3", "--worker-seeds", str(s), *steps] for s in seeds], args.cores)
        print(f"SB3 ({args.cores} processes at a time, one per seed): {sb3_s:.1f} s", flush=True)
    rate = matmul_rate()
    flops = flops_per_env_step()
    floor_s = flops * args.steps * len(seeds) / (rate * args.cores)
    members = {s: r for res in pop for s, r in zip(res["seeds"], res["eval_returns"])}
    out = {
        "seeds": len(seeds),
        "steps": args.steps,
        "cores": args.cores,
        "layout": {"population_processes": procs, "members_per_process": [len(c) for c in chunks], "threads": 1},
        "policyopt_population_seconds": round(pop_s, 2),
        "policyopt_single_seconds": round(single_s, 2),
        "sb3_seconds": None if sb3_s is None else round(sb3_s, 2),
        "ratio_sb3_over_population": None if sb3_s is None else round(sb3_s / pop_s, 2),
        "ratio_population_over_single": round(pop_s / single_s, 2),
        "train_seconds_in_process": {
            "population_per_process": [r["train_seconds"] for r in pop],
            "single": single[0]["train_seconds"],
            "sb3_per_seed": [r["train_seconds"] for r in sb3],
        },
        "member_eval_returns": {str(s): members[s] for s in seeds},
        "all_members_500": all(v >= 500 for v in members.values()),
        "single_eval_return": single[0]["eval_returns"][0],
        "sb3_eval_returns": [r["eval_returns"][0] for r in sb3],
        "flops_per_env_step": flops,
        "matmul_gflops_per_core": round(rate / 1e9, 2),
        "arithmetic_floor_seconds": round(floor_s, 2),
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
        "quick": args.quick,
    }
    print(json.dumps(out, indent=2))
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
