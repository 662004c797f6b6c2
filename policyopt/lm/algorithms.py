"""LM-only pieces of the GRPO family as small pure functions, registered into the shared registries.

Policy losses (``opmd``, ``asymre``) go into :data:`policyopt.losses.POLICY_LOSSES` with the shared
signature; advantage estimators (``bnpo``, ``spo``) into :data:`policyopt.advantages.ADVANTAGES`;
batch selectors / reshapers (dynamic sampling, overlong shaping, CPPO pruning, forking-token mask,
SEED-GRPO scaling) are plain functions collected in :data:`DATA_SELECTORS`. Everything else
(group advantages, PPO clip, aggregation, KL) is the shared core, not duplicated here.
Each function is unit-tested with hand-computed numbers in ``tests/test_lm_algorithms.py``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.advantages import functional as F
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig
from policyopt.losses.policy import ratio_stats
from policyopt.registry import Registry

DATA_SELECTORS: Registry = Registry("LM data selector")


# ----- policy losses ------------------------------------------------------------------------------
@POLICY_LOSSES.register("opmd")
def opmd(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """OPMD as a regularized REINFORCE loss (Yao et al., 2025, "Group-Relative REINFORCE Is Secretly an
    Off-Policy Algorithm", REC; arXiv 2509.24203): ``-A * logp + (tau / 2) * (logp - logp_old)^2`` per
    token, with ``A`` the group-mean-centred reward.

    Confirmed: the paper presents OPMD as REINFORCE with a group-mean baseline plus a quadratic
    penalty on the log-ratio to the behaviour policy, scaled by ``1/tau``-type regularization; here the
    coefficient is ``opmd_tau / 2`` (``hp.opmd_tau``). Not confirmed: whether the paper applies the
    penalty on sequence or token log-probs (we use tokens, aggregated like the rest of the loss)."""
    log_ratio = b.logp - b.logp_old
    per = -b.advantages * b.logp + 0.5 * hp.opmd_tau * log_ratio**2
    return agg(per, b.mask), ratio_stats(log_ratio.detach(), b.mask)


@POLICY_LOSSES.register("asymre")
def asymre(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """Asymmetric REINFORCE (Arnal et al., 2025, "Asymmetric REINFORCE for off-Policy Reinforcement
    Learning: Balancing positive and negative rewards"; reinterpreted in REC, arXiv 2509.24203): off-policy
    REINFORCE ``-(R - V) * logp`` with no importance ratio and a baseline ``V = mean_g R - delta``.
    With group-centred advantages ``A = R - mean_g R`` this is ``-(A + delta) * logp``. Confirmed in the
    paper's abstract: a *lower* baseline (delta > 0) emphasizes high-reward samples, and V below the
    behaviour policy's expected reward gives the policy-improvement guarantee. Not confirmed: the
    default delta (``hp.asymre_delta`` = 0.1)."""
    per = -(b.advantages + hp.asymre_delta) * b.logp
    return agg(per, b.mask), ratio_stats((b.logp - b.logp_old).detach(), b.mask)


# ----- advantage estimators -----------------------------------------------------------------------
def beta_pdf(p: Tensor, a: float, b: float) -> Tensor:
    """Density of Beta(a, b) at ``p`` (computed in log space)."""
    p = p.clamp(1e-6, 1 - 1e-6)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return torch.exp(log_norm + (a - 1) * torch.log(p) + (b - 1) * torch.log1p(-p))


def bnpo_params(mean: float, var: float) -> tuple[float, float]:
    """BNPO normalizer parameters from the running mean/variance of the per-prompt success rate:
    method-of-moments Beta(a, b) fit, then ``alpha = 1 + a/3``, ``beta = 1 + b/3``.

    (confirm) BNPO (Xiao et al., 2025, arXiv 2506.02864) writes ``A = (R - p(q)) / f_N(p(q); alpha,
    beta)`` with ``f_N`` a Beta density whose parameters follow the (Beta-modelled) distribution of
    ``p(q)``; the advantage form and the Beta density are confirmed from the paper's summary pages. The
    exact mapping ``alpha = 1 + a/3, beta = 1 + b/3`` is from memory of the paper's variance-optimal
    choice and could NOT be confirmed with the sources available here."""
    var = max(var, 1e-6)
    m = min(max(mean, 1e-3), 1 - 1e-3)
    common = max(m * (1 - m) / var - 1, 1e-3)
    a, b = m * common, (1 - m) * common
    return 1 + a / 3, 1 + b / 3


@torch.no_grad()
def bnpo_advantages(rewards: Tensor, group_ids: Tensor, alpha: float, beta: float) -> Tensor:
    """BNPO advantage ``(R - p_hat(q)) / f_Beta(p_hat(q); alpha, beta)`` with ``p_hat`` the group mean
    (binary rewards). With ``alpha = beta = 1`` (uniform density) it is the Dr. GRPO / REINFORCE-with-
    group-baseline advantage."""
    mean, _, count = F.group_stats(rewards, group_ids)
    adv = (rewards - mean) / beta_pdf(mean, alpha, beta)
    return torch.where(count > 1, adv, torch.zeros_like(adv))


@ADVANTAGES.register("bnpo")
def bnpo(x: AdvantageInputs, cfg: AdvantageConfig):
    """BNPO (Xiao et al., 2025, "Beta Normalization Policy Optimization"): group baseline, Beta-density
    normalizer fitted to the batch's per-prompt success rates (see :func:`bnpo_params`)."""
    mean, _, _ = F.group_stats(x.rewards, x.group_ids)
    ids = torch.unique(x.group_ids, return_inverse=True)[1]
    per_prompt = torch.zeros(int(ids.max()) + 1, dtype=mean.dtype).index_copy_(0, ids, mean)
    var = float(per_prompt.var()) if per_prompt.numel() > 1 else 0.25
    a, b = bnpo_params(float(per_prompt.mean()), var)
    adv = bnpo_advantages(x.rewards, x.group_ids, a, b)
    return (F.broadcast_to_tokens(adv, x.mask) if x.mask is not None else adv), None


class SPOTracker:
    """Single-stream Policy Optimization value tracker (Xu & Ding, 2025, arXiv 2509.13232).

    Per prompt, Beta counts ``(a, b)``; the baseline is ``v = a / (a + b)``. After observing reward
    ``r`` (in [0, 1]): ``a <- rho * a + r``, ``b <- rho * b + (1 - r)`` with the KL-adaptive discount
    ``rho = clip(2^(-D / D_half), rho_min, rho_max)`` where ``D`` is the policy KL since the prompt was
    last seen. Advantages ``r - v`` (v before the update) are whitened over the batch; prompts are
    sampled with priority ``sqrt(v (1 - v)) + eps``.
    (confirm) Confirmed from the abstract/summary: persistent per-prompt Bayesian success tracker with
    KL-adaptive discount, batch-global normalization, prioritized sampling by the tracker. The
    constants (D_half, rho bounds 0.875/0.96, eps 0.05) are from memory of the paper, not confirmed.
    """

    def __init__(
        self,
        n_prompts: int,
        d_half: float = 0.06,
        rho_min: float = 0.875,
        rho_max: float = 0.96,
        prior: float = 0.5,
        eps: float = 0.05,
    ):
        self.a = torch.full((n_prompts,), prior)
        self.b = torch.full((n_prompts,), prior)
        self.d_half, self.rho_min, self.rho_max, self.eps = d_half, rho_min, rho_max, eps

    def value(self, idx: Tensor) -> Tensor:
        return self.a[idx] / (self.a[idx] + self.b[idx])

    def update(self, idx: Tensor, rewards: Tensor, kl: float = 0.0) -> None:
        rho = min(max(2.0 ** (-kl / self.d_half), self.rho_min), self.rho_max)
        self.a[idx] = rho * self.a[idx] + rewards
        self.b[idx] = rho * self.b[idx] + (1 - rewards)

    def priorities(self) -> Tensor:
        v = self.a / (self.a + self.b)
        return (v * (1 - v)).sqrt() + self.eps

    def state_dict(self) -> dict:
        return {"a": self.a.clone(), "b": self.b.clone()}

    def load_state_dict(self, s: dict) -> None:
        self.a, self.b = s["a"].clone(), s["b"].clone()


@torch.no_grad()
def spo_advantages(rewards: Tensor, baselines: Tensor) -> Tensor:
    """SPO advantage: ``whiten(r - v)`` over the batch (no groups)."""
    return F.whiten(rewards - baselines)


# ----- data selection / reshaping ---------------------------------------------------------------
@DATA_SELECTORS.register("dynamic_sampling")
@torch.no_grad()
def informative_groups(rewards: Tensor, group_ids: Tensor, tol: float = 1e-8) -> Tensor:
    """DAPO dynamic sampling (Yu et al., 2025, "DAPO"): bool mask of completions whose group has a
    non-zero reward spread (all-correct / all-wrong groups carry no group-relative signal)."""
    ids = torch.unique(group_ids, return_inverse=True)[1]
    n = int(ids.max()) + 1
    hi = torch.full((n,), -math.inf, dtype=rewards.dtype).scatter_reduce(0, ids, rewards, "amax")
    lo = torch.full((n,), math.inf, dtype=rewards.dtype).scatter_reduce(0, ids, rewards, "amin")
    return (hi - lo)[ids] > tol


@DATA_SELECTORS.register("overlong_shaping")
def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment: ``min(-(len - (L_max - L_buf)) / L_buf, 0) * factor``, i.e. 0 up to
    ``L_max - L_buf`` tokens, then linearly down to ``-factor`` at ``L_max``."""
    lengths = lengths.to(torch.float32)
    return torch.clamp(-(lengths - (max_len - buffer)) / buffer, max=0.0) * factor


@DATA_SELECTORS.register("cppo")
@torch.no_grad()
def cppo_keep(advantages: Tensor, group_ids: Tensor, k: int) -> Tensor:
    """CPPO pruning (Lin et al., 2025, "CPPO: Accelerating the Training of Group Relative Policy
    Optimization-Based Reasoning Models", arXiv 2503.22342): keep only the ``k`` completions with the largest
    ``|A|`` in each group. Returns a bool mask (ties broken by position).

    Confirmed in the paper's abstract: completions with low absolute advantage are pruned, so only the
    high-``|A|`` ones go through the gradient pass; the released tables use ``G = 16`` and ``k`` in
    {8, 4, 2, 1}. Not confirmed: the tie-breaking rule (ours: earlier position wins)."""
    keep = torch.zeros_like(advantages, dtype=torch.bool)
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero().flatten()
        order = torch.argsort(advantages[idx].abs(), descending=True, stable=True)
        keep[idx[order[:k]]] = True
    return keep


def cppo_extra_prompts(n_prompts: int, group_size: int, k: int) -> int:
    """CPPO dynamic completion allocation: how many prompts to draw *beyond* ``n_prompts`` so that, once
    every group is pruned to ``k`` completions, the kept completions still fill the nominal batch of
    ``n_prompts * group_size``: ``ceil(n_prompts * G / k) - n_prompts`` (0 when ``k >= G``).

    Confirmed in the paper's abstract: the slots freed by pruning are refilled with completions of
    *additional questions* to keep the device busy. Not confirmed: whether the paper rounds the number of
    extra questions up (ours: up, then :func:`cppo_fill` trims the surplus to the exact batch size) and
    whether it generates the extra questions together with the nominal ones (ours: one generation call)."""
    if k >= group_size:
        return 0
    return math.ceil(n_prompts * group_size / k) - n_prompts


@torch.no_grad()
def cppo_fill(advantages: Tensor, group_ids: Tensor, k: int, target: int) -> Tensor:
    """CPPO prune-and-refill: prune every group to its top-``k`` completions by ``|A|`` (:func:`cppo_keep`),
    then take groups in order of first appearance (the nominal prompts first, then the extra ones drawn by
    :func:`cppo_extra_prompts`) until ``target`` completions are collected; a group cut short by the limit
    gives its highest-``|A|`` completions. Returns the sorted indices of the training batch
    (``min(target, groups * k)`` of them). Paper: Lin et al., 2025 (see :func:`cppo_keep`); the order in
    which refill groups are consumed and the partial last group are our choices, not confirmed."""
    picked: list[Tensor] = []
    first = {}
    for i, g in enumerate(group_ids.tolist()):
        first.setdefault(g, i)
    for g in sorted(first, key=first.get):
        idx = (group_ids == g).nonzero().flatten()
        order = torch.argsort(advantages[idx].abs(), descending=True, stable=True)
        picked.append(idx[order[:k]])
    out = torch.cat(picked)[:target] if picked else torch.zeros(0, dtype=torch.long)
    return out.sort().values


@DATA_SELECTORS.register("forking_tokens")
@torch.no_grad()
def high_entropy_mask(entropy: Tensor, mask: Tensor, top_frac: float = 0.2) -> Tensor:
    """ "Beyond the 80/20 Rule" (Wang et al., 2025): train only on the top-``top_frac`` highest-entropy
    ("forking") tokens of the batch. Returns the new 0/1 mask (at least one token kept)."""
    valid = mask > 0
    n = int(valid.sum())
    if n == 0:
        return mask
    k = max(1, int(math.ceil(top_frac * n)))
    thresh = torch.topk(entropy[valid], k).values[-1]
    return (valid & (entropy >= thresh)).to(mask.dtype)


@DATA_SELECTORS.register("seed_grpo")
@torch.no_grad()
def semantic_entropy_scale(answers: list[str], group_ids: Tensor, alpha: float = 1.0) -> Tensor:
    """SEED-GRPO (Chen et al., 2025): per-completion factor ``1 - alpha * SE(q) / log(G)`` where ``SE`` is
    the entropy of the empirical distribution of the group's answer clusters (exact-match clusters
    here) and ``log G`` its maximum; multiply the advantages by it. (confirm) Confirmed: advantage
    scaled by ``1 - alpha * SE/SE_max`` with semantic clusters of the group's answers; clustering by
    exact normalized answer instead of an entailment model is our simplification."""
    out = torch.ones(len(answers))
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero().flatten().tolist()
        counts: dict[str, int] = {}
        for i in idx:
            counts[answers[i]] = counts.get(answers[i], 0) + 1
        G = len(idx)
        if G < 2:
            continue
        p = torch.tensor(list(counts.values()), dtype=torch.float32) / G
        se = float(-(p * p.log()).sum())
        out[idx] = 1 - alpha * se / math.log(G)
    return out


@DATA_SELECTORS.register("d3s")
@torch.no_grad()
def d3s_select(advantages: Tensor, group_ids: Tensor, keep: int) -> Tensor:
    """D^3S sample level (Wang et al., 2025, "Learning More with Less: A Dynamic Dual-Level Down-Sampling
    Framework for Efficient Policy Optimization", arXiv 2509.22115; seeds 001/004): per group keep the
    ``keep`` completions that maximize the variance of the kept advantages (for a sorted 1-D set, an optimal
    subset takes ``j`` from the top and ``keep - j`` from the bottom; all splits are tried). Returns a bool
    mask.

    Confirmed in the paper's abstract: the sample level selects the rollout subset maximizing ``Var(A)``
    (shown to correlate with an upper bound on the policy-gradient norm). Not confirmed: the paper also has
    cross-group variants; this is the per-group (intra-group) form, and the population variance is used."""
    out = torch.zeros_like(advantages, dtype=torch.bool)
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero().flatten()
        if idx.numel() <= keep:
            out[idx] = True
            continue
        order = idx[torch.argsort(advantages[idx], stable=True)]
        best, best_v = None, -1.0
        for j in range(keep + 1):
            sel = torch.cat([order[: keep - j], order[order.numel() - j :]]) if j else order[:keep]
            v = float(advantages[sel].var(unbiased=False))
            if v > best_v:
                best, best_v = sel, v
        out[best] = True
    return out


@torch.no_grad()
def d3s_token_mask(advantages: Tensor, entropy: Tensor, mask: Tensor, ratio: float) -> Tensor:
    """D^3S token level (Wang et al., 2025, arXiv 2509.22115): among the valid tokens of ``mask`` (pass the
    completion mask of the rollouts kept by :func:`d3s_select`; other rows zeroed), keep the
    ``ceil(ratio * n)`` tokens with the largest ``|A_{i,t}| * H_{i,t}`` (advantage magnitude times the
    policy's token entropy) as the new 0/1 loss mask; ties are broken by position (row-major), at least one
    token is kept, ``ratio >= 1`` returns ``mask`` unchanged.

    Confirmed in the paper's abstract: tokens are prioritized by ``|A_{i,t}| x H_{i,t}``. Not confirmed:
    whether the top fraction is taken over the whole batch (ours, like the 80/20 forking-token mask) or per
    sequence / per group, and whether ``H`` is taken from the behaviour or the current policy (ours: the
    recomputed ``pi_old`` pass, identical at the first epoch)."""
    valid = (mask > 0).flatten()
    n = int(valid.sum())
    if ratio >= 1.0 or n == 0:
        return mask
    k = max(1, int(math.ceil(ratio * n - 1e-9)))
    score = (advantages.abs() * entropy).flatten().masked_fill(~valid, -math.inf)
    top = torch.argsort(score, descending=True, stable=True)[:k]
    out = torch.zeros_like(valid)
    out[top] = True
    return out.view_as(mask).to(mask.dtype)


def d3s_keep_ratio(step: int, total_steps: int, start: float, end: float) -> float:
    """D^3S dynamic down-sampling schedule (Wang et al., 2025, arXiv 2509.22115): the token keep ratio at
    RL step ``step`` (1-based), moving *linearly* from ``start`` at step 1 to ``end`` at ``total_steps``
    (constant ``start`` for a one-step run; clamped outside the range).

    Confirmed in the paper's abstract: the schedule is curriculum-inspired, starting with aggressive
    down-sampling and gradually relaxing it over training. NOT confirmed: its functional form (the paper's
    method section was not available here; linear is our choice), its start/end values (config keys
    ``d3s_token_ratio_start`` / ``d3s_token_ratio_end``), and whether the sample level is annealed as well
    (here the sample-level ``d3s_keep`` stays fixed)."""
    if total_steps <= 1:
        return start
    frac = min(max((step - 1) / (total_steps - 1), 0.0), 1.0)
    return start + (end - start) * frac


@ADVANTAGES.register("spo")
def spo(x: AdvantageInputs, cfg: AdvantageConfig):
    """SPO (Xu & Ding, 2025, "Single-stream Policy Optimization"): ``whiten(R - v)`` over the batch with
    ``v`` the persistent per-prompt tracker baseline passed in ``x.values`` (see :class:`SPOTracker`)."""
    if x.values is None:
        raise ValueError("advantage estimator needs values (the SPO tracker baselines)")
    adv = spo_advantages(x.rewards, x.values)
    return (F.broadcast_to_tokens(adv, x.mask) if x.mask is not None else adv), None
