"""Typed config: coercion from strings, overrides in layers, validation messages, YAML, registries."""

from __future__ import annotations

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


@pytest.mark.parametrize("value, tp, shown", [
    ("abc", int, "'abc'"), ("1.5", int, "'1.5'"), (True, int, "True"), ("maybe", bool, "'maybe'"),
    (2, bool, "2"), ("x", float, "'x'"), (True, float, "True"), ("abc", float | None, "'abc'"),
    (None, float, "None"), ("nope", dict, "'nope'"), ([1], str, "[1]"),
    ("1,x", tuple[int, ...], "'x'"),  # the offending element is named
])
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
    cfg = resolve(base, {"lr": 0.1, "epochs": 3, "name": "preset"}, {"lr": 0.2, "name": "file"},
                  {"name": "cli"})
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
