"""GRPO-family trainer for Hugging Face causal LMs: every preset is this one loop with different boxes.

The trainer is two stages over the shared run lifecycle (:mod:`policyopt.runs.lifecycle`): the supervised
:class:`WarmStart` (optional, checkpointed, resumable) and :class:`RL`. Each RL iteration is the phases
:func:`collect` (sample prompts from the named seed stream ``prompts``, generate G completions each, score,
generation-stage selection with refills), :func:`prepare` (train-time log-probs, advantages from the shared
registry, advantage-stage selection), :func:`optimize` (epochs x mini-batches x micro-batches with *global*
aggregation denominators) and the update-stage selection. Seeding, checkpoints, exact resume, logging and the
non-finite guard are the lifecycle's; data selection is the ordered pipeline of :mod:`policyopt.lm.selection`.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.errors import UserError
from policyopt.lm import algorithms as A
from policyopt.lm import distributed as D
from policyopt.lm import selection as S
from policyopt.lm.backends import GenerationBackend, make_backend
from policyopt.lm.config import FAMILY, LMConfig
from policyopt.lm.model import Reference, add_lora, build_model, enable_checkpointing, load_tokenizer, save_pretrained
from policyopt.lm.rewards import RewardSet
from policyopt.lm.rollout import Rollout, collate, generate, set_mode, token_logp
from policyopt.lm.runtime import autocast, compute_dtype, resolve_device
from policyopt.lm.selection import LMBatch, SelectionContext
from policyopt.lm.tasks import load_task
from policyopt.lm.tokenizer import unknown_characters
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, kl_penalty
from policyopt.losses.aggregation import masked_mean
from policyopt.losses.correction import apply_correction
from policyopt.optim import make_optimizer
from policyopt.runs.files import atomic_write_text
from policyopt.runs.lifecycle import Cadence, Phases, Run, SeedStreams, execute, load_config, seed_global
from policyopt.schedules import Schedule


def _fields(rows: list[dict]) -> dict[str, list]:
    keys = set().union(*(r.keys() for r in rows)) - {"prompt"}
    return {k: [r.get(k) for r in rows] for k in sorted(keys)}


@torch.no_grad()
def evaluate_model(
    model,
    tok,
    rows: list[dict],
    rewards: RewardSet,
    acc_idx: int,
    *,
    max_new_tokens: int,
    stop,
    temperature: float,
    top_p: float,
    k: int = 0,
    batch: int = 256,
    stochastic: bool = False,
    backend: GenerationBackend | None = None,
) -> dict:
    """Greedy held-out accuracy (sampled at ``temperature``/``top_p`` if ``stochastic``), and pass@k with k
    sampled completions per prompt if k > 0; completions from ``backend`` (default: the ``auto`` backend)."""
    correct, passk = [], []
    sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop, backend=backend)
    for s in range(0, len(rows), batch):
        part = rows[s : s + batch]
        prompts = [r["prompt"] for r in part]
        ro = generate(model, tok, prompts, torch.arange(len(part)), 0, 1, greedy=not stochastic, **sampling)
        _, comps = rewards(prompts, ro.completions, _fields(part))
        correct += (comps[:, acc_idx] >= 1.0 - 1e-6).tolist()
        if k > 0:
            ro = generate(model, tok, prompts, torch.arange(len(part)), 0, k, **sampling)
            rep = [r for r in part for _ in range(k)]
            _, comps = rewards([r["prompt"] for r in rep], ro.completions, _fields(rep))
            passk += (comps[:, acc_idx] >= 1.0 - 1e-6).reshape(len(part), k).any(1).tolist()
    out = {"accuracy": float(np.mean(correct))}
    if k > 0:
        out[f"pass@{k}"] = float(np.mean(passk))
    return out


def setup(cfg: LMConfig):
    """Task, tokenizer, reward set, model (+ activation checkpointing, + LoRA) on ``cfg.device`` from a config."""
    device = resolve_device(cfg.device)
    compute_dtype(cfg.dtype)
    task = load_task(cfg.task, cfg.dataset, cfg.seed, cfg.eval_size)
    tok = load_tokenizer(cfg.model, cfg.tokenizer)
    rewards = RewardSet(dict(cfg.rewards) or task.default_rewards, task.scorer)
    acc_name = cfg.accuracy_reward or rewards.names[0]
    if acc_name not in rewards.names:
        raise UserError(f"config key 'accuracy_reward'={acc_name!r} is not one of the rewards {rewards.names}")
    model = build_model(cfg.model, tok, cfg.seed)
    check_prompts(task, tok, model, cfg.max_new_tokens)
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.lora_r:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    return task, tok, rewards, rewards.names.index(acc_name), model.to(device)


def check_prompts(task, tok, model, max_new_tokens: int) -> None:
    """Refuse prompts that do not fit the model's context with ``max_new_tokens`` after them; warn once about
    characters the tokenizer cannot represent (they become its unknown token)."""
    rows = list(task.train) + list(task.test)
    texts = [r["prompt"] for r in rows] + [str(r.get("answer", "")) for r in rows]
    unknown = unknown_characters(tok, texts)
    if unknown:
        shown = "".join(sorted(unknown))[:40]
        warnings.warn(
            f"the tokenizer maps {sum(unknown.values())} occurrences of {len(unknown)} characters in the "
            f"data to its unknown token: {shown!r}",
            stacklevel=2,
        )
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        longest = max(map(len, tok([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]))
        if longest + max_new_tokens > context:
            raise UserError(
                f"the longest prompt has {longest} tokens; with max_new_tokens={max_new_tokens} it does "
                f"not fit the model's context of {context} tokens (shorten the prompts or lower "
                "max_new_tokens)"
            )


def sft_step(model, tok, rows: list[dict], opt, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One supervised step: cross-entropy on ``answer + EOS`` given the prompt (forward under autocast to
    ``dtype``), on the model's device."""
    pids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    cids = [tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rows]
    dev = next(model.parameters()).device
    ids, attn, pos, cmask, P = (t.to(dev) if torch.is_tensor(t) else t for t in collate(pids, cids, tok.pad_token_id))
    set_mode(model, train=True)
    with autocast(dev, dtype):
        logp, _ = token_logp(model, ids, attn, pos, P, 1.0)
    loss = -(logp * cmask).sum() / cmask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach().cpu()  # logged with the host-side metrics


