"""Learning tests of the seeds' on-policy presets on CartPole-v1 (fixed seed, short budget, threshold on
the final deterministic evaluation; a random policy scores about 20)."""

from __future__ import annotations

import json

import pytest

BUDGET = {"props": 30_000, "mdpo": 50_000, "ppo_ewma": 30_000, "fixpo": 40_000}
THRESHOLD = 150


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(BUDGET))
def test_preset_learns_cartpole(cli, tmp_path, algo):
    out = tmp_path / algo
    code, _, err = cli(
        "train",
        algo,
        "--env",
        "CartPole-v1",
        "--seed",
        "1",
        "--total-steps",
        str(BUDGET[algo]),
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "tensorboard=false",
    )
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert ev["return_mean"] >= THRESHOLD, ev
    metrics = (out / "metrics.csv").read_text()
    assert "diag/sampling_error" in metrics
    if algo == "fixpo":
        assert "fixpo/extra_step_frac" in metrics
