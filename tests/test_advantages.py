"""Advantage estimators against numbers worked out by hand.

Every expected value below is written as explicit arithmetic (the recursion expanded step by step),
never by calling a re-implementation of the function under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.advantages import functional as F
from policyopt.errors import UnknownChoice

D = torch.float64


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def close(a: torch.Tensor, b, atol: float = 1e-9) -> None:
    b = b if isinstance(b, torch.Tensor) else t(b)
    torch.testing.assert_close(a.to(D), b.to(D), atol=atol, rtol=0)


# ============================================================================ GAE
# 3 steps (rows) x 2 envs (columns), gamma = 0.9, lam = 0.8, so gamma * lam = 0.72.
#
# env 0: no episode boundary; the rollout ends after step 2 and is bootstrapped with next_values[2].
#   r = [1, 0, 2], V = [0.5, 1.0, 1.5], next_values = [1.0, 1.5, 2.0]
#   delta_2 = 2 + 0.9 * 2.0 - 1.5 = 2.3
#   delta_1 = 0 + 0.9 * 1.5 - 1.0 = 0.35
#   delta_0 = 1 + 0.9 * 1.0 - 0.5 = 1.4
#   A_2 = 2.3
#   A_1 = 0.35 + 0.72 * 2.3   = 0.35 + 1.656   = 2.006
#   A_0 = 1.4  + 0.72 * 2.006 = 1.4  + 1.44432 = 2.84432
#   returns = A + V = [3.34432, 3.006, 3.8]
#
# env 1: terminated at step 0 (no bootstrap), truncated at step 1 (bootstrap from the value 4.0 of
# the true final observation, but A does not flow back across the boundary), step 2 starts anew.
#   r = [1, 1, 1], V = [2.0, 0.5, 1.0], next_values = [3.0 (must be ignored), 4.0, 0.5]
#   delta_2 = 1 + 0.9 * 0.5 - 1.0 = 0.45        A_2 = 0.45
#   delta_1 = 1 + 0.9 * 4.0 - 0.5 = 4.1         A_1 = 4.1   (done_1 = 1: no "+ 0.72 * A_2")
#   delta_0 = 1 + 0 * 3.0   - 2.0 = -1.0        A_0 = -1.0  (done_0 = 1)
#   returns = [1.0, 4.6, 1.45]
GAE_R = [[1.0, 1.0], [0.0, 1.0], [2.0, 1.0]]
GAE_V = [[0.5, 2.0], [1.0, 0.5], [1.5, 1.0]]
GAE_NV = [[1.0, 3.0], [1.5, 4.0], [2.0, 0.5]]
GAE_TERM = [[0, 1], [0, 0], [0, 0]]
GAE_TRUNC = [[0, 0], [0, 1], [0, 0]]
GAE_ADV = [[2.84432, -1.0], [2.006, 4.1], [2.3, 0.45]]
GAE_RET = [[3.34432, 1.0], [3.006, 4.6], [3.8, 1.45]]


def _gae_inputs():
    return (
        t(GAE_R),
        t(GAE_V),
        t(GAE_NV),
        torch.tensor(GAE_TERM, dtype=torch.bool),
        torch.tensor(GAE_TRUNC, dtype=torch.bool),
    )


def test_gae_hand_example_termination_truncation_and_rollout_end():
    adv, ret = F.gae(*_gae_inputs(), gamma=0.9, lam=0.8)
    close(adv, GAE_ADV)
    close(ret, GAE_RET)


def test_gae_terminated_ignores_next_value_truncated_uses_it():
    r, v, nv, term, trunc = _gae_inputs()
    nv2 = nv.clone()
    nv2[0, 1] = 1000.0  # next value of a terminated step: must not matter
    adv, _ = F.gae(r, v, nv2, term, trunc, 0.9, 0.8)
    close(adv, GAE_ADV)
    nv3 = nv.clone()
    nv3[1, 1] = 5.0  # next value of the truncated step: bootstrapped, A_1 = 1 + 0.9*5 - 0.5 = 5.0
    adv, _ = F.gae(r, v, nv3, term, trunc, 0.9, 0.8)
    assert adv[1, 1].item() == pytest.approx(5.0)
    assert adv[0, 1].item() == pytest.approx(-1.0)  # but it does not leak across the boundary
    assert adv[2, 1].item() == pytest.approx(0.45)


def test_gae_accepts_float_flags():
    r, v, nv, term, trunc = _gae_inputs()
    adv, _ = F.gae(r, v, nv, term.to(D), trunc.to(D), 0.9, 0.8)
    close(adv, GAE_ADV)


def test_gae_lambda_zero_is_one_step_td():
    # lam = 0: A_t = delta_t, i.e. the deltas written out above.
    adv, _ = F.gae(*_gae_inputs(), gamma=0.9, lam=0.0)
    close(adv, [[1.4, -1.0], [0.35, 4.1], [2.3, 0.45]])


# Gymnasium next-step autoreset: step 1 terminates, step 2 is the (invalid) reset transition whose
# reward / values are garbage, step 3 is the first step of the next episode. gamma=0.9, lam=0.8.
#   r = [1, 2, 99, 1], V = [1, 1, 50, 2], next_values = [1, 7, 100, 3], valid = [1, 1, 0, 1]
#   A_3 = 1 + 0.9 * 3 - 2 = 1.7
#   A_2 = 0                               (invalid)
#   A_1 = 2 + 0 * 7 - 1 = 1.0             (terminated)
#   A_0 = (1 + 0.9 * 1 - 1) + 0.72 * 1.0 = 0.9 + 0.72 = 1.62
VALID_R = [[1.0], [2.0], [99.0], [1.0]]
VALID_V = [[1.0], [1.0], [50.0], [2.0]]
VALID_NV = [[1.0], [7.0], [100.0], [3.0]]
VALID = [[1], [1], [0], [1]]


def test_gae_valid_mask_zeroes_invalid_step():
    adv, ret = F.gae(
        t(VALID_R), t(VALID_V), t(VALID_NV), t([[0], [1], [0], [0]]), t([[0]] * 4), 0.9, 0.8, valid=t(VALID)
    )
    close(adv, [[1.62], [1.0], [0.0], [1.7]])
    close(ret, [[2.62], [2.0], [50.0], [3.7]])  # returns = A + V, also at the invalid step


def test_gae_invalid_step_does_not_leak_even_without_done():
    # Same data, but no terminated flag before the invalid step: A_3 must still not flow backwards
    # through the invalid step 2.
    #   A_1 = (2 + 0.9 * 7 - 1) + 0.72 * A_2 = 7.3 + 0.72 * 0 = 7.3
    #   A_0 = 0.9 + 0.72 * 7.3 = 0.9 + 5.256 = 6.156
    adv, _ = F.gae(t(VALID_R), t(VALID_V), t(VALID_NV), t([[0]] * 4), t([[0]] * 4), 0.9, 0.8, valid=t(VALID))
    close(adv, [[6.156], [7.3], [0.0], [1.7]])


# ======================================================================= MC returns
# gamma = 0.9, 4 steps, 3 envs.
# env 0: truncated at step 1 (bootstrap with 10), rollout end bootstrapped with 20.
#   G_3 = 4 + 0.9 * 20   = 22
#   G_2 = 3 + 0.9 * 22   = 22.8
#   G_1 = 2 + 0.9 * 10   = 11      (not 2 + 0.9 * G_2)
#   G_0 = 1 + 0.9 * 11   = 10.9
# env 1: terminated at step 2, rollout end bootstrapped with 2.
#   G_3 = 1 + 0.9 * 2 = 2.8;  G_2 = 1;  G_1 = 1 + 0.9 * 1 = 1.9;  G_0 = 1 + 0.9 * 1.9 = 2.71
# env 2: terminated at the last step: no bootstrap even though next_values[3] = 100.
#   G_3 = 1;  G_2 = 0.9;  G_1 = 0.81;  G_0 = 0.729
MC_R = [[1.0, 1.0, 0.0], [2.0, 1.0, 0.0], [3.0, 1.0, 0.0], [4.0, 1.0, 1.0]]
MC_NV = [[5.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [20.0, 2.0, 100.0]]
MC_TERM = [[0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]]
MC_TRUNC = [[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]
MC_G = [[10.9, 2.71, 0.729], [11.0, 1.9, 0.81], [22.8, 1.0, 0.9], [22.0, 2.8, 1.0]]


def test_discounted_returns_truncation_termination_rollout_end():
    g = F.discounted_returns(t(MC_R), t(MC_NV), t(MC_TERM), t(MC_TRUNC), 0.9)
    close(g, MC_G)


def test_discounted_returns_valid_mask():
    # env 0 of the autoreset example above: G_3 = 1 + 0.9*3 = 3.7, G_2 = 0 (invalid),
    # G_1 = 2 (terminated), G_0 = 1 + 0.9 * 2 = 2.8
    g = F.discounted_returns(t(VALID_R), t(VALID_NV), t([[0], [1], [0], [0]]), t([[0]] * 4), 0.9, valid=t(VALID))
    close(g, [[2.8], [2.0], [0.0], [3.7]])


def test_gae_lambda_one_plus_value_equals_discounted_returns():
    # Hand example: with V consistent with next_values, GAE(lam=1) returns are the MC returns.
    v = t([[0.3, 0.0, 0.0], [0.7, 0.0, 0.0], [20.0, 2.0, 0.0], [-1.0, 0.5, 0.0]])
    # next_values[t] = V[t+1] wherever step t is not done; consistent choice for env 0/1/2.
    nv = t(MC_NV)
    nv[0, 0] = v[1, 0]
    nv[2, 0] = v[3, 0]
    nv[0, 1], nv[1, 1] = v[1, 1], v[2, 1]
    adv, ret = F.gae(t(MC_R), v, nv, t(MC_TERM), t(MC_TRUNC), 0.9, 1.0)
    close(ret, MC_G)
    close(adv, t(MC_G) - v)

    # Random episodes: the identity holds for any data with V(s_{t+1}) = next_values[t] inside episodes.
    g = torch.Generator().manual_seed(0)
    T, N = 12, 5
    r = torch.randn(T, N, generator=g, dtype=D)
    v = torch.randn(T, N, generator=g, dtype=D)
    term = torch.rand(T, N, generator=g) < 0.15
    trunc = (torch.rand(T, N, generator=g) < 0.15) & ~term
    nv = torch.randn(T, N, generator=g, dtype=D)
    done = term | trunc
    nv[:-1] = torch.where(done[:-1], nv[:-1], v[1:])
    _, ret = F.gae(r, v, nv, term, trunc, 0.97, 1.0)
    close(ret, F.discounted_returns(r, nv, term, trunc, 0.97), atol=1e-12)


# =================================================================== group statistics
def test_group_stats():
    mean, std, count = F.group_stats(t([1.0, 2.0, 3.0, 5.0, 5.0, 7.0]), torch.tensor([0, 0, 0, 1, 1, 2]))
    close(mean, [2.0, 2.0, 2.0, 5.0, 5.0, 7.0])
    # unbiased std of [1, 2, 3] = sqrt((1 + 0 + 1) / 2) = 1; singleton -> 0
    close(std, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    close(count, [3.0, 3.0, 3.0, 2.0, 2.0, 1.0])


def test_group_relative_std_identical_and_singleton():
    rewards = t([1.0, 2.0, 3.0, 5.0, 5.0, 7.0])
    ids = torch.tensor([0, 0, 0, 1, 1, 2])
    # group 0: mean 2, unbiased std 1 -> (R - 2) / (1 + eps); group 1 identical -> 0; group 2 singleton -> 0
    adv = F.group_relative(rewards, ids, eps=1e-6)
    close(adv, [-1 / (1 + 1e-6), 0.0, 1 / (1 + 1e-6), 0.0, 0.0, 0.0], atol=1e-12)
    # eps enters the denominator: (R - 2) / (1 + 0.5)
    adv = F.group_relative(rewards, ids, eps=0.5)
    close(adv, [-1 / 1.5, 0.0, 1 / 1.5, 0.0, 0.0, 0.0])


def test_group_relative_non_contiguous_ids_and_dr_grpo():
    rewards = t([1.0, 4.0, 3.0, 0.0])
    ids = torch.tensor([7, 3, 7, 3])
    # group 7: [1, 3], mean 2, unbiased std sqrt((1 + 1) / 1) = sqrt(2)
    # group 3: [4, 0], mean 2, unbiased std sqrt((4 + 4) / 1) = 2 sqrt(2)
    s2 = math.sqrt(2.0)
    close(F.group_relative(rewards, ids, eps=0.0), [-1 / s2, 2 / (2 * s2), 1 / s2, -2 / (2 * s2)])
    # Dr. GRPO: mean-centred only
    close(F.group_relative(rewards, ids, scale_by_std=False), [-1.0, 2.0, 1.0, -2.0])


def test_group_relative_dr_grpo_singleton_and_identical():
    adv = F.group_relative(t([3.0, 4.0, 4.0]), torch.tensor([0, 1, 1]), scale_by_std=False)
    close(adv, [0.0, 0.0, 0.0])


def test_leave_one_out_hand_numbers():
    rewards = t([1.0, 2.0, 3.0, 4.0, 0.0, 9.0])
    ids = torch.tensor([0, 0, 0, 5, 5, 2])
    # group 0 (G=3): explicit leave-one-out means: 1 - (2+3)/2 = -1.5, 2 - (1+3)/2 = 0, 3 - (1+2)/2 = 1.5
    # and G/(G-1) * (R - mean) = 1.5 * [-1, 0, 1] = [-1.5, 0, 1.5]
    # group 5 (G=2): 4 - 0 = 4, 0 - 4 = -4 ; 2 * (R - 2) = [4, -4]
    # group 2: singleton -> 0
    expected = [-1.5, 0.0, 1.5, 4.0, -4.0, 0.0]
    adv = F.leave_one_out(rewards, ids)
    close(adv, expected)
    # and it equals G/(G-1) times Dr. GRPO's centred reward
    close(adv[:3], 3 / 2 * F.group_relative(rewards, ids, scale_by_std=False)[:3])
    close(adv[3:5], 2 / 1 * F.group_relative(rewards, ids, scale_by_std=False)[3:5])


def test_leave_one_out_equals_explicit_loo_mean_random():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(12, generator=g, dtype=D)
    ids = torch.tensor([4, 4, 4, 4, 1, 1, 1, 9, 9, 9, 9, 9])
    adv = F.leave_one_out(rewards, ids)
    for i in range(12):
        others = [rewards[j] for j in range(12) if j != i and ids[j] == ids[i]]
        assert adv[i].item() == pytest.approx((rewards[i] - sum(others) / len(others)).item(), abs=1e-12)


# =========================================================================== whiten
def test_whiten_masked():
    x = t([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = t([[1, 1, 0], [1, 1, 0]])
    # masked entries 1, 2, 3, 4: mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    std = math.sqrt(5 / 3)
    out = F.whiten(x, mask, eps=0.0)
    close(out, [[-1.5 / std, -0.5 / std, 0.0], [0.5 / std, 1.5 / std, 0.0]])
    sel = out[mask > 0]
    assert sel.mean().item() == pytest.approx(0.0, abs=1e-12)
    assert sel.std().item() == pytest.approx(1.0, abs=1e-12)
    # default eps keeps it at std 1 to ~1e-8
    out = F.whiten(x, mask.bool())
    assert out[mask > 0].std().item() == pytest.approx(1.0, abs=1e-7)
    assert out[0, 2].item() == 0.0 and out[1, 2].item() == 0.0
    # shift_mean=False: only the scale changes
    close(F.whiten(x, mask, shift_mean=False, eps=0.0), [[1 / std, 2 / std, 0.0], [3 / std, 4 / std, 0.0]])


def test_whiten_unmasked_and_degenerate():
    # [1, 3]: mean 2, unbiased std sqrt(2)
    close(F.whiten(t([1.0, 3.0]), eps=0.0), [-1 / math.sqrt(2), 1 / math.sqrt(2)])
    # a constant vector and a single element stay finite (0)
    close(F.whiten(t([5.0, 5.0, 5.0])), [0.0, 0.0, 0.0])
    close(F.whiten(t([[5.0, 1.0]]), t([[1, 0]])), [[0.0, 0.0]])
    out = F.whiten(t([[5.0, 1.0]]), t([[0, 0]]))
    assert torch.isfinite(out).all() and (out == 0).all()


# ======================================================================== token helpers
def test_broadcast_and_last_token_index():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 1, 1]])
    close(F.broadcast_to_tokens(t([2.0, 3.0, -1.0]), mask), [[2.0, 2.0, 0.0], [0.0] * 3, [-1.0] * 3])
    close(F.broadcast_to_tokens(t([2.0, 3.0, -1.0]), mask.to(D)), [[2.0, 2.0, 0.0], [0.0] * 3, [-1.0] * 3])
    assert F.last_token_index(mask).tolist() == [1, 0, 2]
    assert F.last_token_index(torch.tensor([[0, 1, 0, 1, 0]])).tolist() == [3]


# ======================================================================== REINFORCE++
# seq rewards [1, 2]; mask rows [1,1,1,0] and [1,1,0,0]; kl_coef = 0.5
#   row 0: -0.5 * [0.1, 0.2, 0.3] = [-0.05, -0.1, -0.15] ; +1 on token 2 -> [-0.05, -0.1, 0.85, 0]
#   row 1: -0.5 * [0.5, 0.4]      = [-0.25, -0.2]        ; +2 on token 1 -> [-0.25, 1.8, 0, 0]
# (the 9s sit on masked-out tokens and must not appear)
RPP_SEQ = [1.0, 2.0]
RPP_MASK = [[1, 1, 1, 0], [1, 1, 0, 0]]
RPP_KL = [[0.1, 0.2, 0.3, 9.0], [0.5, 0.4, 9.0, 9.0]]
RPP_TOK = [[-0.05, -0.1, 0.85, 0.0], [-0.25, 1.8, 0.0, 0.0]]
# reward-to-go, gamma = 1:  row 0: [-0.05-0.1+0.85, -0.1+0.85, 0.85] = [0.7, 0.75, 0.85]; row 1: [1.55, 1.8]
RPP_RTG1 = [[0.7, 0.75, 0.85, 0.0], [1.55, 1.8, 0.0, 0.0]]


def test_reinforce_pp_token_rewards_with_kl():
    r = F.reinforce_pp_token_rewards(t(RPP_SEQ), t(RPP_MASK), t(RPP_KL), kl_coef=0.5)
    close(r, RPP_TOK)
    # without KL only the final reward is placed; an empty row gets nothing
    r = F.reinforce_pp_token_rewards(t([1.0, 2.0, 3.0]), t(RPP_MASK + [[0, 0, 0, 0]]))
    close(r, [[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0] * 4])
    # kl given but kl_coef = 0 -> ignored
    close(
        F.reinforce_pp_token_rewards(t(RPP_SEQ), t(RPP_MASK), t(RPP_KL), 0.0),
        [[0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0]],
    )


def test_reward_to_go():
    close(F.reward_to_go(t(RPP_TOK), t(RPP_MASK), 1.0), RPP_RTG1)
    # gamma = 0.5: row 0: G2 = 0.85, G1 = -0.1 + 0.5*0.85 = 0.325, G0 = -0.05 + 0.5*0.325 = 0.1125
    #              row 1: G1 = 1.8, G0 = -0.25 + 0.5*1.8 = 0.65
    close(F.reward_to_go(t(RPP_TOK), t(RPP_MASK), 0.5), [[0.1125, 0.325, 0.85, 0.0], [0.65, 1.8, 0.0, 0.0]])
    # rewards on masked-out tokens are ignored
    close(F.reward_to_go(t([[1.0, 5.0]]), t([[1, 0]])), [[1.0, 0.0]])


def test_reinforce_pp_whitens_reward_to_go():
    # masked rtg values 0.7, 0.75, 0.85, 1.55, 1.8: mean 5.65/5 = 1.13
    # deviations -0.43, -0.38, -0.28, 0.42, 0.67; squares sum 0.1849+0.1444+0.0784+0.1764+0.4489 = 1.033
    std = math.sqrt(1.033 / 4)
    adv = F.reinforce_pp(t(RPP_TOK), t(RPP_MASK), 1.0)
    close(adv, [[-0.43 / std, -0.38 / std, -0.28 / std, 0.0], [0.42 / std, 0.67 / std, 0.0, 0.0]], atol=1e-7)


def test_reinforce_pp_baseline():
    # groups {0, 1} and {2, 3}; centred rewards: [1-2, 3-2, 2-2, 2-2] = [-1, 1, 0, 0]
    # tokens (mask rows [1,1],[1,1],[1,0],[1,0]): -1, -1, 1, 1, 0, 0 -> mean 0, unbiased var 4/5
    adv = F.reinforce_pp_baseline(
        t([1.0, 3.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]), t([[1, 1], [1, 1], [1, 0], [1, 0]])
    )
    s = math.sqrt(0.8)
    close(adv, [[-1 / s, -1 / s], [1 / s, 1 / s], [0.0, 0.0], [0.0, 0.0]], atol=1e-7)


# ============================================================================= GDPO
# One group of 4 completions with 2 reward components:
#   a = (1, 0), b = (0, 1), c = (1, 0), d = (0, 0)     sums: 1, 1, 1, 0
# component 0 = [1, 0, 1, 0]: mean 1/2, unbiased std sqrt(4 * 1/4 / 3) = 1/sqrt(3)
#   -> normalized [+sqrt3/2, -sqrt3/2, +sqrt3/2, -sqrt3/2]
# component 1 = [0, 1, 0, 0]: mean 1/4, unbiased std sqrt((9/16 + 3/16) / 3) = 1/2
#   -> normalized [-1/2, 3/2, -1/2, -1/2]
# weighted sum (weights 1, 1): a = sqrt3/2 - 1/2, b = 3/2 - sqrt3/2, c = a, d = -sqrt3/2 - 1/2 (sum 0)
# batch whitening: mean 0, unbiased var = (2a^2 + b^2 + d^2) / 3 = (6 - 2 sqrt3) / 3
S3 = math.sqrt(3.0)
GDPO_COMP = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]


def test_decoupled_group_hand_numbers():
    adv = F.decoupled_group(t(GDPO_COMP), torch.tensor([0, 0, 0, 0]), eps=0.0)
    a, b, d = S3 / 2 - 0.5, 1.5 - S3 / 2, -S3 / 2 - 0.5
    std = math.sqrt((6 - 2 * S3) / 3)
    close(adv, [a / std, b / std, a / std, d / std], atol=1e-7)
    # weights (1, 0): only component 0, whose normalized values already have unbiased std 1
    adv = F.decoupled_group(t(GDPO_COMP), torch.tensor([0, 0, 0, 0]), weights=t([1.0, 0.0]), eps=0.0)
    close(adv, [S3 / 2, -S3 / 2, S3 / 2, -S3 / 2], atol=1e-7)


def test_gdpo_separates_equal_sums_grpo_does_not():
    comp = t(GDPO_COMP)
    ids = torch.tensor([0, 0, 0, 0])
    gdpo = F.decoupled_group(comp, ids)
    grpo = F.group_relative(comp.sum(1), ids)
    # a = (1, 0) and b = (0, 1) both sum to 1
    assert grpo[0].item() == grpo[1].item()
    assert abs(gdpo[0].item() - gdpo[1].item()) > 0.1
    # within group 0 the normalization is per group: a second group with shifted rewards changes nothing
    comp2 = torch.cat([comp, comp + 10.0])
    ids2 = torch.tensor([0, 0, 0, 0, 3, 3, 3, 3])
    adv2 = F.decoupled_group(comp2, ids2)
    close(adv2[:4], adv2[4:], atol=1e-12)


# ========================================================================= registry adapters
def test_registry_names_and_unknown():
    assert {
        "gae",
        "mc",
        "mc_raw",
        "grpo",
        "dr_grpo",
        "rloo",
        "reinforce_pp",
        "reinforce_pp_baseline",
        "gdpo",
        "whiten",
    } <= set(ADVANTAGES.names())
    with pytest.raises(UnknownChoice) as e:
        ADVANTAGES.get("grop")
    assert "grpo" in str(e.value)


def test_adapter_gae_and_mc():
    r, v, nv, term, trunc = _gae_inputs()
    x = AdvantageInputs(rewards=r, values=v, next_values=nv, terminated=term, truncated=trunc)
    cfg = AdvantageConfig(gamma=0.9, gae_lambda=0.8)
    adv, ret = ADVANTAGES.get("gae")(x, cfg)
    close(adv, GAE_ADV)
    close(ret, GAE_RET)
    # mc on the MC example, values all 1 -> adv = G - 1
    x = AdvantageInputs(
        rewards=t(MC_R),
        values=torch.ones(4, 3, dtype=D),
        next_values=t(MC_NV),
        terminated=t(MC_TERM),
        truncated=t(MC_TRUNC),
    )
    adv, ret = ADVANTAGES.get("mc")(x, cfg)
    close(ret, MC_G)
    close(adv, t(MC_G) - 1)
    adv, ret = ADVANTAGES.get("mc_raw")(x, cfg)
    close(adv, MC_G)
    # mc with a valid mask: invalid step advantage 0 (V = 50 there would give -50 otherwise)
    x = AdvantageInputs(
        rewards=t(VALID_R),
        values=t(VALID_V),
        next_values=t(VALID_NV),
        terminated=t([[0], [1], [0], [0]]),
        truncated=t([[0]] * 4),
        valid=t(VALID),
    )
    adv, ret = ADVANTAGES.get("mc")(x, cfg)
    close(ret, [[2.8], [2.0], [0.0], [3.7]])
    close(adv, [[1.8], [1.0], [0.0], [1.7]])


def test_adapter_missing_inputs_raise():
    with pytest.raises(ValueError, match="values"):
        ADVANTAGES.get("gae")(AdvantageInputs(rewards=t([[1.0]])), AdvantageConfig())
    with pytest.raises(ValueError, match="group_ids"):
        ADVANTAGES.get("grpo")(AdvantageInputs(rewards=t([1.0])), AdvantageConfig())
    with pytest.raises(ValueError, match="reward_components"):
        x = AdvantageInputs(rewards=t([1.0]), group_ids=torch.tensor([0]))
        ADVANTAGES.get("gdpo")(x, AdvantageConfig())


def test_adapter_grpo_broadcasts_to_mask():
    mask = t([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    x = AdvantageInputs(rewards=t([1.0, 3.0, 5.0]), group_ids=torch.tensor([0, 0, 1]), mask=mask)
    # group 0: [1, 3] mean 2, unbiased std sqrt(2); std_eps = 0 here; group 1 singleton -> 0
    adv, ret = ADVANTAGES.get("grpo")(x, AdvantageConfig(std_eps=0.0))
    assert ret is None and adv.shape == (3, 3)
    s2 = math.sqrt(2.0)
    close(adv, [[-1 / s2, -1 / s2, 0.0], [1 / s2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    adv, _ = ADVANTAGES.get("dr_grpo")(x, AdvantageConfig())
    close(adv, [[-1.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0] * 3])
    adv, _ = ADVANTAGES.get("rloo")(x, AdvantageConfig())
    close(adv, [[-2.0, -2.0, 0.0], [2.0, 0.0, 0.0], [0.0] * 3])
    # without a mask the per-sequence (B,) advantage comes back
    adv, _ = ADVANTAGES.get("grpo")(
        AdvantageInputs(rewards=t([1.0, 3.0]), group_ids=torch.tensor([0, 0])), AdvantageConfig(std_eps=0.0)
    )
    close(adv, [-1 / s2, 1 / s2])


def test_adapter_reinforce_pp_and_baseline_and_gdpo_and_whiten():
    cfg = AdvantageConfig(gamma=1.0)
    x = AdvantageInputs(rewards=t(RPP_SEQ), mask=t(RPP_MASK), token_kl=t(RPP_KL), kl_coef=0.5)
    adv, ret = ADVANTAGES.get("reinforce_pp")(x, cfg)
    std = math.sqrt(1.033 / 4)
    assert ret is None
    close(adv, [[-0.43 / std, -0.38 / std, -0.28 / std, 0.0], [0.42 / std, 0.67 / std, 0.0, 0.0]], atol=1e-7)
    # (B, L) token rewards are used as they are
    adv2, _ = ADVANTAGES.get("reinforce_pp")(AdvantageInputs(rewards=t(RPP_TOK), mask=t(RPP_MASK)), cfg)
    close(adv2, adv)

    x = AdvantageInputs(
        rewards=t([1.0, 3.0, 2.0, 2.0]), group_ids=torch.tensor([0, 0, 1, 1]), mask=t([[1, 1], [1, 1], [1, 0], [1, 0]])
    )
    adv, _ = ADVANTAGES.get("reinforce_pp_baseline")(x, cfg)
    s = math.sqrt(0.8)
    close(adv, [[-1 / s, -1 / s], [1 / s, 1 / s], [0.0, 0.0], [0.0, 0.0]], atol=1e-7)

    x = AdvantageInputs(
        rewards=t([1.0, 1.0, 1.0, 0.0]),
        group_ids=torch.tensor([0, 0, 0, 0]),
        reward_components=t(GDPO_COMP),
        mask=t([[1, 0], [1, 1], [1, 1], [1, 1]]),
    )
    adv, _ = ADVANTAGES.get("gdpo")(x, AdvantageConfig(std_eps=0.0))
    a, b, d = S3 / 2 - 0.5, 1.5 - S3 / 2, -S3 / 2 - 0.5
    sd = math.sqrt((6 - 2 * S3) / 3)
    close(adv, [[a / sd, 0.0], [b / sd, b / sd], [a / sd, a / sd], [d / sd, d / sd]], atol=1e-7)
    adv_g, _ = ADVANTAGES.get("grpo")(x, AdvantageConfig())
    close(adv_g[0, 0], adv_g[1, 0])  # GRPO on the summed reward cannot tell a from b

    adv, _ = ADVANTAGES.get("whiten")(AdvantageInputs(rewards=t([1.0, 3.0])), cfg)
    close(adv, [-1 / math.sqrt(2), 1 / math.sqrt(2)], atol=1e-7)