@dataclass
class LMParts:
    """Everything the RL phases share: config, task, model and optimizer, the boxes from the registries."""

    cfg: LMConfig
    task: Any
    tok: Any
    rewards: RewardSet
    acc_idx: int
    model: Any
    opt: torch.optim.Optimizer
    params: list
    selectors: list[str]
    tracker: A.SPOTracker | None = None
    ref: Reference | None = None
    gen_kw: dict = field(default_factory=dict)
    warned_shortfall: bool = False
    world: D.World = field(default_factory=D.World)  # the data-parallel ranks (one process: the identity)
    backend: GenerationBackend | None = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def generation_backend(self) -> GenerationBackend:
        """The backend, given the current weights first (a no-op rebind for the in-process backends)."""
        self.backend.load_weights(self.model)
        return self.backend

    def evaluate(self, rows: list[dict], k: int = 0) -> dict:
        kw = dict(self.gen_kw, backend=self.generation_backend())
        return evaluate_model(self.model, self.tok, rows, self.rewards, self.acc_idx, k=k, **kw)

    def forward_logp(self, model, b: LMBatch, rows: Tensor, with_entropy: bool = False):
        """No-grad ``(logp, entropy)`` of ``rows`` of ``b`` under ``model`` on the device (autocast to the
        compute dtype), returned on the host; ``micro_batch_tokens`` chunks the rows (else one pass)."""
        chunks = [rows] if self.cfg.micro_batch_tokens is None else _micro_batches(self.cfg, b.attn, rows)
        with torch.no_grad():
            outs = [_rows_logp(self, model, b, c, with_entropy) for c in chunks]
        if len(outs) == 1 and chunks[0] is rows:
            logp, ent = outs[0]
            return logp.cpu(), None if ent is None else ent.cpu()
        order = torch.cat(chunks).argsort()
        logp = torch.cat([o[0] for o in outs]).cpu()[order]
        ent = None if not with_entropy else torch.cat([o[1] for o in outs]).cpu()[order]
        return logp, ent

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]):
        """``(logp, completion_mask)`` of responses under the current policy (no grad)."""
        ids, attn, pos, cmask, P = collate(prompt_ids, completion_ids, self.tok.pad_token_id, self.cfg.max_new_tokens)
        set_mode(self.model, train=False)
        b = LMBatch(None, None, P, ids, attn, pos, cmask, cmask)
        logp, _ = self.forward_logp(self.model, b, torch.arange(len(ids)))
        return logp, cmask


