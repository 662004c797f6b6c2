"""Data selection for the LM trainer: one signature, one registry, applied in order.

A selector is ``fn(batch: LMBatch, ctx: SelectionContext) -> LMBatch``: it may drop rows
(:meth:`LMBatch.select`), reshape rewards, advantages or the loss mask, and report metrics in ``ctx.metrics``.
Each entry of :data:`SELECTORS` carries metadata, read with ``SELECTORS.meta(name)``:

- ``stage``: when it runs. ``"generation"``: on each scored generation batch, before advantages (dynamic
  sampling, overlong shaping and filtering); ``"advantage"``: after the advantages, before the policy step
  (SEED-GRPO, CPPO, D3S, forking tokens); ``"update"``: after the policy step (the SPO tracker update);
- ``needs``: what it reads beyond rewards: ``"groups"`` (``group_size >= 2``), ``"values"`` (a per-prompt
  value tracker), ``"old_logp"`` / ``"entropy"`` (the no-grad pass under ``pi_old`` before the step),
  ``"score"`` (re-scoring stored responses with the current policy);
- ``active``: ``cfg -> bool``, whether the config keys turn it on (``dynamic_sampling=True``, ``cppo_keep=4``...);
- ``refills``: the trainer keeps generating (up to ``max_gen_batches``) while the rows kept by the generation
  stage fall short of the target batch;
- ``prompts``: ``(cfg, n) -> int``, how many prompts to draw for a nominal ``n`` (CPPO draws more);
- ``scope``: ``"group"`` when it reads only a row or its prompt group (a data-parallel rank can run it on its
  shard), ``"batch"`` when it reads the whole batch (refills, batch-wide top-k, the per-prompt tracker).

The order is ``cfg.selectors`` when set, else :data:`DEFAULT_ORDER` restricted to the active entries; within a
stage selectors run in that order (see ``docs/lm.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from policyopt.advantages import ADVANTAGES
from policyopt.errors import UserError
from policyopt.lm import algorithms as A
from policyopt.lm.rewards import extract_answer
from policyopt.lm.rollout import Rollout
from policyopt.registry import Registry

STAGES = ("generation", "advantage", "update")
_ROW_FIELDS = ("loss_rows", "cmask", "mask", "denom_mask", "adv", "sampler_logp", "old_logp", "entropy", "ref_logp")
_TOKEN_FIELDS = ("ids", "attn", "pos")


@dataclass
class LMBatch:
    """A scored rollout batch and, from the advantage stage on, its padded token tensors (all ``(B, ...)``).

    ``mask`` is the loss mask; ``denom_mask`` (None: ``mask``) the mask the aggregation denominators are taken
    from, so a selector can drop tokens from the loss while keeping the normalizer of all tokens."""

    rollout: Rollout
    loss_rows: Tensor  # (B,) bool: rows that carry loss (overlong filtering clears truncated ones)
    P: int = 0
    ids: Tensor | None = None
    attn: Tensor | None = None
    pos: Tensor | None = None
    cmask: Tensor | None = None  # completion mask
    mask: Tensor | None = None
    denom_mask: Tensor | None = None
    adv: Tensor | None = None
    sampler_logp: Tensor | None = None
    old_logp: Tensor | None = None
    entropy: Tensor | None = None
    ref_logp: Tensor | None = None

    @classmethod
    def of(cls, rollout: Rollout) -> LMBatch:
        return cls(rollout, torch.ones(len(rollout), dtype=torch.bool))

    def __len__(self) -> int:
        return len(self.rollout)

    def select(self, keep: Tensor) -> LMBatch:
        """The rows ``keep`` (bool mask or indices) of every per-row field."""
        idx = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        sub = {k: getattr(self, k) for k in (*_ROW_FIELDS, *_TOKEN_FIELDS)}
        sub = {k: (None if v is None else v[idx]) for k, v in sub.items()}
        return dataclasses.replace(self, rollout=self.rollout.select(idx), **sub)

    @staticmethod
    def cat(parts: list[LMBatch]) -> LMBatch:
        """Concatenate generation-stage batches (no token tensors yet)."""
        return LMBatch(Rollout.cat([p.rollout for p in parts]), torch.cat([p.loss_rows for p in parts]))


@dataclass
class SelectionContext:
    """What selectors know besides the batch: the config, the RL step (1-based), the metric sink and the
    stateful helpers some entries need."""

    cfg: Any
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    tracker: A.SPOTracker | None = None
    score: Callable[[list[list[int]], list[list[int]]], tuple[Tensor, Tensor]] | None = None  # -> (logp, mask)


class Selector(Protocol):
    """The data-selection box: a batch and its context -> the selected / reshaped batch."""

    def __call__(self, batch: LMBatch, ctx: SelectionContext) -> LMBatch: ...


def _same(cfg, n: int) -> int:
    return n


def _no(cfg) -> bool:
    return False


SELECTORS: Registry[Selector] = Registry(
    "data selector", stage="advantage", needs=(), active=_no, refills=False, prompts=_same, scope="group"
)

DEFAULT_ORDER = (
    "dynamic_sampling",
    "overlong_shaping",
    "overlong_filter",
    "seed_grpo",
    "cppo",
    "d3s",
    "d3s_tokens",
    "forking_tokens",
    "value_tracker",
)


def overlong_buffer(cfg) -> float:
    """DAPO's ``L_buf`` in tokens: ``overlong_buffer``, else ``overlong_buffer_frac * max_new_tokens``."""
    return float(cfg.overlong_buffer or cfg.overlong_buffer_frac * cfg.max_new_tokens)


