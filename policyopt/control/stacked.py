"""Stacked parts of a population of on-policy agents: ``S`` members' networks, Adam states and normalizers as
tensors with a leading member dimension, so one kernel launch serves every member.

Every part saves and loads one member at a time in the single-run format (``member_state_dict(k)``,
``load_member_state_dict(k, state)``): member ``k``'s slice of the stacked actor-critic is an
:class:`~policyopt.control.networks.ActorCritic` state dict, its slice of :class:`StackedAdam` a
``torch.optim.Adam`` state dict, its normalizers those of :mod:`policyopt.control.normalize`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from policyopt.control.networks import _FUSED_ACTIVATIONS, ActorCritic


# ---- batched MLPs ---------------------------------------------------------------------------------------
def _layers(flat: Tensor, dims: Sequence[int]) -> list[tuple[Tensor, Tensor]]:
    """Views ``(W^T (S, d_in, d_out), b (S, 1, d_out))`` of each layer in a flat ``(S, P)`` parameter tensor
    (per member and layer: ``W^T`` row-major, then ``b``)."""
    S, out, off = flat.shape[0], [], 0
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        w = flat[:, off : off + d_in * d_out].view(S, d_in, d_out)
        off += d_in * d_out
        out.append((w, flat[:, off : off + d_out].view(S, 1, d_out)))
        off += d_out
    return out


def flat_size(dims: Sequence[int]) -> int:
    return sum(d_in * d_out + d_out for d_in, d_out in zip(dims[:-1], dims[1:]))


THIN = 8  # products with at most this many output columns run transposed (see _bmm)


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for stacks of matrices. This CPU build's batched product is several times slower than its
    arithmetic when ``b`` has few columns (a value head's 1, a policy head's 2) or ``a`` one; then the transposed
    product ``(b^T a^T)^T`` (or, for one column of ``a``, a broadcast outer product) is used: the same sums."""
    if a.shape[-1] == 1:
        return a * b
    if b.shape[-1] <= THIN < a.shape[-2]:
        return torch.bmm(b.transpose(1, 2), a.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(a, b)


def _baddbmm(bias: Tensor, x: Tensor, w: Tensor, scale: float = 1.0) -> Tensor:
    """``scale * (bias + x @ w)`` for stacks, transposed like :func:`_bmm` when ``w`` has few columns."""
    if w.shape[-1] <= THIN < x.shape[-2]:
        out = torch.baddbmm(bias.transpose(1, 2), w.transpose(1, 2), x.transpose(1, 2), beta=scale, alpha=scale)
        return out.transpose(1, 2)
    return torch.baddbmm(bias, x, w, beta=scale, alpha=scale)


def batched_mlp_forward(
    activation: str, x: Tensor, layers: Sequence[tuple[Tensor, Tensor]]
) -> tuple[Tensor, list[Tensor]]:
    """``S`` MLPs at once: per member ``h <- act(h W^T + b)`` as one ``baddbmm`` per layer on ``x (S, B, d)``
    (no activation after the last; ``layers`` as :func:`_layers` gives them); returns the output and every
    layer's input (for the backward)."""
    scale, act, _ = _FUSED_ACTIVATIONS[activation]
    hs = [x]
    for i, (w, b) in enumerate(layers):
        if i < len(layers) - 1:
            x = act(_baddbmm(b, x, w, scale))
            hs.append(x)
        else:
            x = _baddbmm(b, x, w)
    return x, hs


class BatchedMLPFunction(torch.autograd.Function):
    """``S`` MLPs with stacked weights as one autograd node with a hand-written backward (the batched form of
    :class:`~policyopt.control.networks._MLPFunction`: ``dW^T = h^T g``, ``db = sum g``,
    ``g <- (g W) * act'(h)``, each a batched matmul); the parameter gradient comes back as one flat tensor.
    ``layers`` are views of ``flat``'s storage (taken once; optimizer steps update ``flat`` in place)."""

    @staticmethod
    def forward(ctx, activation: str, layers: list[tuple[Tensor, Tensor]], x: Tensor, flat: Tensor) -> Tensor:
        out, hs = batched_mlp_forward(activation, x, layers)
        ctx.activation, ctx.layers, ctx.S = activation, layers, flat.shape[0]
        ctx.save_for_backward(*hs)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        hs, layers, S = ctx.saved_tensors, ctx.layers, ctx.S
        act_grad = _FUSED_ACTIVATIONS[ctx.activation][2]
        grads: list[Tensor] = []
        for i in range(len(layers) - 1, -1, -1):
            grads.append(g.sum(1))
            grads.append(_bmm(hs[i].transpose(1, 2), g).reshape(S, -1))
            if i > 0:
                g = act_grad(_bmm(g, layers[i][0].transpose(1, 2)), hs[i])
        return None, None, None, torch.cat(grads[::-1], 1)


class StackedActorCritic:
    """``S`` :class:`ActorCritic` s (tanh or relu MLPs) as three stacked leaves: ``actor (S, P_a)``,
    ``critic (S, P_c)`` and, for Gaussian policies, ``log_std (S, d)``. ``obs (S, B, d) -> params (S, B, p)``,
    ``value (S, B)``. Built from ``S`` initialized single agents (their parameters are copied)."""

    def __init__(self, agents: Sequence[ActorCritic]):
        ref = agents[0]
        self.template = copy.deepcopy(ref)
        self.dist, self.activation = ref.dist, ref.activation
        self.dims = {name: self._dims(getattr(ref, name)) for name in ("actor", "critic")}
        self.keys = {name: self._keys(name, getattr(ref, name)) for name in ("actor", "critic")}
        self.flat = {
            name: torch.stack([self._flatten(getattr(a, name)) for a in agents]).requires_grad_()
            for name in ("actor", "critic")
        }
        self.log_std = None
        if ref.log_std is not None:
            self.log_std = torch.stack([a.log_std.detach() for a in agents]).requires_grad_()
        self.params = [self.flat["actor"], self.flat["critic"]] + ([self.log_std] if self.log_std is not None else [])
        self.layers = {name: _layers(self.flat[name].detach(), self.dims[name]) for name in ("actor", "critic")}

    @staticmethod
    def _linears(net: nn.Sequential) -> list[tuple[int, nn.Linear]]:
        return [(i, m) for i, m in enumerate(net) if isinstance(m, nn.Linear)]

    def _dims(self, net: nn.Sequential) -> tuple[int, ...]:
        lins = [m for _, m in self._linears(net)]
        return (lins[0].in_features, *(m.out_features for m in lins))

    def _keys(self, name: str, net: nn.Sequential) -> list[tuple[str, str]]:
        return [(f"{name}.{i}.weight", f"{name}.{i}.bias") for i, _ in self._linears(net)]

    def _flatten(self, net: nn.Sequential) -> Tensor:
        return torch.cat(
            [t for _, m in self._linears(net) for t in (m.weight.detach().t().reshape(-1), m.bias.detach())]
        )

    def _run(self, name: str, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return BatchedMLPFunction.apply(self.activation, self.layers[name], x, self.flat[name])
        return batched_mlp_forward(self.activation, x, self.layers[name])[0]

    def dist_params(self, obs: Tensor) -> Tensor:
        out = self._run("actor", obs)
        if self.log_std is not None:
            out = torch.cat([out, self.log_std[:, None, :].expand_as(out)], dim=-1)
        return out

    def value(self, obs: Tensor) -> Tensor:
        return self._run("critic", obs).squeeze(-1)

    def __call__(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.dist_params(obs), self.value(obs)

    # -- one member in the single-run format --
    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        out = {}
        for name in ("actor", "critic"):
            for (wk, bk), (w, b) in zip(self.keys[name], _layers(self.flat[name].detach()[k : k + 1], self.dims[name])):
                out[wk], out[bk] = w[0].t().clone(), b[0, 0].clone()
        if self.log_std is not None:
            out["log_std"] = self.log_std.detach()[k].clone()
        return {key: out[key] for key in self.template.state_dict()}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state: dict[str, Tensor]) -> None:
        self.template.load_state_dict(state)
        for name in ("actor", "critic"):
            self.flat[name][k] = self._flatten(getattr(self.template, name))
        if self.log_std is not None:
            self.log_std[k] = self.template.log_std.detach()

    def member_agent(self, k: int) -> ActorCritic:
        """A plain :class:`ActorCritic` holding member ``k``'s current parameters (evaluation, reference paths)."""
        agent = copy.deepcopy(self.template)
        agent.load_state_dict(self.member_state_dict(k))
        return agent


# ---- Adam with a learning rate per member and a per-member mask ------------------------------------------
def adam_update(
    p: Tensor, g: Tensor, m: Tensor, v: Tensor, step: Tensor, lr: Tensor, beta1: float, beta2: float, eps: float
) -> None:
    """In place, one Adam step (Kingma & Ba, 2015) per member row: ``m <- b1 m + (1-b1) g``,
    ``v <- b2 v + (1-b2) g^2``, ``p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`` with ``step``
    (the new ``t``) and ``lr`` of shape ``(S,)``; rows whose ``lr`` is 0 are left exactly as they were by the
    caller (see :class:`StackedAdam`)."""
    shape = (-1,) + (1,) * (p.dim() - 1)
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    bc1 = 1 - beta1**step
    bc2_sqrt = (1 - beta2**step).sqrt()
    denom = (v.sqrt() / bc2_sqrt.view(shape).float()).add_(eps)
    p.addcdiv_(m * (lr / bc1).view(shape).float(), denom, value=-1.0)


def rmsprop_update(p: Tensor, g: Tensor, v: Tensor, lr: Tensor, alpha: float, eps: float) -> None:
    """In place, one RMSprop step (Tieleman & Hinton, 2012, as ``torch.optim.RMSprop`` without momentum) per member
    row: ``v <- a v + (1-a) g^2``, ``p <- p - lr g / (sqrt(v) + eps)`` with ``lr`` of shape ``(S,)``."""
    shape = (-1,) + (1,) * (p.dim() - 1)
    v.mul_(alpha).addcmul_(g, g, value=1 - alpha)
    p.addcdiv_(g * lr.view(shape).float(), v.sqrt().add_(eps), value=-1.0)


class StackedOptimizer:
    """An optimizer over stacked parameters with a learning rate per member; ``step(lr, members)`` updates only
    the members in the ``(S,)`` bool mask (the others' parameters, state and step counts are untouched). Member
    ``k``'s state dict is that of the single run's optimizer (``templates[k]``) over the member's single agent."""

    MOMENTS: tuple[str, ...] = ()

    def __init__(self, stacked: StackedActorCritic, templates: Sequence[torch.optim.Optimizer]):
        self.net, self.params = stacked, stacked.params
        self.templates = list(templates)  # one single-run optimizer per member: its param_groups for checkpoints
        self.group = self.templates[0].param_groups[0]
        self.moments = {name: [torch.zeros_like(p) for p in self.params] for name in self.MOMENTS}
        self.steps = torch.zeros(self.params[0].shape[0], dtype=torch.float64)

    def _update(self, p: Tensor, g: Tensor, moments: list[Tensor], steps: Tensor, lr: Tensor) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, lr: Tensor, members: Tensor) -> None:
        if bool(members.all()):
            self.steps += 1
            for i, p in enumerate(self.params):
                self._update(p, p.grad, [m[i] for m in self.moments.values()], self.steps, lr)
            return
        idx = torch.nonzero(members).flatten()
        self.steps[idx] += 1
        for i, p in enumerate(self.params):
            sub, ms = p[idx], [m[i][idx] for m in self.moments.values()]
            self._update(sub, p.grad[idx], ms, self.steps[idx], lr[idx])
            p[idx] = sub
            for m, new in zip(self.moments.values(), ms):
                m[i][idx] = new

    def _member_tensors(self, k: int, stacked: list[Tensor]) -> list[Tensor]:
        """Member ``k``'s slices of per-leaf tensors, as the single agent's parameter list (weights transposed)."""
        net = self.net
        out = []
        for name, flat in zip(("actor", "critic"), stacked):
            for w, b in _layers(flat[k : k + 1], net.dims[name]):
                out += [w[0].t().clone(), b[0, 0].clone()]
        if net.log_std is not None:
            out.append(stacked[2][k].clone())
        return out

    def member_state_dict(self, k: int) -> dict[str, Any]:
        tmpl = self.templates[k].state_dict()
        groups = copy.deepcopy(tmpl["param_groups"])
        if not self.steps[k]:
            return {"state": {}, "param_groups": groups}
        per = {name: self._member_tensors(k, stacked) for name, stacked in self.moments.items()}
        step = torch.tensor(float(self.steps[k]), dtype=torch.float32)
        n = len(self.net.template.state_dict())
        state = {i: {"step": step.clone(), **{name: per[name][i] for name in self.MOMENTS}} for i in range(n)}
        return {"state": state, "param_groups": groups}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state: dict[str, Any]) -> None:
        self.templates[k].param_groups[0]["lr"] = state["param_groups"][0]["lr"]
        st = state["state"]
        self.steps[k] = float(st[0]["step"]) if st else 0.0
        for key, stacked in self.moments.items():
            tensors = [st[i][key] for i in range(len(st))] if st else None
            self._load_member(k, stacked, tensors)

    def _load_member(self, k: int, stacked: list[Tensor], tensors: list[Tensor] | None) -> None:
        if tensors is None:
            for t in stacked:
                t[k] = 0
            return
        net, i = self.net, 0
        for name, flat in zip(("actor", "critic"), stacked):
            parts = []
            for _ in range(len(net.dims[name]) - 1):
                parts += [tensors[i].t().reshape(-1), tensors[i + 1]]
                i += 2
            flat[k] = torch.cat(parts)
        if net.log_std is not None:
            stacked[2][k] = tensors[i]