def build_parts(cfg: LMConfig, world: D.World | None = None) -> LMParts:
    task, tok, rewards, acc_idx, model = setup(cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for all tensors (the default per-tensor loop costs ~1 ms a step on the tiny model)
    opt = make_optimizer("adamw", params, cfg.learning_rate, weight_decay=cfg.weight_decay)
    names = S.pipeline(cfg)
    tracker = None
    if "values" in ADVANTAGES.meta(cfg.advantage)["needs"]:  # a per-prompt value tracker supplies the baselines
        tracker = A.SPOTracker(len(task.train), max_len=cfg.max_new_tokens)
    gen_kw = dict(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, stop=cfg.stop)
    dtype = compute_dtype(cfg.dtype)
    backend = make_backend(cfg.generation_backend, model, tok, top_p=cfg.top_p, stop=cfg.stop, dtype=dtype)
    device = next(model.parameters()).device
    return LMParts(
        cfg,
        task,
        tok,
        rewards,
        acc_idx,
        model,
        opt,
        params,
        names,
        tracker,
        gen_kw=gen_kw,
        backend=backend,
        device=device,
        dtype=dtype,
        world=world or D.World(),
    )


# ----- RL phases ----------------------------------------------------------------------------------
def _draw_prompts(parts: LMParts, rng: np.random.Generator, n: int) -> np.ndarray:
    n_train = len(parts.task.train)
    if parts.tracker is not None:  # prioritized by the tracker's uncertainty
        pr = parts.tracker.priorities().numpy()
        return rng.choice(n_train, n, replace=False, p=pr / pr.sum())
    return rng.choice(n_train, n, replace=False)


def collect(parts: LMParts, rng: np.random.Generator, ctx: SelectionContext) -> LMBatch:
    """Sample prompts, generate ``G`` completions each, score them and run the generation-stage selectors;
    while a refilling selector (dynamic sampling) leaves fewer rows than the target, generate again (at most
    ``max_gen_batches`` times). A shortfall is logged (``select/refill_shortfall``) and warned about once."""
    cfg = parts.cfg
    n_prompts = min(S.prompts_to_draw(parts.selectors, cfg, cfg.prompts_per_step), len(parts.task.train))
    target, refill = n_prompts * cfg.group_size, S.refills(parts.selectors)
    kept, n_groups, zero_var, n_gen = [], 0, [], 0
    while n_gen < (cfg.max_gen_batches if refill else 1) and sum(len(b) for b in kept) < target:
        n_gen += 1
        idx = _draw_prompts(parts, rng, n_prompts)
        ro = _generate_shards(parts, idx, n_groups, f"{ctx.step}/{n_gen}")
        n_groups += len(idx)
        rrows = [parts.task.train[i] for i in ro.prompt_index.tolist()]
        ro = ro.scored(*parts.rewards([r["prompt"] for r in rrows], ro.completions, _fields(rrows)))
        zero_var.append(1 - A.informative_groups(ro.rewards, ro.group_ids).float().mean())
        kept.append(S.run_stage(parts.selectors, "generation", LMBatch.of(ro), ctx))
    batch = LMBatch.cat(kept)
    ctx.metrics["groups/zero_variance_frac"] = parts.world.mean(torch.stack(zero_var).mean())
    ctx.metrics["groups/gen_batches"] = float(n_gen)
    if refill:
        batch = batch.select(torch.arange(min(len(batch), target)))
        shortfall = 1.0 - len(batch) / target
        ctx.metrics["select/refill_shortfall"] = shortfall
        if shortfall > 0 and not parts.warned_shortfall:
            parts.warned_shortfall = True
            warnings.warn(
                f"RL step {ctx.step}: after {n_gen} generation batches (max_gen_batches) only "
                f"{len(batch)} of {target} completions passed the selection; training on the partial "
                "batch (metric select/refill_shortfall; warned once per run)",
                stacklevel=2,
            )
    return batch


def _generate_shards(parts: LMParts, idx: np.ndarray, n_groups: int, draw: str) -> Rollout:
    """``G`` completions for this rank's rollout shards of the drawn prompts ``idx`` (all of them in one process
    without ``rollout_shards``); shard ``k`` samples from the stream ``generation/{draw}/{k}``."""
    out, seeds, kw = [], SeedStreams(parts.cfg.seed), dict(parts.gen_kw, backend=parts.generation_backend())
    for k, sl in D.my_shards(len(idx), parts.cfg.rollout_shards, parts.world):
        with D.generation_rng(None if k is None else seeds.seed(f"generation/{draw}/{k}")):
            prompts = [parts.task.train[i]["prompt"] for i in idx[sl]]
            g0, G = n_groups + sl.start, parts.cfg.group_size
            out.append(generate(parts.model, parts.tok, prompts, torch.as_tensor(idx[sl]), g0, G, **kw))
    return out[0] if len(out) == 1 else Rollout.cat(out)


def _on_policy(parts: LMParts) -> bool:
    """One optimizer step on freshly sampled data: pi_old == pi_theta, so (like TRL with num_iterations=1) the
    no-grad pass is skipped and log-probs / entropy come from the train pass."""
    cfg = parts.cfg
    return (
        cfg.epochs == 1
        and cfg.mini_batches == 1
        and not cfg.bypass
        and not cfg.kl_in_reward
        and not S.needs(parts.selectors) & {"old_logp", "entropy"}
    )


def _token_tensors(parts: LMParts, batch: LMBatch) -> LMBatch:
    ro, cfg = batch.rollout, parts.cfg
    ids, attn, pos, cmask, P = collate(ro.prompt_ids, ro.completion_ids, parts.tok.pad_token_id, cfg.max_new_tokens)
    sampler = torch.zeros_like(cmask)
    for i, lp in enumerate(ro.sampler_logp):
        sampler[i, : len(lp)] = lp
    mask = cmask * batch.loss_rows.to(cmask.dtype)[:, None]
    out = LMBatch(ro, batch.loss_rows, P, ids, attn, pos, cmask, mask, None, None, sampler)
    rows = torch.arange(len(ro))
    set_mode(parts.model, train=False)
    if not _on_policy(parts):
        out.old_logp, out.entropy = parts.forward_logp(parts.model, out, rows, with_entropy=True)
    if parts.ref is not None:
        with parts.ref.context() as ref_model:
            out.ref_logp, _ = parts.forward_logp(ref_model, out, rows)
    return out


def prepare(parts: LMParts, batch: LMBatch, ctx: SelectionContext) -> LMBatch:
    """Token tensors, log-probs under pi_old / the reference, advantages, then the advantage-stage selectors."""
    cfg = parts.cfg
    batch = _token_tensors(parts, batch)
    if batch.old_logp is not None:
        g = parts.world.cat
        ctx.metrics["stats/logp_mismatch"] = masked_mean(g((batch.old_logp - batch.sampler_logp).abs()), g(batch.cmask))
    if cfg.bypass:
        batch.old_logp = batch.sampler_logp
    ro = batch.rollout
    ain = AdvantageInputs(
        rewards=ro.rewards,
        group_ids=ro.group_ids,
        mask=batch.cmask,
        reward_components=ro.components,
        component_weights=parts.rewards.weights,
    )
    if parts.tracker is not None:
        ain.values = parts.tracker.value(ro.prompt_index)
    if cfg.kl_in_reward and batch.ref_logp is not None:
        ain.token_kl, ain.kl_coef = (batch.old_logp - batch.ref_logp) * batch.cmask, cfg.beta
    adv, _ = ADVANTAGES.get(cfg.advantage)(ain, AdvantageConfig(gamma=cfg.gamma, std_eps=cfg.std_eps))
    batch.adv = adv[:, None] * batch.cmask if adv.dim() == 1 else adv
    ctx.metrics["select/rollout_batch"] = parts.world.count(len(batch))
    return S.run_stage(parts.selectors, "advantage", batch, ctx)


def _trim(ids: Tensor, attn: Tensor, pos: Tensor, P: int):
    """Drop the columns that are padding in every row (left of the longest prompt, right of the longest
    completion; at least one prompt and one completion column stay): ``(ids, attn, pos, P')``."""
    used = attn.bool().any(0)
    first = int(used[:P].nonzero().min()) if bool(used[:P].any()) else P - 1
    last = P + (int(used[P:].nonzero().max()) + 1 if bool(used[P:].any()) else 1)
    return ids[:, first:last], attn[:, first:last], pos[:, first:last], P - first


def _rows_logp(parts: LMParts, model, b: LMBatch, rows: Tensor, with_entropy: bool):
    """``token_logp`` of ``rows`` of ``b`` on the device under autocast to the compute dtype, ``(len(rows), L)``;
    with ``micro_batch_tokens`` set, the columns that are padding in all of these rows are not computed
    (:func:`_trim`; the outputs are zero-padded back to ``L``)."""
    ids, attn, pos = (t[rows].to(parts.device) for t in (b.ids, b.attn, b.pos))
    P, L = b.P, b.ids.shape[1] - b.P
    if parts.cfg.micro_batch_tokens is not None:
        ids, attn, pos, P = _trim(ids, attn, pos, P)
    with autocast(parts.device, parts.dtype):
        logp, ent = token_logp(model, ids, attn, pos, P, parts.cfg.temperature, with_entropy=with_entropy)
    if logp.shape[1] < L:
        logp = torch.nn.functional.pad(logp, (0, L - logp.shape[1]))
        ent = None if ent is None else torch.nn.functional.pad(ent, (0, L - ent.shape[1]))
    return logp, ent


def _micro_loss(parts: LMParts, b: LMBatch, mic, agg: Aggregator, on_policy: bool):
    cfg = parts.cfg
    logp, ent = _rows_logp(parts, parts.model, b, mic, cfg.ent_coef > 0 or on_policy)
    ref = None if b.ref_logp is None else b.ref_logp[mic]
    old = logp.detach() if on_policy else b.old_logp[mic]
    pb, cstats = PolicyBatch(logp, old, b.adv[mic], b.mask[mic], logp_ref=ref), {}
    if cfg.correction.name != "none":  # rollout correction of the sampler / trainer mismatch
        pb, cstats = apply_correction(pb, b.sampler_logp[mic], cfg.correction)
    pl, stats = POLICY_LOSSES.get(cfg.policy_loss)(pb, cfg.loss, agg)
    stats.update(cstats)
    loss = pl
    if ref is not None and not cfg.kl_in_reward:
        kl = agg(kl_penalty(logp, ref, cfg.kl_estimator), b.mask[mic])
        loss = loss + cfg.beta * kl
        stats["kl_loss"] = kl.detach()
    if cfg.ent_coef > 0:
        loss = loss - cfg.ent_coef * agg(ent, b.mask[mic])
    stats["loss/policy"], stats["loss/total"] = pl.detach(), loss.detach()
    return loss, stats, logp.detach(), None if ent is None else ent.detach()


class _DenomAggregator:
    """An aggregation whose denominators come from ``denom`` (the rows of one micro-batch) while the loss is
    taken over the given (smaller) mask: ``agg(x * mask, denom)``."""

    def __init__(self, agg: Aggregator, denom):
        self.agg, self.denom = agg, denom

    def __call__(self, x, mask):
        return self.agg(x * mask.to(x.dtype), self.denom)


def pack_by_tokens(lengths: Tensor, budget: int) -> list[Tensor]:
    """Micro-batches of at most ``budget`` tokens: positions into ``lengths`` (each row's token count), sorted
    longest first and packed greedily in that order (a new micro-batch starts when the next row would pass the
    budget); a row longer than the budget is a micro-batch alone. Sorting by length puts rows of similar length
    together (little padding)."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    out, cur, used = [], [], 0
    for i, n in zip(order.tolist(), lengths[order].tolist()):
        if cur and used + n > budget:
            out.append(torch.tensor(cur))
            cur, used = [], 0
        cur.append(i)
        used += n
    return out + ([torch.tensor(cur)] if cur else [])


def _micro_batches(cfg: LMConfig, attn: Tensor, rows: Tensor) -> list[Tensor]:
    """``rows`` in micro-batches: ``micro_batch_size`` rows each, or by the ``micro_batch_tokens`` budget of
    (prompt + completion) tokens (:func:`pack_by_tokens`)."""
    if cfg.micro_batch_tokens is None:
        return list(torch.split(rows, cfg.micro_batch_size))
    return [rows[c] for c in pack_by_tokens(attn[rows].sum(1), cfg.micro_batch_tokens)]


_DEVICE_FIELDS = ("ids", "attn", "pos", "mask", "denom_mask", "adv", "sampler_logp", "old_logp", "ref_logp")


def _on_device(b: LMBatch, device: torch.device) -> LMBatch:
    """The token tensors the loss reads, on ``device`` (the same tensors when they are already there)."""
    moved = {k: getattr(b, k) for k in _DEVICE_FIELDS if getattr(b, k) is not None}
    return dataclasses.replace(b, **{k: v.to(device, non_blocking=True) for k, v in moved.items()})


def optimize(parts: LMParts, b: LMBatch) -> dict[str, list]:
    """Epochs x mini-batches of optimizer steps, each accumulated over micro-batches (:func:`_micro_batches`)
    with the mini-batch's global aggregation denominators, on the device. On the on-policy path,
    ``b.old_logp`` / ``b.entropy`` are filled from the train pass (statistics)."""
    cfg, on_policy = parts.cfg, _on_policy(parts)
    if on_policy:
        b.old_logp, b.entropy = torch.zeros_like(b.cmask), torch.zeros_like(b.cmask)
    set_mode(parts.model, train=True)
    acc: dict[str, list] = {}
    d = _on_device(b, parts.device)
    denom = d.mask if d.denom_mask is None else d.denom_mask
    for _epoch in range(cfg.epochs):
        perm = torch.randperm(len(b))
        for mb in torch.tensor_split(perm, min(cfg.mini_batches, len(b))):
            agg = parts.world.aggregator(cfg.aggregation, denom[mb], cfg.const_len or cfg.max_new_tokens)
            parts.opt.zero_grad(set_to_none=True)
            for mic in _micro_batches(cfg, b.attn, mb):
                a = agg if d.denom_mask is None else _DenomAggregator(agg, denom[mic])
                loss, stats, logp, ent = _micro_loss(parts, d, mic, a, on_policy)
                loss.backward()
                if on_policy:
                    b.old_logp[mic], b.entropy[mic] = logp.to(b.old_logp.device), ent.to(b.entropy.device)
                for k, v in stats.items():
                    acc.setdefault(k, []).append(v)
            parts.world.reduce_grads(parts.params)  # the ranks' partial gradients -> the mini-batch's
            if cfg.max_grad_norm is not None:
                acc.setdefault("grad_norm", []).append(torch.nn.utils.clip_grad_norm_(parts.params, cfg.max_grad_norm))
            parts.opt.step()
    return acc


def step_metrics(parts: LMParts, b: LMBatch, acc: dict[str, list], ctx: SelectionContext, times: dict) -> dict:
    """The RL step's metrics (tensors; logged with one host sync), over the rows of every data-parallel rank."""
    cfg, ro, g = parts.cfg, b.rollout, parts.world.cat
    sums = {k: g(torch.stack(v).float()).cpu() for k, v in acc.items()}
    m_adv = g(b.adv[b.mask > 0])
    m_adv = m_adv if m_adv.numel() else torch.zeros(1)
    lengths = g(torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float32))
    rewards, components, cmask = g(ro.rewards), g(ro.components), g(b.cmask)

    def std(x):
        return x.std() if x.numel() > 1 else torch.tensor(0.0)

    metrics = {
        "reward/mean": rewards.mean(),
        "reward/std": std(rewards),
        **{f"reward/{n}_mean": components[:, j].mean() for j, n in enumerate(parts.rewards.names)},
        **{f"reward/{n}_std": std(components[:, j]) for j, n in enumerate(parts.rewards.names)},
        "adv/mean": m_adv.mean(),
        "adv/std": std(m_adv),
        "adv/abs_max": m_adv.abs().max(),
        "stats/clip_frac_low": sums["clip_frac_low"].mean() if "clip_frac_low" in sums else 0.0,
        "stats/clip_frac_high": sums["clip_frac_high"].mean() if "clip_frac_high" in sums else 0.0,
        "stats/approx_kl": sums["approx_kl"].mean(),
        "stats/entropy": masked_mean(g(b.entropy), cmask),
        "completion/len_mean": lengths.mean(),
        "completion/len_max": lengths.max(),
        "completion/truncation_rate": g(ro.truncated.float()).mean(),
        "perf/gen_tokens_per_s": float(lengths.sum()) / max(times["gen"], 1e-9),
        "perf/train_tokens_per_s": float(g(b.mask).sum()) * cfg.epochs / max(times["train"], 1e-9),
        "loss/policy": sums["loss/policy"].mean(),
        "loss/total": sums["loss/total"].mean(),
        "train/lr": parts.opt.param_groups[0]["lr"],
        "select/train_batch": float(len(cmask)),
        **ctx.metrics,
    }
    if "stats/logp_mismatch" not in metrics:  # on-policy: the train pass against the sampler
        metrics["stats/logp_mismatch"] = masked_mean(g((b.old_logp - b.sampler_logp).abs()), cmask)
    if b.ref_logp is not None:
        metrics["stats/kl_ref"] = masked_mean(g(kl_penalty(b.old_logp, b.ref_logp, cfg.kl_estimator)), g(b.mask))
    if "grad_norm" in sums:
        metrics["stats/grad_norm"] = sums["grad_norm"].mean()
    for k, v in sums.items():  # rollout correction: means over micro-batches (the max of the maxima)
        if k.startswith("correction/"):
            metrics[k] = v.max() if k.endswith("_max") else v.mean()
    return metrics


