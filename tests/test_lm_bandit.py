"""Property tests of the LM presets on a prompt bandit: prompts with hidden success probabilities,
a tabular softmax policy over candidate answers (one token per completion, or several tokens with
variable lengths where aggregation matters). Losses are built exactly as the trainer builds them:
the preset's advantage estimator, policy loss and aggregation from the shared registries."""

import pytest
import torch

from policyopt import algos
from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.losses import AGGREGATIONS, POLICY_LOSSES, Aggregator, PolicyBatch

G = 4
REWARDS = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])  # 2 prompts x 4 completions
GROUPS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def _policy_batch():
    """Tabular softmax policy: 2 prompts x 3 answers; completions pick answers; pi_old a perturbed copy."""
    torch.manual_seed(0)
    theta = torch.randn(2, 3, requires_grad=True)
    actions = torch.tensor([0, 1, 0, 2, 1, 2, 0, 1])
    logp = torch.log_softmax(theta, -1)[GROUPS, actions][:, None]
    logp_old = logp.detach() + torch.tensor([0.3, -0.3, 0.05, -0.02, 0.4, -0.25, 0.0, 0.1])[:, None]
    return theta, logp, logp_old, torch.ones(8, 1)


def _preset_loss(name, rewards=REWARDS, components=None):
    cfg = algos.build_config(name)
    theta, logp, logp_old, mask = _policy_batch()
    x = AdvantageInputs(rewards=rewards, group_ids=GROUPS, mask=mask, reward_components=components)
    adv, _ = ADVANTAGES.get(cfg.advantage)(x, AdvantageConfig(std_eps=cfg.std_eps))
    agg = Aggregator.for_batch(cfg.aggregation, mask, cfg.const_len or 1)
    loss, _ = POLICY_LOSSES.get(cfg.policy_loss)(PolicyBatch(logp, logp_old, adv, mask), cfg.loss, agg)
    (g,) = torch.autograd.grad(loss, theta)
    return cfg, loss, g


def _hand(per_sample):
    """Loss and gradient of the mean of a hand-written per-sample formula (all sequences have 1 token)."""
    theta, logp, logp_old, _ = _policy_batch()
    loss = per_sample(logp[:, 0], logp_old[:, 0]).mean()
    (g,) = torch.autograd.grad(loss, theta)
    return loss, g


def _grpo_adv(r, scale=True):
    out = torch.zeros_like(r)
    for k in (0, 1):
        s = r[GROUPS == k]
        out[GROUPS == k] = (s - s.mean()) / ((s.std() + 1e-6) if scale else 1.0)
    return out


def _clip(lp, lo, A, lo_eps, hi_eps):
    r = torch.exp(lp - lo)
    return torch.maximum(-A * r, -A * torch.clamp(r, 1 - lo_eps, 1 + hi_eps))


