"""Typed configuration: dataclasses with defaults in code, overridable from YAML and ``key=value``.

Fields are declared with :func:`opt`, which records a help string and an optional check (range or
choices). :func:`resolve` applies overrides in order (preset, YAML file, ``--set`` pairs), coerces
strings to the field's type and validates every field, raising :class:`~policyopt.errors.UserError`
with a one-line message naming the bad key or value and the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from policyopt.errors import UnknownChoice, UserError

Check = Callable[[Any], str | None]


def opt(default: Any, help: str = "", *, check: Check | None = None, choices: Any = None):
    """A config field with a default, a help string and an optional check or set of choices.

    ``choices`` is an iterable of names or a :class:`~policyopt.registry.Registry` (read lazily, so
    functions registered after the config class is defined are valid too).
    """
    meta = {"help": help, "check": check, "choices": choices}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----- checks ---------------------------------------------------------------------------------
def _num_ok(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def positive(v) -> str | None:
    return None if _num_ok(v) and v > 0 else "must be > 0"


def nonneg(v) -> str | None:
    return None if _num_ok(v) and v >= 0 else "must be >= 0"


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(v):
        if not _num_ok(v):
            return f"must be a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        ok_lo = v > lo if lo_open else v >= lo
        ok_hi = v < hi if hi_open else v <= hi
        return None if ok_lo and ok_hi else (
            f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")

    return check


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def all_positive(v) -> str | None:
    return None if all(isinstance(x, int) and x > 0 for x in v) else "must be positive integers"


# ----- coercion ---------------------------------------------------------------------------------
def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (possibly a string from the command line) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    elif origin in (tuple, list):
        if isinstance(value, str):
            s = value.strip().strip("[]()")
            value = [v.strip() for v in s.split(",") if v.strip()] if s else []
        if isinstance(value, list | tuple):
            inner = args[0] if args else Any
            items = [coerce(v, inner, key) for v in value]
            return tuple(items) if origin is tuple else items
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, str):
            loaded = yaml.safe_load(value)
            if isinstance(loaded, dict):
                return loaded
    raise UserError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")


# ----- applying overrides -----------------------------------------------------------------------
def _fields(cfg) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cfg)}


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dict-typed leaves are flattened too; see ``set_key``)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_key(cfg, key: str, value: Any, *, what: str = "config", prefix: str = ""):
    """Return a copy of dataclass ``cfg`` with dotted ``key`` set to ``value`` (coerced)."""
    head, _, rest = key.partition(".")
    fields = _fields(cfg)
    if head not in fields:
        raise UnknownChoice(f"{what} key", prefix + key, [prefix + f for f in fields])
    hints = typing.get_type_hints(type(cfg))
    current = getattr(cfg, head)
    if dataclasses.is_dataclass(current):
        if not rest:
            if isinstance(value, Mapping):
                for k, v in flatten(value).items():
                    current = set_key(current, k, v, what=what, prefix=f"{prefix}{head}.")
                return dataclasses.replace(cfg, **{head: current})
            raise UserError(f"config key {key!r} is a section; set one of its keys, e.g. {key}.<name>=...")
        return dataclasses.replace(cfg, **{head: set_key(current, rest, value, what=what, prefix=f"{prefix}{head}.")})
    tp = hints[head]
    if rest:  # free-form dict fields accept dotted sub-keys
        if typing.get_origin(tp) is dict or tp is dict:
            new = dict(current or {})
            new[rest] = value
            return dataclasses.replace(cfg, **{head: new})
        raise UnknownChoice(f"{what} key", prefix + key, [prefix + f for f in fields])
    return dataclasses.replace(cfg, **{head: coerce(value, tp, prefix + key)})


def validate(cfg, prefix: str = "") -> None:
    """Run every field's check/choices (recursively); raise UserError naming the first bad value."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(v):
            validate(v, key + ".")
            continue
        choices = f.metadata.get("choices")
        if choices is not None and v is not None:
            names = choices.names() if hasattr(choices, "names") else list(choices)
            if v not in names:
                raise UserError(f"config key {key!r}: {UnknownChoice('value', v, names)}")
        check = f.metadata.get("check")
        if check is not None:
            msg = check(v)
            if msg:
                raise UserError(f"config key {key!r}={v!r} {msg}")
    extra = getattr(cfg, "validate", None)
    if callable(extra):
        extra()


def parse_sets(pairs: Iterable[str]) -> dict[str, str]:
    """Parse ``["a.b=1", "c=x"]`` from ``--set`` into an ordered dict."""
    out: dict[str, str] = {}
    for p in pairs:
        key, eq, value = p.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--set expects key=value, got {p!r}")
        out[key.strip()] = value.strip()
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {str(p)!r}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "parse error"
        raise UserError(f"config file {str(p)!r} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return data


def resolve(cfg, *layers: Mapping[str, Any]):
    """Apply each mapping of (possibly dotted or nested) overrides in order, then validate."""
    for layer in layers:
        for k, v in flatten(layer).items():
            cfg = set_key(cfg, k, v)
    validate(cfg)
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    def plain(v):
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def to_yaml(cfg_or_dict) -> str:
    """The YAML text of a config (or a plain mapping); ``resolve(Cls(), yaml.safe_load(text))`` restores it."""
    data = to_dict(cfg_or_dict) if dataclasses.is_dataclass(cfg_or_dict) else cfg_or_dict
    return yaml.safe_dump(data, sort_keys=False)


def describe(cfg_cls) -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) rows for documentation and ``policyopt list``."""
    rows = []
    hints = typing.get_type_hints(cfg_cls)
    for f in dataclasses.fields(cfg_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            for k, t, d, h in describe(type(default)):
                rows.append((f"{f.name}.{k}", t, d, h))
        else:
            rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows
