"""Gymnasium 1.x vector environments and episode bookkeeping.

Vector envs use Gymnasium's default *next-step* autoreset: when a sub-env ends at step t
(terminated or truncated), step t returns the true final observation, and step t+1 resets that
sub-env, ignores its action and returns the first observation with reward 0. Trainers must mark that
step t+1 as an invalid transition (``valid = 0``); :class:`AutoresetTracker` does that.

Environment ids: a registered id (``CartPole-v1``); ``module:Id`` where importing ``module`` registers
``Id`` (Gymnasium's own convention); or ``module:Class`` naming a ``gymnasium.Env`` subclass, which is
registered on the fly under the id ``Class`` (so ``gymnasium.make("module:Class")`` works too). The
module is imported from the current directory or the Python path.
"""

from __future__ import annotations

import inspect
import types
import typing
import warnings

import numpy as np

from policyopt.config import describe_error, import_user_module
from policyopt.errors import UnknownChoice, UserError

VECTORIZATION = ("sync", "async")
# keyword arguments that gymnasium.make takes itself (the others go to the environment's constructor)
MAKE_KWARGS = {"max_episode_steps": "a positive integer", "disable_env_checker": "a bool"}


def env_ids() -> list[str]:
    import gymnasium as gym

    return sorted(gym.registry)


def resolve_env_id(env_id: str) -> str:
    """The id to pass to ``gymnasium.make`` for ``env_id`` (see the module docstring): ``env_id`` itself, or for
    ``module:Class`` the id the class is registered under here: ``Class``, or ``Class-vN`` above the versions the
    module registered itself, so that ``gymnasium.make("module:Class")`` (which takes the latest version of an
    unversioned name) makes this class too. Raises UserError (one line) when ``env_id`` names nothing."""
    import gymnasium as gym

    if ":" not in env_id:
        if env_id in gym.registry:
            return env_id
        raise UnknownChoice("environment", env_id, env_ids())
    module, _, name = env_id.partition(":")
    mod = import_user_module(module)
    obj = getattr(mod, name, None)
    if isinstance(obj, type) and issubclass(obj, gym.Env):
        return _register_class(name, obj)
    if name in gym.registry:
        return env_id
    classes = sorted(n for n, v in vars(mod).items() if isinstance(v, type) and issubclass(v, gym.Env))
    raise UserError(
        f"environment {env_id!r}: module {module!r} neither registers an environment {name!r} nor defines a "
        f"gymnasium.Env subclass of that name; its Env classes: {', '.join(classes) or '(none)'}"
    )


_CLASS_IDS: dict[type, str] = {}  # classes registered by resolve_env_id -> their id


def _register_class(name: str, cls: type) -> str:
    import gymnasium as gym
    from gymnasium.envs.registration import find_highest_version

    known = _CLASS_IDS.get(cls)
    latest = find_highest_version(None, name)
    top = name if latest is None else f"{name}-v{latest}"
    if known is not None and known == top and known in gym.registry and gym.registry[known].entry_point is cls:
        return known
    new_id = name if latest is None else f"{name}-v{latest + 1}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # re-registering a class of the same name replaces it
        gym.register(new_id, entry_point=cls)
    _CLASS_IDS[cls] = new_id
    return new_id


def _creator(spec):
    from gymnasium.envs.registration import load_env_creator

    ep = spec.entry_point
    return ep if callable(ep) else load_env_creator(ep)


def check_env_id(env_id: str) -> str | None:
    """Config check: None if ``env_id`` names an environment (see :func:`resolve_env_id`), else a message."""
    try:
        resolve_env_id(env_id)
    except UnknownChoice as e:
        return f"is not a registered Gymnasium environment: {e}"
    except UserError as e:
        return f"cannot be loaded: {e}"
    return None


def _fits(value, hint) -> bool | None:
    """Whether ``value`` has the simple annotated type ``hint`` (None when the hint is not a simple one)."""
    if hint in (int, float, bool, str, type(None)):
        if hint is float:
            return isinstance(value, int | float) and not isinstance(value, bool)
        if hint is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        results = [_fits(value, a) for a in typing.get_args(hint)]
        return None if None in results else any(results)
    return None


def gym_id(env_id: str) -> str:
    """The registered id that ``env_id`` makes (``module:Id`` -> ``Id``; ``module:Class`` -> its id here)."""
    resolved = resolve_env_id(env_id)
    return resolved.partition(":")[2] if ":" in resolved else resolved


