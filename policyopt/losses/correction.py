"""Rollout correction: the sampler / trainer log-prob mismatch, as registered pure functions.

Three policies take part (decoupled PPO, Hilton et al., 2021, "Batch size-invariance for policy optimization"):
the *behaviour* policy ``mu`` that drew the samples (the sampler's log-probs: another precision, another top-p,
or a stale checkpoint), the *proximal* policy ``pi_prox`` (pi_old recomputed by the trainer) and the *current*
policy ``pi`` being optimized. Two modes (:data:`MODES`):

- ``decoupled``: the correction weight targets ``rho = pi_prox / mu``; the loss keeps its ratio ``pi / pi_prox``.
- ``bypass``: the sampler is taken as the proximal policy (``logp_old := mu``, nothing recomputed); the
  correction targets ``rho = pi / mu`` (``pi`` detached).

Every entry of :data:`CORRECTIONS` has one signature (:class:`Correction`): per-token ``(B, T)`` current,
proximal and behaviour log-probs and the loss mask -> :class:`Corrected`, a per-token weight (detached, to
multiply into the policy term) and a 0/1 keep-mask (to AND into the loss mask), with statistics of uniform names
(:func:`correction_stats`). :func:`apply_correction` applies one to a
:class:`~policyopt.losses.policy.PolicyBatch` by multiplying the advantages by the weight and ANDing the mask, so
every registered policy loss composes with it unchanged.

Registry metadata: ``hparams`` (the :class:`CorrectionConfig` fields an entry reads), ``level`` (``token`` or
``sequence``: the granularity of its weight / mask), ``weights`` and ``masks`` (whether it reweights, masks, or
both).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from policyopt.config import in_range, opt
from policyopt.losses.policy import PolicyBatch
from policyopt.registry import Registry


@dataclass(frozen=True)
class Mode:
    """How the proximal policy is obtained: ``proximal_is_sampler`` (bypass) takes the sampler's log-probs as
    pi_old and makes the current policy the correction's target; otherwise pi_old is recomputed and is the
    target."""

    proximal_is_sampler: bool


MODES: dict[str, Mode] = {"decoupled": Mode(proximal_is_sampler=False), "bypass": Mode(proximal_is_sampler=True)}


@dataclass
class Corrected:
    """A correction's output: ``weight`` (``(B, T)``, detached, 1 = unchanged) to multiply into the policy term,
    ``keep`` (``(B, T)``, 0/1 in the log-probs' dtype) to AND into the loss mask, and ``stats`` (detached scalars
    named ``correction/...``)."""

    weight: Tensor
    keep: Tensor
    stats: dict[str, Tensor]


class Correction(Protocol):
    """The rollout-correction box: ``(current, proximal, behaviour log-probs, mask, config) -> Corrected``."""

    def __call__(
        self, logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, cfg: CorrectionConfig
    ) -> Corrected: ...


CORRECTIONS: Registry[Correction] = Registry(
    "rollout correction", hparams=(), level="token", weights=False, masks=False
)


@dataclass
class CorrectionConfig:
    """The ``correction:`` config section: which correction, in which mode, with which bounds.

    Each field's help names the corrections that read it (``hparams`` metadata)."""

    name: str = opt(
        "none",
        "rollout correction of the sampler/trainer mismatch, a CORRECTIONS entry: none, tis, seq_is, mis_token, "
        "mis_seq, icepop, geo_mask",
        choices=CORRECTIONS,
    )
    mode: str = opt(
        "decoupled",
        "decoupled: weight pi_old/pi_sampler with pi_old recomputed, the loss ratio stays pi/pi_old; bypass: "
        "pi_old := the sampler's log-probs (no recompute), the correction targets pi/pi_sampler",
        choices=tuple(MODES),
    )
    cap: float = opt(
        2.0,
        "importance-ratio cap C >= 1: weights min(rho, C); masked IS drops ratios above C "
        "[read by: mis_seq, mis_token, seq_is, tis]",
        check=in_range(1, math.inf, hi_open=True),
    )
    icepop_low: float = opt(
        0.5, "IcePop lower bound alpha <= 1: tokens with rho < alpha are masked [read by: icepop]", check=in_range(0, 1)
    )
    icepop_high: float = opt(
        5.0,
        "IcePop upper bound beta >= 1: tokens with rho > beta are masked [read by: icepop]",
        check=in_range(1, math.inf, hi_open=True),
    )
    geo_eps: float = opt(
        1e-3,
        "geometric-mean mask: a sequence is masked when exp(mean_t log rho) is outside [1 - eps, 1 + eps] "
        "[read by: geo_mask]",
        check=in_range(0, 1, lo_open=True, hi_open=True),
    )


# ----- shared pieces ------------------------------------------------------------------------------------------
def behaviour_log_ratio(logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, mode: str) -> Tensor:
    """``log rho = log pi_target - log mu`` at valid positions, 0 at padding (detached): the target is
    ``pi_prox`` in ``decoupled`` mode and the current ``pi`` in ``bypass`` mode."""
    target = (logp if MODES[mode].proximal_is_sampler else logp_prox).detach()
    return torch.where(mask > 0, target - logp_behav.detach(), torch.zeros_like(target))


