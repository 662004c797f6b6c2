"""Off-policy loss math: MDPO-off reduces to SAC, tanh-Gaussian density, C51, temperature, Polyak."""

from __future__ import annotations

import math

import pytest
import torch

from policyopt.losses import actor_critic as L


def test_mdpo_off_reduces_to_sac_actor_loss_at_zero_proximity_weight():
    torch.manual_seed(0)
    mean = torch.randn(32, 3, requires_grad=True)
    log_std = torch.randn(32, 3, requires_grad=True)
    noise = torch.randn(32, 3)
    q = torch.randn(32)

    def grads(fn):
        a, logp = L.tanh_gaussian_sample(mean, log_std, noise)
        loss = fn(logp)
        g = torch.autograd.grad(loss, (mean, log_std))
        return loss.detach(), g

    logp_old = torch.randn(32)
    sac, g_sac = grads(lambda logp: L.sac_actor_loss(logp, q, 0.2))
    mdpo0, g_m0 = grads(lambda logp: L.mdpo_off_actor_loss(logp, logp_old, q, 0.2, 0.0))
    mdpo1, g_m1 = grads(lambda logp: L.mdpo_off_actor_loss(logp, logp_old, q, 0.2, 1.0))
    torch.testing.assert_close(mdpo0, sac, rtol=0, atol=0)
    for a, b in zip(g_m0, g_sac):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(mdpo1, sac)  # the proximity term does change the loss


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(1)
    mean, log_std, noise = torch.randn(64, 2), torch.randn(64, 2) * 0.5, torch.randn(64, 2)
    a, logp = L.tanh_gaussian_sample(mean, log_std, noise)
    d = torch.float64  # the naive reference log(1 - tanh(u)^2) needs double precision
    base = torch.distributions.Normal(mean.to(d), log_std.to(d).exp())
    u = mean.to(d) + log_std.to(d).exp() * noise.to(d)
    ref = base.log_prob(u).sum(-1) - torch.log(1 - torch.tanh(u).pow(2)).sum(-1)
    torch.testing.assert_close(a, torch.tanh(u).float())
    torch.testing.assert_close(logp, ref.float(), atol=1e-3, rtol=1e-4)


def test_c51_projection_hand_example_and_mean():
    # support {0, 1, 2}; all mass on z=1; r=0.5, discount 1 -> 1.5 splits half/half between atoms 1 and 2
    p = torch.tensor([[0.0, 1.0, 0.0]])
    out = L.c51_projection(p, torch.tensor([0.5]), torch.tensor([0.0]), 1.0, 0.0, 2.0)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5, 0.5]]))
    # terminated: all mass on r; exactly on an atom
    out = L.c51_projection(p, torch.tensor([2.0]), torch.tensor([1.0]), 1.0, 0.0, 2.0)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 1.0]]))
    # random: mass conserved and the mean is r + discount * E[Z] when inside the support
    torch.manual_seed(2)
    probs = torch.randn(2, 16, 51).softmax(-1)
    r, disc = torch.rand(16) - 0.5, 0.9
    out = L.c51_projection(probs, r, torch.zeros(16), disc, -10.0, 10.0)
    z = torch.linspace(-10, 10, 51)
    torch.testing.assert_close(out.sum(-1), torch.ones(2, 16))
    torch.testing.assert_close((out * z).sum(-1), r + disc * (probs * z).sum(-1), atol=1e-4, rtol=0)


def test_targets_and_temperature_and_polyak():
    r, term = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])
    next_q = torch.tensor([[3.0, 3.0], [2.0, 5.0]])
    torch.testing.assert_close(L.clipped_double_q_target(r, term, 0.5, next_q), torch.tensor([2.0, 1.0]))
    torch.testing.assert_close(
        L.soft_q_target(r, term, 0.5, next_q, torch.tensor([-1.0, 0.0]), 2.0),
        torch.tensor([1 + 0.5 * (2 + 2), 1.0]),
    )
    # temperature: entropy above target (logp + H < 0) -> gradient lowers log alpha
    log_alpha = torch.zeros((), requires_grad=True)
    L.temperature_loss(log_alpha, torch.tensor([-3.0]), target_entropy=-1.0).backward()
    assert log_alpha.grad.item() == pytest.approx(4.0)  # d/dlog_alpha of -la * (logp + H) = 4 > 0
    tgt, src = [torch.zeros(3)], [torch.ones(3)]
    L.polyak_update(tgt, src, 0.25)
    torch.testing.assert_close(tgt[0], torch.full((3,), 0.25))
    mu = torch.zeros(1000, 1)
    a = L.smoothed_target_action(mu, 0.2, 0.3)
    assert a.abs().max() <= 0.3 and math.isclose(a.std().item(), 0.2, rel_tol=0.3)


