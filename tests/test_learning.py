"""Learning tests: fixed seeds, thresholds on the final deterministic evaluation return."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_ppo_cartpole_reaches_475_within_1e5_steps(cli, tmp_path, seed):
    out = tmp_path / f"s{seed}"
    code, _, err = cli(
        "train",
        "ppo",
        "--env",
        "CartPole-v1",
        "--seed",
        str(seed),
        "--total-steps",
        "100000",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "tensorboard=false",
    )
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert ev["step"] <= 100_352 and ev["episodes"] == 10
    assert ev["return_mean"] >= 475, ev


@pytest.mark.slow
def test_ppo_pendulum_preset_reaches_minus_300(cli, tmp_path):
    out = tmp_path / "pend"
    code, _, err = cli(
        "train",
        "ppo",
        "--env",
        "Pendulum-v1",
        "--seed",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "tensorboard=false",
    )
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert ev["step"] <= 102_400  # the preset's stated budget, 1e5 steps, rounded up to whole 4096-step rollouts
    assert ev["return_mean"] >= -300, ev
