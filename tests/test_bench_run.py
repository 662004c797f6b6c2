"""End to end on a tiny spec: process pool, a failing cell, resume, run dirs, report + Chromium, Ray."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from policyopt.bench.runner import RESULT_COLUMNS
from policyopt.cli.main import main

TINY_SPEC = {
    "name": "tiny",
    "algos": ["ppo", "a2c"],
    "envs": ["CartPole-v1"],
    "seeds": 2,
    "budget": 2048,
    "eval": {"every": 512, "episodes": 2, "last": 3},
    "sets": {"tensorboard": False, "checkpoint_every": 0},
    # one cell fails at train time (gymnasium.make rejects the keyword); the others must still finish
    "overrides": [{"algo": "a2c", "seed": 2, "sets": {"env_kwargs": {"no_such_kwarg": 1}}}],
    "reference_scores": {"CartPole-v1": {"low": 22.0, "high": 475.0}},
}


def write_spec(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**TINY_SPEC, **changes}))
    return path


def read_results(bench: Path) -> list[dict]:
    with open(bench / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    spec = write_spec(d / "tiny.yaml")
    rc = main(["bench", str(spec), "--out", str(d / "out"), "--workers", "2", "--reps", "200"])
    return d, spec, rc


def test_cells_are_run_directories_and_failures_are_reported(bench, capsys):
    d, _, rc = bench
    assert rc == 1  # a failed cell makes the exit status non-zero ...
    rows = {(r["algo"], int(r["seed"])): r for r in read_results(d / "out")}
    assert len(rows) == 4
    failed = rows[("a2c", 2)]
    assert failed["status"] == "failed" and "no_such_kwarg" in failed["error"]
    for key in [("ppo", 1), ("ppo", 2), ("a2c", 1)]:  # ... but the others finished
        r = rows[key]
        assert r["status"] == "finished", r
        assert int(r["num_evals"]) >= 4 and int(r["last_eval_step"]) >= 2048  # >= 3 in-loop + final
        run_dir = Path(r["run_dir"])
        assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (cfg["seed"], cfg["total_steps"], cfg["eval_every"], cfg["eval_episodes"]) == (
            key[1],
            2048,
            512,
            2,
        )
    info = json.loads((Path(failed["run_dir"]) / "run.json").read_text())
    assert info["status"] == "failed" and "no_such_kwarg" in info["error"]
    # An ordinary run directory: `policyopt eval` accepts it.
    assert main(["eval", rows[("ppo", 1)]["run_dir"], "--episodes", "2"]) == 0


def test_final_score_is_mean_of_last_three_evaluations(bench):
    d, _, _ = bench
    with open(d / "out" / "curves.csv", newline="") as f:
        curve = [float(r["value"]) for r in csv.DictReader(f) if r["algo"] == "ppo" and r["seed"] == "1"]
    row = next(r for r in read_results(d / "out") if r["algo"] == "ppo" and r["seed"] == "1")
    assert float(row["final_score"]) == pytest.approx(sum(curve[-3:]) / 3, rel=1e-5)


def test_resume_skips_finished_cells(bench, capsys):
    d, spec, _ = bench
    rows = read_results(d / "out")
    done = [Path(r["run_dir"]) / "metrics.csv" for r in rows if r["status"] == "finished"]
    mtimes = [p.stat().st_mtime_ns for p in done]
    capsys.readouterr()
    assert main(["bench", str(spec), "--out", str(d / "out"), "--workers", "1", "--no-report"]) == 1
    log = capsys.readouterr().out
    assert "3 already finished, 1 to run" in log  # only the failed cell is retried
    assert [p.stat().st_mtime_ns for p in done] == mtimes
    assert [r["final_score"] for r in read_results(d / "out")] == [r["final_score"] for r in rows]


def test_changed_config_is_refused(bench, capsys):
    d, _, _ = bench
    other = write_spec(d / "other.yaml", sets={"tensorboard": False, "checkpoint_every": 0, "learning_rate": 0.01})
    assert main(["bench", str(other), "--out", str(d / "out"), "--no-report"]) == 2
    assert "different config" in capsys.readouterr().err


def test_cell_stopped_before_its_final_evaluation_is_resumed(bench, capsys):
    d, spec, _ = bench
    rows = {(r["algo"], int(r["seed"])): r for r in read_results(d / "out")}
    run_dir = Path(rows[("ppo", 2)]["run_dir"])
    ckpt = (run_dir / "checkpoints" / "latest.safetensors").read_bytes()
    (run_dir / "eval.json").unlink()  # as if killed after the last checkpoint, before the final evaluation
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    capsys.readouterr()
    assert main(["bench", str(spec), "--out", str(d / "out"), "--workers", "1", "--no-report"]) == 1
    assert "2 already finished, 2 to run" in capsys.readouterr().out
    again = {(r["algo"], int(r["seed"])): r for r in read_results(d / "out")}[("ppo", 2)]
    assert again["status"] == "finished" and again["final_score"] == rows[("ppo", 2)]["final_score"]
    assert (run_dir / "checkpoints" / "latest.safetensors").read_bytes() == ckpt  # resumed, not retrained


# ---------------------------------------------------------------------------------------------- report
def _chromium() -> str:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    if os.path.exists(exe):
        return exe
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium"],
            check=True,
            env=env,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"could not install chromium with apt-get: {e}")
    return "/usr/bin/chromium"


@pytest.fixture(scope="session")
def chromium():
    return _chromium()


def test_report_markdown_figures_and_html(bench, chromium, tmp_path):
    d, _, _ = bench
    report = d / "out" / "report"
    md = (report / "report.md").read_text()
    assert "## Evaluation protocol" in md and "mean of its last 3 evaluations" in md
    assert "2 evaluation episodes every K steps (K = 512)" in md
    assert "| ppo | 2 | 0 |" in md and "| a2c | 1 | 1 |" in md  # failed cell counted, not silently dropped
    assert "a2c CartPole-v1 seed=2" in md.split("## Failed cells")[1]
    figs = ["learning_curves.png", "iqm_bars.png", "performance_profile.png"]
    for f in figs:
        p = report / "figures" / f
        assert p.stat().st_size > 5000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(figures/{f})" in md
    html = (report / "report.html").read_text()
    assert "figures/" not in html  # self-contained: no relative links

    # Render in headless Chromium: the DOM after load must hold the three images, decoded with real sizes.
    probe = tmp_path / "probe.html"
    probe.write_text(
        html.replace(
            "</body>",
            """<script>
