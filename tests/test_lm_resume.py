"""An LM run stopped during the warm-start or mid-RL and resumed ends exactly like an uninterrupted run: the same
parameters, optimizer moments, KL reference, seed streams, metrics, samples and final evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policyopt.cli.main import main
from policyopt.lm import trainer as lm_trainer
from policyopt.runs.checkpoint import load_checkpoint

pytest.importorskip("transformers")

SETS = {
    "sft_steps": 40,
    "sft_check_every": 10,
    "sft_check_size": 8,
    "sft_target_accuracy": 0.0,
    "sft_batch": 16,
    "eval_size": 8,
    "eval_k": 2,
    "prompts_per_step": 4,
    "group_size": 4,
    "checkpoint_every": 2,
    "beta": 0.04,
    "log_samples": 2,
    "tensorboard": False,
    "rewards": "{exact_match: 1.0, format: 0.5}",  # a learning signal after the short warm-start, whatever the draws
}
ARGV = ["--total-steps", "6", "--no-progress", *(x for k, v in SETS.items() for x in ("--set", f"{k}={v}"))]


def _train(out):
    return main(["train", "grpo", "--out", str(out), *ARGV])


def _stop_at(monkeypatch, stage, iteration):
    """Stop the run (as an interrupt) right after ``stage``'s update of ``iteration``: past the last checkpoint,
    with metrics, samples and optimizer state already ahead of it."""
    real = stage.update

    def update(self, run, batch):
        out = real(self, run, batch)
        if run.iteration == iteration:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(stage, "update", update)


def _rows(out):
    rows = [r.split(",") for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    return [(r[0], r[2], r[3]) for r in rows if not r[2].startswith("perf/")]  # perf/* are wall-clock rates


def _flat(state, prefix=""):
    if isinstance(state, dict):
        for k, v in state.items():
            yield from _flat(v, f"{prefix}.{k}")
    elif isinstance(state, list | tuple):
        for i, v in enumerate(state):
            yield from _flat(v, f"{prefix}.{i}")
    else:
        yield prefix, state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "ref"
    assert _train(out) == 0
    return out


@pytest.mark.parametrize("stage, iteration", [(lm_trainer.WarmStart, 25), (lm_trainer.RL, 5)], ids=["warm-start", "rl"])
def test_stopped_and_resumed_run_matches_the_uninterrupted_one(uninterrupted, tmp_path, monkeypatch, stage, iteration):
    out = tmp_path / "stopped"
    with monkeypatch.context() as m:
        _stop_at(m, stage, iteration)
        assert _train(out) == 130  # the CLI reports the interrupt
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    life = load_checkpoint(out / "checkpoints" / "latest.safetensors")["lifecycle"]
    assert (life["stage"], life["iteration"]) == ((0, 20) if stage is lm_trainer.WarmStart else (1, 4))
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0

    a = dict(_flat(load_checkpoint(uninterrupted / "checkpoints" / "latest.safetensors")))
    b = dict(_flat(load_checkpoint(out / "checkpoints" / "latest.safetensors")))
    assert a.keys() == b.keys() and any(k.startswith(".reference.") for k in a)
    for k in a:
        if k.startswith(".lifecycle.metrics_rows"):
            continue
        same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else np.array_equal(a[k], b[k])
        assert same, k
    assert _rows(out) == _rows(uninterrupted)  # no step logged twice, every value identical
    rewards = [float(r[2]) for r in _rows(out) if r[1] == "reward/std"]
    assert max(rewards) > 0  # the RL steps had a learning signal
    assert (out / "samples.jsonl").read_text() == (uninterrupted / "samples.jsonl").read_text()
    assert json.loads((out / "eval.json").read_text()) == json.loads((uninterrupted / "eval.json").read_text())


def test_reference_is_the_policy_at_the_start_of_rl(uninterrupted):
    """beta > 0 after a warm-start: at the first RL step pi_old is the reference, so KL(pi_old || ref) is 0."""
    rows = [r for r in _rows(uninterrupted) if r[1] == "stats/kl_ref"]
    assert float(rows[0][2]) == 0.0 and rows[0][0] == "1" and float(rows[-1][2]) > 0


def test_lora_reference_is_the_adapter_after_the_warm_start(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    lora = ["--set", "lora_r=4", "--set", "sft_lr=0.01", "--set", "learning_rate=0.01", "--set", "ent_coef=0.5"]
    assert main(["train", "grpo", "--out", str(out), *ARGV, *lora, "--total-steps", "3"]) == 0
    kl = [float(r[2]) for r in _rows(out) if r[1] == "stats/kl_ref"]
    sft = [float(r[2]) for r in _rows(out) if r[1] == "loss/sft"]
    assert sft[0] > sft[-1]  # the warm-start trained the adapter, so the adapter-disabled base is not the RL start
    assert kl[0] == 0.0 and kl[-1] > 0  # the entropy bonus moves the adapter away from the reference


@pytest.mark.parametrize("kill_after", [0.0, 0.3])
def test_sigkill_at_a_random_moment_and_resume_matches(uninterrupted, tmp_path, kill_after):
    """As the control trainers' test: a real SIGKILL of the CLI process some time after a checkpoint (during the
    warm-start or RL, wherever it lands), then --resume: same parameters, streams, metrics and evaluation."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "killed"
    exe = Path(sys.executable).parent / "policyopt"
    proc = subprocess.Popen(
        [str(exe), "train", "grpo", "--out", str(out), *ARGV], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = out / "checkpoints" / "latest.safetensors"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(kill_after)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed on this machine")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # a kill that lands after the final evaluation was written leaves nothing to do: resume says so (exit 2)
    finished = (out / "eval.json").exists()
    assert main(["train", "--resume", str(out), "--no-progress"]) == (2 if finished else 0)
    a = dict(_flat(load_checkpoint(uninterrupted / "checkpoints" / "latest.safetensors")))
    b = dict(_flat(load_checkpoint(ckpt)))
    assert a.keys() == b.keys()
    for k in a:
        if not k.startswith(".lifecycle.metrics_rows"):
            same = torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else np.array_equal(a[k], b[k])
            assert same, k
    assert _rows(out) == _rows(uninterrupted)
    assert (out / "samples.jsonl").read_text() == (uninterrupted / "samples.jsonl").read_text()
    assert json.loads((out / "eval.json").read_text()) == json.loads((uninterrupted / "eval.json").read_text())