def set_lr(parts: LMParts, step: int) -> None:
    """The learning rate of RL step ``step`` (1-based) from the schedule."""
    cfg = parts.cfg
    lr = Schedule(cfg.lr_schedule, cfg.learning_rate, cfg.total_steps)(step)
    for g in parts.opt.param_groups:
        g["lr"] = lr


def collect_step(parts: LMParts, step: int, rng: np.random.Generator) -> tuple[SelectionContext, LMBatch, float]:
    """The collect phase of RL step ``step`` (1-based): learning rate, generation, generation-stage selection
    (prompts from ``rng``, sampling from torch's global generator)."""
    set_lr(parts, step)
    ctx = SelectionContext(parts.cfg, step, tracker=parts.tracker, score=parts.score)
    t0 = time.time()
    batch = collect(parts, rng, ctx)
    return ctx, batch, time.time() - t0


def update_step(parts: LMParts, ctx: SelectionContext, batch: LMBatch, gen_time: float):
    """prepare (advantages, selection) -> optimize -> update-stage selectors; returns ``(metrics, batch)``, the
    batch None when the selection left nothing to train on."""
    if len(batch):
        batch = prepare(parts, batch, ctx)
    if len(batch) == 0:
        return dict(ctx.metrics), None
    t1 = time.time()
    acc = optimize(parts, batch)
    metrics = step_metrics(parts, batch, acc, ctx, {"gen": gen_time, "train": time.time() - t1})
    S.run_stage(parts.selectors, "update", batch, ctx)
    return {**metrics, **ctx.metrics}, batch


