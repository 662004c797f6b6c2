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

        self._act = {"tanh": torch.tanh, "relu": torch.relu, "elu": nn.functional.elu, "silu": nn.functional.silu}[
            activation]

    def _run(self, net: nn.Sequential, x: Tensor) -> Tensor:
        # Same math as net(x), without nn.Module call machinery: for 64-unit MLPs that overhead is a
        # large share of each step's cost.
        layers = net._modules.values()
        for m in layers:
            x = nn.functional.linear(x, m.weight, m.bias) if isinstance(m, nn.Linear) else self._act(x)
        return x

    def dist_params(self, obs: Tensor) -> Tensor:
        out = self._run(self.actor, obs)
        if self.log_std is not None:
            out = torch.cat([out, self.log_std.expand_as(out)], dim=-1)
        return out

    def value(self, obs: Tensor) -> Tensor:
        return self._run(self.critic, obs).squeeze(-1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.dist_params(obs), self.value(obs)
