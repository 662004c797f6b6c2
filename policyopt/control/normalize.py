"""Running observation and reward normalization, shared across sub-envs.

Statistics are torch tensors, saved inside the checkpoint (``state_dict``) and frozen during
evaluation (``update=False``).
"""

from __future__ import annotations

import torch
from torch import Tensor


class RunningMeanStd:
    """Streaming mean/variance with the parallel (Chan et al.) update, in float64."""

    def __init__(self, shape: tuple[int, ...] = (), eps: float = 1e-4):
        self.mean = torch.zeros(shape, dtype=torch.float64)
        self.var = torch.ones(shape, dtype=torch.float64)
        self.count = torch.tensor(eps, dtype=torch.float64)

    def update(self, x: Tensor) -> None:
        x = x.to(torch.float64).reshape(-1, *self.mean.shape)
        if x.shape[0] == 0:
            return
        b_mean, b_var, b_count = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta = b_mean - self.mean
        tot = self.count + b_count
        self.mean = self.mean + delta * b_count / tot
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / tot
        self.var = m2 / tot
        self.count = tot

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, s: dict[str, Tensor]) -> None:
        self.mean, self.var, self.count = (
            s["mean"].to(torch.float64),
            s["var"].to(torch.float64),
            s["count"].to(torch.float64),
        )


class ObsNormalizer:
    """``clip((obs - mean) / sqrt(var + eps), -clip, clip)``; identity when disabled."""

    def __init__(self, shape: tuple[int, ...], enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        self.enabled, self.clip, self.eps = enabled, clip, eps
        self.rms = RunningMeanStd(shape)
        self._cache()

    def _cache(self) -> None:
        self._mean = self.rms.mean.float()
        self._inv_std = (self.rms.var + self.eps).rsqrt().float()

    def __call__(self, obs: Tensor, update: bool = False, valid: Tensor | None = None) -> Tensor:
        if not self.enabled:
            return obs
        if update:
            self.rms.update(obs if valid is None else obs[valid])
            self._cache()
        return ((obs - self._mean) * self._inv_std).clamp(-self.clip, self.clip)

    def state_dict(self) -> dict[str, Tensor]:
        return self.rms.state_dict()

    def load_state_dict(self, s: dict[str, Tensor]) -> None:
        self.rms.load_state_dict(s)
        self._cache()


class RewardNormalizer:
    """Scale rewards by the std of the running discounted return (as in openai/baselines' VecNormalize).

    The per-env discounted return is reset at episode ends; invalid (autoreset) steps are ignored.
    """

    def __init__(self, num_envs: int, gamma: float, enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        self.enabled, self.gamma, self.clip, self.eps = enabled, gamma, clip, eps
        self.rms = RunningMeanStd(())
        self.ret = torch.zeros(num_envs, dtype=torch.float64)

    def __call__(self, reward: Tensor, done: Tensor, valid: Tensor) -> Tensor:
        if not self.enabled:
            return reward
        v = valid.to(torch.float64)
        self.ret = self.ret * self.gamma * v + reward.to(torch.float64) * v
        self.rms.update(self.ret[valid])
        self.ret = self.ret * (1.0 - done.to(torch.float64))
        scaled = reward / torch.sqrt(self.rms.var + self.eps).float()
        return scaled.clamp(-self.clip, self.clip)

    def reset_episodes(self) -> None:
        self.ret.zero_()

    def state_dict(self) -> dict[str, Tensor]:
        return {**self.rms.state_dict(), "ret": self.ret}

    def load_state_dict(self, s: dict[str, Tensor]) -> None:
        self.rms.load_state_dict(s)
        self.ret = s["ret"].to(torch.float64).clone()