def test_ou_step_by_hand_and_its_stationary_variance():
    x = torch.tensor([1.0, -2.0])
    out = L.ou_step(x, 0.5, torch.tensor([2.0, 0.0]))
    # x - 0.15 * x * 0.01 + 0.5 * sqrt(0.01) * noise
    torch.testing.assert_close(out, torch.tensor([1.0 - 0.0015 + 0.1, -2.0 + 0.003]))
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(20_000)
    for _ in range(3000):  # ~4.5 relaxation times (1 / (theta dt) = 667 steps)
        x = L.ou_step(x, 0.5, torch.randn(x.shape, generator=gen))
    a = 1 - 0.15 * 0.01
    stationary = 0.25 * 0.01 / (1 - a**2)  # variance of x' = a x + s e
    assert abs(x.var().item() / stationary - 1) < 0.05


# ---- the registered critic and actor losses -----------------------------------------------------------
def _critic_batch(next_out, weight, **kw):
    b = dict(
        reward=torch.tensor([1.0, 1.0, 0.0]),
        terminated=torch.tensor([0.0, 1.0, 0.0]),
        discount=torch.full((3,), 0.5),
        weight=weight,
        next_out=next_out,
    )
    return L.CriticBatch(**{**b, **kw})


def test_scalar_critic_losses_by_hand_with_the_autoreset_sample_masked():
    out = torch.tensor([[1.0, 2.0, 50.0], [3.0, 4.0, -50.0]]).unsqueeze(-1)  # (E=2, B=3, 1); sample 3 masked
    next_out = torch.tensor([[4.0, 9.0, 0.0], [2.0, 9.0, 0.0]]).unsqueeze(-1)
    w = torch.tensor([0.5, 0.5, 0.0])
    # clipped double Q: y = (1 + 0.5 * min(4, 2), 1 (terminated)) = (2, 1)
    loss, st = L.CRITIC_LOSSES.get("clipped_double_q")(out, _critic_batch(next_out, w))
    # 0.5 * sum_e sum_b w_b (q - y)^2 = 0.5 * 0.5 * ((1-2)^2 + (2-1)^2 + (3-2)^2 + (4-1)^2) = 3
    assert loss.item() == pytest.approx(3.0)
    assert st["q_mean"].item() == pytest.approx((1 + 2 + 50 + 3 + 4 - 50) / 6)
    # soft Q: y = 1 + 0.5 * (2 - 0.5 * (-2)) = 2.5 for the first sample, 1 for the terminated one
    b = _critic_batch(next_out, w, next_logp=torch.tensor([-2.0, 7.0, 0.0]), alpha=0.5)
    loss, _ = L.CRITIC_LOSSES.get("soft_q")(out, b)
    assert loss.item() == pytest.approx(0.25 * (1.5**2 + 1 + 0.5**2 + 9))


def test_c51_loss_is_masked_cross_entropy_summed_over_the_ensemble():
    logits = torch.zeros(2, 3, 2)  # uniform over 2 atoms: -log q = log 2
    target = torch.tensor([[1.0, 0.0], [0.3, 0.7], [0.0, 1.0]])
    w = torch.tensor([0.5, 0.5, 0.0])
    assert L.c51_loss(logits, target, w).item() == pytest.approx(2 * math.log(2))
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # q = (1/4, 3/4); unweighted = batch mean
    ce = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert L.c51_loss(logits, torch.tensor([[0.5, 0.5]])).item() == pytest.approx(ce)