def rl_step(parts: LMParts, step: int, rng: np.random.Generator) -> tuple[dict, LMBatch | None]:
    """One RL step outside the lifecycle (tests, notebooks): :func:`collect_step` then :func:`update_step`."""
    return update_step(parts, *collect_step(parts, step, rng))


# ----- the stages over the run lifecycle ----------------------------------------------------------
class WarmStart(Phases):
    """Supervised warm-start: cross-entropy on ``answer + EOS``; by default it ends once the model solves
    ``sft_target_accuracy`` of a fixed sample of *training* prompts (checked every ``sft_check_every`` steps),
    so RL starts from a reward that is neither sparse nor saturated. Checkpointed at each check."""

    name = "warm-start"

    def __init__(self, parts: LMParts, run: Run):
        cfg = self.cfg = parts.cfg
        self.parts, self.iterations = parts, cfg.sft_steps
        self.cadence = Cadence(log=cfg.sft_check_every, checkpoint=cfg.sft_check_every)
        self.opt = run.track("sft_optimizer", make_optimizer("adamw", parts.params, cfg.sft_lr))
        n = len(parts.task.train)
        order = np.random.default_rng(run.seeds.seed("sft_check_prompts")).permutation(n)[: cfg.sft_check_size]
        self.check_rows = [parts.task.train[i] for i in order]
        run.counters.update(sft_reached=False)

    def step(self, iteration: int) -> int:
        return iteration - self.iterations  # the warm-start logs at negative steps; RL starts at 0

    def collect(self, run: Run) -> list[dict]:
        train = self.parts.task.train
        return [train[i] for i in run.seeds.numpy("sft_batches").integers(0, len(train), self.cfg.sft_batch)]

    def update(self, run: Run, rows: list[dict]) -> dict[str, Any]:
        cfg, it = self.cfg, run.iteration
        stats: dict[str, Any] = {
            "loss/sft": sft_step(self.parts.model, self.parts.tok, rows, self.opt, self.parts.dtype)
        }
        if cfg.sft_target_accuracy > 0 and it % cfg.sft_check_every == 0 and it < self.iterations:
            acc = self.parts.world.broadcast_object(self.parts.evaluate(self.check_rows)["accuracy"])
            stats["sft/train_accuracy"] = acc
            if acc >= cfg.sft_target_accuracy:
                print(f"warm-start ends at step {it}: training-prompt accuracy {acc:.3f}", flush=True)
                run.counters["sft_reached"] = True
        return stats

    def done(self, run: Run) -> bool:
        return bool(run.counters["sft_reached"])

    def end(self, run: Run) -> None:
        self.opt.state.clear()  # the warm-start's moments are not needed by RL (nor in its checkpoints)


