"""Bench reliability: workers die with a killed bench, cells and bench directories are locked, spec strings never
leave the output folder, and bad spec/report inputs are one-line errors (exit status 2)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from policyopt.bench.executors import FileLock, cell_lock_path
from policyopt.bench.spec import expand, parse_spec, safe_component
from policyopt.cli.main import main
from policyopt.errors import UserError

# 8 rollouts of 256 steps, one epoch each, a checkpoint and a log row after every rollout: about a second a cell
# once the worker has imported torch (which takes longer than the training).
FAST = {"tensorboard": False, "checkpoint_every": 256, "log_every": 256, "epochs": 1}
KILL_SPEC = {
    "name": "kill",
    "algos": ["ppo"],
    "envs": ["CartPole-v1"],
    "seeds": 2,
    "budget": 2048,
    "eval": {"every": 512, "episodes": 1, "last": 2},
    "sets": FAST,
}


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def bench_process(spec: Path, out: Path, log: Path) -> subprocess.Popen:
    """``policyopt bench`` in a child process, with one worker (a worker's start costs more than its cells)."""
    cmd = [sys.executable, "-m", "policyopt.cli.main", "bench", str(spec), "--out", str(out), "--workers", "1"]
    return subprocess.Popen([*cmd, "--no-report"], stdout=open(log, "w"), stderr=subprocess.STDOUT)


# ---- processes: psutil when installed, else /proc -------------------------------------------------------------
def descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        children: dict[int, list[int]] = {}
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(p.name))
        found, todo = [], [pid]
        while todo:
            kids = children.get(todo.pop(), [])
            found += kids
            todo += kids
        return found
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def alive(pid: int) -> bool:
    """Running (a zombie that nobody has reaped yet is dead)."""
    try:
        import psutil
    except ImportError:
        try:
            return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for(condition, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"bench exited (status {proc.returncode}) before {what}:\n{log.read_text() if log else ''}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def one_error_line(err: str) -> str:
    """The CLI's error: one line, the last thing written (notes such as 'no tuned preset' may come before)."""
    errors = [line for line in err.splitlines() if line.startswith("policyopt: error:")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n"), err
    return errors[0]


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---- 1. a SIGKILLed bench leaves no worker; a re-run resumes or runs each unfinished cell once ---------------------
def snapshot(run_dir: Path) -> dict:
    from policyopt.runs.checkpoint import load_checkpoint

    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    if info.get("status") == "finished" and (run_dir / "eval.json").exists():
        return {"state": "finished", "mtime": (run_dir / "metrics.csv").stat().st_mtime_ns}
    ckpt = run_dir / "checkpoints" / "latest.safetensors"
    if ckpt.exists():
        rows = load_checkpoint(ckpt)["lifecycle"]["metrics_rows"]
        kept = (run_dir / "metrics.csv").read_text().splitlines()[: rows + 1]  # header + the checkpointed rows
        return {"state": "partial", "rows": rows, "kept": kept}
    return {"state": "new"}


def test_killed_bench_leaves_no_worker_and_a_rerun_finishes_each_cell_once(tmp_path, capsys):
    spec, out, log = write_spec(tmp_path / "kill.yaml", KILL_SPEC), tmp_path / "out", tmp_path / "bench.log"
    proc = bench_process(spec, out, log)
    workers: list[int] = []
    try:
        wait_for(lambda: any(out.glob("runs/*/checkpoints/latest.safetensors")), 150, "a first checkpoint", proc, log)
        workers = descendants(proc.pid)
        assert workers, "no worker process"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while any(alive(p) for p in workers) and time.time() < deadline:
            time.sleep(0.05)
        assert not [p for p in workers if alive(p)], "worker processes outlived the killed bench"
    finally:
        proc.kill()
        kill_all(workers)

    cells = {c.seed: Path(c.run_dir) for c in expand(parse_spec(KILL_SPEC), out)}
    before = {seed: snapshot(d) for seed, d in cells.items()}
    assert "partial" in [b["state"] for b in before.values()]
    finished = [s for s, b in before.items() if b["state"] == "finished"]

    capsys.readouterr()
    assert main(["bench", str(spec), "--out", str(out), "--workers", "1", "--no-report"]) == 0
    log_text = capsys.readouterr().out
    assert f"2 cells, {len(finished)} already finished, {2 - len(finished)} to run" in log_text
    outcomes = json.loads((out / "bench.json").read_text())["last_invocation"]["outcomes"]
    assert sorted(o["seed"] for o in outcomes) == sorted(set(cells) - set(finished))  # each once
    for o in outcomes:
        b = before[o["seed"]]
        assert o["status"] == "finished" and o["resumed"] == (b["state"] == "partial"), (o, b)
    for seed, b in before.items():
        d = cells[seed]
        with open(d / "metrics.csv", newline="") as f:
            evals = [int(r["step"]) for r in csv.DictReader(f) if r["name"] == "eval/return_mean"]
        assert evals == [512, 1024, 1536, 2048]  # one writer: no step twice, none missing
        if b["state"] == "finished":  # not touched again
            assert (d / "metrics.csv").stat().st_mtime_ns == b["mtime"]
        if b["state"] == "partial":  # resumed: the rows up to its checkpoint are the ones written before the kill
            assert b["rows"] > 0 and (d / "metrics.csv").read_text().splitlines()[: b["rows"] + 1] == b["kept"]
    with open(out / "results.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["finished"] * 2


# ---- 1b. one bench per output directory -------------------------------------------------------------------------
def test_second_bench_on_the_same_out_is_refused_with_one_line(tmp_path, capsys):
    spec, out, log = write_spec(tmp_path / "kill.yaml", KILL_SPEC), tmp_path / "out", tmp_path / "bench.log"
    proc = bench_process(spec, out, log)
    try:
        lock = out / ".bench.lock"
        wait_for(lambda: lock.exists() and f"pid {proc.pid} " in lock.read_text(), 60, "the bench lock", proc, log)
        capsys.readouterr()
        assert main(["bench", str(spec), "--out", str(out), "--no-report"]) == 2
        err = one_error_line(capsys.readouterr().err)
        assert "another policyopt bench is running" in err and f"pid {proc.pid}" in err
        assert not (out / "results.csv").exists()  # the refused bench wrote nothing
        workers = descendants(proc.pid)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 5
    while any(alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.05)
    kill_all(workers)
    # The killed holder's lock died with it: the file is still there but no longer blocks.
    with FileLock(out / ".bench.lock") as lock:
        assert (out / ".bench.lock").exists() and lock.acquire()


# ---- 2 + 4. a locked cell is skipped (pool and Ray), and the spec's name stays inside runs/bench -----------------
@pytest.mark.parametrize("executor", ["pool", "ray"])
def test_locked_cell_is_skipped_not_run_twice(executor, tmp_path, monkeypatch, capsys):
    if executor == "ray":
        pytest.importorskip("ray", reason="Ray is the optional extra policyopt[ray]")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    spec = {
        **KILL_SPEC,
        "name": "../escape",  # would be runs/bench/../escape = runs/escape
        "seeds": [1],
    }
    path = write_spec(tmp_path / "spec.yaml", spec)
    out = work / "runs" / "bench" / "_escape"
    locked = out / "runs" / "ppo__CartPole-v1__s1"
    locked.mkdir(parents=True)
    (locked / "marker").write_text("another process's partial run")  # no checkpoint: a run would wipe it
    argv = ["bench", str(path), "--workers", "1", "--no-report", *(["--ray"] if executor == "ray" else [])]
    with FileLock(cell_lock_path(locked)) as lock:
        assert lock.acquire()
        assert main(argv) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml", "work"]
    assert sorted(p.name for p in (work / "runs").iterdir()) == ["bench"]
    with open(out / "results.csv", newline="") as f:
        rows = {int(r["seed"]): r for r in csv.DictReader(f)}
    assert rows[1]["status"] == "skipped" and "locked by another process" in rows[1]["error"]
    assert f"pid {os.getpid()} " in rows[1]["error"]
    assert sorted(p.name for p in locked.iterdir()) == ["marker"]  # untouched
    assert "seed=1: skipped" in capsys.readouterr().out


# ---- 2. spec strings that become path components ----------------------------------------------------------------
@pytest.fixture
def clashing_env():
    """An environment id that differs from the registered ``policyopt_test/Countdown-v0`` only by ``_`` for ``/``."""
    import gymnasium as gym

    gym.register("policyopt_test_Countdown-v0", entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv")
    yield "policyopt_test_Countdown-v0"
    del gym.registry["policyopt_test_Countdown-v0"]


def test_spec_strings_are_cleaned_into_one_path_component(tmp_path, capsys, clashing_env):
    assert safe_component("../escape", "d") == "_escape" and safe_component("/etc/x", "d") == "_etc_x"
    assert safe_component("..", "d") == "d" and safe_component("ALE/Pong-v5", "d") == "ALE_Pong-v5"
    assert safe_component("C:\\x", "d") == "C__x" and safe_component(".hidden", "d") == "hidden"
    base = {"algos": ["ppo"], "seeds": 1, "eval": {"every": 100}}
    for name, clean in [("../../x", "_.._x"), ("/abs/path", "_abs_path"), ("..", "bench"), ("ok-name_1.0", None)]:
        assert parse_spec({**base, "envs": ["CartPole-v1"], "name": name}).name == (clean or name)
    envs = ["gymnasium:CartPole-v1", "phys2d/CartPole-v1", "policyopt_test/Countdown-v0"]
    cells = expand(parse_spec({**base, "envs": envs}), tmp_path / "out")
    assert [Path(c.run_dir).name for c in cells] == [
        "ppo__gymnasium_CartPole-v1__s1",
        "ppo__phys2d_CartPole-v1__s1",
        "ppo__policyopt_test_Countdown-v0__s1",
    ]
    assert all(Path(c.run_dir).parent == tmp_path / "out" / "runs" for c in cells)
    # Two targets that clean to the same folder would share a run directory: refused, one line, nothing written.
    path = write_spec(tmp_path / "clash.yaml", {**base, "envs": ["policyopt_test/Countdown-v0", clashing_env]})
    assert main(["bench", str(path), "--out", str(tmp_path / "clash"), "--no-report"]) == 2
    assert "would share the run directory" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "clash").exists()


# ---- 3. bad spec and report inputs: one line, exit status 2 -------------------------------------------------------
GOOD = {"algos": ["ppo"], "envs": ["CartPole-v1"], "seeds": 1, "budget": 256, "eval": {"every": 256}}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"reference_scores": {"CartPole-v1": {"low": "a", "high": 1}}}, "reference_scores['CartPole-v1']"),
        ({"reference_scores": {"CartPole-v1": {"low": "a"}}}, "reference_scores['CartPole-v1']"),
        ({"reference_scores": {"CartPole-v1": {"low": 1, "high": ".inf"}}}, "reference_scores['CartPole-v1']"),
        ({"reference_scores": [1, 2]}, "'reference_scores' must map"),
        ({"metric": 5}, "'metric' must be"),
        ({"metric": ""}, "'metric' must be"),
        ({"seed": 3}, "unknown keys ['seed']"),
        ({"algos": []}, "'algos' is empty"),
        ({"envs": []}, "give 'envs'"),
        ({"seeds": []}, "'seeds' must be"),
        ({"seeds": [1, "two"]}, "'seeds' must be"),
        ({"seeds": [1.5]}, "'seeds' must be"),
        ({"seeds": 2.5}, "'seeds' must be"),
        ({"seeds": True}, "'seeds' must be"),
        ({"name": ["x"]}, "'name' must be"),
        ({"overrides": [{"seed": "1", "sets": {}}]}, "overrides[0]"),
        ({"eval": {"every": 256, "last": 0}}, "eval.last"),
    ],
)
def test_bad_spec_is_one_line_and_exit_status_2(change, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **change}).replace("'.inf'", ".inf"))
    assert main(["bench", str(path), "--out", str(tmp_path / "out"), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and one_error_line(err).startswith("policyopt: error: bench spec") and message in err
    assert not (tmp_path / "out").exists()


HEADER = "algo,target,seed,status,final_score,auc,normalized_score,num_evals,last_eval_step,error,run_dir\n"


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no results.csv"),
        ({"results.csv": b"\x89PNG\r\n\x1a\n\x00\xff\xfe garbage"}, "is not a bench table"),
        ({"results.csv": b"hello,world\n1,2\n"}, "missing columns ['algo'"),
        ({"results.csv": HEADER.encode()}, "has no cells"),
        ({"results.csv": (HEADER + "ppo,E,one,finished,1,1,,2,10,,d\n").encode()}, "line 2: column 'seed'"),
        ({"results.csv": (HEADER + "ppo,E,1,finished,high,1,,2,10,,d\n").encode()}, "column 'final_score'"),
        ({"results.csv": (HEADER + "ppo,E,1,finished,1,1,,2,10,,d\n" * 2).encode()}, "twice"),
        ({"results.csv": (HEADER + "ppo,E,1,finished,1,1,,2,10,,d\n").encode(), "bench.json": b"{"}, "valid JSON"),
        (
            {"results.csv": (HEADER + "ppo,E,1,finished,1,1,,2,10,,d\n").encode(), "curves.csv": b"a,b\n"},
            "missing columns",
        ),
    ],
)
def test_bad_report_input_is_one_line_and_exit_status_2(files, message, tmp_path, capsys):
    d = tmp_path / "bench"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    assert main(["report", str(d), "--reps", "100"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in one_error_line(err)
    assert not (d / "report").exists()


def test_read_tables_accepts_what_the_runner_writes(tmp_path):
    from policyopt.bench.runner import read_tables, write_tables

    row = {
        "algo": "ppo",
        "target": "E",
        "seed": 3,
        "status": "finished",
        "final_score": 2.5,
        "auc": 1.25,
        "normalized_score": float("nan"),
        "num_evals": 2,
        "last_eval_step": 10,
        "error": "",
        "run_dir": "d",
    }
    write_tables(tmp_path, [row], [{"algo": "ppo", "target": "E", "seed": 3, "step": 10, "value": 2.5}])
    rows, curves, meta = read_tables(tmp_path)
    assert (rows[0]["seed"], rows[0]["final_score"], rows[0]["auc"]) == (3, 2.5, 1.25)
    assert rows[0]["normalized_score"] != rows[0]["normalized_score"]  # NaN: no reference scores
    assert curves == [{"algo": "ppo", "target": "E", "seed": 3, "step": 10, "value": 2.5}] and meta == {}
    with pytest.raises(UserError, match="no results.csv"):
        read_tables(tmp_path / "nothing")
