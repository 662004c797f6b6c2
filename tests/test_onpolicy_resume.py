"""Kill-and-resume for the presets with extra trainer state: the PROPS behaviour policy, its optimizer
and buffer; PPO-EWMA's proximal weights and advantage statistics; FixPO's beta and its optimizer."""

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
    "--env",
    "CartPole-v1",
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
    "--total-steps",
    "3000",
    "--seed",
    "5",
    "--no-progress",
    "--set",
    "tensorboard=false",
]
EXTRA = {"props": ["--set", "props.every=16", "--set", "props.epochs=4"], "ppo_ewma": [], "fixpo": []}


def _tensors(x, prefix=""):
    if isinstance(x, torch.Tensor):
        yield prefix, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(x, list | tuple):
        for i, v in enumerate(x):
            yield from _tensors(v, f"{prefix}.{i}")


@pytest.mark.parametrize("algo", ["props", "ppo_ewma", "fixpo"])
def test_kill_and_resume_matches_uninterrupted_run(cli, tmp_path, algo):
    args = ARGS + EXTRA[algo]
    ref = tmp_path / "ref"
    code, _, err = cli("train", algo, "--out", str(ref), *args)
    assert code == 0, err

    run = tmp_path / "killed"
    exe = Path(sys.executable).parent / "policyopt"
    proc = subprocess.Popen(
        [str(exe), "train", algo, "--out", str(run), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = run / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_checkpoint(ckpt)["counters"]["global_step"]
    assert 0 < killed_at < 3000

    code, _, err = cli("train", "--resume", str(run))
    assert code == 0, err
    a, b = load_checkpoint(ref / "checkpoints" / "latest.safetensors"), load_checkpoint(ckpt)
    assert a["counters"] == b["counters"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ta, tb = dict(_tensors(a["boxes"])), dict(_tensors(b["boxes"]))
    assert ta.keys() == tb.keys() and ta, "the boxes' state must be checkpointed"
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    expected = {"props": ".sampler.behaviour", "ppo_ewma": ".proximal.net", "fixpo": ".trust_region.beta"}[algo]
    assert any(k.startswith(expected) for k in ta), sorted(ta)
    if algo == "props":
        assert any(k.startswith(".sampler.blocks.0.obs") for k in ta) and any("optimizer" in k for k in ta)
    if algo == "fixpo":
        assert a["boxes"]["trust_region"]["counts"] == b["boxes"]["trust_region"]["counts"]