HAND = {
    "grpo": lambda lp, lo: _clip(lp, lo, _grpo_adv(REWARDS), 0.2, 0.2),
    "dr_grpo": lambda lp, lo: _clip(lp, lo, _grpo_adv(REWARDS, False), 0.2, 0.2),
    "dapo": lambda lp, lo: _clip(lp, lo, _grpo_adv(REWARDS), 0.2, 0.28),
    "rloo": lambda lp, lo: _clip(lp, lo, _grpo_adv(REWARDS, False) * G / (G - 1), 0.2, 0.2),
    "cispo": lambda lp, lo: -torch.clamp(torch.exp(lp - lo), max=5.0).detach() * _grpo_adv(REWARDS) * lp,  # cap only
    "cpgd": lambda lp, lo: (
        torch.maximum(
            -_grpo_adv(REWARDS) * (lp - lo),
            -_grpo_adv(REWARDS) * torch.clamp(lp - lo, torch.log(torch.tensor(0.8)), torch.log(torch.tensor(1.2))),
        )
        + 0.01 * (torch.exp(lp - lo) - 1 - (lp - lo))  # preset drift coefficient (ratios here stay < 3)
    ),
    # one token per sequence: the GSPO sequence ratio is the token ratio, with GSPO's tight clip range
    "gspo": lambda lp, lo: _clip(lp, lo, _grpo_adv(REWARDS), 3e-4, 4e-4),
    "opmd": lambda lp, lo: -_grpo_adv(REWARDS, False) * lp + 0.1 * (lp - lo) ** 2,  # tau / 2, tau = 0.2
    "asymre": lambda lp, lo: -(_grpo_adv(REWARDS, False) + 0.1) * lp,  # baseline mean - delta
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_preset_loss_and_gradient_match_formula(name):
    _, loss, g = _preset_loss(name)
    hl, hg = _hand(HAND[name])
    torch.testing.assert_close(loss, hl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g, hg, atol=1e-5, rtol=1e-5)
    assert g.abs().sum() > 0


def test_reinforce_pp_baseline_and_gdpo_formulas():
    def whiten(x):
        return (x - x.mean()) / (x.std() + 1e-8)

    _, loss, g = _preset_loss("reinforce_pp_baseline")
    hl, hg = _hand(lambda lp, lo: _clip(lp, lo, whiten(_grpo_adv(REWARDS, False)), 0.2, 0.2))
    torch.testing.assert_close((loss, g), (hl, hg), atol=1e-5, rtol=1e-5)
    comps = torch.stack([REWARDS, torch.tensor([1.0, 1, 0, 1, 0, 1, 1, 1])], 1)
    _, loss, g = _preset_loss("gdpo", REWARDS + comps[:, 1], comps)
    a = whiten(_grpo_adv(comps[:, 0]) + _grpo_adv(comps[:, 1]))
    hl, hg = _hand(lambda lp, lo: _clip(lp, lo, a, 0.2, 0.2))
    torch.testing.assert_close((loss, g), (hl, hg), atol=1e-5, rtol=1e-5)


def test_gdpo_does_not_collapse_distinct_reward_combinations():
    """Two groups of 2: {(0,0),(0,1)} and {(0,0),(1,1)}. GRPO on the summed reward (totals {0,1} vs {0,2})
    gives both groups the same advantages; GDPO keeps them apart (the second group is better on both)."""
    comps = torch.tensor([[0.0, 0.0], [0.0, 1.0], [0.0, 0.0], [1.0, 1.0]])
    groups = torch.tensor([0, 0, 1, 1])
    cfg = AdvantageConfig()
    grpo, _ = ADVANTAGES.get("grpo")(AdvantageInputs(rewards=comps.sum(1), group_ids=groups), cfg)
    gdpo, _ = ADVANTAGES.get("gdpo")(
        AdvantageInputs(rewards=comps.sum(1), group_ids=groups, reward_components=comps), cfg
    )
    torch.testing.assert_close(grpo[:2], grpo[2:])  # collapse
    assert gdpo[3] > gdpo[1] + 0.1 and gdpo[2] < gdpo[0] - 0.1  # distinct


def _var_len_batch(B=6, L=5):
    torch.manual_seed(1)
    lens = torch.tensor([1, 5, 3, 2, 4, 5])[:B]
    mask = (torch.arange(L)[None] < lens[:, None]).float()
    logits = torch.randn(B, L, 7, requires_grad=True)
    tgt = torch.randint(0, 7, (B, L))
    old = torch.randn(B, L) * 0.1
    adv = torch.randn(B)[:, None].expand(B, L).clone()
    return logits, tgt, old, adv, mask, lens


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
@pytest.mark.parametrize("loss_name", ["ppo_clip", "gspo", "cispo", "cpgd", "opmd"])
def test_micro_batch_invariance_of_the_gradient(mode, loss_name):
    logits, tgt, old, adv, mask, _ = _var_len_batch()
    cfg = algos.build_config("grpo")

    def grad(chunks):
        agg = Aggregator.for_batch(mode, mask, 5)  # global denominators, as in the trainer
        logits.grad = None
        for idx in chunks:
            lp = torch.log_softmax(logits[idx], -1).gather(-1, tgt[idx, :, None]).squeeze(-1)
            old_i = lp.detach() + old[idx]
            loss, _ = POLICY_LOSSES.get(loss_name)(PolicyBatch(lp, old_i, adv[idx], mask[idx]), cfg.loss, agg)
            loss.backward()
        return logits.grad.clone()

    full = grad([torch.arange(6)])
    micro = grad([torch.tensor([0, 1]), torch.tensor([2]), torch.tensor([3, 4, 5])])
    torch.testing.assert_close(full, micro, atol=1e-6, rtol=1e-5)
    assert full.abs().sum() > 0


def test_gspo_equals_grpo_on_policy_and_differs_off_policy():
    """With one optimizer step per batch (pi_old = pi_theta, every ratio 1, nothing clipped), GSPO's gradient
    through the sequence ratio exp(mean_t log r_t) equals GRPO's seq-mean-token-mean gradient (the two
    presets' learning curves coincide in benchmarks/bench/lm_addition); off-policy they differ."""
    logits, tgt, old, adv, mask, _ = _var_len_batch()

    def grad(name, shift):
        cfg = algos.build_config(name)
        agg = Aggregator.for_batch(cfg.aggregation, mask, 5)
        logits.grad = None
        lp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None]).squeeze(-1)
        loss, _ = POLICY_LOSSES.get(cfg.policy_loss)(PolicyBatch(lp, lp.detach() + shift, adv, mask), cfg.loss, agg)
        loss.backward()
        return logits.grad.clone()

    torch.testing.assert_close(grad("gspo", 0.0), grad("grpo", 0.0), atol=1e-7, rtol=1e-6)
    assert (grad("gspo", old) - grad("grpo", old)).abs().max() > 1e-3


