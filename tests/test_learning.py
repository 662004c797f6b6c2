"""Learning tests: fixed seeds, thresholds on the final deterministic evaluation return."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_ppo_cartpole_seeds_1_to_3_reach_475_within_1e5_steps(cli, tmp_path):
    """Three seeds as one population (``--seeds``, the batched trainer): every member's final evaluation."""
    out = tmp_path / "pop"
    code, stdout, err = cli(
        "train",
        "ppo",
        "--env",
        "CartPole-v1",
        "--seeds",
        "1-3",
        "--total-steps",
        "100000",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "tensorboard=false",
    )
    assert code == 0, err
    for seed in (1, 2, 3):
        ev = json.loads((out / f"seed-{seed}" / "eval.json").read_text())
        assert ev["step"] <= 100_352 and ev["episodes"] == 10
        assert ev["return_mean"] >= 475, (seed, ev)
        info = json.loads((out / f"seed-{seed}" / "run.json").read_text())
        assert info["population"]["size"] == 3, info


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
