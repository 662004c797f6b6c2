"""Typed config: coercion from strings, overrides in layers, validation messages, YAML, registries."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from policyopt.config import (
    coerce,
    describe,
    flatten,
    in_range,
    load_yaml,
    nonneg,
    opt,
    optional,
    parse_sets,
    positive,
    resolve,
    set_key,
    to_dict,
    to_yaml,
    validate,
)
from policyopt.errors import UnknownChoice, UserError
from policyopt.registry import Registry, doc_line

ALGOS: Registry = Registry("test algorithm")
ALGOS.register("alpha", object())
ALGOS.register("beta", object())


@dataclass
class Inner:
    width: int = opt(4, "layer width", check=positive)
    act: str = opt("tanh", "activation", choices=("tanh", "relu"))


@dataclass
class Cfg:
    epochs: int = opt(10, "number of epochs", check=positive)
    lr: float = opt(3e-4, "learning rate", check=positive)
    flag: bool = opt(False, "a switch")
    name: str = opt("run", "run name")
    clip: float | None = opt(None, "optional clip", check=optional(nonneg))
    hidden: tuple[int, ...] = opt((64, 64), "hidden sizes")
    frac: float = opt(0.5, "a fraction", check=in_range(0, 1))
    algo: str = opt("alpha", "algorithm", choices=ALGOS)
    inner: Inner = field(default_factory=Inner)
    extra: dict = opt({}, "free-form options")


# ============================================================================ coerce
def test_coerce_from_strings():
    assert coerce("1e-3", float, "lr") == pytest.approx(0.001)
    assert isinstance(coerce("3", float, "lr"), float)
    assert coerce("64,64", tuple[int, ...], "hidden") == (64, 64)
    assert coerce("(64, 32)", tuple[int, ...], "hidden") == (64, 32)
    assert coerce("[8]", tuple[int, ...], "hidden") == (8,)
    assert coerce("", tuple[int, ...], "hidden") == ()
    assert coerce([1, 2.0], tuple[int, ...], "hidden") == (1, 2)
    assert coerce("1,2", list[int], "xs") == [1, 2]
    for s in ("true", "True", "yes", "on", "1"):
        assert coerce(s, bool, "flag") is True
    for s in ("false", "FALSE", "no", "off", "0"):
        assert coerce(s, bool, "flag") is False
    assert coerce(1, bool, "flag") is True
    assert coerce("none", float | None, "clip") is None
    assert coerce("null", float | None, "clip") is None
    assert coerce(None, float | None, "clip") is None
    assert coerce("0.25", float | None, "clip") == 0.25
    assert coerce("1_000", int, "n") == 1000
    assert coerce("1e3", int, "n") == 1000
    assert coerce(4.0, int, "n") == 4
    assert coerce(5, str, "name") == "5"
    assert coerce("a: 1", dict, "extra") == {"a": 1}


@pytest.mark.parametrize(
    "value, tp, shown",
    [
        ("abc", int, "'abc'"),
        ("1.5", int, "'1.5'"),
        (True, int, "True"),
        ("maybe", bool, "'maybe'"),
        (2, bool, "2"),
        ("x", float, "'x'"),
        (True, float, "True"),
        ("abc", float | None, "'abc'"),
        (None, float, "None"),
        ("nope", dict, "'nope'"),
        ([1], str, "[1]"),
        ("1,x", tuple[int, ...], "'x'"),  # the offending element is named
    ],
)
def test_coerce_rejects_with_key_and_value(value, tp, shown):
    with pytest.raises(UserError) as e:
        coerce(value, tp, "some.key")
    msg = str(e.value)
    assert "'some.key'" in msg and f"got {shown}" in msg


# ============================================================================ resolve / set_key
def test_defaults_are_valid_and_independent():
    a, b = Cfg(), Cfg()
    validate(a)
    a.extra["k"] = 1
    assert b.extra == {}


def test_resolve_coerces_strings():
    cfg = resolve(Cfg(), {"lr": "1e-3", "hidden": "64,64", "flag": "true", "clip": "none", "epochs": "20"})
    assert cfg.lr == pytest.approx(1e-3) and isinstance(cfg.lr, float)
    assert cfg.hidden == (64, 64)
    assert cfg.flag is True
    assert cfg.clip is None
    assert cfg.epochs == 20
    cfg = resolve(Cfg(), {"clip": "0.3"})
    assert cfg.clip == 0.3


def test_resolve_applies_layers_in_order():
    base = Cfg()
    cfg = resolve(base, {"lr": 0.1, "epochs": 3, "name": "preset"}, {"lr": 0.2, "name": "file"}, {"name": "cli"})
    assert (cfg.lr, cfg.epochs, cfg.name) == (0.2, 3, "cli")
    assert base.lr == 3e-4  # the input is not mutated
    cfg = resolve(base, {"name": "cli"}, {"name": "later"})
    assert cfg.name == "later"


def test_nested_dotted_and_mapping_keys():
    cfg = resolve(Cfg(), {"inner.width": "8"})
    assert cfg.inner.width == 8 and cfg.inner.act == "tanh"
    cfg = resolve(Cfg(), {"inner": {"width": 16, "act": "relu"}})
    assert (cfg.inner.width, cfg.inner.act) == (16, "relu")
    cfg = set_key(Cfg(), "inner", {"width": 2})
    assert cfg.inner.width == 2
    # a dotted key into a free-form dict field
    cfg = resolve(Cfg(), {"extra.seed": 3}, {"extra": {"mode": "x"}})
    assert cfg.extra == {"seed": 3, "mode": "x"}


def test_unknown_key_names_key_and_lists_valid_keys():
    with pytest.raises(UserError) as e:
        resolve(Cfg(), {"epoch": 3})
    msg = str(e.value)
    assert "'epoch'" in msg
    for k in ("epochs", "lr", "flag", "hidden", "inner"):
        assert k in msg
    assert "did you mean epochs" in msg
    assert isinstance(e.value, UnknownChoice)
    # unknown nested key and a dotted key into a scalar field
    with pytest.raises(UserError) as e:
        resolve(Cfg(), {"inner.widht": 3})
    assert "'inner.widht'" in str(e.value) and "inner.width" in str(e.value)
    with pytest.raises(UserError, match="inner.widht"):
        resolve(Cfg(), {"inner": {"widht": 3}})
    with pytest.raises(UserError, match="lr.x"):
        resolve(Cfg(), {"lr.x": 3})


def test_section_cannot_be_set_to_a_scalar():
    with pytest.raises(UserError, match="section"):
        resolve(Cfg(), {"inner": 3})


def test_wrong_type_names_key_and_value():
    with pytest.raises(UserError) as e:
        resolve(Cfg(), {"epochs": "abc"})
    assert "'epochs'" in str(e.value) and "'abc'" in str(e.value)
    with pytest.raises(UserError) as e:
        resolve(Cfg(), {"inner.width": "wide"})
    assert "'wide'" in str(e.value) and "width" in str(e.value)
    with pytest.raises(UserError) as e:
        resolve(Cfg(), {"hidden": "64,big"})
    assert "'hidden'" in str(e.value)


def test_out_of_range():
    with pytest.raises(UserError) as e:
        resolve(Cfg(), {"frac": "1.5"})
    assert "'frac'" in str(e.value) and "[0, 1]" in str(e.value)
    with pytest.raises(UserError, match="'epochs'.*must be > 0"):
        resolve(Cfg(), {"epochs": 0})
    with pytest.raises(UserError, match="'clip'"):
        resolve(Cfg(), {"clip": -1})
    with pytest.raises(UserError, match="'inner.width'"):  # nested keys are named with their prefix
        resolve(Cfg(), {"inner.width": -2})
    with pytest.raises(UserError):
        resolve(Cfg(), {"frac": "nan"})
    resolve(Cfg(), {"frac": 0}, {"frac": 1})  # closed interval


def test_range_checks():
    assert in_range(0, 1)(0.5) is None
    assert in_range(0, 1, lo_open=True)(0) is not None
    assert in_range(0, 1, hi_open=True)(1) is not None
    assert "(0, 1)" in in_range(0, 1, lo_open=True, hi_open=True)("x")
    assert positive(True) is not None  # bools are not numbers here
    assert optional(positive)(None) is None


def test_invalid_choice_lists_valid_choices():
    with pytest.raises(UserError) as e:
        resolve(Cfg(), {"algo": "gamma"})
    msg = str(e.value)
    assert "'algo'" in msg and "'gamma'" in msg and "alpha, beta" in msg
    with pytest.raises(UserError, match="relu, tanh|tanh, relu"):
        resolve(Cfg(), {"inner.act": "gelu"})
    # the registry is read lazily: a name registered after the class was defined is valid
    reg: Registry = Registry("late")

    @dataclass
    class Late:
        pick: str = opt("a", choices=reg)

    reg.register("a", 1)
    reg.register("b", 2)
    assert resolve(Late(), {"pick": "b"}).pick == "b"


def test_custom_validate_hook_runs():
    @dataclass
    class Pair:
        lo: int = opt(0)
        hi: int = opt(1)

        def validate(self):
            if self.lo > self.hi:
                raise UserError("lo must be <= hi")

    with pytest.raises(UserError, match="lo must be <= hi"):
        resolve(Pair(), {"lo": 5})


# ============================================================================ files, --set
def test_parse_sets():
    got = parse_sets(["a.b=1", " c = x ", "d=e=f", "empty="])
    assert got == {"a.b": "1", "c": "x", "d": "e=f", "empty": ""}
    with pytest.raises(UserError, match="novalue"):
        parse_sets(["novalue"])
    with pytest.raises(UserError):
        parse_sets(["=3"])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    with pytest.raises(UserError, match="not found"):
        load_yaml(tmp_path)  # a folder is not a file
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: 3\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_yaml(lst)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_yaml(empty) == {}


def test_yaml_roundtrip_and_layers(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-3\ninner:\n  width: 32\nhidden: [128, 128]\n")
    cfg = resolve(Cfg(), load_yaml(f), parse_sets(["inner.width=7"]))
    assert cfg.lr == pytest.approx(1e-3) and cfg.hidden == (128, 128) and cfg.inner.width == 7
    out = tmp_path / "saved.yaml"
    out.write_text(to_yaml(cfg))
    again = resolve(Cfg(), load_yaml(out))
    assert again == cfg
    assert to_dict(cfg)["hidden"] == [128, 128]


def test_flatten_and_describe():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3, "f": {}}) == {"a.b": 1, "a.c.d": 2, "e": 3, "f": {}}
    rows = {r[0]: r for r in describe(Cfg)}
    assert rows["inner.width"][2] == 4 and rows["inner.width"][3] == "layer width"
    assert rows["epochs"][1] == "int"


# ============================================================================ registry & errors
def test_registry_duplicate_and_lookup():
    reg: Registry = Registry("widget")

    @reg.register("one")
    def one():
        """First widget.

        More text."""

    reg.register("one", one)  # the same object again is fine
    with pytest.raises(ValueError, match="already registered"):
        reg.register("one", lambda: None)
    assert reg.get("one") is one and "one" in reg and len(reg) == 1
    assert list(reg) == ["one"] and reg.names() == ["one"] and reg.check("one") == "one"
    assert doc_line(one) == "First widget."
    with pytest.raises(UnknownChoice):
        reg.check("two")


def test_unknown_choice_suggests_close_match():
    reg: Registry = Registry("policy loss")
    for n in ("ppo_clip", "dual_clip", "cispo"):
        reg.register(n, object())
    with pytest.raises(UnknownChoice) as e:
        reg.get("ppo_clp")
    msg = str(e.value)
    assert "did you mean ppo_clip" in msg
    assert "valid choices: cispo, dual_clip, ppo_clip" in msg
    assert msg.startswith("unknown policy loss 'ppo_clp'")
    assert isinstance(e.value, KeyError) and isinstance(e.value, UserError)
    with pytest.raises(UnknownChoice) as e:
        reg.get("zzzzzz")
    assert "did you mean" not in str(e.value)


# ============================================================================ --set values, limits, machine checks
from policyopt.config import (  # noqa: E402
    CONVENTIONS,
    Raw,
    _mlp,
    check_device,
    check_memory,
    import_user_module,
    int_in,
    load_user_object,
    parse_int,
    widths_in,
    yaml_value,
)


def test_set_values_are_yaml_12_scalars_where_the_type_does_not_decide():
    k = "extra.x"
    assert yaml_value(Raw("50"), k) == 50 and yaml_value(Raw("1e-3"), k) == 0.001
    assert yaml_value(Raw("true"), k) is True and yaml_value(Raw("null"), k) is None
    # YAML 1.1 quirks do not apply: these stay strings
    for text in ("on", "yes", "0123", "2020-01-01", "nan", "1_000:00"):
        assert yaml_value(Raw(text), k) == text
    assert yaml_value(Raw("[1, 2]"), k) == [1, 2] and yaml_value(Raw("{a: 1}"), k) == {"a": 1}
    v = yaml_value(Raw(".nan"), k)
    assert v != v
    with pytest.raises(UserError, match="not valid YAML.*line 1"):
        yaml_value(Raw("{a: 1"), k)
    with pytest.raises(UserError, match="refers to itself"):
        yaml_value(Raw("&a [*a]"), k)
    assert yaml_value(Raw("a: b: c"), k) == "a: b: c"  # not YAML and not a collection: the text itself


def test_dotted_set_into_a_dict_field_is_typed_but_yaml_file_strings_stay_strings():
    cfg = resolve(Cfg(), parse_sets(["extra.n=50", "extra.s=on", "extra.f=1e-3", "extra.l=[1, 2]"]))
    assert cfg.extra == {"n": 50, "s": "on", "f": 0.001, "l": [1, 2]}
    assert resolve(Cfg(), {"extra": {"n": "50"}}).extra == {"n": "50"}  # quoted in a YAML file: a string
    assert resolve(Cfg(), parse_sets(["extra={a: 1, b: [x]}"])).extra == {"a": 1, "b": ["x"]}
    cfg = resolve(Cfg(), parse_sets(["inner={width: 8, act: relu}"]))  # a whole section from one --set
    assert (cfg.inner.width, cfg.inner.act) == (8, "relu")
    assert to_yaml(cfg).count("!!") == 0  # no Python-specific tags (Raw is written as a plain string)


def test_union_and_list_coercion_of_command_line_text():
    assert coerce(Raw("true"), str | bool, "k") is True
    assert coerce(Raw("cheap"), str | bool, "k") == "cheap"
    assert coerce(Raw("0123"), str | None, "k") == "0123"
    assert coerce(Raw('["\\n", "x"]'), list[str], "k") == ["\n", "x"]  # a YAML list, not a comma split
    assert coerce(Raw("64,64"), tuple[int, ...], "k") == (64, 64)
    assert coerce("18446744073709551617", int, "k") == 18446744073709551617  # exact, not through a float
    with pytest.raises(UserError, match="too large"):
        coerce(10**400, float, "k")


def test_parse_int():
    assert parse_int("1e6") == 10**6 and parse_int("1_000") == 1000 and parse_int(" 7 ") == 7
    assert parse_int("18446744073709551616") == 2**64
    for bad in ("1.5", "nan", "inf", "1e400", "2**64", "", "x"):
        assert parse_int(bad) is None, bad


@dataclass
class Shared:
    seed: int = opt(1)
    threads: int = opt(1)
    total_steps: int = opt(100)
    hidden: tuple[int, ...] = opt((8,))
    inner: Inner = field(default_factory=Inner)


def test_conventional_limits_apply_to_every_config_by_field_name():
    resolve(Shared(), {"seed": 0}, {"seed": 2**32 - 1, "threads": 1024, "total_steps": 10**12, "hidden": [65536]})
    for key, bad, shown in [
        ("seed", -1, "[0, 4294967295]"),
        ("seed", 2**32, "[0, 4294967295]"),
        ("threads", 1025, "[1, 1024]"),
        ("total_steps", 10**12 + 1, "[1, 10**12]"),
        ("hidden", [65537], "[1, 65536]"),
        ("seed", True, "expects int"),
    ]:
        with pytest.raises(UserError) as e:
            resolve(Shared(), {key: bad})
        assert f"'{key}'" in str(e.value) and shown in str(e.value), (key, str(e.value))
    assert set(CONVENTIONS) >= {"seed", "threads", "total_steps", "num_envs", "eval_episodes", "hidden"}
    assert int_in(2, 5)(6) == "must be an integer in [2, 5]" and int_in(2, 5)(5) is None
    assert widths_in(1, 4)((1, 4)) is None and widths_in(1, 4)((0,)) is not None


def test_memory_lower_bounds_are_hand_computed():
    assert _mlp(4, [8], 2) == 4 * 8 + 8 + 8 * 2 + 2
    cfg = types.SimpleNamespace(n_steps=10, num_envs=2)
    need = 4 * 10 * 2 * (4 + 2 + 6)  # float32 obs (4) + action (2) + 6 per-step scalars
    check_memory(cfg, obs=4, act=2, available=need)  # exactly fits
    with pytest.raises(UserError) as e:
        check_memory(cfg, obs=4, act=2, available=need - 1)
    assert "n_steps=10, num_envs=2" in str(e.value) and "rollout buffer" in str(e.value)
    net = types.SimpleNamespace(hidden=(8,))
    with pytest.raises(UserError, match="networks"):
        check_memory(net, obs=4, act=2, available=16 * (_mlp(4, [8], 2) + _mlp(4, [8], 1)) - 1)


def test_device_check():
    import torch

    check_device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="'cuda'.*CUDA is not available.*valid: cpu"):
            check_device("cuda")
    with pytest.raises(UserError, match="'xpu9'"):
        check_device("xpu9")


def test_user_modules_fail_with_one_line_naming_the_cause(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "um_broken.py").write_text("import os\n\nx = missing + 1\n")
    (tmp_path / "um_syntax.py").write_text("def f(:\n    pass\n")
    (tmp_path / "um_ok.py").write_text("def g():\n    return 1\n\nVALUE = 3\n")
    with pytest.raises(UserError) as e:
        import_user_module("um_broken")
    assert str(e.value) == "cannot import um_broken: NameError: name 'missing' is not defined (um_broken.py, line 3)"
    with pytest.raises(UserError, match=r"cannot import um_syntax: SyntaxError: .*\(um_syntax.py, line 1\)"):
        import_user_module("um_syntax")
    with pytest.raises(UserError, match="no module named 'um_nope'"):
        import_user_module("um_nope")
    with pytest.raises(UserError, match="not a module name"):
        import_user_module("../x")
    assert load_user_object("um_ok:g", "reward function")() == 1
    with pytest.raises(UserError, match="no attribute 'h'; its callables: g"):
        load_user_object("um_ok:h", "reward function")
    with pytest.raises(UserError, match="module:name"):
        load_user_object("um_ok:", "reward function")
    for name in ("um_broken", "um_syntax", "um_ok"):
        sys.modules.pop(name, None)


def test_files_that_are_not_utf8_or_refer_to_themselves(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"not UTF-8 text: byte 0xe9 at offset 9"):
        load_yaml(bad)
    cyc = tmp_path / "cycle.yaml"
    cyc.write_text("a: &x\n  b: *x\n")
    with pytest.raises(UserError, match="refers to itself"):
        load_yaml(cyc)
