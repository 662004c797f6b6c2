"""Policy losses, KL estimators, entropy and the value loss on tiny hand-computed batches.

Shared batch (B=2, T=3, token-mean aggregation, N = 5 masked tokens, eps = 0.2 -> clip range [0.8, 1.2]):

    ratio r   = [[1.0, 1.5, 0.5], [1.1, 0.7, 3.0]]
    A         = [[1.0, 1.0, -1.0], [-2.0, 0.5, 5.0]]
    mask      = [[1, 1, 1], [1, 1, 0]]          (the r=3, A=5 position is masked out)
    logp      = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.0]],  logp_old = logp - log r
"""

from __future__ import annotations

import math

import pytest
import torch

from policyopt.errors import UnknownChoice
from policyopt.losses import (
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Aggregator,
    PolicyBatch,
    PolicyLossConfig,
    entropy_from_logits,
    kl_penalty,
    value_loss,
)
from policyopt.losses.regularizers import categorical_kl

D = torch.float64
R = [[1.0, 1.5, 0.5], [1.1, 0.7, 3.0]]
A = [[1.0, 1.0, -1.0], [-2.0, 0.5, 5.0]]
M = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
LOGP = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -2.0]]
N = 5.0


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=D)


def close(a, b, atol: float = 1e-10) -> None:
    a = a if isinstance(a, torch.Tensor) else t(a)
    b = b if isinstance(b, torch.Tensor) else t(b)
    torch.testing.assert_close(a.to(D), b.to(D), atol=atol, rtol=0)


def make_batch(ratio=R, adv=A, mask=M, logp=LOGP, **kw) -> PolicyBatch:
    lp = t(logp).requires_grad_(True)
    return PolicyBatch(logp=lp, logp_old=t(logp) - torch.log(t(ratio)), advantages=t(adv), mask=t(mask), **kw)


def run(name: str, b: PolicyBatch, hp: PolicyLossConfig | None = None, mode: str = "token-mean"):
    hp = hp or PolicyLossConfig()
    loss, stats = POLICY_LOSSES.get(name)(b, hp, Aggregator.for_batch(mode, b.mask))
    (grad,) = torch.autograd.grad(loss, b.logp, allow_unused=True)
    return loss, (torch.zeros_like(b.logp) if grad is None else grad), stats


def test_registry_has_all_losses():
    names = {"pg", "ppo_clip", "dual_clip", "cispo", "gspo", "cpgd", "kl_proximal"}
    assert names <= set(POLICY_LOSSES.names())
    with pytest.raises(UnknownChoice):
        POLICY_LOSSES.get("ppo")


# ============================================================================ pg
def test_pg_value_gradient_and_ignores_logp_old():
    # -A * logp per token: 1*1, -1*-2 -> 2, -(-1)(-0.5) = -0.5, -(-2)(-1.5) = -3, -(0.5)(-0.3) = 0.15
    loss, grad, stats = run("pg", make_batch())
    assert loss.item() == pytest.approx((1 + 2 - 0.5 - 3 + 0.15) / N)
    close(grad, [[-1 / N, -1 / N, 1 / N], [2 / N, -0.5 / N, 0.0]])
    # logp_old does not enter the loss or its gradient (only the statistics)
    loss2, grad2, _ = run("pg", make_batch(ratio=[[7.0, 0.1, 2.0], [0.3, 5.0, 1.0]]))
    assert loss2.item() == pytest.approx(loss.item())
    close(grad2, grad)
    assert stats["ratio_max"].item() == pytest.approx(1.5)