def _d3s_tokens_on(cfg) -> bool:
    return cfg.d3s_token_ratio_start < 1 or cfg.d3s_token_ratio_end < 1


# ----- generation stage ---------------------------------------------------------------------------
@SELECTORS.register(
    "dynamic_sampling",
    stage="generation",
    needs=("groups",),
    refills=True,
    active=lambda c: c.dynamic_sampling,
    scope="batch",
)
def dynamic_sampling(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """DAPO dynamic sampling: drop the groups whose rewards are all equal (the trainer refills)."""
    return batch.select(A.informative_groups(batch.rollout.rewards, batch.rollout.group_ids))


@SELECTORS.register("overlong_shaping", stage="generation", active=lambda c: overlong_buffer(c) > 0)
def overlong_shaping(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """DAPO soft overlong punishment added to the rewards (:func:`~policyopt.lm.algorithms.overlong_penalty`)."""
    ro = batch.rollout
    lengths = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float32)
    pen = A.overlong_penalty(lengths, ctx.cfg.max_new_tokens, overlong_buffer(ctx.cfg), ctx.cfg.overlong_factor)
    return dataclasses.replace(batch, rollout=dataclasses.replace(ro, rewards=ro.rewards + pen))


@SELECTORS.register("overlong_filter", stage="generation", active=lambda c: c.mask_truncated)
def overlong_filter(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """DAPO overlong filtering: truncated completions carry no loss (they still count in the group baselines)."""
    return dataclasses.replace(batch, loss_rows=batch.loss_rows & ~batch.rollout.truncated)


# ----- advantage stage ----------------------------------------------------------------------------
@SELECTORS.register("seed_grpo", needs=("groups",), active=lambda c: c.seed_alpha > 0)
def seed_grpo(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """SEED-GRPO: advantages scaled per group by ``1 - alpha * SE / log G``; ``SE`` from the old policy's
    length-normalized sequence likelihoods (``seed_entropy="likelihood"``) or answer frequencies."""
    ro = batch.rollout
    seq_logp = None
    if ctx.cfg.seed_entropy == "likelihood":
        seq_logp = (batch.sampler_logp * batch.cmask).sum(1) / batch.cmask.sum(1).clamp(min=1)
    answers = [extract_answer(c) for c in ro.completions]
    scale = A.semantic_entropy_scale(answers, ro.group_ids, ctx.cfg.seed_alpha, seq_logp)
    ctx.metrics["select/seed_scale_mean"] = float(scale.mean())
    return dataclasses.replace(batch, adv=batch.adv * scale[:, None])


def _cppo_prompts(cfg, n: int) -> int:
    return A.cppo_prompts(n, cfg.group_size, cfg.cppo_keep)


@SELECTORS.register("cppo", prompts=_cppo_prompts, active=lambda c: c.cppo_keep > 0, scope="batch")
def cppo(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """CPPO: keep the ``floor(N keep / G)`` completions of the batch with the largest ``|A|``."""
    keep = A.cppo_select(_seq_adv(batch), ctx.cfg.cppo_keep, ctx.cfg.group_size)
    ctx.metrics["select/cppo_kept_frac"] = keep.numel() / max(len(batch), 1)
    return batch.select(keep)


@SELECTORS.register("d3s", needs=("groups",), active=lambda c: c.d3s_keep > 0)
def d3s(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """D^3S sample level: per group, the ``d3s_keep`` completions maximizing ``Var(A)``."""
    return batch.select(A.d3s_select(_seq_adv(batch), batch.rollout.group_ids, ctx.cfg.d3s_keep))


@SELECTORS.register("d3s_tokens", needs=("entropy",), active=_d3s_tokens_on, scope="batch")
def d3s_tokens(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """D^3S token level: only the top ``|A| * H`` tokens carry loss, keep ratio annealed over the RL steps."""
    cfg = ctx.cfg
    ratio = A.d3s_keep_ratio(ctx.step, cfg.total_steps, cfg.d3s_token_ratio_start, cfg.d3s_token_ratio_end)
    mask = A.d3s_token_mask(batch.adv, batch.entropy, batch.mask, ratio)
    ctx.metrics["select/d3s_token_ratio"] = ratio
    ctx.metrics["select/d3s_token_frac"] = float(mask.sum()) / max(float(batch.mask.sum()), 1.0)
    return dataclasses.replace(batch, mask=mask)


@SELECTORS.register("forking_tokens", needs=("entropy",), active=lambda c: c.forking_top_frac > 0, scope="batch")
def forking_tokens(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """80/20: only the top ``forking_top_frac`` highest-entropy tokens carry loss; ``forking_norm="selected"``
    normalizes the loss by the selected tokens, ``"all"`` by all completion tokens."""
    mask = A.high_entropy_mask(batch.entropy, batch.mask, ctx.cfg.forking_top_frac)
    denom = batch.denom_mask
    if ctx.cfg.forking_norm == "all" and denom is None:
        denom = batch.mask
    ctx.metrics["select/forking_token_frac"] = float(mask.sum()) / max(float(batch.mask.sum()), 1.0)
    return dataclasses.replace(batch, mask=mask, denom_mask=denom)


# ----- update stage -------------------------------------------------------------------------------
def _needs_values(cfg) -> bool:
    return "values" in ADVANTAGES.meta(cfg.advantage)["needs"]


@SELECTORS.register("value_tracker", stage="update", needs=("values", "score"), active=_needs_values, scope="batch")
def value_tracker(batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """SPO tracker update after the policy step: each prompt's drift ``D`` is measured on its stored response
    (log-probs stored after the step that trained on it vs. now), then ``(a, b)`` are discounted by ``rho(D)``
    and updated with this step's reward, and the new responses are stored with their post-step log-probs
    (a prompt seen for the first time has ``D = 0``)."""
    ro, tracker = batch.rollout, ctx.tracker
    drift = torch.zeros(len(ro))
    rows, last, logp_then = tracker.stored(ro.prompt_index)
    if len(rows):
        now, m = ctx.score([ro.prompt_ids[i] for i in rows.tolist()], last)
        drift[rows] = A.spo_policy_drift(logp_then[:, : now.shape[1]], now, m)
    tracker.update(ro.prompt_index, ro.raw_rewards.clamp(0, 1), drift)
    logp_after, m = ctx.score(ro.prompt_ids, ro.completion_ids)
    tracker.remember(ro.prompt_index, ro.completion_ids, [lp[mk > 0] for lp, mk in zip(logp_after, m)])
    ctx.metrics["spo/drift_mean"] = float(drift[rows].mean()) if len(rows) else 0.0
    return batch


# ----- the pipeline -------------------------------------------------------------------------------
def _seq_adv(batch: LMBatch) -> Tensor:
    return (batch.adv * batch.cmask).sum(1) / batch.cmask.sum(1).clamp(min=1)


def check_names(v) -> str | None:
    """Config check of ``selectors``: None or a list of registered names without repeats."""
    if v is None:
        return None
    bad = [n for n in v if n not in SELECTORS]
    if bad or len(set(v)) != len(v):
        return f"must list distinct selectors from {SELECTORS.names()}" + (f"; unknown: {bad}" if bad else "")
    return None


def pipeline(cfg) -> list[str]:
    """The ordered selector names of ``cfg``: ``cfg.selectors`` when set (each entry governed by config keys
    must be turned on by them, and every entry turned on must be listed; an entry registered without an
    ``active`` rule, such as a user's own selector, is on when listed), else the active entries of
    :data:`DEFAULT_ORDER`."""
    order = [*DEFAULT_ORDER, *(n for n in SELECTORS.names() if n not in DEFAULT_ORDER)]
    active = [n for n in order if SELECTORS.meta(n)["active"](cfg)]
    if cfg.selectors is None:
        return active
    for n in cfg.selectors:
        SELECTORS.get(n)  # an unknown name: one line with the valid choices
    off = [n for n in cfg.selectors if n not in active and SELECTORS.meta(n)["active"] is not _no]
    if off:
        raise UserError(f"config key 'selectors' lists {off}, which its config keys leave off; active: {active}")
    missing = [n for n in active if n not in cfg.selectors]
    if missing:
        raise UserError(f"config key 'selectors'={cfg.selectors} misses {missing}, which the config turns on")
    return list(cfg.selectors)


def needs(names: list[str]) -> set[str]:
    return {k for n in names for k in SELECTORS.meta(n)["needs"]}


def run_stage(names: list[str], stage: str, batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """Apply the selectors of ``stage`` in order (an empty batch stops the stage)."""
    for n in names:
        if SELECTORS.meta(n)["stage"] == stage and len(batch):
            batch = SELECTORS.get(n)(batch, ctx)
    return batch


def prompts_to_draw(names: list[str], cfg, n: int) -> int:
    for name in names:
        n = SELECTORS.meta(name)["prompts"](cfg, n)
    return n


def refills(names: list[str]) -> bool:
    return any(SELECTORS.meta(n)["refills"] for n in names)
