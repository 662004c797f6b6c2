"""Array forms of Gymnasium environments that step every sub-env in a few NumPy operations, bit for bit as
Gymnasium's own sync vector env of the same environments (next-step autoreset, time limit) steps them.

Only the dynamics are vectorized: every sub-env keeps its Gymnasium instance for resets, so the initial states
come from the sub-env's own seeded generator exactly as they do in Gymnasium. :func:`array_vec_env` returns one
when the environment has an array form and no ``env_kwargs``, else None (the caller then uses
:func:`~policyopt.control.envs.make_vec_env`). The equality with Gymnasium is checked in the tests.
"""

from __future__ import annotations

import numpy as np


class CartPoleArray:
    """``num_envs`` CartPole-v1 sub-envs (Barto, Sutton & Anderson, 1983, as Gymnasium implements them: Euler
    integration, 500-step limit); same interface as the vector env the on-policy trainers use."""

    def __init__(self, num_envs: int, max_episode_steps: int = 500):
        import gymnasium as gym

        self.num_envs, self.max_steps = num_envs, max_episode_steps
        self.envs = [gym.make("CartPole-v1").unwrapped for _ in range(num_envs)]
        c = self.envs[0]
        self.c = c
        self.single_observation_space, self.single_action_space = c.observation_space, c.action_space
        self.state = np.zeros((num_envs, 4))
        self.elapsed = np.zeros(num_envs, dtype=np.int64)
        self.autoreset = np.zeros(num_envs, dtype=bool)

    def _reset(self, i: int, seed: int | None = None) -> None:
        self.envs[i].reset(seed=seed)
        self.state[i] = self.envs[i].state
        self.elapsed[i] = 0

    def reset(self, seed: list[int] | None = None):
        for i in range(self.num_envs):
            self._reset(i, None if seed is None else int(seed[i]))
        self.autoreset[:] = False
        return self.state.astype(np.float32), {}

    def step(self, actions):
        """Gymnasium's ``CartPoleEnv.step`` formulas, in the same order, on all sub-envs at once."""
        c, a = self.c, np.asarray(actions)
        x, x_dot, theta, theta_dot = self.state.T
        force = np.where(a == 1, c.force_mag, -c.force_mag)
        costheta, sintheta = np.cos(theta), np.sin(theta)
        temp = (force + c.polemass_length * np.square(theta_dot) * sintheta) / c.total_mass
        thetaacc = (c.gravity * sintheta - costheta * temp) / (
            c.length * (4.0 / 3.0 - c.masspole * np.square(costheta) / c.total_mass)
        )
        xacc = temp - c.polemass_length * thetaacc * costheta / c.total_mass
        state = np.stack(
            [x + c.tau * x_dot, x_dot + c.tau * xacc, theta + c.tau * theta_dot, theta_dot + c.tau * thetaacc], 1
        )
        nx, nth = state[:, 0], state[:, 2]
        terminated = (nx < -c.x_threshold) | (nx > c.x_threshold)
        terminated |= (nth < -c.theta_threshold_radians) | (nth > c.theta_threshold_radians)
        self.elapsed += 1
        truncated = self.elapsed >= self.max_steps
        reward = np.ones(self.num_envs)
        self.state = state
        for i in np.flatnonzero(self.autoreset):  # next-step autoreset: this step resets the sub-env
            self._reset(i)
            reward[i], terminated[i], truncated[i] = 0.0, False, False
        self.autoreset = terminated | truncated
        return self.state.astype(np.float32), reward, terminated, truncated, {}

    def close(self) -> None:
        for e in self.envs:
            e.close()


ARRAY_ENVS = {"CartPole-v1": CartPoleArray}


def array_vec_env(env_id: str, num_envs: int, env_kwargs: dict | None):
    """The array form of ``env_id`` with ``num_envs`` sub-envs, or None when it has none (or ``env_kwargs``)."""
    cls = ARRAY_ENVS.get(env_id)
    return cls(num_envs) if cls is not None and not env_kwargs else None
