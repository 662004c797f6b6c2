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
