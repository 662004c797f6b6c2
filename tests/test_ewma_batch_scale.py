"""PPO-EWMA's batch-size adjustment rule (Hilton et al., 2022) against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from policyopt.control.proximal import batch_size_adjusted, decay_from_com, decay_from_span, ewma_com, ewma_span
from policyopt.errors import UserError

BASE = {"num_envs": 16, "minibatch_size": 64, "learning_rate": 1e-3, "ewma": {"prox_decay": 0.75, "adv_decay": 0.0}}


def _close(got: dict, want: dict) -> None:
    assert got["num_envs"] == want["num_envs"] and got["minibatch_size"] == want["minibatch_size"]
    assert got["learning_rate"] == pytest.approx(want["learning_rate"], rel=1e-12)
    for k in ("prox_decay", "adv_decay"):
        assert got["ewma"][k] == pytest.approx(want["ewma"][k], rel=1e-12, abs=1e-15), k


def test_ewma_com_and_span_hand_computed():
    assert ewma_com(0.75) == 3.0 and decay_from_com(3.0) == 0.75  # 1 / (1 - 0.75) - 1
    assert ewma_span(0.6) == pytest.approx(4.0) and decay_from_span(4.0) == pytest.approx(0.6)  # 1.6 / 0.4
    assert ewma_com(0.0) == 0.0 and ewma_span(0.0) == 1.0
    assert math.isinf(ewma_com(1.0)) and decay_from_com(math.inf) == 1.0


@pytest.mark.parametrize(
    "c, want",
    [
        # com 3 -> 12: d = 12/13; span 1 -> 4: d = 3/5; lr 1e-3 / sqrt(4)
        (
            4,
            {
                "num_envs": 4,
                "minibatch_size": 16,
                "learning_rate": 5e-4,
                "ewma": {"prox_decay": 12 / 13, "adv_decay": 0.6},
            },
        ),
        # com 3 -> 48: d = 48/49; span 1 -> 16: d = 15/17; lr 1e-3 / 4
        (
            16,
            {
                "num_envs": 1,
                "minibatch_size": 4,
                "learning_rate": 2.5e-4,
                "ewma": {"prox_decay": 48 / 49, "adv_decay": 15 / 17},
            },
        ),
        (1, BASE),
        # enlarging: com 3 -> 1.5: d = 0.6; span 1 -> 0.5 is clamped to 1: d = 0; lr 1e-3 * sqrt(2)
        (
            0.5,
            {
                "num_envs": 32,
                "minibatch_size": 128,
                "learning_rate": 1e-3 * 2**0.5,
                "ewma": {"prox_decay": 0.6, "adv_decay": 0.0},
            },
        ),
    ],
)
def test_batch_size_adjusted_hand_computed(c, want):
    _close(batch_size_adjusted(BASE, c), want)


def test_adv_span_scales_from_a_nonzero_decay():
    s = {**BASE, "ewma": {"prox_decay": 0.75, "adv_decay": 0.6}}  # span 4
    assert batch_size_adjusted(s, 2)["ewma"]["adv_decay"] == pytest.approx(7 / 9)  # span 8
    assert batch_size_adjusted(s, 0.5)["ewma"]["adv_decay"] == pytest.approx(1 / 3)  # span 2


def test_shrinking_then_enlarging_is_the_identity():
    s = {**BASE, "ewma": {"prox_decay": 0.8, "adv_decay": 0.3}}
    _close(batch_size_adjusted(batch_size_adjusted(s, 8), 1 / 8), s)


@pytest.mark.parametrize(
    "kwargs, key, want",
    [
        ({"lr_rule": "linear"}, "learning_rate", 1e-3 / 16),
        ({"keep": ("learning_rate",)}, "learning_rate", 1e-3),
        ({"keep": ("prox_decay",)}, "prox_decay", 0.75),
        ({"keep": ("adv_decay",)}, "adv_decay", 0.0),
    ],
)
def test_each_ablation_switch_changes_only_its_value(kwargs, key, want):
    full, abl = batch_size_adjusted(BASE, 16), batch_size_adjusted(BASE, 16, **kwargs)
    flat = lambda d: {"learning_rate": d["learning_rate"], **d["ewma"]}  # noqa: E731
    assert flat(abl)[key] == pytest.approx(want, rel=1e-12)
    assert {k: v for k, v in flat(abl).items() if k != key} == {k: v for k, v in flat(full).items() if k != key}
    assert (abl["num_envs"], abl["minibatch_size"]) == (1, 4)


@pytest.mark.parametrize(
    "c, kwargs",
    [(3, {}), (32, {}), (0, {}), (-2, {}), (float("nan"), {}), (4, {"keep": ("clip",)}), (4, {"lr_rule": "cube"})],
)
def test_bad_input_raises_user_error(c, kwargs):
    with pytest.raises(UserError):
        batch_size_adjusted(BASE, c, **kwargs)


def test_paper_protocol_resolves_and_shrinks_to_a_valid_config():
    from policyopt import algos

    sets = {"env_id": "CartPole-v1", "protocol": "paper"}
    cfg = algos.build_config("ppo_ewma", sets=sets)
    assert (cfg.num_envs, cfg.n_steps, cfg.minibatch_size, cfg.epochs) == (16, 32, 64, 1)  # 8 minibatches, E = 1
    assert (cfg.learning_rate, cfg.lr_schedule, cfg.adam_eps) == (1e-3, "constant", 1e-8)
    assert cfg.max_grad_norm is None and cfg.vf_clip is None and cfg.norm_reward
    assert (cfg.proximal, cfg.adv_norm, cfg.ewma.adv_decay) == ("ewma", "ewma", 0.0)
    assert ewma_com(cfg.ewma.prox_decay) == pytest.approx(3.5)  # PPO's mean proximal age at E = 1, 8 minibatches
    assert cfg.gamma == 0.98  # the env's tuned preset is kept
    settings = {
        "num_envs": cfg.num_envs,
        "minibatch_size": cfg.minibatch_size,
        "learning_rate": cfg.learning_rate,
        "ewma": {"prox_decay": cfg.ewma.prox_decay, "adv_decay": cfg.ewma.adv_decay},
    }
    small = algos.build_config("ppo_ewma", sets={**sets, **batch_size_adjusted(settings, 16)})
    assert (small.num_envs, small.minibatch_size, small.learning_rate) == (1, 4, 2.5e-4)
    assert small.ewma.imp_samp_max == 100.0 and ewma_com(small.ewma.prox_decay) == pytest.approx(56.0)
