"""Data-parallel LM training (gloo on CPU): 2 ranks give the parameters of 1 process accumulating the gradient
over the same samples; local denominators would not; bad world sizes are one line."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from policyopt.lm import distributed as D
from policyopt.lm.config import LMConfig
from policyopt.losses import Aggregator
from policyopt.runs.lifecycle import SeedStreams

PROMPTS, G = 4, 4
BASE = dict(
    sft_steps=0,
    total_steps=2,
    prompts_per_step=PROMPTS,
    group_size=G,
    max_new_tokens=6,
    temperature=1.0,
    eval_size=8,
    lr_schedule="constant",
    learning_rate=1e-3,
    threads=1,
    rewards={"test_lm_distributed:digit_fraction": 1.0},
)
CASES = {  # name -> (config keys, local denominators: the negative control)
    "seq-mean-token-mean": (dict(aggregation="seq-mean-token-mean"), False),
    # the off-policy path (2 epochs: a no-grad pass for pi_old), a KL term to a reference, an entropy bonus
    "token-mean-kl-entropy": (dict(aggregation="token-mean", beta=0.05, ent_coef=0.01, epochs=2), False),
    "token-mean-local-denominators": (dict(aggregation="token-mean"), True),
}


def digit_fraction(prompts, completions, **_) -> list[float]:
    """A reward with a spread on an untrained model: the fraction of digits in the completion."""
    return [sum(c.isdigit() for c in s) / max(len(s), 1) for s in completions]


def _train(keys: dict, world: D.World) -> dict:
    """Two RL steps (the prompt stream of a run) on ``world``; the parameters and each step's loss tokens."""
    from policyopt.lm.trainer import build_parts, rl_step

    cfg = LMConfig(**{**BASE, **keys})
    cfg.validate()
    parts = build_parts(cfg, world)
    rng = SeedStreams(cfg.seed).numpy("prompts")
    tokens, metrics = [], {}
    # rows in batch order, so the 1-process micro-batches are the ranks' shards, summed in the same order
    with mock.patch("torch.randperm", lambda n, **_: torch.arange(n)):
        for step in (1, 2):
            metrics, batch = rl_step(parts, step, rng)
            tokens.append(float(batch.mask.sum()))
    floats = {k: float(v) for k, v in metrics.items() if k.startswith(("reward/", "stats/", "loss/", "select/"))}
    return {"params": [p.detach().clone() for p in parts.params], "tokens": tokens, "metrics": floats}


