"""Populations: ``S`` members of one trainer family trained in lockstep in one process.

A family that can batch its members (stacked parameters, one kernel launch for all of them) writes its
phases once for the whole population; everything else is the single-run lifecycle of
:mod:`policyopt.runs.lifecycle`, member by member:

- every member is a :class:`MemberRun`, an ordinary :class:`~policyopt.runs.lifecycle.Run` on its own run
  directory (``config.yaml``, ``run.json`` with its own status, ``metrics.csv``, ``tb/``, its checkpoint,
  ``eval.json``), so ``policyopt eval DIR`` and ``policyopt train --resume DIR`` work on one member as on a
  single run. Its "global" random generators are its own: a ``torch.Generator`` seeded like the process-global
  one of a single run with the member's seed (:meth:`MemberRun.global_rng` swaps it in for code that draws
  from the global generator, e.g. network initialization);
- a stacked part (parameters of all members in one tensor) is registered with :meth:`PopulationRun.track`;
  it implements ``member_state_dict(k)`` (the single-run state of member ``k``) and
  ``load_member_state_dict(k, state)``, so each member's checkpoint is in its family's single-run format;
- statistics returned by ``update`` are ``(S,)`` tensors (or scalars shared by all members); each member
  logs its own slice, optionally only over the rows it took part in (``accumulate(stats, members=mask)``);
- the non-finite guard is per member: a member whose ``loss/*`` statistic is NaN or infinite is marked
  ``failed`` (its directory keeps its last good checkpoint) and drops out of logging, evaluation and
  checkpoints; the others continue. The run fails when every member has;
- checkpoints of the ``S`` members are written in two phases: every member's new checkpoint is written under
  ``checkpoints/pending.safetensors``, then each is renamed over ``latest.safetensors``. On resume
  (:func:`recover_checkpoints`) the pending files are rolled forward if every live member has its new
  checkpoint (pending, or already renamed), else rolled back, so a population killed while writing resumes
  exactly from one consistent position.

The entry point is :func:`execute_population`, the population's :func:`~policyopt.runs.lifecycle.execute`.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from policyopt.errors import NonFiniteLoss, UserError
from policyopt.runs import rundir
from policyopt.runs.checkpoint import rng_state, save_checkpoint
from policyopt.runs.files import atomic_write_text
from policyopt.runs.lifecycle import (
    _FROM_CONFIG,
    Family,
    Run,
    _headline,
    open_run_dir,
    record_failure,
    run_settings,
    run_stage,
    sigterm_interrupts,
)

PENDING = "pending.safetensors"  # a member's new checkpoint before the population commits it


def pending_path(run_dir: str | Path) -> Path:
    return rundir.checkpoint_path(run_dir).with_name(PENDING)


# ---- members -------------------------------------------------------------------------------------------
class MemberRun(Run):
    """One member of a population: a :class:`Run` on its own directory whose global generators are its own.

    ``generator`` is a CPU ``torch.Generator`` seeded with the member's seed, the same stream as the process-global
    generator of a single run after :func:`~policyopt.runs.lifecycle.seed_global`; it is saved as the
    checkpoint's ``rng.global.torch``, so the member's checkpoint resumes as a single run. NumPy's and Python's
    global states are those right after seeding (a family that batches members must not draw from them)."""

    def __init__(self, run_dir: str | Path, cfg: Any, *, index: int, **kw: Any):
        super().__init__(run_dir, cfg, **kw)  # seeds the process-global generators with this member's seed
        self.index = index
        self._host_rng = {k: v for k, v in rng_state().items() if k != "torch"}
        self.generator = torch.Generator().manual_seed(int(kw["seed"]))
        self.failed: str | None = None  # why this member stopped (its run.json says failed)

    @contextlib.contextmanager
    def global_rng(self):
        """Within the block the process-global torch generator continues this member's stream (and the stream
        continues from there after the block)."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.generator.get_state())
        try:
            yield self.generator
        finally:
            self.generator.set_state(torch.get_rng_state())
            torch.set_rng_state(saved)

    def global_rng_state(self) -> dict[str, Any]:
        return {**self._host_rng, "torch": self.generator.get_state()}

    def set_global_rng_state(self, state: dict[str, Any]) -> None:
        self._host_rng = {k: v for k, v in state.items() if k != "torch"}
        self.generator.set_state(state["torch"])


