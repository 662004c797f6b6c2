"""Shared test fixtures: test-only Gymnasium environments and CLI helpers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

torch.set_num_threads(1)


class NaNRewardCartPole(gym.Wrapper):
    """CartPole whose reward becomes NaN after ``nan_after`` steps (to test the non-finite-loss stop)."""

    def __init__(self, nan_after: int = 200):
        super().__init__(gym.make("CartPole-v1"))
        self.nan_after, self.t = nan_after, 0

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        self.t += 1
        return obs, (float("nan") if self.t > self.nan_after else r), term, trunc, info


class CountdownEnv(gym.Env):
    """Observation = steps left; reward 1 per step; terminates at 0 (or truncates via TimeLimit)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 3):
        self.length, self.left = length, length

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.left = self.length
        return np.array([self.left], np.float32), {}

    def step(self, action):
        self.left -= 1
        return np.array([self.left], np.float32), 1.0, self.left == 0, False, {}


if "policyopt_test/NaNReward-v0" not in gym.registry:
    gym.register("policyopt_test/NaNReward-v0", entry_point=NaNRewardCartPole, max_episode_steps=500)
    gym.register("policyopt_test/Countdown-v0", entry_point=CountdownEnv)


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit_code, stdout, stderr)."""
    from policyopt.cli.main import main

    def run(*argv: str):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