# ============================================================================ ppo_clip
def test_ppo_clip_value_gradient_and_stats():
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    #   (0,0) r=1.0 A=1 : max(-1, -1)        = -1    unclipped, grad -A r = -1
    #   (0,1) r=1.5 A=1 : max(-1.5, -1.2)    = -1.2  clipped high, grad 0
    #   (0,2) r=0.5 A=-1: max(0.5, 0.8)      = 0.8   clipped low, grad 0
    #   (1,0) r=1.1 A=-2: max(2.2, 2.2)      = 2.2   unclipped, grad -A r = 2.2
    #   (1,1) r=0.7 A=.5: max(-0.35, -0.4)   = -0.35 unclipped (low ratio, positive A), grad -0.35
    loss, grad, stats = run("ppo_clip", make_batch())
    assert loss.item() == pytest.approx((-1 - 1.2 + 0.8 + 2.2 - 0.35) / N)  # = 0.09
    close(grad, [[-1 / N, 0.0, 0.0], [2.2 / N, -0.35 / N, 0.0]])
    assert stats["clip_frac_low"].item() == pytest.approx(1 / N)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / N)
    assert stats["clip_frac"].item() == pytest.approx(2 / N)
    # approx_kl = mean over the 5 masked tokens of (r - 1 - log r)
    kl = sum(r - 1 - math.log(r) for r in [1.0, 1.5, 0.5, 1.1, 0.7]) / N
    assert stats["approx_kl"].item() == pytest.approx(kl)
    assert stats["ratio_mean"].item() == pytest.approx((1.0 + 1.5 + 0.5 + 1.1 + 0.7) / N)
    assert stats["ratio_max"].item() == pytest.approx(1.5)  # not the masked-out 3.0
    for v in stats.values():
        assert not v.requires_grad


def test_ppo_clip_higher_is_asymmetric():
    # r = [0.7, 1.3] (both 0.3 away from 1), A = [-1, +1]; eps_low = 0.2, eps_high = 0.4 -> [0.8, 1.4]
    #   r=0.7, A=-1: max(0.7, 0.8) = 0.8 (clipped, grad 0); r=1.3, A=1: max(-1.3, -1.3) -> -1.3 (grad -1.3)
    b = make_batch(ratio=[[0.7, 1.3]], adv=[[-1.0, 1.0]], mask=[[1.0, 1.0]], logp=[[-1.0, -1.0]])
    loss, grad, stats = run("ppo_clip", b, PolicyLossConfig(clip_eps_low=0.2, clip_eps_high=0.4))
    assert loss.item() == pytest.approx((0.8 - 1.3) / 2)
    close(grad, [[0.0, -1.3 / 2]])
    assert stats["clip_frac_low"].item() == pytest.approx(0.5)
    assert stats["clip_frac_high"].item() == pytest.approx(0.0)
    # symmetric 0.2: the 1.3 ratio is clipped as well: max(-1.3, -1.2) = -1.2
    loss, grad, stats = run("ppo_clip", b, PolicyLossConfig(clip_eps_low=0.2))
    assert loss.item() == pytest.approx((0.8 - 1.2) / 2)
    close(grad, [[0.0, 0.0]])
    assert stats["clip_frac_high"].item() == pytest.approx(0.5)


def test_ppo_clip_from_steps():
    b = PolicyBatch.from_steps(t([-1.0, -2.0]).requires_grad_(True), t([-1.0, -2.0]) - math.log(1.5), t([1.0, -1.0]))
    assert b.logp.shape == (2, 1) and b.mask.shape == (2, 1)
    loss, grad, _ = run("ppo_clip", b)
    # r = 1.5 for both: A=1 -> clipped -1.2 (grad 0); A=-1 -> max(1.5, 1.2) = 1.5 (grad -A r = 1.5)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    close(grad, [[0.0], [1.5 / 2]])
    # a step mask (e.g. autoreset steps) drops the second step: loss -1.2 / 1, no gradient anywhere
    b = PolicyBatch.from_steps(
        t([-1.0, -2.0]).requires_grad_(True),
        t([-1.0, -2.0]) - math.log(1.5),
        t([1.0, -1.0]),
        mask=torch.tensor([True, False]),
    )
    loss, grad, _ = run("ppo_clip", b)
    assert b.mask.dtype == D and b.mask.flatten().tolist() == [1.0, 0.0]
    assert loss.item() == pytest.approx(-1.2)
    close(grad, [[0.0], [0.0]])


