"""Policy evaluation on a separate vector env: normalizers frozen, deterministic actions by default."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from policyopt.config import EPISODES_MAX, show_limit
from policyopt.control.envs import AutoresetTracker, gym_id, make_vec_env, seeds_for
from policyopt.errors import UserError


def evaluation_seed(seed: int) -> int:
    """The seed of a run's evaluation environments: the named stream ``evaluation`` of the run seed."""
    from policyopt.runs.lifecycle import SeedStreams

    return SeedStreams(seed).seed("evaluation") % (2**31 - 1)


def evaluation_generator(seed: int) -> torch.Generator:
    """The generator of stochastic evaluation actions: the named stream ``evaluation_actions``."""
    from policyopt.runs.lifecycle import SeedStreams

    return SeedStreams(seed).torch("evaluation_actions")


@torch.no_grad()
def evaluate(
    act: Callable[[torch.Tensor], torch.Tensor],
    env_id: str,
    episodes: int,
    seed: int,
    num_envs: int = 8,
    env_kwargs: dict | None = None,
    video_dir: str | Path | None = None,
) -> dict:
    """Run ``episodes`` full episodes; ``act(raw_obs) -> env action`` (the caller applies its frozen
    observation normalizer). Episodes are split evenly across sub-envs in advance (so short episodes
    are not over-counted). Returns mean/std/min/max of the undiscounted return and mean length."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or not 1 <= episodes <= EPISODES_MAX:
        raise UserError(f"evaluation episodes must be an integer in [1, {show_limit(EPISODES_MAX)}], got {episodes!r}")
    if video_dir is not None:
        return _evaluate_video(act, env_id, episodes, seed, env_kwargs, Path(video_dir))
    n = max(1, min(num_envs, episodes))
    eval_seed = evaluation_seed(seed)
    env = make_vec_env(env_id, n, eval_seed, env_kwargs=env_kwargs)
    try:
        target = np.array([episodes // n + (i < episodes % n) for i in range(n)])
        done_count = np.zeros(n, dtype=np.int64)
        tracker = AutoresetTracker(n)
        obs, _ = env.reset(seed=seeds_for(eval_seed, n))
        returns, lengths = [], []
        while (done_count < target).any():
            action = act(torch.as_tensor(obs, dtype=torch.float32))
            obs, r, term, trunc, _ = env.step(action.numpy())
            valid = ~tracker.pending
            ended = (term | trunc) & valid
            _, finished = tracker.step(r, term, trunc)
            for i, (ret, length) in zip(np.flatnonzero(ended), finished):
                if done_count[i] < target[i]:
                    returns.append(ret)
                    lengths.append(length)
                done_count[i] += 1
    finally:
        env.close()
    return _summary(returns, lengths)


def _summary(returns: list[float], lengths: list[int]) -> dict:
    r = np.asarray(returns, dtype=np.float64)
    return {
        "return_mean": float(r.mean()),
        "return_std": float(r.std()),
        "return_min": float(r.min()),
        "return_max": float(r.max()),
        "length_mean": float(np.mean(lengths)),
        "episodes": len(returns),
    }


def _evaluate_video(act, env_id: str, episodes: int, seed: int, env_kwargs: dict | None, video_dir: Path) -> dict:
    import gymnasium as gym

    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise UserError("--video needs moviepy: pip install 'policyopt[video]'") from None
    # Off-screen rendering: no display for pygame (classic control, Box2D); EGL for MuJoCo.
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("MUJOCO_GL", "egl")
    env = gym.make(gym_id(env_id), render_mode="rgb_array", **(env_kwargs or {}))
    env = gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda i: True, disable_logger=True)
    returns, lengths = [], []
    try:
        for ep in range(episodes):
            obs, _ = env.reset(seed=evaluation_seed(seed) + ep)
            ret, length, done = 0.0, 0, False
            while not done:
                a = act(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
                obs, r, term, trunc, _ = env.step(a.numpy())
                ret += float(r)
                length += 1
                done = term or trunc
            returns.append(ret)
            lengths.append(length)
    finally:
        env.close()
    out = _summary(returns, lengths)
    out["videos"] = sorted(str(p) for p in video_dir.glob("*.mp4"))
    return out
