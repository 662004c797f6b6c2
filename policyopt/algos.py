"""The algorithm registry: every preset (ppo, a2c, sac, grpo, ...) is a named choice per box.

An :class:`Algorithm` names its config dataclass, its preset overrides, per-environment (or per-task)
tuned settings, and its train/evaluate functions by import path, so ``policyopt list`` and config
validation never import a heavy trainer (transformers, MuJoCo) they do not need.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyopt.config import load_yaml, resolve
from policyopt.errors import UserError
from policyopt.registry import Registry


@dataclass(frozen=True)
class Protocol:
    """A named set of config values under which a method's paper made its claims, applied on top of the
    preset (after its tuned per-environment settings, before a YAML file, ``--set`` and flags). It only sets
    config values; ``source`` names the docs section that gives the origin of every value."""

    doc: str
    source: str
    defaults: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # per env id / task, after ``defaults``

    def layers(self, target: Any) -> list[dict[str, Any]]:
        return [self.defaults, self.presets.get(str(target), {})]


@dataclass
class Algorithm:
    name: str
    family: str  # "control/on-policy", "control/off-policy", "lm"
    config: type
    trainer: str  # "module:function"; train(cfg, run_dir, resume=False) -> dict of final results
    evaluator: str  # "module:function"; evaluate(run_dir, episodes=..., video=...) -> dict
    doc: str
    defaults: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # tuned overrides per env id / task
    target_key: str = "env_id"  # the config key set by --env (control) or --task (lm)
    protocols: dict[str, Protocol] = field(default_factory=dict)  # named authors' protocols (--protocol NAME)

    def protocol(self, name: str) -> Protocol:
        if name not in self.protocols:
            valid = ", ".join(sorted(self.protocols)) or "none"
            raise UserError(f"algorithm {self.name!r} has no protocol {name!r} (protocols: {valid})")
        return self.protocols[name]

    def load(self, which: str) -> Callable:
        module, _, fn = (self.trainer if which == "train" else self.evaluator).partition(":")
        return getattr(importlib.import_module(module), fn)


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")

# Modules whose import registers algorithms (light: configs and presets only).
_FAMILIES = ["policyopt.control.presets", "policyopt.control.offpolicy_presets", "policyopt.lm.presets"]


def load_all() -> Registry[Algorithm]:
    for mod in _FAMILIES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    return ALGORITHMS


def register(algo: Algorithm) -> Algorithm:
    return ALGORITHMS.register(algo.name, algo)


def get(name: str) -> Algorithm:
    load_all()
    return ALGORITHMS.get(name)


def build_config(
    name: str,
    *,
    config_file: str | Path | None = None,
    sets: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
):
    """Resolve an algorithm's config: dataclass defaults < preset < tuned env/task preset < protocol (``protocol``
    in flags, ``sets`` or the YAML file) < YAML file < ``--set`` pairs < explicit flags (``--env``, ``--seed``,
    ``--total-steps``...)."""
    algo = get(name)
    file_layer = load_yaml(config_file) if config_file else {}
    sets = dict(sets or {})
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    protocol = [layer.pop("protocol") for layer in (file_layer, sets, flags) if layer.get("protocol") is not None]
    fields = {f for f in algo.config.__dataclass_fields__}
    for k in flags:
        if k not in fields:
            raise UserError(f"option for {k!r} does not apply to algorithm {name!r} ({algo.family})")
    target = flags.get(
        algo.target_key, sets.get(algo.target_key, file_layer.get(algo.target_key, algo.defaults.get(algo.target_key)))
    )
    if target is None:
        target = getattr(algo.config(), algo.target_key, None)
    tuned = algo.presets.get(str(target), {}) if target is not None else {}
    chosen = algo.protocol(str(protocol[-1])).layers(target) if protocol else []
    cfg = resolve(algo.config(), algo.defaults, tuned, *chosen, file_layer, sets, flags)
    if target is not None and algo.presets and str(target) not in algo.presets:
        _note_untuned(algo, str(target))
    _note_unused_loss_keys(cfg)
    return cfg


def _note_unused_loss_keys(cfg) -> None:
    """Say on stderr which ``loss.*`` keys were set but are not read by the chosen policy loss."""
    if not (hasattr(cfg, "policy_loss") and hasattr(cfg, "loss")):
        return
    from policyopt.losses import unused_loss_keys

    unused = unused_loss_keys(cfg.policy_loss, cfg.loss)
    if unused:
        keys = ", ".join(f"loss.{k}" for k in unused)
        print(f"policyopt: note: policy loss {cfg.policy_loss!r} does not read {keys}", file=sys.stderr)


_NOTED: set[tuple[str, str]] = set()


def _note_untuned(algo: Algorithm, target: str) -> None:
    """Say on stderr, once per process for each (algorithm, target), that an algorithm with tuned presets has
    none for ``target`` and runs with its defaults."""
    if (algo.name, target) in _NOTED:
        return
    _NOTED.add((algo.name, target))
    print(
        f"policyopt: note: {algo.name} has no tuned preset for {target}; using its defaults "
        f"(tuned: {', '.join(sorted(algo.presets))})",
        file=sys.stderr,
    )
