"""Gymnasium 1.x vector environments and episode bookkeeping.

Vector envs use Gymnasium's default *next-step* autoreset: when a sub-env ends at step t
(terminated or truncated), step t returns the true final observation, and step t+1 resets that
sub-env, ignores its action and returns the first observation with reward 0. Trainers must mark that
step t+1 as an invalid transition (``valid = 0``); :class:`AutoresetTracker` does that.
"""

from __future__ import annotations

import numpy as np

from policyopt.errors import UnknownChoice, UserError

VECTORIZATION = ("sync", "async")


def env_ids() -> list[str]:
    import gymnasium as gym

    return sorted(gym.registry)


def check_env_id(env_id: str) -> str | None:
    """Config check: None if ``env_id`` is registered in Gymnasium (``module:Id`` imports ``module``
    first, as ``gymnasium.make`` does), else a message naming close matches and the valid ids."""
    import importlib

    name = env_id
    if ":" in env_id:
        module, _, name = env_id.partition(":")
        try:
            importlib.import_module(module)
        except ImportError:
            return f"names module {module!r}, which cannot be imported"
    if name in env_ids():
        return None
    return "is not a registered Gymnasium environment: " + str(UnknownChoice("environment", name, env_ids()))


def make_vec_env(env_id: str, num_envs: int, seed: int, vectorization: str = "sync",
                 env_kwargs: dict | None = None, render_mode: str | None = None):
    """A Gymnasium vector env (sync by default: on 2 cores it beats async 5-10x for small envs)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    if vectorization not in VECTORIZATION:
        raise UnknownChoice("vectorization", vectorization, VECTORIZATION)
    kwargs = dict(env_kwargs or {})
    if render_mode:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=vectorization,
                           vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP}, **kwargs)
    except gym.error.Error as e:
        raise UserError(f"cannot make environment {env_id!r}: {str(e).splitlines()[0]}") from None
    env.reset(seed=seed)
    return env


def seeds_for(seed: int, num_envs: int, epoch: int = 0) -> list[int]:
    """Distinct, reproducible per-sub-env seeds; ``epoch`` changes them at each env re-seed."""
    base = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return [(base + i) % (2**31 - 1) for i in range(num_envs)]


class AutoresetTracker:
    """Tracks which sub-envs will reset on the next step (their transition is invalid) and the raw
    (un-normalized) return and length of each running episode."""

    def __init__(self, num_envs: int):
        self.pending = np.zeros(num_envs, dtype=bool)
        self.ret = np.zeros(num_envs)
        self.len = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.pending[:] = False
        self.ret[:] = 0
        self.len[:] = 0

    def step(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray):
        """Returns ``(valid, finished)``: the 0/1 validity of this step's transitions and a list of
        ``(return, length)`` for episodes that ended on this step."""
        valid = ~self.pending
        self.ret += np.where(valid, reward, 0.0)
        self.len += valid
        done = (terminated | truncated) & valid
        finished = [(float(self.ret[i]), int(self.len[i])) for i in np.flatnonzero(done)]
        self.ret[done] = 0.0
        self.len[done] = 0
        self.pending = done
        return valid, finished
