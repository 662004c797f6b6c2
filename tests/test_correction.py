"""Rollout corrections: hand-computed numbers on a 2x3 batch for every entry, and properties (identity when the
sampler matches, weights bounded by the cap, masks monotone in their bounds, sequence IS = product of token
ratios, padding inert, ESS in (0, 1], no gradient through the weights), composition with every policy loss."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import policyopt.lm.algorithms  # noqa: F401  (registers the LM losses, so composition covers them too)
from policyopt.config import validate
from policyopt.errors import UserError
from policyopt.losses import POLICY_LOSSES, Aggregator, PolicyBatch, PolicyLossConfig
from policyopt.losses.correction import (
    CORRECTIONS,
    Correction,
    CorrectionConfig,
    apply_correction,
    masked_quantiles,
)

D = torch.float64
NAMES = CORRECTIONS.names()
STAT_NAMES = {f"correction/{k}" for k in ("ratio_p50", "ratio_p90", "ratio_p99", "ratio_max")} | {
    "correction/masked_frac",
    "correction/ess",
    "correction/weight_mean",
}

# ---- the 2x3 hand example -------------------------------------------------------------------------------------
# valid tokens: row 0 all three, row 1 the first two; rho = pi_prox / mu at valid tokens:
RHO = [[1.5, 0.4, 3.0], [0.8, 1.25, 1.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
BEHAV = [[-1.0, -2.0, -0.5], [-1.5, -0.3, -4.0]]


def _hand_inputs(pad_garbage: float = 7.0):
    behav = torch.tensor(BEHAV, dtype=D)
    prox = behav + torch.tensor(RHO, dtype=D).log()
    prox[1, 2] = pad_garbage  # padding: any value
    logp = prox.clone()
    return logp, prox, behav, torch.tensor(MASK, dtype=D)


def _run(name: str, **cfg):
    logp, prox, behav, mask = _hand_inputs()
    return CORRECTIONS.get(name)(logp, prox, behav, mask, CorrectionConfig(name=name, **cfg))


def _eff(out):
    """Effective weights (weight * keep) at the five valid tokens, row-major."""
    w = (out.weight * out.keep).tolist()
    return w[0] + w[1][:2]


def _ess(w_seq):
    return sum(w_seq) ** 2 / (len(w_seq) * sum(x * x for x in w_seq))


# token ratios over the valid tokens, sorted: 0.4, 0.8, 1.25, 1.5, 3.0; quantiles interpolate log rho
P90 = 1.5 * 2.0**0.6  # position 0.9 * 4 = 3.6 between 1.5 and 3.0 (log-linear)
P99 = 1.5 * 2.0**0.96


@pytest.mark.parametrize(
    "name, cfg, eff, masked_frac, weight_mean, ess",
    [
        ("none", {}, [1, 1, 1, 1, 1], 0.0, 1.0, 1.0),
        # min(rho, 2): 1.5, 0.4, 2 | 0.8, 1.25; sequence means 3.9/3 = 1.3 and 2.05/2 = 1.025
        ("tis", {"cap": 2.0}, [1.5, 0.4, 2.0, 0.8, 1.25], 0.0, 5.95 / 5, _ess([1.3, 1.025])),
        # products 1.5 * 0.4 * 3 = 1.8 and 0.8 * 1.25 = 1.0, both under the cap 2
        ("seq_is", {"cap": 2.0}, [1.8] * 3 + [1.0] * 2, 0.0, (3 * 1.8 + 2) / 5, _ess([1.8, 1.0])),
        # ... and the first capped at 1.5
        ("seq_is", {"cap": 1.5}, [1.5] * 3 + [1.0] * 2, 0.0, (3 * 1.5 + 2) / 5, _ess([1.5, 1.0])),
        # 3.0 > 2 is masked; the others keep their ratio
        ("mis_token", {"cap": 2.0}, [1.5, 0.4, 0.0, 0.8, 1.25], 0.2, 3.95 / 4, _ess([1.9 / 3, 1.025])),
        # sequence 0 (1.8 > 1.5) masked, sequence 1 (1.0) kept with weight 1
        ("mis_seq", {"cap": 1.5}, [0, 0, 0, 1.0, 1.0], 0.6, 1.0, _ess([0.0, 1.0])),
        ("mis_seq", {"cap": 2.0}, [1.8] * 3 + [1.0] * 2, 0.0, (3 * 1.8 + 2) / 5, _ess([1.8, 1.0])),
        # [0.5, 2]: 0.4 and 3.0 masked
        ("icepop", {"icepop_low": 0.5, "icepop_high": 2.0}, [1.5, 0, 0, 0.8, 1.25], 0.4, 3.55 / 3, _ess([0.5, 1.025])),
        # [0.3, 5]: nothing masked, weights are the ratios
        (
            "icepop",
            {"icepop_low": 0.3, "icepop_high": 5.0},
            [1.5, 0.4, 3.0, 0.8, 1.25],
            0.0,
            6.95 / 5,
            _ess([4.9 / 3, 1.025]),
        ),
        # geometric means 1.8 ** (1/3) = 1.2164 and 1.0: eps 0.1 masks sequence 0, eps 0.25 keeps both
        ("geo_mask", {"geo_eps": 0.1}, [0, 0, 0, 1, 1], 0.6, 1.0, _ess([0.0, 1.0])),
        ("geo_mask", {"geo_eps": 0.25}, [1, 1, 1, 1, 1], 0.0, 1.0, 1.0),
    ],
)
def test_hand_example(name, cfg, eff, masked_frac, weight_mean, ess):
    out = _run(name, **cfg)
    assert _eff(out) == pytest.approx(eff, abs=1e-12)
    s = {k: v.item() for k, v in out.stats.items()}
    assert set(s) == STAT_NAMES
    assert s["correction/masked_frac"] == pytest.approx(masked_frac)
    assert s["correction/weight_mean"] == pytest.approx(weight_mean)
    assert s["correction/ess"] == pytest.approx(ess)
    # the ratio statistics describe rho, whatever the correction does with it
    assert s["correction/ratio_p50"] == pytest.approx(1.25)
    assert s["correction/ratio_p90"] == pytest.approx(P90)
    assert s["correction/ratio_p99"] == pytest.approx(P99)
    assert s["correction/ratio_max"] == pytest.approx(3.0)


def test_hand_quantiles_match_numpy_on_the_log_ratio():
    x = torch.tensor([[0.3, -1.0, 2.0], [5.0, 0.1, -7.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=D)
    got = masked_quantiles(x, mask, (0.0, 0.25, 0.5, 0.9, 1.0))
    ref = np.quantile([0.3, -1.0, 2.0, 0.1, -7.0], [0.0, 0.25, 0.5, 0.9, 1.0])
    assert got.tolist() == pytest.approx(ref.tolist())
    assert masked_quantiles(x, torch.zeros_like(mask), (0.5,)).tolist() == [0.0]


def test_bypass_mode_targets_the_current_policy_and_uses_the_sampler_as_pi_old():
    logp, prox, behav, mask = _hand_inputs()
    logp = behav + torch.tensor([[0.0, 0.0, math.log(4.0)], [0.0, 0.0, 0.0]], dtype=D)  # pi / mu: 1, 1, 4 | 1, 1
    cfg = CorrectionConfig(name="tis", mode="bypass", cap=2.0)
    b = PolicyBatch(logp, prox, torch.ones_like(mask), mask)
    nb, stats = apply_correction(b, behav, cfg)
    assert torch.equal(nb.logp_old, behav)
    assert (nb.advantages * mask).tolist() == [[1.0, 1.0, 2.0], [1.0, 1.0, 0.0]]
    assert stats["correction/ratio_max"].item() == pytest.approx(4.0)
    # decoupled: the target is pi_prox, the batch keeps its pi_old
    nb, stats = apply_correction(b, behav, dataclasses.replace(cfg, mode="decoupled"))
    assert torch.equal(nb.logp_old, prox)
    assert stats["correction/ratio_max"].item() == pytest.approx(3.0)


# ---- properties -------------------------------------------------------------------------------------------------
def _random_batch(seed: int, B: int, T: int, scale: float):
    g = torch.Generator().manual_seed(seed)
    behav = -torch.rand(B, T, generator=g, dtype=D) * 4
    prox = behav + scale * torch.randn(B, T, generator=g, dtype=D)
    logp = prox + 0.1 * torch.randn(B, T, generator=g, dtype=D)
    mask = (torch.rand(B, T, generator=g) < 0.7).to(D)
    mask[0, 0] = 1.0
    return logp, prox, behav, mask


batches = st.builds(
    _random_batch,
    st.integers(0, 10_000),
    st.integers(1, 5),
    st.integers(1, 7),
    st.sampled_from([0.01, 0.3, 1.0, 3.0]),
)
CFG = {"cap": 2.0, "icepop_low": 0.5, "icepop_high": 2.0, "geo_eps": 0.05}


@settings(max_examples=40, deadline=None)
@given(batches, st.sampled_from(["decoupled", "bypass"]))
def test_identity_when_sampler_matches(batch, mode):
    logp, prox, behav, mask = batch
    same = logp if mode == "bypass" else prox  # the correction's target equals the sampler
    for name in NAMES:
        out = CORRECTIONS.get(name)(logp, prox, same.clone(), mask, CorrectionConfig(name=name, mode=mode, **CFG))
        valid = mask > 0
        assert torch.all(out.weight[valid] == 1.0) and torch.all(out.keep[valid] == 1.0), name
        s = out.stats
        assert s["correction/masked_frac"] == 0 and s["correction/ess"] == pytest.approx(1.0)
        assert s["correction/weight_mean"] == 1.0 and s["correction/ratio_max"] == 1.0


@settings(max_examples=40, deadline=None)
@given(batches, st.sampled_from([1.0, 1.2, 2.0, 10.0]))
def test_weights_never_exceed_the_cap(batch, cap):
    logp, prox, behav, mask = batch
    bound = {"icepop": 2.0, "geo_mask": 1.0, "none": 1.0}
    for name in NAMES:
        out = CORRECTIONS.get(name)(logp, prox, behav, mask, CorrectionConfig(name=name, **{**CFG, "cap": cap}))
        assert torch.all(out.weight * out.keep <= bound.get(name, cap) * (1 + 1e-12)), name
        assert torch.all(out.weight >= 0) and not out.weight.requires_grad


@settings(max_examples=40, deadline=None)
@given(batches, st.floats(1.0, 5.0), st.floats(1.0, 5.0))
def test_masks_are_monotone_in_their_bounds(batch, a, b):
    logp, prox, behav, mask = batch
    lo, hi = min(a, b), max(a, b)

    def keep(name, **kw):
        return CORRECTIONS.get(name)(logp, prox, behav, mask, CorrectionConfig(name=name, **kw)).keep

    for name in ("mis_token", "mis_seq"):
        assert torch.all(keep(name, cap=lo) <= keep(name, cap=hi)), name
    assert torch.all(keep("icepop", icepop_high=lo) <= keep("icepop", icepop_high=hi))
    assert torch.all(keep("icepop", icepop_low=1 / lo) <= keep("icepop", icepop_low=1 / hi))  # a lower alpha keeps more
    assert torch.all(keep("geo_mask", geo_eps=(lo - 1) / 5 + 1e-6) <= keep("geo_mask", geo_eps=(hi - 1) / 5 + 1e-6))


@settings(max_examples=40, deadline=None)
@given(batches)
def test_sequence_is_is_the_product_of_token_ratios_under_the_cap(batch):
    logp, prox, behav, mask = batch
    out = CORRECTIONS.get("seq_is")(logp, prox, behav, mask, CorrectionConfig(name="seq_is", cap=1e300))
    ratio = torch.where(mask > 0, (prox - behav).exp(), torch.ones_like(prox))
    prod = torch.prod(ratio, -1, keepdim=True).expand_as(prox)
    torch.testing.assert_close(out.weight, prod, rtol=1e-10, atol=0)
    # mis_seq keeps it as the weight of the sequences it keeps
    out = CORRECTIONS.get("mis_seq")(logp, prox, behav, mask, CorrectionConfig(name="mis_seq", cap=1e300))
    torch.testing.assert_close(out.weight * out.keep, prod, rtol=1e-10, atol=0)


@settings(max_examples=40, deadline=None)
@given(batches, st.integers(0, 1000), st.sampled_from(["decoupled", "bypass"]))
def test_padding_never_influences_results(batch, seed, mode):
    logp, prox, behav, mask = batch
    g = torch.Generator().manual_seed(seed)
    pad = mask == 0

    def garbage(x):
        junk = 50 * torch.randn(x.shape, generator=g, dtype=D)
        junk[0, -1] = math.nan
        return torch.where(pad, junk, x)

    for name in NAMES:
        cfg = CorrectionConfig(name=name, mode=mode, **CFG)
        a = CORRECTIONS.get(name)(logp, prox, behav, mask, cfg)
        b = CORRECTIONS.get(name)(garbage(logp), garbage(prox), garbage(behav), mask, cfg)
        valid = ~pad
        assert torch.equal(a.weight[valid], b.weight[valid]) and torch.equal(a.keep[valid], b.keep[valid]), name
        for k in a.stats:
            assert torch.equal(a.stats[k], b.stats[k]), (name, k)


@settings(max_examples=60, deadline=None)
@given(batches)
def test_ess_is_a_fraction(batch):
    logp, prox, behav, mask = batch
    for name in NAMES:
        out = CORRECTIONS.get(name)(logp, prox, behav, mask, CorrectionConfig(name=name, **CFG))
        ess = out.stats["correction/ess"].item()
        kept_any = bool(((out.weight * out.keep)[mask > 0] > 0).any())
        assert (0 < ess <= 1 + 1e-12) if kept_any else ess == 0.0, name


@pytest.mark.parametrize("mode", ["decoupled", "bypass"])
@pytest.mark.parametrize("name", NAMES)
def test_no_gradient_flows_through_the_weights(name, mode):
    logp, prox, behav, mask = _random_batch(3, 4, 5, 1.0)
    logp.requires_grad_(True)
    prox.requires_grad_(True)
    behav.requires_grad_(True)
    adv = torch.randn(4, 1, dtype=D).expand(4, 5)
    cfg = CorrectionConfig(name=name, mode=mode, **CFG)
    nb, _ = apply_correction(PolicyBatch(logp, prox, adv, mask), behav, cfg)
    loss, _ = POLICY_LOSSES.get("pg")(nb, PolicyLossConfig(), Aggregator.for_batch("token-mean", mask))
    loss.backward()
    out = CORRECTIONS.get(name)(logp, prox, behav, mask, cfg)
    assert not out.weight.requires_grad and not out.keep.requires_grad
    # d loss / d logp = -A w keep / N_tokens: the weight is a constant
    expected = -(adv * out.weight * out.keep * mask) / mask.sum()
    torch.testing.assert_close(logp.grad, expected)
    assert prox.grad is None and behav.grad is None


# ---- composition with every policy loss ------------------------------------------------------------------------
@pytest.mark.parametrize("loss_name", POLICY_LOSSES.names())
def test_every_loss_composes_and_the_identity_changes_nothing(loss_name):
    logp, prox, behav, mask = _random_batch(5, 4, 6, 0.3)
    adv = torch.randn(4, 6, dtype=D)
    b = PolicyBatch(logp.requires_grad_(True), prox, adv, mask, kl_old=(logp - prox) ** 2, logp_ref=prox - 0.1)
    hp, agg = PolicyLossConfig(), Aggregator.for_batch("seq-mean-token-mean", mask)
    ref, _ = POLICY_LOSSES.get(loss_name)(b, hp, agg)
    nb, _ = apply_correction(b, prox.clone(), CorrectionConfig(name="tis"))  # sampler == pi_old: weights 1
    same, _ = POLICY_LOSSES.get(loss_name)(nb, hp, agg)
    torch.testing.assert_close(same, ref)
    for name in NAMES:
        nb, stats = apply_correction(b, behav, CorrectionConfig(name=name, **CFG))
        loss, _ = POLICY_LOSSES.get(loss_name)(nb, hp, agg)
        assert torch.isfinite(loss) and set(stats) == STAT_NAMES


def test_tis_with_ppo_clip_on_fresh_data_is_the_weighted_policy_gradient():
    """Decoupled PPO at the first step (pi = pi_prox, ratio 1): the gradient is sum_t w_t A_t grad log pi_t."""
    logp, prox, behav, mask = _random_batch(7, 3, 4, 1.0)
    adv = torch.randn(3, 4, dtype=D)
    agg = Aggregator.for_batch("token-mean", mask)
    cur = prox.clone().requires_grad_(True)
    nb, _ = apply_correction(PolicyBatch(cur, prox, adv, mask), behav, CorrectionConfig(name="tis", cap=2.0))
    POLICY_LOSSES.get("ppo_clip")(nb, PolicyLossConfig(), agg)[0].backward()
    w = (prox - behav).exp().clamp(max=2.0)
    torch.testing.assert_close(cur.grad, -(w * adv * mask) / mask.sum())


# ---- registry, config ------------------------------------------------------------------------------------------
def test_entries_match_the_protocol_and_declare_what_they_read():
    expected = list(inspect.signature(Correction.__call__).parameters)[1:]
    fields = {f.name: f for f in dataclasses.fields(CorrectionConfig)}
    read_by: dict[str, set[str]] = {}
    for key, f in fields.items():
        m = re.search(r"\[read by: ([^\]]+)\]", f.metadata["help"])
        if m:
            read_by[key] = {s.strip() for s in m.group(1).split(",")}
    for name in NAMES:
        assert list(inspect.signature(CORRECTIONS.get(name)).parameters) == expected, name
        meta = CORRECTIONS.meta(name)
        assert meta["level"] in ("token", "sequence")
        for key in meta["hparams"]:
            assert name in read_by[key], (name, key)
    for key, names in read_by.items():
        assert all(key in CORRECTIONS.meta(n)["hparams"] for n in names), key
    assert set(NAMES) == {"none", "tis", "seq_is", "mis_token", "mis_seq", "icepop", "geo_mask"}


def test_metadata_says_whether_an_entry_weights_or_masks():
    logp, prox, behav, mask = _random_batch(11, 6, 5, 3.0)
    for name in NAMES:
        meta = CORRECTIONS.meta(name)
        out = CORRECTIONS.get(name)(logp, prox, behav, mask, CorrectionConfig(name=name, **CFG))
        valid = mask > 0
        assert bool((out.weight[valid] != 1).any()) == meta["weights"], name
        assert bool((out.keep[valid] == 0).any()) == meta["masks"], name
        if meta["level"] == "sequence":  # one value per sequence
            assert torch.all(out.weight == out.weight[:, :1]) and torch.all(out.keep == out.keep[:, :1]), name


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("name", "tsi", ["tis", "icepop"]),
        ("mode", "bypas", ["bypass", "decoupled"]),
        ("cap", 0.5, ["cap"]),
        ("icepop_low", 1.5, ["icepop_low"]),
        ("icepop_high", 0.9, ["icepop_high"]),
        ("geo_eps", 0.0, ["geo_eps"]),
    ],
)
def test_bad_config_values_raise_one_line(key, value, words):
    with pytest.raises(UserError) as e:
        validate(dataclasses.replace(CorrectionConfig(), **{key: value}))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words)


# ---- the LM trainer's correction section -----------------------------------------------------------------------
LM_FAST = ["--total-steps", "1", "--no-progress"] + [
    x
    for kv in ("sft_steps=0", "eval_size=8", "eval_k=1", "prompts_per_step=4", "group_size=4", "checkpoint_every=0")
    for x in ("--set", kv)
]


def _lm_metrics(tmp_path, name: str, *sets: str) -> dict[str, float]:
    pytest.importorskip("transformers")
    from policyopt.cli.main import main

    out = tmp_path / name
    assert main(["train", "grpo", "--out", str(out), *LM_FAST, *(x for s in sets for x in ("--set", s))]) == 0
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    return {r[2]: float(r[3]) for r in rows if r[0] == "1"}


def test_lm_run_with_tis_under_a_forced_mismatch_logs_the_correction_stats(tmp_path):
    # nucleus sampling (top_p 0.8) against the trainer's full softmax: every sampled token has
    # pi / mu = (nucleus mass) <= 1, so TIS reweights every token by a ratio below 1 and masks nothing
    m = _lm_metrics(tmp_path, "tis", "correction.name=tis", "top_p=0.8")
    assert STAT_NAMES <= set(m)
    assert m["correction/ratio_max"] <= 1 + 1e-5 and m["correction/ratio_p50"] < 1
    assert m["correction/masked_frac"] == 0 and 0 < m["correction/weight_mean"] < 1
    assert 0 < m["correction/ess"] <= 1
    assert m["stats/logp_mismatch"] > 0
    none = _lm_metrics(tmp_path, "none", "top_p=0.8")  # the default: no correction, no correction stats
    assert not any(k.startswith("correction/") for k in none)


def test_lm_old_logp_sampler_is_the_bypass_mode(tmp_path):
    from policyopt import algos

    assert algos.build_config("grpo", sets={"old_logp": "sampler"}).bypass
    assert algos.build_config("grpo", sets={"correction.mode": "bypass"}).bypass
    assert not algos.build_config("grpo").bypass
    a = _lm_metrics(tmp_path, "sampler", "old_logp=sampler", "top_p=0.8")
    b = _lm_metrics(tmp_path, "bypass", "correction.mode=bypass", "top_p=0.8")
    for k in ("loss/policy", "stats/approx_kl", "stats/clip_frac_low", "reward/mean"):
        assert a[k] == b[k], k
    assert a["stats/approx_kl"] > 0  # pi_old is the sampler, not the recomputed policy