# ============================================================================ dual_clip
def test_dual_clip_caps_negative_advantages():
    # c = 3, clip range [0.8, 1.2]; the third column is masked out
    #   (0,0) r=5,   A=-1: surr = max(5, 1.2) = 5, capped at -c A = 3 -> 3 (grad 0)
    #   (0,1) r=2,   A=-1: surr = max(2, 1.2) = 2 < 3 -> 2 (grad -A r = 2)
    #   (1,0) r=0.5, A=-1: surr = max(0.5, 0.8) = 0.8 (clipped, grad 0)
    #   (1,1) r=5,   A=+1: surr = max(-5, -1.2) = -1.2 (A > 0: no cap, grad 0)
    kw = dict(
        ratio=[[5.0, 2.0, 9.0], [0.5, 5.0, 9.0]],
        adv=[[-1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]],
        mask=[[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]],
        logp=[[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]],
    )
    hp = PolicyLossConfig(dual_clip_c=3.0)
    loss, grad, stats = run("dual_clip", make_batch(**kw), hp)
    assert loss.item() == pytest.approx((3 + 2 + 0.8 - 1.2) / 4)
    close(grad, [[0.0, 2 / 4, 0.0], [0.0, 0.0, 0.0]])
    assert stats["dual_clip_frac"].item() == pytest.approx(1 / 4)  # only (0,0); masked 9.0 excluded
    assert stats["clip_frac_low"].item() == pytest.approx(1 / 4)
    assert stats["clip_frac_high"].item() == pytest.approx(1 / 4)
    # plain PPO on the same batch is not capped: 5 instead of 3
    loss_ppo, _, _ = run("ppo_clip", make_batch(**kw), hp)
    assert loss_ppo.item() == pytest.approx((5 + 2 + 0.8 - 1.2) / 4)


# ============================================================================ cispo
def test_cispo_caps_weight_above_only():
    # Default config: cap 1 + eps_high = 1.2, no lower bound, so r = 0.5 and r = 0.7 (< 0.8) keep their weight.
    # weight = sg(min(r, 1.2)) = [[1.0, 1.2, 0.5], [1.1, 0.7, .]]; per token -w A logp:
    #   -1*1*(-1) = 1, -1.2*1*(-2) = 2.4, -0.5*(-1)*(-0.5) = -0.25,
    #   -1.1*(-2)*(-1.5) = -3.3, -0.7*0.5*(-0.3) = 0.105
    loss, grad, stats = run("cispo", make_batch())
    assert loss.item() == pytest.approx((1 + 2.4 - 0.25 - 3.3 + 0.105) / N)
    # gradient -w A / N, nonzero on every token, the capped (0,1) and the low-ratio (0,2), (1,1) included
    close(grad, [[-1.0 / N, -1.2 / N, 0.5 / N], [2.2 / N, -0.35 / N, 0.0]])
    assert stats["clip_frac_low"].item() == 0.0  # nothing is bounded below
    assert stats["clip_frac_high"].item() == pytest.approx(1 / N)  # (0,1): r = 1.5 > 1.2 with A > 0


def test_cispo_optional_lower_bound():
    # cispo_eps_low = 0.2: weight = sg(clip(r, 0.8, 1.2)) = [[1.0, 1.2, 0.8], [1.1, 0.8, .]]; per token -w A logp:
    #   1, 2.4, -0.8*(-1)*(-0.5) = -0.4, -3.3, -0.8*0.5*(-0.3) = 0.12
    loss, grad, stats = run("cispo", make_batch(), PolicyLossConfig(cispo_eps_low=0.2))
    assert loss.item() == pytest.approx((1 + 2.4 - 0.4 - 3.3 + 0.12) / N)
    close(grad, [[-1.0 / N, -1.2 / N, 0.8 / N], [2.2 / N, -0.4 / N, 0.0]])
    assert stats["clip_frac_low"].item() == pytest.approx(1 / N)  # (0,2): r = 0.5 < 0.8 with A < 0


def test_cispo_preset_caps_at_five_and_keeps_small_weights():
    from policyopt import algos

    hp = algos.build_config("cispo").loss
    assert hp.clip_eps_high == 4.0 and hp.cispo_eps_low is None
    # r = [6, 0.5, 0.3], A = [1, 1, -2], logp = [-1, -2, -0.5]: w = [5, 0.5, 0.3]
    # per token -w A logp = [5, 1, -0.3], token-mean over 3
    b = make_batch(ratio=[[6.0, 0.5, 0.3]], adv=[[1.0, 1.0, -2.0]], mask=[[1.0, 1.0, 1.0]], logp=[[-1.0, -2.0, -0.5]])
    loss, grad, _ = run("cispo", b, hp)
    assert loss.item() == pytest.approx((5.0 + 1.0 - 0.3) / 3)
    close(grad, [[-5.0 / 3, -0.5 / 3, 0.6 / 3]])


