"""Populations of seeds: ``--seeds`` parsing, ``api.train_population`` (batched trainer when registered and
supported, else members one after another through the single-run path), ``policyopt train --seeds`` and
``policyopt bench`` population jobs. A small fake batched trainer (a test double written into a temporary module)
stands in for a family's batched trainer; it trains each member with the ordinary single-run ``train`` and records
how it was called."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from policyopt import api
from policyopt.cli.main import main
from policyopt.errors import UserError
from policyopt.runs.members import check_members, parse_seeds, seeds_label

TINY = {"num_envs": 2, "n_steps": 16, "minibatch_size": 32, "epochs": 1, "tensorboard": False, "eval_episodes": 2}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={str(v).lower()}")]
TINY_ARGS += ["--total-steps", "64", "--no-progress"]

FAKE = """
import json, os
from pathlib import Path
from policyopt.control.onpolicy import train

PER_MEMBER_KEYS = ("learning_rate",)
LOG = Path(__file__).with_name("calls.jsonl")


def population_unsupported(cfgs):
    return "fake: epochs must be 1" if any(c.epochs != 1 for c in cfgs) else None


def train_population(cfgs, run_dirs, resume=False):
    with open(LOG, "a") as f:
        f.write(json.dumps({"seeds": [c.seed for c in cfgs], "resume": resume}) + "\\n")
    return [train(c, d, resume=resume) for c, d in zip(cfgs, run_dirs)]