def _seq_sum(log_ratio: Tensor) -> Tensor:
    """``sum_t log rho_t`` per sequence, ``(B, 1)`` (padding holds 0)."""
    return log_ratio.sum(-1, keepdim=True)


def masked_quantiles(x: Tensor, mask: Tensor, qs: tuple[float, ...]) -> Tensor:
    """Quantiles ``qs`` of ``x`` over ``mask > 0`` (linear interpolation between order statistics, as
    ``numpy.quantile``), without a host sync; 0 when the mask is empty."""
    valid = mask.flatten() > 0
    n = valid.sum()
    srt = torch.sort(torch.where(valid, x.flatten(), torch.full_like(x.flatten(), math.inf))).values
    pos = torch.tensor(qs, dtype=x.dtype) * (n - 1).clamp(min=0).to(x.dtype)
    lo = pos.floor().long()
    hi = torch.minimum(lo + 1, (n - 1).clamp(min=0))
    a, b = srt[lo], srt[hi]
    out = a + (pos - lo.to(x.dtype)) * torch.where(b > a, b - a, torch.zeros_like(a))
    return torch.where(n > 0, out, torch.zeros_like(out))


@torch.no_grad()
def correction_stats(log_ratio: Tensor, mask: Tensor, weight: Tensor, keep: Tensor) -> dict[str, Tensor]:
    """Statistics every correction reports, over valid positions (``mask > 0``):

    - ``correction/ratio_p50``, ``_p90``, ``_p99``, ``_max``: quantiles of the token-level ratio ``rho_t``
      (taken on ``log rho_t``, then exponentiated, so a huge ratio cannot overflow the interpolation);
    - ``correction/masked_frac``: the fraction of valid tokens the correction masks out;
    - ``correction/weight_mean``: the mean weight over the valid tokens it keeps;
    - ``correction/ess``: the effective sample size fraction ``(sum_i w_i)^2 / (n sum_i w_i^2)`` over the ``n``
      sequences with a valid token, ``w_i`` the mean over its valid tokens of ``weight * keep`` (0 when all
      weights are 0)."""
    m = (mask > 0).to(log_ratio.dtype)
    q = masked_quantiles(log_ratio, m, (0.5, 0.9, 0.99, 1.0)).exp()
    kept = m * keep
    n_tok = m.sum()
    masked_frac = (m - kept).sum() / n_tok.clamp(min=1)
    weight_mean = (weight * kept).sum() / kept.sum().clamp(min=1)
    len_i = m.sum(-1)
    w_i = (weight * kept).sum(-1) / len_i.clamp(min=1)
    has = (len_i > 0).to(w_i.dtype)
    s1, s2 = (w_i * has).sum(), (w_i.square() * has).sum()
    ess = torch.where(s2 > 0, s1.square() / (has.sum().clamp(min=1) * s2.clamp(min=1e-30)), torch.zeros_like(s1))
    return {
        "correction/ratio_p50": q[0],
        "correction/ratio_p90": q[1],
        "correction/ratio_p99": q[2],
        "correction/ratio_max": q[3],
        "correction/masked_frac": masked_frac,
        "correction/ess": ess,
        "correction/weight_mean": weight_mean,
    }


def _result(log_ratio: Tensor, mask: Tensor, weight: Tensor | None = None, keep: Tensor | None = None) -> Corrected:
    ones = torch.ones_like(log_ratio)
    w = ones if weight is None else weight.expand_as(log_ratio).detach()
    k = ones if keep is None else keep.expand_as(log_ratio).to(log_ratio.dtype)
    return Corrected(w, k, correction_stats(log_ratio, mask, w, k))


# ----- the corrections ----------------------------------------------------------------------------------------
@CORRECTIONS.register("none")
def none(logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, cfg: CorrectionConfig) -> Corrected:
    """No correction: weight 1, nothing masked (the ratio statistics are still reported)."""
    return _result(behaviour_log_ratio(logp, logp_prox, logp_behav, mask, cfg.mode), mask)


@CORRECTIONS.register("tis", hparams=("cap",), weights=True)
def tis(logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, cfg: CorrectionConfig) -> Corrected:
    """Token-level truncated importance sampling: ``w_t = sg(min(rho_t, C))``, ``rho_t = pi_target / mu``
    (Yao et al., 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training")."""
    lr = behaviour_log_ratio(logp, logp_prox, logp_behav, mask, cfg.mode)
    return _result(lr, mask, weight=lr.clamp(max=math.log(cfg.cap)).exp())


@CORRECTIONS.register("seq_is", hparams=("cap",), level="sequence", weights=True)
def seq_is(logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, cfg: CorrectionConfig) -> Corrected:
    """Sequence-level truncated importance sampling: every token of sequence ``i`` carries
    ``w_i = sg(min(prod_t rho_t, C)) = exp(min(sum_t log rho_t, log C))``, computed in log space (no overflow)."""
    lr = behaviour_log_ratio(logp, logp_prox, logp_behav, mask, cfg.mode)
    return _result(lr, mask, weight=_seq_sum(lr).clamp(max=math.log(cfg.cap)).exp())


