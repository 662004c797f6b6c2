"""Populations of seeds for the off-policy trainer: ``S`` members of one SAC/TD3/FastTD3 configuration trained in
lockstep in one process, every network, optimizer and replay buffer stacked along a leading member axis.

What is batched: the actors, critic ensembles and their targets are :class:`StackedMLP` s whose layers are
``(S, E, d_in, d_out)`` tensors run as one ``baddbmm`` over ``S * E`` matrices (the single run's
:class:`~policyopt.control.networks.EnsembleMLP` does the same over ``E``); Adam (:class:`StackedAdam`) and the
Polyak averages are elementwise over the stacked tensors; the replay buffers are one
:class:`~policyopt.control.replay.ReplayBuffer` over ``S * N`` sub-env columns; the environments are one
Gymnasium vector env of ``S * N`` sub-envs. A loss is summed over the members before the one backward pass, so
member ``k``'s gradient is the gradient of its own loss; every registered loss is evaluated per member on its
slice (the same shapes as in a single run).

What is per member: the seed, the declared hyper-parameters (:data:`PER_MEMBER`), the random generator
(:class:`~policyopt.runs.population.MemberRun`'s, which continues the single run's global torch stream; every
draw is made per member in the single run's order), the replay indices, the temperature, the exploration
noise, the observation normalizer, the gradient-norm clip, the run directory, its metrics and its checkpoint
(in the single-run format: member ``k``'s directory is an ordinary run that ``policyopt eval`` and
``--resume`` accept). Member ``k`` reproduces the single run with seed ``k`` up to float rounding of the
batched matmuls (the single actor runs ``addmm``, the stacked one ``baddbmm``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from policyopt.control import evaluation
from policyopt.control.envs import AutoresetTracker, make_vec_env, seeds_for
from policyopt.control.episodes import EpisodeLog
from policyopt.control.networks import CRITICS, LOG_STD_MAX, LOG_STD_MIN
from policyopt.control.normalize import ObsNormalizer
from policyopt.control.offpolicy import (
    FAMILY,
    ExplorationNoise,
    Learner,
    OffPolicyConfig,
    _action_scaler,
    _spaces_check,
)
from policyopt.control.replay import Batch, ReplayBuffer
from policyopt.errors import UserError
from policyopt.losses import actor_critic as L
from policyopt.losses.actor_critic import ACTOR_LOSSES, CRITIC_LOSSES, ActorBatch, CriticBatch
from policyopt.runs.lifecycle import Cadence, Phases
from policyopt.runs.population import PopulationRun, execute_population

PER_MEMBER = ("seed", "actor_lr", "critic_lr", "alpha_lr", "alpha_init", "target_entropy")
"""Config keys that may differ between the members; every other key must be equal."""
SUPPORTED = {
    "actor_loss": ("sac", "deterministic", "deterministic_min"),  # mdpo_off's old actor is not stacked
    "device": ("cpu",),  # member generators are CPU generators, as the single run's global one
}
_ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "elu": torch.nn.functional.elu,
    "silu": torch.nn.functional.silu,
}


def population_unsupported(cfgs: Sequence[OffPolicyConfig]) -> str | None:
    """None if ``cfgs`` can train as one population, else a one-line reason naming the key."""
    if not cfgs:
        return "a population needs at least one member config"
    for key, values in SUPPORTED.items():
        bad = [getattr(c, key) for c in cfgs if getattr(c, key) not in values]
        if bad:
            return f"config key {key!r}={bad[0]!r} is not supported in a population; supported: {', '.join(values)}"
    first = cfgs[0]
    for f in fields(OffPolicyConfig):
        if f.name in PER_MEMBER:
            continue
        for c in cfgs[1:]:
            if getattr(c, f.name) != getattr(first, f.name):
                return (
                    f"config key {f.name!r} differs between members ({getattr(first, f.name)!r} vs "
                    f"{getattr(c, f.name)!r}); only {', '.join(PER_MEMBER)} may differ"
                )
    return None


@torch.no_grad()
def clip_grad_norm_members(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """:func:`policyopt.optim.clip_grad_norm` for each member of stacked parameters (leading axis ``S``): member
    ``k``'s gradients ``g_i[k]`` are scaled by ``min(1, max_norm / (||(||g_1[k]||, ..., ||g_n[k]||)|| + 1e-6))``.
    Returns the ``(S,)`` norms before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    S = grads[0].shape[0]
    norms = torch.linalg.vector_norm(torch.stack([g.reshape(S, -1).norm(dim=1) for g in grads]), dim=0)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(S, *([1] * (g.dim() - 1))))
    return norms


