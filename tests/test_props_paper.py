"""PROPS under its authors' protocol: the fixed-budget sampling-error estimator, the paired on-policy
reference, fixed targets (``epochs=0``, ``init_from``) and the ``paper`` protocol's values."""

from __future__ import annotations

import csv

import gymnasium as gym
import pytest
import torch

from policyopt import algos
from policyopt.control.networks import ActorCritic
from policyopt.control.normalize import ObsNormalizer
from policyopt.control.onpolicy import train
from policyopt.control.sampling_error import (
    MLEFitConfig,
    OnPolicyReference,
    fit_empirical_policy,
    ramp_lr,
    sampled_kl,
)
from policyopt.errors import UserError
from policyopt.runs.checkpoint import load_checkpoint
from policyopt.runs.lifecycle import SeedStreams
from policyopt.runs.rundir import checkpoint_path


def _net(seed=0, hidden=(8, 8), space=None):
    torch.manual_seed(seed)
    return ActorCritic(1, space or gym.spaces.Discrete(3), hidden)


def test_ramp_lr_hand_computed_as_torch_linear_lr():
    # torch.optim.lr_scheduler.LinearLR(total_iters=4), default start_factor 1/3: lr x (1/3, 1/2, 2/3, 5/6, 1, 1)
    expected = [1 / 3, 1 / 2, 2 / 3, 5 / 6, 1.0, 1.0]
    assert [ramp_lr(3e-3, i, 4, 1 / 3) / 3e-3 for i in range(6)] == pytest.approx(expected)
    assert ramp_lr(3e-3, 1000, 2000, 1 / 3) == pytest.approx(2e-3)
    assert ramp_lr(3e-3, 5, 2000, 1.0) == 3e-3


def test_sampled_kl_hand_computed():
    logp_fit = torch.tensor([-0.1, -0.5, -2.0])
    logp_target = torch.tensor([-0.4, -0.5, -1.0])
    # valid pairs 0 and 2: ((-0.1 + 0.4) + (-2.0 + 1.0)) / 2 = -0.35
    assert sampled_kl(logp_fit, logp_target, torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(-0.35)


def test_fixed_budget_takes_exactly_n_steps_and_frozen_layers_do_not_move():
    net = _net(hidden=(8, 8))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    obs, act = torch.randn(40, 1), torch.randint(0, 3, (40,))
    g = torch.Generator().manual_seed(0)
    rng_state = torch.get_rng_state()
    cfg = MLEFitConfig(epochs=7, minibatches=3, freeze_layers=2, grad_clip=1.0, lr=1e-2)
    _, steps = fit_empirical_policy(net, net.dist, obs, act, None, cfg, g)
    assert steps == 21
    assert torch.equal(rng_state, torch.get_rng_state())  # shuffling drew from the given stream only
    after = net.state_dict()
    for k in ("actor.0.weight", "actor.0.bias", "actor.2.weight", "actor.2.bias", "critic.0.weight"):
        assert torch.equal(before[k], after[k]), k
    assert not torch.equal(before["actor.4.weight"], after["actor.4.weight"])
    with pytest.raises(UserError, match="freeze_layers"):
        fit_empirical_policy(_net(), _net().dist, obs, act, None, MLEFitConfig(epochs=1, freeze_layers=3))


def test_frozen_feature_fit_reaches_the_empirical_policy_and_its_sampled_kl():
    # two states, 4 samples each: A -> actions (0, 0, 0, 1), B -> (2, 2, 1, 1); only the output layer trains
    net = _net(hidden=(8,))
    target = _net(hidden=(8,))
    obs = torch.tensor([[1.0]] * 4 + [[-1.0]] * 4)
    act = torch.tensor([0, 0, 0, 1, 2, 2, 1, 1])
    cfg = MLEFitConfig(epochs=1000, freeze_layers=1, lr=0.1)
    fitted, steps = fit_empirical_policy(net, net.dist, obs, act, None, cfg)
    p = torch.softmax(fitted, -1)
    assert steps == 1000
    assert torch.allclose(p[0], torch.tensor([0.75, 0.25, 0.0]), atol=0.02)
    assert torch.allclose(p[4], torch.tensor([0.0, 0.5, 0.5]), atol=0.02)
    with torch.no_grad():
        logp_target = target.dist.log_prob(target.dist_params(obs), act)
    freq = torch.tensor([0.75, 0.75, 0.75, 0.25, 0.5, 0.5, 0.5, 0.5])  # empirical pi_D(a|s) of each pair
    expected = (freq.log() - logp_target).mean()
    got = sampled_kl(net.dist.log_prob(fitted, act), logp_target, torch.ones(8))
    assert got.item() == pytest.approx(expected.item(), abs=0.02)


def _cfg(**sets):
    base = {
        "env_id": "CartPole-v1",
        "num_envs": 2,
        "n_steps": 32,
        "minibatch_size": 32,
        "epochs": 2,
        "total_steps": 192,
        "log_every": 64,
        "eval_episodes": 1,
        "checkpoint_every": 0,
        "tensorboard": False,
        "progress": False,
        "props.every": 16,
        "sampling_error": "mle",
        "sampling_error_mle.every": 1,
        "sampling_error_mle.epochs": 3,
        "sampling_error_mle.minibatches": 2,
        "sampling_error_mle.freeze_layers": 2,
    }
    return algos.build_config("props", sets={**base, **sets})


def test_paired_reference_does_not_change_training(tmp_path):
    models, logged = [], []
    for ref in (False, True):
        run = tmp_path / str(ref)
        train(_cfg(sampling_error_ref=ref), run)
        models.append(load_checkpoint(checkpoint_path(run))["model"])
        logged.append([r for r in csv.DictReader(open(run / "metrics.csv")) if r["name"].startswith("diag/")])
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])
    names = {r["name"] for r in logged[1]}
    assert {"diag/sampling_error", "diag/sampling_error_ref", "diag/sampling_error_ref_fit_steps"} <= names
    # the trained-data estimate is the same number with or without the reference
    same = [r["value"] for r in logged[0] if r["name"] == "diag/sampling_error"]
    assert same == [r["value"] for r in logged[1] if r["name"] == "diag/sampling_error"]
    steps = [float(r["value"]) for r in logged[1] if r["name"] == "diag/sampling_error_ref_fit_steps"]
    assert steps and all(s == 6 for s in steps)  # 3 epochs x 2 minibatches


