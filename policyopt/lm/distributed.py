"""Data-parallel plumbing of the LM trainer: which rank this process is and the few collectives the trainer uses.

:func:`world` returns the process's :class:`World`. A single process gets the plain :class:`World`, whose
collectives are the identity, so the trainer calls them unconditionally. Under ``torchrun`` (``WORLD_SIZE`` > 1
in the environment, with ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) it gets a
:class:`ProcessGroup`: ``torch.distributed`` started with gloo on CPU or nccl on CUDA.

What is sharded (see ``docs/scaling.md, "Data-parallel training"``): every rank draws the same prompts for a step and
generates the completions of its own contiguous slice of them (whole prompt groups, so group advantages stay
local); the aggregation denominators (sequences and tokens of the mini-batch) are summed over the ranks before
the loss, so the sum of the ranks' gradients, reduced by :meth:`World.reduce_grads`, is the gradient of the
whole batch; the logged statistics are computed on the rows of every rank (:meth:`World.cat`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from policyopt.errors import UserError
from policyopt.losses import Aggregator


@dataclass
class World:
    """One process: rank 0 of 1. Every collective returns its input (the single-process trainer)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The rank that writes the run directory."""
        return self.rank == 0

    def sum(self, x: Tensor) -> Tensor:
        """The element-wise sum of ``x`` over the ranks."""
        return x

    def cat(self, x: Tensor) -> Tensor:
        """The ranks' ``x`` concatenated along dim 0 in rank order (the first dims may differ)."""
        return x

    def count(self, n: int | float) -> float:
        """``n`` summed over the ranks, as a float."""
        return float(self.sum(torch.tensor(float(n), dtype=torch.float64)))

    def mean(self, x: Tensor) -> Tensor:
        """The mean over the ranks of a statistic (for equal-size shards: the statistic of the union)."""
        return self.sum(x.detach().float()) / self.size

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable)."""
        return obj

    def broadcast_params(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers."""

    def reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over the ranks (a parameter without a gradient counts as zeros)."""

    def aggregator(self, mode: str, mask: Tensor, const_len: float | None) -> Aggregator:
        """:meth:`Aggregator.for_batch` with the denominators of the *global* batch: the union over the ranks
        of their ``mask`` rows (sequence count and token count summed over the ranks)."""
        agg = Aggregator.for_batch(mode, mask, const_len)
        if self.size == 1:
            return agg
        m = mask if mask.dim() > 1 else mask[:, None]
        seqs, tokens = self.sum(torch.stack([torch.tensor(float(m.shape[0])), m.sum().double()]).double())
        n_tokens = tokens.to(agg.num_tokens.dtype).clamp(min=1)
        return dataclasses.replace(agg, num_seqs=float(max(float(seqs), 1.0)), num_tokens=n_tokens)

    def close(self) -> None:
        pass


class ProcessGroup(World):
    """A rank of a ``torch.distributed`` process group (gloo on CPU, nccl on CUDA); collectives run on
    ``device`` (the rank's GPU for nccl) and return tensors on the caller's device."""

    def __init__(self, rank: int, size: int, local_rank: int):
        super().__init__(rank, size, local_rank)
        import torch.distributed as dist

        self.dist = dist
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        dist.init_process_group(
            "nccl" if cuda else "gloo", rank=rank, world_size=size, timeout=datetime.timedelta(minutes=30)
        )

    def sum(self, x: Tensor) -> Tensor:
        y = x.detach().to(self.device, copy=True)
        self.dist.all_reduce(y)
        return y.to(x.device)

    def cat(self, x: Tensor) -> Tensor:
        x = x.detach()
        y = (x.to(torch.uint8) if x.dtype == torch.bool else x).to(self.device)
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.size)]
        self.dist.all_gather(sizes, torch.tensor([y.shape[0]], device=self.device))
        n_max = max(int(s) for s in sizes)
        padded = y.new_zeros((n_max, *y.shape[1:]))
        padded[: y.shape[0]] = y
        out = [torch.empty_like(padded) for _ in range(self.size)]
        self.dist.all_gather(out, padded)
        rows = torch.cat([o[: int(s)] for o, s in zip(out, sizes)])
        return rows.to(x.device, x.dtype)

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def broadcast_params(self, module: torch.nn.Module) -> None:
        with torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                y = t.detach().to(self.device, copy=True)
                self.dist.broadcast(y, src=0)
                t.copy_(y.to(t.device))

    def reduce_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.device)
        self.dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.device, p.dtype)
            offset += n

    def close(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


def _env_int(name: str, default: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(
            f"environment variable {name}={raw!r} must be an integer (start data-parallel runs with torchrun)"
        ) from None


def launch_size() -> int:
    """The number of data-parallel ranks the launcher asked for (``WORLD_SIZE``; 1 without torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    if size < 1:
        raise UserError(f"environment variable WORLD_SIZE={size} must be >= 1")
    return size


_WORLD: World | None = None


def world() -> World:
    """This process's :class:`World`, started on first use from the launcher's environment."""
    global _WORLD
    if _WORLD is None:
        size = launch_size()
        if size == 1:
            _WORLD = World()
        else:
            rank, local = _env_int("RANK"), _env_int("LOCAL_RANK", 0)
            if not 0 <= rank < size:
                raise UserError(f"environment variable RANK={rank} must be in [0, WORLD_SIZE={size})")
            missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
            if missing:
                raise UserError(f"WORLD_SIZE={size} but {', '.join(missing)} is not set: start the run with torchrun")
            _WORLD = ProcessGroup(rank, size, local)
    return _WORLD


def shutdown() -> None:
    """End the process group (if any); the next :func:`world` starts afresh."""
    global _WORLD
    if _WORLD is not None:
        _WORLD.close()
    _WORLD = None


def check_shards(n_groups: int, shards: int, size: int) -> int:
    """The number of rollout shards of a step of ``n_groups`` prompt groups on ``size`` ranks (``shards`` 0:
    one per rank); a :class:`UserError` names the values when the groups cannot be split evenly."""
    n = shards or size
    if size > n_groups or n_groups % size:
        raise UserError(
            f"WORLD_SIZE={size} data-parallel ranks need a number of prompt groups per step (prompts_per_step, "
            f"here {n_groups}) that is a multiple of WORLD_SIZE and at least WORLD_SIZE"
        )
    if n > n_groups or n_groups % n or n % size:
        raise UserError(
            f"config key 'rollout_shards'={shards} must divide the {n_groups} prompt groups per step "
            f"(prompts_per_step) and be a multiple of WORLD_SIZE={size}"
        )
    return n


def my_shards(n_groups: int, shards: int, w: World) -> list[tuple[int | None, slice]]:
    """``(shard, slice of the step's prompts)`` for the shards rank ``w.rank`` generates: shard ``k`` of ``n``
    is the contiguous slice ``[k n_groups / n, (k+1) n_groups / n)``, rank ``r`` owns shards
    ``[r n / size, (r+1) n / size)``. Shard None: one batch from the process-global generator (a single process
    without ``rollout_shards``)."""
    if not shards and w.size == 1:
        return [(None, slice(0, n_groups))]
    n = check_shards(n_groups, shards, w.size)
    per, own = n_groups // n, n // w.size
    return [(k, slice(k * per, (k + 1) * per)) for k in range(w.rank * own, (w.rank + 1) * own)]


@contextlib.contextmanager
def generation_rng(seed: int | None) -> Iterator[None]:
    """Inside: torch's generators (CPU and this process's GPU) seeded with ``seed``; outside, their states are
    as before. ``seed`` None: no change."""
    if seed is None:
        yield
        return
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def check_config(cfg: Any, size: int) -> None:
    """Refuse, with one line, an LM config that ``size`` data-parallel ranks cannot split: prompt groups that do
    not divide evenly into the rollout shards, or an advantage estimator or data selector whose ``scope`` is
    the whole batch (batch whitening, a batch-wide top-k, refills, a per-prompt tracker) rather than a group."""
    from policyopt.advantages import ADVANTAGES
    from policyopt.lm import selection

    if size == 1 and not cfg.rollout_shards:
        return
    names = selection.pipeline(cfg)
    check_shards(selection.prompts_to_draw(names, cfg, cfg.prompts_per_step), cfg.rollout_shards, size)
    if size == 1:
        return
    if cfg.async_workers:
        raise UserError(
            f"config key 'async_workers'={cfg.async_workers} cannot be combined with WORLD_SIZE={size} data-parallel "
            "ranks; use async_workers=0 under torchrun, or one process with generation workers"
        )
    if ADVANTAGES.meta(cfg.advantage)["scope"] != "group":
        group = [n for n, _ in ADVANTAGES.items() if ADVANTAGES.meta(n)["scope"] == "group"]
        raise UserError(
            f"config key 'advantage'={cfg.advantage!r} normalizes over the whole batch, which WORLD_SIZE={size} "
            f"data-parallel ranks do not hold; valid under data parallelism: {group}"
        )
    batch = [n for n in names if selection.SELECTORS.meta(n)["scope"] == "batch"]
    if batch:
        raise UserError(
            f"the selectors {batch} act on the whole batch, which WORLD_SIZE={size} data-parallel ranks do not "
            "hold; turn them off or train in one process"
        )