# ============================================================================ gspo
# Sequence ratios: row 0 r = [2, 2, (7 masked)] -> s_0 = exp(mean(log 2, log 2)) = 2
#                  row 1 r = [0.5, 0.5, 0.5]      -> s_1 = 0.5
GSPO_KW = dict(
    ratio=[[2.0, 2.0, 7.0], [0.5, 0.5, 0.5]],
    mask=[[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
    logp=[[-1.0, -0.5, -2.0], [-0.2, -1.5, -0.7]],
)


def test_gspo_value_is_clipped_sequence_ratio():
    # Default range [1 - 3e-4, 1 + 4e-4]. Row 0: A = +1, s = 2 > hi -> -A * (1 + 4e-4), clipped.
    # Row 1: A = -1, s = 0.5 < lo -> max(0.5, 1 - 3e-4) = 1 - 3e-4, clipped. Both gradients vanish.
    b = make_batch(adv=[[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], **GSPO_KW)
    loss, grad, stats = run("gspo", b, mode="seq-mean-token-mean")
    assert loss.item() == pytest.approx((-(1 + 4e-4) + (1 - 3e-4)) / 2)
    close(grad, torch.zeros(2, 3))
    assert stats["clip_frac_high"].item() == pytest.approx(2 / 5)
    assert stats["clip_frac_low"].item() == pytest.approx(3 / 5)
    assert stats["seq_ratio_mean"].item() == pytest.approx((2 + 0.5) / 2)


def test_gspo_unclipped_hand_gradient():
    # Wide clip range so nothing is clipped: loss = mean_i(-A_i s_i) = (-1*2 + 1*0.5) / 2 = -0.75.
    # d loss / d logp_{i,t} = -A_i s_i / (|y_i| * B):  row 0: -2 / (2*2) = -0.5;  row 1: 0.5 / (3*2) = 1/12
    hp = PolicyLossConfig(gspo_eps_low=0.9, gspo_eps_high=10.0)
    b = make_batch(adv=[[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], **GSPO_KW)
    loss, grad, stats = run("gspo", b, hp, mode="seq-mean-token-mean")
    assert loss.item() == pytest.approx(-0.75)
    close(grad, [[-0.5, -0.5, 0.0], [1 / 12, 1 / 12, 1 / 12]])
    assert stats["clip_frac"].item() == 0.0


def test_gspo_gradient_equals_sequence_level_gradient():
    g = torch.Generator().manual_seed(3)
    B, T = 3, 4
    mask = t([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    logp_old = -torch.rand(B, T, generator=g, dtype=D) - 0.1
    logp0 = logp_old + 0.3 * torch.randn(B, T, generator=g, dtype=D)
    adv_seq = t([1.5, -0.7, 0.4])
    hp = PolicyLossConfig(gspo_eps_low=0.99, gspo_eps_high=100.0)

    logp = logp0.clone().requires_grad_(True)
    b = PolicyBatch(logp, logp_old, adv_seq[:, None].expand(B, T).clone(), mask)
    loss, _ = POLICY_LOSSES.get("gspo")(b, hp, Aggregator.for_batch("seq-mean-token-mean", mask))
    (grad,) = torch.autograd.grad(loss, logp)

    # Sequence-level GSPO objective, written directly: -mean_i A_i s_i, s_i = exp(mean_t M (logp - logp_old))
    logp2 = logp0.clone().requires_grad_(True)
    s = torch.exp(((logp2 - logp_old) * mask).sum(1) / mask.sum(1))
    seq_loss = -(adv_seq * s).mean()
    (grad2,) = torch.autograd.grad(seq_loss, logp2)
    assert loss.item() == pytest.approx(seq_loss.item(), abs=1e-12)
    close(grad, grad2, atol=1e-12)


# ============================================================================ cpgd
def test_cpgd_without_drift_inside_clip_is_minus_a_log_r():
    # log-space clip [log 0.8, log 1.2]; every ratio is inside it; drift_coef = 0
    ratio = [[1.1, 0.9, 1.15], [1.0, 0.85, 9.0]]
    adv = [[1.0, -2.0, 0.5], [3.0, -1.0, 4.0]]
    b = make_batch(ratio=ratio, adv=adv)
    loss, grad, stats = run("cpgd", b, PolicyLossConfig(drift_coef=0.0))
    expected = (
        -(1 * math.log(1.1) - 2 * math.log(0.9) + 0.5 * math.log(1.15) + 3 * math.log(1.0) - 1 * math.log(0.85)) / N
    )
    assert loss.item() == pytest.approx(expected)
    close(grad, [[-1 / N, 2 / N, -0.5 / N], [-3 / N, 1 / N, 0.0]])  # d(-A log r)/d logp = -A
    assert stats["clip_frac"].item() == 0.0
    # with drift alpha = 0.1: + alpha (r - 1 - log r), gradient + alpha (r - 1)
    loss, grad, stats = run("cpgd", make_batch(ratio=ratio, adv=adv), PolicyLossConfig(drift_coef=0.1))
    drift = [r - 1 - math.log(r) for r in [1.1, 0.9, 1.15, 1.0, 0.85]]
    assert loss.item() == pytest.approx(expected + 0.1 * sum(drift) / N)
    close(
        grad,
        [[(-1 + 0.1 * 0.1) / N, (2 - 0.1 * 0.1) / N, (-0.5 + 0.1 * 0.15) / N], [-3 / N, (1 - 0.1 * 0.15) / N, 0.0]],
    )
    assert stats["drift"].item() == pytest.approx(sum(drift) / N)


def test_cpgd_clips_in_log_space():
    # r = 1.5, A = 1: max(-log 1.5, -log 1.2) = -log 1.2 (clipped, grad 0);
    # r = 1.5, A = -1: max(log 1.5, log 1.2) = log 1.5 (grad -A = 1)
    b = make_batch(ratio=[[1.5, 1.5]], adv=[[1.0, -1.0]], mask=[[1.0, 1.0]], logp=[[-1.0, -1.0]])
    loss, grad, stats = run("cpgd", b, PolicyLossConfig(drift_coef=0.0))
    assert loss.item() == pytest.approx((-math.log(1.2) + math.log(1.5)) / 2)
    close(grad, [[0.0, 0.5]])
    assert stats["clip_frac_high"].item() == pytest.approx(0.5)


def test_cpgd_drift_weight_capped_at_two_like_reference():
    # Reference (siiRL dp_actor): drift gradient weight min(r - 1, 2). r = 2 -> weight 1 (k3 value 1 - log 2);
    # r = 5 -> weight capped at 2, value (2 - log 3) + 2 (log 5 - log 3). A = 0 isolates the drift term.
    b = make_batch(ratio=[[2.0, 5.0]], adv=[[0.0, 0.0]], mask=[[1.0, 1.0]], logp=[[-1.0, -1.0]])
    loss, grad, stats = run("cpgd", b, PolicyLossConfig(drift_coef=1.0))
    v2, v5 = 1 - math.log(2), (2 - math.log(3)) + 2 * (math.log(5) - math.log(3))
    assert loss.item() == pytest.approx((v2 + v5) / 2)
    close(grad, [[1.0 / 2, 2.0 / 2]])
    assert stats["drift"].item() == pytest.approx((v2 + v5) / 2)


def test_cpgd_gradient_matches_reference_clamped_logp_form():
    # The reference minimizes -A * clamp(logp, logp_old + log(1-eps), logp_old + log(1+eps)) one-sidedly
    # (upper clamp for A > 0, lower for A < 0); same gradient as the max(...) form used here.
    ratio, adv = [[1.5, 0.5, 1.1, 0.7]], [[1.0, -1.0, -2.0, 3.0]]
    b = make_batch(ratio=ratio, adv=adv, mask=[[1.0] * 4], logp=[[-1.0, -2.0, -0.5, -1.5]])
    _, grad, _ = run("cpgd", b, PolicyLossConfig(drift_coef=0.0))
    lp = b.logp.detach().clone().requires_grad_(True)
    a, old = b.advantages, b.logp_old
    clamped = torch.where(a > 0, torch.minimum(lp, old + math.log(1.2)), torch.maximum(lp, old + math.log(0.8)))
    (ref_grad,) = torch.autograd.grad((-a * clamped).mean(), lp)
    close(grad, ref_grad)
    # r=1.5, A>0: clipped (0); r=0.5, A<0: clipped (0); r=1.1, A=-2: grad 2/4; r=0.7, A=3: grad -3/4
    close(grad, [[0.0, 0.0, 0.5, -0.75]])


# ============================================================================ kl_proximal
def test_kl_proximal_sample_estimate():
    # per token -A r + coef * r log r; gradient -A r + coef * r (log r + 1)
    coef = 0.5
    loss, grad, stats = run("kl_proximal", make_batch(), PolicyLossConfig(proximal_coef=coef))
    toks = [(1.0, 1.0), (1.5, 1.0), (0.5, -1.0), (1.1, -2.0), (0.7, 0.5)]
    val = sum(-a * r + coef * r * math.log(r) for r, a in toks) / N
    assert loss.item() == pytest.approx(val)
    g = [(-a * r + coef * r * (math.log(r) + 1)) / N for r, a in toks]
    close(grad, [[g[0], g[1], g[2]], [g[3], g[4], 0.0]])
    assert stats["proximal_kl"].item() == pytest.approx(sum(r * math.log(r) for r, _ in toks) / N)


def test_kl_proximal_explicit_kl_old():
    kl_param = t([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]]).requires_grad_(True)
    b = make_batch(kl_old=kl_param * 1.0)
    hp = PolicyLossConfig(proximal_coef=2.0)
    loss, stats = POLICY_LOSSES.get("kl_proximal")(b, hp, Aggregator.for_batch("token-mean", b.mask))
    g_logp, g_kl = torch.autograd.grad(loss, [b.logp, kl_param])
    # -A r summed = -1 - 1.5 + 0.5 + 2.2 - 0.35 = -0.15 ; 2 * (0.1+0.2+0.3+0.4+0.5) = 3.0
    assert loss.item() == pytest.approx((-0.15 + 3.0) / N)
    close(g_logp, [[-1.0 / N, -1.5 / N, 0.5 / N], [2.2 / N, -0.35 / N, 0.0]])
    close(g_kl, [[2 / N, 2 / N, 2 / N], [2 / N, 2 / N, 0.0]])
    assert stats["proximal_kl"].item() == pytest.approx(1.5 / N)


# ============================================================================ shared properties
ON_POLICY = ["pg", "ppo_clip", "dual_clip", "cispo", "gspo", "cpgd", "kl_proximal"]


@pytest.mark.parametrize("name", ON_POLICY)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum"])
def test_on_policy_gradient_is_vanilla_policy_gradient(name, mode):
    # At logp == logp_old every loss's gradient is the REINFORCE gradient -A * M / normalizer
    # (kl_proximal with coef 0: r log r has gradient 1 at r = 1).
    adv = t([[1.0, -2.0, 0.5], [0.3, 4.0, -1.0]])
    mask = t([[1, 1, 0], [1, 1, 1]])
    logp = t([[-0.5, -1.0, -2.0], [-0.1, -3.0, -0.7]]).requires_grad_(True)
    b = PolicyBatch(logp, logp.detach().clone(), adv, mask)
    hp = PolicyLossConfig(proximal_coef=0.0)
    loss, _ = POLICY_LOSSES.get(name)(b, hp, Aggregator.for_batch(mode, mask))
    (grad,) = torch.autograd.grad(loss, logp)
    denom = 5.0 if mode == "token-mean" else 2.0
    close(grad, -adv * mask / denom, atol=1e-12)


@pytest.mark.parametrize("name", ON_POLICY)
def test_masked_positions_get_no_gradient_and_no_nan(name):
    b = make_batch(ratio=[[1.0, 1.5, 0.5], [1.1, 0.7, 1e30]], adv=[[1.0, 1.0, -1.0], [-2.0, 0.5, -1e30]])
    loss, grad, stats = run(name, b)
    assert torch.isfinite(loss)
    assert grad[1, 2].item() == 0.0
    assert torch.isfinite(grad).all()
    assert torch.isfinite(stats["ratio_max"]) and stats["ratio_max"].item() == pytest.approx(1.5)


# ============================================================================ regularizers
def test_kl_estimators_hand_numbers():
    logp = t([-1.0, -2.0])
    ref = t([-1.5, -1.0])
    # d = logp - ref = [0.5, -1.0]
    close(KL_ESTIMATORS.get("k1")(logp, ref), [0.5, -1.0])
    close(KL_ESTIMATORS.get("k2")(logp, ref), [0.125, 0.5])
    # k3 = exp(-d) + d - 1: exp(-0.5) - 0.5 = 0.1065306597..., exp(1) - 2 = 0.7182818284...
    close(KL_ESTIMATORS.get("k3")(logp, ref), [math.exp(-0.5) - 0.5, math.e - 2])
    close(kl_penalty(logp, ref, "k3"), [math.exp(-0.5) - 0.5, math.e - 2])
    close(kl_penalty(logp, ref), kl_penalty(logp, ref, "k3"))
    with pytest.raises(UnknownChoice):
        kl_penalty(logp, ref, "k4")


def test_k3_nonnegative_and_estimators_unbiased_in_expectation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1000, generator=g, dtype=D) * 3, torch.randn(1000, generator=g, dtype=D) * 3
    assert (KL_ESTIMATORS.get("k3")(a, b) >= 0).all()
    assert (KL_ESTIMATORS.get("k3")(a, a) == 0).all()
    # exact expectation over a categorical: E_p[k1] = E_p[k3] = KL(p || ref)
    lp = torch.log_softmax(t([0.3, -1.0, 2.0, 0.0]), -1)
    lr = torch.log_softmax(t([1.0, 0.5, -0.5, 0.2]), -1)
    kl = categorical_kl(lp, lr)
    p = lp.exp()
    assert (p * KL_ESTIMATORS.get("k1")(lp, lr)).sum().item() == pytest.approx(kl.item(), abs=1e-12)
    assert (p * KL_ESTIMATORS.get("k3")(lp, lr)).sum().item() == pytest.approx(kl.item(), abs=1e-12)


def test_entropy_from_logits():
    for n in (2, 5, 17):
        assert torch.allclose(entropy_from_logits(torch.zeros(3, n)), torch.full((3,), math.log(n)))
    # p = [1/2, 1/4, 1/4]: H = 1/2 log 2 + 2 * 1/4 log 4 = 1.5 log 2 (logits shifted by a constant)
    h = entropy_from_logits(torch.log(t([0.5, 0.25, 0.25])) + 7.0)
    assert h.item() == pytest.approx(1.5 * math.log(2), abs=1e-6)
    # a one-hot-like distribution has ~0 entropy and no NaN
    h = entropy_from_logits(t([[1000.0, 0.0, 0.0]]))
    assert torch.isfinite(h).all() and h.item() == pytest.approx(0.0, abs=1e-6)


def test_categorical_kl():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, generator=g, dtype=D)
    close(categorical_kl(x, x), torch.zeros(4), atol=1e-12)
    close(categorical_kl(x, x + 3.0), torch.zeros(4), atol=1e-12)  # logits shift -> same distribution
    # p = [1/2, 1/2], q = [1/4, 3/4]: KL = 1/2 log(2) + 1/2 log(2/3)
    kl = categorical_kl(torch.log(t([0.5, 0.5])), torch.log(t([0.25, 0.75])))
    assert kl.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-12)
    assert (categorical_kl(x, torch.randn(4, 6, generator=g, dtype=D)) >= 0).all()


# ============================================================================ value loss
def test_value_loss_unclipped_and_clipped():
    v, ret = t([1.0, 2.0, 3.0, 1.0]), t([1.5, 1.0, 3.0, 0.0])
    # 0.5 (V - R)^2 = 0.5 * [0.25, 1, 0, 1]
    close(value_loss(v, ret), [0.125, 0.5, 0.0, 0.5])
    close(value_loss(v, ret, clip=0.2), [0.125, 0.5, 0.0, 0.5])  # no values_old: no clipping
    old = t([0.0, 2.5, 1.0, 0.5])
    # clipped V = old + clip(V - old, -0.2, 0.2) = [0.2, 2.3, 1.2, 0.7]
    # (clipped - R)^2 = [1.69, 1.69, 3.24, 0.49]; max with [0.25, 1, 0, 1] = [1.69, 1.69, 3.24, 1]
    close(value_loss(v, ret, old, clip=0.2), [0.845, 0.845, 1.62, 0.5])
    # gradient: where the clipped term wins and V moved more than clip, the gradient is 0
    vv = v.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(value_loss(vv, ret, old, clip=0.2).sum(), vv)
    close(g, [0.0, 0.0, 0.0, 1.0])  # last: unclipped term wins, d/dV 0.5 (V - R)^2 = V - R = 1
