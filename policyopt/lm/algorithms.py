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
    token, with ``A = R - mean_g R`` (group-mean baseline, no std scaling), token-mean aggregation.

    Confirmed against the REC authors' reference code (facts only): Trinity-RFT
    ``trinity/algorithm/policy_loss_fn/rec_policy_loss.py`` (regularizer ``"k2"``) adds
    ``regularizer_coef * (logprob - old_logprob)^2`` to ``-A * logprob`` *per token* and aggregates with
    ``token-mean``; its comment says Kimi's 1/2 is absorbed into the coefficient, so ``regularizer_coef`` =
    ``tau / 2`` here. The REC example (``examples/rec_gsm8k/README.md``, "Kimi's OPMD") uses
    ``regularizer_coef: 0.1`` with ``std_normalize: false`` and no importance weight or clipping; the ``opmd``
    preset therefore sets ``opmd_tau = 0.2`` (``PolicyLossConfig.opmd_tau`` keeps its generic default 1.0).
    Kimi k1.5's original form squares the *sequence* log-ratio; REC/Trinity (what we follow) squares each
    token's log-ratio."""
    log_ratio = b.logp - b.logp_old
    per = -b.advantages * b.logp + 0.5 * hp.opmd_tau * log_ratio**2
    return agg(per, b.mask), ratio_stats(log_ratio.detach(), b.mask)