def test_c51_twin_pick_after_projection_differs_from_before_where_the_support_clips():
    # support {0,..,4}, r = 2, discount 1. A: mass 1/2 at 0 and 4 (E = 2); B: 1/2 at 1 and 2 (E = 1.5).
    # Before projection B has the smaller mean. Projected: A -> 1/2 at 2 and 1/2 at 6 clipped to 4 (mean 3),
    # B -> 1/2 at 3 and 4 (mean 3.5): after projection A has the smaller mean.
    z = torch.linspace(0, 4, 5)
    probs = torch.tensor([[[0.5, 0, 0, 0, 0.5]], [[0, 0.5, 0.5, 0, 0]]])  # (E=2, B=1, K=5)
    args = (probs, z, torch.tensor([2.0]), torch.tensor([0.0]), 1.0, 0.0, 4.0)
    torch.testing.assert_close(L.c51_min_projected_target(*args), torch.tensor([[0, 0, 0.5, 0, 0.5]]))
    torch.testing.assert_close(L.c51_min_next_target(*args), torch.tensor([[0, 0, 0, 0.5, 0.5]]))
    # through the registry, masked by the weights
    b = L.CriticBatch(
        torch.tensor([2.0]),
        torch.tensor([0.0]),
        torch.ones(1),
        torch.ones(1),
        probs.log(),
        support=z,
        v_min=0.0,
        v_max=4.0,
    )
    logits = torch.zeros(2, 1, 5)  # uniform: the cross-entropy is log 5 whatever the target
    assert L.CRITIC_LOSSES.get("c51")(logits, b)[0].item() == pytest.approx(2 * math.log(5))
    assert L.CRITIC_LOSSES.get("c51")(logits, b)[1]["q_mean"].item() == pytest.approx(2.0)


def test_pick_member_ties():
    dists = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    values = torch.tensor([[0.5], [0.5]])
    torch.testing.assert_close(L.pick_member(dists, values), dists[0])
    torch.testing.assert_close(L.pick_member(dists, values, last_on_ties=True), dists[1])
    values = torch.tensor([[0.4], [0.5]])  # strictly smaller first member wins either way
    torch.testing.assert_close(L.pick_member(dists, values, last_on_ties=True), dists[0])


def test_actor_objectives_by_hand():
    q = torch.tensor([[1.0, 5.0], [3.0, 2.0]])  # (E=2, B=2)
    logp = torch.tensor([-1.0, 1.0])
    get = L.ACTOR_LOSSES.get
    assert get("deterministic")(L.ActorBatch(q[:1]))[0].item() == pytest.approx(-3.0)  # -mean Q_1
    assert get("deterministic_min")(L.ActorBatch(q))[0].item() == pytest.approx(-1.5)  # -mean min(1,3), min(5,2)
    loss, st = get("sac")(L.ActorBatch(q, logp, alpha=0.5))
    assert loss.item() == pytest.approx(((0.5 * -1 - 1) + (0.5 * 1 - 2)) / 2)
    assert st["entropy"].item() == pytest.approx(0.0)
    loss, _ = get("mdpo_off")(L.ActorBatch(q, logp, logp_old=torch.tensor([0.0, 0.0]), alpha=0.5, kl_coef=2.0))
    assert loss.item() == pytest.approx(((2 * -1 + 0.5 * -1 - 1) + (2 * 1 + 0.5 * 1 - 2)) / 2)
    meta = L.ACTOR_LOSSES.meta
    assert meta("deterministic")["q_members"] == "first" and meta("deterministic_min")["q_members"] == "all"
    assert meta("mdpo_off")["needs"] == ("logp_old",) and meta("sac")["temperature"]
    assert {meta(n)["actor"] for n in L.ACTOR_LOSSES} == {"gaussian", "deterministic"}
    assert {L.CRITIC_LOSSES.meta(n)["critic"] for n in L.CRITIC_LOSSES} == {"q", "c51"}


def test_gaussian_log_ratio_matches_torch_distributions_and_the_mdpo_weight():
    torch.manual_seed(3)
    mean, log_std, mean_old, log_std_old = (torch.randn(8, 2) * 0.5 for _ in range(4))
    noise = torch.randn(8, 2)
    u = mean + log_std.exp() * noise
    ref = (
        torch.distributions.Normal(mean, log_std.exp()).log_prob(u)
        - torch.distributions.Normal(mean_old, log_std_old.exp()).log_prob(u)
    ).sum(-1)
    torch.testing.assert_close(L.gaussian_log_ratio(noise, log_std, mean_old, log_std_old, u), ref)
    assert L.mdpo_kl_weight(2.0, 0, 100, True) == pytest.approx(2.0)
    assert L.mdpo_kl_weight(2.0, 50, 100, True) == pytest.approx(4.0)  # t_k = 1/2
    assert L.mdpo_kl_weight(2.0, 99, 100, True) == pytest.approx(20.0)  # t_k floored at 0.1
    assert L.mdpo_kl_weight(2.0, 99, 100, False) == pytest.approx(2.0)