# ---- stacked parts -------------------------------------------------------------------------------------
def _linear_view(t: Tensor, k: int, is_weight: bool) -> Tensor:
    """Member ``k``'s ``nn.Linear`` tensor in a stacked ``(S, 1, d_in, d_out)`` weight / ``(S, 1, 1, d_out)`` bias."""
    return t[k, 0].t() if is_weight else t[k, 0, 0]


def _ensemble_view(t: Tensor, k: int, is_weight: bool) -> Tensor:
    """Member ``k``'s ``EnsembleMLP`` tensor (``(E, d_in, d_out)`` / ``(E, 1, d_out)``) in a stacked one."""
    return t[k]


THIN = 8  # layers with at most this many outputs (Q-values, actions) run transposed (see _ThinLayer)


class _ThinLayer(torch.autograd.Function):
    """``bias + h @ w`` for stacks ``h (G, B, d_in)``, ``w (G, d_in, d_out)`` with few output columns, computed as
    ``(bias^T + w^T h^T)^T`` with the backward transposed alike (``dw = (g^T h)^T``, ``dh = (w g^T)^T``, an outer
    product for one column): the same sums in the orientation that this CPU build's batched product runs at its
    arithmetic rate (the direct product with one to a few columns is several times slower)."""

    @staticmethod
    def forward(ctx, bias: Tensor, h: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(h, w)
        return torch.baddbmm(bias.transpose(1, 2), w.transpose(1, 2), h.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def backward(ctx, g: Tensor):
        h, w = ctx.saved_tensors
        gb = g.sum(1, keepdim=True) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), h).transpose(1, 2) if ctx.needs_input_grad[2] else None
        gh = None
        if ctx.needs_input_grad[1]:
            gh = g * w.transpose(1, 2) if w.shape[-1] == 1 else torch.bmm(w, g.transpose(1, 2)).transpose(1, 2)
        return gb, gh, gw


class StackedMLP:
    """``S`` members of ``E`` MLPs each, made from ``S`` single-run modules (``templates``: actors, whose
    ``nn.Linear`` layers are stacked, or critic :class:`~policyopt.control.networks.EnsembleMLP`); layer ``i`` is a leaf
    ``(S, E, d_in, d_out)`` weight and ``(S, E, 1, d_out)`` bias, run as one ``baddbmm`` over ``S * E``.
    ``member_state_dict(k)`` is template ``k``'s ``state_dict`` holding member ``k``'s values."""

    def __init__(self, templates: Sequence[torch.nn.Module], activation: str, requires_grad: bool = True):
        self.templates, self.act = list(templates), _ACTIVATIONS[activation]
        self.ensemble = hasattr(templates[0], "weights")
        self.view = _ensemble_view if self.ensemble else _linear_view
        self.pairs = [self._tensors(t) for t in self.templates]  # per member: [(weight, bias), ...]
        self.w, self.b = [], []
        for i in range(len(self.pairs[0])):
            w = torch.stack([p[i][0].detach() if self.ensemble else p[i][0].detach().t()[None] for p in self.pairs])
            b = torch.stack([p[i][1].detach() if self.ensemble else p[i][1].detach()[None, None] for p in self.pairs])
            self.w.append(w.contiguous().requires_grad_(requires_grad))
            self.b.append(b.contiguous().requires_grad_(requires_grad))
        self.S = len(self.templates)

    def _tensors(self, m: torch.nn.Module) -> list[tuple[Tensor, Tensor]]:
        if self.ensemble:
            return list(zip(m.weights, m.biases))
        return [(lin.weight, lin.bias) for lin in m.modules() if isinstance(lin, torch.nn.Linear)]

    def parameters(self) -> list[Tensor]:
        return [t for pair in zip(self.w, self.b) for t in pair]

    def template_map(self, k: int) -> dict[int, tuple[Tensor, bool]]:
        """``id(template tensor) -> (stacked tensor, is_weight)`` for member ``k``."""
        return {
            id(t): (s, is_w)
            for (tw, tb), sw, sb in zip(self.pairs[k], self.w, self.b)
            for t, s, is_w in ((tw, sw, True), (tb, sb, False))
        }

    def __call__(self, x: Tensor, detach: bool = False, members: slice | None = None) -> Tensor:
        """``x``: ``(S, B, d)`` (shared by a member's ``E`` networks) or ``(S, E, B, d)``; returns ``(S, E, B, out)``.
        ``detach``: no gradient to the parameters; ``members``: a subset of each member's ensemble."""
        S, n, h = self.S, len(self.w), x
        for i in range(n):
            w, b = self.w[i], self.b[i]
            if members is not None:
                w, b = w[:, members], b[:, members]
            if detach:
                w, b = w.detach(), b.detach()
            E = w.shape[1]
            if h.dim() == 3:
                h = h.unsqueeze(1).expand(S, E, *h.shape[1:])
            B = h.shape[2]
            args = (b.reshape(S * E, 1, -1), h.reshape(S * E, B, -1), w.reshape(S * E, *w.shape[2:]))
            h = (_ThinLayer.apply(*args) if w.shape[-1] <= THIN else torch.baddbmm(*args)).reshape(S, E, B, -1)
            if i < n - 1:
                h = self.act(h)
        return h

    @torch.no_grad()
    def put(self, k: int) -> torch.nn.Module:
        """Copy member ``k``'s values into its template module and return it."""
        for (tw, tb), sw, sb in zip(self.pairs[k], self.w, self.b):
            tw.copy_(self.view(sw, k, True))
            tb.copy_(self.view(sb, k, False))
        return self.templates[k]

    @torch.no_grad()
    def take(self, k: int) -> None:
        """Copy template ``k``'s values into member ``k``."""
        for (tw, tb), sw, sb in zip(self.pairs[k], self.w, self.b):
            self.view(sw, k, True).copy_(tw)
            self.view(sb, k, False).copy_(tb)

    def member_state_dict(self, k: int) -> dict:
        return {n: v.clone() for n, v in self.put(k).state_dict().items()}

    def load_member_state_dict(self, k: int, state: dict) -> None:
        self.templates[k].load_state_dict(state)
        self.take(k)