@POLICY_LOSSES.register("asymre")
def asymre(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """Asymmetric REINFORCE (Arnal et al., 2025, "Asymmetric REINFORCE for off-Policy Reinforcement
    Learning: Balancing positive and negative rewards", arXiv 2506.20520; reinterpreted in REC, arXiv
    2509.24203): off-policy REINFORCE ``-(R - V) * logp`` with no importance ratio and a baseline
    ``V = mean_g R - delta``. With group-centred advantages ``A = R - mean_g R`` this is ``-(A + delta) * logp``.

    Sign convention (confirmed): the paper writes ``A = r - V`` and ``delta V = V - V^mu`` (baseline minus the
    behaviour policy's expected reward); lowering ``V`` emphasizes high-reward samples and ``V < V^mu`` gives
    the policy-improvement guarantee (abstract, arXiv 2506.20520 / OpenReview Ql3sENn0mi), and the
    recommended setting is a small negative ``delta V`` (sciencestack.ai summary of 2506.20520).
    Our ``delta`` is ``-delta V``, so ``delta > 0`` is the
    paper's regime. Default ``delta = 0.1`` (``hp.asymre_delta``) matches the REC reference instantiation
    (Trinity-RFT ``examples/rec_gsm8k/README.md``, "Meta's AsymRE": regularizer ``"forward-kl"``,
    ``regularizer_coef: 0.1``, ``std_normalize: false``), whose loss in ``rec_policy_loss.py`` is
    ``-A * logp - 0.1 * logp`` per token, token-mean: exactly ``-(A + 0.1) * logp``."""
    per = -(b.advantages + hp.asymre_delta) * b.logp
    return agg(per, b.mask), ratio_stats((b.logp - b.logp_old).detach(), b.mask)


# ----- advantage estimators -----------------------------------------------------------------------
def beta_pdf(p: Tensor, a: float, b: float) -> Tensor:
    """Density of Beta(a, b) at ``p`` (computed in log space)."""
    p = p.clamp(1e-6, 1 - 1e-6)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return torch.exp(log_norm + (a - 1) * torch.log(p) + (b - 1) * torch.log1p(-p))


def bnpo_params(mean: float, var: float) -> tuple[float, float]:
    """BNPO normalizer parameters from the mean/variance of the batch's per-prompt success rates ``p(q)``:
    method-of-moments Beta(a, b) fit ``a = (m (1 - m) / v - 1) m``, ``b = (m (1 - m) / v - 1) (1 - m)``, then
    ``alpha = max(1 + a/3, 1)``, ``beta = max(1 + b/3, 1)``.

    Confirmed against the authors' code (facts only): changyi7231/BNPO ``recipe/bnpo/src/bnpo_ray_trainer.py``
    (``compute_bnpo_outcome_advantage``) computes ``p`` as each group's mean reward, ``m``/``v`` as the mean
    and unbiased variance of those per-prompt means *in the current batch* (not a running average across
    steps), the method-of-moments ``a``/``b`` above, ``alpha = clamp(1 + a/3, min=1)``,
    ``beta = clamp(1 + b/3, min=1)``; with a single prompt it uses ``m = 0, v = 1`` which gives
    ``alpha = beta = 1``. Here ``v`` is floored at 1e-6 (the reference divides by zero when every prompt has
    the same rate) and a single prompt returns ``(1, 1)`` directly."""
    var = max(var, 1e-6)
    common = mean * (1 - mean) / var - 1
    a, b = common * mean, common * (1 - mean)
    return max(1 + a / 3, 1.0), max(1 + b / 3, 1.0)


@torch.no_grad()
def bnpo_advantages(rewards: Tensor, group_ids: Tensor, alpha: float, beta: float) -> Tensor:
    """BNPO advantage ``(R - p_hat(q)) / f_Beta(p_hat(q); alpha, beta)`` with ``p_hat`` the group mean
    (binary rewards in [0, 1]; the reference rescales other rewards affinely into [0, 1] first). The weight
    ``1 / f_Beta`` is capped at 1e6 as in the reference code. With ``alpha = beta = 1`` (uniform density) it is
    the Dr. GRPO / REINFORCE-with-group-baseline advantage. Singleton groups get 0 (library convention; the
    reference uses ``p = 0`` for them)."""
    mean, _, count = F.group_stats(rewards, group_ids)
    adv = (rewards - mean) * (1.0 / beta_pdf(mean, alpha, beta)).clamp(max=1e6)
    return torch.where(count > 1, adv, torch.zeros_like(adv))


@ADVANTAGES.register("bnpo")
def bnpo(x: AdvantageInputs, cfg: AdvantageConfig):
    """BNPO (Xiao et al., 2025, "BNPO: Beta Normalization Policy Optimization", arXiv 2506.02864): group
    baseline, Beta-density normalizer fitted to the batch's per-prompt success rates (see :func:`bnpo_params`).
    Not implemented: the paper's advantage decomposition for multi-component rewards."""
    mean, _, _ = F.group_stats(x.rewards, x.group_ids)
    ids = torch.unique(x.group_ids, return_inverse=True)[1]
    per_prompt = torch.zeros(int(ids.max()) + 1, dtype=mean.dtype).index_copy_(0, ids, mean)
    if per_prompt.numel() > 1:
        a, b = bnpo_params(float(per_prompt.mean()), float(per_prompt.var()))
    else:  # one prompt: uniform density (the reference's m = 0, v = 1 gives the same)
        a, b = 1.0, 1.0
    adv = bnpo_advantages(x.rewards, x.group_ids, a, b)
    return (F.broadcast_to_tokens(adv, x.mask) if x.mask is not None else adv), None


class SPOTracker:
    """Single-stream Policy Optimization value tracker (Xu & Ding, 2025, arXiv 2509.13232).

    Per prompt, Beta counts ``(a, b)``; the baseline is ``v = a / (a + b)``. After observing reward
    ``r`` (in [0, 1]): ``a <- rho * a + r``, ``b <- rho * b + (1 - r)`` with the KL-adaptive discount
    ``rho = clip(2^(-D / D_half), rho_min, rho_max)``. Advantages ``r - v`` (v before the update) are whitened
    over the batch; prompts are sampled with probability proportional to ``sqrt(v (1 - v)) + eps``.

    Confirmed against the authors' reference code (facts only): verl-project/verl-recipe
    ``spo/spo_ray_trainer.py`` uses ``D_half = 0.06``, ``rho = 2^(-D / D_half)`` clamped to
    ``[clip_lower, 0.96]`` with ``clip_lower = 0.875`` in its run script (``SPO_RHO_CLIP_LOWER``), the update
    ``alpha <- rho alpha + r``, ``beta <- rho beta + (1 - r)`` after the policy step, the advantage
    ``(r - p_hat - mean) / (std + 1e-8)`` over the batch (unbiased std, as :func:`spo_advantages`), and sampling
    weights ``sqrt(p_hat (1 - p_hat)) + 0.05``; with no offline estimate (``offline_N = 0``) it starts every
    prompt at ``alpha = beta = 0.5`` (``prior``). There ``D`` is *per prompt*: the token-mean of
    ``|logp_stored - logp_now|`` on the prompt's last sampled response, re-scored by the current policy
    (:func:`spo_policy_drift`); a prompt seen for the first time has ``D = 0`` (so ``rho = 0.96``).
    :meth:`update` takes such a per-prompt tensor or one scalar for all prompts; the LM trainer passes the
    per-prompt drift, re-scoring the responses kept by :meth:`remember` (also saved in checkpoints).
    Not reproduced here: the reference's offline initialization ``alpha0 = N_init (s + 0.5) / (N + 1)``,
    ``beta0 = N_init (N - s + 0.5) / (N + 1)`` with ``N_init = 1 / (1 - clip_lower)`` from ``N`` offline samples
    with ``s`` successes (pass ``prior`` for the no-offline case).
    """

    def __init__(
        self,
        n_prompts: int,
        d_half: float = 0.06,
        rho_min: float = 0.875,
        rho_max: float = 0.96,
        prior: float = 0.5,
        eps: float = 0.05,
        max_len: int = 0,
    ):
        self.a = torch.full((n_prompts,), prior)
        self.b = torch.full((n_prompts,), prior)
        self.d_half, self.rho_min, self.rho_max, self.eps = d_half, rho_min, rho_max, eps
        # each prompt's last sampled response and its sampling-time log-probs (length 0: never seen)
        self.last_ids = torch.zeros((n_prompts, max_len), dtype=torch.long)
        self.last_logp = torch.zeros((n_prompts, max_len))
        self.last_len = torch.zeros((n_prompts,), dtype=torch.long)

    def remember(self, idx: Tensor, completion_ids: list[list[int]], logps: list[Tensor]) -> None:
        """Store each prompt's newest response (later rows win for a repeated prompt)."""
        for p, c, lp in zip(idx.tolist(), completion_ids, logps):
            n = min(len(c), self.last_ids.shape[1])
            self.last_ids[p, :n] = torch.as_tensor(c[:n], dtype=torch.long)
            self.last_logp[p, :n] = lp[:n].float()
            self.last_len[p] = n

    def stored(self, idx: Tensor) -> tuple[Tensor, list[list[int]], Tensor]:
        """``(rows, completions, logp_then)`` for the rows of ``idx`` whose prompt has a stored response;
        ``logp_then`` is padded to the buffer length."""
        rows = (self.last_len[idx] > 0).nonzero().flatten()
        p = idx[rows]
        comps = [self.last_ids[i, : int(self.last_len[i])].tolist() for i in p]
        return rows, comps, self.last_logp[p]

    def value(self, idx: Tensor) -> Tensor:
        return self.a[idx] / (self.a[idx] + self.b[idx])

    def rho(self, kl: float | Tensor) -> Tensor:
        """KL-adaptive discount ``clip(2^(-D / D_half), rho_min, rho_max)`` (scalar or per prompt)."""
        d = torch.as_tensor(kl, dtype=self.a.dtype)
        return torch.pow(2.0, -d / self.d_half).clamp(self.rho_min, self.rho_max)

    def update(self, idx: Tensor, rewards: Tensor, kl: float | Tensor = 0.0) -> None:
        rho = self.rho(kl)
        self.a[idx] = rho * self.a[idx] + rewards
        self.b[idx] = rho * self.b[idx] + (1 - rewards)

    def priorities(self) -> Tensor:
        v = self.a / (self.a + self.b)
        return (v * (1 - v)).sqrt() + self.eps

    def state_dict(self) -> dict:
        return {"a": self.a.clone(), "b": self.b.clone(), "last_ids": self.last_ids.clone(),
                "last_logp": self.last_logp.clone(), "last_len": self.last_len.clone()}

    def load_state_dict(self, s: dict) -> None:
        self.a, self.b = s["a"].clone(), s["b"].clone()
        for k in ("last_ids", "last_logp", "last_len"):
            if k in s:  # checkpoints written before the per-prompt drift keep the zero-length buffers
                setattr(self, k, s[k].clone())


@torch.no_grad()
def spo_policy_drift(logp_then: Tensor, logp_now: Tensor, mask: Tensor) -> Tensor:
    """SPO's per-prompt policy drift ``D``: the token-mean of ``|logp_then - logp_now|`` over the valid tokens
    of each row (the prompt's last sampled response scored when it was sampled and by the current policy),
    as in the reference ``_get_spo_rho`` (verl-recipe ``spo/spo_ray_trainer.py``). Shape (B, T) -> (B,)."""
    m = mask.to(logp_now.dtype)
    return ((logp_then - logp_now).abs() * m).sum(-1) / m.sum(-1).clamp(min=1)


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
    """ "Beyond the 80/20 Rule" (Wang et al., 2025, arXiv 2506.01939): train only on the top-``top_frac``
    highest-entropy ("forking") tokens of the batch. Returns the new 0/1 mask (at least one token kept).

    Confirmed (abstract: "only 20% of the tokens"; the batch-level threshold): TRL's implementation of the
    paper (``GRPOTrainer.get_high_entropy_mask``, ``top_entropy_quantile``) keeps tokens whose entropy is
    ``>=`` the ``1 - top_frac`` quantile of all valid tokens of the batch (gathered over processes); for
    ``top_frac = 0.2`` that selects the same ``ceil(0.2 n)`` tokens (ties included) as this top-k rule.
    Convention difference (trainer level, not changed here): TRL multiplies the per-token loss by this mask
    but keeps the normalizer of the *full* completion mask, so the loss is ~``top_frac`` times ours when the
    returned mask is used as the loss mask with token-mean aggregation (same gradient direction, different
    scale). Entropy should come from the current training policy; the trainer passes the ``pi_old`` pass
    (identical at the first epoch)."""
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
    """SEED-GRPO (Chen et al., 2025, arXiv 2505.12346): per-completion factor ``1 - alpha * SE(q) / log(G)``
    where ``SE`` is the entropy of the empirical distribution of the group's answer clusters (exact-match
    clusters here) and ``log G`` its maximum; multiply the advantages by it.

    Confirmed from the paper's summaries (arXiv HTML abstract; themoonlight.io review of 2505.12346): the
    modulation ``A_hat = A * f(alpha * SE(q) / SE_max(q))`` with ``f`` linear (here ``f(x) = 1 - x``),
    exponential or focal, answers grouped into semantic (same-meaning) clusters. Deviations, not confirmed
    or knowingly simplified: the paper estimates ``SE(q) ~ -(1/K) sum_k log p(C_k | q)`` with
    ``p(C_k | q)`` the summed sequence probability of the cluster's responses under ``pi_old``; we use the
    plug-in entropy of cluster *frequencies* (no sequence likelihoods needed), cluster by exact normalized
    answer instead of a semantic-equivalence model, and take ``SE_max = log G``; the paper's ``SE_max`` and
    default ``alpha`` could not be read (full text not reachable; no reference repository found)."""
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
    (shown to correlate with an upper bound on the policy-gradient norm). The paper evaluates intra-group
    (D3S-I) and cross-group variants (arxivlens summary of 2509.22115); this is the intra-group form, with the
    population variance. Searched without finding the method section or code: arXiv 2509.22115 HTML (abstract
    and introduction only), ICLR 2026 / mlanthology / newx / summarxiv pages, GitHub code index ("D3S"
    down-sampling); the code is described as "in the supplementary materials"."""
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
    down-sampling and gradually relaxing it over training. NOT confirmed: its functional form (linear is our
    choice), its start/end values (config keys ``d3s_token_ratio_start`` / ``d3s_token_ratio_end``), and
    whether the sample level is annealed as well (here the sample-level ``d3s_keep`` stays fixed). Searched:
    arXiv 2509.22115 HTML (only abstract/introduction stored), its summary pages (newx.sg, summarxiv,
    arxivlens, mlanthology) and the GitHub code index; no method section or reference code was found."""
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
