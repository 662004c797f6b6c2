"""The one run lifecycle under every trainer family.

A family (on-policy control, off-policy control, language models, ...) writes its *phases*: what one
iteration collects, how it updates, how the policy is evaluated. Everything else lives here, once:

- **seeding** by named streams (:class:`SeedStreams`): every random source is derived from the run's
  seed and a name, never from an offset, and every stream's state is in the checkpoint;
- **state**: the named stateful parts a family registers with :meth:`Run.track` (models, optimizers,
  normalizers, buffers, trackers) plus plain counters, saved together atomically, verified on load,
  never saved when non-finite;
- **the loop** (:func:`run_stages`): one or several :class:`Stage` s in order (a supervised warm-start,
  then RL), with log, evaluation and checkpoint cadences, the non-finite guard, resume inside any
  stage, and a resume of a run whose budget is spent that goes straight to its pending final evaluation;
- **the run directory**: ``config.yaml`` (the resolved config), ``run.json`` (family, status: running,
  finished, failed or interrupted), ``metrics.csv`` and TensorBoard events cut back to the checkpoint on
  resume, ``checkpoints/latest.safetensors``, ``eval.json``.

A family's public ``train(cfg, run_dir, resume=False)`` is one call to :func:`execute` with a function
that builds its stages. See ``docs/lifecycle.md`` for a worked example of a new family.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import random
import shutil
import signal
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from policyopt.errors import NonFiniteLoss, UserError
from policyopt.registry import Registry
from policyopt.runs import rundir
from policyopt.runs.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from policyopt.runs.files import atomic_write_text, remove_stale_temporaries
from policyopt.runs.logger import MetricLogger
from policyopt.runs.progress import TrainProgress


# ---- seeding ------------------------------------------------------------------------------------------
def seed_global(seed: int) -> None:
    """Seed the process-global generators (Python, NumPy's legacy one, torch) with the run seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SeedStreams:
    """Independent random streams named by purpose, derived from ``(seed, name)``.

    ``seed(name)`` is a 63-bit integer from NumPy's ``SeedSequence`` over the run seed and a CRC-32
    of the name, so adding a stream never shifts another. ``numpy(name)`` and ``torch(name)`` return a
    generator created on first use; its state is part of :meth:`state_dict`, so a resumed run continues
    each stream exactly where it stopped.
    """

    def __init__(self, seed: int):
        self.base = int(seed)
        self._numpy: dict[str, np.random.Generator] = {}
        self._torch: dict[str, torch.Generator] = {}

    def seed(self, name: str) -> int:
        entropy = [abs(self.base), int(self.base < 0), zlib.crc32(name.encode())]
        return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))

    def numpy(self, name: str) -> np.random.Generator:
        if name not in self._numpy:
            self._numpy[name] = np.random.default_rng(self.seed(name))
        return self._numpy[name]

    def torch(self, name: str) -> torch.Generator:
        """A CPU torch generator (draw on the CPU, then move: results do not depend on the device)."""
        if name not in self._torch:
            self._torch[name] = torch.Generator().manual_seed(self.seed(name))
        return self._torch[name]

    def state_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "numpy": {k: json.dumps(g.bit_generator.state) for k, g in self._numpy.items()},
            "torch": {k: g.get_state() for k, g in self._torch.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, s in state.get("numpy", {}).items():
            self.numpy(k).bit_generator.state = json.loads(s)
        for k, s in state.get("torch", {}).items():
            self.torch(k).set_state(s)


# ---- stages -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cadence:
    """How often, in iterations, to log, evaluate, checkpoint and check losses for NaN (0 = only at the end
    of the stage; ``guard`` 0 = at log time, for loops that must not sync with the host every iteration)."""

    log: int = 1
    evaluate: int = 0
    checkpoint: int = 0
    guard: int = 1

    @staticmethod
    def every(n: int, unit: int, *, ceil: bool = False) -> int:
        """An interval given in steps (``n``) as whole iterations of ``unit`` steps (rounded down, or up with
        ``ceil``; at least 1); 0 stays 0."""
        if not n:
            return 0
        return max(1, -(-n // unit) if ceil else n // unit)


@runtime_checkable
class Stage(Protocol):
    """What a trainer family writes: one stage of a run (its phases and its cadence)."""

    name: str
    iterations: int
    cadence: Cadence

    def step(self, iteration: int) -> int:
        """The metrics x-axis after ``iteration`` iterations (environment steps, optimizer steps, ...)."""

    def begin(self, run: Run) -> None:
        """Called when the stage starts or resumes (after state is restored): reset environments, etc."""

    def collect(self, run: Run) -> Any:
        """Gather one iteration's data (rollouts, a replay sample, generated completions)."""

    def update(self, run: Run, batch: Any) -> Mapping[str, torch.Tensor]:
        """Learn from ``batch``; returns per-iteration statistics (``loss/total`` is NaN-guarded)."""

    def log_metrics(self, run: Run) -> Mapping[str, Any]:
        """Extra metrics at log time, beside the means of the accumulated statistics."""

    def evaluate(self, run: Run, final: bool) -> dict[str, Any]:
        """Evaluate the policy; the numbers are logged under ``eval/`` (and written to eval.json if final)."""

    def before_checkpoint(self, run: Run) -> None: ...

    def after_checkpoint(self, run: Run) -> None: ...

    def done(self, run: Run) -> bool:
        """True to end the stage early (e.g. a warm-start that reached its target)."""

    def end(self, run: Run) -> None:
        """Called once after the stage's last iteration (close environments, save a model, ...)."""

    def result(self, run: Run, final: dict[str, Any]) -> dict[str, Any]:
        """The run's result (the last stage's is returned by ``train``)."""


class Phases:
    """Defaults for the optional parts of :class:`Stage`; a family subclasses it and writes collect/update."""

    name = "train"
    iterations = 0
    cadence = Cadence()

    def step(self, iteration: int) -> int:
        return iteration

    def begin(self, run: Run) -> None:
        pass

    def log_metrics(self, run: Run) -> Mapping[str, Any]:
        return {}

    def evaluate(self, run: Run, final: bool) -> dict[str, Any]:
        return {}

    def before_checkpoint(self, run: Run) -> None:
        pass

    def after_checkpoint(self, run: Run) -> None:
        pass

    def done(self, run: Run) -> bool:
        return False

    def end(self, run: Run) -> None:
        pass

    def result(self, run: Run, final: dict[str, Any]) -> dict[str, Any]:
        return dict(final)

    def progress_info(self, run: Run) -> dict[str, Any]:
        return {}


# ---- the run ----------------------------------------------------------------------------------------
class Run:
    """A run directory and everything a stage shares with the lifecycle.

    ``track(name, part)`` registers a stateful part: anything with ``state_dict``/``load_state_dict``. Its state
    is saved under ``name`` in every checkpoint, and restored on resume (a part tracked after the restore,
    e.g. a reference model created when RL starts, is restored when it is tracked). ``counters`` holds a
    family's plain numbers (steps, episode statistics); they are saved too.
    """

    def __init__(
        self,
        run_dir: str | Path,
        cfg: Any,
        *,
        resume: bool,
        seed: int,
        tensorboard: bool = True,
        progress: bool | None = None,
        writer: bool = True,
    ):
        self.dir = Path(run_dir)
        self.writer = writer  # False: run the loop, write nothing (a data-parallel rank other than 0)
        self.cfg = cfg
        self.resume = resume
        self.seeds = SeedStreams(seed)
        self.progress = progress
        self.counters: dict[str, Any] = {}
        self.parts: dict[str, Any] = {}
        self.stage_index, self.iteration = 0, 0
        self.stats: dict[str, list[torch.Tensor]] = collections.defaultdict(list)
        self._guard_pos: dict[str, int] = {}
        self._restored: dict[str, Any] = {}
        self._metrics_rows: int | None = None  # the metrics.csv rows at the restored checkpoint
        self._tensorboard = tensorboard
        self.logger: MetricLogger | None = None
        self.last_eval: dict[str, Any] | None = None
        self.t_start = time.time()
        seed_global(seed)

    @property
    def checkpoint_path(self) -> Path:
        return rundir.checkpoint_path(self.dir)

    # -- state --
    def track(self, name: str, part: Any) -> Any:
        if not (hasattr(part, "state_dict") and hasattr(part, "load_state_dict")):
            raise TypeError(f"part {name!r} ({type(part).__name__}) has no state_dict/load_state_dict")
        if name in _RESERVED:
            raise ValueError(f"part name {name!r} is reserved")
        self.parts[name] = part
        self._load_restored(name)
        return part

    def _load_restored(self, name: str) -> None:
        """Give part ``name`` its state from the restored checkpoint, if it holds one."""
        if name in self._restored:
            self.parts[name].load_state_dict(self._restored.pop(name))

    def state(self) -> dict[str, Any]:
        return {
            **{name: part.state_dict() for name, part in self.parts.items()},
            "counters": dict(self.counters),
            "lifecycle": {
                "stage": self.stage_index,
                "iteration": self.iteration,
                "metrics_rows": self.logger.rows if self.logger else 0,
            },
            "rng": {"global": self.global_rng_state(), "streams": self.seeds.state_dict()},
        }

    def global_rng_state(self) -> dict[str, Any]:
        """The state of the generators the run draws from besides its named streams: the process-global ones
        (a population member overrides this with its own generators)."""
        return rng_state()

    def set_global_rng_state(self, state: dict[str, Any]) -> None:
        set_rng_state(state)

    def save(self) -> None:
        """Checkpoint every tracked part, the counters and every RNG (refused if any tensor is non-finite)."""
        if self.writer:
            save_checkpoint(self.checkpoint_path, self.state())

    def restore(self) -> None:
        state = load_checkpoint(self.checkpoint_path)
        missing = [k for k in ("counters", "lifecycle", "rng") if k not in state]
        if missing:
            raise UserError(
                f"checkpoint {str(self.checkpoint_path)!r} lacks {missing}; it was not written by "
                "this version of policyopt"
            )
        self.counters.update(state.pop("counters"))
        life = state.pop("lifecycle")
        self.stage_index, self.iteration = int(life["stage"]), int(life["iteration"])
        self._metrics_rows = int(life["metrics_rows"])
        rng = state.pop("rng")
        self.set_global_rng_state(rng["global"])
        self.seeds.load_state_dict(rng["streams"])
        self._restored = state
        for name in list(self.parts):
            self._load_restored(name)

    # -- metrics --
    def open_logger(self, step: int) -> None:
        rows = self._metrics_rows if self.resume else None
        if not self.writer:
            self.logger = _NoLogger()
            return
        self.logger = MetricLogger(
            self.dir,
            self._tensorboard,
            resume_step=step if self.resume else None,
            resume_rows=rows,
            trackers=getattr(self.cfg, "trackers", []),
            config=self.cfg,
        )

    def accumulate(self, stats: Mapping[str, Any]) -> None:
        for k, v in stats.items():
            self.stats[k].append(v if isinstance(v, torch.Tensor) else torch.tensor(float(v)))

    def guard(self) -> None:
        """Raise :class:`NonFiniteLoss` if a ``loss/*`` statistic since the last check is NaN or infinite."""
        for k, values in self.stats.items():
            if not k.startswith("loss/"):
                continue
            new = values[self._guard_pos.get(k, 0) :]
            if new and not bool(torch.isfinite(_stacked(new)).all()):
                raise NonFiniteLoss(
                    f"non-finite {k} at iteration {self.iteration}; parameters not saved, last good "
                    f"checkpoint: {self.checkpoint_path}"
                )
        self._guard_pos = {k: len(v) for k, v in self.stats.items()}

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        assert self.logger is not None
        return self.logger.log(step, metrics)

    def flush_stats(self, step: int, extra: Mapping[str, Any]) -> dict[str, float]:
        """Log the means of the accumulated statistics (names without a section go under ``stats/``) and
        ``extra``; then start accumulating afresh."""
        metrics: dict[str, Any] = {
            (k if "/" in k else f"stats/{k}"): _stacked(vals).mean() for k, vals in self.stats.items() if vals
        }
        metrics.update(extra)
        self.stats.clear()
        self._guard_pos = {}
        return self.log(step, metrics)

    def headline(self) -> float | None:
        """The last evaluation's headline number (return or accuracy), for the progress bar."""
        return _headline(self.last_eval) if self.last_eval else None

    def evaluate(self, stage: Stage, step: int, final: bool) -> dict[str, Any]:
        res = stage.evaluate(self, final)
        numbers = {
            f"eval/{k}": v
            for k, v in res.items()
            if k not in NOT_LOGGED and isinstance(v, int | float) and not isinstance(v, bool)
        }
        if numbers:
            self.log(step, numbers)
        self.last_eval = res
        return res


class _NoLogger:
    """The logger of a run that writes nothing."""

    rows = 0

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


def _stacked(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """Scalar statistics as one float tensor (one host sync for all of them later)."""
    return torch.stack([v.detach().float().reshape(()) for v in values])


_RESERVED = ("counters", "lifecycle", "rng")
NOT_LOGGED = ("episodes", "prompts", "step")  # evaluation sizes, not results


class PartGroup:
    """Several stateful parts saved as one (``{name: part.state_dict()}``)."""

    def __init__(self, parts: Mapping[str, Any]):
        self.parts = dict(parts)

    def state_dict(self) -> dict[str, Any]:
        return {k: p.state_dict() for k, p in self.parts.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, p in self.parts.items():
            p.load_state_dict(state[k])


# ---- the loop -----------------------------------------------------------------------------------------
def _due(every: int, iteration: int) -> bool:
    return bool(every) and iteration % every == 0


def run_stage(run: Any, stage: Any, is_last_stage: bool) -> None:
    """One stage's iterations from where ``run`` stands: collect, update, guard, log, evaluate and checkpoint at
    the stage's cadences. ``run`` is a :class:`Run`, or anything with its stepping interface (a population of
    runs trained in lockstep, :mod:`policyopt.runs.population`)."""
    cad = stage.cadence
    with TrainProgress(stage.step(stage.iterations), stage.name, run.progress, start=stage.step(run.iteration)) as bar:
        while run.iteration < stage.iterations and not stage.done(run):
            run.iteration += 1
            it, last = run.iteration, run.iteration == stage.iterations
            run.accumulate(stage.update(run, stage.collect(run)))
            if _due(cad.guard, it) or _due(cad.log, it) or last:
                run.guard()
            step = stage.step(it)
            if _due(cad.log, it) or last:
                run.flush_stats(step, stage.log_metrics(run))
            if _due(cad.evaluate, it) and not (last and is_last_stage):
                run.evaluate(stage, step, final=False)
            if _due(cad.checkpoint, it) or last:
                _checkpoint(run, stage, more=not last)
            info = dict(stage.progress_info(run)) if hasattr(stage, "progress_info") else {}
            if run.headline() is not None:
                info["eval"] = run.headline()
            bar.update(step, **info)
    if run.iteration < stage.iterations:  # ended early (stage.done): mark the stage complete
        run.guard()
        run.iteration = stage.iterations
        _checkpoint(run, stage, more=False)


def _checkpoint(run: Run, stage: Stage, more: bool) -> None:
    stage.before_checkpoint(run)
    run.save()
    if more:
        stage.after_checkpoint(run)


def _headline(res: Mapping[str, Any]) -> float | None:
    for k in ("return_mean", "accuracy"):
        if isinstance(res.get(k), int | float):
            return float(res[k])
    return None


def run_stages(run: Run, stages: Sequence[Stage]) -> dict[str, Any]:
    """Run ``stages`` in order from where the run stands, then the final evaluation of the last one."""
    if not stages:
        raise ValueError("a run needs at least one stage")
    last = stages[-1]
    for index, stage in enumerate(stages):
        if index < run.stage_index:
            continue
        if index > run.stage_index:
            run.stage_index, run.iteration = index, 0
        if run.logger is None:
            run.open_logger(stage.step(run.iteration))
        stage.begin(run)
        if run.resume and index == len(stages) - 1 and run.iteration >= stage.iterations:
            rundir.check_budget_left(run.dir, stage.step(run.iteration))
        run_stage(run, stage, index == len(stages) - 1)
        stage.end(run)
    step = last.step(run.iteration)
    final = run.evaluate(last, step, final=True)
    assert run.logger is not None
    run.logger.close()
    result = last.result(run, final)
    if run.writer:
        atomic_write_text(run.dir / "eval.json", json.dumps({**final, "step": step}, indent=2))
    return result


# ---- families and the one entry point ------------------------------------------------------------------
@dataclass(frozen=True)
class Family:
    """A trainer family: its config class and its train/evaluate functions by import path; optionally a batched
    trainer of populations (see :mod:`policyopt.runs.members`)."""

    name: str
    config: type
    train: str  # "module:function": train(cfg, run_dir, resume=False) -> dict
    evaluate: str  # "module:function": evaluate(run_dir, episodes=None, video=False, deterministic=True) -> dict
    # "module:function": train_population(cfgs, run_dirs, resume=False) -> list[dict]; the same module defines
    # population_unsupported(cfgs) -> str | None and, optionally, PER_MEMBER_KEYS
    population: str | None = None
    data_parallel: bool = False  # trains data-parallel when launched by torchrun (WORLD_SIZE > 1)

    def load(self, which: str) -> Callable:
        entry = {"train": self.train, "evaluate": self.evaluate, "population": self.population}[which]
        if entry is None:
            raise ValueError(f"family {self.name!r} has no {which!r} entry")
        module, _, fn = entry.partition(":")
        return getattr(importlib.import_module(module), fn)


FAMILIES: Registry[Family] = Registry("trainer family")


def family_of(cfg_or_class: Any) -> Family:
    """The family whose config class is ``cfg``'s (or is the given class)."""
    cls = cfg_or_class if isinstance(cfg_or_class, type) else type(cfg_or_class)
    for _, fam in FAMILIES.items():
        if fam.config is cls:
            return fam
    raise UserError(
        f"{cls.__name__} is not the config of a trainer family; valid: "
        f"{', '.join(f.config.__name__ for _, f in FAMILIES.items())}"
    )


def check_launch(family: Family, population: bool = False) -> None:
    """Refuse a launch of ``WORLD_SIZE`` > 1 processes (torchrun) for a family that does not train data-parallel
    (each process would train the whole run into the same directory), or for a population."""
    size = os.environ.get("WORLD_SIZE", "1")
    if size.strip() != "1" and population:
        raise UserError(f"WORLD_SIZE={size}: a population (--seeds) does not train data-parallel; train its members")
    if size.strip() != "1" and not family.data_parallel:
        families = [n for n, f in FAMILIES.items() if f.data_parallel]
        raise UserError(
            f"WORLD_SIZE={size}: the {family.name!r} trainer family does not train data-parallel; "
            f"run it in one process (data-parallel families: {families})"
        )


def load_family(run_dir: str | Path) -> Family:
    """The family that trained a run, from its ``run.json`` (imports that family's module only)."""
    info = rundir.read_info(run_dir)
    module = info.get("module")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise UserError(f"run {str(run_dir)!r} needs {module!r}, which cannot be imported: {e}") from None
    name = info.get("family")
    if name not in FAMILIES:
        raise UserError(
            f"run {str(run_dir)!r} has an unknown trainer family {name!r} in run.json; valid: "
            f"{', '.join(FAMILIES.names())}"
        )
    return FAMILIES.get(name)


def load_config(run_dir: str | Path, config_class: type | None = None):
    """The resolved config saved in a run directory."""
    from policyopt.config import resolve

    cls = config_class or load_family(run_dir).config
    return resolve(cls(), rundir.read_config(run_dir))


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an interrupt so the run records ``interrupted`` and stops cleanly."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated()


_FROM_CONFIG = object()


def execute(
    family: Family,
    cfg: Any,
    run_dir: str | Path,
    resume: bool,
    build: Callable[[Run], Sequence[Stage]],
    *,
    seed: int | None = None,
    tensorboard: bool | None = None,
    progress: Any = _FROM_CONFIG,
    info: Mapping[str, Any] | None = None,
    writer: bool = True,
) -> dict[str, Any]:
    """Prepare (or reopen) ``run_dir``, build the stages, restore state on resume, run, record the status.

    A fresh run writes ``config.yaml`` and ``run.json`` first, so every run directory, however it was
    started (CLI, bench, Python), can be evaluated and resumed. ``resume`` of a run that died before its
    first checkpoint starts it afresh with its saved config. ``seed``, ``tensorboard`` and ``progress``
    default to the config's fields of those names, and the config's ``threads`` (if any) sets torch's. A process
    with ``writer`` False (a data-parallel rank other than 0) runs the same loop, resumes from the same
    checkpoint and writes nothing."""
    seed, tensorboard, progress = run_settings(cfg, seed, tensorboard, progress)
    progress = progress if writer else False
    run_dir = Path(run_dir)
    resume, fresh_dir = open_run_dir(family, cfg, run_dir, resume, info, writer=writer)
    run: Run | None = None
    try:
        with sigterm_interrupts():
            run = Run(run_dir, cfg, resume=resume, seed=seed, tensorboard=tensorboard, progress=progress, writer=writer)
            stages = build(run)
            if resume:
                run.restore()
            result = run_stages(run, stages)
    except BaseException as e:
        if writer:
            record_failure(run_dir, e, remove=fresh_dir and not resume, logger=run.logger if run else None)
        raise
    if writer:
        rundir.write_info(run_dir, status="finished")
    return result


def run_settings(cfg: Any, seed: int | None, tensorboard: bool | None, progress: Any) -> tuple[int, bool, Any]:
    """``seed``, ``tensorboard`` and ``progress`` defaulting to the config's fields of those names; sets torch's
    threads from the config's ``threads`` (if any)."""
    seed = int(cfg.seed) if seed is None else seed
    tensorboard = bool(getattr(cfg, "tensorboard", True)) if tensorboard is None else tensorboard
    progress = getattr(cfg, "progress", None) if progress is _FROM_CONFIG else progress
    if getattr(cfg, "threads", None):
        torch.set_num_threads(int(cfg.threads))
    return seed, tensorboard, progress


def open_run_dir(
    family: Family, cfg: Any, run_dir: Path, resume: bool, info: Mapping[str, Any] | None, *, writer: bool = True
) -> tuple[bool, bool]:
    """Create a fresh run directory (or reopen one to resume: stale temporaries removed, a run that died before
    its first checkpoint cleared), write ``config.yaml`` and ``run.json`` (status ``running``). Returns
    ``(resume, fresh_dir)``: whether there is a checkpoint to resume from, and whether the folder held nothing.
    A process that is not the ``writer`` only reads."""
    fresh_dir = not run_dir.exists() or not any(run_dir.iterdir())
    if resume:
        rundir.read_info(run_dir)
        resume = rundir.checkpoint_path(run_dir).exists()
        if writer:
            remove_stale_temporaries(run_dir)
        if writer and not resume:
            _clear_partial(run_dir)
    elif writer:
        rundir.prepare_new(run_dir)
    if writer:
        rundir.write_config(run_dir, cfg)
        rundir.write_info(
            run_dir, family=family.name, module=type(cfg).__module__, status="running", error=None, **dict(info or {})
        )
    return resume, fresh_dir


class sigterm_interrupts:  # noqa: N801 - used as a context manager
    """Within the block SIGTERM raises :class:`KeyboardInterrupt` (the run records ``interrupted``); the previous
    handler is restored after. Outside the main thread SIGTERM is left alone."""

    def __enter__(self):
        self.old = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
            self.installed = True
        except ValueError:
            self.installed = False
        return self

    def __exit__(self, *exc):
        if self.installed:
            signal.signal(signal.SIGTERM, self.old)
        return False


def record_failure(run_dir: Path, e: BaseException, *, remove: bool, logger: MetricLogger | None = None) -> None:
    """Record why a run stopped in its ``run.json``: ``interrupted`` (Ctrl-C, SIGTERM), ``failed`` with the
    error's first line, or, for bad input found while building (an environment that cannot be made, a model
    that cannot be loaded), remove a fresh run directory that holds nothing yet (``remove`` and no checkpoint)
    so the same ``--out`` can be reused."""
    if isinstance(e, KeyboardInterrupt):
        rundir.write_info(run_dir, status="interrupted")
    elif isinstance(e, UserError):
        if remove and not rundir.checkpoint_path(run_dir).exists():
            if logger is not None:
                logger.close()
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            rundir.write_info(run_dir, status="failed", error="bad input")
    else:
        rundir.write_info(run_dir, status="failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)


def _clear_partial(run_dir: Path) -> None:
    """Remove what a run that died before its first checkpoint wrote (metrics, events, samples)."""
    for name in ("metrics.csv", "samples.jsonl", "eval.json"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)
