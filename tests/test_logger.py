"""MetricLogger: the CSV, TensorBoard and experiment trackers get the same names and steps; resume cuts the
CSV back through the atomic path (a symlinked metrics.csv's target is never written)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import policyopt
from policyopt.config import resolve, to_dict
from policyopt.control.onpolicy import OnPolicyConfig
from policyopt.errors import UserError
from policyopt.runs.logger import TRACKER_IDS, MetricLogger, read_metrics

STEPS = [
    (0, {"loss/policy": torch.tensor(0.5), "stats/clip_frac": 0.25}),
    (10, {"loss/policy": torch.tensor(-1.5), "stats/nan": float("nan"), "eval/return": 3}),
    (20, {"loss/policy": 2.0, "stats/clip_frac": torch.tensor(0.125)}),
]
# what every sink must receive (NaN skipped)
EXPECTED = {
    "loss/policy": [(0, 0.5), (10, -1.5), (20, 2.0)],
    "stats/clip_frac": [(0, 0.25), (20, 0.125)],
    "eval/return": [(10, 3.0)],
}


class FakeRun:
    def __init__(self, module: FakeTracker, kwargs: dict):
        self.module, self.kwargs = module, kwargs
        self.id = kwargs.get("id") or f"run{len(module.runs)}"
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    def log(self, values, step=None):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


class FakeTracker(types.ModuleType):
    """A stand-in for the ``wandb`` / ``trackio`` module: ``init(**kwargs)`` returns a recording run."""

    def __init__(self, name: str):
        super().__init__(name)
        self.runs: list[FakeRun] = []

    def init(self, **kwargs):
        self.runs.append(FakeRun(self, kwargs))
        return self.runs[-1]


@pytest.fixture
def fake(monkeypatch):
    mods = {n: FakeTracker(n) for n in ("wandb", "trackio")}
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return mods


def _by_name(logged: list[tuple[int, dict]]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for step, values in logged:
        for k, v in values.items():
            out.setdefault(k, []).append((step, v))
    return out


def _tensorboard(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        [s for s, _ in a[k]] == [s for s, _ in b[k]]
        and all(math.isclose(x, y, rel_tol=1e-6) for (_, x), (_, y) in zip(a[k], b[k]))
        for k in a
    )


def test_every_sink_gets_the_same_names_and_steps(tmp_path, fake):
    cfg = resolve(OnPolicyConfig(), {"seed": 7, "trackers": "wandb,trackio"})
    assert cfg.trackers == ["wandb", "trackio"]
    run_dir = tmp_path / "ppo-run"
    log = MetricLogger(run_dir, tensorboard=True, trackers=cfg.trackers, config=cfg)
    for step, metrics in STEPS:
        log.log(step, metrics)
    log.close()
    assert _close(read_metrics(run_dir), EXPECTED)
    assert _close(_tensorboard(run_dir / "tb"), EXPECTED)
    for name in ("wandb", "trackio"):
        (run,) = fake[name].runs
        assert run.finished and _close(_by_name(run.logged), EXPECTED)
        assert run.kwargs["project"] == "policyopt" and run.kwargs["name"] == "ppo-run"
        assert run.kwargs["config"] == to_dict(cfg) and run.kwargs["config"]["seed"] == 7
    assert fake["wandb"].runs[0].kwargs["dir"] == str(run_dir)
    assert fake["trackio"].runs[0].kwargs["resume"] == "never"
    assert json.loads((run_dir / TRACKER_IDS).read_text()) == {"wandb": "run0", "trackio": "run0"}


def test_resume_continues_the_tracker_runs(tmp_path, fake):
    run_dir = tmp_path / "r"
    MetricLogger(run_dir, tensorboard=False, trackers=["wandb", "trackio"]).close()
    log = MetricLogger(run_dir, tensorboard=False, resume_step=0, resume_rows=0, trackers=["wandb", "trackio"])
    log.close()
    first, again = fake["wandb"].runs
    assert "id" not in first.kwargs and (again.kwargs["id"], again.kwargs["resume"]) == ("run0", "allow")
    assert [r.kwargs["resume"] for r in fake["trackio"].runs] == ["never", "allow"]
    assert [r.kwargs["name"] for r in fake["trackio"].runs] == ["r", "r"]


def test_missing_tracker_package_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(UserError) as e:
        MetricLogger(tmp_path / "r", trackers=["wandb"])
    assert str(e.value) == "tracker 'wandb' needs the 'wandb' package: pip install 'policyopt[wandb]'"
    assert not (tmp_path / "r" / "metrics.csv").exists()


@pytest.mark.parametrize("value", ["nope", "wandb,wandb"])
def test_trackers_config_rejects_unknown_or_repeated_names(value):
    with pytest.raises(UserError, match="config key 'trackers'.*trackio, wandb"):
        resolve(OnPolicyConfig(), {"trackers": value})
    assert OnPolicyConfig().trackers == []


def test_training_run_sends_its_metrics_to_the_tracker(tmp_path, fake):
    cfg = policyopt.configure(
        "ppo",
        env="CartPole-v1",
        total_steps=128,
        seed=3,
        sets={
            "num_envs": 2,
            "n_steps": 16,
            "minibatch_size": 16,
            "epochs": 1,
            "log_every": 32,
            "progress": False,
            "trackers": ["wandb"],
        },
    )
    out = tmp_path / "cartpole-1"
    policyopt.train(cfg, out)
    (run,) = fake["wandb"].runs
    csv = read_metrics(out)
    assert len({s for v in csv.values() for s, _ in v}) >= 4  # several logging steps, incl. the final evaluation
    assert _close(_by_name(run.logged), csv) and _close(_tensorboard(out / "tb"), csv)
    assert run.kwargs["name"] == "cartpole-1" and run.kwargs["config"] == to_dict(cfg) and run.finished


# ---- resume through the atomic path --------------------------------------------------------------------
def _write_rows(path: Path, n: int) -> bytes:
    log = MetricLogger(path.parent, tensorboard=False)
    for i in range(n):
        log.log(i * 10, {"a": float(i)})
    log.close()
    return path.read_bytes()


@pytest.mark.parametrize("cut", [dict(resume_rows=2), dict(resume_step=10)])
def test_resume_of_a_symlinked_csv_leaves_the_target_alone(tmp_path, cut):
    target = tmp_path / "elsewhere" / "metrics.csv"
    target.parent.mkdir()
    original = _write_rows(target, 4)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    link = run_dir / "metrics.csv"
    link.symlink_to(target)

    log = MetricLogger(run_dir, tensorboard=False, **cut)
    assert log.rows == 2
    log.log(20, {"b": 5.0})
    log.close()

    assert target.read_bytes() == original  # not truncated, not appended to
    assert link.is_file() and not link.is_symlink()
    assert read_metrics(run_dir) == {"a": [(0, 0.0), (10, 1.0)], "b": [(20, 5.0)]}
    assert link.read_bytes().startswith(original[: original.index(b"\n") + 1])  # same header
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def test_resume_cut_keeps_the_csv_bytes_of_the_kept_rows(tmp_path):
    path = tmp_path / "run" / "metrics.csv"
    original = _write_rows(path, 3)
    MetricLogger(path.parent, tensorboard=False, resume_rows=3).close()
    assert path.read_bytes() == original
    MetricLogger(path.parent, tensorboard=False, resume_rows=1).close()
    assert path.read_bytes() == original[: original.index(b"\n", original.index(b"\n") + 1) + 1]


# ---- the real trackio, local mode ------------------------------------------------------------------------
TRACKIO_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    from policyopt.runs.logger import MetricLogger
    from trackio.sqlite_storage import SQLiteStorage
    run_dir, steps = sys.argv[1], json.loads(sys.argv[2])
    log = MetricLogger(run_dir, tensorboard=False, trackers=["trackio"], config={"seed": 5})
    for step, metrics in steps:
        log.log(step, metrics)
    log.close()
    rows = SQLiteStorage.get_logs("policyopt", "run-x")
    print("RESULT", json.dumps({"logs": [{k: v for k, v in r.items() if "/" in k or k == "step"} for r in rows],
                      "config": SQLiteStorage.get_run_config("policyopt", "run-x")}))
""")


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio is not installed")
def test_real_trackio_local_mode_gets_the_csv_metrics(tmp_path):
    steps = [
        (0, {"loss/policy": 0.5, "stats/clip_frac": 0.25}),
        (10, {"loss/policy": -1.5, "eval/return": 3.0}),
        (20, {"loss/policy": 2.0, "stats/clip_frac": 0.125}),
    ]
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-c", TRACKIO_SCRIPT, str(tmp_path / "run-x"), json.dumps(steps)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    (line,) = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    data = json.loads(line[len("RESULT ") :])
    got = _by_name([(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in data["logs"]])
    assert _close(got, read_metrics(tmp_path / "run-x"))
    assert data["config"]["seed"] == 5