def test_reference_rerolls_the_recorded_policies_oldest_first():
    cfg = _cfg(n_steps=5, num_envs=2, minibatch_size=10)
    agent = ActorCritic(4, gym.spaces.Discrete(2), (8,))
    ref = OnPolicyReference(cfg, agent, 2, SeedStreams(1))
    for favoured in (0, 1, 1):  # a policy that always picks action `favoured` (logits +-50 via the output bias)
        with torch.no_grad():
            agent.actor[-1].weight.zero_()
            agent.actor[-1].bias.copy_(torch.tensor([50.0, -50.0] if favoured == 0 else [-50.0, 50.0]))
        ref.record(agent)
    assert len(ref.policies) == 2  # the oldest (favouring 0) dropped: the deque holds the update's b policies
    with torch.no_grad():
        agent.actor[-1].bias.copy_(torch.tensor([50.0, -50.0]))
        ref.record(agent)  # now: (1, 0)
    obs, act, valid = ref.collect(2, ObsNormalizer((4,), False, 10.0))
    assert obs.shape == (20, 4) and act.shape == (20,) and valid.shape == (20,)
    assert act[:10].eq(1).all() and act[10:].eq(0).all()
    _, act1, _ = ref.collect(1, ObsNormalizer((4,), False, 10.0))
    assert act1.shape == (10,) and act1.eq(0).all()
    ref.close()


def test_fixed_target_from_a_trained_run(tmp_path):
    src = tmp_path / "src"
    train(_cfg(sampling_error="off", total_steps=64), src)
    trained = load_checkpoint(checkpoint_path(src))["model"]
    run = tmp_path / "fixed"
    train(_cfg(sampling_error="off", epochs=0, init_from=str(src)), run)
    final = load_checkpoint(checkpoint_path(run))["model"]
    assert all(torch.equal(trained[k], final[k]) for k in trained)  # loaded, then never updated
    with pytest.raises(UserError, match="init_from"):
        train(_cfg(init_from=str(tmp_path / "missing")), tmp_path / "bad")


def test_paper_protocol_values():
    cfg = algos.build_config("props", sets={"protocol": "paper", "env_id": "CartPole-v1"})
    p, m = cfg.props, cfg.sampling_error_mle
    assert (cfg.num_envs, cfg.n_steps, cfg.props.buffer, cfg.minibatch_size, cfg.epochs) == (1, 2048, 2, 256, 16)
    assert (p.every, p.kl_coef, p.target_kl, p.clip, p.lr, p.epochs, p.minibatches) == (16, 0.0, 0.01, 0.3, 1e-3, 16, 4)
    assert (m.epochs, m.minibatches, m.freeze_layers, m.grad_clip, m.lr, m.kl) == (250, 4, 2, 1.0, 1e-3, "sampled")
    assert cfg.sampling_error == "mle" and cfg.sampling_error_ref
    hop = algos.build_config("props", sets={"protocol": "paper", "env_id": "Hopper-v5"})
    assert (hop.props.every, hop.props.kl_coef, hop.props.target_kl, hop.props.minibatch_size) == (256, 0.3, 0.05, 240)
    assert algos.build_config("props", sets={"env_id": "CartPole-v1"}).props.every == 64  # old preset unchanged


def test_props_minibatches_split_the_current_buffer():
    from policyopt.control.props import PropsSampler

    cfg = _cfg(**{"props.minibatches": 4, "props.epochs": 3, "props.target_kl": 10.0, "props.minibatch_size": 1})
    torch.manual_seed(0)
    agent = ActorCritic(4, gym.spaces.Discrete(2), (8,))
    rollout = {"obs": torch.randn(8, 2, 4), "act": torch.randint(0, 2, (8, 2)), "valid": torch.ones(8, 2)}
    sampler = PropsSampler(cfg, agent, agent.dist)
    # 6 steps x 2 envs = 12 samples -> minibatches of 3 -> 4 per epoch, 3 epochs (minibatch_size ignored)
    assert sampler._adapt(6, agent, rollout)["props/steps"].item() == 12
