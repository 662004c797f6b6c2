"""FastTD3's three choices, each against a hand-written computation of the update it makes, and the TD3
conventions behind the config options (target_action_from, actor_loss, critic_loss)."""

from __future__ import annotations

import pytest
import torch

from policyopt import algos
from policyopt.control.offpolicy import Learner
from policyopt.control.replay import Batch
from policyopt.losses import actor_critic as L

OBS, ACT, B = 3, 2, 16


def _learner(**sets) -> Learner:
    cfg = algos.build_config(
        "fasttd3",
        sets={
            "actor_hidden": (8, 8),
            "critic_hidden": (8, 8),
            "num_atoms": 11,
            "v_min": -5.0,
            "v_max": 5.0,
            "tensorboard": False,
            **sets,
        },
        flags={"env_id": "Pendulum-v1"},
    )
    torch.manual_seed(0)
    ln = Learner(cfg, OBS, ACT, total_actor_updates=10, device="cpu")
    with torch.no_grad():  # make the actor differ from the copy its target would start from
        for p in ln.actor.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return ln


def _batch() -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(
        torch.randn(B, OBS, generator=g),
        torch.rand(B, ACT, generator=g) * 2 - 1,
        torch.randn(B, generator=g),
        torch.randn(B, OBS, generator=g),
        torch.zeros(B),
        torch.full((B,), 0.99),
        torch.ones(B),
    )


def _expected_critic_loss(ln: Learner, b: Batch, smoothing_net, target_fn) -> float:
    """The critic loss written out: smoothed action of ``smoothing_net``, the target critic's distributions,
    the twin chosen by ``target_fn``, cross-entropy summed over the twins, batch mean."""
    cfg = ln.cfg
    with torch.no_grad():
        torch.manual_seed(7)
        mu = smoothing_net(b.next_obs)
        next_a = (
            mu + (torch.randn(mu.shape) * cfg.target_noise).clamp(-cfg.target_noise_clip, cfg.target_noise_clip)
        ).clamp(-1, 1)
        probs = ln.critic_t(torch.cat([b.next_obs, next_a], -1)).softmax(-1)
        z = torch.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms)
        target = target_fn(probs, z, b.reward, b.terminated, b.discount, cfg.v_min, cfg.v_max)
        logq = ln.critic(torch.cat([b.obs, b.action], -1)).log_softmax(-1)
        return float(-(target * logq).sum(-1).mean(-1).sum())


def _critic_loss(ln: Learner, b: Batch) -> float:
    torch.manual_seed(7)
    return float(ln._critic_step(b, b.obs, b.next_obs, 0.0)["loss/critic"])


def test_fasttd3_smooths_the_target_action_of_the_online_actor():
    ln, b = _learner(), _batch()
    assert ln.cfg.target_action_from == "online" and ln.actor_t is None
    expected = _expected_critic_loss(ln, b, ln.actor, L.c51_min_projected_target)
    assert _critic_loss(ln, b) == pytest.approx(expected, rel=1e-6)


def test_td3_convention_smooths_the_target_action_of_the_target_actor():
    ln, b = _learner(target_action_from="target", critic_loss="c51_min_next", actor_loss="deterministic"), _batch()
    assert ln.actor_t is not None
    expected = _expected_critic_loss(ln, b, ln.actor_t, L.c51_min_next_target)
    online = _expected_critic_loss(ln, b, ln.actor, L.c51_min_next_target)
    assert expected != pytest.approx(online, rel=1e-6)  # the two actors do differ here
    assert _critic_loss(ln, b) == pytest.approx(expected, rel=1e-6)


def _actor_loss(ln: Learner, obs) -> float:
    return float(ln._actor_step(obs, 0.0, 0.0)["loss/actor"])


def test_fasttd3_trains_the_actor_on_the_min_of_the_twins_and_td3_on_the_first():
    obs = _batch().obs
    for actor_loss, reduce in (("deterministic_min", lambda q: q.min(0).values), ("deterministic", lambda q: q[0])):
        ln = _learner(actor_loss=actor_loss)
        with torch.no_grad():
            q = ln.critic.values(torch.cat([obs, ln.actor(obs)], -1))  # (2, B) expected values of the twins
        assert not torch.equal(q.min(0).values, q[0])  # the twins disagree on some states
        expected = -float(reduce(q).mean())
        assert _actor_loss(ln, obs) == pytest.approx(expected, rel=1e-6)


def test_fasttd3_preset_defaults_and_the_td3_convention_options():
    fast, td3 = algos.build_config("fasttd3"), algos.build_config("td3")
    assert (fast.target_action_from, fast.actor_loss, fast.critic_loss) == ("online", "deterministic_min", "c51")
    assert (td3.target_action_from, td3.actor_loss, td3.critic_loss) == ("target", "deterministic", "clipped_double_q")