class StackedAdam:
    """Adam (or AdamW) over stacked parameters with per-member learning rates: the fused kernel of the single
    run's optimizer, once over the whole stacked tensors when every member has the same learning rate, else
    once per member on its slices (members step in lockstep, so their step counts are equal). Its member state
    is the single-run optimizer's ``state_dict`` (``templates[k]`` is member ``k``'s single-run optimizer,
    ``maps[k]`` maps its parameters to ``(stacked tensor, is_weight)``, ``view`` selects a member's slice)."""

    def __init__(self, params: list[Tensor], templates: list, maps: list[dict], view: Callable):
        self.params, self.templates, self.maps, self.view = params, templates, maps, view
        group = templates[0].param_groups[0]
        self.lrs = [float(t.param_groups[0]["lr"]) for t in templates]
        self.beta1, self.beta2 = group["betas"]
        self.eps, self.weight_decay = group["eps"], group["weight_decay"]
        self.kernel = torch._fused_adamw_ if isinstance(templates[0], torch.optim.AdamW) else torch._fused_adam_
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.steps = [torch.tensor(0.0) for _ in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        torch._foreach_add_(self.steps, 1)
        kw = dict(amsgrad=False, beta1=self.beta1, beta2=self.beta2, weight_decay=self.weight_decay)
        kw.update(eps=self.eps, maximize=False)
        if len(set(self.lrs)) == 1:
            grads = [p.grad for p in self.params]
            self.kernel(self.params, grads, self.exp_avg, self.exp_avg_sq, [], self.steps, lr=self.lrs[0], **kw)
            return
        for k, lr in enumerate(self.lrs):
            sl = [[t[k] for t in ts] for ts in (self.params, [p.grad for p in self.params])]
            m, v = [t[k] for t in self.exp_avg], [t[k] for t in self.exp_avg_sq]
            self.kernel(sl[0], sl[1], m, v, [], self.steps, lr=lr, **kw)

    def member_state_dict(self, k: int) -> dict:
        opt = self.templates[k]
        opt.state.clear()
        if self.steps[0].item() > 0:
            index = {id(p): j for j, p in enumerate(self.params)}
            for p in opt.param_groups[0]["params"]:
                stacked, is_w = self.maps[k][id(p)]
                j = index[id(stacked)]
                opt.state[p] = {
                    "step": self.steps[j].clone(),
                    "exp_avg": self.view(self.exp_avg[j], k, is_w).clone(),
                    "exp_avg_sq": self.view(self.exp_avg_sq[j], k, is_w).clone(),
                }
        return opt.state_dict()

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state: dict) -> None:
        opt = self.templates[k]
        opt.load_state_dict(state)
        index = {id(p): j for j, p in enumerate(self.params)}
        for p in opt.param_groups[0]["params"]:
            s = opt.state.get(p)
            stacked, is_w = self.maps[k][id(p)]
            j = index[id(stacked)]
            self.view(self.exp_avg[j], k, is_w).copy_(s["exp_avg"] if s else 0.0)
            self.view(self.exp_avg_sq[j], k, is_w).copy_(s["exp_avg_sq"] if s else 0.0)
            self.steps[j].fill_(float(s["step"]) if s else 0.0)