"""


def _calls(folder: Path) -> list[dict]:
    log = folder / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@contextlib.contextmanager
def _on_policy_population(entry: str | None):
    """The on-policy family registered with batched trainer ``entry`` (None: none) while the block runs."""
    import policyopt.control.onpolicy  # noqa: F401 - registers the family
    from policyopt.runs.lifecycle import FAMILIES

    name = "control/on-policy"
    real = FAMILIES.get(name)
    FAMILIES.unregister(name)
    FAMILIES.register(name, dataclasses.replace(real, population=entry))
    try:
        yield
    finally:
        FAMILIES.unregister(name)
        FAMILIES.register(name, real)


@pytest.fixture
def fake_batched(tmp_path, monkeypatch):
    """The on-policy family with the fake batched trainer registered; yields the folder of its call log."""
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "fake_batched.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("fake_batched", None)  # each test's module writes its own call log
    with _on_policy_population("fake_batched:train_population"):
        yield folder
    sys.modules.pop("fake_batched", None)


@pytest.fixture
def single_run_path():
    """The on-policy family without a batched trainer: populations take the single-run path."""
    with _on_policy_population(None):
        yield


# ---- seed lists --------------------------------------------------------------------------------------------------
def test_parse_seeds_forms_and_labels():
    assert parse_seeds("0-9") == list(range(10))
    assert parse_seeds("0,3,5") == [0, 3, 5]
    assert parse_seeds("0-4,7") == [0, 1, 2, 3, 4, 7]
    assert parse_seeds(" 7 , 2-3 ") == [7, 2, 3]
    assert parse_seeds("4-4") == [4]
    assert [seeds_label(s) for s in ([0, 1, 2, 3], [0, 3, 5], [0, 1, 2, 7], [9])] == ["0-3", "0_3_5", "0-2_7", "9"]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("5-3", "runs backwards"),
        ("", "names no seed"),
        ("-1", "is not a seed"),
        ("1-2-3", "neither a seed nor a range"),
        ("0,,1", "neither a seed nor a range"),
        ("a-b", "'a' is not a seed"),
        ("4294967296", "[0, 4294967295]"),
        ("0-3,2", "seed 2 twice"),
        ("0-100000", "at most 4096 members"),
    ],
)
def test_parse_seeds_refuses_with_one_line(text, needle):
    with pytest.raises(UserError) as e:
        parse_seeds(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_members_may_differ_only_in_seed_and_declared_keys():
    cfg = api.configure("ppo", env="CartPole-v1")
    a, b = dataclasses.replace(cfg, seed=1), dataclasses.replace(cfg, seed=2, learning_rate=0.01)
    with pytest.raises(UserError, match="differ in config key 'learning_rate'"):
        check_members([a, b], [Path("x"), Path("y")], ())
    check_members([a, b], [Path("x"), Path("y")], ("learning_rate",))  # a per-member key of the batched trainer
    with pytest.raises(UserError, match="share the run directory"):
        check_members([a, dataclasses.replace(a, seed=3)], [Path("x"), Path("x")], ())
    with pytest.raises(UserError, match="same config"):
        check_members([a, a], [Path("x"), Path("y")], ())


# ---- the API: batched or one after another ---------------------------------------------------------------------
def _cfg(**changes):
    return api.configure("ppo", env="CartPole-v1", total_steps=64, sets={**TINY, **changes})


def test_api_uses_the_batched_trainer_only_when_registered_and_supported(tmp_path, fake_batched):
    notes: list[str] = []
    res = api.train_population((_cfg(), [0, 1]), tmp_path / "pop", note=notes.append)
    assert _calls(fake_batched) == [{"seeds": [0, 1], "resume": False}] and "batched trainer fake_batched" in notes[0]
    assert [r["trained"] for r in res] == ["batched", "batched"]
    api.train_population((_cfg(), "2-3"), tmp_path / "off", population="off", note=notes.append)
    api.train_population((_cfg(epochs=2), [4, 5]), tmp_path / "unsup", note=notes.append)
    assert len(_calls(fake_batched)) == 1  # neither of these used it
    assert "one after another" in notes[1] and "population: off" in notes[1]
    assert "does not support this config: fake: epochs must be 1" in notes[2]
    assert sorted(p.name for p in (tmp_path / "unsup").iterdir()) == ["seed-4", "seed-5"]
    lrs = [_cfg(learning_rate=lr, seed=s) for lr, s in ((1e-3, 6), (3e-4, 7))]  # a per-member key may differ
    api.train_population(lrs, [tmp_path / "lr" / "a", tmp_path / "lr" / "b"], note=notes.append)
    assert _calls(fake_batched)[-1] == {"seeds": [6, 7], "resume": False}
    with pytest.raises(UserError, match="'gamma'"):
        api.train_population([_cfg(seed=8), _cfg(seed=9, gamma=0.9)], tmp_path / "bad", note=notes.append)
    assert not (tmp_path / "bad").exists()


# ---- the CLI -------------------------------------------------------------------------------------------------------
def _eval(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())


def _weights(run: Path) -> dict:
    from policyopt.runs.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoints" / "latest.safetensors")["model"]


def test_cli_population_equals_single_runs_and_resumes(cli, tmp_path, monkeypatch, single_run_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli("train", "ppo", "--env", "CartPole-v1", "--seeds", "0,3", "--out", "pop", *TINY_ARGS)
    assert code == 0, err
    assert "one after another" in err and "has no batched trainer" in err
    code, _, err = cli("train", "ppo", "--env", "CartPole-v1", "--seed", "3", "--out", "single", *TINY_ARGS)
    assert code == 0, err
    assert _eval(tmp_path / "pop/seed-3") == _eval(tmp_path / "single")
    single = _weights(tmp_path / "single")
    member = _weights(tmp_path / "pop/seed-3")
    assert all((member[k] == v).all() for k, v in single.items())
    assert yaml.safe_load((tmp_path / "pop/seed-0/config.yaml").read_text())["seed"] == 0
    # the per-seed table and the mean across seeds
    finals = [_eval(tmp_path / f"pop/seed-{s}")["return_mean"] for s in (0, 3)]
    for s in (0, 3):
        row = next(line for line in out.splitlines() if re.match(rf"│\s+{s} │", line))
        assert f"{_eval(tmp_path / f'pop/seed-{s}')['return_mean']:.4g} ±" in row and f"pop/seed-{s}" in row
    assert f"mean return_mean across 2 seeds: {sum(finals) / 2:.4g}, 95% bootstrap interval [" in out
    # resume: a member stopped before its final evaluation continues from its checkpoint; a new seed is added
    ckpt = (tmp_path / "pop/seed-3/checkpoints/latest.safetensors").read_bytes()
    (tmp_path / "pop/seed-3/eval.json").unlink()
    info = json.loads((tmp_path / "pop/seed-3/run.json").read_text())
    (tmp_path / "pop/seed-3/run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    code, out, err = cli("train", "--resume", "pop", "--seeds", "0,3,5")
    assert code == 0, err
    assert _eval(tmp_path / "pop/seed-3")["return_mean"] == finals[1]
    assert (tmp_path / "pop/seed-3/checkpoints/latest.safetensors").read_bytes() == ckpt
    assert re.search(r"│\s+0 │.*done before", out) and (tmp_path / "pop/seed-5/eval.json").exists()
    assert json.loads((tmp_path / "pop/seed-5/run.json").read_text())["algo"] == "ppo"
    code, _, err = cli("train", "--resume", "pop")
    assert code == 2 and "population folder" in err and "--seeds" in err


# ---- bench -----------------------------------------------------------------------------------------------------------
SPEC = {
    "name": "pop",
    "algos": ["ppo"],
    "envs": ["CartPole-v1"],
    "seeds": 3,
    "budget": 64,
    "eval": {"every": 32, "episodes": 2, "last": 2},
    "sets": {k: v for k, v in TINY.items() if k != "eval_episodes"},
}


def _bench_jobs(tmp_path: Path, **changes):
    from policyopt.bench.runner import _jobs
    from policyopt.bench.spec import expand, parse_spec

    spec = parse_spec({**SPEC, **changes})
    return _jobs(expand(spec, tmp_path / "out"), spec.seeds, spec.population)[0]


def test_bench_groups_the_seeds_of_a_cell_into_one_population_job(tmp_path, fake_batched, monkeypatch):
    jobs = _bench_jobs(tmp_path)
    assert len(jobs) == 1 and [m["seed"] for m in jobs[0]["members"]] == [1, 2, 3]
    assert jobs[0]["population"] == "fake_batched:train_population"
    assert len(_bench_jobs(tmp_path, population="off")) == 3
    assert len(_bench_jobs(tmp_path, sets={**SPEC["sets"], "epochs": 2})) == 3  # unsupported by the fake
    lr = [{"seed": s, "sets": {"learning_rate": 1e-3 * s}} for s in (1, 2, 3)]  # a per-member key may differ
    assert len(_bench_jobs(tmp_path, overrides=lr)) == 1
    gammas = [{"seed": 3, "sets": {"gamma": 0.9}}]  # any other key splits the cell
    assert sorted(len(j.get("members", [j])) for j in _bench_jobs(tmp_path, overrides=gammas)) == [1, 2]


def test_bench_grid_variants_are_cells_and_share_a_population(tmp_path, fake_batched, monkeypatch):
    from policyopt.bench import executors
    from policyopt.bench.spec import parse_spec

    grid = {"ppo": {"learning_rate": [0.001, 0.0005]}}
    spec = parse_spec({**SPEC, "seeds": 2, "grid": grid})
    labels = ["ppo[learning_rate=0.001]", "ppo[learning_rate=0.0005]"]
    assert spec.algos == labels
    jobs = _bench_jobs(tmp_path, seeds=2, grid=grid)  # learning_rate is per-member: both variants, one population
    assert len(jobs) == 1
    got = [(m["algo"], m["preset"], m["seed"], m["config"]["learning_rate"]) for m in jobs[0]["members"]]
    assert sorted(got) == sorted((lab, "ppo", s, lr) for lab, lr in zip(labels, (0.001, 0.0005)) for s in (1, 2))
    assert len({m["run_dir"] for m in jobs[0]["members"]}) == 4
    gammas = _bench_jobs(tmp_path, seeds=2, grid={"ppo": {"gamma": [0.9, 0.99]}})  # not per-member: one each
    assert sorted(len(j["members"]) for j in gammas) == [2, 2]
    # an override naming the preset reaches every variant; one naming a label reaches that variant only
    over = [{"algo": "ppo", "sets": {"ent_coef": 0.5}}, {"algo": labels[1], "sets": {"ent_coef": 0.25}}]
    jobs = _bench_jobs(tmp_path, grid=grid, overrides=over)
    ent = {m["algo"]: m["config"]["ent_coef"] for j in jobs for m in j.get("members", [j])}
    assert ent == {labels[0]: 0.5, labels[1]: 0.25}
    # end to end: rows carry the labels, each run directory records the preset (so eval and --resume work)
    monkeypatch.setattr(executors, "run_local", lambda jobs, workers: (o for j in jobs for o in executors.run_job(j)))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "seeds": 1, "grid": grid}))
    assert main(["bench", str(path), "--out", str(tmp_path / "g"), "--workers", "1", "--no-report"]) == 0
    with open(tmp_path / "g" / "results.csv", newline="") as f:
        rows = {r["algo"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(labels) and all(r["status"] == "finished" for r in rows.values())
    info = json.loads((Path(rows[labels[1]]["run_dir"]) / "run.json").read_text())
    assert info["algo"] == "ppo" and info["bench"]["entry"] == labels[1]
    assert _calls(fake_batched) == [{"seeds": [1, 1], "resume": False}]


@pytest.mark.parametrize(
    "grid, message",
    [
        ({"sac": {"learning_rate": [1]}}, "grid names 'sac', which is not in 'algos' (ppo)"),
        ({"ppo": {"learning_rate": []}}, "ppo.learning_rate is []"),
        ({"ppo": {"learning_rate": [1, 1]}}, "grid gives ppo[learning_rate=1] twice"),
        ([1], "'grid' must map algorithm names"),
    ],
)
def test_bench_grid_refuses_bad_shapes(grid, message):
    from policyopt.bench.spec import parse_spec

    with pytest.raises(UserError, match=re.escape(message)):
        parse_spec({**SPEC, "grid": grid})


def test_bench_population_job_runs_and_resumes(tmp_path, fake_batched, capsys, monkeypatch):
    from policyopt.bench import executors

    # jobs run in this process (the process pool and Ray run the same run_job; tests/test_bench_run.py covers them)
    monkeypatch.setattr(executors, "run_local", lambda jobs, workers: (o for j in jobs for o in executors.run_job(j)))
    spec = tmp_path / "pop.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "out"
    argv = ["bench", str(spec), "--out", str(out), "--workers", "1", "--no-report"]
    assert main(argv) == 0
    assert "(1 jobs, 1 of them populations)" in capsys.readouterr().out
    assert _calls(fake_batched) == [{"seeds": [1, 2, 3], "resume": False}]
    with open(out / "results.csv", newline="") as f:
        rows = {int(r["seed"]): r for r in csv.DictReader(f)}
    assert all(r["status"] == "finished" for r in rows.values())
    runs = {s: Path(rows[s]["run_dir"]) for s in rows}
    assert json.loads((runs[2] / "run.json").read_text())["bench"]["seed"] == 2  # the bench's run info is kept
    # stopped before the final evaluations of seeds 2 and 3: those two resume together from their checkpoints
    ckpts = {s: (runs[s] / "checkpoints/latest.safetensors").read_bytes() for s in (2, 3)}
    for s in (2, 3):
        (runs[s] / "eval.json").unlink()
        info = json.loads((runs[s] / "run.json").read_text())
        (runs[s] / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    assert main(argv) == 0
    assert "1 already finished, 2 to run (1 jobs, 1 of them populations)" in capsys.readouterr().out
    assert _calls(fake_batched)[-1] == {"seeds": [2, 3], "resume": True}
    with open(out / "results.csv", newline="") as f:
        again = {int(r["seed"]): r for r in csv.DictReader(f)}
    assert [again[s]["final_score"] for s in (1, 2, 3)] == [rows[s]["final_score"] for s in (1, 2, 3)]
    assert all((runs[s] / "checkpoints/latest.safetensors").read_bytes() == ckpts[s] for s in (2, 3))
    assert main(argv) == 0 and "3 already finished, 0 to run" in capsys.readouterr().out
    # a member stopped before its run info was written is still checked against the spec, by its config.yaml
    info = json.loads((runs[1] / "run.json").read_text())
    (runs[1] / "run.json").write_text(json.dumps({k: v for k, v in info.items() if k != "bench"}))
    spec.write_text(yaml.safe_dump({**SPEC, "sets": {**SPEC["sets"], "gamma": 0.9}}))
    assert main(argv) == 2 and "different config" in capsys.readouterr().err
