"""Command line: bad input gives one line and exit status 2; runs, eval, list; nothing written is lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TINY = [
    "--set",
    "num_envs=2",
    "--set",
    "n_steps=16",
    "--set",
    "minibatch_size=16",
    "--set",
    "epochs=1",
    "--total-steps",
    "64",
    "--no-progress",
    "--set",
    "tensorboard=false",
]


def _one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv, needles",
    [
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
    ],
)
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
    code, _, err = cli(
        "train",
        "a2c",
        "--env",
        "CartPole-v1",
        "--config",
        str(f),
        "--set",
        "learning_rate=0.003",
        "--out",
        str(out),
        "--set",
        "num_envs=2",
        "--set",
        "n_steps=8",
        "--set",
        "minibatch_size=16",
        "--total-steps",
        "32",
        "--no-progress",
        "--set",
        "tensorboard=false",
    )
    assert code == 0, err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["learning_rate"] == 0.003 and cfg["loss"]["clip_eps_low"] == 0.1 and cfg["hidden"] == [16, 16]
    assert cfg["optimizer"] == "rmsprop" and cfg["policy_loss"] == "pg"  # a2c preset


def test_list_shows_every_box(cli):
    code, out, _ = cli("list")
    assert code == 0
    for name in [
        "ppo",
        "a2c",
        "reinforce",
        "gae",
        "grpo",
        "rloo",
        "ppo_clip",
        "cispo",
        "gspo",
        "token-mean",
        "seq-mean-token-sum-norm",
        "k3",
        "CartPole-v1",
    ]:
        assert name in out, name


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(cli, tmp_path):
    from policyopt.runs.checkpoint import load_checkpoint

    out = tmp_path / "run"
    code, _, err = cli(
        "train",
        "ppo",
        "--env",
        "policyopt_test/NaNReward-v0",
        "--out",
        str(out),
        "--set",
        "num_envs=1",
        "--set",
        "n_steps=32",
        "--set",
        "minibatch_size=32",
        "--set",
        "checkpoint_every=32",
        "--total-steps",
        "2000",
        "--no-progress",
        "--set",
        "tensorboard=false",
    )
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
        code, _, err = cli(
            "train", "ppo", "--env", "CartPole-v1", "--out", str(out), "--set", f"vectorization={mode}", *TINY
        )
        assert code == 0, err
        finals.append(load_checkpoint(out / "checkpoints" / "latest.safetensors")["model"])
    import torch

    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


# ============================================================================ config, list, custom code, rounding
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _doc_module(name: str) -> str:
    """The ```python block of docs/custom.md whose first line is ``# NAME``."""
    import re

    for block in re.findall(r"```python\n(.*?)```", (DOCS / "custom.md").read_text(), re.S):
        if block.splitlines()[0] == f"# {name}":
            return block
    raise AssertionError(f"docs/custom.md has no block for {name}")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The current directory is tmp_path; sys.path, user modules and the Gymnasium registry are restored."""
    import gymnasium as gym

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules, envs = set(sys.modules), set(gym.registry)
    yield tmp_path
    for name in set(sys.modules) - modules:
        if str(tmp_path) in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]
    for env_id in set(gym.registry) - envs:
        del gym.registry[env_id]


def test_config_prints_the_resolved_config_without_training(cli, tmp_path):
    from policyopt import algos
    from policyopt.config import resolve

    code, out, err = cli(
        "config",
        "ppo",
        "--env",
        "CartPole-v1",
        "--set",
        "learning_rate=1e-3",
        "--set",
        "env_kwargs.max_episode_steps=50",
        "--set",
        "hidden=[32, 16]",
        "--seed",
        "7",
    )
    assert code == 0, err
    cfg = yaml.safe_load(out)
    assert cfg["learning_rate"] == 0.001 and cfg["seed"] == 7 and cfg["hidden"] == [32, 16]
    assert cfg["env_kwargs"] == {"max_episode_steps": 50}  # an int, read with YAML rules inside the dict field
    assert cfg["gamma"] == 0.98  # the tuned CartPole-v1 preset
    # what `config` prints is exactly what `train` would run with
    built = algos.build_config(
        "ppo",
        sets={"learning_rate": "1e-3", "env_kwargs.max_episode_steps": 50, "hidden": [32, 16]},
        flags={"env_id": "CartPole-v1", "seed": 7},
    )
    assert resolve(type(built)(), cfg) == built
    assert list(tmp_path.iterdir()) == []  # nothing written
    code, out, _ = cli("config", "grpo", "--task", "addition3", "--set", "rewards.exact_match=2")
    assert code == 0 and yaml.safe_load(out)["task"] == "addition3"
    assert yaml.safe_load(out)["rewards"] == {"exact_match": 2}


def test_config_keys_lists_every_key_with_type_default_value_and_help(cli):
    from policyopt.config import describe
    from policyopt.control.onpolicy import OnPolicyConfig

    code, out, err = cli("config", "ppo", "--keys", "--set", "learning_rate=0.001", "--set", "epochs=7")
    assert code == 0, err
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
        for line in out.splitlines()
        if line.startswith("│") and line.split("│")[1].strip()
    }
    for key, tp, _default, _help in describe(OnPolicyConfig):
        assert key in rows, key
        assert rows[key][0] == tp, key
    assert rows["learning_rate"][1:3] == ["0.00025", "0.001 *"]  # default, current value (changed)
    assert rows["epochs"][1:3] == ["4", "7 *"]
    assert rows["vectorization"][1:3] == ["'sync'", "'sync'"]
    assert rows["learning_rate"][3] == "learning rate"


def test_list_tasks_rewards_envs(cli):
    code, out, _ = cli("list", "tasks")
    assert code == 0 and "addition3" in out and "rg:<name>" in out and "--dataset" in out
    code, out, _ = cli("list", "rewards")
    assert code == 0
    for name in ("exact_match", "numeric", "format", "math_verify", "rg_score", "module:function"):
        assert name in out, name
    code, out, _ = cli("list", "envs")
    assert code == 0
    for env_id in ("CartPole-v1", "Pendulum-v1", "LunarLander-v3", "HalfCheetah-v5"):
        assert env_id in out, env_id
    code, out, _ = cli("list")
    assert "addition3" in out and "exact_match" in out and "Gymnasium environments" not in out  # only on request


def test_help_says_the_current_directory_is_importable(cli):
    code, out, _ = cli("train", "--help")
    assert code == 0 and "current" in out and "directory" in out and "module:Class" in out


def test_custom_environment_class_and_registered_id_as_documented(cli, in_tmp):
    import gymnasium as gym

    (in_tmp / "corridor.py").write_text(_doc_module("corridor.py"))
    small = [
        "--set",
        "num_envs=2",
        "--set",
        "n_steps=64",
        "--set",
        "minibatch_size=64",
        "--set",
        "epochs=2",
        "--total-steps",
        "512",
        "--no-progress",
        "--set",
        "tensorboard=false",
    ]
    code, _, err = cli(
        "train",
        "ppo",
        "--env",
        "corridor:Corridor",
        "--set",
        "env_kwargs.length=4",
        "--set",
        "env_kwargs.max_episode_steps=50",
        "--out",
        "runs/corridor",
        *small,
    )
    assert code == 0, err
    run = in_tmp / "runs/corridor"
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    ev = json.loads((run / "eval.json").read_text())
    assert 4 <= ev["length_mean"] <= 50  # at least the corridor's length, at most the time limit
    assert yaml.safe_load((run / "config.yaml").read_text())["env_kwargs"] == {"length": 4, "max_episode_steps": 50}
    code, _, err = cli("train", "ppo", "--env", "corridor:Corridor-v0", "--out", "runs/corridor-v0", *small)
    assert code == 0, err
    assert (in_tmp / "runs/corridor-v0/eval.json").is_file()
    # a later process: nothing registered, the module not imported; eval finds the class from the saved env_id
    for env_id in [e for e in gym.registry if e.startswith("Corridor")]:
        del gym.registry[env_id]
    del sys.modules["corridor"]
    code, out, err = cli("eval", "runs/corridor", "--episodes", "3")
    assert code == 0, err
    assert json.loads(out)["episodes"] == 3 and 4 <= json.loads(out)["length_mean"] <= 50


def test_documented_import_error_is_what_the_cli_prints(cli, in_tmp):
    (in_tmp / "corridor.py").write_text(_doc_module("corridor.py").replace("(gym.Env)", "(gym.Evn)"))
    code, _, err = cli("train", "ppo", "--env", "corridor:Corridor", "--out", "run")
    expected = [line for line in (DOCS / "custom.md").read_text().splitlines() if line.startswith("policyopt: error")]
    assert code == 2 and err.strip() == expected[0]
    assert not (in_tmp / "run").exists()


def test_custom_reward_as_documented(cli, in_tmp):
    pytest.importorskip("transformers")
    (in_tmp / "my_reward.py").write_text(_doc_module("my_reward.py"))
    code, out, err = cli(
        "train",
        "grpo",
        "--set",
        "rewards.exact_match=1",
        "--set",
        "rewards.my_reward:short_answer=0.1",
        "--out",
        "run",
        "--total-steps",
        "1",
        "--set",
        "sft_steps=0",
        "--set",
        "eval_size=4",
        "--set",
        "prompts_per_step=2",
        "--set",
        "group_size=2",
        "--set",
        "eval_k=1",
        "--no-progress",
        "--set",
        "tensorboard=false",
    )
    assert code == 0, err
    run = in_tmp / "run"
    assert json.loads((run / "run.json").read_text())["status"] == "finished" and (run / "eval.json").is_file()
    names = {line.split(",")[2] for line in (run / "metrics.csv").read_text().splitlines()[1:]}
    assert "reward/my_reward:short_answer_mean" in names and "reward/exact_match_mean" in names


def test_total_steps_not_a_multiple_of_the_rollout_warns_and_rounds_up(cli, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli(
        "train",
        "ppo",
        "--env",
        "CartPole-v1",
        "--out",
        str(out),
        *TINY,
        "--total-steps",
        "40",
    )
    assert code == 0, err
    assert "total_steps=40 is not a multiple of n_steps * num_envs = 16 * 2 = 32" in err and "takes 64 steps" in err
    assert json.loads(stdout.splitlines()[0])["steps"] == 64
    code, _, err = cli("train", "ppo", "--env", "CartPole-v1", "--out", str(tmp_path / "r2"), *TINY)
    assert code == 0 and "warning" not in err  # 64 = 2 iterations of 32
    code, _, err = cli("config", "ppo", "--total-steps", "40")  # a dry run says nothing about rounding
    assert code == 0 and err == ""


def test_env_kwargs_from_set_reach_gymnasium_typed(cli, tmp_path):
    out = tmp_path / "run"
    code, _, err = cli(
        "train", "ppo", "--env", "CartPole-v1", "--out", str(out), *TINY, "--set", "env_kwargs.max_episode_steps=20"
    )
    assert code == 0, err
    assert yaml.safe_load((out / "config.yaml").read_text())["env_kwargs"] == {"max_episode_steps": 20}
    code, stdout, err = cli("eval", str(out), "--episodes", "4")
    assert code == 0 and json.loads(stdout)["length_mean"] <= 20