def test_dr_grpo_per_sequence_weight_independent_of_length():
    """On-policy (r = 1) the gradient w.r.t. each token's log-prob is -A_i * w_i. Dr. GRPO's aggregation
    gives w_i = 1 / (B * L) for every sequence; GRPO's seq-mean-token-mean gives 1 / (B * |o_i|)."""
    _, _, _, _, mask, lens = _var_len_batch()
    adv = torch.ones(6, 5)
    weights = {}
    for name in ("dr_grpo", "grpo"):
        cfg = algos.build_config(name)
        lp = torch.zeros(6, 5, requires_grad=True)
        agg = Aggregator.for_batch(cfg.aggregation, mask, 5)
        loss, _ = POLICY_LOSSES.get(cfg.policy_loss)(PolicyBatch(lp, lp.detach(), adv, mask), cfg.loss, agg)
        loss.backward()
        weights[name] = -lp.grad[:, 0]  # first token of every sequence
    torch.testing.assert_close(weights["dr_grpo"], torch.full((6,), 1 / 30))
    torch.testing.assert_close(weights["grpo"], 1 / (6 * lens.float()))
    assert weights["grpo"].std() > 0


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "cispo", "gspo", "cpgd", "reinforce_pp_baseline", "opmd"])
def test_bandit_learning_raises_expected_success(name):
    """Tabular softmax over 4 answers for 5 prompts, hidden success probabilities; 60 group updates."""
    cfg = algos.build_config(name)
    gen = torch.Generator().manual_seed(0)
    p_success = torch.tensor([[0.9, 0.2, 0.1, 0.0]] * 5)
    theta = torch.zeros(5, 4, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)

    def expected():
        return (torch.softmax(theta, -1) * p_success).sum(-1).mean().item()

    before = expected()
    for _ in range(60):
        with torch.no_grad():
            probs = torch.softmax(theta, -1)
        groups = torch.arange(5).repeat_interleave(8)
        acts = torch.multinomial(probs[groups], 1, generator=gen).squeeze(-1)
        r = (torch.rand(40, generator=gen) < p_success[groups, acts]).float()
        mask = torch.ones(40, 1)
        logp = torch.log_softmax(theta, -1)[groups, acts][:, None]
        adv, _ = ADVANTAGES.get(cfg.advantage)(
            AdvantageInputs(rewards=r, group_ids=groups, mask=mask), AdvantageConfig()
        )
        loss, _ = POLICY_LOSSES.get(cfg.policy_loss)(
            PolicyBatch(logp, logp.detach(), adv, mask),
            cfg.loss,
            Aggregator.for_batch(cfg.aggregation, mask, 1),
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert expected() > before + 0.3