def check_env_kwargs(env_id: str, kwargs: dict) -> None:
    """Check ``env_kwargs`` against gymnasium.make's own keywords and the environment constructor's signature
    (names, and values of simple annotated types) before anything is built; UserError names the bad key."""
    import gymnasium as gym

    creator = _creator(gym.spec(gym_id(env_id)))
    try:
        sig = inspect.signature(creator)
    except (TypeError, ValueError):
        sig = None
    try:
        hints = typing.get_type_hints(creator.__init__ if isinstance(creator, type) else creator)
    except Exception:  # unresolvable annotations: no type check
        hints = {}
    params = {} if sig is None else {n: p for n, p in sig.parameters.items() if n != "self"}
    open_ended = sig is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = sorted({*MAKE_KWARGS, *(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD)})
    for k, v in kwargs.items():
        key = f"env_kwargs.{k}"
        if not isinstance(k, str) or not k.isidentifier():
            raise UserError(f"config key {key!r}: {k!r} is not a keyword name")
        if k == "max_episode_steps" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise UserError(f"config key {key!r}={v!r} must be {MAKE_KWARGS[k]}")
        if k == "disable_env_checker" and not isinstance(v, bool):
            raise UserError(f"config key {key!r}={v!r} must be {MAKE_KWARGS[k]}")
        if k in MAKE_KWARGS:
            continue
        if k not in params and not open_ended:
            raise UserError(f"config key {key!r}: {env_id} takes no keyword {k!r}; valid: {', '.join(names)}")
        hint = hints.get(k)
        default = params[k].default if k in params else inspect.Parameter.empty
        if hint is None and type(default) in (int, float, bool, str):
            hint = type(default)  # an unannotated keyword: the type of its default
        if hint is not None and _fits(v, hint) is False:
            shown = getattr(hint, "__name__", str(hint).replace("typing.", ""))
            raise UserError(f"config key {key!r}={v!r}: {env_id} expects {shown}")


def probe_env(env_id: str, env_kwargs: dict | None = None) -> tuple[int, int]:
    """Build one environment with ``env_kwargs`` (and, unless it renders, reset it and take one random step) to
    find bad input before training; returns the flat observation and action sizes. Any failure is a one-line
    UserError."""
    import gymnasium as gym

    kwargs = dict(env_kwargs or {})
    check_env_kwargs(env_id, kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            env = gym.make(gym_id(env_id), **kwargs)
        except Exception as e:
            raise UserError(
                f"cannot make environment {env_id!r} with env_kwargs {kwargs}: {describe_error(e)}"
            ) from None
        try:
            if not kwargs.get("render_mode"):
                env.reset(seed=0)
                env.action_space.seed(0)
                env.step(env.action_space.sample())
            dims = []
            for space in (env.observation_space, env.action_space):
                try:
                    dims.append(int(gym.spaces.flatdim(space)))
                except Exception:
                    dims.append(1)
        except Exception as e:
            raise UserError(f"environment {env_id!r} failed in reset() or step(): {describe_error(e)}") from None
        finally:
            env.close()
    return dims[0], dims[1]


def make_vec_env(
    env_id: str,
    num_envs: int,
    seed: int,
    vectorization: str = "sync",
    env_kwargs: dict | None = None,
    render_mode: str | None = None,
):
    """A Gymnasium vector env (sync by default: on 2 cores it beats async 5-10x for small envs)."""
    import gymnasium as gym
    from gymnasium.vector import AutoresetMode

    if vectorization not in VECTORIZATION:
        raise UnknownChoice("vectorization", vectorization, VECTORIZATION)
    kwargs = dict(env_kwargs or {})
    check_env_kwargs(env_id, kwargs)
    if render_mode:
        kwargs["render_mode"] = render_mode
    try:
        env = gym.make_vec(
            gym_id(env_id),
            num_envs=num_envs,
            vectorization_mode=vectorization,
            vector_kwargs={"autoreset_mode": AutoresetMode.NEXT_STEP},
            **kwargs,
        )
    except Exception as e:  # the environment's constructor rejected its arguments
        raise UserError(f"cannot make environment {env_id!r} with env_kwargs {kwargs}: {describe_error(e)}") from None
    env.reset(seed=seed)
    return env


def seeds_for(seed: int, num_envs: int, epoch: int = 0) -> list[int]:
    """Distinct, reproducible per-sub-env seeds; ``epoch`` changes them at each env re-seed."""
    base = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
    return [(base + i) % (2**31 - 1) for i in range(num_envs)]


class AutoresetTracker:
    """Tracks which sub-envs will reset on the next step (their transition is invalid) and the raw
    (un-normalized) return and length of each running episode."""

    def __init__(self, num_envs: int):
        self.pending = np.zeros(num_envs, dtype=bool)
        self.ret = np.zeros(num_envs)
        self.len = np.zeros(num_envs, dtype=np.int64)

    def reset(self) -> None:
        self.pending[:] = False
        self.ret[:] = 0
        self.len[:] = 0

    def step(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray):
        """Returns ``(valid, finished)``: the 0/1 validity of this step's transitions and a list of
        ``(return, length)`` for episodes that ended on this step."""
        valid = ~self.pending
        self.ret += np.where(valid, reward, 0.0)
        self.len += valid
        done = (terminated | truncated) & valid
        finished = [(float(self.ret[i]), int(self.len[i])) for i in np.flatnonzero(done)]
        self.ret[done] = 0.0
        self.len[done] = 0
        self.pending = done
        return valid, finished
