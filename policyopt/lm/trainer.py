"""GRPO-family trainer for Hugging Face causal LMs: every preset is this one loop with different boxes.

Read top to bottom: set-up (task, tokenizer, model [+ LoRA], reference only if a KL term is active,
resume) -> supervised warm-start (optional) -> held-out accuracy before RL -> for each step: sample
prompts, generate G completions each (dynamic sampling refills if on), score with the reward set
(components kept apart), shape (overlong), advantages from the shared registry, LM-only selection
(CPPO prune + refill from extra prompts drawn up front / D3S rollout subset + annealed top |A|*H token
mask / forking tokens / SEED scaling), then epochs x mini-batches of micro-batched gradient
steps on a shared policy loss with *global* aggregation denominators, log (one host sync), checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.errors import NonFiniteLoss, UserError
from policyopt.lm import algorithms as A
from policyopt.lm.config import LMConfig
from policyopt.lm.model import Reference, add_lora, build_model, load_tokenizer, save_pretrained
from policyopt.lm.rewards import RewardSet, extract_answer
from policyopt.lm.rollout import Rollout, collate, generate, set_mode, token_logp
from policyopt.lm.tasks import load_task
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, kl_penalty
from policyopt.losses.aggregation import masked_mean
from policyopt.runs import rundir
from policyopt.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from policyopt.runs.files import atomic_write_text
from policyopt.runs.logger import MetricLogger
from policyopt.runs.progress import TrainProgress


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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
) -> dict:
    """Greedy held-out accuracy (sampled at ``temperature``/``top_p`` if ``stochastic``), and pass@k with k
    sampled completions per prompt if k > 0."""
    correct, passk = [], []
    sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, stop=stop)
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
    """Task, tokenizer, reward set, model (+ LoRA) from a config."""
    task = load_task(cfg.task, cfg.dataset, cfg.seed, cfg.eval_size)
    tok = load_tokenizer(cfg.model, cfg.tokenizer)
    rewards = RewardSet(dict(cfg.rewards) or task.default_rewards, task.scorer)
    acc_name = cfg.accuracy_reward or rewards.names[0]
    if acc_name not in rewards.names:
        raise UserError(
            f"config key 'accuracy_reward'={acc_name!r} is not one of the rewards {rewards.names}"
        )
    model = build_model(cfg.model, tok, cfg.seed)
    if cfg.lora_r:
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha)
    return task, tok, rewards, rewards.names.index(acc_name), model


def sft_step(model, tok, rows: list[dict], opt) -> torch.Tensor:
    """One supervised step: cross-entropy on ``answer + EOS`` given the prompt."""
    pids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    cids = [tok(r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for r in rows]
    ids, attn, pos, cmask, P = collate(pids, cids, tok.pad_token_id)
    set_mode(model, train=True)
    logp, _ = token_logp(model, ids, attn, pos, P, 1.0)
    loss = -(logp * cmask).sum() / cmask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def train(cfg: LMConfig, run_dir: str | Path, resume: bool = False) -> dict:
    torch.set_num_threads(cfg.threads)
    run_dir = Path(run_dir)
    _seed_everything(cfg.seed)

    # ---- set-up ----------------------------------------------------------------------------------
    task, tok, rewards, acc_idx, model = setup(cfg)
    lora = bool(cfg.lora_r)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel for all tensors (the default per-tensor loop costs ~1 ms a step on the tiny model)
    sft_opt = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=0.0, fused=True)
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    policy_loss = POLICY_LOSSES.get(cfg.policy_loss)
    advantage = ADVANTAGES.get(cfg.advantage)
    adv_cfg = AdvantageConfig(std_eps=cfg.std_eps)
    use_ref = cfg.beta > 0
    tracker = A.SPOTracker(len(task.train), max_len=cfg.max_new_tokens) if cfg.advantage == "spo" else None
    gen_kw = dict(  # sampling settings of rollouts and evaluations alike
        temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, stop=cfg.stop
    )
    # CPPO: draw extra prompts so the completions kept after pruning fill the nominal batch
    cppo_extra = A.cppo_extra_prompts(cfg.prompts_per_step, cfg.group_size, cfg.cppo_keep) if cfg.cppo_keep else 0
    n_prompts = min(cfg.prompts_per_step + cppo_extra, len(task.train))
    cppo_extra = n_prompts - cfg.prompts_per_step if cfg.cppo_keep else 0  # what was actually drawn
    batch_target = cfg.prompts_per_step * cfg.group_size  # nominal rollout / training batch (completions)
    d3s_tokens = cfg.d3s_token_ratio_start < 1 or cfg.d3s_token_ratio_end < 1
    ckpt_path = rundir.checkpoint_path(run_dir)
    step, sft_done, acc_before = 0, 0, None
    if resume:
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        (opt if state["counters"]["sft_done"] >= cfg.sft_steps else sft_opt).load_state_dict(
            state["optimizer"]
        )
        set_rng_state(state["rng"])
        step, sft_done = state["counters"]["step"], state["counters"]["sft_done"]
        acc_before = state.get("acc_before")
        if tracker is not None and "spo" in state:
            tracker.load_state_dict(state["spo"])
        if step >= cfg.total_steps:
            rundir.check_budget_left(run_dir, step)
    ref = Reference(model, lora) if use_ref else None  # after resume: the reference is the RL starting point
    logger = MetricLogger(run_dir, cfg.tensorboard, resume_step=step if resume else None,
                          resume_rows=state.get("metrics_rows") if resume else None)
    samples_path = run_dir / "samples.jsonl"

    def save() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "model": model.state_dict(),
                "optimizer": (opt if sft_done >= cfg.sft_steps else sft_opt).state_dict(),
                "rng": rng_state(),
                "acc_before": acc_before,
                "metrics_rows": logger.rows,
                "counters": {"step": step, "sft_done": sft_done},
                **({"spo": tracker.state_dict()} if tracker is not None else {}),
            },
        )

    t_start = time.time()
    # ---- supervised warm-start -------------------------------------------------------------------
    rng = np.random.default_rng(cfg.seed + 7 + sft_done)
    # The warm-start's outcome jumps sharply with the step budget (and even with float rounding), so by
    # default it ends once the model solves sft_target_accuracy of a fixed sample of *training* prompts:
    # RL then starts from a reward that is neither sparse nor saturated.
    check_rows = [task.train[i] for i in np.random.default_rng(cfg.seed + 11).permutation(len(task.train))[
        : cfg.sft_check_size]]
    while sft_done < cfg.sft_steps:
        rows = [task.train[i] for i in rng.integers(0, len(task.train), cfg.sft_batch)]
        loss = sft_step(model, tok, rows, sft_opt)
        sft_done += 1
        if sft_done % 50 == 0 or sft_done == cfg.sft_steps:
            if not torch.isfinite(loss):
                raise NonFiniteLoss(f"non-finite warm-start loss at step {sft_done}")
            logger.log(-cfg.sft_steps + sft_done, {"sft/loss": loss})
        if cfg.sft_target_accuracy > 0 and sft_done % cfg.sft_check_every == 0 and sft_done < cfg.sft_steps:
            acc = evaluate_model(model, tok, check_rows, rewards, acc_idx, **gen_kw)["accuracy"]
            logger.log(-cfg.sft_steps + sft_done, {"sft/train_accuracy": acc})
            if acc >= cfg.sft_target_accuracy:
                print(f"warm-start ends at step {sft_done}: training-prompt accuracy {acc:.3f}", flush=True)
                sft_done = cfg.sft_steps  # done (the counter also marks it so in checkpoints)
    if acc_before is None:
        acc_before = evaluate_model(model, tok, task.test, rewards, acc_idx, **gen_kw)["accuracy"]
        logger.log(0, {"eval/accuracy": acc_before})
        print(f"held-out accuracy before RL: {acc_before:.3f} ({len(task.test)} prompts)", flush=True)
        save()
    if ref is None and use_ref:
        ref = Reference(model, lora)

    # ---- RL loop ---------------------------------------------------------------------------------
    ckpt_every = cfg.checkpoint_every or cfg.total_steps
    sample_rng = np.random.default_rng(cfg.seed * 1000 + step)
    with TrainProgress(
        cfg.total_steps, f"{cfg.policy_loss}/{cfg.advantage}", cfg.progress, start=step
    ) as bar:
        while step < cfg.total_steps:
            step += 1
            lr = cfg.learning_rate * (1.0 - (step - 1) / cfg.total_steps if cfg.lr_schedule == "linear" else 1.0)
            for g in opt.param_groups:
                g["lr"] = lr
            # -- rollouts (dynamic sampling refills) --
            t0 = time.time()
            parts, n_groups, n_gen, zero_var = [], 0, 0, []
            while n_gen < (cfg.max_gen_batches if cfg.dynamic_sampling else 1):
                if tracker is not None:
                    pr = tracker.priorities().numpy()
                    idx = sample_rng.choice(len(task.train), n_prompts, replace=False, p=pr / pr.sum())
                else:
                    idx = sample_rng.choice(len(task.train), n_prompts, replace=False)
                rows = [task.train[i] for i in idx]
                ro = generate(
                    model,
                    tok,
                    [r["prompt"] for r in rows],
                    torch.as_tensor(idx),
                    n_groups,
                    cfg.group_size,
                    **gen_kw,
                )
                n_gen += 1
                n_groups += len(rows)
                rrows = [task.train[i] for i in ro.prompt_index.tolist()]
                total, comps = rewards([r["prompt"] for r in rrows], ro.completions, _fields(rrows))
                ro.rewards, ro.components = total, comps  # type: ignore[attr-defined]
                informative = A.informative_groups(total, ro.group_ids)
                zero_var.append(1 - informative.float().mean())
                if cfg.dynamic_sampling:
                    ro2 = ro.select(informative)
                    ro2.rewards, ro2.components = total[informative], comps[informative]  # type: ignore
                    ro = ro2
                parts.append(ro)
                if not cfg.dynamic_sampling or sum(len(p) for p in parts) >= n_prompts * cfg.group_size:
                    break
            gen_time = time.time() - t0
            ro = Rollout.cat(parts)
            total = torch.cat([p.rewards for p in parts])
            comps = torch.cat([p.components for p in parts])
            if cfg.dynamic_sampling:
                n_keep = min(len(ro), n_prompts * cfg.group_size)
                ro, total, comps = ro.select(torch.arange(n_keep)), total[:n_keep], comps[:n_keep]
            if len(ro) == 0:  # every group had identical rewards: nothing to learn from this step
                logger.log(step, {"groups/zero_variance_frac": torch.stack(zero_var).mean()})
                bar.update(step)
                continue
            lengths = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float32)
            n_gen_tokens = float(lengths.sum())
            raw_total = total.clone()
            if cfg.overlong_buffer:
                total = total + A.overlong_penalty(
                    lengths, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_factor
                )

            # -- train-time log-probs: pi_old (recomputed), entropy, reference --
            ids, attn, pos, cmask, P = collate(
                ro.prompt_ids, ro.completion_ids, tok.pad_token_id, cfg.max_new_tokens
            )
            sampler = torch.zeros_like(cmask)
            for i, lp in enumerate(ro.sampler_logp):
                sampler[i, : len(lp)] = lp
            # one optimizer step on freshly sampled data: pi_old == pi_theta, so (like TRL with
            # num_iterations=1) skip the extra no-grad pass and take log-probs / entropy from the train pass
            on_policy = (
                cfg.epochs == 1
                and cfg.mini_batches == 1
                and cfg.old_logp == "recompute"
                and not cfg.forking_top_frac
                and not d3s_tokens
                and not cfg.kl_in_reward
            )
            with torch.no_grad():
                set_mode(model, train=False)
                old_logp = ent = None
                if not on_policy:
                    old_logp, ent = token_logp(model, ids, attn, pos, P, cfg.temperature, with_entropy=True)
                ref_logp = None
                if ref is not None:
                    with ref.context():
                        ref_logp, _ = token_logp(ref.forward_model(), ids, attn, pos, P, cfg.temperature)
            mismatch = masked_mean((old_logp - sampler).abs(), cmask) if old_logp is not None else None
            if cfg.old_logp == "sampler":
                old_logp = sampler

            # -- advantages (shared registry) and LM-only selection --
            mask = cmask.clone()
            if cfg.mask_truncated:
                mask = mask * (~ro.truncated).float()[:, None]
            ain = AdvantageInputs(
                rewards=total,
                group_ids=ro.group_ids,
                mask=cmask,
                reward_components=comps,
                component_weights=rewards.weights,
            )
            if tracker is not None:
                ain.values = tracker.value(ro.prompt_index)
            if cfg.kl_in_reward and ref_logp is not None:
                ain.token_kl, ain.kl_coef = (old_logp - ref_logp) * cmask, cfg.beta
            adv, _ = advantage(ain, adv_cfg)
            if adv.dim() == 1:
                adv = adv[:, None] * cmask
            if cfg.seed_alpha:
                scale = A.semantic_entropy_scale(
                    [extract_answer(c) for c in ro.completions], ro.group_ids, cfg.seed_alpha
                )
                adv = adv * scale[:, None]
            keep = torch.ones(len(ro), dtype=torch.bool)
            seq_adv = (adv * cmask).sum(1) / cmask.sum(1).clamp(min=1)
            select_metrics: dict = {}
            if cfg.cppo_keep:  # prune each group to its top-k |A|, refill up to the nominal batch
                fill = A.cppo_fill(seq_adv, ro.group_ids, cfg.cppo_keep, batch_target)
                keep = torch.zeros(len(ro), dtype=torch.bool).index_fill_(0, fill, True)
                select_metrics["select/cppo_extra_prompts"] = float(cppo_extra)
                select_metrics["select/cppo_kept_frac"] = float(len(fill)) / len(ro)
            if cfg.d3s_keep:
                keep &= A.d3s_select(seq_adv, ro.group_ids, cfg.d3s_keep)
            if cfg.forking_top_frac:
                mask = A.high_entropy_mask(ent, mask, cfg.forking_top_frac)
            if d3s_tokens:  # within the kept rollouts, only the top |A| * H tokens carry loss
                ratio = A.d3s_keep_ratio(step, cfg.total_steps, cfg.d3s_token_ratio_start, cfg.d3s_token_ratio_end)
                before = mask * keep[:, None].to(mask.dtype)
                mask = A.d3s_token_mask(adv, ent, before, ratio)
                select_metrics["select/d3s_token_ratio"] = ratio
                select_metrics["select/d3s_token_frac"] = float(mask.sum()) / max(float(before.sum()), 1.0)
            if tracker is not None:  # SPO: per-prompt drift of the policy since the prompt's last visit
                drift = torch.zeros(len(ro))
                rows, last_comps, logp_then = tracker.stored(ro.prompt_index)
                if len(rows):
                    d_ids, d_attn, d_pos, d_mask, d_P = collate(
                        [ro.prompt_ids[i] for i in rows.tolist()], last_comps, tok.pad_token_id, cfg.max_new_tokens
                    )
                    with torch.no_grad():
                        now, _ = token_logp(model, d_ids, d_attn, d_pos, d_P, cfg.temperature)
                    drift[rows] = A.spo_policy_drift(logp_then, now, d_mask)
                tracker.update(ro.prompt_index, raw_total.clamp(0, 1), drift)
                tracker.remember(ro.prompt_index, ro.completion_ids, ro.sampler_logp)
                select_metrics["spo/drift_mean"] = float(drift[rows].mean()) if len(rows) else 0.0
            sel = keep.nonzero().flatten()
            ids, attn, pos, mask, adv = ids[sel], attn[sel], pos[sel], mask[sel], adv[sel]
            old_logp = old_logp[sel] if old_logp is not None else None
            cmask_sel = cmask[sel]
            on_policy_logp = torch.zeros_like(cmask_sel) if on_policy else None
            on_policy_ent = torch.zeros_like(cmask_sel) if on_policy else None
            ref_sel = ref_logp[sel] if ref_logp is not None else None

            # -- optimize: epochs x mini-batches x micro-batches, global aggregation denominators --
            t1 = time.time()
            set_mode(model, train=True)
            B = len(sel)
            stats_acc: dict[str, list[torch.Tensor]] = {}
            const_len = cfg.const_len or cfg.max_new_tokens
            for _epoch in range(cfg.epochs):
                perm = torch.randperm(B)
                for mb in torch.tensor_split(perm, min(cfg.mini_batches, B)):
                    agg = Aggregator.for_batch(cfg.aggregation, mask[mb], const_len)
                    opt.zero_grad(set_to_none=True)
                    for mic in torch.split(mb, cfg.micro_batch_size):
                        logp, ent_new = token_logp(
                            model,
                            ids[mic],
                            attn[mic],
                            pos[mic],
                            P,
                            cfg.temperature,
                            with_entropy=cfg.ent_coef > 0 or on_policy,
                        )
                        if on_policy:
                            on_policy_logp[mic] = logp.detach()
                            on_policy_ent[mic] = ent_new.detach()
                        pb = PolicyBatch(
                            logp,
                            logp.detach() if on_policy else old_logp[mic],
                            adv[mic],
                            mask[mic],
                            logp_ref=None if ref_sel is None else ref_sel[mic],
                        )
                        pl, stats = policy_loss(pb, cfg.loss, agg)
                        loss = pl
                        if ref_sel is not None and not cfg.kl_in_reward:
                            kl = agg(kl_penalty(logp, ref_sel[mic], cfg.kl_estimator), mask[mic])
                            loss = loss + cfg.beta * kl
                            stats["kl_loss"] = kl.detach()
                        if cfg.ent_coef > 0:
                            loss = loss - cfg.ent_coef * agg(ent_new, mask[mic])
                        loss.backward()
                        stats["loss/policy"], stats["loss/total"] = pl.detach(), loss.detach()
                        for k, v in stats.items():
                            stats_acc.setdefault(k, []).append(v)
                    if cfg.max_grad_norm is not None:
                        stats_acc.setdefault("grad_norm", []).append(
                            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                        )
                    opt.step()
            train_time = time.time() - t1
            if on_policy:  # statistics over the trained rows, from the train pass
                old_logp, ent, cmask = on_policy_logp, on_policy_ent, cmask_sel
                mismatch = masked_mean((old_logp - sampler[sel]).abs(), cmask)

            # -- check, log (one host sync), samples, checkpoint --
            if not bool(torch.isfinite(torch.stack(stats_acc["loss/total"])).all()):
                raise NonFiniteLoss(
                    f"non-finite loss at RL step {step}; parameters not saved, last good "
                    f"checkpoint: {ckpt_path}"
                )
            sums = {k: torch.stack(v).float() for k, v in stats_acc.items()}
            m_adv = adv[mask > 0] if (mask > 0).any() else torch.zeros(1)
            metrics = {
                "reward/mean": total.mean(),
                "reward/std": total.std() if len(total) > 1 else torch.tensor(0.0),
                **{f"reward/{n}_mean": comps[:, j].mean() for j, n in enumerate(rewards.names)},
                **{
                    f"reward/{n}_std": comps[:, j].std() if len(comps) > 1 else torch.tensor(0.0)
                    for j, n in enumerate(rewards.names)
                },
                "groups/zero_variance_frac": torch.stack(zero_var).mean(),
                "groups/gen_batches": float(n_gen),
                "adv/mean": m_adv.mean(),
                "adv/std": m_adv.std() if m_adv.numel() > 1 else torch.tensor(0.0),
                "adv/abs_max": m_adv.abs().max(),
                "stats/clip_frac_low": sums["clip_frac_low"].mean() if "clip_frac_low" in sums else 0.0,
                "stats/clip_frac_high": sums["clip_frac_high"].mean() if "clip_frac_high" in sums else 0.0,
                "stats/approx_kl": sums["approx_kl"].mean(),
                "stats/kl_ref": masked_mean(kl_penalty(old_logp, ref_sel, cfg.kl_estimator), mask)
                if ref_sel is not None
                else 0.0,
                "stats/entropy": masked_mean(ent, cmask),
                "stats/logp_mismatch": mismatch,
                "completion/len_mean": lengths.mean(),
                "completion/len_max": lengths.max(),
                "completion/truncation_rate": ro.truncated.float().mean(),
                "perf/gen_tokens_per_s": n_gen_tokens / max(gen_time, 1e-9),
                "perf/train_tokens_per_s": float(mask.sum()) * cfg.epochs / max(train_time, 1e-9),
                "loss/policy": sums["loss/policy"].mean(),
                "loss/total": sums["loss/total"].mean(),
                "train/keep_frac": keep.float().mean(),
                "train/lr": lr,
                "select/train_batch": float(B),
                **select_metrics,
            }
            if "grad_norm" in sums:
                metrics["stats/grad_norm"] = sums["grad_norm"].mean()
            values = logger.log(step, metrics)
            if cfg.log_samples:
                with open(samples_path, "a") as f:
                    for i in range(min(cfg.log_samples, len(ro))):
                        f.write(
                            json.dumps(
                                {
                                    "step": step,
                                    "prompt": task.train[int(ro.prompt_index[i])]["prompt"],
                                    "completion": ro.completions[i],
                                    "reward": float(total[i]),
                                    **{n: float(comps[i, j]) for j, n in enumerate(rewards.names)},
                                }
                            )
                            + "\n"
                        )
            if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.total_steps:
                logger.log(
                    step,
                    {
                        "eval/accuracy": evaluate_model(model, tok, task.test, rewards, acc_idx, **gen_kw)[
                            "accuracy"
                        ]
                    },
                )
            if step % ckpt_every == 0 or step == cfg.total_steps:
                save()
            bar.update(step, reward=values["reward/mean"])

    final = evaluate_model(model, tok, task.test, rewards, acc_idx, k=cfg.eval_k, **gen_kw)
    logger.log(step, {f"eval/{k}": v for k, v in final.items()})
    logger.close()
    save_pretrained(model, tok, run_dir / "model", lora)
    print(f"held-out accuracy after RL: {final['accuracy']:.3f} (before: {acc_before:.3f})", flush=True)
    result = {
        "accuracy_before": acc_before,
        "accuracy_after": final["accuracy"],
        **final,
        "steps": step,
        "train_seconds": round(time.time() - t_start, 2),
    }
    atomic_write_text(run_dir / "eval.json", json.dumps({**result, "step": step}, indent=2))
    return result


def evaluate_run(
    run_dir: str | Path, episodes: int | None = None, video: bool = False, deterministic: bool = True
) -> dict:
    """``policyopt eval RUN_DIR``: greedy held-out accuracy and pass@k of the saved model
    (``episodes`` = number of held-out prompts; ``--stochastic`` (``deterministic=False``): the accuracy
    pass samples at the run's temperature / top_p instead of greedy decoding)."""
    from transformers import AutoModelForCausalLM

    from policyopt import algos
    from policyopt.config import resolve

    info = rundir.read_info(run_dir)
    cfg = resolve(algos.get(info["algo"]).config(), rundir.read_config(run_dir))
    mdir = Path(run_dir) / "model"
    if not (mdir / "config.json").exists():
        raise UserError(
            f"run {str(run_dir)!r} has no saved model yet ({mdir} is missing); train it to the end first"
        )
    torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed + 10_000)
    task = load_task(cfg.task, cfg.dataset, cfg.seed, cfg.eval_size)
    tok = load_tokenizer(str(mdir), None)
    rewards = RewardSet(dict(cfg.rewards) or task.default_rewards, task.scorer)
    acc_idx = rewards.names.index(cfg.accuracy_reward or rewards.names[0])
    model = AutoModelForCausalLM.from_pretrained(str(mdir))
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
    )
    return {**res, "prompts": len(rows), "decoding": "sampled" if not deterministic else "greedy"}


__all__ = ["train", "evaluate_run", "evaluate_model", "LMConfig"]