class StackedTemperature:
    """The members' SAC temperatures ``alpha_k = exp(log_alpha[k])`` (learned, or fixed), from the members'
    single-run :class:`~policyopt.control.offpolicy.Temperature` s, whose state format it keeps."""

    def __init__(self, temps: list):
        self.temps, self.learn = temps, temps[0].learn
        self.log_alpha = torch.stack([t.log_alpha.detach() for t in temps]).requires_grad_(self.learn)
        self.target_entropy = [t.target_entropy for t in temps]
        if self.learn:
            maps = [{id(t.log_alpha): (self.log_alpha, False)} for t in temps]
            self.opt = StackedAdam([self.log_alpha], [t.opt for t in temps], maps, lambda t, k, w: t[k])

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    def update(self, logp: Tensor) -> None:
        """One step on every member's :func:`~policyopt.losses.actor_critic.temperature_loss` (``logp``: ``(S, B)``)."""
        if not self.learn:
            return
        losses = [
            L.temperature_loss(la, lp, h) for la, lp, h in zip(self.log_alpha.unbind(0), logp, self.target_entropy)
        ]
        self.opt.zero_grad()
        torch.stack(losses).sum().backward()
        self.opt.step()

    def member_state_dict(self, k: int) -> dict:
        state = {"log_alpha": self.log_alpha[k].detach().clone()}
        return {**state, "opt": self.opt.member_state_dict(k)} if self.learn else state

    def load_member_state_dict(self, k: int, state: dict) -> None:
        with torch.no_grad():
            self.log_alpha[k] = state["log_alpha"]
        if self.learn:
            self.opt.load_member_state_dict(k, state["opt"])


