"""Bench statistics and spec parsing on hand examples (no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from policyopt.bench import stats
from policyopt.bench.runner import curve_auc, final_score, normalize
from policyopt.bench.spec import parse_spec
from policyopt.errors import UserError


def rows_from(scores: dict[str, list[float]], target: str = "T") -> list[dict]:
    return [
        {
            "algo": a,
            "target": target,
            "seed": i + 1,
            "status": "finished",
            "final_score": float(s),
            "auc": float(s),
            "normalized_score": float(s),
        }
        for a, ss in scores.items()
        for i, s in enumerate(ss)
    ]


def test_iqm_hand_example():
    # 8 runs: the middle 50% are 3, 4, 5, 6 -> IQM 4.5, while the mean is pulled by the outlier.
    x = np.array([[1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0], [100.0]])
    assert stats.iqm(x) == pytest.approx(4.5)
    assert stats.mean(x) == pytest.approx(16.0)


def test_bootstrap_ci_contains_point_and_narrows_with_more_runs():
    rng = np.random.default_rng(0)
    small = rng.normal(10.0, 2.0, size=(5, 1))
    large = rng.normal(10.0, 2.0, size=(80, 1))
    est = stats.interval_estimates({"small": small, "large": large}, stats.iqm, reps=500)
    for point, lo, hi in est.values():
        assert lo <= point <= hi
    width = {k: v[2] - v[1] for k, v in est.items()}
    assert width["large"] < 0.75 * width["small"]


def test_single_run_has_no_interval():
    ((point, lo, hi),) = stats.interval_estimates({"a": np.array([[3.0]])}, stats.iqm, reps=100).values()
    assert point == 3.0 and math.isnan(lo) and math.isnan(hi)


def test_probability_of_improvement_of_dominating_algorithm_is_one():
    rows = rows_from({"good": [10, 11, 12, 13], "bad": [1, 2, 3, 4]}) + rows_from(
        {"good": [5, 6, 7, 8], "bad": [0, 1, 2, 3]}, target="U"
    )
    poi = {(p["x"], p["y"]): p for p in stats.probability_of_improvement(rows, ["good", "bad"], ["T", "U"], 200)}
    assert poi[("good", "bad")]["p"] == pytest.approx(1.0)
    assert poi[("bad", "good")]["p"] == pytest.approx(0.0)
    assert poi[("good", "bad")]["lo"] == pytest.approx(1.0)  # every bootstrap resample is dominated too


def test_score_matrix_keeps_only_seeds_finished_on_every_task():
    rows = rows_from({"a": [1, 2, 3]}) + rows_from({"a": [4, 5]}, target="U")
    rows[0]["status"] = "failed"  # seed 1 failed on T
    m = stats.score_matrix(rows, "a", ["T", "U"])
    assert m.tolist() == [[2.0, 5.0]]  # seed 2 only (seed 3 has no U)


def test_summary_table_counts_failures():
    rows = rows_from({"a": [1, 2, 3, 4]})
    rows[-1]["status"] = "failed"
    (row,) = stats.summary_table(rows, ["a"], ["T"], "final_score", 200)
    assert row["runs"] == 3 and row["failed"] == 1 and row["mean"] == pytest.approx(2.0)


def test_performance_profile_is_fraction_above_threshold():
    s = {"a": np.array([[0.1], [0.5], [0.9], [1.0]])}
    prof, ci = stats.performance_profiles(s, np.array([0.0, 0.5, 0.95]), reps=100)
    assert prof["a"].tolist() == pytest.approx([1.0, 0.5, 0.25])  # strictly above tau
    assert ci["a"].shape == (2, 3)


def test_curve_intervals_align_steps_and_bracket_iqm():
    curves = [
        {"algo": "a", "target": "T", "seed": s, "step": st, "value": float(s * st)}
        for s in (1, 2, 3, 4)
        for st in (10, 20)
    ] + [{"algo": "a", "target": "T", "seed": 1, "step": 30, "value": 0.0}]
    steps, point, lo, hi = stats.curve_intervals(curves, "a", "T", reps=200)
    assert steps.tolist() == [10, 20]  # step 30 is missing for seeds 2-4
    assert point.tolist() == pytest.approx([25.0, 50.0])  # IQM of 10,20,30,40 = mean of 20,30
    assert (lo <= point).all() and (point <= hi).all()


def test_final_score_auc_and_normalization():
    assert final_score([1, 2, 3, 4, 5], 3) == pytest.approx(4.0)
    assert final_score([7], 3) == pytest.approx(7.0)
    assert curve_auc([0, 10, 20], [0.0, 10.0, 10.0]) == pytest.approx(7.5)  # (50 + 100) / 20
    assert normalize(250.0, {"low": 0.0, "high": 500.0}) == pytest.approx(0.5)
    assert math.isnan(normalize(1.0, None))


def test_spec_parsing_and_errors():
    spec = parse_spec(
        {
            "algos": ["ppo"],
            "envs": ["CartPole-v1"],
            "tasks": ["gsm8k"],
            "seeds": 3,
            "budget": {"CartPole-v1": 1000},
            "eval": {"every": 500},
        }
    )
    assert spec.seeds == [1, 2, 3] and spec.budget_for("CartPole-v1") == 1000 and spec.budget_for("gsm8k") is None
    assert "mean of its last 3 evaluations" in spec.protocol.describe()
    lm_only, both = spec.protocol.describe(control=False, lm=True), spec.protocol.describe(lm=True)
    assert lm_only.startswith("Greedy decoding") and "episodes" not in lm_only
    assert both.startswith("Control: deterministic") and "language models: greedy" in both


def test_report_decimals_follow_the_score_scale():
    from policyopt.bench.report import _digits

    assert _digits([0.25, 0.9, float("nan")]) == 3  # accuracies
    assert _digits([475.0, 22.1]) == 1 and _digits([-0.2, -180.0]) == 1  # returns
    for bad, msg in [
        ({"algos": ["ppo"], "envs": ["CartPole-v1"]}, "eval.every"),
        ({"algos": ["ppo"], "eval": {"every": 1}}, "envs"),
        ({"algos": ["ppo"], "envs": ["E"], "eval": {"every": 1}, "budget": {"F": 1}}, "unknown targets"),
        ({"algos": ["ppo"], "envs": ["E"], "eval": {"every": 1}, "seed": 3}, "unknown keys"),
        ({"algos": ["ppo"], "envs": ["E"], "eval": {"every": 1}, "seeds": 1.5}, "seeds"),
    ]:
        with pytest.raises(UserError, match=msg):
            parse_spec(bad)


def test_grid_pairs_each_algorithm_with_targets_of_its_kind(tmp_path):
    from policyopt import algos
    from policyopt.bench.spec import expand

    spec = parse_spec(
        {
            "algos": ["ppo"],
            "envs": ["CartPole-v1", "Acrobot-v1"],
            "seeds": [3, 4],
            "budget": {"CartPole-v1": 1000, "Acrobot-v1": 2000},
            "eval": {"every": 500, "episodes": 4},
            "sets": {"learning_rate": 0.01},
            "overrides": [{"target": "Acrobot-v1", "seed": 4, "sets": {"learning_rate": 0.5}}],
        }
    )
    cells = {c.key: c for c in expand(spec, tmp_path)}
    assert len(cells) == 4
    c = cells[("ppo", "Acrobot-v1", 4)]
    assert (c.config["env_id"], c.config["seed"], c.config["total_steps"]) == ("Acrobot-v1", 4, 2000)
    assert c.config["learning_rate"] == 0.5 and cells[("ppo", "Acrobot-v1", 3)].config["learning_rate"] == 0.01
    assert c.config["n_steps"] == 256  # the tuned Acrobot preset still applies below the spec's overrides
    assert (c.config["eval_every"], c.config["eval_episodes"], c.config["progress"]) == (500, 4, False)
    assert c.run_dir == str(tmp_path / "runs" / "ppo__Acrobot-v1__s4")

    # Language-model presets (target_key "task") take the spec's tasks, not its envs.
    lm = [n for n, a in algos.load_all().items() if a.target_key == "task"]
    if not lm:
        pytest.skip("no language-model preset registered yet")
    spec = parse_spec(
        {
            "algos": ["ppo", lm[0]],
            "envs": ["CartPole-v1"],
            "tasks": ["addition"],
            "seeds": 1,
            "eval": {"every": {"CartPole-v1": 500, "addition": 5}},
            "metric": "eval/accuracy",
        }
    )
    cells = {c.key: c for c in expand(spec, tmp_path)}
    assert set(cells) == {("ppo", "CartPole-v1", 1), (lm[0], "addition", 1)}
    assert cells[(lm[0], "addition", 1)].config["task"] == "addition"
    assert cells[(lm[0], "addition", 1)].config["eval_every"] == 5


def test_bootstrap_intervals_are_reproducible():
    """rliable resamples with the global NumPy generator (its random_state is not used): the intervals must not
    depend on what drew from that generator before."""
    from policyopt.bench.stats import interval_estimates

    s = {"a": np.array([[0.58], [0.565], [0.76], [0.61], [0.62]])}
    first = interval_estimates(s, lambda x: float(x.mean()), 500)
    np.random.rand(7)
    assert interval_estimates(s, lambda x: float(x.mean()), 500) == first