window.addEventListener('load', () => {
  const imgs = [...document.querySelectorAll('figure img')];
  document.title = 'IMGS:' + imgs.map(i => i.id + '='
    + (i.complete ? i.naturalWidth + 'x' + i.naturalHeight : 'x'))
                                  .join(',');
});</script></body>""",
        )
    )
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    m = re.search(r"<title>IMGS:([^<]*)</title>", dom)
    assert m, dom[:500]
    sizes = dict(kv.split("=") for kv in m.group(1).split(","))
    assert set(sizes) == {"fig-curves", "fig-iqm", "fig-profile"}
    for k, v in sizes.items():
        w, h = (int(x) for x in v.split("x"))
        assert w > 300 and h > 200, (k, v)
    shot = tmp_path / "page.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2400", probe.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000


# ---------------------------------------------------------------------------------------------- Ray
COMPARED = [c for c in RESULT_COLUMNS if c not in ("error", "run_dir")]  # everything but paths and messages


def test_local_ray_gives_the_same_results_table(bench, tmp_path):
    pytest.importorskip("ray", reason="Ray is the optional extra policyopt[ray]")
    d, spec, _ = bench
    rc = main(["bench", str(spec), "--out", str(tmp_path / "ray"), "--workers", "2", "--ray", "--no-report"])
    assert rc == 1  # the same failing cell
    pool = [{k: r[k] for k in COMPARED} for r in read_results(d / "out")]
    ray_rows = read_results(tmp_path / "ray")
    assert [{k: r[k] for k in COMPARED} for r in ray_rows] == pool
    assert json.loads((tmp_path / "ray" / "bench.json").read_text())["executor"] == "ray(local)"
    assert "no_such_kwarg" in next(r for r in ray_rows if r["status"] == "failed")["error"]
