"""A run killed (SIGKILL) and resumed ends with exactly the parameters of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from policyopt.runs.checkpoint import load_checkpoint

ARGS = [
    "--set",
    "num_envs=2",
    "--set",
    "n_steps=16",
    "--set",
    "minibatch_size=16",
    "--set",
    "epochs=2",
    "--set",
    "checkpoint_every=32",
    "--set",
    "norm_obs=true",
    "--set",
    "norm_reward=true",
    "--total-steps",
    "4000",
    "--seed",
    "5",
    "--no-progress",
    "--set",
    "tensorboard=false",
]


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_kill_and_resume_matches_uninterrupted_run(cli, tmp_path, env):
    ref = tmp_path / "ref"
    code, _, err = cli("train", "ppo", "--env", env, "--out", str(ref), *ARGS)
    assert code == 0, err

    run = tmp_path / "killed"
    exe = Path(sys.executable).parent / "policyopt"
    proc = subprocess.Popen(
        [str(exe), "train", "ppo", "--env", env, "--out", str(run), *ARGS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpt = run / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)  # let it run on past the first checkpoint, mid-iteration
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["counters"]["global_step"]
    assert 0 < killed_at < 4000

    code, _, err = cli("train", "--resume", str(run))
    assert code == 0, err
    a = load_checkpoint(ref / "checkpoints" / "latest.safetensors")
    b = load_checkpoint(ckpt)
    assert a["counters"] == b["counters"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in ("mean", "var", "count"):
        assert torch.equal(a["obs_norm"][k], b["obs_norm"][k])
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])
    # the metrics CSV has no duplicated rows after the resume point
    rows = [r.split(",")[:3] for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert len(rows) == len({tuple(r[::2]) for r in rows})


TINY = {
    "ppo": [
        "--env",
        "CartPole-v1",
        "--set",
        "num_envs=2",
        "--set",
        "n_steps=16",
        "--set",
        "minibatch_size=16",
        "--total-steps",
        "64",
    ],
    "sac": [
        "--env",
        "Pendulum-v1",
        "--set",
        "actor_hidden=[16,16]",
        "--set",
        "critic_hidden=[16,16]",
        "--set",
        "learning_starts=50",
        "--set",
        "eval_episodes=2",
        "--total-steps",
        "100",
    ],
}


@pytest.mark.parametrize("algo", sorted(TINY))
def test_run_stopped_before_its_final_evaluation_resumes_to_it(cli, tmp_path, algo):
    """Killed after the last checkpoint but before the final evaluation: --resume only evaluates."""
    import json

    out = tmp_path / "run"
    code, _, err = cli("train", algo, "--out", str(out), "--no-progress", "--set", "tensorboard=false", *TINY[algo])
    assert code == 0, err
    first = json.loads((out / "eval.json").read_text())
    (out / "eval.json").unlink()
    ckpt = (out / "checkpoints" / "latest.safetensors").read_bytes()
    code, _, err = cli("train", "--resume", str(out))
    assert code == 0, err
    again = json.loads((out / "eval.json").read_text())
    assert again["step"] == first["step"] and again["return_mean"] == first["return_mean"]
    assert (out / "checkpoints" / "latest.safetensors").read_bytes() == ckpt  # no training happened
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    finals = [r for r in rows if r[2] == "eval/return_mean" and int(r[0]) == first["step"]]
    assert len(finals) == 1  # the first final evaluation's rows were cut back with the checkpoint's row count
    code, _, err = cli("train", "--resume", str(out))
    assert code == 2 and "already finished" in err