class RL(Phases):
    """The RL stage: a batch from the :class:`~policyopt.lm.asynchronous.BatchSource` (generated here, or by
    generation workers) then :func:`update_step` per iteration, held-out accuracy before the first step and at
    the end. The KL reference is the policy when this stage starts; batch ``i``'s prompts and sampling noise
    come from seed streams keyed by ``i``; ``samples.jsonl`` is cut back to the checkpoint on resume."""

    name = "rl"

    def __init__(self, parts: LMParts, run: Run):
        cfg = self.cfg = parts.cfg
        self.parts, self.iterations = parts, cfg.total_steps
        self.cadence = Cadence(log=1, evaluate=cfg.eval_every, checkpoint=cfg.checkpoint_every)
        run.track("optimizer", parts.opt)
        if parts.tracker is not None:
            run.track("value_tracker", parts.tracker)
        if cfg.beta > 0:
            parts.ref = run.track("reference", Reference(parts.model, bool(cfg.lora_r)))
        run.counters.update(acc_before=None, samples_lines=0, shortfall_warned=False)
        self.samples = run.dir / "samples.jsonl"
        self.reward: float | None = None
        from policyopt.lm.asynchronous import batch_source  # (it imports this module)

        self.source = batch_source(parts, run)

    def begin(self, run: Run) -> None:
        self.parts.world.broadcast_params(self.parts.model)  # every rank starts RL from rank 0's weights
        self.lines = int(run.counters["samples_lines"])
        if run.writer and self.samples.exists():  # cut back to the checkpoint (a resumed run rewrites the later steps)
            kept = self.samples.read_text().splitlines(keepends=True)[: self.lines]
            atomic_write_text(self.samples, "".join(kept))
        self.parts.warned_shortfall = bool(run.counters["shortfall_warned"])
        if run.iteration == 0 and self.parts.ref is not None:
            self.parts.ref.reset()  # the policy at the start of RL (after the warm-start)
        if run.counters["acc_before"] is None:
            acc = self.parts.evaluate(self.parts.task.test)["accuracy"]
            run.counters["acc_before"] = acc
            run.log(0, {"eval/accuracy": acc})
            print(f"held-out accuracy before RL: {acc:.3f} ({len(self.parts.task.test)} prompts)", flush=True)

    def collect(self, run: Run):
        set_lr(self.parts, run.iteration)
        return self.source.next(run)

    def update(self, run: Run, collected) -> dict[str, Any]:
        metrics, batch = update_step(self.parts, *collected)
        self.source.updated(run)
        if batch is not None:
            self.reward = float(metrics["reward/mean"])
            truncated = float(metrics["completion/truncation_rate"])
            if truncated > 0.5 and not run.counters.get("truncation_warned"):
                warnings.warn(
                    f"RL step {run.iteration}: {truncated:.0%} of the completions hit max_new_tokens="
                    f"{self.cfg.max_new_tokens} (metric completion/truncation_rate); it is probably too "
                    "small for this task (warned once per run)",
                    stacklevel=2,
                )
                run.counters["truncation_warned"] = True
            if self.cfg.log_samples and run.writer:
                self.lines += _write_samples(self.samples, self.parts, run.iteration, batch)
        return metrics

    def before_checkpoint(self, run: Run) -> None:
        run.counters["samples_lines"] = self.lines
        run.counters["shortfall_warned"] = self.parts.warned_shortfall

    def progress_info(self, run: Run) -> dict[str, Any]:
        return {"reward": self.reward}

    def evaluate(self, run: Run, final: bool) -> dict[str, Any]:
        if not final:
            return {"accuracy": self.parts.evaluate(self.parts.task.test)["accuracy"]}
        return {
            "accuracy_before": run.counters["acc_before"],
            **self.parts.evaluate(self.parts.task.test, k=self.cfg.eval_k),
        }

    def end(self, run: Run) -> None:
        self.source.close()
        if run.writer:
            save_pretrained(self.parts.model, self.parts.tok, run.dir / "model", bool(self.cfg.lora_r))

    def result(self, run: Run, final: dict[str, Any]) -> dict[str, Any]:
        before, after = final["accuracy_before"], final["accuracy"]
        print(f"held-out accuracy after RL: {after:.3f} (before: {before:.3f})", flush=True)
        return {
            "accuracy_before": before,
            "accuracy_after": after,
            **final,
            "steps": run.iteration,
            "train_seconds": round(time.time() - run.t_start, 2),
        }


