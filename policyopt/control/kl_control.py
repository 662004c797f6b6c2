"""KL-coefficient control box of the on-policy trainer (``trust_region=none|mdpo|fixpo``).

The proximity term of ``kl_proximal`` is ``proximal_coef * KL(pi || pi_old)``; a controller decides
that coefficient per iteration or per gradient step and may add extra gradient steps.

``mdpo`` -- on-policy MDPO (Tomar, Shani, Efroni & Ghavamzadeh, "Mirror Descent Policy
Optimization", ICLR 2022): each iteration approximately solves
``max_theta E_s[ E_{a~pi_theta}[A_k(s,a)] - (1/t_k) KL(s; pi_theta, pi_theta_k) ]`` with several SGD
steps, i.e. minimises ``-mean(r A) + mean KL(pi || pi_old) / t_k`` (the ``kl_proximal`` loss). The
coefficient is ``proximal_coef / t_k`` with ``t_k = 1 - (k - 1)/K`` for iteration ``k = 1..K`` (1 at the
first, 1/K at the last; ``proximal_coef`` = 1 reproduces ``1/t_k``). Deviations: the authors' schedule is
the same linear anneal one iteration later (``1 + 1/K`` first, ``2/K`` last); our presets keep PPO's
minibatching and epochs instead of full-batch steps.

``fixpo`` -- FixPO (Zentner, Puri, Huang & Sukhatme, "Guaranteed Trust Region Optimization via
Two-Phase KL Penalization", arXiv 2312.05405). Primary phase: minimise ``-mean(r A) + beta * mean KL``
per minibatch and after each step take one Adam step (lr ``beta_lr``) on
``beta * (eps_kl - c_beta * max_s KL)``, projecting ``beta >= 0``. Fix-up phase, after each epoch: sweep
the batch, freshly shuffled, in minibatches of ``fixup_minibatch_size`` (a short remainder joins the last
one) and, on every minibatch whose max per-state KL exceeds ``eps_kl``, take a gradient step on
``beta * mean KL`` (and update beta with the KL before that step), until a whole sweep has no violation.
Each fix-up step counts once against the primary minibatch steps (``fixpo/extra_step_frac``, cumulative;
``fixpo/update_extra_frac``, of the last update). The KL is KL(pi_old || pi) (``kl_old_first``, read by the
proximal box for the primary phase and by the trainer's fix-up sweep). Deviation: ``max_fixup_steps`` is our
safety cap; the guarantee holds for the KL we check, on the rollout's states. Provenance: docs/control.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from policyopt.config import opt, positive
from policyopt.losses import PolicyBatch, PolicyLossConfig
from policyopt.losses.aggregation import masked_max
from policyopt.registry import Registry

if TYPE_CHECKING:
    from policyopt.control.distributions import Categorical, DiagGaussian
    from policyopt.control.onpolicy import OnPolicyConfig

    Distribution = Categorical | DiagGaussian


@runtime_checkable
class TrustRegion(Protocol):
    """The KL-coefficient controller box of the on-policy trainer (one per run)."""

    needs_kl: ClassVar[bool]  # whether after_step reads the per-state KL (PolicyBatch.kl_old)

    def kl(self, dist: Distribution, new: Tensor, old: Tensor) -> Tensor:
        """Per-state KL between current and old distribution parameters, in this controller's direction."""
        ...

    def begin_iteration(self, iteration: int, loss_cfg: PolicyLossConfig) -> PolicyLossConfig: ...

    def loss_config(self, loss_cfg: PolicyLossConfig) -> PolicyLossConfig:
        """The loss config of the next gradient step."""
        ...

    def after_step(self, pb: PolicyBatch) -> None: ...

    def fixup(
        self,
        kl_on: Callable[[Tensor], tuple[Tensor, Tensor]],
        optimizer: torch.optim.Optimizer,
        params: Iterable[Tensor],
        batch_size: int,
    ) -> dict[str, float]:
        """Extra gradient steps after an epoch; ``kl_on(idx) -> (per-state KL with grad, valid mask)``."""
        ...

    def stats(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class TrustRegionFactory(Protocol):
    """A registered controller class: ``kl`` is also read on the class (by the proximal box)."""

    needs_kl: bool

    def kl(self, dist: Distribution, new: Tensor, old: Tensor) -> Tensor: ...

    def __call__(self, cfg: OnPolicyConfig, num_iterations: int) -> TrustRegion: ...


TRUST_REGIONS: Registry[TrustRegionFactory] = Registry("trust-region controller")


@dataclass
class FixPOConfig:
    eps_kl: float = opt(0.2, "trust region: max per-state KL(pi_old || pi) allowed after every update", check=positive)
    c_beta: float = opt(
        2.0, "beta grows while c_beta * max KL > eps_kl (primary phase aims at eps_kl / c_beta)", check=positive
    )
    beta_lr: float = opt(0.01, "Adam step size of the penalty coefficient beta", check=positive)
    beta_init: float = opt(1.0, "initial beta", check=positive)
    fixup_minibatch_size: int = opt(1024, "minibatch size of the fix-up sweep", check=positive)
    max_fixup_steps: int = opt(10_000, "safety cap on fix-up gradient steps per sweep (logged if hit)", check=positive)


def fixup_chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[start, end)`` bounds of the fix-up minibatches of an ``n``-sample batch: consecutive runs of ``size``,
    a remainder shorter than ``size`` merged into the last full one (one chunk when ``n <= size``).
    FixPO (Zentner et al., 2023) sweeps its fix-up phase this way; e.g. ``n = 2500, size = 1024`` gives
    ``[(0, 1024), (1024, 2500)]``."""
    bounds = list(range(0, n - size + 1, size)) or [0]
    return [(s, e) for s, e in zip(bounds, [*bounds[1:], n])]


def extra_step_frac(fixup_steps: float, primary_steps: float) -> float:
    """FixPO's extra-step fraction ``fixup_steps / primary_steps`` (0 before any primary step): every fix-up
    gradient step counts as one step, whatever its minibatch size, against the primary phase's minibatch steps
    (Zentner et al., 2023, "Guaranteed Trust Region Optimization via Two-Phase KL Penalization")."""
    return float(fixup_steps) / primary_steps if primary_steps else 0.0


class NoControl:
    """Keep ``loss.proximal_coef`` fixed; no extra gradient steps."""

    needs_kl = False  # whether after_step reads the per-state KL of the minibatch
    kl_old_first = False  # KL(pi || pi_old) (MDPO); True: KL(pi_old || pi) (FixPO)

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
        self.update_primary = self.update_fixup = 0  # of the current update (reset by begin_iteration)
        self.capped = 0

    def loss_config(self, loss_cfg):
        return dataclasses.replace(loss_cfg, proximal_coef=self.beta.detach().clone())

    def _update_beta(self, kl_max: torch.Tensor) -> None:
        self.beta_opt.zero_grad(set_to_none=True)
        self.beta.grad = (self.fx.eps_kl - self.fx.c_beta * kl_max.detach()).reshape(())
        self.beta_opt.step()
        with torch.no_grad():
            self.beta.clamp_(min=0.0)

    def begin_iteration(self, iteration, loss_cfg):
        self.update_primary = self.update_fixup = 0
        return loss_cfg

    def after_step(self, pb) -> None:
        self.primary_steps += 1
        self.update_primary += 1
        self._update_beta(masked_max(pb.kl_old.detach(), pb.mask))

    def fixup(self, kl_on, optimizer, params, batch_size: int) -> dict:
        """``kl_on(idx) -> (per-state KL with grad, valid mask)``, KL as ``self.kl``; sweep the shuffled batch
        until no minibatch violates."""
        steps = 0
        while True:
            violated = False
            perm = torch.randperm(batch_size)
            for start, end in fixup_chunks(batch_size, self.fx.fixup_minibatch_size):
                kl, mask = kl_on(perm[start:end])
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
        self.update_fixup += steps
        return {"fixpo/fixup_steps": float(steps)}

    def stats(self):
        return {
            "fixpo/beta": float(self.beta.detach()),
            "fixpo/fixup_steps_total": float(self.fixup_steps),
            "fixpo/primary_steps_total": float(self.primary_steps),
            "fixpo/extra_step_frac": extra_step_frac(self.fixup_steps, self.primary_steps),
            "fixpo/update_fixup_steps": float(self.update_fixup),
            "fixpo/update_primary_steps": float(self.update_primary),
            "fixpo/update_extra_frac": extra_step_frac(self.update_fixup, self.update_primary),
            "fixpo/fixup_capped": float(self.capped),
        }

    def state_dict(self):
        return {
            "beta": self.beta.detach().clone(),
            "beta_opt": self.beta_opt.state_dict(),
            "counts": [self.primary_steps, self.fixup_steps, self.capped],
        }

    def load_state_dict(self, state):
        with torch.no_grad():
            self.beta.copy_(state["beta"])
        self.beta_opt.load_state_dict(state["beta_opt"])
        self.primary_steps, self.fixup_steps, self.capped = (int(x) for x in state["counts"])
