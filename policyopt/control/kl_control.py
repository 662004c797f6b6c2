"""KL-coefficient control box of the on-policy trainer (``trust_region=none|mdpo|fixpo``).

The proximity term of ``kl_proximal`` is ``proximal_coef * KL(pi || pi_old)``; a controller decides
that coefficient per iteration or per gradient step and may add extra gradient steps.

``mdpo`` -- on-policy MDPO (Tomar, Shani, Efroni & Ghavamzadeh, "Mirror Descent Policy
Optimization", ICLR 2022): each iteration approximately solves
``max_theta E_s[ E_{a~pi_theta}[A_k(s,a)] - (1/t_k) KL(s; pi_theta, pi_theta_k) ]`` with several SGD
steps. Confirmed in the authors' code (manantomar/Mirror-Descent-Policy-Optimization
``mdpo_on/mdpo.py``): loss ``-mean(r A) + mean KL(pi || pi_old) / t_k`` with the exact KL in that
direction (``policy_pi...kl(old_policy...)``), advantages standardized over the batch, ``sgd_steps``
full-batch Adam steps per iteration (lr 3e-4, grad norm 0.5; the README runs on-policy MDPO with
``--sgd_steps=10``), the value function trained separately. The schedule there is
``t = 1 - (i - 1)/K`` for ``i = 0..K-1``, i.e. ``t_k = 1 - (k - 2)/K`` for our ``k = 1..K`` (1 + 1/K at
the first iteration, 2/K at the last). We use ``t_k = 1 - (k - 1)/K`` (1 at the first, 1/K at the
last: the same linear anneal one iteration earlier, never 0); the paper's own passage was not
retrievable (stored pages: abstract, introduction and the authors' blog post, which gives the
objective and the KL direction). The coefficient is ``proximal_coef / t_k`` (``proximal_coef`` = 1
reproduces ``1/t_k``). Our presets keep PPO's per-environment minibatching and epochs instead of the
reference's 10 full-batch steps.

``fixpo`` -- FixPO (Zentner, Puri, Huang & Sukhatme, "Guaranteed Trust Region Optimization via
Two-Phase KL Penalization", arXiv 2312.05405). From the abstract: KL penalization alone "is nearly
sufficient" to enforce a trust region, and a "fixup" phase guarantees it on every update "while
adding fewer than 5% additional gradient steps in practice". Mechanics and defaults confirmed in the
authors' tianshou implementation (class ``FixPOPolicy``, file ``fixpo_tianshou*.py`` of the repository
whose README is "Fixup Policy Optimization (FixPO)"; found with the search tool): the primary phase
minimises ``-mean(r A) + beta * mean KL`` per minibatch and after each step takes one Adam step
(lr ``beta_lr`` = 0.01) on ``beta * (eps_kl - c_beta * max_s KL)``, projecting ``beta >= 0``; after
each epoch the fix-up phase sweeps the batch in minibatches of ``fixup_minibatch_size`` = 1024 and, on
every minibatch whose max per-state KL exceeds ``eps_kl``, takes a gradient step on ``beta * mean KL``
(and updates beta), until a whole sweep has no violation; ``eps_kl`` 0.2, ``c_beta`` 2, ``beta_0`` 1.
The KL there is ``kl_divergence(old_dist, dist)`` = KL(pi_old || pi); the authors' later library
(krzentner/ubrl ``torch_trainer.py``) uses the same direction. We therefore use KL(pi_old || pi)
(``kl_old_first`` below, read by the proximal box for the primary phase). The fix-up KL comes from
the trainer's ``kl_on`` (policyopt/control/onpolicy.py), which computes KL(pi || pi_old) until it
calls ``region.kl``; see the issue-5 report. ``max_fixup_steps`` is our safety cap (not in the
reference). The guarantee we give is for the KL we check, on the rollout's states.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from policyopt.config import opt, positive
from policyopt.losses.aggregation import masked_max
from policyopt.registry import Registry

TRUST_REGIONS: Registry = Registry("trust-region controller")


@dataclass
class FixPOConfig:
    eps_kl: float = opt(0.2, "trust region: max per-state KL(pi_old || pi) allowed after every update",
                        check=positive)
    c_beta: float = opt(2.0, "beta grows while c_beta * max KL > eps_kl (primary phase aims at eps_kl / c_beta)",
                        check=positive)
    beta_lr: float = opt(0.01, "Adam step size of the penalty coefficient beta", check=positive)
    beta_init: float = opt(1.0, "initial beta", check=positive)
    fixup_minibatch_size: int = opt(1024, "minibatch size of the fix-up sweep", check=positive)
    max_fixup_steps: int = opt(10_000, "safety cap on fix-up gradient steps per sweep (logged if hit)",
                               check=positive)


class NoControl:
    """Keep ``loss.proximal_coef`` fixed; no extra gradient steps."""

    needs_kl = False  # whether after_step reads the per-state KL of the minibatch
    kl_old_first = False  # KL(pi || pi_old) (MDPO); True: KL(pi_old || pi) (FixPO's reference code)

    @classmethod
    def kl(cls, dist, new, old):
        """Per-state KL between the current (``new``) and old distribution parameters, in this
        controller's direction."""
        return dist.kl(old, new) if cls.kl_old_first else dist.kl(new, old)

    def __init__(self, cfg, num_iterations: int):
        self.cfg = cfg

    def begin_iteration(self, iteration: int, loss_cfg):
        return loss_cfg

    def loss_config(self, loss_cfg):
        return loss_cfg

    def after_step(self, pb) -> None:
        pass

    def fixup(self, kl_on, optimizer, params, batch_size: int) -> dict:
        return {}

    def stats(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


TRUST_REGIONS.register("none", NoControl)


@TRUST_REGIONS.register("mdpo")
class MDPOAnneal(NoControl):
    """On-policy MDPO: ``proximal_coef / t_k`` with ``t_k = 1 - (k-1)/K`` (Tomar et al., 2022)."""

    def __init__(self, cfg, num_iterations: int):
        super().__init__(cfg, num_iterations)
        self.K = num_iterations
        self.coef = cfg.loss.proximal_coef

    def begin_iteration(self, iteration, loss_cfg):
        t_k = 1.0 - (iteration - 1) / self.K
        self.coef = loss_cfg.proximal_coef / t_k
        return dataclasses.replace(loss_cfg, proximal_coef=self.coef)

    def stats(self):
        return {"train/proximal_coef": self.coef}


@TRUST_REGIONS.register("fixpo")
class FixPO(NoControl):
    """FixPO: adaptive KL penalty beta (primary phase) + fix-up phase guaranteeing max KL <= eps_kl."""

    needs_kl = True
    kl_old_first = True

    def __init__(self, cfg, num_iterations: int):
        super().__init__(cfg, num_iterations)
        self.fx = cfg.fixpo
        self.beta = torch.nn.Parameter(torch.tensor(float(self.fx.beta_init)))
        self.beta_opt = torch.optim.Adam([self.beta], lr=self.fx.beta_lr)
        self.primary_steps = self.fixup_steps = 0  # cumulative over training (checkpointed)
        self.capped = 0

    def loss_config(self, loss_cfg):
        return dataclasses.replace(loss_cfg, proximal_coef=self.beta.detach().clone())

    def _update_beta(self, kl_max: torch.Tensor) -> None:
        self.beta_opt.zero_grad(set_to_none=True)
        self.beta.grad = (self.fx.eps_kl - self.fx.c_beta * kl_max.detach()).reshape(())
        self.beta_opt.step()
        with torch.no_grad():
            self.beta.clamp_(min=0.0)

    def after_step(self, pb) -> None:
        self.primary_steps += 1
        self._update_beta(masked_max(pb.kl_old.detach(), pb.mask))

    def fixup(self, kl_on, optimizer, params, batch_size: int) -> dict:
        """``kl_on(idx) -> (per-state KL with grad, valid mask)``, KL as ``self.kl``; sweep until no minibatch
        violates."""
        steps, mb = 0, self.fx.fixup_minibatch_size
        while True:
            violated = False
            for start in range(0, batch_size, mb):
                kl, mask = kl_on(torch.arange(start, min(start + mb, batch_size)))
                kl_max = masked_max(kl.detach(), mask)
                if not bool(kl_max > self.fx.eps_kl):
                    continue
                violated, steps = True, steps + 1
                loss = self.beta.detach() * (kl * mask).sum() / mask.sum().clamp(min=1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
                optimizer.step()
                self._update_beta(kl_max)
                if steps >= self.fx.max_fixup_steps:
                    self.capped += 1
                    violated = False
                    break
            if not violated:
                break
        self.fixup_steps += steps
        return {"fixpo/fixup_steps": float(steps)}

    def stats(self):
        total = max(self.primary_steps, 1)
        return {"fixpo/beta": float(self.beta.detach()), "fixpo/fixup_steps_total": float(self.fixup_steps),
                "fixpo/primary_steps_total": float(self.primary_steps),
                "fixpo/extra_step_frac": self.fixup_steps / total, "fixpo/fixup_capped": float(self.capped)}

    def state_dict(self):
        return {"beta": self.beta.detach().clone(), "beta_opt": self.beta_opt.state_dict(),
                "counts": [self.primary_steps, self.fixup_steps, self.capped]}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.beta.copy_(state["beta"])
        self.beta_opt.load_state_dict(state["beta_opt"])
        self.primary_steps, self.fixup_steps, self.capped = (int(x) for x in state["counts"])