def _write_samples(path: Path, parts: LMParts, step: int, batch: LMBatch) -> int:
    ro, names = batch.rollout, parts.rewards.names
    n = min(parts.cfg.log_samples, len(ro))
    with open(path, "a") as f:
        for i in range(n):
            row = {
                "step": step,
                "prompt": parts.task.train[int(ro.prompt_index[i])]["prompt"],
                "completion": ro.completions[i],
                "reward": float(ro.rewards[i]),
                **{name: float(ro.components[i, j]) for j, name in enumerate(names)},
            }
            f.write(json.dumps(row) + "\n")
    return n


def train(cfg: LMConfig, run_dir: str | Path, resume: bool = False, **run_info: Any) -> dict:
    """Train (or resume) an LM run in ``run_dir``: the warm-start stage (if ``sft_steps``) then RL. Under
    ``torchrun`` every rank runs this; they train data-parallel (:mod:`policyopt.lm.distributed`) and only
    rank 0 writes ``run_dir``."""
    world = D.world()

    stages: list[Phases] = []

    def build(run: Run) -> list[Phases]:
        parts = build_parts(cfg, world)
        run.track("model", parts.model)
        stages.extend([*([WarmStart(parts, run)] if cfg.sft_steps else []), RL(parts, run)])
        return stages

    try:
        return execute(FAMILY, cfg, run_dir, resume, build, info=run_info, writer=world.is_main)
    finally:  # generation workers end with the run, however it ends
        for stage in stages:
            if isinstance(stage, RL):
                stage.source.close()


