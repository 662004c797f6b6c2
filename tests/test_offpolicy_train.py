"""Off-policy trainer: exact resume, CLI train/eval/resume, presets, and SAC/TD3 learning Pendulum-v1."""

from __future__ import annotations

import json

import pytest
import torch

from policyopt import algos
from policyopt.runs.checkpoint import load_checkpoint
from policyopt.runs.rundir import checkpoint_path

TINY = dict(
    actor_hidden=(16, 16),
    critic_hidden=(16, 16),
    batch_size=32,
    learning_starts=64,
    tensorboard=False,
    progress=False,
    eval_episodes=2,
)


def _cfg(algo, **kw):
    return algos.build_config(algo, sets={**TINY, **kw}, flags={"env_id": "Pendulum-v1"})


@pytest.mark.parametrize(
    "algo, extra",
    [
        ("sac", {"n_step": 3}),
        ("fasttd3", {"num_envs": 4, "batch_size": 64}),
        ("mdpo_off", {"mdpo_refresh_every": 20, "mdpo_anneal": False}),
    ],
)
def test_resume_is_exact(tmp_path, algo, extra):
    """Kill/restart equivalence: stopping at a checkpoint boundary (simulated by a shorter budget) and
    resuming gives bit-identical parameters, targets and buffer. (MDPO's step-size annealing depends on the
    total budget, which a real kill keeps; the shorter-budget simulation needs it off.)"""
    from policyopt.control.offpolicy import train

    full = _cfg(algo, total_steps=400, checkpoint_every=200, **extra)
    train(full, tmp_path / "a")
    train(_cfg(algo, total_steps=200, checkpoint_every=200, **extra), tmp_path / "b")  # "killed" at 200
    train(full, tmp_path / "b", resume=True)
    a, b = load_checkpoint(checkpoint_path(tmp_path / "a")), load_checkpoint(checkpoint_path(tmp_path / "b"))
    assert a["counters"] == b["counters"] and a["counters"]["num_updates"] > 0
    for key in ("actor", "critic", "critic_target"):
        for name, t in a[key].items():
            torch.testing.assert_close(t, b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")
    torch.testing.assert_close(a["buffer"]["obs"], b["buffer"]["obs"], rtol=0, atol=0)
    # and it really trained: parameters moved from the step-200 checkpoint
    assert a["counters"]["global_step"] == 400


def test_cli_train_eval_resume(cli, tmp_path):
    run = tmp_path / "run"
    sets = [
        "--set",
        "actor_hidden=[16,16]",
        "--set",
        "critic_hidden=[16,16]",
        "--set",
        "tensorboard=false",
        "--set",
        "learning_starts=50",
        "--set",
        "eval_episodes=2",
        "--set",
        "checkpoint_every=100",
    ]
    code, out, err = cli(
        "train",
        "sac",
        "--env",
        "Pendulum-v1",
        "--total-steps",
        "200",
        "--no-progress",
        "--out",
        str(run),
        *sets,
    )
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["steps"] == 200
    code, out, err = cli("eval", str(run), "--episodes", "2")
    assert code == 0, err
    res = json.loads(out)
    assert res["episodes"] == 2 and -2000 < res["return_mean"] < 0
    code, out, err = cli("train", "--resume", str(run), "--total-steps", "300", "--no-progress")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["steps"] == 300
    code, _, err = cli("train", "td3", "--env", "CartPole-v1", "--out", str(tmp_path / "x"), "--no-progress")
    assert code == 2 and "Box" in err  # discrete actions: one-line user error


def test_presets_registered_with_env_presets():
    for name in ("sac", "td3", "ddpg", "fasttd3", "mdpo_off"):
        algo = algos.get(name)
        assert algo.family == "control/off-policy"
        for env in ("Pendulum-v1", "MountainCarContinuous-v0", "HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"):
            assert env in algo.presets, (name, env)
            algos.build_config(name, flags={"env_id": env})  # resolves and validates
    ddpg = algos.build_config("ddpg")
    assert ddpg.n_critics == 1 and ddpg.target_noise == 0 and ddpg.policy_delay == 1
    fast = algos.build_config("fasttd3")
    assert fast.critic == "c51" and fast.num_envs > 1 and fast.batch_size >= 1024


@pytest.mark.slow
@pytest.mark.parametrize("algo, steps", [("sac", 8000), ("td3", 10000)])
@pytest.mark.parametrize("seed", [1, 2])
def test_learns_pendulum(tmp_path, algo, steps, seed):
    from policyopt.control.offpolicy import train

    cfg = algos.build_config(
        algo,
        sets={"tensorboard": False, "progress": False, "checkpoint_every": 0},
        flags={"env_id": "Pendulum-v1", "seed": seed, "total_steps": steps},
    )
    res = train(cfg, tmp_path)
    assert res["eval_return_mean"] >= -250, res


@pytest.mark.parametrize(
    "algo, sets, words",
    [
        ("sac", {"actor_loss": "deterministic"}, ["actor='deterministic'", "mdpo_off, sac"]),
        ("td3", {"critic": "c51"}, ["'critic_loss'='clipped_double_q'", "c51, c51_min_next"]),
        ("td3", {"critic_loss": "soft_q"}, ["actor='deterministic'", "clipped_double_q"]),
        ("sac", {"mdpo_kl_coef": 0.5}, ["mdpo_off", "'sac'"]),
    ],
)
def test_objectives_must_fit_the_networks(algo, sets, words):
    from policyopt.errors import UserError

    with pytest.raises(UserError) as e:
        algos.build_config(algo, sets=sets)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)


def test_critic_heads_values_and_members():
    from policyopt.control.networks import C51Ensemble, QEnsemble

    torch.manual_seed(0)
    x = torch.randn(5, 4)
    q = QEnsemble(3, 4, (8,), "relu")
    torch.testing.assert_close(q.values(x), q(x)[..., 0])
    torch.testing.assert_close(q.values(x, members=slice(0, 1)), q.values(x)[:1])
    c = C51Ensemble(2, 4, (8,), "relu", v_min=-1.0, v_max=1.0, num_atoms=3)
    p = c(x).softmax(-1)
    torch.testing.assert_close(c.values(x), p[..., 2] - p[..., 0])  # support (-1, 0, 1)
    assert "support" not in c.state_dict()  # derived from the config, not stored
