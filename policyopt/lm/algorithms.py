"""LM-only pieces of the GRPO family as small pure functions on tensors.

Policy losses (``opmd``, ``asymre``) are registered into :data:`policyopt.losses.POLICY_LOSSES` and advantage
estimators (``bnpo``, ``spo``) into :data:`policyopt.advantages.ADVANTAGES`, with the registries' metadata.
The data-selection formulas (dynamic sampling, overlong shaping, CPPO, D3S, forking tokens, SEED-GRPO, the SPO
tracker) are plain functions here; :mod:`policyopt.lm.selection` wraps them as pipeline entries. Which
reference code each was checked against, and what stays unconfirmed, is recorded in ``docs/lm.md``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.advantages import functional as F
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig
from policyopt.losses.policy import ratio_stats
from policyopt.schedules import linear_interpolation


# ----- policy losses ------------------------------------------------------------------------------
@POLICY_LOSSES.register("opmd", hparams=("opmd_tau",))
def opmd(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """OPMD as a regularized REINFORCE loss (Yao et al., 2025, "Group-Relative REINFORCE Is Secretly an
    Off-Policy Algorithm", REC, arXiv 2509.24203): ``-A * logp + (tau / 2) * (logp - logp_old)^2`` per token,
    with ``A = R - mean_g R`` (group-mean baseline, no std scaling), token-mean aggregation.

    Deviation from Kimi k1.5's original form, which squares the *sequence* log-ratio: each token's log-ratio
    is squared (the REC formulation)."""
    log_ratio = b.logp - b.logp_old
    per = -b.advantages * b.logp + 0.5 * hp.opmd_tau * log_ratio**2
    return agg(per, b.mask), ratio_stats(log_ratio.detach(), b.mask)


@POLICY_LOSSES.register("asymre", hparams=("asymre_delta",))
def asymre(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """Asymmetric REINFORCE (Arnal et al., 2025, arXiv 2506.20520; reinterpreted in REC, arXiv 2509.24203):
    off-policy REINFORCE ``-(R - V) * logp`` without importance ratio, baseline ``V = mean_g R - delta``. With
    group-centred advantages ``A = R - mean_g R`` this is ``-(A + delta) * logp``; ``delta > 0`` (a lowered
    baseline, the paper's ``delta V = -delta < 0``) is the regime with the improvement guarantee."""
    per = -(b.advantages + hp.asymre_delta) * b.logp
    return agg(per, b.mask), ratio_stats((b.logp - b.logp_old).detach(), b.mask)


# ----- advantage estimators -----------------------------------------------------------------------
def _require(x: AdvantageInputs, name: str, fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if getattr(x, f) is None]
    if missing:
        raise ValueError(f"advantage estimator {name!r} needs {', '.join(missing)}")


def beta_pdf(p: Tensor, a: float, b: float) -> Tensor:
    """Density of Beta(a, b) at ``p`` (computed in log space)."""
    p = p.clamp(1e-6, 1 - 1e-6)
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    return torch.exp(log_norm + (a - 1) * torch.log(p) + (b - 1) * torch.log1p(-p))


def bnpo_params(mean: float, var: float) -> tuple[float, float]:
    """BNPO normalizer parameters from the mean ``m`` and unbiased variance ``v`` of the batch's per-prompt
    success rates: method-of-moments Beta(a, b) fit ``a = (m (1 - m) / v - 1) m``, ``b = (m (1 - m) / v - 1)
    (1 - m)``, then ``alpha = max(1 + a/3, 1)``, ``beta = max(1 + b/3, 1)`` (Xiao et al., 2025, arXiv
    2506.02864). Deviation: ``v`` is floored at 1e-6 (every prompt at the same rate would divide by zero)."""
    var = max(var, 1e-6)
    common = mean * (1 - mean) / var - 1
    a, b = common * mean, common * (1 - mean)
    return max(1 + a / 3, 1.0), max(1 + b / 3, 1.0)


@torch.no_grad()
def bnpo_advantages(rewards: Tensor, group_ids: Tensor, alpha: float, beta: float) -> Tensor:
    """BNPO advantage ``(R - p_hat(q)) / f_Beta(p_hat(q); alpha, beta)`` with ``p_hat`` the group mean (binary
    rewards in [0, 1]); the weight ``1 / f_Beta`` is capped at 1e6. With ``alpha = beta = 1`` (uniform density)
    it is the Dr. GRPO advantage. Singleton groups get 0 (library convention)."""
    mean, _, count = F.group_stats(rewards, group_ids)
    adv = (rewards - mean) * (1.0 / beta_pdf(mean, alpha, beta)).clamp(max=1e6)
    return torch.where(count > 1, adv, torch.zeros_like(adv))


@ADVANTAGES.register("bnpo", needs=("group_ids",), min_group_size=2, level="sequence")
def bnpo(x: AdvantageInputs, cfg: AdvantageConfig):
    """BNPO (Xiao et al., 2025, "BNPO: Beta Normalization Policy Optimization", arXiv 2506.02864): group
    baseline, Beta-density normalizer fitted to the batch's per-prompt success rates (:func:`bnpo_params`;
    one prompt: the uniform density). Not implemented: the decomposition for multi-component rewards."""
    _require(x, "bnpo", ("group_ids",))
    mean, _, _ = F.group_stats(x.rewards, x.group_ids)
    ids = torch.unique(x.group_ids, return_inverse=True)[1]
    per_prompt = torch.zeros(int(ids.max()) + 1, dtype=mean.dtype).index_copy_(0, ids, mean)
    a, b = bnpo_params(float(per_prompt.mean()), float(per_prompt.var())) if per_prompt.numel() > 1 else (1.0, 1.0)
    adv = bnpo_advantages(x.rewards, x.group_ids, a, b)
    return (F.broadcast_to_tokens(adv, x.mask) if x.mask is not None else adv), None


class SPOTracker:
    """Single-stream Policy Optimization value tracker (Xu & Ding, 2025, arXiv 2509.13232).

    Per prompt, Beta counts ``(a, b)`` (prior 0.5 each); the baseline is ``v = a / (a + b)``. After the policy
    step, with reward ``r`` in [0, 1]: ``a <- rho * a + r``, ``b <- rho * b + (1 - r)`` where
    ``rho = clip(2^(-D / D_half), rho_min, rho_max)`` and ``D`` is the prompt's policy drift
    (:func:`spo_policy_drift`). Prompts are sampled with probability proportional to ``sqrt(v (1 - v)) + eps``.
    The tracker keeps each prompt's last response with its log-probs under the policy right after the step
    that trained on it (:meth:`remember`), so the next visit can measure ``D``. Not implemented: the offline
    initialization of ``(a, b)`` from pre-training samples.
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
        self.last_ids = torch.zeros((n_prompts, max_len), dtype=torch.long)
        self.last_logp = torch.zeros((n_prompts, max_len))
        self.last_len = torch.zeros((n_prompts,), dtype=torch.long)  # 0: never seen

    def remember(self, idx: Tensor, completion_ids: list[list[int]], logps: list[Tensor] | Tensor) -> None:
        """Store each prompt's newest response and its log-probs (later rows win for a repeated prompt)."""
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
        return {
            "a": self.a.clone(),
            "b": self.b.clone(),
            "last_ids": self.last_ids.clone(),
            "last_logp": self.last_logp.clone(),
            "last_len": self.last_len.clone(),
        }

    def load_state_dict(self, s: dict) -> None:
        self.a, self.b = s["a"].clone(), s["b"].clone()
        for k in ("last_ids", "last_logp", "last_len"):
            setattr(self, k, s[k].clone())


@torch.no_grad()
def spo_policy_drift(logp_then: Tensor, logp_now: Tensor, mask: Tensor) -> Tensor:
    """SPO's per-prompt policy drift ``D``: the token-mean of ``|logp_then - logp_now|`` over the valid tokens of
    each row (a prompt's stored response, scored when stored and by the current policy). (B, T) -> (B,)."""
    m = mask.to(logp_now.dtype)
    return ((logp_then - logp_now).abs() * m).sum(-1) / m.sum(-1).clamp(min=1)


@torch.no_grad()
def spo_advantages(rewards: Tensor, baselines: Tensor) -> Tensor:
    """SPO advantage: ``whiten(r - v)`` over the batch (no groups)."""
    return F.whiten(rewards - baselines)


@ADVANTAGES.register("spo", needs=("values",), min_group_size=1, level="sequence")
def spo(x: AdvantageInputs, cfg: AdvantageConfig):
    """SPO (Xu & Ding, 2025, "Single-stream Policy Optimization"): ``whiten(R - v)`` over the batch with ``v``
    the persistent per-prompt tracker baseline passed in ``x.values`` (see :class:`SPOTracker`)."""
    _require(x, "spo", ("values",))
    adv = spo_advantages(x.rewards, x.values)
    return (F.broadcast_to_tokens(adv, x.mask) if x.mask is not None else adv), None


# ----- data selection / reshaping ---------------------------------------------------------------
@torch.no_grad()
def informative_groups(rewards: Tensor, group_ids: Tensor, tol: float = 1e-8) -> Tensor:
    """DAPO dynamic sampling (Yu et al., 2025, "DAPO", arXiv 2503.14476): bool mask of the completions whose
    group has a non-zero reward spread (all-correct / all-wrong groups carry no group-relative signal)."""
    ids = torch.unique(group_ids, return_inverse=True)[1]
    n = int(ids.max()) + 1
    hi = torch.full((n,), -math.inf, dtype=rewards.dtype).scatter_reduce(0, ids, rewards, "amax")
    lo = torch.full((n,), math.inf, dtype=rewards.dtype).scatter_reduce(0, ids, rewards, "amin")
    return (hi - lo)[ids] > tol


def overlong_penalty(lengths: Tensor, max_len: int, buffer: float, factor: float = 1.0) -> Tensor:
    """DAPO soft overlong punishment: ``min(-(len - (L_max - L_buf)) / L_buf, 0) * factor``, i.e. 0 up to
    ``L_max - L_buf`` tokens, then linearly down to ``-factor`` at ``L_max``."""
    lengths = lengths.to(torch.float32)
    return torch.clamp(-(lengths - (max_len - buffer)) / buffer, max=0.0) * factor


def cppo_prompts(n_prompts: int, group_size: int, keep: int) -> int:
    """CPPO's enlarged prompt batch (Lin et al., 2025, "CPPO", arXiv 2503.22342): with pruning rate
    ``P = 1 - keep / G``, draw ``floor(n / (1 - P)) = floor(n G / keep)`` prompts so that the completions kept
    after pruning fill about the nominal ``n G`` slots."""
    return n_prompts * group_size // keep


@torch.no_grad()
def cppo_select(advantages: Tensor, keep: int, group_size: int) -> Tensor:
    """CPPO pruning over the whole batch (Lin et al., 2025, arXiv 2503.22342): keep the
    ``floor(N (1 - P)) = floor(N keep / G)`` completions with the largest ``|A|`` among all ``N`` of the batch
    (groups whose rewards are all equal, ``A = 0``, lose their slots first). Returns the sorted kept indices;
    ties are broken by position (earlier first)."""
    n_keep = advantages.numel() * keep // group_size
    order = torch.argsort(advantages.abs(), descending=True, stable=True)
    return order[:n_keep].sort().values


@torch.no_grad()
def high_entropy_mask(entropy: Tensor, mask: Tensor, top_frac: float = 0.2) -> Tensor:
    """ "Beyond the 80/20 Rule" (Wang et al., 2025, arXiv 2506.01939): the 0/1 mask of the ``k = ceil(top_frac
    * n)`` highest-entropy ("forking") tokens among the ``n`` valid tokens of the batch, exactly ``k`` of them
    (ties broken by position, row-major; at least one token)."""
    valid = (mask > 0).flatten()
    n = int(valid.sum())
    if n == 0:
        return mask
    k = max(1, int(math.ceil(top_frac * n - 1e-9)))
    score = entropy.flatten().masked_fill(~valid, -math.inf)
    top = torch.argsort(score, descending=True, stable=True)[:k]
    out = torch.zeros_like(valid)
    out[top] = True
    return out.view_as(mask).to(mask.dtype)


@torch.no_grad()
def semantic_entropy(cluster_ids: list[str], seq_logp: Tensor | None = None) -> float:
    """Semantic entropy of one group's answers: ``SE = -sum_k p_k log p_k`` over answer clusters ``C_k``, with
    ``p_k = sum_{i in C_k} exp(l_i) / sum_j exp(l_j)`` the cluster's share of the group's probability mass
    under the old policy (``l_i``: the length-normalized log-likelihood of completion ``i``), or the cluster's
    frequency ``|C_k| / G`` when ``seq_logp`` is None (equal mass per completion). ``0 <= SE <= log G``."""
    labels = {a: j for j, a in enumerate(dict.fromkeys(cluster_ids))}
    ids = torch.tensor([labels[a] for a in cluster_ids])
    w = torch.ones(len(cluster_ids)) if seq_logp is None else torch.softmax(seq_logp.double(), 0).float()
    p = torch.zeros(len(labels)).index_add_(0, ids, w)
    p = p / p.sum()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


@torch.no_grad()
def semantic_entropy_scale(
    answers: list[str], group_ids: Tensor, alpha: float, seq_logp: Tensor | None = None
) -> Tensor:
    """SEED-GRPO (Chen et al., 2025, arXiv 2505.12346) advantage factor ``f(alpha * SE(q) / SE_max)`` with the
    linear ``f(x) = 1 - x``, ``SE`` from :func:`semantic_entropy` over the group's answers and
    ``SE_max = log G`` (every completion a different answer). Multiply the (mean-centred) advantages by it.
    Deviations: clusters are exact-match answers (no semantic-equivalence model); the paper's Monte-Carlo
    estimate ``-(1/K) sum_k log p(C_k)`` is replaced by the bounded plug-in form, so ``f`` stays in
    ``[1 - alpha, 1]``. Singleton groups get 1."""
    out = torch.ones(len(answers))
    for g in torch.unique(group_ids):
        idx = (group_ids == g).nonzero().flatten()
        if idx.numel() < 2:
            continue
        se = semantic_entropy([answers[i] for i in idx.tolist()], None if seq_logp is None else seq_logp[idx])
        out[idx] = 1 - alpha * se / math.log(idx.numel())
    return out


@torch.no_grad()
def d3s_select(advantages: Tensor, group_ids: Tensor, keep: int) -> Tensor:
    """D^3S sample level (Wang et al., 2025, "Learning More with Less: A Dynamic Dual-Level Down-Sampling
    Framework for Efficient Policy Optimization", arXiv 2509.22115), intra-group form: per group keep the
    ``keep`` completions that maximize the (population) variance of the kept advantages; for a sorted 1-D set
    an optimal subset takes ``j`` from the top and ``keep - j`` from the bottom, and all splits are tried.
    Returns a bool mask."""
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
    """D^3S token level (Wang et al., 2025, arXiv 2509.22115): among the valid tokens of ``mask``, keep the
    ``ceil(ratio * n)`` tokens with the largest ``|A_{i,t}| * H_{i,t}`` (advantage magnitude times token
    entropy) as the new 0/1 loss mask; the top fraction is taken over the whole batch, ties are broken by
    position (row-major), at least one token is kept, and ``ratio >= 1`` returns ``mask`` unchanged."""
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
    """D^3S dynamic down-sampling schedule (Wang et al., 2025, arXiv 2509.22115): aggressive down-sampling
    first, relaxed over training. Here the token keep ratio moves linearly from ``start`` at RL step 1 to
    ``end`` at ``total_steps`` (constant ``start`` for a one-step run; clamped outside the range)."""
    return linear_interpolation(start, end, step, total_steps)
