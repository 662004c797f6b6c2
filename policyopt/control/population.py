"""Populations of seeds for the on-policy trainer: ``S`` members (the PPO, A2C and REINFORCE presets) in one
process, every kernel launch serving all of them.

Members share the config except their ``seed`` and the per-member hyper-parameters :data:`PER_MEMBER`. What is
batched: the forward passes (one ``baddbmm`` per layer for all members, :mod:`policyopt.control.stacked`), the
environments (one vector env of ``S * num_envs`` sub-envs; member ``k`` owns sub-envs ``k*N .. k*N+N-1``,
seeded as its single run seeds its own; environments with an array form, such as CartPole-v1, step all sub-envs
in a few NumPy operations, bit for bit as Gymnasium steps them: :mod:`policyopt.control.array_envs`), the
advantages (the estimator on ``(T, S*N)`` columns, each column independent), the minibatch gather, the loss and
its hand-written backward, gradient clipping and the optimizer (Adam or RMSprop).

What is per member: the random draws (member ``k``'s ``torch.Generator`` continues exactly the global stream a
single run with seed ``k`` draws from, in the same order: network initialization, action noise, minibatch
permutations), the learning rate, entropy coefficient and clip range, the gradient norm, advantage
normalization, loss aggregation (each member's loss over its own valid steps; the sum over members gives each
member its own gradient), target-KL early stopping (a stopped member takes no further optimizer step: its update
is masked) and the normalizers. Member ``k`` therefore follows its single run with seed ``k`` up to float32
rounding (batched and plain matrix products may round differently).

Lifecycle, run directories and checkpoints are :mod:`policyopt.runs.population`'s: each member's directory is a
single run's, resumable and evaluable as one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageInputs
from policyopt.control import evaluation
from policyopt.control.array_envs import array_vec_env
from policyopt.control.envs import AutoresetTracker, make_vec_env, seeds_for
from policyopt.control.episodes import EpisodeLog
from policyopt.control.kl_control import TRUST_REGIONS
from policyopt.control.normalize import ObsNormalizer
from policyopt.control.onpolicy import _OPTIMIZER_KINDS, FAMILY, OnPolicyConfig, build_agent
from policyopt.control.props import SAMPLERS
from policyopt.control.proximal import ADV_NORMS, PROXIMALS
from policyopt.control.sampling_error import sampling_error
from policyopt.control.stacked import (
    STACKED_OPTIMIZERS,
    StackedActorCritic,
    StackedObsNormalizer,
    StackedRewardNormalizer,
    clip_grad_norms,
)
from policyopt.errors import UserError
from policyopt.losses import value_loss
from policyopt.losses.policy import _clipped_surrogate
from policyopt.optim import make_optimizer
from policyopt.runs.lifecycle import Cadence, PartGroup, Phases
from policyopt.runs.population import MemberRun, PopulationRun, execute_population
from policyopt.schedules import Schedule

# config keys that may differ between members (besides ``seed``)
PER_MEMBER = ("learning_rate", "ent_coef", "loss.clip_eps_low", "loss.clip_eps_high")
PER_MEMBER_KEYS = PER_MEMBER  # the name policyopt.runs.members reads
# key -> the values the batched path supports (anything else: population_unsupported names it)
SUPPORTED = {
    "sampler": ("policy",),
    "proximal": ("behaviour",),
    "trust_region": ("none",),
    "adv_norm": ("minibatch", "batch", "none"),
    "sampling_error": ("off", "cheap", False, True),
    "sampling_error_ref": (False,),
    "init_from": ("",),
    "optimizer": ("adam", "rmsprop"),
    "policy_loss": ("ppo_clip", "pg"),
    "aggregation": ("token-mean",),
    "advantage": ("gae", "mc"),
    "activation": ("tanh", "relu"),
    "device": ("cpu",),
}


def _flat_config(cfg: OnPolicyConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update({f"{f.name}.{k}": x for k, x in _flat_config(v).items()})
        else:
            out[f.name] = v
    return out


def population_unsupported(cfgs: list[OnPolicyConfig]) -> str | None:
    """None when :func:`train_population` can train ``cfgs`` as one population, else a one-line reason naming
    the config key and the supported values."""
    if not cfgs:
        return "a population needs at least one config"
    if not all(isinstance(c, OnPolicyConfig) for c in cfgs):
        return "populations are batched for the on-policy control trainer only (OnPolicyConfig)"
    flats = [_flat_config(c) for c in cfgs]
    for key, ok in SUPPORTED.items():
        bad = [f[key] for f in flats if f[key] not in ok]
        if bad:
            return f"config key {key!r}={bad[0]!r} is not batched; supported: {', '.join(map(str, ok))}"
    for key, value in flats[0].items():
        if key in ("seed", "progress", *PER_MEMBER):
            continue
        others = [f[key] for f in flats[1:] if f[key] != value]
        if others:
            return (
                f"config key {key!r} differs between members ({value!r} vs {others[0]!r}); members may differ only in "
                f"seed, {', '.join(PER_MEMBER)}"
            )
    return None


def _stack(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


class PopulationTrainer(Phases):
    """The on-policy phases for ``S`` members at once (one iteration = one rollout of every member)."""

    name = "rollouts"

    def __init__(self, cfgs: list[OnPolicyConfig], pop: PopulationRun):
        cfg = self.cfg = cfgs[0]
        self.cfgs, self.S, self.N, self.T = cfgs, len(cfgs), cfg.num_envs, cfg.n_steps
        self.envs = (
            array_vec_env(cfg.env_id, self.S * self.N, cfg.env_kwargs) if cfg.vectorization == "sync" else None
        ) or make_vec_env(cfg.env_id, self.S * self.N, cfg.seed, cfg.vectorization, cfg.env_kwargs)
        space, act_space = self.envs.single_observation_space, self.envs.single_action_space
        agents = []
        for m, c in zip(pop.members, cfgs):
            with m.global_rng():  # the single run's first draws: network initialization
                agents.append(build_agent(c, space, act_space))
        self.agent = StackedActorCritic(agents)
        self.dist = self.agent.dist
        templates = [
            make_optimizer(_OPTIMIZER_KINDS[c.optimizer], a.parameters(), c.learning_rate, eps=c.adam_eps)
            for a, c in zip(agents, cfgs)
        ]
        self.optimizer = STACKED_OPTIMIZERS[cfg.optimizer](self.agent, templates)
        self.obs_dim = int(space.shape[0])
        self.obs_norm = StackedObsNormalizer(self.S, (self.obs_dim,), cfg.norm_obs, cfg.clip_obs)
        self.rew_norm = StackedRewardNormalizer(self.S, self.N, cfg.gamma, cfg.norm_reward, cfg.clip_reward)
        self.advantage = ADVANTAGES.get(cfg.advantage)
        self.adv_cfg = AdvantageConfig(gamma=cfg.gamma, gae_lambda=cfg.gae_lambda)
        self.batch_size = self.T * self.N
        self.iterations = -(-cfg.total_steps // self.batch_size)
        self.cadence = Cadence(
            log=Cadence.every(cfg.log_every, self.batch_size, ceil=True),
            evaluate=Cadence.every(cfg.eval_every, self.batch_size),
            checkpoint=Cadence.every(cfg.checkpoint_every, self.batch_size),
        )
        self.lrs = [Schedule(c.lr_schedule, c.learning_rate, self.iterations) for c in cfgs]
        self.clip = Schedule(cfg.clip_schedule, 1.0, self.iterations)
        self.ent_coef = _stack([c.ent_coef for c in cfgs])
        self.cheap_error = cfg.sampling_error in ("cheap", True)
        pop.track("model", self.agent)
        pop.track("optimizer", self.optimizer)
        pop.track("obs_norm", self.obs_norm)
        pop.track("rew_norm", self.rew_norm)
        pop.track_each("boxes", [self._boxes(c, a) for c, a in zip(cfgs, agents)])
        self.episodes = []
        for m in pop.members:
            m.counters.update(global_step=0, env_epoch=0)
            self.episodes.append(EpisodeLog(m))
        self.tracker = AutoresetTracker(self.S * self.N)
        self._alloc(act_space.shape)

    @staticmethod
    def _boxes(cfg: OnPolicyConfig, agent) -> PartGroup:
        """The single run's (stateless, for the supported subset) boxes, saved as its checkpoint saves them."""
        return PartGroup(
            {
                "sampler": SAMPLERS.get(cfg.sampler)(cfg, agent, agent.dist),
                "proximal": PROXIMALS.get(cfg.proximal)(cfg, agent),
                "trust_region": TRUST_REGIONS.get(cfg.trust_region)(cfg, 1),
                "adv_norm": ADV_NORMS.get(cfg.adv_norm)(cfg),
            }
        )

    def _alloc(self, act_shape: tuple) -> None:
        T, S, N = self.T, self.S, self.N
        n_params = self.agent.dist_params(torch.zeros((S, 1, self.obs_dim))).shape[-1]
        z = {}
        self.ro = dict(
            obs=torch.zeros((T, S, N, self.obs_dim), **z),
            act=torch.zeros((T, S, N, *act_shape), **z),
            rew=torch.zeros((T, S, N)),
            term=torch.zeros((T, S, N)),
            trunc=torch.zeros((T, S, N)),
            valid=torch.zeros((T, S, N)),
            params=torch.zeros((T, S, N, n_params)),
            logp=torch.zeros((T, S, N)),
            values=torch.zeros((T + 1, S, N)),
        )

    def step(self, iteration: int) -> int:
        return iteration * self.batch_size

    # ---- environments ----------------------------------------------------------------------------------
    def begin(self, pop: PopulationRun) -> None:
        for m, ep in zip(pop.members, self.episodes):
            ep.begin(m)
        self.obs = self._begin_env_epoch(pop)

    def _begin_env_epoch(self, pop: PopulationRun) -> Tensor:
        """(Re-)seed and reset every member's sub-envs with its single run's seeds."""
        seeds = [s for m, c in zip(pop.members, self.cfgs) for s in seeds_for(c.seed, self.N, m.counters["env_epoch"])]
        raw, _ = self.envs.reset(seed=seeds)
        self.tracker.reset()
        self.rew_norm.reset_episodes()
        return self.obs_norm(self._obs(raw), update=True)

    def _obs(self, raw: np.ndarray) -> Tensor:
        return torch.as_tensor(raw, dtype=torch.float32).view(self.S, self.N, self.obs_dim)

    def before_checkpoint(self, pop: PopulationRun) -> None:
        for m, ep in zip(pop.members, self.episodes):
            m.counters["env_epoch"] += 1
            ep.save(m)

    def after_checkpoint(self, pop: PopulationRun) -> None:
        self.obs = self._begin_env_epoch(pop)

    def end(self, pop: PopulationRun) -> None:
        self.envs.close()

    # ---- collect ---------------------------------------------------------------------------------------
    def _sample(self, pop: PopulationRun, params: Tensor) -> Tensor:
        """One action per sub-env; member ``k``'s noise from its own generator, in its single run's order."""
        gens = [m.generator for m in pop.members]
        if hasattr(self.dist, "n"):
            from policyopt.sampling import race_noise

            noise = torch.stack([race_noise(params.shape[1:], params.dtype, g) for g in gens])
            return torch.argmax(params - noise, -1)
        mean, log_std = self.dist.split(params)
        noise = torch.stack([torch.randn(mean.shape[1:], generator=g, dtype=mean.dtype) for g in gens])
        return mean + log_std.exp() * noise

    @torch.no_grad()
    def collect(self, pop: PopulationRun) -> dict:
        it, ro, dist, S, N = pop.iteration, self.ro, self.dist, self.S, self.N
        lrs = [s(it) for s in self.lrs]
        self.lr = torch.tensor(lrs, dtype=torch.float64)
        for opt, lr in zip(self.optimizer.templates, lrs):  # what each member's checkpoint records
            opt.param_groups[0]["lr"] = lr
        scale = self.clip(it)
        self.clip_lo = _stack([c.loss.clip_eps_low * scale for c in self.cfgs])[:, None]
        self.clip_hi = _stack([c.loss.eps_high * scale for c in self.cfgs])[:, None]
        self.vf_clip = None if self.cfg.vf_clip is None else self.cfg.vf_clip * scale
        obs = self.obs
        for t in range(self.T):
            params, value = self.agent(obs)
            action = self._sample(pop, params)
            ro["obs"][t], ro["act"][t], ro["params"][t], ro["values"][t] = obs, action, params, value
            ro["logp"][t] = dist.log_prob(params, action)
            env_action = dist.to_env(action).reshape(S * N, *action.shape[2:])
            raw, reward, terminated, truncated, _ = self.envs.step(env_action.numpy())
            ended = (terminated | truncated) & ~self.tracker.pending
            valid, finished = self.tracker.step(reward, terminated, truncated)
            for i, ep in zip(np.flatnonzero(ended), finished):
                self.episodes[i // N].add([ep])
            valid_t = torch.from_numpy(valid).view(S, N)
            done = torch.from_numpy(terminated | truncated).view(S, N)
            r = self.rew_norm(torch.as_tensor(reward, dtype=torch.float32).view(S, N), done, valid_t)
            ro["rew"][t] = r * valid_t
            ro["term"][t] = torch.from_numpy(terminated).view(S, N)
            ro["trunc"][t] = torch.from_numpy(truncated).view(S, N)
            ro["valid"][t] = valid_t
            obs = self.obs_norm(self._obs(raw), update=True)
        ro["values"][self.T] = self.agent.value(obs)
        self.obs = obs
        for m in pop.members:
            m.counters["global_step"] += self.batch_size
        return ro

    # ---- update ----------------------------------------------------------------------------------------
    def _batch(self, ro: dict) -> dict[str, Tensor]:
        """Advantages on the ``(T, S*N)`` columns, then each member's rollout flattened as its single run does:
        ``(S, T*N, ...)``, sample ``t*N + n``."""
        T, S, N = self.T, self.S, self.N

        def cols(x):
            return x.reshape(x.shape[0], S * N)

        adv, ret = self.advantage(
            AdvantageInputs(
                rewards=cols(ro["rew"]),
                values=cols(ro["values"][:-1]),
                next_values=cols(ro["values"][1:]),
                terminated=cols(ro["term"]),
                truncated=cols(ro["trunc"]),
                valid=cols(ro["valid"]),
            ),
            self.adv_cfg,
        )

        def member_major(x):
            x = x.reshape(T, S, N, *x.shape[3:]) if x.dim() >= 3 else x.reshape(T, S, N)
            return x.transpose(0, 1).reshape(S, T * N, *x.shape[3:])

        fb = {k: member_major(ro[k]) for k in ("obs", "act", "logp", "params", "valid")}
        fb.update(adv=member_major(adv), ret=member_major(ret), val=member_major(ro["values"][:-1]))
        if self.cfg.adv_norm == "batch":
            fb["adv"] = whiten_rows(fb["adv"], fb["valid"])
        return fb

    def update(self, pop: PopulationRun, ro: dict) -> dict[str, Tensor]:
        """``epochs`` passes of minibatch steps for every member; a member stops (takes no more steps) once
        its approximate KL passes ``target_kl``."""
        cfg = self.cfg
        fb = self.batch = self._batch(ro)
        n, mb = self.batch_size, cfg.minibatch_size
        if self.cheap_error:
            pop.accumulate(self._sampling_error(fb))
        active = pop.active.clone()
        for _epoch in range(cfg.epochs):
            perm = None
            if n > mb:  # only members still training draw their permutation (as their single runs do)
                perm = torch.stack(
                    [
                        torch.randperm(n, generator=m.generator) if a else torch.arange(n)
                        for m, a in zip(pop.members, active.tolist())
                    ]
                )
            for start in range(0, n, mb):
                idx = None if perm is None else perm[:, start : start + mb]
                stats = self.minibatch_step(_gather(fb, idx), active)
                pop.accumulate(stats, members=active.clone())
            if cfg.target_kl is not None:
                active &= ~(stats["approx_kl"] > cfg.target_kl)
                if not active.any():
                    break
        return {}

    def _sampling_error(self, fb: dict[str, Tensor]) -> dict[str, Tensor]:
        values = [sampling_error(self.dist, fb["params"][k], fb["act"][k], fb["valid"][k]) for k in range(self.S)]
        return {"diag/sampling_error": torch.stack([torch.as_tensor(v).reshape(()) for v in values])}

    def minibatch_step(self, mb: dict[str, Tensor], active: Tensor) -> dict[str, Tensor]:
        """One gradient step of every active member: per member policy loss + ``vf_coef`` value loss -
        ``ent_coef`` entropy, each a mean over the member's valid steps; the members' sum is differentiated."""
        cfg, dist, agent = self.cfg, self.dist, self.agent
        params_new, v_new = agent(mb["obs"])
        mask = mb["valid"]
        adv = whiten_rows(mb["adv"], mask) if cfg.adv_norm == "minibatch" else mb["adv"]
        n_valid = mask.sum(-1).clamp(min=1)

        def agg(x):
            return (x * mask).sum(-1) / n_valid

        logp = dist.log_prob(params_new, mb["act"])
        log_ratio = logp - mb["logp"]
        if cfg.policy_loss == "ppo_clip":
            ratio = log_ratio.exp()
            pl = agg(_clipped_surrogate(ratio, adv, 1 - self.clip_lo, 1 + self.clip_hi))
        else:
            pl = agg(-adv * logp)
        vl = agg(value_loss(v_new, mb["ret"], mb["val"], self.vf_clip))
        with torch.set_grad_enabled(bool((self.ent_coef > 0).any())):
            ent = agg(dist.entropy(params_new))
        loss = pl + cfg.vf_coef * vl - self.ent_coef * ent
        for p in agent.params:
            p.grad = None
        loss.sum().backward()
        stats = _ratio_stats(log_ratio.detach(), adv, mask, cfg.policy_loss == "ppo_clip", self.clip_lo, self.clip_hi)
        if cfg.max_grad_norm is not None:
            stats["grad_norm"] = clip_grad_norms(agent.params, cfg.max_grad_norm)
        self.optimizer.step(self.lr, active)
        stats.update(
            {
                "loss/policy": pl.detach(),
                "loss/value": vl.detach(),
                "loss/entropy": ent.detach(),
                "loss/total": loss.detach(),
            }
        )
        return stats

    # ---- log and evaluate ------------------------------------------------------------------------------
    def log_metrics(self, pop: PopulationRun) -> list[dict[str, Any]]:
        fb, it = self.batch, pop.iteration
        value_mean, adv_mean, adv_std = fb["val"].mean(1), fb["adv"].mean(1), fb["adv"].std(1)
        out = []
        for k, (m, c) in enumerate(zip(pop.members, self.cfgs)):
            metrics: dict[str, Any] = {
                "train/lr": self.lrs[k](it),
                "train/clip_eps": c.loss.clip_eps_low * self.clip(it),
                "stats/value_mean": value_mean[k],
                "stats/adv_mean": adv_mean[k],
                "stats/adv_std": adv_std[k],
            }
            metrics.update(self.episodes[k].metrics(m))
            out.append(metrics)
        return out

    def progress_info(self, pop: PopulationRun) -> dict[str, Any]:
        rets = [ep.recent_return() for ep, m in zip(self.episodes, pop.members) if m.failed is None]
        rets = [r for r in rets if r is not None]
        return {"ret": float(np.mean(rets)) if rets else None}

    def evaluate(self, pop: PopulationRun, final: bool) -> list[dict[str, Any]]:
        return [{} if m.failed else self._evaluate_member(k) for k, m in enumerate(pop.members)]

    @torch.no_grad()
    def _evaluate_member(self, k: int) -> dict[str, Any]:
        """Member ``k`` evaluated exactly as its single run evaluates (its own agent and frozen normalizer)."""
        c, agent = self.cfgs[k], self.agent.member_agent(k).eval()
        norm = ObsNormalizer((self.obs_dim,), c.norm_obs, c.clip_obs)
        norm.load_state_dict(self.obs_norm.member_state_dict(k))
        dist = agent.dist

        def act(raw_obs: Tensor) -> Tensor:
            return dist.to_env(dist.mode(agent.dist_params(norm(raw_obs))))

        return evaluation.evaluate(act, c.env_id, c.eval_episodes, c.seed, env_kwargs=c.env_kwargs)

    def result(self, pop: PopulationRun, finals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {}
            if m.failed
            else {
                "eval_return_mean": f["return_mean"],
                "eval_return_std": f["return_std"],
                "steps": m.counters["global_step"],
                "train_seconds": round(ep.seconds(), 3),
            }
            for m, f, ep in zip(pop.members, finals, self.episodes)
        ]


def whiten_rows(x: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """:func:`policyopt.advantages.functional.whiten` of each row of ``x (S, B)`` over its masked elements:
    ``(x - mean) / (std + eps)`` with the unbiased std; masked-out elements come back as 0."""
    m = mask.to(x.dtype)
    n = m.sum(-1, keepdim=True)
    mean = (x * m).sum(-1, keepdim=True) / n.clamp(min=1)
    var = (((x - mean) ** 2) * m).sum(-1, keepdim=True) / (n - 1).clamp(min=1)
    return (x - mean) / (var.sqrt() + eps) * m


@torch.no_grad()
def _ratio_stats(log_ratio: Tensor, adv: Tensor, mask: Tensor, clipped: bool, lo: Tensor, hi: Tensor) -> dict:
    """Per member (rows): approximate KL(pi_old || pi) (k3 form), ratio mean and max, and for the clipped loss
    the clip fractions, as :func:`policyopt.losses.policy.ratio_stats` and ``clip_stats`` compute them."""
    ratio = log_ratio.exp()
    n = mask.sum(-1).clamp(min=1)
    feats = [ratio - 1 - log_ratio, ratio]
    if clipped:
        feats += [((ratio < 1 - lo) & (adv < 0)).float(), ((ratio > 1 + hi) & (adv > 0)).float()]
    means = (torch.stack(feats) * mask).sum(-1) / n
    out = {
        "approx_kl": means[0],
        "ratio_mean": means[1],
        "ratio_max": torch.where(mask > 0, ratio, -torch.inf).amax(-1),
    }
    if clipped:
        out.update(clip_frac_low=means[2], clip_frac_high=means[3], clip_frac=means[2] + means[3])
    return out


def _gather(fb: dict[str, Tensor], idx: Tensor | None) -> dict[str, Tensor]:
    """Member ``k``'s samples ``idx[k]`` of every ``(S, n, ...)`` tensor (one ``index_select`` each)."""
    if idx is None:
        return fb
    S, n = fb["adv"].shape
    flat_idx = (idx + torch.arange(S)[:, None] * n).reshape(-1)
    return {
        k: v.reshape(S * n, *v.shape[2:]).index_select(0, flat_idx).view(S, idx.shape[1], *v.shape[2:])
        for k, v in fb.items()
    }


def train_population(
    cfgs: list[OnPolicyConfig], run_dirs: list[Path], resume: bool = False, **run_info: Any
) -> list[dict]:
    """Train (or resume) ``len(cfgs)`` on-policy runs as one population, member ``k`` in ``run_dirs[k]``; returns
    one result per member, as :func:`policyopt.control.onpolicy.train` returns it."""
    reason = population_unsupported(cfgs)
    if reason:
        raise UserError(reason)
    for c in cfgs:
        c.validate()
    return execute_population(FAMILY, cfgs, run_dirs, resume, lambda pop: [PopulationTrainer(cfgs, pop)], info=run_info)


__all__ = ["PER_MEMBER", "PER_MEMBER_KEYS", "MemberRun", "population_unsupported", "train_population"]
