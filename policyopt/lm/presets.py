"""Language-model presets (GRPO family): one trainer, different boxes from the shared core.

Light at import: configs and registrations only (no transformers). Conventions (see the README):
group std is Bessel-corrected (as TRL/verl), singleton groups get advantage 0, the ratio is per token
unless the loss says otherwise, and aggregation denominators are global over the rollout batch.
"""

from __future__ import annotations

from policyopt.algos import Algorithm, register
from policyopt.lm.config import LMConfig

TRAIN, EVAL = "policyopt.lm.trainer:train", "policyopt.lm.trainer:evaluate_run"
_TWO = {"exact_match": 1.0, "format": 0.5}  # two reward components (GDPO's setting)


def _reg(name: str, doc: str, **defaults) -> None:
    register(
        Algorithm(
            name=name,
            family="lm",
            config=LMConfig,
            trainer=TRAIN,
            evaluator=EVAL,
            doc=doc,
            defaults=defaults,
            target_key="task",
        )
    )


_reg(
    "grpo",
    "GRPO: group mean/std advantage, PPO clip, seq-mean-token-mean, optional k3 KL (DeepSeekMath, Shao et al. 2024)",
    advantage="grpo",
    policy_loss="ppo_clip",
    aggregation="seq-mean-token-mean",
)
_reg(
    "dr_grpo",
    "Dr. GRPO: no std scaling, constant-length token-sum normalization, no KL (Liu et al. 2025, "
    "'Understanding R1-Zero-Like Training')",
    advantage="dr_grpo",
    policy_loss="ppo_clip",
    aggregation="seq-mean-token-sum-norm",
    beta=0.0,
)
_reg(
    "dapo",
    "DAPO: clip-higher 0.2/0.28, token-mean, dynamic sampling, overlong shaping (buffer 20% of max_new_tokens) "
    "+ filtering (Yu et al. 2025)",
    advantage="grpo",
    policy_loss="ppo_clip",
    aggregation="token-mean",
    loss={"clip_eps_low": 0.2, "clip_eps_high": 0.28},
    dynamic_sampling=True,
    overlong_buffer_frac=0.2,
    mask_truncated=True,
    beta=0.0,
)
_reg(
    "gspo",
    "GSPO: sequence-level (length-normalized) ratio and clip (Zheng et al. 2025)",
    advantage="grpo",
    policy_loss="gspo",
    aggregation="seq-mean-token-mean",
)
_reg(
    "cispo",
    "CISPO: stop-gradient IS weight capped above at 1 + clip_eps_high = 5 (no lower bound) times log-prob, "
    "token-mean (MiniMax-M1 2025)",
    advantage="grpo",
    policy_loss="cispo",
    aggregation="token-mean",
    loss={"clip_eps_high": 4.0},
)
_reg(
    "cpgd",
    "CPGD: clipped log-ratio policy gradient + policy drift KL(pi_old||pi), coefficient 0.01 (Liu et al. 2025)",
    advantage="grpo",
    policy_loss="cpgd",
    aggregation="token-mean",
    loss={"drift_coef": 0.01},
)
_reg(
    "rloo",
    "RLOO: leave-one-out baseline (Ahmadian et al. 2024, 'Back to Basics')",
    advantage="rloo",
    policy_loss="ppo_clip",
    aggregation="token-mean",
)
_reg(
    "reinforce_pp",
    "REINFORCE++: token KL in reward, reward-to-go, batch whitening (Hu 2025)",
    advantage="reinforce_pp",
    policy_loss="ppo_clip",
    aggregation="token-mean",
    beta=0.01,
    kl_in_reward=True,
    kl_estimator="k1",
)
_reg(
    "reinforce_pp_baseline",
    "REINFORCE++-baseline: group-mean baseline then batch whitening (Hu 2025)",
    advantage="reinforce_pp_baseline",
    policy_loss="ppo_clip",
    aggregation="token-mean",
)
_reg(
    "opmd",
    "OPMD: REINFORCE with group baseline + per-token (tau/2)(log r)^2, tau 0.2 (REC, Yao et al. 2025)",
    advantage="dr_grpo",
    policy_loss="opmd",
    aggregation="token-mean",
    loss={"opmd_tau": 0.2},
)
_reg(
    "asymre",
    "AsymRE: REINFORCE with baseline mean R - delta, delta 0.1 (Arnal et al. 2025; REC)",
    advantage="dr_grpo",
    policy_loss="asymre",
    aggregation="token-mean",
)
_reg(
    "bnpo",
    "BNPO: Beta-density reward normalization (Xiao et al. 2025)",
    advantage="bnpo",
    policy_loss="ppo_clip",
    aggregation="token-mean",
)
_reg(
    "gdpo",
    "GDPO: each reward component group-normalized separately, summed, batch-whitened",
    advantage="gdpo",
    policy_loss="ppo_clip",
    aggregation="seq-mean-token-mean",
    rewards=_TWO,
)
_reg(
    "spo",
    "SPO: group-free, persistent per-prompt Beta tracker baseline updated after each step, prioritized prompts, "
    "clip 0.2/0.28 (Xu & Ding 2025)",
    advantage="spo",
    policy_loss="ppo_clip",
    aggregation="token-mean",
    loss={"clip_eps_low": 0.2, "clip_eps_high": 0.28},
    group_size=1,
    prompts_per_step=64,
)
_reg(
    "cppo",
    "CPPO: keep the completions with the largest |A| over the whole batch (retain rate cppo_keep/G = 0.5), drawn "
    "from G/cppo_keep times the prompts (Lin et al. 2025)",
    advantage="grpo",
    policy_loss="ppo_clip",
    aggregation="seq-mean-token-mean",
    cppo_keep=4,
)
_reg(
    "forking_tokens",
    "80/20: loss only on the top-20% highest-entropy tokens, normalized by the selected tokens (Wang et al. 2025)",
    advantage="grpo",
    policy_loss="ppo_clip",
    aggregation="token-mean",
    forking_top_frac=0.2,
)
_reg(
    "d3s",
    "D^3S: per-group rollout subset maximizing Var(A), then top |A|*H tokens with a keep ratio annealed "
    "linearly 0.2 -> 1.0 (Wang et al. 2025)",
    advantage="grpo",
    policy_loss="ppo_clip",
    aggregation="seq-mean-token-mean",
    d3s_keep=4,
    d3s_token_ratio_start=0.2,
    d3s_token_ratio_end=1.0,
)
_reg(
    "seed_grpo",
    "SEED-GRPO: mean-centred advantages scaled by 1 - alpha*SE/log G, semantic entropy SE of the answers under "
    "the old policy, alpha 0.0417 (Chen et al. 2025)",
    advantage="dr_grpo",
    policy_loss="ppo_clip",
    aggregation="seq-mean-token-mean",
    seed_alpha=0.0417,
)
