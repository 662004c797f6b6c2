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


def test_cppo_extra_prompts_and_fill():
    assert A.cppo_extra_prompts(2, 4, 2) == 2  # 8 slots / 2 kept per prompt = 4 prompts: 2 extra
    assert A.cppo_extra_prompts(2, 4, 3) == 1  # ceil(8 / 3) = 3 prompts
    assert A.cppo_extra_prompts(32, 8, 4) == 32 and A.cppo_extra_prompts(4, 4, 4) == 0
    # three groups of G = 4 with non-sorted ids: 7 is drawn first (nominal), then 2 and 9 (extra prompts)
    adv = torch.tensor([0.1, -0.9, 0.5, 0.2, 0.0, 0.3, -0.3, 0.8, -0.4, 0.6, 0.1, -0.7])
    g = torch.tensor([7, 7, 7, 7, 2, 2, 2, 2, 9, 9, 9, 9])
    # top-2 |A| per group: {1, 2}, {7, 5 (tie with 6, earlier wins)}, {11, 9}; filled in draw order
    assert A.cppo_fill(adv, g, 2, 5).tolist() == [1, 2, 5, 7, 11]  # last group cut short: its largest |A|
    assert A.cppo_fill(adv, g, 2, 3).tolist() == [1, 2, 7]  # draw order, not id order (that gives 1, 5, 7)
    assert A.cppo_fill(adv, g, 2, 100).tolist() == [1, 2, 5, 7, 9, 11]  # not enough groups: all kept ones
    # from rewards: GRPO advantages of [1, 0, 0, 0] are [1.5, -0.5, -0.5, -0.5] (Bessel std 0.5)
    r, g2 = torch.tensor([1.0, 0, 0, 0, 0, 1, 1, 1]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    a, _ = ADVANTAGES.get("grpo")(AdvantageInputs(rewards=r, group_ids=g2), AdvantageConfig(std_eps=0.0))
    torch.testing.assert_close(a, torch.tensor([1.5, -0.5, -0.5, -0.5, -1.5, 0.5, 0.5, 0.5]))
    assert A.cppo_fill(a, g2, 1, 2).tolist() == [0, 4]  # the lone success and the lone failure


def test_d3s_token_mask_and_schedule():
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])
    ent = torch.tensor([[0.5, 0.1, 0.9], [0.3, 0.2, 5.0]])
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    # |A| * H = [[0.5, 0.1, 0.9], [0.6, 0.4, (masked)]]; 5 valid tokens
    assert A.d3s_token_mask(adv, ent, mask, 0.4).tolist() == [[0, 0, 1], [1, 0, 0]]  # top 2: 0.9, 0.6
    assert A.d3s_token_mask(adv, ent, mask, 0.6).tolist() == [[1, 0, 1], [1, 0, 0]]  # ceil(3.0) = 3, not 4
    assert A.d3s_token_mask(adv, ent, mask, 1.0).tolist() == mask.tolist()
    # a rollout dropped at the sample level (row zeroed) neither counts nor gets tokens
    assert A.d3s_token_mask(adv, ent, mask * torch.tensor([[1.0], [0.0]]), 0.5).tolist() == [[1, 0, 1], [0, 0, 0]]
    assert A.d3s_token_mask(adv, ent, mask, 0.01).sum() == 1  # at least one token
    # linear schedule, 1-based steps: 0.2 at step 1, 1.0 at the last step
    assert A.d3s_keep_ratio(1, 5, 0.2, 1.0) == pytest.approx(0.2)
    assert A.d3s_keep_ratio(3, 5, 0.2, 1.0) == pytest.approx(0.6)
    assert A.d3s_keep_ratio(5, 5, 0.2, 1.0) == pytest.approx(1.0)
    assert A.d3s_keep_ratio(9, 5, 0.2, 1.0) == pytest.approx(1.0) and A.d3s_keep_ratio(1, 1, 0.3, 1.0) == 0.3


def test_d3s_token_mask_reaches_aggregation():
    adv = torch.tensor([[1.0, 1.0, 1.0], [-2.0, -2.0, 0.0]])
    ent = torch.tensor([[0.5, 0.1, 0.9], [0.3, 0.2, 5.0]])
    m = A.d3s_token_mask(adv, ent, torch.tensor([[1.0, 1, 1], [1, 1, 0]]), 0.4)  # [[0, 0, 1], [1, 0, 0]]
    lp = torch.full((2, 3), -1.0, requires_grad=True)
    b = PolicyBatch(lp, lp.detach(), adv, m)
    loss, _ = POLICY_LOSSES.get("ppo_clip")(b, PolicyLossConfig(), Aggregator.for_batch("seq-mean-token-mean", m))
    loss.backward()
    # ratio 1: d(-A r)/d logp = -A, one token per row, 2 rows: -A / 1 / 2; every other token gets exactly 0
    torch.testing.assert_close(lp.grad, torch.tensor([[0.0, 0.0, -0.5], [1.0, 0.0, 0.0]]))