class PopulationReplay:
    """The members' replay buffers as one :class:`~policyopt.control.replay.ReplayBuffer` over ``S * N``
    sub-env columns (member ``k``'s sub-env ``i`` is column ``k * N + i``): rows, positions and n-step returns
    are those of ``S`` single buffers. Member ``k``'s flat index ``row * N + i`` (what its single run's
    ``randint`` draws) is ``row * S * N + k * N + i`` here."""

    def __init__(self, cfg: OffPolicyConfig, S: int, obs_dim: int, act_dim: int, device):
        self.S, self.N = S, cfg.num_envs
        self.buffer = ReplayBuffer(
            cfg.buffer_size * S, S * cfg.num_envs, obs_dim, act_dim, cfg.n_step, cfg.gamma, device
        )

    def member_len(self) -> int:
        return len(self.buffer) // self.S

    def sample(self, batch_size: int, gens: Sequence[torch.Generator]) -> Batch:
        """Each member's uniform sample (one ``randint`` from its generator); fields are ``(S, B, ...)``."""
        n = self.member_len()
        idx = torch.stack([torch.randint(n, (batch_size,), generator=g) for g in gens])
        member = torch.arange(self.S).unsqueeze(1)
        flat = (idx // self.N) * (self.S * self.N) + member * self.N + idx % self.N
        b = self.buffer.gather(flat.reshape(-1))
        return Batch(*(t.view(self.S, batch_size, *t.shape[1:]) for t in vars(b).values()))

    def _member(self, t: Tensor, k: int, rows: int) -> Tensor:
        return t[: rows * self.S * self.N].view(rows, self.S, self.N, *t.shape[1:])[:, k]

    def member_state_dict(self, k: int) -> dict:
        buf, rows = self.buffer, self.member_len() // self.N
        state = {
            key: self._member(getattr(buf, key), k, rows).reshape(rows * self.N, *getattr(buf, key).shape[1:])
            for key in buf._KEYS
        }
        return {**state, "pos": buf.pos, "full": buf.full}

    def load_member_state_dict(self, k: int, state: dict) -> None:
        buf = self.buffer
        rows = state["obs"].shape[0] // self.N
        for key in buf._KEYS:
            self._member(getattr(buf, key), k, rows).copy_(state[key].view(rows, self.N, *state[key].shape[1:]))
        buf.pos, buf.full = int(state["pos"]), bool(state["full"])


def _randn(gens: Sequence[torch.Generator], shape: tuple[int, ...]) -> Tensor:
    """One standard-normal ``shape`` draw from each member's generator, stacked: ``(S, *shape)``."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


def _normalize(norms: Sequence[ObsNormalizer], x: Tensor) -> Tensor:
    """Each member's observation normalizer on its slice of ``x`` (``(S, ...)``)."""
    if not norms[0].enabled:
        return x
    return torch.stack([n(xk) for n, xk in zip(norms, x)])


def _per_member(loss_fn: Callable, inputs: list[tuple]) -> tuple[Tensor, dict[str, Tensor]]:
    """A registered loss on each member's inputs; returns the sum of the members' losses (what one backward
    pass takes) and the ``(S,)`` stacked losses and statistics."""
    results = [loss_fn(*args) for args in inputs]
    losses = torch.stack([loss for loss, _ in results])
    stats = {k: torch.stack([st[k] for _, st in results]) for k in results[0][1]}
    return losses.sum(), {"loss": losses.detach(), **stats}


class PopulationLearner:
    """The members' :class:`~policyopt.control.offpolicy.Learner` s, stacked: built from ``S`` single-run learners
    (their initial values, optimizers, temperatures; they remain the templates of each member's checkpoint
    state). :meth:`update` is one gradient update of every member, with the single learner's steps in order."""

    def __init__(self, cfgs: Sequence[OffPolicyConfig], learners: Sequence[Learner]):
        cfg, first = cfgs[0], learners[0]
        self.cfg, self.S = cfg, len(learners)
        self.actor_loss, self.critic_loss = ACTOR_LOSSES.get(cfg.actor_loss), CRITIC_LOSSES.get(cfg.critic_loss)
        self.stochastic = first.actor.stochastic
        self.actor = StackedMLP([lr.actor for lr in learners], cfg.activation)
        self.critic = StackedMLP([lr.critic for lr in learners], cfg.activation)
        self.critic.support = getattr(first.critic, "support", None)
        self.critic_t = StackedMLP([lr.critic_t for lr in learners], cfg.activation, requires_grad=False)
        self.actor_t = (
            StackedMLP([lr.actor_t for lr in learners], cfg.activation, requires_grad=False)
            if first.actor_t is not None
            else None
        )
        self.actor_opt = self._adam(self.actor, [lr.actor_opt for lr in learners])
        self.critic_opt = self._adam(self.critic, [lr.critic_opt for lr in learners])
        self.temperature = StackedTemperature([lr.temperature for lr in learners]) if first.temperature else None
        self.q_members, self.support = first.q_members, first.support
        self.values = CRITICS[cfg.critic].values  # Q-values of the (stacked) critic output, as the single run's

    @staticmethod
    def _adam(net: StackedMLP, templates: list) -> StackedAdam:
        return StackedAdam(net.parameters(), templates, [net.template_map(k) for k in range(net.S)], net.view)

    # ---- the actors ----
    def _gaussian(self, obs: Tensor, net: StackedMLP) -> tuple[Tensor, Tensor]:
        mean, log_std = net(obs).squeeze(1).chunk(2, -1)
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)

    def rsample(self, obs: Tensor, gens, net: StackedMLP | None = None) -> tuple[Tensor, Tensor | None]:
        """Each member's reparameterized action ``(S, B, A)`` and, for the Gaussian, ``log pi`` ``(S, B)``
        (one ``randn`` per member, as the single actor's ``randn_like``)."""
        net = net or self.actor
        if not self.stochastic:
            return torch.tanh(net(obs).squeeze(1)), None
        mean, log_std = self._gaussian(obs, net)
        return L.tanh_gaussian_sample(mean, log_std, _randn(gens, tuple(mean.shape[1:])))

    def mu(self, obs: Tensor) -> Tensor:
        """The deterministic actors' ``mu(s)`` ``(S, B, A)``."""
        return torch.tanh(self.actor(obs).squeeze(1))

    def target_action(self, next_obs: Tensor, gens) -> tuple[Tensor, Tensor | None]:
        """The target action of each member (a fresh policy sample, or TD3's smoothed target action)."""
        cfg = self.cfg
        if self.stochastic:
            return self.rsample(next_obs, gens)
        mu = torch.tanh((self.actor_t or self.actor)(next_obs).squeeze(1))
        smoothed = [L.smoothed_target_action(m, cfg.target_noise, cfg.target_noise_clip, g) for m, g in zip(mu, gens)]
        return torch.stack(smoothed), None

    # ---- one gradient update ----
    def update(
        self, replay: PopulationReplay, norms: Sequence[ObsNormalizer], num_updates: int, gens
    ) -> dict[str, Tensor]:
        """Update ``num_updates`` (1-based) of every member; statistics are ``(S,)`` tensors."""
        cfg = self.cfg
        b = replay.sample(cfg.batch_size, gens)
        obs, next_obs = _normalize(norms, b.obs), _normalize(norms, b.next_obs)
        alpha = self.temperature.alpha if self.temperature is not None else None
        alphas = list(alpha.unbind(0)) if alpha is not None else [0.0] * self.S
        stats = self._critic_step(b, obs, next_obs, alphas, gens)
        if num_updates % cfg.policy_delay == 0:
            stats.update(self._actor_step(obs, alphas, gens))
            if alpha is not None:
                stats["stats/alpha"] = alpha
            L.polyak_update(self.critic_t.parameters(), self.critic.parameters(), cfg.tau)
            if self.actor_t is not None:
                L.polyak_update(self.actor_t.parameters(), self.actor.parameters(), cfg.tau)
        return stats

    def _critic_step(self, b: Batch, obs: Tensor, next_obs: Tensor, alphas: list, gens) -> dict[str, Tensor]:
        with torch.no_grad():
            next_a, next_logp = self.target_action(next_obs, gens)
            next_out = self.critic_t(torch.cat([next_obs, next_a], -1))
        out = self.critic(torch.cat([obs, b.action], -1))
        weight = b.valid / b.valid.sum(-1, keepdim=True).clamp_min(1.0)  # mask the autoreset step
        logps = next_logp.unbind(0) if next_logp is not None else [None] * self.S
        inputs = [
            (o, CriticBatch(*fs, nl, a, **self.support))
            for o, *fs, nl, a in zip(out.unbind(0), b.reward, b.terminated, b.discount, weight, next_out, logps, alphas)
        ]
        total, st = _per_member(self.critic_loss, inputs)
        self.critic_opt.zero_grad()
        total.backward()
        if self.cfg.max_grad_norm is not None:
            clip_grad_norm_members(self.critic.parameters(), self.cfg.max_grad_norm)
        self.critic_opt.step()
        return {"loss/critic": st.pop("loss"), **{f"stats/{k}": v for k, v in st.items()}}

    def _actor_step(self, obs: Tensor, alphas: list, gens) -> dict[str, Tensor]:
        action, logp = self.rsample(obs, gens)
        q = self.values(self.critic, torch.cat([obs, action], -1), detach=True, members=self.q_members)
        logps = logp.unbind(0) if logp is not None else [None] * self.S
        inputs = [(ActorBatch(qk, lp, None, a, 0.0),) for qk, lp, a in zip(q.unbind(0), logps, alphas)]
        total, st = _per_member(self.actor_loss, inputs)
        self.actor_opt.zero_grad()
        total.backward()
        if self.cfg.max_grad_norm is not None:
            clip_grad_norm_members(self.actor.parameters(), self.cfg.max_grad_norm)
        self.actor_opt.step()
        if self.temperature is not None:
            self.temperature.update(logp)
        return {"loss/actor": st.pop("loss"), **{f"stats/{k}": v for k, v in st.items()}}

    def parts(self) -> dict[str, Any]:
        """The stacked parts under the single learner's part names."""
        parts = {
            "actor": self.actor,
            "critic": self.critic,
            "critic_target": self.critic_t,
            "actor_target": self.actor_t,
            "actor_opt": self.actor_opt,
            "critic_opt": self.critic_opt,
            "temperature": self.temperature,
        }
        return {k: v for k, v in parts.items() if v is not None}


