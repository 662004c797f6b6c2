"""Policy losses: one registry, one signature (:class:`PolicyLoss`).

Every loss is ``fn(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator) -> (loss, stats)``:
``b`` holds per-position tensors of shape ``(B, T)`` (tokens of completions, or control steps
with ``T = 1``), ``hp`` the ``loss:`` config section shared by all losses, ``agg`` the loss
aggregation bound to the global batch denominators. ``stats`` is a dict of detached scalar tensors
with uniform names (``clip_frac_low``, ``clip_frac_high``, ``approx_kl``, ``ratio_mean``,
``ratio_max``, ...), never synced to the host here.

Each registration declares, as metadata, the optional :class:`PolicyBatch` inputs it reads
(``needs``: ``"kl_old"``, ``"logp_ref"``) and the :class:`PolicyLossConfig` fields it reads
(``hparams``); trainers read them with ``POLICY_LOSSES.meta(name)`` and warn about set-but-unread keys
with :func:`unused_loss_keys`.

Losses are written as quantities to *minimise*; ``r = exp(logp - logp_old)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from policyopt.config import in_range, nonneg, opt, optional, positive
from policyopt.losses.aggregation import Aggregator, masked_max, masked_mean
from policyopt.registry import Registry


@dataclass
class PolicyLossConfig:
    """The ``loss:`` config section. Each field's help names the losses that read it (``hparams`` metadata)."""

    clip_eps_low: float = opt(
        0.2,
        "lower clip range: ratio >= 1 - eps_low; also the upper range while "
        "clip_eps_high is None [read by: cpgd, dual_clip, ppo_clip, props]",
        check=in_range(0, 1),
    )
    clip_eps_high: float | None = opt(
        None,
        "upper clip range (None = clip_eps_low; > low is DAPO clip-higher); "
        "cispo: the IS-weight cap is 1 + clip_eps_high "
        "[read by: cispo, cpgd, dual_clip, ppo_clip, props]",
        check=optional(nonneg),
    )
    dual_clip_c: float = opt(
        3.0,
        "dual-clip bound c > 1 for negative advantages [read by: dual_clip]",
        check=in_range(1, math.inf, lo_open=True),
    )
    cispo_eps_low: float | None = opt(
        None,
        "optional lower bound 1 - cispo_eps_low on CISPO's IS weight (None = none, as MiniMax-M1) [read by: cispo]",
        check=optional(in_range(0, 1)),
    )
    gspo_eps_low: float = opt(3e-4, "GSPO sequence-ratio lower clip range [read by: gspo]", check=in_range(0, 1))
    gspo_eps_high: float = opt(4e-4, "GSPO sequence-ratio upper clip range [read by: gspo]", check=nonneg)
    drift_coef: float = opt(0.1, "CPGD policy-drift coefficient alpha (KL(pi_old || pi)) [read by: cpgd]", check=nonneg)
    proximal_coef: float = opt(
        1.0, "weight of the proximity KL: MDPO 1/t_k, PROPS lambda [read by: kl_proximal, props]", check=nonneg
    )
    opmd_tau: float = opt(1.0, "OPMD regularization tau [read by: opmd]", check=positive)
    asymre_delta: float = opt(0.1, "AsymRE baseline shift delta: A = R - (mean R - delta) [read by: asymre]")

    @property
    def eps_high(self) -> float:
        return self.clip_eps_low if self.clip_eps_high is None else self.clip_eps_high


@dataclass
class PolicyBatch:
    """Per-position inputs to a policy loss, all ``(B, T)``; ``logp`` carries the gradient."""

    logp: Tensor
    logp_old: Tensor
    advantages: Tensor
    mask: Tensor
    kl_old: Tensor | None = None  # exact KL(pi || pi_old) per position (differentiable), if the trainer has it
    logp_ref: Tensor | None = None

    @staticmethod
    def from_steps(
        logp: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor | None = None, kl_old: Tensor | None = None
    ) -> PolicyBatch:
        """Control data: one position per step, shape ``(N,)`` -> ``(N, 1)``; ``mask`` marks valid steps."""

        def col(x):
            return None if x is None else x.reshape(-1, 1)

        m = torch.ones_like(col(logp)) if mask is None else col(mask).to(logp.dtype)
        return PolicyBatch(col(logp), col(logp_old), col(advantages), m, col(kl_old))


class PolicyLoss(Protocol):
    """The policy-loss box: ``(batch, loss config, aggregation) -> (loss, stats)``."""

    def __call__(self, b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator) -> tuple[Tensor, dict[str, Tensor]]: ...


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss", needs=(), hparams=())

# ``eps_high`` reads ``clip_eps_low`` when ``clip_eps_high`` is None.
_FALLBACK_READS = {"clip_eps_high": "clip_eps_low"}