class StackedAdam(StackedOptimizer):
    """Adam (:func:`adam_update`); member state dicts as ``torch.optim.Adam``'s."""

    MOMENTS = ("exp_avg", "exp_avg_sq")

    def _update(self, p, g, moments, steps, lr):
        beta1, beta2 = self.group["betas"]
        adam_update(p, g, moments[0], moments[1], steps, lr, beta1, beta2, self.group["eps"])


class StackedRMSprop(StackedOptimizer):
    """RMSprop (:func:`rmsprop_update`); member state dicts as ``torch.optim.RMSprop``'s."""

    MOMENTS = ("square_avg",)

    def _update(self, p, g, moments, steps, lr):
        rmsprop_update(p, g, moments[0], lr, self.group["alpha"], self.group["eps"])


STACKED_OPTIMIZERS = {"adam": StackedAdam, "rmsprop": StackedRMSprop}


@torch.no_grad()
def clip_grad_norms(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """Per member, scale the gradients so their global 2-norm is at most ``max_norm`` (scale
    ``min(1, max_norm / (norm + 1e-6))``, as :func:`policyopt.optim.clip_grad_norm`); returns the ``(S,)`` norms
    before clipping."""
    sq = torch.stack([p.grad.reshape(p.shape[0], -1).square().sum(1) for p in params]).sum(0)
    norm = sq.sqrt()
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.mul_(scale.view((-1,) + (1,) * (p.dim() - 1)))
    return norm


# ---- normalizers ----------------------------------------------------------------------------------------
class StackedRunningMeanStd:
    """``S`` :class:`~policyopt.control.normalize.RunningMeanStd` s (float64): the parallel (Chan et al.) update
    per member, each with its own batch (rows where ``valid`` is false are left out; an empty batch is skipped)."""

    def __init__(self, S: int, shape: tuple[int, ...] = (), eps: float = 1e-4):
        self.mean = torch.zeros((S, *shape), dtype=torch.float64)
        self.var = torch.ones((S, *shape), dtype=torch.float64)
        self.count = torch.full((S,), eps, dtype=torch.float64)

    def update(self, x: Tensor, valid: Tensor | None = None) -> None:
        """``x (S, B, *shape)``; ``valid (S, B)`` bool."""
        x = x.to(torch.float64)
        extra = (1,) * (x.dim() - 2)
        w = torch.ones(x.shape[:2], dtype=torch.float64) if valid is None else valid.to(torch.float64)
        n = w.sum(1)
        wn = w.view(*w.shape, *extra)
        b_mean = (x * wn).sum(1) / n.clamp(min=1).view(-1, *extra)
        b_var = (((x - b_mean[:, None]) ** 2) * wn).sum(1) / n.clamp(min=1).view(-1, *extra)
        c, nb, tot = self.count.view(-1, *extra), n.view(-1, *extra), (self.count + n).view(-1, *extra)
        delta = b_mean - self.mean
        mean = self.mean + delta * nb / tot
        m2 = self.var * c + b_var * nb + delta**2 * c * nb / tot
        keep = (n > 0).view(-1, *extra)
        self.mean = torch.where(keep, mean, self.mean)
        self.var = torch.where(keep, m2 / tot, self.var)
        self.count = torch.where(n > 0, self.count + n, self.count)

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        return {"mean": self.mean[k].clone(), "var": self.var[k].clone(), "count": self.count[k].clone()}

    def load_member_state_dict(self, k: int, s: dict[str, Tensor]) -> None:
        self.mean[k], self.var[k], self.count[k] = s["mean"], s["var"], s["count"]


class StackedObsNormalizer:
    """``S`` :class:`~policyopt.control.normalize.ObsNormalizer` s on ``obs (S, B, d)``."""

    def __init__(self, S: int, shape: tuple[int, ...], enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        self.enabled, self.clip, self.eps = enabled, clip, eps
        self.rms = StackedRunningMeanStd(S, shape)
        self._cache()

    def _cache(self) -> None:
        self._mean = self.rms.mean.float()[:, None]
        self._inv_std = (self.rms.var + self.eps).rsqrt().float()[:, None]

    def __call__(self, obs: Tensor, update: bool = False) -> Tensor:
        if not self.enabled:
            return obs
        if update:
            self.rms.update(obs)
            self._cache()
        return ((obs - self._mean) * self._inv_std).clamp(-self.clip, self.clip)

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        return self.rms.member_state_dict(k)

    def load_member_state_dict(self, k: int, s: dict[str, Tensor]) -> None:
        self.rms.load_member_state_dict(k, s)
        self._cache()


class StackedRewardNormalizer:
    """``S`` :class:`~policyopt.control.normalize.RewardNormalizer` s on rewards ``(S, N)``."""

    def __init__(self, S: int, num_envs: int, gamma: float, enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        self.enabled, self.gamma, self.clip, self.eps = enabled, gamma, clip, eps
        self.rms = StackedRunningMeanStd(S, ())
        self.ret = torch.zeros((S, num_envs), dtype=torch.float64)

    def __call__(self, reward: Tensor, done: Tensor, valid: Tensor) -> Tensor:
        if not self.enabled:
            return reward
        v = valid.to(torch.float64)
        self.ret = self.ret * self.gamma * v + reward.to(torch.float64) * v
        self.rms.update(self.ret, valid)
        self.ret = self.ret * (1.0 - done.to(torch.float64))
        scaled = reward / torch.sqrt(self.rms.var + self.eps).float()[:, None]
        return scaled.clamp(-self.clip, self.clip)

    def reset_episodes(self) -> None:
        self.ret.zero_()

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        return {**self.rms.member_state_dict(k), "ret": self.ret[k].clone()}

    def load_member_state_dict(self, k: int, s: dict[str, Tensor]) -> None:
        self.rms.load_member_state_dict(k, s)
        self.ret[k] = s["ret"].to(torch.float64)
