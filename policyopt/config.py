"""Typed configuration: dataclasses with defaults in code, overridable from YAML and ``key=value``.

Fields are declared with :func:`opt`, which records a help string and an optional check (range or
choices). :func:`resolve` applies overrides in order (preset, YAML file, ``--set`` pairs), coerces
strings to the field's type and validates every field, raising :class:`~policyopt.errors.UserError`
with a one-line message naming the bad key or value and the valid ones.

``--set`` values are :class:`Raw` strings, read by the field's type (``1e-3`` for a float, ``64,64`` or
``[64, 64]`` for a list); where the type does not decide (inside a free-form ``dict`` field, an ``Any``
field) they are read as YAML 1.2 scalars (:func:`yaml_value`): ``50`` is an int, ``1e-3`` a float,
``true`` a bool, ``null`` None, ``[..]``/``{..}`` a list/mapping, anything else stays a string.

Besides each field's own check, :data:`CONVENTIONS` bounds the fields every family names alike (``seed``,
``threads``, ``total_steps``, ``num_envs``, ``eval_episodes``, hidden widths), and :func:`check_machine`
compares what a config asks of this machine (a device, a lower bound of its memory, :data:`FOOTPRINTS`)
with what the machine has; the CLI runs it before it creates a run directory.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import re
import traceback
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
        return None if ok_lo and ok_hi else (f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")

    return check


def optional(check: Check) -> Check:
    return lambda v: None if v is None else check(v)


def all_positive(v) -> str | None:
    return None if all(isinstance(x, int) and x > 0 for x in v) else "must be positive integers"


def show_limit(n: int) -> str:
    """``10**12`` for large powers of ten, the plain number otherwise."""
    k = len(str(n)) - 1
    return f"10**{k}" if n >= 10**6 and n == 10**k else str(n)


def int_in(lo: int, hi: int, what: str = "an integer") -> Check:
    """Check: an integer (not a bool) in ``[lo, hi]``; the message names both limits."""

    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"must be {what} in [{show_limit(lo)}, {show_limit(hi)}]"

    return check


def widths_in(lo: int, hi: int) -> Check:
    """Check: a sequence of integer layer widths, each in ``[lo, hi]``."""

    def check(v):
        ok = all(isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi for x in v)
        return None if ok else f"must be layer widths, each an integer in [{show_limit(lo)}, {show_limit(hi)}]"

    return check


def finite_number(v: Any) -> float | int | None:
    """``v`` as a finite number (numeric strings are converted), or None."""
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        return v if math.isfinite(v) else None
    except OverflowError:
        return None


# Limits shared by every family, applied to top-level fields of these names (besides the field's own check).
SEED_MAX = 2**32 - 1
STEPS_MAX = 10**12
EPISODES_MAX = 10**6
THREADS_MAX = 1024
NUM_ENVS_MAX = 2**16
WIDTH_MAX = 2**16
CONVENTIONS: dict[str, Check] = {
    "seed": int_in(0, SEED_MAX),
    "total_steps": int_in(1, STEPS_MAX),
    "threads": int_in(1, THREADS_MAX),
    "num_envs": int_in(1, NUM_ENVS_MAX),
    "eval_episodes": int_in(1, EPISODES_MAX),
    "hidden": widths_in(1, WIDTH_MAX),
    "actor_hidden": widths_in(1, WIDTH_MAX),
    "critic_hidden": widths_in(1, WIDTH_MAX),
    "num_atoms": int_in(1, WIDTH_MAX),
}


def parse_int(text: str) -> int | None:
    """An integer written as ``1000``, ``1_000``, ``1e6`` or ``1.0e3``; None when it is not one."""
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        pass
    try:
        f = float(t)
    except ValueError:
        return None
    if not math.isfinite(f) or not f.is_integer():
        return None
    return int(f)


# ----- coercion ---------------------------------------------------------------------------------
class Raw(str):
    """A value as typed on the command line (``--set key=VALUE``): read by the field's type, else as YAML."""


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 core-schema scalars (``on``/``yes`` stay strings, ``1e-3`` is a float); a number written with a
    leading zero (``0123``) stays a string too, neither octal (YAML 1.1) nor silently decimal."""

    yaml_implicit_resolvers: dict = {}


for _tag, _rx, _first in [
    ("tag:yaml.org,2002:null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9_]*)$", list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        list("-+.0123456789"),
    ),
]:
    _Yaml12Loader.add_implicit_resolver(_tag, re.compile(_rx), _first)

MAX_DEPTH = 32


def plain_data(value: Any, where: str, _depth: int = 0) -> Any:
    """``value`` if it is a finite tree of mappings, lists and scalars; raise UserError if it refers to itself
    (YAML anchors can build cycles) or nests deeper than :data:`MAX_DEPTH`."""
    if _depth > MAX_DEPTH:
        raise UserError(f"{where} nests more than {MAX_DEPTH} levels deep or refers to itself")
    if isinstance(value, Mapping):
        for v in value.values():
            plain_data(v, where, _depth + 1)
    elif isinstance(value, list | tuple):
        for v in value:
            plain_data(v, where, _depth + 1)
    return value


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line: what is wrong and where (``expected ',' or ']' (line 1, column 7)``)."""
    problem = getattr(e, "problem", None) or (str(e).splitlines() or ["parse error"])[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else str(problem)


def yaml_value(text: str, key: str) -> Any:
    """A ``--set`` value read as YAML 1.2 (see the module docstring); text that is not YAML stays a string,
    except a ``[``/``{`` collection, which must parse."""
    try:
        value = yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        if text.lstrip()[:1] in ("[", "{"):
            raise UserError(f"config key {key!r}: {text!r} is not valid YAML ({yaml_problem(e)})") from None
        return str(text)
    return plain_data(value, f"config key {key!r}")


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
        # str last: "true" for `str | bool` is the bool, "cheap" the string
        for a in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return coerce(value, a, key)
            except UserError:
                pass
        raise UserError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return yaml_value(value, key) if isinstance(value, Raw) else value
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
        if isinstance(value, str) and parse_int(value) is not None:
            return parse_int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise UserError(f"config key {key!r} expects a float, got {value!r} (too large)") from None
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    elif origin in (tuple, list):
        if isinstance(value, Raw) and value.lstrip()[:1] == "[":
            value = yaml_value(value, key)
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
            loaded = yaml_value(Raw(value), key)
            if isinstance(loaded, dict):
                return loaded
    raise UserError(f"config key {key!r} expects {_type_name(tp)}, got {_short(value)}")


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
            if isinstance(value, Raw) and value.lstrip()[:1] == "{":
                value = yaml_value(value, prefix + key)
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
            new[rest] = yaml_value(value, prefix + key) if isinstance(value, Raw) else value
            return dataclasses.replace(cfg, **{head: new})
        raise UnknownChoice(f"{what} key", prefix + key, [prefix + f for f in fields])
    return dataclasses.replace(cfg, **{head: coerce(value, tp, prefix + key)})


def _short(v: Any, limit: int = 120) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


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
        for check in (f.metadata.get("check"), CONVENTIONS.get(f.name) if not prefix else None):
            msg = check(v) if check is not None else None
            if msg:
                raise UserError(f"config key {key!r}={_short(v)} {msg}")
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
        out[key.strip()] = Raw(value.strip())
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {str(p)!r}")
    data = read_yaml_file(p, "config file")
    if not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must hold a mapping of keys to values")
    return data


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path``; UserError naming the file and the first bad byte otherwise."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the name
        raise UserError(f"cannot read {what} {str(p)!r}: {getattr(e, 'strerror', None) or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{what} {str(p)!r} is not UTF-8 text: byte {data[e.start]:#04x} at offset {e.start}; save it as UTF-8"
        ) from None


def read_yaml_file(path: str | Path, what: str) -> Any:
    """YAML (safe) of a UTF-8 file; empty is ``{}``; UserError on bad text, bad YAML, cycles."""
    text = read_text(path, what)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{what} {str(path)!r} is not valid YAML: {yaml_problem(e)}") from None
    return plain_data({} if data is None else data, f"{what} {str(path)!r}")


def resolve(cfg, *layers: Mapping[str, Any]):
    """Apply each mapping of (possibly dotted or nested) overrides in order, then validate."""
    for layer in layers:
        for k, v in flatten(layer).items():
            cfg = set_key(cfg, k, v)
    validate(cfg)
    return cfg


def plain(v: Any) -> Any:
    """``v`` with tuples as lists and str subclasses as str (what YAML and JSON write as such)."""
    if isinstance(v, tuple | list):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return str(v) if isinstance(v, str) else v


def to_dict(cfg) -> dict[str, Any]:
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
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        if dataclasses.is_dataclass(default):
            for k, t, d, h in describe(type(default)):
                rows.append((f"{f.name}.{k}", t, d, h))
        else:
            rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


# ----- what a config asks of this machine ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Footprint:
    """A lower bound, in bytes, of the memory that the config keys ``keys`` ask for (``obs``/``act``: the flat
    observation and action sizes, 1 when unknown)."""

    what: str
    keys: tuple[str, ...]
    nbytes: Callable[[Any, int, int], float]


def _mlp(n_in: int, hidden: Iterable[int], n_out: int) -> int:
    sizes = [n_in, *hidden, n_out]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


# float32 everywhere; networks count parameters, gradients and two optimizer moments (16 bytes each)
FOOTPRINTS: tuple[Footprint, ...] = (
    Footprint(
        "the rollout buffer", ("n_steps", "num_envs"), lambda c, o, a: 4.0 * c.n_steps * c.num_envs * (o + a + 6)
    ),
    Footprint("the replay buffer", ("buffer_size",), lambda c, o, a: 4.0 * c.buffer_size * (2 * o + a + 3)),
    Footprint("a minibatch", ("batch_size",), lambda c, o, a: 4.0 * c.batch_size * (2 * o + a + 3)),
    Footprint(
        "the actor and critic networks",
        ("hidden",),
        lambda c, o, a: 16.0 * (_mlp(o, c.hidden, a) + _mlp(o, c.hidden, 1)),
    ),
    Footprint(
        "the actor and critic networks",
        ("actor_hidden", "critic_hidden"),
        lambda c, o, a: (
            16.0 * (_mlp(o, c.actor_hidden, a) + getattr(c, "n_critics", 1) * _mlp(o + a, c.critic_hidden, 1))
        ),
    ),
    Footprint(
        "one step's completion tokens",
        ("prompts_per_step", "group_size", "max_new_tokens"),
        lambda c, o, a: 8.0 * c.prompts_per_step * c.group_size * c.max_new_tokens,
    ),
)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux ``MemAvailable``, else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def show_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"


def check_memory(cfg, obs: int = 1, act: int = 1, available: int | None = None) -> None:
    """UserError when one :data:`FOOTPRINTS` entry alone asks for more than the available memory."""
    available = available_memory() if available is None else available
    if not available:
        return
    for fp in FOOTPRINTS:
        if all(hasattr(cfg, k) for k in fp.keys):
            need = fp.nbytes(cfg, max(1, obs), max(1, act))
            if need > available:
                keys = ", ".join(f"{k}={_short(getattr(cfg, k), 40)}" for k in fp.keys)
                raise UserError(
                    f"config keys {keys} ask for at least {show_bytes(need)} for {fp.what}; this "
                    f"machine has {show_bytes(available)} of memory available"
                )


def check_device(device: str) -> None:
    """UserError unless torch can use ``device`` here (``cpu``, ``cuda``, ``cuda:N``, ``mps``)."""
    import torch

    valid = ["cpu"]
    if torch.cuda.is_available():
        valid += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        valid.append("mps")
    if device in valid:
        return
    kind = str(device).split(":")[0]
    why = {
        "cuda": "CUDA is not available on this machine"
        if not torch.cuda.is_available()
        else f"this machine has {torch.cuda.device_count()} CUDA device(s)",
        "mps": "MPS is not available on this machine",
    }.get(kind, "unknown device")
    raise UserError(f"config key 'device'={device!r}: {why}; valid: {', '.join(valid)}")


def check_machine(cfg, obs: int = 1, act: int = 1) -> None:
    """What the CLI checks before training: the device exists here and the sizes fit in memory."""
    if isinstance(getattr(cfg, "device", None), str):
        check_device(cfg.device)
    check_memory(cfg, obs, act)


def iteration_size(cfg) -> tuple[int, str] | None:
    """Environment steps per training iteration and how they are made of config keys (``total_steps`` is
    rounded up to a multiple of it), for configs with ``n_steps``/``num_envs``; None otherwise."""
    if hasattr(cfg, "n_steps") and hasattr(cfg, "num_envs"):
        return cfg.n_steps * cfg.num_envs, f"n_steps * num_envs = {cfg.n_steps} * {cfg.num_envs}"
    if hasattr(cfg, "num_envs") and hasattr(cfg, "env_id"):
        return cfg.num_envs, "num_envs"
    return None


# ----- user code named in a config ----------------------------------------------------------------------
def describe_error(e: BaseException) -> str:
    """``Type: first line of the message (file.py, line N)`` for an exception raised in the user's code."""
    return f"{type(e).__name__}: {_first_line(e)}{_where(e)}"


def _where(e: BaseException) -> str:
    """`` (file.py, line N)``: where in the user's code ``e`` was raised (the last frame outside importlib)."""
    if isinstance(e, SyntaxError) and e.filename:
        path, line = e.filename, e.lineno
    else:
        frames = [
            f
            for f in traceback.extract_tb(e.__traceback__)
            if not f.filename.startswith("<") and "importlib" not in f.filename
        ]
        if not frames:
            return ""
        path, line = frames[-1].filename, frames[-1].lineno
    try:
        rel = os.path.relpath(path)
        path = rel if not rel.startswith("..") else path
    except ValueError:
        pass
    return f" ({path}, line {line})"


def import_user_module(name: str) -> types.ModuleType:
    """Import module ``name`` (the current directory is searchable); any failure, including one raised
    inside the module, is a one-line UserError: ``cannot import mod: NameError: ... (mod.py, line 3)``."""
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise UserError(f"cannot import {name!r}: not a module name (dotted Python identifiers)")
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise UserError(
                f"cannot import {name}: no module named {e.name!r} (searched the current directory and the Python path)"
            ) from None
        raise UserError(f"cannot import {name}: {describe_error(e)}") from None
    except Exception as e:  # the user's module raised while being imported
        raise UserError(f"cannot import {name}: {describe_error(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text.strip() else "(no message)"


def load_user_object(path: str, what: str) -> Any:
    """The object named ``module:attribute``; UserError (one line) when the module cannot be imported or
    has no such attribute."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise UserError(f"{what} {path!r} must be written module:name")
    mod = import_user_module(module)
    try:
        return getattr(mod, attr)
    except AttributeError:
        names = [n for n in vars(mod) if not n.startswith("_") and callable(vars(mod)[n])]
        raise UserError(
            f"cannot load {what} {path!r}: module {module!r} has no attribute {attr!r}; "
            f"its callables: {', '.join(sorted(names)) or '(none)'}"
        ) from None
