"""The LM data-selection pipeline and the trainer phases around it, on the tiny embedded model (seconds)."""

import json
import math
import warnings

import numpy as np
import pytest
import torch

from policyopt import algos
from policyopt.errors import UserError
from policyopt.lm import selection as S
from policyopt.lm.model import Reference
from policyopt.lm.rewards import RewardSet
from policyopt.lm.selection import LMBatch, SelectionContext

pytest.importorskip("transformers")

SMALL = {"sft_steps": 0, "eval_size": 8, "prompts_per_step": 4, "group_size": 4, "tensorboard": False}


def const_reward(prompts, completions, **_):
    return [1.0] * len(completions)


def parity_reward(prompts, completions, **_):
    return [float(len(c) % 2 == 0) for c in completions]


def _parts(name, **sets):
    from policyopt.lm.trainer import build_parts

    torch.manual_seed(0)
    return build_parts(algos.build_config(name, sets={**SMALL, **sets}))


def _dataset(tmp_path, n=10):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) for i in range(n)))
    return str(p)


def test_pipeline_order_from_the_config_keys_and_explicit_order():
    cfg = algos.build_config("dapo", sets={"seed_alpha": 0.1, "cppo_keep": 2, "forking_top_frac": 0.2})
    assert S.pipeline(cfg) == [
        "dynamic_sampling",
        "overlong_shaping",
        "overlong_filter",
        "seed_grpo",
        "cppo",
        "forking_tokens",
    ]
    assert S.pipeline(algos.build_config("grpo")) == [] and S.pipeline(algos.build_config("spo")) == ["value_tracker"]
    order = ["overlong_filter", "overlong_shaping", "dynamic_sampling"]
    assert S.pipeline(algos.build_config("dapo", sets={"selectors": order})) == order
    with pytest.raises(UserError, match="misses"):
        algos.build_config("dapo", sets={"selectors": ["dynamic_sampling"]})
    with pytest.raises(UserError, match="leave off"):
        algos.build_config("grpo", sets={"selectors": ["cppo"]})
    with pytest.raises(UserError, match="selectors"):
        algos.build_config("grpo", sets={"selectors": ["nope"]})
    # metadata, not name lists: stages, needs, refills, enlarged prompt batches
    assert S.SELECTORS.meta("dynamic_sampling")["stage"] == "generation" and S.refills(["dynamic_sampling"])
    assert S.SELECTORS.meta("value_tracker")["stage"] == "update"
    assert S.needs(["forking_tokens", "d3s"]) == {"entropy", "groups"}
    assert S.prompts_to_draw(["cppo"], algos.build_config("cppo"), 32) == 64


def test_group_size_checks_read_registry_metadata():
    algos.build_config("spo", sets={"group_size": 1})  # the SPO estimator has no group baseline
    with pytest.raises(UserError, match="advantage 'bnpo' needs group_size >= 2"):
        algos.build_config("bnpo", sets={"group_size": 1})
    with pytest.raises(UserError, match=r"selectors \['dynamic_sampling'\] needs group_size >= 2"):
        algos.build_config("spo", sets={"dynamic_sampling": True})


def test_dapo_overlong_buffer_scales_with_max_new_tokens():
    assert S.overlong_buffer(algos.build_config("dapo", sets={"max_new_tokens": 20480})) == pytest.approx(4096)
    cfg = algos.build_config("dapo", sets={"max_new_tokens": 10})
    assert S.overlong_buffer(cfg) == pytest.approx(2.0)
    with pytest.raises(UserError, match="both set"):
        algos.build_config("dapo", sets={"overlong_buffer": 2})
    # shaping: 0 up to L_max - L_buf = 8 tokens, then down to -1 at L_max = 10
    from policyopt.lm.rollout import Rollout

    lens = [6, 8, 9, 10]
    ro = Rollout(
        [[1]] * 4,
        [[5] * n for n in lens],
        [torch.zeros(n) for n in lens],
        torch.tensor([0, 0, 0, 1]),
        torch.arange(4),
        torch.arange(4),
        ["x"] * 4,
    ).scored(torch.ones(4), torch.ones(4, 1))
    out = S.SELECTORS.get("overlong_shaping")(LMBatch.of(ro), SelectionContext(cfg, 1))
    torch.testing.assert_close(out.rollout.rewards, torch.tensor([1.0, 1.0, 0.5, 0.0]))
    assert out.rollout.raw_rewards.tolist() == [1.0] * 4
    assert S.SELECTORS.get("overlong_filter")(out, SelectionContext(cfg, 1)).loss_rows.tolist() == [1, 1, 1, 0]


