"""Replay buffer of preallocated torch tensors, laid out as ``[time, sub-env]``.

Every call to :meth:`ReplayBuffer.add` writes one row: the transition of each sub-env at one vector-env
step, ``(obs, action, reward, next_obs, terminated, truncated, valid)``. ``next_obs`` is the *true*
next observation, including the final observation of a truncated (or terminated) episode: with
Gymnasium's next-step autoreset that is the observation returned by the step that ended the episode.
The following autoreset step of that sub-env is stored with ``valid = 0`` (its action was ignored);
it may be sampled but carries weight 0 in every loss (``valid`` in the batch; about 1/episode-length
of the samples), and n-step returns never cross it because they stop at the end of an episode.

n-step returns (Sutton, 1988; Hessel et al., 2018 "Rainbow") are computed at *sample* time from the
stored 1-step rows: ``R = sum_{k<m} gamma^k r_{t+k}`` where ``m <= n`` stops at the first terminated or
truncated step, or at the newest row written. The batch carries ``discount = gamma^m``, ``terminated``
and ``next_obs`` of the row where the sum stopped, so a truncated episode is bootstrapped from its final
observation and a terminated one is not bootstrapped.

The buffer is saved inside the checkpoint (only the filled rows) so a resumed run is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    obs: Tensor
    action: Tensor
    reward: Tensor  # n-step discounted sum of rewards
    next_obs: Tensor  # observation to bootstrap from
    terminated: Tensor  # 0/1 float: no bootstrap
    discount: Tensor  # gamma ** (steps summed)
    valid: Tensor  # 0/1 float: 0 for the autoreset step that follows an episode end


class ReplayBuffer:
    def __init__(
        self,
        capacity: int,
        num_envs: int,
        obs_dim: int,
        act_dim: int,
        n_step: int = 1,
        gamma: float = 0.99,
        device: str | torch.device = "cpu",
    ):
        self.rows = max(1, -(-capacity // num_envs))  # rows of num_envs transitions
        self.N, self.n_step, self.gamma = num_envs, n_step, gamma
        R, N = self.rows, num_envs
        f = dict(dtype=torch.float32, device=device)
        self.obs = torch.zeros((R * N, obs_dim), **f)
        self.next_obs = torch.zeros((R * N, obs_dim), **f)
        self.action = torch.zeros((R * N, act_dim), **f)
        self.reward = torch.zeros(R * N, **f)
        self.terminated = torch.zeros(R * N, **f)
        self.truncated = torch.zeros(R * N, **f)
        self.valid = torch.zeros(R * N, **f)
        self.pos = 0  # next row to write
        self.full = False

    def __len__(self) -> int:
        return (self.rows if self.full else self.pos) * self.N

    def add(
        self,
        obs: Tensor,
        action: Tensor,
        reward: Tensor,
        next_obs: Tensor,
        terminated: Tensor,
        truncated: Tensor,
        valid: Tensor,
    ) -> None:
        """Write one vector-env step (each argument has leading dimension ``num_envs``)."""
        s = slice(self.pos * self.N, (self.pos + 1) * self.N)
        self.obs[s] = obs
        self.action[s] = action
        self.reward[s] = reward
        self.next_obs[s] = next_obs
        self.terminated[s] = terminated
        self.truncated[s] = truncated
        self.valid[s] = valid
        self.pos += 1
        if self.pos == self.rows:
            self.pos, self.full = 0, True

    def mark_truncated_last(self) -> None:
        """End every open episode at the newest row (as a time limit: still bootstrapped from its
        ``next_obs``); used when the trainer re-seeds the environments at a checkpoint boundary."""
        last = (self.pos - 1) % self.rows
        self.truncated[last * self.N : (last + 1) * self.N] = 1.0

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        """Uniform sample of ``batch_size`` stored transitions (indices drawn with ``torch.randint``)."""
        return self.gather(torch.randint(len(self), (batch_size,), generator=generator, device=self.obs.device))

    def gather(self, idx: Tensor) -> Batch:
        """The batch of the transitions at flat indices ``idx`` (``row * num_envs + env``)."""
        if self.n_step == 1:
            return Batch(
                self.obs[idx],
                self.action[idx],
                self.reward[idx],
                self.next_obs[idx],
                self.terminated[idx],
                torch.full_like(self.reward[idx], self.gamma),
                self.valid[idx],
            )
        return self._sample_n_step(idx)

    def _sample_n_step(self, idx: Tensor) -> Batch:
        N, R = self.N, self.rows
        row, env = idx // N, idx % N
        age = (self.pos - row - 1) % R + 1  # rows written from `row` to the newest, inclusive
        ret = self.reward[idx].clone()
        disc = torch.full_like(ret, self.gamma)
        last = idx
        alive = (self.terminated[idx] + self.truncated[idx]) == 0
        for k in range(1, self.n_step):
            j = ((row + k) % R) * N + env
            go = alive & (k < age)
            ret = torch.where(go, ret + disc * self.reward[j], ret)
            disc = torch.where(go, disc * self.gamma, disc)
            last = torch.where(go, j, last)
            alive = go & ((self.terminated[j] + self.truncated[j]) == 0)
        return Batch(
            self.obs[idx],
            self.action[idx],
            ret,
            self.next_obs[last],
            self.terminated[last],
            disc,
            self.valid[idx],
        )

    _KEYS = ("obs", "next_obs", "action", "reward", "terminated", "truncated", "valid")

    def state_dict(self) -> dict:
        n = len(self)
        return {**{k: getattr(self, k)[:n] for k in self._KEYS}, "pos": self.pos, "full": self.full}

    def load_state_dict(self, s: dict) -> None:
        for k in self._KEYS:
            getattr(self, k)[: s[k].shape[0]] = s[k]
        self.pos, self.full = int(s["pos"]), bool(s["full"])