def _rank(rank: int, size: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    world = D.world()
    results = {}
    for name, (keys, local) in CASES.items():
        if local:  # the bug the global denominators prevent: each rank normalizes by its own tokens
            world.aggregator = lambda mode, mask, const_len: Aggregator.for_batch(mode, mask, const_len)
        results[name] = _train(keys, world)
        world.__dict__.pop("aggregator", None)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    D.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.spawn(_rank, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("case", [c for c, (_, local) in CASES.items() if not local])
def test_two_ranks_equal_one_process_accumulating_the_same_samples(two_ranks, case):
    keys, _ = CASES[case]
    # one process, the same two rollout shards (same prompts, same generators), one micro-batch per shard
    ref = _train({**keys, "rollout_shards": 2, "micro_batch_size": PROMPTS // 2 * G}, D.World())
    r0, r1 = two_ranks[0][case], two_ranks[1][case]
    assert _max_diff(r0["params"], r1["params"]) == 0.0  # the ranks stay identical
    assert [a + b for a, b in zip(r0["tokens"], r1["tokens"])] == ref["tokens"]  # the union is the 1-rank batch
    assert r0["tokens"] != r1["tokens"]  # the ranks' token counts differ: a local denominator would be wrong
    moved = _max_diff(ref["params"], [p.detach() for p in _initial_params()])
    assert moved > 1e-3  # training changed the parameters
    assert _max_diff(r0["params"], ref["params"]) < 1e-6
    for k in ("reward/mean", "reward/std", "stats/grad_norm", "loss/total", "stats/entropy", "select/train_batch"):
        assert r0["metrics"][k] == pytest.approx(ref["metrics"][k], rel=1e-5, abs=1e-7), k  # global statistics


def test_local_denominators_break_the_equality(two_ranks):
    keys, _ = CASES["token-mean-local-denominators"]
    ref = _train({**keys, "rollout_shards": 2, "micro_batch_size": PROMPTS // 2 * G}, D.World())
    r0 = two_ranks[0]["token-mean-local-denominators"]
    assert r0["tokens"] != two_ranks[1]["token-mean-local-denominators"]["tokens"]
    # each rank's gradient is about twice its share: the global gradient norm is off by a factor ~2 ...
    assert r0["metrics"]["stats/grad_norm"] > 1.5 * ref["metrics"]["stats/grad_norm"]
    # ... and the parameters (less so: Adam's first steps are nearly invariant to the gradient's scale)
    assert _max_diff(r0["params"], ref["params"]) > 1e-4


@functools.cache
def _initial_params() -> list[torch.Tensor]:
    from policyopt.lm.trainer import build_parts

    cfg = LMConfig(**BASE)
    return [p.detach().clone() for p in build_parts(cfg).params]


def test_only_rank_0_writes_and_every_rank_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from policyopt.lm.trainer import train

    cfg = LMConfig(**{**BASE, "total_steps": 1, "eval_k": 1, "tensorboard": False})
    not_main = D.World(rank=1, size=1)  # a rank other than 0 (collectives of one process)
    monkeypatch.setattr(D, "world", lambda: not_main)
    assert train(cfg, tmp_path / "r1")["steps"] == 1
    assert not (tmp_path / "r1").exists()  # it ran the whole loop and wrote nothing
    monkeypatch.setattr(D, "world", lambda: D.World())
    train(cfg, tmp_path / "r0")
    files = {p: p.read_bytes() for p in (tmp_path / "r0").rglob("*") if p.is_file()}
    monkeypatch.setattr(D, "world", lambda: not_main)
    cfg.total_steps = 2
    assert train(cfg, tmp_path / "r0", resume=True)["steps"] == 2  # restored step 1 from rank 0's checkpoint
    assert {p: p.read_bytes() for p in (tmp_path / "r0").rglob("*") if p.is_file()} == files


def test_shards_are_disjoint_slices_of_the_step_prompts():
    world = [D.World(rank=r, size=2) for r in range(2)]
    assert D.my_shards(8, 0, D.World()) == [(None, slice(0, 8))]
    assert [D.my_shards(8, 0, w) for w in world] == [[(0, slice(0, 4))], [(1, slice(4, 8))]]
    assert [D.my_shards(8, 4, w) for w in world] == [
        [(0, slice(0, 2)), (1, slice(2, 4))],
        [(2, slice(4, 6)), (3, slice(6, 8))],
    ]


@pytest.mark.parametrize(
    "size, keys, msg",
    [
        ("8", ["prompts_per_step=4"], "WORLD_SIZE=8 data-parallel ranks need a number of prompt groups per step"),
        ("3", ["prompts_per_step=4"], "(prompts_per_step, here 4) that is a multiple of WORLD_SIZE"),
        ("2", ["rollout_shards=3"], "config key 'rollout_shards'=3 must divide"),
        ("2", ["dynamic_sampling=true"], "the selectors ['dynamic_sampling'] act on the whole batch"),
    ],
)
def test_bad_world_size_is_one_line_exit_2(cli, monkeypatch, tmp_path, size, keys, msg):
    monkeypatch.setenv("WORLD_SIZE", size)
    sets = [a for k in keys for a in ("--set", k)]
    code, out, err = cli("train", "grpo", "--out", str(tmp_path / "r"), "--set", "sft_steps=0", *sets)
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_torchrun_cli_run_equals_one_process_run(tmp_path):
    """``torchrun --nproc-per-node 2 -m policyopt.cli.main train grpo``: one run directory whose final weights
    are a 1-process run's with ``rollout_shards=2`` (about a minute on 2 busy cores)."""
    from safetensors.torch import load_file

    sets = ["sft_steps=0", "eval_size=8", "eval_k=1", "prompts_per_step=4", "group_size=4", "temperature=1.0"]
    # a small learning rate: the 1-process micro-batches mix the shards' rows (a random permutation), and
    # AdamW turns the float32 rounding of a differently ordered sum into ~4e-6 at learning_rate=1e-3
    sets += ["lr_schedule=constant", "learning_rate=5e-5", "rewards={test_lm_distributed:digit_fraction: 1.0}"]
    args = [a for s in sets for a in ("--set", s)] + ["--total-steps", "2", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    cli = ["-m", "policyopt.cli.main", "train", "grpo"]
    run2, run1 = tmp_path / "two" / "run", tmp_path / "one" / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    p = subprocess.run([*torchrun, *cli, "--out", str(run2), *args], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    p = subprocess.run(
        [sys.executable, *cli, "--out", str(run1), *args, "--set", "rollout_shards=2", "--set", "micro_batch_size=8"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert sorted(x.name for x in (tmp_path / "two").iterdir()) == ["run"]  # one run directory
    w2, w1 = (load_file(str(r / "model" / "model.safetensors")) for r in (run2, run1))
    assert w2.keys() == w1.keys()
    assert max(float((w2[k] - w1[k]).abs().max()) for k in w1) < 1e-6
    rows2, rows1 = ((r / "metrics.csv").read_text().splitlines() for r in (run2, run1))
    assert len(rows2) == len(rows1)  # rank 0 alone wrote the metrics
    values = [{(r[0], r[2]): float(r[3]) for r in (x.split(",") for x in rows[1:])} for rows in (rows2, rows1)]
    for key in [k for k in values[1] if k[1] in ("reward/mean", "stats/grad_norm", "select/train_batch")]:
        assert values[0][key] == pytest.approx(values[1][key], rel=1e-5), key  # global statistics
    from policyopt.lm.trainer import build_parts

    start = build_parts(LMConfig(**BASE)).model.state_dict()
    assert max(float((w1[k] - start[k]).abs().max()) for k in w1 if k in start) > 5e-5  # the run trained