def test_dynamic_sampling_shortfall_is_logged_and_warned_once():
    import dataclasses

    from policyopt.lm.trainer import build_parts, rl_step

    cfg = algos.build_config("dapo", sets={**SMALL, "max_gen_batches": 2})
    cfg = dataclasses.replace(cfg, rewards={"tests.test_lm_selection:const_reward": 1.0})
    parts = build_parts(cfg)
    rng = np.random.default_rng(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m1, b1 = rl_step(parts, 1, rng)
        m2, b2 = rl_step(parts, 2, rng)
    assert b1 is None and b2 is None  # every group had equal rewards: nothing trained
    assert m1["select/refill_shortfall"] == m2["select/refill_shortfall"] == 1.0
    assert m1["groups/gen_batches"] == 2.0 and float(m1["groups/zero_variance_frac"]) == 1.0
    assert len([w for w in caught if "refill_shortfall" in str(w.message)]) == 1


def test_reinforce_pp_on_lms_is_undiscounted():
    """REINFORCE++ token rewards r_t = -beta * k1_t plus R on the last token, undiscounted reward-to-go
    G_t = sum_{s >= t} r_s, whitened over all tokens of the batch (unbiased std, eps 1e-8)."""
    from policyopt.lm.trainer import collect, prepare

    parts = _parts("reinforce_pp")
    assert parts.cfg.gamma == 1.0 and parts.cfg.beta == 0.01
    parts.ref = Reference(parts.model, False)
    with torch.no_grad():
        for p in parts.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ctx = SelectionContext(parts.cfg, 1)
    b = prepare(parts, collect(parts, np.random.default_rng(0), ctx), ctx)
    kl = ((b.old_logp - b.ref_logp) * b.cmask).tolist()
    R, lens = b.rollout.rewards.tolist(), b.cmask.sum(1).int().tolist()

    def returns(gamma):
        out = []
        for i, n in enumerate(lens):
            r = [-0.01 * kl[i][t] for t in range(n)]
            r[-1] += R[i]
            out.append([sum(r[s] * gamma ** (s - t) for s in range(t, n)) for t in range(n)])
        return out

    def whiten(g):
        flat = [v for row in g for v in row]
        mean = sum(flat) / len(flat)
        std = math.sqrt(sum((v - mean) ** 2 for v in flat) / (len(flat) - 1))
        return [[(v - mean) / (std + 1e-8) for v in row] for row in g]

    got = [b.adv[i, :n].tolist() for i, n in enumerate(lens)]
    assert any(abs(x) > 1e-4 for row in kl for x in row)
    for want_row, got_row in zip(whiten(returns(1.0)), got):
        assert got_row == pytest.approx(want_row, abs=1e-4)
    discounted = [v for row in whiten(returns(0.99)) for v in row]
    assert max(abs(a - b) for a, b in zip(discounted, [v for row in got for v in row])) > 1e-3


def test_spo_tracker_updates_after_the_policy_step(tmp_path):
    """All 8 training prompts are drawn every step. After step 1 each prompt's response is stored with its
    log-probs under the *post-step* policy and (a, b) = 0.96 * 0.5 + (r, 1 - r) (first visit: D = 0). After
    step 2, D = token-mean |logp_stored - logp_now| with logp_now from the policy after step 2, and
    (a, b) <- rho(D) * (a, b) + (r, 1 - r)."""
    from policyopt.lm.trainer import rl_step

    parts = _parts("spo", dataset=_dataset(tmp_path), eval_size=2, prompts_per_step=8, group_size=1, learning_rate=0.02)
    parts.rewards = RewardSet({"tests.test_lm_selection:parity_reward": 1.0})  # rewards that vary
    t, rng = parts.tracker, np.random.default_rng(0)
    _, b1 = rl_step(parts, 1, rng)
    p1, r1 = b1.rollout.prompt_index, b1.rollout.raw_rewards.clamp(0, 1)
    torch.testing.assert_close(t.a[p1], 0.96 * 0.5 + r1)
    after1, m = parts.score(b1.rollout.prompt_ids, b1.rollout.completion_ids)
    rows, _, stored = t.stored(p1)
    assert len(rows) == 8
    torch.testing.assert_close(stored * m, after1 * m)
    a1, b_1 = t.a.clone(), t.b.clone()
    prompt_ids = {int(p): ids for p, ids in zip(p1, b1.rollout.prompt_ids)}
    responses = {int(p): c for p, c in zip(p1, b1.rollout.completion_ids)}
    then = {int(p): s for p, s in zip(p1, stored)}
    _, b2 = rl_step(parts, 2, rng)
    p2, r2 = b2.rollout.prompt_index, b2.rollout.raw_rewards.clamp(0, 1)
    now, m2 = parts.score([prompt_ids[int(p)] for p in p2], [responses[int(p)] for p in p2])
    drift = ((torch.stack([then[int(p)] for p in p2]) - now).abs() * m2).sum(1) / m2.sum(1)
    assert float(drift.min()) > 0
    rho = torch.pow(2.0, -drift / 0.06).clamp(0.875, 0.96)
    torch.testing.assert_close(t.a[p2], rho * a1[p2] + r2)
    torch.testing.assert_close(t.b[p2], rho * b_1[p2] + 1 - r2)
