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


def test_bnpo_matches_reference_recipe_by_hand():
    # Reference (changyi7231/BNPO compute_bnpo_outcome_advantage): p = group means, m/v = mean and unbiased
    # variance of the batch's per-prompt p, a = (m(1-m)/v - 1) m, b = (m(1-m)/v - 1)(1-m),
    # alpha = max(1 + a/3, 1), beta = max(1 + b/3, 1), adv = (R - p) / Beta(alpha, beta).pdf(p).
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    # p = (0.25, 0.75, 1.0): m = 2/3, v = ((5/12)^2 + (1/12)^2 + (1/3)^2) / 2 = 0.1770833...
    m, v = 2 / 3, ((5 / 12) ** 2 + (1 / 12) ** 2 + (1 / 3) ** 2) / 2
    c = m * (1 - m) / v - 1  # 0.254902...
    alpha, beta = 1 + c * m / 3, 1 + c * (1 - m) / 3
    assert A.bnpo_params(m, v) == (pytest.approx(alpha), pytest.approx(beta))
    norm = math.gamma(alpha + beta) / (math.gamma(alpha) * math.gamma(beta))

    def pdf(p):
        return norm * p ** (alpha - 1) * (1 - p) ** (beta - 1)

    expected = [
        (ri - p) / pdf(p) if 0 < p < 1 else 0.0 for ri, p in zip(r.tolist(), [0.25] * 4 + [0.75] * 4 + [1.0] * 4)
    ]
    adv, _ = ADVANTAGES.get("bnpo")(AdvantageInputs(rewards=r, group_ids=g), AdvantageConfig())
    torch.testing.assert_close(adv, torch.tensor(expected), atol=1e-5, rtol=1e-5)
    # negative method-of-moments parameters are clamped to the uniform density (alpha = beta = 1)
    assert A.bnpo_params(0.5, 0.3) == (1.0, 1.0)  # 0.25 / 0.3 - 1 < 0
    # a single prompt in the batch: uniform density, i.e. the Dr. GRPO advantage
    r1, g1 = torch.tensor([1.0, 0, 0, 1]), torch.zeros(4, dtype=torch.long)
    adv1, _ = ADVANTAGES.get("bnpo")(AdvantageInputs(rewards=r1, group_ids=g1), AdvantageConfig())
    torch.testing.assert_close(adv1, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # the 1/pdf weight is capped at 1e6 like the reference (pdf ~ 0 near p -> 0 with alpha >> 1)
    capped = A.bnpo_advantages(torch.tensor([1.0] + [0.0] * 99), torch.zeros(100, dtype=torch.long), 50.0, 1.0)
    assert capped[0].item() == pytest.approx(0.99 * 1e6, rel=1e-4)


def test_spo_per_prompt_drift_and_rho_like_reference():
    # Reference (verl-recipe spo): D = token-mean |logp_then - logp_now| per prompt; rho = 2^(-D/0.06)
    # clamped to [0.875, 0.96].
    then = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    now = torch.tensor([[-1.03, -1.97, -3.0], [-1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    d = A.spo_policy_drift(then, now, mask)
    torch.testing.assert_close(d, torch.tensor([0.02, 0.0]))  # (0.03 + 0.03 + 0) / 3; padded token ignored
    t = A.SPOTracker(3)
    # D = 0.02: 2^(-1/3) = 0.794 is below the floor -> 0.875; D = 0 (first visit): 1 -> ceiling 0.96
    torch.testing.assert_close(t.rho(d), torch.tensor([0.875, 0.96]))
    assert t.rho(0.005).item() == pytest.approx(2 ** (-0.005 / 0.06))  # 0.9439, inside the band
    t.update(torch.tensor([0, 1]), torch.tensor([1.0, 0.0]), kl=torch.tensor([0.005, 1.0]))
    r0 = 2 ** (-0.005 / 0.06)
    assert t.a[0].item() == pytest.approx(r0 * 0.5 + 1) and t.b[0].item() == pytest.approx(r0 * 0.5)
    assert t.a[1].item() == pytest.approx(0.875 * 0.5) and t.b[1].item() == pytest.approx(0.875 * 0.5 + 1)
    # sampling weight sqrt(v (1 - v)) + 0.05
    v0 = t.value(torch.tensor([0])).item()
    assert t.priorities()[0].item() == pytest.approx(math.sqrt(v0 * (1 - v0)) + 0.05)
    assert t.priorities()[2].item() == pytest.approx(0.5 + 0.05)


def test_spo_tracker_keeps_each_prompts_last_response_for_the_drift():
    t = A.SPOTracker(4, max_len=3)
    rows, comps, then = t.stored(torch.tensor([0, 2]))
    assert len(rows) == 0 and comps == []  # nothing seen yet: D = 0 for every prompt
    t.remember(
        torch.tensor([2, 0]),
        [[5, 6], [7, 8, 9, 10]],
        [torch.tensor([-0.5, -1.0]), torch.tensor([-1.0, -2.0, -3.0, -4.0])],
    )
    rows, comps, then = t.stored(torch.tensor([1, 2, 0]))
    assert rows.tolist() == [1, 2] and comps == [[5, 6], [7, 8, 9]]  # truncated to the buffer length
    torch.testing.assert_close(then, torch.tensor([[-0.5, -1.0, 0.0], [-1.0, -2.0, -3.0]]))
    t.remember(torch.tensor([2]), [[4]], [torch.tensor([-0.25])])  # the newest response replaces the old
    assert t.stored(torch.tensor([2]))[1] == [[4]]
    u = A.SPOTracker(4, max_len=3)
    u.load_state_dict(t.state_dict())
    assert u.stored(torch.tensor([0, 2]))[1] == [[7, 8, 9], [4]]


def test_forking_mask_equals_batch_quantile_rule():
    # TRL's implementation of the 80/20 paper keeps tokens with entropy >= quantile_0.8 of the batch's valid
    # tokens; the top-ceil(0.2 n) rule selects the same set.
    gen = torch.Generator().manual_seed(0)
    for n_cols in range(1, 14):
        ent = torch.rand(3, n_cols, generator=gen)
        mask = (torch.rand(3, n_cols, generator=gen) > 0.3).float()
        if mask.sum() == 0:
            continue
        ours = A.high_entropy_mask(ent, mask, 0.2).bool()
        thr = torch.quantile(ent[mask.bool()], 0.8)
        ref = (ent >= thr) & mask.bool()
        assert torch.equal(ours, ref), n_cols


def test_lm_presets_use_reference_coefficients():
    from policyopt import algos

    assert algos.get("cpgd").defaults["loss"] == {"drift_coef": 0.01}  # MM-EUREKA --policy_drift_coef 0.01
    assert algos.get("opmd").defaults["loss"] == {"opmd_tau": 0.2}  # REC regularizer_coef 0.1 = tau / 2
    assert algos.get("spo").defaults["loss"] == {"clip_eps_low": 0.2, "clip_eps_high": 0.28}
    assert PolicyLossConfig().asymre_delta == 0.1  # REC "forward-kl" regularizer_coef 0.1


def test_dynamic_sampling_and_overlong():
    keep = A.informative_groups(torch.tensor([1.0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    assert keep.tolist() == [False, False, True, True]
    pen = A.overlong_penalty(torch.tensor([4, 6, 8]), max_len=8, buffer=4)
    torch.testing.assert_close(pen, torch.tensor([0.0, -0.5, -1.0]))


def test_d3s_and_forking_exact_k():
    g = torch.zeros(4, dtype=torch.long)
    assert A.d3s_select(torch.tensor([-1.0, 0.0, 0.1, 1.0]), g, 2).tolist() == [True, False, False, True]
    ent = torch.tensor([[0.1, 0.9, 0.5], [0.7, 0.2, 9.0]])
    m = A.high_entropy_mask(ent, torch.tensor([[1.0, 1, 1], [1, 1, 0]]), 0.4)  # 5 tokens -> top 2; 9.0 is masked
    assert m.tolist() == [[0, 1, 0], [1, 0, 0]]
    # ties: exactly k = ceil(0.2 * 10) = 2 tokens, the earliest (row-major) among equal entropies
    tied = A.high_entropy_mask(torch.ones(2, 5), torch.ones(2, 5), 0.2)
    assert tied.tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert A.high_entropy_mask(torch.zeros(3, 7), torch.ones(3, 7), 0.2).sum() == 5  # ceil(4.2)


def test_forking_token_normalizers_differ_by_the_selected_fraction():
    """80/20 with token-mean aggregation: the authors' code divides the masked loss by the selected tokens, the
    paper's equation (and TRL) by all completion tokens: L_all = L_selected * k / n."""
    from policyopt.lm.trainer import _DenomAggregator

    torch.manual_seed(0)
    cmask = torch.tensor([[1.0] * 5, [1.0] * 4 + [0.0]])  # n = 9 tokens
    ent, adv = torch.rand(2, 5), torch.randn(2, 1).expand(2, 5) * cmask
    sel = A.high_entropy_mask(ent, cmask, 0.2)  # k = 2
    lp = torch.full((2, 5), -1.0, requires_grad=True)
    b = PolicyBatch(lp, lp.detach(), adv, sel)
    ppo = POLICY_LOSSES.get("ppo_clip")
    l_sel, _ = ppo(b, PolicyLossConfig(), Aggregator.for_batch("token-mean", sel))
    l_all, _ = ppo(b, PolicyLossConfig(), _DenomAggregator(Aggregator.for_batch("token-mean", cmask), cmask))
    hand = -(adv * sel).sum()  # ratio 1: the per-token loss is -A on the 2 selected tokens
    assert int(sel.sum()) == 2
    torch.testing.assert_close(l_sel, hand / 2)
    torch.testing.assert_close(l_all, hand / 9)


def test_cppo_prunes_over_the_whole_batch_by_abs_advantage():
    """Authors' rule: N completions, pruning rate P = 1 - keep/G; keep the floor(N (1 - P)) with the largest |A|
    over the batch; the prompt batch is enlarged to floor(n / (1 - P))."""
    assert A.cppo_prompts(32, 8, 4) == 64 and A.cppo_prompts(4, 4, 3) == 5 and A.cppo_prompts(2, 4, 2) == 4
    # GRPO advantages of 3 groups of G = 4: a lone success, all equal (A = 0), two of four
    r = torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    a, _ = ADVANTAGES.get("grpo")(AdvantageInputs(rewards=r, group_ids=g), AdvantageConfig())
    # |A| ~ [1.5, .5, .5, .5, 0, 0, 0, 0, .866, .866, .866, .866]; keep 12 * 2 // 4 = 6, returned in batch order
    assert A.cppo_select(a, keep=2, group_size=4).tolist() == [0, 1, 8, 9, 10, 11]  # all-equal group: no slot
    assert A.cppo_select(a, keep=3, group_size=4).tolist() == [0, 1, 2, 3, 4, 8, 9, 10, 11]  # ties: earliest


def test_seed_grpo_semantic_entropy_from_old_policy_likelihoods():
    """SEED-GRPO: A_hat = A * (1 - alpha * SE / log G), SE = -sum_k p_k log p_k with p_k the cluster's share of
    exp(length-normalized log-likelihood) in the group."""
    answers = ["1", "1", "2", "3"]
    ll = torch.tensor([-0.1, -0.2, -0.5, -1.0])
    w = [math.exp(x) for x in ll.tolist()]
    p = [(w[0] + w[1]) / sum(w), w[2] / sum(w), w[3] / sum(w)]
    se = -sum(q * math.log(q) for q in p)
    assert A.semantic_entropy(answers, ll) == pytest.approx(se, rel=1e-6)
    g = torch.zeros(4, dtype=torch.long)
    expected = torch.full((4,), 1 - 0.5 * se / math.log(4))
    torch.testing.assert_close(A.semantic_entropy_scale(answers, g, 0.5, ll), expected)
    freq = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # frequency estimate: equal mass per completion
    assert A.semantic_entropy(answers) == pytest.approx(freq)
    # a group of G distinct answers has SE = log G: the preset's alpha leaves its advantages almost unscaled
    from policyopt import algos

    cfg = algos.build_config("seed_grpo")
    s = A.semantic_entropy_scale(["1", "2", "3", "4", "5", "5"], torch.tensor([0, 0, 0, 0, 1, 1]), cfg.seed_alpha)
    assert s[:4].tolist() == pytest.approx([1 - cfg.seed_alpha] * 4) and s[4:].tolist() == [1.0, 1.0]
    assert s.min() > 0.9 and cfg.advantage == "dr_grpo"  # mean-centred, not std-divided


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
