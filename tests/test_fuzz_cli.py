"""Generated bad input: ``policyopt config ALGO --set KEY=VALUE ...`` (the checks ``train`` makes before it creates a
run directory, without training) with keys from the algorithm's own table or random, and values of every kind.
Property: exit status 0 or 2, never a traceback; an error is one line; a printed config loads back."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyopt import algos
from policyopt.cli.main import main
from policyopt.config import describe, resolve

ALGOS = ["ppo", "a2c", "reinforce", "sac", "td3", "grpo"]
KEYS = {a: [row[0] for row in describe(algos.get(a).config)] for a in ALGOS}

WEIRD = [
    "",
    "null",
    "~",
    "nan",
    ".nan",
    ".inf",
    "-.inf",
    "-1",
    "0",
    "1e400",
    "-1e400",
    "1e20",
    "2**64",
    "0x10",
    "0123",
    "[",
    "{",
    "[1,",
    "{a: 1",
    "&a [*a]",
    "!!python/object:os.system",
    "\x00",
    "\u0663",
    "\U0001d7d8",
    "\u202e",
    "caf\u00e9",
    "1_000",
    "true",
    "on",
    "[100000000]",
    "[[1]]",
    "{foo: 1}",
    "{1: 2}",
    "- x",
    "a: b",
    "cuda",
    "CartPole-v1",
    "x:Y",
    ".x:Y",
    "os:getcwd",
    "exact_match",
]


def _text(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(blacklist_categories=("Cs",)), max_size=max_size)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), _text(6)
)
nested = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text(5), inner, max_size=3), max_leaves=8
)
values = st.one_of(
    _text(24),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.lists(st.integers(-(10**10), 10**10), max_size=4).map(json.dumps),
    nested.map(lambda v: json.dumps(v, ensure_ascii=False)),
    st.sampled_from(WEIRD),
)


@st.composite
def settings_for(draw):
    algo = draw(st.sampled_from(ALGOS))
    key = st.one_of(
        st.sampled_from(KEYS[algo]),
        _text(16),
        st.tuples(st.sampled_from(["env_kwargs.", "rewards.", "loss.", "props."]), _text(12)).map("".join),
    )
    pairs = draw(st.lists(st.tuples(key, values), min_size=1, max_size=3))
    return algo, pairs


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def _no_nan(v) -> bool:
    if isinstance(v, float):
        return not math.isnan(v)
    if isinstance(v, dict):
        return all(_no_nan(x) for x in v.values())
    if isinstance(v, list):
        return all(_no_nan(x) for x in v)
    return True


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a generated value names can touch the checkout


@settings(
    max_examples=60,
    deadline=10_000,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(settings_for())
def test_config_never_crashes(case):
    algo, pairs = case
    argv = ["config", algo]
    for k, v in pairs:
        argv += ["--set", f"{k}={v}"]
    code, out, err = _run(argv)
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err
        assert err.startswith("policyopt: error: ")
    else:
        printed = yaml.safe_load(out)
        assert isinstance(printed, dict)
        cls = algos.get(algo).config
        again = resolve(cls(), printed)  # what `train` would write to config.yaml loads back (eval, --resume)
        if _no_nan(printed):
            assert yaml.safe_load(yaml.safe_dump(printed)) == yaml.safe_load(_run(["config", algo] + argv[2:])[1])
        assert type(again) is cls


seed_items = st.one_of(
    st.integers(-3, 2**33).map(str),
    st.tuples(st.integers(-3, 2**33), st.integers(-3, 2**33)).map(lambda t: f"{t[0]}-{t[1]}"),
    st.tuples(st.integers(0, 50), st.integers(0, 50)).map(lambda t: f"{t[0]}-{t[1]}"),
    _text(4),
)
seed_specs = st.one_of(st.lists(seed_items, min_size=0, max_size=4).map(",".join), _text(12), st.sampled_from(WEIRD))


@settings(max_examples=25, deadline=10_000, database=None, derandomize=True)
@given(seed_specs)
def test_config_seeds_never_crash(text):
    """``--seeds`` of any text: exit 0 with the first member's config, or exit 2 with one line."""
    from policyopt.runs.members import parse_seeds

    code, out, err = _run(["config", "ppo", f"--seeds={text}"])
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    else:
        assert yaml.safe_load(out)["seed"] == parse_seeds(text)[0]
