"""MLP actor-critic for Discrete and Box action spaces, with orthogonal initialization."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from policyopt.control.distributions import Categorical, DiagGaussian
from policyopt.errors import UserError

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}



def mlp(in_dim: int, hidden: tuple[int, ...], out_dim: int, activation: str = "tanh", out_gain: float = 1.0,
        ortho_init: bool = True) -> nn.Sequential:
    """An MLP; with ``ortho_init`` hidden layers get orthogonal weights with gain sqrt(2) and the output
    layer ``out_gain`` (0.01 for a policy head, 1 for a value head), biases 0 (Engstrom et al., 2020,
    "Implementation Matters in Deep Policy Gradients")."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        lin = nn.Linear(d, h)
        if ortho_init:
            nn.init.orthogonal_(lin.weight, math.sqrt(2))
            nn.init.zeros_(lin.bias)
        layers += [lin, ACTIVATIONS[activation]()]
        d = h
    out = nn.Linear(d, out_dim)
    if ortho_init:
        nn.init.orthogonal_(out.weight, out_gain)
        nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


def make_distribution(action_space, squash: str = "clip"):
    import gymnasium as gym

    if isinstance(action_space, gym.spaces.Discrete):
        return Categorical(int(action_space.n))
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        low = torch.as_tensor(action_space.low, dtype=torch.float32)
        high = torch.as_tensor(action_space.high, dtype=torch.float32)
        if squash == "tanh" and not (np.isfinite(action_space.low).all() and np.isfinite(action_space.high).all()):
            raise UserError("squash='tanh' needs a bounded Box action space")
        return DiagGaussian(int(action_space.shape[0]), low, high, squash)
    raise UserError(f"action space {action_space} is not supported; supported: Discrete, 1-D Box")


def _tanh_from_doubled(z: Tensor) -> Tensor:
    """``tanh(z / 2)`` computed as ``2 * sigmoid(z) - 1`` (identical math, max. abs. difference ~2e-7 in float32).

    On this project's CPU build ``torch.tanh`` runs at ~2 ns/element against ~0.25 ns for ``sigmoid``:
    for a 256x64 activation 33 us vs 11 us, and a PPO gradient step on 64x64 networks evaluates four of
    them. The factor 2 on the argument is folded into the layer's ``addmm``. In place on a fresh tensor:
    used only inside :class:`_MLPFunction` and under ``no_grad``.
    """
    return torch.sigmoid(z).mul_(2).sub_(1)


# activation -> (pre-activation scale folded into the layer's addmm, forward on the scaled pre-activation,
# derivative expressed through the activation's output)
_FUSED_ACTIVATIONS = {
    "tanh": (2.0, _tanh_from_doubled, torch.ops.aten.tanh_backward),
    "relu": (1.0, torch.relu, lambda g, y: torch.ops.aten.threshold_backward(g, y, 0)),
}


def _mlp_forward(activation: str, x: Tensor, wb: tuple[Tensor, ...]) -> tuple[Tensor, list[Tensor]]:
    """Layers ``h <- act(h W^T + b)`` (no activation after the last); returns the output and the inputs
    of every layer (what the hand-written backward needs)."""
    scale, act, _ = _FUSED_ACTIVATIONS[activation]
    hs = [x]
    n = len(wb) // 2
    for i in range(n):
        if i < n - 1:
            x = act(torch.addmm(wb[2 * i + 1], x, wb[2 * i].t(), beta=scale, alpha=scale))
            hs.append(x)
        else:
            x = torch.addmm(wb[2 * i + 1], x, wb[2 * i].t())
    return x, hs


class _MLPFunction(torch.autograd.Function):
    """A whole MLP as one autograd node with a hand-written backward.

    For 64-unit networks the autograd engine's per-node bookkeeping, not arithmetic, dominates a
    gradient step; one node per network with the textbook backward (``dW = g^T h``, ``db = sum g``,
    ``g <- (g W) * act'(h)``) does the same arithmetic with a fraction of the overhead. Gradients are
    checked against autograd on the plain layers in the tests.
    """

    @staticmethod
    def forward(ctx, activation: str, x: Tensor, *wb: Tensor) -> Tensor:
        out, hs = _mlp_forward(activation, x, wb)
        ctx.activation = activation
        ctx.save_for_backward(*hs, *wb[0::2])
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        saved = ctx.saved_tensors
        n = len(saved) // 2
        hs, ws = saved[:n], saved[n:]
        act_grad = _FUSED_ACTIVATIONS[ctx.activation][2]
        grads: list[Tensor | None] = [None] * (2 * n)
        gx = None
        for i in range(n - 1, -1, -1):
            grads[2 * i] = g.t().mm(hs[i])
            grads[2 * i + 1] = g.sum(0)
            if i > 0:
                g = act_grad(g.mm(ws[i]), hs[i])
            elif ctx.needs_input_grad[1]:
                gx = g.mm(ws[0])
        return None, gx, *grads


class ActorCritic(nn.Module):
    """Separate policy and value MLPs (as in CleanRL and SB3's default for PPO).

    ``forward(obs) -> (dist_params, value)``; for Gaussians the log-std is a state-independent parameter.
    """

    def __init__(self, obs_dim: int, action_space, hidden: tuple[int, ...] = (64, 64), activation: str = "tanh",
                 ortho_init: bool = True, log_std_init: float = 0.0, squash: str = "clip"):
        super().__init__()
        self.dist = make_distribution(action_space, squash)
        n_out = self.dist.n if isinstance(self.dist, Categorical) else self.dist.dim
        self.actor = mlp(obs_dim, hidden, n_out, activation, 0.01, ortho_init)
        self.critic = mlp(obs_dim, hidden, 1, activation, 1.0, ortho_init)
        self.log_std = None
        if isinstance(self.dist, DiagGaussian):
            self.log_std = nn.Parameter(torch.full((self.dist.dim,), float(log_std_init)))

        self.activation = activation
        self._layers = {name: [p for m in net if isinstance(m, nn.Linear) for p in (m.weight, m.bias)]
                        for name, net in (("actor", self.actor), ("critic", self.critic))}
        self._act = {"tanh": torch.tanh, "relu": torch.relu, "elu": nn.functional.elu, "silu": nn.functional.silu}[
            activation]

    def _run(self, name: str, x: Tensor) -> Tensor:
        # Same math as self.actor(x) / self.critic(x) without nn.Module call machinery. tanh and relu
        # networks run as one autograd node with a hand-written backward (_MLPFunction); under no_grad
        # the same forward runs directly, so rollout and update log-probabilities agree exactly.
        wb = self._layers[name]
        if self.activation in _FUSED_ACTIVATIONS:
            lead = x.shape[:-1]
            x = x.reshape(-1, x.shape[-1])  # addmm wants matrices; rollout blocks come as (T, N, d)
            if torch.is_grad_enabled() and (x.requires_grad or wb[0].requires_grad):
                out = _MLPFunction.apply(self.activation, x, *wb)
            else:
                out = _mlp_forward(self.activation, x, wb)[0]
            return out.reshape(*lead, out.shape[-1])
        for m in getattr(self, name):
            x = nn.functional.linear(x, m.weight, m.bias) if isinstance(m, nn.Linear) else self._act(x)
        return x

    def dist_params(self, obs: Tensor) -> Tensor:
        out = self._run("actor", obs)
        if self.log_std is not None:
            out = torch.cat([out, self.log_std.expand_as(out)], dim=-1)
        return out

    def value(self, obs: Tensor) -> Tensor:
        return self._run("critic", obs).squeeze(-1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.dist_params(obs), self.value(obs)