# ---- the phases ---------------------------------------------------------------------------------------
class OffPolicyPopulation(Phases):
    """The off-policy phases for ``S`` members in lockstep (one iteration = one step of the ``S * N`` sub-env
    vector env). Each method does what :class:`~policyopt.control.offpolicy.OffPolicyTrainer`'s does, for every
    member, drawing from member ``k``'s generator where the single run draws from the global one."""

    name = "off-policy population"

    def __init__(self, cfgs: Sequence[OffPolicyConfig], pop: PopulationRun):
        cfg, S, N = cfgs[0], len(cfgs), cfgs[0].num_envs
        self.cfgs, self.cfg, self.S, self.N, self.device = list(cfgs), cfg, S, N, torch.device(cfg.device)
        self.members = pop.members
        self.envs = make_vec_env(cfg.env_id, S * N, cfg.seed, cfg.vectorization, cfg.env_kwargs)
        obs_dim, self.act_dim = _spaces_check(self.envs.single_observation_space, self.envs.single_action_space)
        self.to_env = _action_scaler(self.envs.single_action_space, self.device)
        self.iterations = math.ceil(cfg.total_steps / N)
        self.cadence = Cadence(
            log=Cadence.every(cfg.log_every, N),
            evaluate=Cadence.every(cfg.eval_every, N),
            checkpoint=Cadence.every(cfg.checkpoint_every, N),
            guard=0,
        )
        self.start_iterations = math.ceil(cfg.learning_starts / N)
        total_actor_updates = max(1, int(self.iterations * N * cfg.utd) // cfg.policy_delay)
        learners, self.noises = [], []
        for c, m in zip(cfgs, self.members):
            with m.global_rng():  # the single run's draws at construction, from this member's stream
                learners.append(Learner(c, obs_dim, self.act_dim, total_actor_updates, self.device))
                self.noises.append(ExplorationNoise(c, N, self.act_dim, self.device))
                self.noises[-1].reset(torch.ones(N, dtype=torch.bool))
        self.gens = [m.generator for m in self.members]
        self.learner = PopulationLearner(cfgs, learners)
        self.norms = [ObsNormalizer((obs_dim,), cfg.norm_obs, cfg.clip_obs) for _ in cfgs]
        self.replay = PopulationReplay(cfg, S, obs_dim, self.act_dim, self.device)
        for name, part in self.learner.parts().items():
            pop.track(name, part)
        if cfg.save_buffer:
            pop.track("buffer", self.replay)
        pop.track_each("obs_norm", self.norms)
        pop.track_each("exploration", self.noises)
        for m in self.members:
            m.counters.update(global_step=0, num_updates=0, credit=0.0, env_epoch=0)
        self.trackers = [AutoresetTracker(N) for _ in cfgs]
        self.episodes = [EpisodeLog(m) for m in self.members]
        self.rets: list[float | None] = [None] * S

    def step(self, iteration: int) -> int:
        return iteration * self.N

    # ---- environments ----
    def begin(self, pop: PopulationRun) -> None:
        for k, m in enumerate(self.members):
            self.episodes[k].begin(m)
            self.rets[k] = self.episodes[k].recent_return()
        self._begin_env_epoch(self.members[0].counters["env_epoch"])

    def _begin_env_epoch(self, epoch: int) -> None:
        """(Re-)seed every sub-env, member ``k``'s with its single run's seeds."""
        seeds = [s for c in self.cfgs for s in seeds_for(c.seed, self.N, epoch)]
        raw, _ = self.envs.reset(seed=seeds)
        for t in self.trackers:
            t.reset()
        self.obs = torch.as_tensor(raw, dtype=torch.float32, device=self.device).view(self.S, self.N, -1)

    def before_checkpoint(self, pop: PopulationRun) -> None:
        for k, m in enumerate(self.members):
            m.counters["env_epoch"] += 1
            self.episodes[k].save(m)
        self.replay.buffer.mark_truncated_last()

    def after_checkpoint(self, pop: PopulationRun) -> None:
        self._begin_env_epoch(self.members[0].counters["env_epoch"])

    def end(self, pop: PopulationRun) -> None:
        self.envs.close()

    # ---- collect and update ----
    def _act(self, pop: PopulationRun) -> Tensor:
        N, A = self.N, self.act_dim
        if pop.iteration <= self.start_iterations:
            return torch.stack([torch.rand((N, A), generator=g) for g in self.gens]) * 2.0 - 1.0
        obs = _normalize(self.norms, self.obs)
        if self.learner.stochastic:
            return self.learner.rsample(obs, self.gens)[0]
        eps = []
        for m, noise in zip(self.members, self.noises):
            with m.global_rng():
                eps.append(noise.sample().clone())
        return (self.learner.mu(obs) + torch.stack(eps)).clamp(-1, 1)

    @torch.no_grad()
    def collect(self, pop: PopulationRun) -> None:
        cfg, S, N = self.cfg, self.S, self.N
        action = self._act(pop)
        active = pop.active
        if not bool(active.all()):  # a failed member's (non-finite) actions do not reach its environments
            action[~active] = 0.0
        raw, reward, terminated, truncated, _ = self.envs.step(self.to_env(action.reshape(S * N, -1)).cpu().numpy())
        valid, finished = np.empty(S * N, dtype=bool), []
        for k, tracker in enumerate(self.trackers):
            sl = slice(k * N, (k + 1) * N)
            valid[sl], fin = tracker.step(reward[sl], terminated[sl], truncated[sl])
            finished.append(fin)
        next_obs = torch.as_tensor(raw, dtype=torch.float32, device=self.device).view(S, N, -1)
        if cfg.norm_obs:
            for norm, o in zip(self.norms, next_obs):
                norm(o, update=True)
        self.replay.buffer.add(
            self.obs.reshape(S * N, -1),
            action.reshape(S * N, -1),
            torch.as_tensor(reward, dtype=torch.float32) * cfg.reward_scale,
            next_obs.reshape(S * N, -1),
            torch.from_numpy(terminated),
            torch.from_numpy(truncated),
            torch.from_numpy(valid),
        )
        ended = torch.from_numpy((terminated | truncated) & valid).view(S, N)
        for k, (m, fin) in enumerate(zip(self.members, finished)):
            if fin:
                self.episodes[k].add(fin)
                self.rets[k] = self.episodes[k].recent_return()
                with m.global_rng():
                    self.noises[k].reset(ended[k])
            m.counters["global_step"] += N
        self.obs = next_obs

    def update(self, pop: PopulationRun, batch: None) -> dict[str, Tensor]:
        """Every member's earned gradient updates (the members' credits are equal), each accumulated."""
        if pop.iteration < self.start_iterations:
            return {}
        counters = [m.counters for m in self.members]
        for c in counters:
            c["credit"] += self.cfg.utd * self.N
        while counters[0]["credit"] >= 1.0:
            for c in counters:
                c["credit"] -= 1.0
                c["num_updates"] += 1
            pop.accumulate(self.learner.update(self.replay, self.norms, counters[0]["num_updates"], self.gens))
        return {}

    # ---- log and evaluate ----
    def log_metrics(self, pop: PopulationRun) -> list[dict[str, Any]]:
        return [
            {**ep.metrics(m), "train/updates": m.counters["num_updates"]} for ep, m in zip(self.episodes, self.members)
        ]

    def progress_info(self, pop: PopulationRun) -> dict[str, Any]:
        rets = [r for r in self.rets if r is not None]
        return {"ret": float(np.mean(rets)) if rets else None}

    def evaluate(self, pop: PopulationRun, final: bool) -> list[dict[str, Any]]:
        """Each live member's deterministic evaluation, as its single run's (its actor in single-run form)."""
        out = []
        for k, (c, m) in enumerate(zip(self.cfgs, self.members)):
            if m.failed is not None:
                out.append({})
                continue
            actor, norm = self.learner.actor.put(k), self.norms[k]

            def act(raw_obs: Tensor, actor=actor, norm=norm) -> Tensor:
                return self.to_env(actor.mode(norm(raw_obs.to(self.device)))).cpu()

            with torch.no_grad():
                out.append(evaluation.evaluate(act, c.env_id, c.eval_episodes, c.seed, env_kwargs=c.env_kwargs))
        return out

    def result(self, pop: PopulationRun, finals: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for ep, m, final in zip(self.episodes, self.members, finals):
            steps, seconds = m.counters["global_step"], max(ep.seconds(), 1e-9)
            out.append(
                {
                    "eval_return_mean": final.get("return_mean"),
                    "eval_return_std": final.get("return_std"),
                    "steps": steps,
                    "updates": m.counters["num_updates"],
                    "train_seconds": round(seconds, 2),
                    "steps_per_s": round(ep.steps_per_second(m), 1),
                }
            )
        return out


def train_population(cfgs: list[OffPolicyConfig], run_dirs: list[Path], resume: bool = False) -> list[dict]:
    """Train (or resume) the members ``cfgs[k]`` in ``run_dirs[k]`` as one population; returns each member's
    final evaluation summary (as :func:`~policyopt.control.offpolicy.train` does for one run)."""
    reason = population_unsupported(cfgs)
    if reason:
        raise UserError(reason)
    return execute_population(
        FAMILY, list(cfgs), [Path(d) for d in run_dirs], resume, lambda pop: [OffPolicyPopulation(cfgs, pop)]
    )
