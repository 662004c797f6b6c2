"""LM-only pure functions (policyopt.lm.algorithms) against hand-computed numbers."""

import math

import pytest
import torch

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.lm import algorithms as A
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig


def _one(logp, logp_old, adv):
    lp = torch.tensor([[logp]], requires_grad=True)
    b = PolicyBatch(lp, torch.tensor([[logp_old]]), torch.tensor([[adv]]), torch.ones(1, 1))
    return lp, b, Aggregator.for_batch("token-mean", b.mask)


def test_opmd_value_and_gradient():
    lp, b, agg = _one(-1.0, -1.2, 0.5)
    loss, _ = POLICY_LOSSES.get("opmd")(b, PolicyLossConfig(opmd_tau=1.0), agg)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 + 0.5 * 0.04)  # -A logp + tau/2 (logp - logp_old)^2
    assert lp.grad.item() == pytest.approx(-0.5 + 0.2)


def test_asymre_value_and_gradient():
    lp, b, agg = _one(-1.0, -1.2, 0.5)
    loss, _ = POLICY_LOSSES.get("asymre")(b, PolicyLossConfig(), agg)
    loss.backward()
    assert loss.item() == pytest.approx(0.6)  # -(A + delta) logp = -(0.5 + 0.1) * (-1.0); baseline lowered
    assert lp.grad.item() == pytest.approx(-0.6)
    loss, _ = POLICY_LOSSES.get("asymre")(b, PolicyLossConfig(asymre_delta=0.0), agg)
    assert loss.item() == pytest.approx(0.5)  # delta 0: plain REINFORCE on the centred reward


def test_beta_pdf_and_bnpo():
    assert A.beta_pdf(torch.tensor(0.5), 2, 2).item() == pytest.approx(1.5)
    adv = A.bnpo_advantages(torch.tensor([1.0, 0, 1, 1]), torch.zeros(4, dtype=torch.long), 2.0, 2.0)
    torch.testing.assert_close(adv, torch.tensor([0.25 / 1.125, -0.75 / 1.125, 0.25 / 1.125, 0.25 / 1.125]))
    a, b = A.bnpo_params(0.5, 0.05)  # method of moments: Beta(2, 2) -> 1 + 2/3
    assert (a, b) == (pytest.approx(5 / 3), pytest.approx(5 / 3))
    # with alpha = beta = 1 (uniform density) BNPO is the group-mean-centred (Dr. GRPO) advantage
    r, g = torch.tensor([1.0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 1, 1, 1])
    torch.testing.assert_close(
        A.bnpo_advantages(r, g, 1.0, 1.0),
        ADVANTAGES.get("dr_grpo")(AdvantageInputs(rewards=r, group_ids=g), AdvantageConfig())[0],
    )


def test_spo_tracker_update_and_advantage():
    t = A.SPOTracker(3)
    t.update(torch.tensor([0]), torch.tensor([1.0]), kl=0.0)  # rho clipped to 0.96
    assert t.value(torch.tensor([0])).item() == pytest.approx(1.48 / 1.96)
    assert t.value(torch.tensor([1])).item() == pytest.approx(0.5)
    t.update(torch.tensor([1]), torch.tensor([0.0]), kl=10.0)  # huge KL -> rho_min 0.875
    assert t.b[1].item() == pytest.approx(0.875 * 0.5 + 1)
    pr = t.priorities()
    assert pr[2] > pr[0]  # an unseen prompt (v = 0.5) is the most uncertain
    adv, _ = ADVANTAGES.get("spo")(
        AdvantageInputs(rewards=torch.tensor([1.0, 0.0]), values=torch.tensor([0.5, 0.5])), AdvantageConfig()
    )
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0]) / math.sqrt(2.0), atol=1e-5, rtol=1e-5)


def test_dynamic_sampling_and_overlong():
    keep = A.informative_groups(torch.tensor([1.0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    assert keep.tolist() == [False, False, True, True]
    pen = A.overlong_penalty(torch.tensor([4, 6, 8]), max_len=8, buffer=4)
    torch.testing.assert_close(pen, torch.tensor([0.0, -0.5, -1.0]))


def test_cppo_d3s_forking_seed():
    g = torch.zeros(4, dtype=torch.long)
    assert A.cppo_keep(torch.tensor([0.1, -0.9, 0.5, 0.2]), g, 2).tolist() == [False, True, True, False]
    assert A.d3s_select(torch.tensor([-1.0, 0.0, 0.1, 1.0]), g, 2).tolist() == [True, False, False, True]
    ent = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 9.0]])
    m = A.high_entropy_mask(
        ent, torch.tensor([[1.0, 1, 1], [1, 1, 0]]), 0.4
    )  # 5 tokens -> top 2, masked 9.0 ignored
    assert m.tolist() == [[0, 1, 0], [1, 0, 0]]
    s = A.semantic_entropy_scale(["1", "1", "2", "3", "5", "5"], torch.tensor([0, 0, 0, 0, 1, 1]), alpha=1.0)
    se = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    torch.testing.assert_close(s, torch.tensor([1 - se / math.log(4)] * 4 + [1.0, 1.0]))