class MemberView:
    """Member ``index``'s view of a stacked part: its ``state_dict`` is the single-run state of that member."""

    def __init__(self, part: Any, index: int):
        self.part, self.index = part, index

    def state_dict(self) -> Any:
        return self.part.member_state_dict(self.index)

    def load_state_dict(self, state: Any) -> None:
        self.part.load_member_state_dict(self.index, state)


class _Given:
    """A stage stand-in whose evaluation is already computed (lets :meth:`Run.evaluate` log a member's result)."""

    def __init__(self, res: dict[str, Any]):
        self.res = res

    def evaluate(self, run: Run, final: bool) -> dict[str, Any]:
        return self.res


# ---- the population ----------------------------------------------------------------------------------
class PopulationRun:
    """The members and what a population stage shares with the lifecycle (the population's :class:`Run`).

    ``stage_index`` and ``iteration`` are shared by every member. ``active`` is a ``(S,)`` bool tensor of the
    members still training (not failed)."""

    def __init__(self, members: Sequence[MemberRun]):
        self.members = list(members)
        self.size = len(self.members)
        self.resume = self.members[0].resume
        self.progress = self.members[0].progress
        self.stats: dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]] = collections.defaultdict(list)
        self._guard_pos: dict[str, int] = {}

    @property
    def stage_index(self) -> int:
        return self.members[0].stage_index

    @stage_index.setter
    def stage_index(self, value: int) -> None:
        for m in self.members:
            m.stage_index = value

    @property
    def iteration(self) -> int:
        return self.members[0].iteration

    @iteration.setter
    def iteration(self, value: int) -> None:
        for m in self.members:
            m.iteration = value

    @property
    def active(self) -> torch.Tensor:
        return torch.tensor([m.failed is None for m in self.members])

    def live(self) -> list[MemberRun]:
        return [m for m in self.members if m.failed is None]

    # -- state --
    def track(self, name: str, part: Any) -> Any:
        """Register a stacked part (``member_state_dict(k)``, ``load_member_state_dict(k, state)``)."""
        for k, m in enumerate(self.members):
            m.track(name, MemberView(part, k))
        return part

    def track_each(self, name: str, parts: Sequence[Any]) -> Sequence[Any]:
        """Register one ordinary part per member (anything with ``state_dict``/``load_state_dict``)."""
        for m, p in zip(self.members, parts, strict=True):
            m.track(name, p)
        return parts

    def save(self) -> None:
        """Two-phase checkpoint of every live member: all new files under the pending name, then all renamed."""
        written = []
        for m in self.live():
            try:
                save_checkpoint(pending_path(m.dir), m.state())
                written.append(m)
            except NonFiniteLoss as e:  # non-finite state with finite losses: this member fails alone
                self.fail(m, str(e))
        for m in written:
            os.replace(pending_path(m.dir), m.checkpoint_path)
        if not written:
            raise NonFiniteLoss("every member of the population has failed; see each member's run.json")

    def restore(self) -> None:
        """Restore every member from its checkpoint; the live members must stand at one position."""
        for m in self.members:
            if m.checkpoint_path.exists() or m.failed is None:
                m.restore()
        positions = {(m.stage_index, m.iteration) for m in self.live()}
        if len(positions) != 1:
            raise UserError(
                f"the population's members stand at different checkpoints {sorted(positions)} (stage, iteration); "
                "resume them one by one as single runs"
            )
        self.stage_index, self.iteration = positions.pop()

    # -- statistics --
    def accumulate(self, stats: Mapping[str, Any], members: torch.Tensor | None = None) -> None:
        """Add one row of statistics: ``(S,)`` tensors (or scalars, the same for every member); ``members``, a
        ``(S,)`` bool mask, limits the row to the members that took part in it."""
        for k, v in stats.items():
            v = v.detach() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            self.stats[k].append((v.float().reshape(-1).expand(self.size), members))

    def _rows(self, key: str, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.stats[key][start:]
        values = torch.stack([v for v, _ in rows])
        masks = torch.stack([torch.ones(self.size, dtype=torch.bool) if m is None else m.bool() for _, m in rows])
        return values, masks

    def guard(self) -> None:
        """Fail every live member whose ``loss/*`` statistics since the last check hold NaN or infinity."""
        for k, rows in self.stats.items():
            if not k.startswith("loss/") or len(rows) <= self._guard_pos.get(k, 0):
                continue
            values, masks = self._rows(k, self._guard_pos.get(k, 0))
            bad = (~torch.isfinite(values) & masks).any(0)
            for i in torch.nonzero(bad).flatten().tolist():
                m = self.members[i]
                if m.failed is None:
                    self.fail(
                        m,
                        f"non-finite {k} at iteration {self.iteration}; parameters not saved, last good "
                        f"checkpoint: {m.checkpoint_path}",
                    )
        self._guard_pos = {k: len(v) for k, v in self.stats.items()}
        if not self.live():
            raise NonFiniteLoss("every member of the population has failed; see each member's run.json")

    def fail(self, member: MemberRun, error: str) -> None:
        member.failed = error
        if member.logger is not None:
            member.logger.close()
            member.logger = None
        rundir.write_info(member.dir, status="failed", error=error, member_failed=True)

    def flush_stats(self, step: int, extra: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        """Each live member logs the means of its slice of the accumulated statistics, and ``extra[k]`` (one
        mapping for every member, or one shared by all)."""
        if isinstance(extra, Mapping):
            extra = [extra] * self.size
        means = {}
        for k in self.stats:
            values, masks = self._rows(k)
            n = masks.sum(0)
            means[k] = (torch.where(masks, values, 0.0).sum(0) / n.clamp(min=1), n > 0)
        for i, m in enumerate(self.members):
            if m.failed is None:
                m.stats = collections.defaultdict(list, {k: [v[i]] for k, (v, has) in means.items() if has[i]})
                m.flush_stats(step, extra[i])
        self.stats.clear()
        self._guard_pos = {}

    def evaluate(self, stage: Any, step: int, final: bool) -> list[dict[str, Any]]:
        results = stage.evaluate(self, final)
        for m, res in zip(self.members, results, strict=True):
            if m.failed is None:
                m.evaluate(_Given(res), step, final)
        return results

    def headline(self) -> float | None:
        values = [_headline(m.last_eval) for m in self.live() if m.last_eval]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None


# ---- the loop -------------------------------------------------------------------------------------------
def run_population_stages(pop: PopulationRun, stages: Sequence[Any]) -> list[dict[str, Any]]:
    """:func:`~policyopt.runs.lifecycle.run_stages` for a population: the stages in order, then each live member's
    final evaluation (``eval.json``); returns one result per member (``{"status": "failed", "error": ...}`` for
    a failed one)."""
    if not stages:
        raise ValueError("a run needs at least one stage")
    last = stages[-1]
    for index, stage in enumerate(stages):
        if index < pop.stage_index:
            continue
        if index > pop.stage_index:
            pop.stage_index, pop.iteration = index, 0
        for m in pop.live():
            if m.logger is None:
                m.open_logger(stage.step(pop.iteration))
        stage.begin(pop)
        if pop.resume and index == len(stages) - 1 and pop.iteration >= stage.iterations:
            for m in pop.live():
                rundir.check_budget_left(m.dir, stage.step(pop.iteration))
        run_stage(pop, stage, index == len(stages) - 1)
        stage.end(pop)
    step = last.step(pop.iteration)
    finals = pop.evaluate(last, step, final=True)
    results = last.result(pop, finals)
    out = []
    for m, final, result in zip(pop.members, finals, results, strict=True):
        if m.failed is not None:
            out.append({"status": "failed", "error": m.failed})
            continue
        assert m.logger is not None
        m.logger.close()
        atomic_write_text(m.dir / "eval.json", json.dumps({**final, "step": step}, indent=2))
        out.append(result)
    return out


# ---- checkpoints of a population killed while writing ---------------------------------------------------
def checkpoint_position(path: str | Path) -> tuple[int, int]:
    """``(stage, iteration)`` of a checkpoint, read from its metadata only (no tensor is loaded)."""
    with safe_open(str(path), framework="pt") as f:
        skeleton = json.loads((f.metadata() or {})["state"])
    life = dict(dict(skeleton["__dict__"])["lifecycle"]["__dict__"])
    return int(life["stage"]), int(life["iteration"])


def recover_checkpoints(run_dirs: Sequence[Path]) -> str:
    """Finish or undo a population checkpoint that a kill interrupted: roll the pending files forward when every
    member has its new checkpoint (pending, or already renamed), else remove them. Returns ``"forward"``,
    ``"back"`` or ``"none"``. Members that failed on their own (``member_failed`` in run.json) are left out."""
    dirs = [Path(d) for d in run_dirs if not rundir.read_info(d).get("member_failed")]
    pending = [pending_path(d) for d in dirs if pending_path(d).exists()]
    if not pending:
        return "none"
    target = checkpoint_position(pending[0])

    def is_new(d: Path) -> bool:
        if pending_path(d).exists():
            return checkpoint_position(pending_path(d)) == target
        latest = rundir.checkpoint_path(d)
        return latest.exists() and checkpoint_position(latest) == target

    forward = all(is_new(d) for d in dirs)
    for d in dirs:
        p = pending_path(d)
        if p.exists():
            if forward:
                os.replace(p, rundir.checkpoint_path(d))
            else:
                p.unlink()
    return "forward" if forward else "back"


# ---- the entry point ------------------------------------------------------------------------------------
def _open_dirs(
    family: Family, cfgs: Sequence[Any], run_dirs: list[Path], resume: bool, info: Mapping[str, Any] | None
) -> tuple[bool, list[bool], set[int]]:
    """Check (all first) then open every member's directory; returns ``(resume, fresh, failed members)``."""
    failed: set[int] = set()
    if resume:
        failed = {k for k, d in enumerate(run_dirs) if rundir.read_info(d).get("member_failed")}
        recover_checkpoints(run_dirs)
    else:
        for d in run_dirs:
            rundir.check_new_run_dir(d)
    opened = []
    for k, (cfg, d) in enumerate(zip(cfgs, run_dirs, strict=True)):
        extra = {"population": {"index": k, "size": len(run_dirs)}, **dict(info or {})}
        opened.append(open_run_dir(family, cfg, d, resume, extra))
    has_checkpoint = {opened[k][0] for k in range(len(run_dirs)) if k not in failed}
    if len(has_checkpoint) > 1:
        raise UserError(
            "some members of the population have a checkpoint and others do not; resume them one by one as single runs"
        )
    return (has_checkpoint.pop() if has_checkpoint else False), [fresh for _, fresh in opened], failed


def execute_population(
    family: Family,
    cfgs: Sequence[Any],
    run_dirs: Sequence[str | Path],
    resume: bool,
    build: Callable[[PopulationRun], Sequence[Any]],
    *,
    info: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Prepare (or reopen) every member's run directory, build the population's stages, restore on resume, run,
    record every member's status; returns one result per member.

    ``cfgs[k]`` is member ``k``'s resolved config (its ``seed`` seeds it; ``tensorboard``, ``progress`` and
    ``threads`` are read from the first). Bad input found while building removes the fresh directories; Ctrl-C
    and SIGTERM record ``interrupted`` for every member; a member's own non-finite loss records ``failed`` for
    that member only (see :class:`PopulationRun`)."""
    if not cfgs or len(cfgs) != len(run_dirs):
        raise UserError(f"a population needs one run directory per config (got {len(cfgs)} configs, {len(run_dirs)})")
    dirs = [Path(d) for d in run_dirs]
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise UserError("the members of a population need distinct run directories")
    _, tensorboard, progress = run_settings(cfgs[0], None, None, _FROM_CONFIG)
    resume, fresh, failed = _open_dirs(family, cfgs, dirs, resume, info)
    members: list[MemberRun] = []
    try:
        with sigterm_interrupts():
            for k, (cfg, d) in enumerate(zip(cfgs, dirs, strict=True)):
                members.append(
                    MemberRun(
                        d, cfg, index=k, resume=resume, seed=int(cfg.seed), tensorboard=tensorboard, progress=progress
                    )
                )
            pop = PopulationRun(members)
            for k in failed:
                members[k].failed = rundir.read_info(dirs[k]).get("error") or "failed"
                rundir.write_info(dirs[k], status="failed", error=members[k].failed)
            stages = build(pop)
            if resume:
                pop.restore()
            results = run_population_stages(pop, stages)
    except BaseException as e:
        for k, d in enumerate(dirs):
            m = members[k] if k < len(members) else None
            if m is not None and m.failed is not None:
                continue
            record_failure(d, e, remove=fresh[k] and not resume, logger=m.logger if m else None)
        raise
    for m in members:
        if m.failed is None:
            rundir.write_info(m.dir, status="finished")
    return results
