"""Every registered box conforms to its registry's Protocol, and its registry metadata says what it reads.

Signatures are compared by parameter names (and the Protocol's data attributes by presence), so a new entry
with a differently shaped signature fails here. Metadata is checked against behaviour: the loss config fields
and optional batch inputs a loss actually reads, the inputs an advantage estimator cannot run without, the
granularity of its output, and whether singleton groups leave it without a baseline.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import gymnasium as gym
import pytest
import torch

from policyopt import algos
from policyopt.advantages import ADVANTAGES, AdvantageConfig, AdvantageEstimator, AdvantageInputs
from policyopt.control.kl_control import TRUST_REGIONS, TrustRegion, TrustRegionFactory
from policyopt.control.networks import ActorCritic
from policyopt.control.props import SAMPLERS, Sampler, SamplerFactory
from policyopt.control.proximal import (
    ADV_NORMS,
    PROXIMALS,
    AdvantageNorm,
    AdvantageNormFactory,
    ProximalFactory,
    ProximalPolicy,
)
from policyopt.control.sampling_error import SAMPLING_ERRORS, SamplingErrorDiagnostic, SamplingErrorFactory
from policyopt.errors import UnknownChoice
from policyopt.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Aggregation,
    Aggregator,
    KLEstimator,
    PolicyBatch,
    PolicyLoss,
    PolicyLossConfig,
    unused_loss_keys,
)

algos.load_all()  # every family's registrations (the LM losses/estimators included)
import policyopt.lm.algorithms  # noqa: E402,F401  (registers opmd, asymre, bnpo, spo)


# ---- signature conformance -----------------------------------------------------------------------------------
def _param_names(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _protocol_members(proto) -> tuple[dict[str, list[str]], list[str]]:
    """Methods of a Protocol (name -> parameter names without ``self``) and its declared data attributes."""
    methods = {
        name: _param_names(fn)[1:]
        for name, fn in vars(proto).items()
        if inspect.isfunction(fn) and (not name.startswith("_") or name == "__call__")
    }
    return methods, list(vars(proto).get("__annotations__", {}))


def assert_conforms(obj, proto) -> None:
    methods, attrs = _protocol_members(proto)
    for attr in attrs:
        assert hasattr(obj, attr), f"{obj!r} lacks {proto.__name__}.{attr}"
    for name, expected in methods.items():
        impl = obj if name == "__call__" else getattr(obj, name, None)
        assert impl is not None and callable(impl), f"{obj!r} lacks {proto.__name__}.{name}"
        got = _param_names(impl)
        assert got == expected, f"{obj!r}.{name}{tuple(got)} does not match {proto.__name__}.{name}{tuple(expected)}"


FUNCTION_REGISTRIES = [
    (POLICY_LOSSES, PolicyLoss),
    (ADVANTAGES, AdvantageEstimator),
    (AGGREGATIONS, Aggregation),
    (KL_ESTIMATORS, KLEstimator),
]


@pytest.mark.parametrize(
    "registry,proto,name", [(r, p, n) for r, p in FUNCTION_REGISTRIES for n in r.names()], ids=lambda v: str(v)
)
def test_function_entries_match_their_protocol(registry, proto, name):
    assert_conforms(registry.get(name), proto)


def test_a_badly_shaped_entry_fails_the_check():
    def loss_with_other_names(batch, config, agg):
        return torch.zeros(()), {}

    def loss_with_extra_arg(b, hp, agg, extra):
        return torch.zeros(()), {}

    for bad in (loss_with_other_names, loss_with_extra_arg):
        with pytest.raises(AssertionError, match="does not match PolicyLoss"):
            assert_conforms(bad, PolicyLoss)

    class SamplerWithoutPush:
        blocks = ()

        def begin_iteration(self, agent): ...

        def behaviour_params(self, obs, params): ...

        def adapt(self, t, agent, rollout): ...

        def state_dict(self): ...

        def load_state_dict(self, state): ...

    assert not isinstance(SamplerWithoutPush(), Sampler)
    with pytest.raises(AssertionError, match="lacks Sampler.push"):
        assert_conforms(SamplerWithoutPush(), Sampler)


def _cfg(**sets):
    return algos.build_config("ppo", sets={"tensorboard": False, **sets})


def _agent():
    torch.manual_seed(0)
    return ActorCritic(4, gym.spaces.Discrete(2), (8,))


def _build(kind: str, name: str, cls):
    agent = _agent()
    if kind == "sampler":
        return cls(_cfg(sampler=name), agent, agent.dist)
    if kind == "proximal":
        return cls(_cfg(proximal=name), agent)
    if kind == "trust_region":
        return cls(_cfg(trust_region=name), 10)
    if kind == "adv_norm":
        return cls(_cfg(adv_norm=name))
    return cls(_cfg(sampling_error=name), agent)


CLASS_REGISTRIES = {
    "sampler": (SAMPLERS, SamplerFactory, Sampler),
    "proximal": (PROXIMALS, ProximalFactory, ProximalPolicy),
    "trust_region": (TRUST_REGIONS, TrustRegionFactory, TrustRegion),
    "adv_norm": (ADV_NORMS, AdvantageNormFactory, AdvantageNorm),
    "sampling_error": (SAMPLING_ERRORS, SamplingErrorFactory, SamplingErrorDiagnostic),
}


@pytest.mark.parametrize(
    "kind,name", [(k, n) for k, (reg, _, _) in CLASS_REGISTRIES.items() for n in reg.names()], ids=lambda v: str(v)
)
def test_class_entries_build_objects_matching_their_protocol(kind, name):
    registry, factory_proto, proto = CLASS_REGISTRIES[kind]
    factory = registry.get(name)
    assert_conforms(factory, factory_proto)
    obj = _build(kind, name, factory)
    assert isinstance(obj, proto)
    assert_conforms(obj, proto)


# ---- policy losses: metadata against what each loss reads ---------------------------------------------------
LOSS_FIELDS = {f.name for f in dataclasses.fields(PolicyLossConfig)}
OPTIONAL_INPUTS = ("kl_old", "logp_ref")


class _RecordingConfig(PolicyLossConfig):
    def __getattribute__(self, name):
        if name in LOSS_FIELDS:
            object.__getattribute__(self, "read").add(name)
        return object.__getattribute__(self, name)


class _RecordingBatch(PolicyBatch):
    def __getattribute__(self, name):
        if name in OPTIONAL_INPUTS:
            object.__getattribute__(self, "read").add(name)
        return object.__getattribute__(self, name)


def _recorded_call(name: str):
    # every optional field set (not None), so a property's fallback branch does not hide a read
    hp = _RecordingConfig(clip_eps_high=0.3, cispo_eps_low=0.5)
    object.__setattr__(hp, "read", set())
    logp = torch.tensor([[-1.0, -0.5], [-2.0, -0.3]], requires_grad=True)
    b = _RecordingBatch(
        logp,
        logp.detach() + 0.1,
        torch.tensor([[1.0, 1.0], [-1.0, -1.0]]),
        torch.ones(2, 2),
        kl_old=torch.full((2, 2), 0.05),
        logp_ref=logp.detach() - 0.2,
    )
    b.read = set()
    loss, stats = POLICY_LOSSES.get(name)(b, hp, Aggregator.for_batch("token-mean", b.mask))
    return hp.read, b.read, loss, stats


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_loss_metadata_names_exactly_what_the_loss_reads(name):
    meta = POLICY_LOSSES.meta(name)
    assert set(meta["needs"]) <= set(OPTIONAL_INPUTS) and set(meta["hparams"]) <= LOSS_FIELDS
    hp_read, batch_read, loss, stats = _recorded_call(name)
    assert hp_read == set(meta["hparams"])
    assert batch_read == set(meta["needs"])
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in stats.values())


def _help_readers(field: dataclasses.Field) -> set[str]:
    m = re.search(r"\[read by: ([^\]]*)\]", field.metadata["help"])
    assert m, f"help of loss.{field.name} does not say which losses read it"
    return {n.strip() for n in m.group(1).split(",")}


@pytest.mark.parametrize("field", dataclasses.fields(PolicyLossConfig), ids=lambda f: f.name)
def test_loss_config_help_names_the_losses_that_read_each_key(field):
    readers = {n for n in POLICY_LOSSES.names() if field.name in POLICY_LOSSES.meta(n)["hparams"]}
    assert _help_readers(field) == readers


def test_unused_loss_keys():
    cfg = PolicyLossConfig(clip_eps_high=0.28, drift_coef=0.01)
    assert unused_loss_keys("ppo_clip", cfg) == ["drift_coef"]
    assert unused_loss_keys("cpgd", cfg) == []
    assert unused_loss_keys("gspo", cfg) == ["clip_eps_high", "drift_coef"]
    assert unused_loss_keys("pg", PolicyLossConfig(clip_eps_low=0.1)) == ["clip_eps_low"]
    # cispo reads clip_eps_low only as the fallback of clip_eps_high
    assert unused_loss_keys("cispo", PolicyLossConfig(clip_eps_low=0.1, clip_eps_high=4.0)) == ["clip_eps_low"]
    assert unused_loss_keys("cispo", PolicyLossConfig(clip_eps_low=0.1)) == []
    # a value equal to the default is not reported, whatever the loss
    assert unused_loss_keys("pg", PolicyLossConfig(clip_eps_low=0.2, dual_clip_c=3.0)) == []
    # a tensor value (FixPO sets proximal_coef to a 0-d tensor) compares by value
    assert unused_loss_keys("ppo_clip", PolicyLossConfig(proximal_coef=torch.tensor(2.0))) == ["proximal_coef"]
    with pytest.raises(UnknownChoice, match="ppo_clip"):
        unused_loss_keys("ppo_clipp", PolicyLossConfig())


def _preset_configs():
    for name in algos.load_all().names():
        algo = algos.get(name)
        if "loss" not in algo.config.__dataclass_fields__ or "policy_loss" not in algo.config.__dataclass_fields__:
            continue
        for target in [None, *sorted(algo.presets)]:
            yield name, target


@pytest.mark.parametrize("name,target", list(_preset_configs()), ids=lambda v: str(v))
def test_presets_set_only_loss_keys_their_loss_reads(name, target):
    algo = algos.get(name)
    cfg = algos.build_config(name, flags={algo.target_key: target} if target else None)
    assert unused_loss_keys(cfg.policy_loss, cfg.loss) == []


# ---- advantage estimators: metadata against behaviour -----------------------------------------------------------
INPUT_FIELDS = {f.name for f in dataclasses.fields(AdvantageInputs)} - {"rewards"}
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


def _full_inputs(level: str, group_ids: torch.Tensor | None = None) -> AdvantageInputs:
    """Every input an estimator may read, at the data layout of its level."""
    if level == "step":  # (T, N) = (4, 2)
        r = torch.tensor([[1.0, 0.0], [0.5, 1.0], [0.0, 2.0], [1.0, 1.0]])
        return AdvantageInputs(
            rewards=r,
            values=r * 0.3,
            next_values=r * 0.2 + 0.1,
            terminated=torch.zeros(4, 2),
            truncated=torch.zeros(4, 2),
            valid=torch.ones(4, 2),
        )
    return AdvantageInputs(
        rewards=torch.tensor([1.0, 0.0, 0.5, 1.0]),
        values=torch.tensor([0.4, 0.6, 0.5, 0.2]),
        group_ids=torch.tensor([0, 0, 1, 1]) if group_ids is None else group_ids,
        mask=MASK,
        reward_components=torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 1.0], [1.0, 0.0]]),
        token_kl=torch.tensor([[0.1, 0.3, 0.2], [0.0, 0.2, 0.0], [0.4, 0.0, 0.0], [0.1, 0.1, 0.5]]),
        kl_coef=0.1,
    )


def _only(x: AdvantageInputs, keep) -> AdvantageInputs:
    return AdvantageInputs(rewards=x.rewards, **{k: getattr(x, k) for k in keep})


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_advantage_needs_are_exactly_the_required_inputs(name):
    meta = ADVANTAGES.meta(name)
    assert set(meta["needs"]) <= INPUT_FIELDS
    assert meta["level"] in ("step", "sequence", "token") and meta["min_group_size"] in (1, 2)
    x, est, cfg = _full_inputs(meta["level"]), ADVANTAGES.get(name), AdvantageConfig()
    adv, _ = est(_only(x, meta["needs"]), cfg)  # the declared inputs are enough
    assert torch.isfinite(adv).all()
    for missing in meta["needs"]:
        with pytest.raises(ValueError, match=missing):
            est(_only(x, [k for k in meta["needs"] if k != missing]), cfg)


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_advantage_level_matches_output(name):
    meta = ADVANTAGES.meta(name)
    x = _full_inputs(meta["level"])
    adv, _ = ADVANTAGES.get(name)(x, AdvantageConfig())
    if meta["level"] == "step":
        assert adv.shape == x.rewards.shape
        return
    assert adv.shape == MASK.shape
    assert (adv[MASK == 0] == 0).all()
    spread = [adv[i, MASK[i] > 0].max() - adv[i, MASK[i] > 0].min() for i in range(MASK.shape[0])]
    constant_rows = all(s.abs() < 1e-6 for s in spread)
    assert constant_rows == (meta["level"] == "sequence")


@pytest.mark.parametrize("name", ADVANTAGES.names())
def test_min_group_size_two_iff_singleton_groups_give_no_signal(name):
    meta = ADVANTAGES.meta(name)
    if meta["level"] == "step":
        assert meta["min_group_size"] == 1
        return
    est, cfg = ADVANTAGES.get(name), AdvantageConfig()
    singletons, _ = est(_full_inputs(meta["level"], group_ids=torch.arange(4)), cfg)
    pairs, _ = est(_full_inputs(meta["level"]), cfg)
    assert pairs.abs().sum() > 0
    assert bool((singletons == 0).all()) == (meta["min_group_size"] == 2)
