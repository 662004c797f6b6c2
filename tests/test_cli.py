"""Command line: bad input gives one line and exit status 2; runs, eval, list; nothing written is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = ["--set", "num_envs=2", "--set", "n_steps=16", "--set", "minibatch_size=16", "--set", "epochs=1",
        "--total-steps", "64", "--no-progress", "--set", "tensorboard=false"]


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("argv, needles", [
    (["train", "ppx", "--env", "CartPole-v1"], ["'ppx'", "ppo", "did you mean"]),
    (["train", "ppo", "--env", "CartPol-v1"], ["'CartPol-v1'", "CartPole-v1"]),
    (["train", "ppo", "--set", "learning_rat=1e-3"], ["'learning_rat'", "learning_rate"]),
    (["train", "ppo", "--set", "learning_rate=fast"], ["'learning_rate'", "'fast'", "float"]),
    (["train", "ppo", "--set", "gamma=1.5"], ["'gamma'", "1.5", "[0, 1]"]),
    (["train", "ppo", "--set", "num_envs=0"], ["'num_envs'", "> 0"]),
    (["train", "ppo", "--set", "policy_loss=clipx"], ["'clipx'", "ppo_clip", "cispo"]),
    (["train", "ppo", "--set", "advantage=gaex"], ["'gaex'", "gae", "grpo"]),
    (["train", "ppo", "--set", "loss.clip_eps_low=2"], ["'loss.clip_eps_low'", "[0, 1]"]),
    (["train", "ppo", "--set", "minibatch_size=7"], ["'minibatch_size'", "divide"]),
    (["train", "ppo", "--set", "nokeyvalue"], ["key=value"]),
    (["train", "ppo", "--config", "/nonexistent.yaml"], ["/nonexistent.yaml"]),
    (["train", "ppo", "--total-steps", "-5"], ["--total-steps"]),
    (["train", "ppo", "--task", "addition"], ["--task", "--env"]),
    (["train", "--resume", "/nonexistent-run"], ["/nonexistent-run", "run.json"]),
    (["eval", "/nonexistent-run"], ["/nonexistent-run"]),
    (["train", "ppo", "--seed", "abc"], ["--seed", "'abc'"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_bad_input_is_one_line_exit_2(cli, argv, needles):
    code, out, err = cli(*argv)
    _one_line_error(code, err, *needles)


def test_bad_yaml_value_and_unknown_yaml_key(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_steps: [1, 2\n")
    code, _, err = cli("train", "ppo", "--config", str(bad))
    _one_line_error(code, err, "not valid YAML")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("loss:\n  clip_eps_lo: 0.1\n")
    code, _, err = cli("train", "ppo", "--config", str(unknown))
    _one_line_error(code, err, "'loss.clip_eps_lo'", "clip_eps_low")


def test_console_script_exit_status_and_no_traceback():
    exe = Path(sys.executable).parent / "policyopt"
    p = subprocess.run([str(exe), "train", "nope"], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_train_writes_a_complete_run_dir_and_refuses_to_overwrite_it(cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli("train", "ppo", "--env", "CartPole-v1", "--out", str(out), "--seed", "3", *TINY)
    assert code == 0, err
    summary = json.loads(stdout.splitlines()[0])
    assert summary["steps"] == 64 and "eval_return_mean" in summary
    assert f"run directory: {out}" in stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["seed"] == 3 and cfg["num_envs"] == 2 and cfg["env_id"] == "CartPole-v1"
    assert cfg["gamma"] == 0.98  # the tuned CartPole-v1 preset was applied under the --set overrides
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert (out / "checkpoints" / "latest.safetensors").is_file()
    assert "eval/return_mean" in (out / "metrics.csv").read_text()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = cli("train", "ppo", "--env", "CartPole-v1", "--out", str(out), *TINY)
    _one_line_error(code, err, "already holds a run", "--resume")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    code, stdout, err = cli("eval", str(out), "--episodes", "3")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["episodes"] == 3 and res["return_mean"] > 0
    code, _, err = cli("train", "--resume", str(out))
    _one_line_error(code, err, "already finished")


def test_config_file_and_set_precedence(cli, tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("learning_rate: 0.002\nloss:\n  clip_eps_low: 0.1\nhidden: [16, 16]\n")
    out = tmp_path / "run"
    code, _, err = cli("train", "a2c", "--env", "CartPole-v1", "--config", str(f), "--set", "learning_rate=0.003",
                       "--out", str(out), "--set", "num_envs=2", "--set", "n_steps=8", "--set", "minibatch_size=16",
                       "--total-steps", "32", "--no-progress", "--set", "tensorboard=false")
    assert code == 0, err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["learning_rate"] == 0.003 and cfg["loss"]["clip_eps_low"] == 0.1 and cfg["hidden"] == [16, 16]
    assert cfg["optimizer"] == "rmsprop" and cfg["policy_loss"] == "pg"  # a2c preset


def test_list_shows_every_box(cli):
    code, out, _ = cli("list")
    assert code == 0
    for name in ["ppo", "a2c", "reinforce", "gae", "grpo", "rloo", "ppo_clip", "cispo", "gspo", "token-mean",
                 "seq-mean-token-sum-norm", "k3", "CartPole-v1"]:
        assert name in out, name


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(cli, tmp_path):
    from policyopt.runs.checkpoint import load_checkpoint

    out = tmp_path / "run"
    code, _, err = cli("train", "ppo", "--env", "policyopt_test/NaNReward-v0", "--out", str(out),
                       "--set", "num_envs=1", "--set", "n_steps=32", "--set", "minibatch_size=32",
                       "--set", "checkpoint_every=32", "--total-steps", "2000", "--no-progress",
                       "--set", "tensorboard=false")
    assert code == 1
    assert "non-finite loss" in err and "last good checkpoint" in err and "Traceback" not in err
    state = load_checkpoint(out / "checkpoints" / "latest.safetensors")
    assert 0 < state["counters"]["global_step"] <= 224  # saved before the NaN rewards (after step 200)
    import torch

    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def test_eval_records_videos(cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli("train", "ppo", "--env", "CartPole-v1", "--out", str(out), *TINY)
    assert code == 0, err
    code, stdout, err = cli("eval", str(out), "--episodes", "2", "--video")
    assert code == 0, err
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == 2 and all(v.stat().st_size > 1000 for v in videos)
    assert json.loads(stdout)["episodes"] == 2


def test_async_vector_env_gives_the_same_run_as_sync(cli, tmp_path):
    from policyopt.runs.checkpoint import load_checkpoint

    finals = []
    for mode in ("sync", "async"):
        out = tmp_path / mode
        code, _, err = cli("train", "ppo", "--env", "CartPole-v1", "--out", str(out), "--set", f"vectorization={mode}",
                           *TINY)
        assert code == 0, err
        finals.append(load_checkpoint(out / "checkpoints" / "latest.safetensors")["model"])
    import torch

    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])