def evaluate_run(
    run_dir: str | Path, episodes: int | None = None, video: bool = False, deterministic: bool = True
) -> dict:
    """``policyopt eval RUN_DIR``: greedy held-out accuracy and pass@k of the saved model
    (``episodes`` = number of held-out prompts; ``--stochastic`` (``deterministic=False``): the accuracy
    pass samples at the run's temperature / top_p instead of greedy decoding)."""
    from transformers import AutoModelForCausalLM

    cfg = load_config(run_dir)  # the config class of the family recorded in run.json
    mdir = Path(run_dir) / "model"
    if not (mdir / "config.json").exists():
        raise UserError(f"run {str(run_dir)!r} has no saved model yet ({mdir} is missing); train it to the end first")
    torch.set_num_threads(cfg.threads)
    seed_global(SeedStreams(cfg.seed).seed("evaluation"))
    task = load_task(cfg.task, cfg.dataset, cfg.seed, cfg.eval_size)
    tok = load_tokenizer(str(mdir), None)
    rewards = RewardSet(dict(cfg.rewards) or task.default_rewards, task.scorer)
    acc_idx = rewards.names.index(cfg.accuracy_reward or rewards.names[0])
    model = AutoModelForCausalLM.from_pretrained(str(mdir)).to(resolve_device(cfg.device))
    dtype = compute_dtype(cfg.dtype)
    backend = make_backend(cfg.generation_backend, model, tok, top_p=cfg.top_p, stop=cfg.stop, dtype=dtype)
    rows = task.test[:episodes] if episodes else task.test
    res = evaluate_model(
        model,
        tok,
        rows,
        rewards,
        acc_idx,
        k=cfg.eval_k,
        max_new_tokens=cfg.max_new_tokens,
        stop=cfg.stop,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        stochastic=not deterministic,
        backend=backend,
    )
    return {**res, "prompts": len(rows), "decoding": "sampled" if not deterministic else "greedy"}


__all__ = ["train", "evaluate_run", "evaluate_model", "LMConfig", "Rollout"]