@CORRECTIONS.register("mis_token", hparams=("cap",), weights=True, masks=True)
def mis_token(logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, cfg: CorrectionConfig) -> Corrected:
    """Token-level masked importance sampling: tokens with ``rho_t > C`` are masked out, the others weighted by
    ``sg(rho_t)``; i.e. the weight ``rho_t * 1[rho_t <= C]`` (IcePop's one-sided form; TRL ``token_mask``)."""
    lr = behaviour_log_ratio(logp, logp_prox, logp_behav, mask, cfg.mode)
    cap = math.log(cfg.cap)
    return _result(lr, mask, weight=lr.clamp(max=cap).exp(), keep=lr <= cap)


@CORRECTIONS.register("mis_seq", hparams=("cap",), level="sequence", weights=True, masks=True)
def mis_seq(logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, cfg: CorrectionConfig) -> Corrected:
    """Sequence-level masked importance sampling: sequences with ``prod_t rho_t > C`` are masked out, the
    others weighted by ``sg(prod_t rho_t)`` (in log space)."""
    lr = behaviour_log_ratio(logp, logp_prox, logp_behav, mask, cfg.mode)
    seq, cap = _seq_sum(lr), math.log(cfg.cap)
    return _result(lr, mask, weight=seq.clamp(max=cap).exp(), keep=seq <= cap)


@CORRECTIONS.register("icepop", hparams=("icepop_low", "icepop_high"), weights=True, masks=True)
def icepop(logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, cfg: CorrectionConfig) -> Corrected:
    """IcePop's two-sided token mask (Ling Team, 2025, "Every Step Evolves: Scaling Reinforcement Learning for
    Trillion-Scale Thinking Model", Ring-1T): the policy term of token ``t`` is multiplied by
    ``M(rho_t) = rho_t`` if ``alpha <= rho_t <= beta``, else 0 (the token is masked). Provenance: docs/losses.md."""
    lr = behaviour_log_ratio(logp, logp_prox, logp_behav, mask, cfg.mode)
    lo, hi = math.log(cfg.icepop_low) if cfg.icepop_low > 0 else -math.inf, math.log(cfg.icepop_high)
    return _result(lr, mask, weight=lr.clamp(lo, hi).exp(), keep=(lr >= lo) & (lr <= hi))


@CORRECTIONS.register("geo_mask", hparams=("geo_eps",), level="sequence", masks=True)
def geo_mask(logp: Tensor, logp_prox: Tensor, logp_behav: Tensor, mask: Tensor, cfg: CorrectionConfig) -> Corrected:
    """Geometric-mean sequence mask: sequence ``i`` is masked when ``exp(mean_t log rho_t)`` (mean over its valid
    tokens) lies outside ``[1 - eps, 1 + eps]``; no reweighting (verl's ``geometric`` rejection sampling)."""
    lr = behaviour_log_ratio(logp, logp_prox, logp_behav, mask, cfg.mode)
    n = (mask > 0).sum(-1, keepdim=True).clamp(min=1).to(lr.dtype)
    geo = (_seq_sum(lr) / n).exp()
    return _result(lr, mask, keep=(geo >= 1 - cfg.geo_eps) & (geo <= 1 + cfg.geo_eps))


# ----- applying a correction to a policy-loss batch -----------------------------------------------------------
def apply_correction(
    b: PolicyBatch, logp_behav: Tensor, cfg: CorrectionConfig
) -> tuple[PolicyBatch, dict[str, Tensor]]:
    """The batch a policy loss sees under correction ``cfg``, and the correction's statistics.

    ``b.logp`` is the current policy (with gradient), ``b.logp_old`` the proximal one (ignored in ``bypass``
    mode, where ``logp_old := logp_behav``), ``logp_behav`` the sampler's log-probs. Returns a new batch with
    ``advantages * w`` and ``mask * keep``: a loss whose policy term is linear in ``A`` (``pg``, ``ppo_clip``,
    ``cispo``, ``gspo``, ... since ``w >= 0``) is then multiplied token by token by ``w``; penalty terms that do
    not carry ``A`` (a KL or drift term) are masked but not reweighted.

    In ``bypass`` mode a ratio-based loss (``ppo_clip`` ...) already carries ``pi / mu`` in its ratio, so a
    weighting correction (``tis``, ``seq_is``) multiplies by ``pi / mu`` a second time: use weighting
    corrections in ``bypass`` mode with ``pg`` (off-policy REINFORCE), mask-only ones with any loss."""
    prox = logp_behav if MODES[cfg.mode].proximal_is_sampler else b.logp_old
    out = CORRECTIONS.get(cfg.name)(b.logp, prox, logp_behav, b.mask, cfg)
    new = dataclasses.replace(
        b,
        logp_old=prox,
        advantages=b.advantages * out.weight.to(b.advantages.dtype),
        mask=b.mask * out.keep.to(b.mask.dtype),
    )
    return new, out.stats