def unused_loss_keys(loss_name: str, cfg: PolicyLossConfig) -> list[str]:
    """Keys of the ``loss:`` section set to a non-default value that the loss ``loss_name`` does not read
    (trainers warn with them)."""
    read = set(POLICY_LOSSES.meta(loss_name)["hparams"])
    for key, fallback in _FALLBACK_READS.items():
        if key in read and getattr(cfg, key) is None:
            read.add(fallback)
    return [f.name for f in dataclasses.fields(cfg) if f.name not in read and _differs(getattr(cfg, f.name), f.default)]


def _differs(value, default) -> bool:
    if value is None or default is None:
        return value is not default
    return bool(value != default)


def _masked_means(features: list[Tensor], mask: Tensor) -> Tensor:
    """Masked means of several same-shaped tensors in one pass (a handful of kernels, not 5 per stat)."""
    m = mask.to(features[0].dtype)
    return (torch.stack(features) * m).flatten(1).sum(1) / m.sum().clamp(min=1)


@torch.no_grad()
def ratio_stats(log_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Statistics every loss reports: approximate KL(pi_old || pi) (k3 form) and ratio mean/max."""
    ratio = log_ratio.exp()
    kl, mean = _masked_means([ratio - 1 - log_ratio, ratio], mask)
    return {"approx_kl": kl, "ratio_mean": mean, "ratio_max": masked_max(ratio, mask)}


@torch.no_grad()
def clip_stats(ratio: Tensor, adv: Tensor, mask: Tensor, lo: float, hi: float) -> dict[str, Tensor]:
    """Fractions of positions whose gradient the clip removed, on each side."""
    low = ((ratio < lo) & (adv < 0)).to(ratio.dtype)
    high = ((ratio > hi) & (adv > 0)).to(ratio.dtype)
    f_low, f_high = _masked_means([low, high], mask)
    return {"clip_frac_low": f_low, "clip_frac_high": f_high, "clip_frac": f_low + f_high}


def _clipped_surrogate(ratio: Tensor, adv: Tensor, lo: float, hi: float) -> Tensor:
    return torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, lo, hi))


@POLICY_LOSSES.register("pg")
def pg(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """Vanilla policy gradient ``-A * logp`` (Williams, 1992, REINFORCE; A2C)."""
    loss = agg(-b.advantages * b.logp, b.mask)
    return loss, ratio_stats((b.logp - b.logp_old).detach(), b.mask)


@POLICY_LOSSES.register("ppo_clip", hparams=("clip_eps_low", "clip_eps_high"))
def ppo_clip(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """PPO clipped surrogate ``max(-A r, -A clip(r, 1-eps_low, 1+eps_high))`` (Schulman et al., 2017,
    "Proximal Policy Optimization Algorithms"); ``eps_high > eps_low`` is DAPO's clip-higher."""
    log_ratio = b.logp - b.logp_old
    ratio = log_ratio.exp()
    lo, hi = 1 - hp.clip_eps_low, 1 + hp.eps_high
    loss = agg(_clipped_surrogate(ratio, b.advantages, lo, hi), b.mask)
    return loss, {**ratio_stats(log_ratio.detach(), b.mask), **clip_stats(ratio.detach(), b.advantages, b.mask, lo, hi)}


@POLICY_LOSSES.register("dual_clip", hparams=("clip_eps_low", "clip_eps_high", "dual_clip_c"))
def dual_clip(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """Dual-clip PPO (Ye et al., 2020, "Mastering Complex Control in MOBA Games with Deep RL"): for
    ``A < 0`` the clipped surrogate is further capped at ``-c * A`` so a huge ratio cannot dominate."""
    log_ratio = b.logp - b.logp_old
    ratio = log_ratio.exp()
    lo, hi = 1 - hp.clip_eps_low, 1 + hp.eps_high
    surr = _clipped_surrogate(ratio, b.advantages, lo, hi)
    capped = torch.minimum(surr, -hp.dual_clip_c * b.advantages)
    per = torch.where(b.advantages < 0, capped, surr)
    stats = {**ratio_stats(log_ratio.detach(), b.mask), **clip_stats(ratio.detach(), b.advantages, b.mask, lo, hi)}
    stats["dual_clip_frac"] = masked_mean(((b.advantages < 0) & (ratio.detach() > hp.dual_clip_c)).float(), b.mask)
    return agg(per, b.mask), stats


@POLICY_LOSSES.register("cispo", hparams=("clip_eps_high", "cispo_eps_low"))
def cispo(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """CISPO (MiniMax, 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention",
    arXiv 2506.13585): bound the importance weight, not the update, ``-sg(min(r, 1 + eps_high)) * A * logp``,
    so every token keeps a gradient. The paper's general weight ``clip(r, 1 - eps_low, 1 + eps_high)`` is used
    there with no effective lower bound; ``cispo_eps_low`` (default None) opts into ``max(w, 1 - cispo_eps_low)``."""
    log_ratio = b.logp - b.logp_old
    ratio = log_ratio.exp()
    lo = None if hp.cispo_eps_low is None else 1 - hp.cispo_eps_low
    hi = 1 + hp.eps_high
    weight = torch.clamp(ratio.detach(), min=lo, max=hi)
    loss = agg(-weight * b.advantages * b.logp, b.mask)
    return loss, {
        **ratio_stats(log_ratio.detach(), b.mask),
        **clip_stats(ratio.detach(), b.advantages, b.mask, lo or 0.0, hi),
    }


@POLICY_LOSSES.register("gspo", hparams=("gspo_eps_low", "gspo_eps_high"))
def gspo(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """GSPO (Zheng et al., 2025, "Group Sequence Policy Optimization"), token form: the sequence ratio
    ``s_i = exp(mean_t (logp - logp_old))`` is clipped with a small range; each token carries
    ``sg(s_i) * exp(logp_t - sg(logp_t))`` so its value is ``s_i`` and its gradient ``s_i * grad logp_t``,
    which with seq-mean-token-mean aggregation equals the sequence-level GSPO gradient."""
    m = b.mask.to(b.logp.dtype)
    log_ratio = b.logp - b.logp_old
    seq_lr = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
    s = seq_lr.exp()
    tok_ratio = s.detach() * torch.exp(b.logp - b.logp.detach())
    lo, hi = 1 - hp.gspo_eps_low, 1 + hp.gspo_eps_high
    loss = agg(_clipped_surrogate(tok_ratio, b.advantages, lo, hi), b.mask)
    s_tok = s.detach().expand_as(b.logp)
    stats = {**ratio_stats(log_ratio.detach(), b.mask), **clip_stats(s_tok, b.advantages, b.mask, lo, hi)}
    stats["seq_ratio_mean"] = s.detach().mean()
    return loss, stats


@POLICY_LOSSES.register("cpgd", hparams=("clip_eps_low", "clip_eps_high", "drift_coef"))
def cpgd(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """CPGD (Liu et al., 2025, "CPGD: Toward Stable Rule-based RL for Language Models", arXiv 2505.12504):
    a policy-gradient loss on the log-ratio, clipped in log space,
    ``max(-A log r, -A clip(log r, log(1-eps_low), log(1+eps_high)))``, plus the policy-drift penalty
    ``drift_coef * KL(pi_old || pi)``, estimated per token by ``r - 1 - log r`` (k3 form, samples of pi_old).
    Deviation from a plain KL term (as in the authors' code): beyond ``r = 3`` the drift continues linearly in
    ``log r`` with slope 2, i.e. its gradient weight ``r - 1`` is capped at 2. Provenance: docs/losses.md."""
    log_ratio = b.logp - b.logp_old
    lo, hi = math.log(1 - hp.clip_eps_low), math.log(1 + hp.eps_high)
    surr = torch.maximum(-b.advantages * log_ratio, -b.advantages * torch.clamp(log_ratio, lo, hi))
    # KL(pi_old || pi) with samples from pi_old: E_old[r - 1 - log r]; gradient weight r - 1 capped at 2.
    cap = math.log(3.0)
    capped = log_ratio.clamp(max=cap)
    drift = capped.exp() - 1 - capped + 2.0 * (log_ratio - capped)
    loss = agg(surr + hp.drift_coef * drift, b.mask)
    ratio = log_ratio.detach().exp()
    stats = {
        **ratio_stats(log_ratio.detach(), b.mask),
        **clip_stats(ratio, b.advantages, b.mask, 1 - hp.clip_eps_low, 1 + hp.eps_high),
        "drift": masked_mean(drift.detach(), b.mask),
    }
    return loss, stats


@POLICY_LOSSES.register("kl_proximal", needs=("kl_old",), hparams=("proximal_coef",))
def kl_proximal(b: PolicyBatch, hp: PolicyLossConfig, agg: Aggregator):
    """On-policy MDPO (Tomar et al., 2022, "Mirror Descent Policy Optimization"):
    ``-A r + (1/t_k) KL(pi || pi_old)``, and FixPO's primary phase ``-A r + beta KL`` (Zentner et al., 2023).
    Uses the exact per-state KL the trainer supplies in ``b.kl_old``, in the trust-region controller's
    direction (FixPO: KL(pi_old || pi)); without it, the sample estimate ``r log r`` (unbiased for
    KL(pi || pi_old) under pi_old)."""
    log_ratio = b.logp - b.logp_old
    ratio = log_ratio.exp()
    kl = b.kl_old if b.kl_old is not None else ratio * log_ratio
    loss = agg(-b.advantages * ratio + hp.proximal_coef * kl, b.mask)
    return loss, {**ratio_stats(log_ratio.detach(), b.mask), "proximal_kl": masked_mean(kl.detach(), b.mask)}
