"""On-policy populations: every member equals its single run, members do not interact, per-member early
stopping, exact resume, evaluable member directories, the batched MLP against the plain one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import policyopt
from policyopt.control import population as cpop
from policyopt.control.networks import ActorCritic
from policyopt.control.onpolicy import train
from policyopt.control.stacked import StackedActorCritic
from policyopt.runs.checkpoint import load_checkpoint
from policyopt.runs.rundir import read_info

SMALL = dict(num_envs=4, n_steps=32, minibatch_size=64, epochs=2, total_steps=384, checkpoint_every=128, log_every=128)
QUIET = dict(tensorboard=False, progress=False, sampling_error="off", eval_episodes=2)


def _cfg(algo="ppo", env="CartPole-v1", **sets):
    return policyopt.configure(algo, env=env, sets={**SMALL, **QUIET, **sets})


def _state(d: Path):
    return load_checkpoint(d / "checkpoints" / "latest.safetensors")


def _metrics(d: Path, skip=("train/steps_per_s",)):
    rows = [r.split(",") for r in (d / "metrics.csv").read_text().splitlines()[1:]]
    return {(r[0], r[2]): float(r[3]) for r in rows if r[2] not in skip}


def _close(a: dict, b: dict, tol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, (a[k] - b[k]).abs().max())


@pytest.fixture(scope="module")
def cartpole(tmp_path_factory):
    root = tmp_path_factory.mktemp("pop")
    cfgs = [
        _cfg(seed=s, ent_coef=e, learning_rate=lr) for s, e, lr in ((1, 0.0, 1e-3), (2, 0.01, 3e-3), (3, 0.0, 3e-4))
    ]
    dirs = [root / f"m{k}" for k in range(3)]
    return root, cfgs, dirs, cpop.train_population(cfgs, dirs)


def test_each_member_equals_its_single_run(cartpole):
    root, cfgs, dirs, results = cartpole
    for k, cfg in enumerate(cfgs):
        single = root / f"single{k}"
        res = train(cfg, single)
        a, b = _state(dirs[k]), _state(single)
        _close(a["model"], b["model"])
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        assert a["counters"] == b["counters"] and a["lifecycle"] == b["lifecycle"]
        ma, mb = _metrics(dirs[k]), _metrics(single)
        assert ma.keys() == mb.keys()
        for key in ma:
            assert ma[key] == pytest.approx(mb[key], rel=1e-4, abs=1e-5), key
        assert results[k] == pytest.approx({**res, "train_seconds": results[k]["train_seconds"]}, rel=1e-6)
        assert read_info(dirs[k])["status"] == "finished"
    # a member's directory continues as a single run (more steps) just as the single run's own directory does
    longer = dataclasses.replace(cfgs[0], total_steps=512)
    for d in (dirs[0], root / "single0"):
        train(longer, d, resume=True)
    _close(_state(dirs[0])["model"], _state(root / "single0")["model"])
    assert _state(dirs[0])["lifecycle"]["iteration"] == 4


def test_a_member_directory_is_an_ordinary_run(cartpole):
    root, cfgs, dirs, results = cartpole
    res = policyopt.api.evaluate(dirs[2], save=False)
    assert res["return_mean"] == pytest.approx(results[2]["eval_return_mean"])


def test_box_actions_with_normalizers_equal_single_runs(tmp_path):
    cfgs = [
        _cfg(env="Pendulum-v1", seed=s, norm_obs=True, norm_reward=True, total_steps=256, checkpoint_every=0)
        for s in (4, 5)
    ]
    dirs = [tmp_path / f"m{k}" for k in range(2)]
    cpop.train_population(cfgs, dirs)
    train(cfgs[1], tmp_path / "single")
    a, b = _state(dirs[1]), _state(tmp_path / "single")
    _close(a["model"], b["model"])
    for part in ("obs_norm", "rew_norm"):
        _close(a[part], b[part], tol=1e-6)


@pytest.mark.parametrize("algo", ["a2c", "reinforce"])
def test_a2c_and_reinforce_members_equal_single_runs(tmp_path, algo):
    """RMSprop (A2C) and Monte-Carlo returns with batch advantage normalization (REINFORCE), two members."""
    cfgs = [
        _cfg(algo, seed=s, total_steps=256, checkpoint_every=0, learning_rate=lr) for s, lr in ((1, 7e-4), (2, 1e-3))
    ]
    cpop.train_population(cfgs, [tmp_path / "m0", tmp_path / "m1"])
    train(cfgs[1], tmp_path / "single")
    a, b = _state(tmp_path / "m1"), _state(tmp_path / "single")
    _close(a["model"], b["model"])
    _close(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]


def test_members_do_not_interact(tmp_path):
    base = [_cfg(seed=s, total_steps=256, checkpoint_every=0) for s in (1, 2)]
    other = [base[0], dataclasses.replace(base[1], seed=9, learning_rate=0.01)]
    cpop.train_population(base, [tmp_path / "a0", tmp_path / "a1"])
    cpop.train_population(other, [tmp_path / "b0", tmp_path / "b1"])
    a, b = _state(tmp_path / "a0"), _state(tmp_path / "b0")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert _metrics(tmp_path / "a0") == _metrics(tmp_path / "b0")


def test_target_kl_stops_each_member_on_its_own(tmp_path):
    sets = dict(total_steps=256, checkpoint_every=0, epochs=4, target_kl=0.01, lr_schedule="constant")
    cfgs = [_cfg(seed=1, learning_rate=1e-2, **sets), _cfg(seed=2, learning_rate=1e-5, **sets)]
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    cpop.train_population(cfgs, dirs)
    full = 2 * 4 * 2  # iterations x epochs x minibatches
    steps = [float(_state(d)["optimizer"]["state"][0]["step"]) for d in dirs]
    assert steps[0] < full and steps[1] == full
    for k, cfg in enumerate(cfgs):
        train(cfg, tmp_path / f"s{k}")
        a, b = _state(dirs[k]), _state(tmp_path / f"s{k}")
        assert float(b["optimizer"]["state"][0]["step"]) == steps[k]
        _close(a["model"], b["model"])
        _close(a["optimizer"]["state"][0], b["optimizer"]["state"][0])


def test_population_resume_after_a_kill_is_exact(tmp_path, monkeypatch):
    cfgs = [_cfg(seed=s, total_steps=768, checkpoint_every=256) for s in (1, 2)]
    ref = [tmp_path / "r0", tmp_path / "r1"]
    cpop.train_population(cfgs, ref)
    dirs = [tmp_path / "m0", tmp_path / "m1"]
    real = cpop.PopulationTrainer.collect

    def collect(self, pop):
        if pop.iteration == 5:
            raise KeyboardInterrupt
        return real(self, pop)

    monkeypatch.setattr(cpop.PopulationTrainer, "collect", collect)
    with pytest.raises(KeyboardInterrupt):
        cpop.train_population(cfgs, dirs)
    assert read_info(dirs[0])["status"] == "interrupted"
    monkeypatch.setattr(cpop.PopulationTrainer, "collect", real)
    cpop.train_population(cfgs, dirs, resume=True)
    for a, b in zip(dirs, ref):
        sa, sb = _state(a), _state(b)
        assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
        assert _metrics(a) == _metrics(b)


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_batched_networks_agree_with_the_plain_ones(env):
    import gymnasium as gym

    e = gym.make(env)
    torch.manual_seed(0)
    agents = [ActorCritic(e.observation_space.shape[0], e.action_space) for _ in range(3)]
    stacked = StackedActorCritic(agents)
    obs = torch.randn(3, 16, e.observation_space.shape[0])
    params, values = stacked(obs)
    (params.square().sum() + values.sum()).backward()
    for k, agent in enumerate(agents):
        p, v = agent(obs[k])
        assert torch.allclose(p, params[k], atol=1e-6) and torch.allclose(v, values[k], atol=1e-6)
        (p.square().sum() + v.sum()).backward()
        flat_grads = {
            name: torch.cat(
                [
                    t
                    for m in getattr(agent, name)
                    if isinstance(m, torch.nn.Linear)
                    for t in (m.weight.grad.t().reshape(-1), m.bias.grad)
                ]
            )
            for name in ("actor", "critic")
        }
        for name in ("actor", "critic"):
            assert torch.allclose(stacked.flat[name].grad[k], flat_grads[name], atol=1e-5)
        if agent.log_std is not None:
            assert torch.allclose(stacked.log_std.grad[k], agent.log_std.grad, atol=1e-5)
        assert stacked.member_state_dict(k).keys() == agent.state_dict().keys()
        _close(stacked.member_state_dict(k), agent.state_dict(), tol=0)


def test_unsupported_configs_get_a_one_line_reason():
    cfg = _cfg()
    assert cpop.population_unsupported([cfg, dataclasses.replace(cfg, seed=5, ent_coef=0.1)]) is None
    reason = cpop.population_unsupported([dataclasses.replace(cfg, trust_region="fixpo")])
    assert "'trust_region'='fixpo'" in reason and "none" in reason
    reason = cpop.population_unsupported([cfg, dataclasses.replace(cfg, gamma=0.5)])
    assert "'gamma'" in reason and "learning_rate" in reason
    with pytest.raises(policyopt.errors.UserError, match="trust_region"):
        cpop.train_population([dataclasses.replace(cfg, trust_region="mdpo")], [Path("never-created")])
    assert not Path("never-created").exists()


def test_the_array_cartpole_steps_bit_for_bit_as_gymnasium():
    import numpy as np

    from policyopt.control.array_envs import CartPoleArray
    from policyopt.control.envs import make_vec_env, seeds_for

    n, seeds = 8, seeds_for(3, 8, 1)
    ref, arr = make_vec_env("CartPole-v1", n, 0), CartPoleArray(n)
    obs, _ = ref.reset(seed=seeds)
    assert np.array_equal(obs, arr.reset(seed=seeds)[0])
    rng, ends = np.random.default_rng(0), 0
    for t in range(700):  # a balancing controller on half the envs reaches the 500-step limit
        a = np.where(np.arange(n) < 4, (obs[:, 2] + 0.3 * obs[:, 3] > 0).astype(np.int64), rng.integers(0, 2, n))
        r1, r2 = ref.step(a), arr.step(a)
        for x, y in zip(r1[:4], r2[:4]):
            assert np.array_equal(x, y) and x.dtype == y.dtype, t
        obs, ends = r1[0], ends + int(r1[3].sum())
    assert ends > 0  # truncations happened


def test_population_killed_at_a_random_moment_resumes_exactly(cli, tmp_path):
    """SIGKILL a `--seeds` population process at a random moment after its first checkpoint appears (possibly
    while the other members' checkpoints are being written); `--resume DIR --seeds` then ends where the
    uninterrupted population ends, member by member, bit for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time

    delay = float(torch.rand(1, generator=torch.Generator().manual_seed(int(time.time()))).item()) * 0.2
    sets = {**SMALL, "total_steps": 1024, "checkpoint_every": 64, "norm_obs": True, "tensorboard": False}
    args = ["--env", "CartPole-v1", "--seeds", "1-3", "--no-progress"]
    args += [a for k, v in sets.items() for a in ("--set", f"{k}={str(v).lower()}")]
    code, _, err = cli("train", "ppo", "--out", str(tmp_path / "ref"), *args)
    assert code == 0, err
    run = tmp_path / "killed"
    exe = Path(sys.executable).parent / "policyopt"
    proc = subprocess.Popen([str(exe), "train", "ppo", "--out", str(run), *args], stdout=subprocess.DEVNULL)
    first = run / "seed-1" / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(delay)
    assert proc.poll() is None, "the population finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    code, _, err = cli("train", "--resume", str(run), "--seeds", "1-3")
    assert code == 0, err
    for s in (1, 2, 3):
        a, b = _state(tmp_path / "ref" / f"seed-{s}"), _state(run / f"seed-{s}")
        assert a["counters"] == b["counters"]
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (s, k)
        assert _metrics(tmp_path / "ref" / f"seed-{s}") == _metrics(run / f"seed-{s}"), f"killed after {delay:.3f} s"
