"""Where the RL stage's batches come from: generated in the learner, or by generation workers on Ray.

Batch ``i`` (the batch RL step ``i + 1`` trains on) is a function of ``(seed, i, the policy weights)`` only:
its prompts come from a NumPy generator and its sampling noise from a torch generator, both seeded from the
run's named streams ``prompts`` / ``sampling`` keyed by ``i`` (:func:`batch_streams`), never from a
process's running state. So any process holding the same weights generates the same batch.

- :class:`SyncSource` (``async_workers: 0``) generates batch ``i`` in the learner with the current weights.
- :class:`AsyncSource` (``async_workers: N``) has ``N`` :class:`GenerationWorker` Ray actors generate ahead
  of the learner. Batch ``i`` is generated with the weights of *version* (RL steps done) ``max(0, i - s)``,
  ``s = max_staleness``: exactly that version, not the newest one a worker happens to have, so the run is a
  deterministic function of the seed whatever the timing and the number of workers (``s = 0`` reproduces
  the synchronous run). Admission control: batch ``i`` is sent to a worker only once version ``i - s``
  exists, so no batch is ever older than ``s`` versions when it is consumed, and none is dropped. Weights
  are ``ray.put`` once per version; a worker loads a state dict only when the version changes. The learner
  consumes batches in index order. A worker that dies is replaced and its outstanding batches are
  regenerated (same indices, same versions: the same contents).

Checkpoints record the learner's version and the next batch index (counters ``async_version``,
``next_batch``) and, for ``s > 0``, the weights of the ``s`` versions before the learner's (part
``generation_weights``): queued and in-flight batches are not saved but regenerated on resume from
``(seed, index, version)`` with the weights they were generated with, so a resumed run equals the
uninterrupted one. See ``docs/scaling.md``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from policyopt.errors import UserError
from policyopt.lm import trainer as T
from policyopt.lm.selection import LMBatch, SelectionContext
from policyopt.runs.lifecycle import Run, SeedStreams

MAX_RESTARTS_IN_A_ROW = 5  # worker replacements without a batch delivered in between before the run fails


def batch_streams(seeds: SeedStreams, index: int) -> tuple[np.random.Generator, int]:
    """``(prompt generator, torch sampling seed)`` of batch ``index``: ``SeedSequence([seed(name), index])``
    for the streams ``prompts`` and ``sampling``."""
    prompts = np.random.default_rng(np.random.SeedSequence([seeds.seed("prompts"), index]))
    sampling = np.random.SeedSequence([seeds.seed("sampling"), index]).generate_state(1, np.uint64)[0]
    return prompts, int(sampling >> np.uint64(1))


def collect_batch(parts: T.LMParts, seeds: SeedStreams, index: int) -> tuple[SelectionContext, LMBatch, float]:
    """Generate, score and select batch ``index`` (RL step ``index + 1``) with ``parts.model``; the global torch
    generator is left as it was. Returns ``(context, batch, seconds)``."""
    prompts, sampling = batch_streams(seeds, index)
    ctx = SelectionContext(parts.cfg, index + 1, tracker=parts.tracker, score=parts.score)
    dev = torch.device(getattr(parts, "device", "cpu"))
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    t0 = time.time()
    with torch.random.fork_rng(devices=cuda):  # the CPU generator and the model's GPU's, restored afterwards
        torch.default_generator.manual_seed(sampling)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(sampling)
        batch = T.collect(parts, prompts, ctx)
    return ctx, batch, time.time() - t0


class BatchSource(Protocol):
    """What the RL stage gets its batches from."""

    def next(self, run: Run) -> tuple[SelectionContext, LMBatch, float]:
        """Batch ``run.iteration - 1``: ``(context, batch, generation seconds)``."""

    def updated(self, run: Run) -> None:
        """The learner finished the update of ``run.iteration``."""

    def close(self) -> None: ...


class SyncSource:
    """Batch ``i`` generated in the learner, with the current weights."""

    def __init__(self, parts: T.LMParts):
        self.parts = parts

    def next(self, run: Run) -> tuple[SelectionContext, LMBatch, float]:
        return collect_batch(self.parts, run.seeds, run.iteration - 1)

    def updated(self, run: Run) -> None:
        pass

    def close(self) -> None:
        pass


def batch_source(parts: T.LMParts, run: Run) -> BatchSource:
    return AsyncSource(parts, run) if parts.cfg.async_workers else SyncSource(parts)


def version_for(index: int, max_staleness: int) -> int:
    """The policy version (RL steps done) batch ``index`` is generated with: ``max(0, index - s)``."""
    return max(0, index - max_staleness)


class WeightHistory:
    """The policy weights of the versions queued batches are generated with: ``versions[v]`` is a CPU copy of
    the state dict after ``v`` RL steps. Checkpointed without the current version (that is the model)."""

    def __init__(self) -> None:
        self.versions: dict[int, dict[str, torch.Tensor]] = {}
        self.current = -1

    def add(self, version: int, state: dict[str, torch.Tensor], keep_from: int) -> None:
        self.versions[version], self.current = state, version
        for v in [v for v in self.versions if v < keep_from]:
            del self.versions[v]

    def state_dict(self) -> dict[str, Any]:
        return {"versions": {v: s for v, s in self.versions.items() if v != self.current}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.versions = {int(v): s for v, s in state["versions"].items()}


def _weights(model) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's state dict (what workers load, whatever their device)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def exit_when_gone(pid: int, poll_seconds: float = 0.5) -> None:
    """End this process once process ``pid`` (the learner, on this host) no longer exists."""

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # exists, owned by someone else: not ours to watch
                return

    threading.Thread(target=watch, name="policyopt-learner-watch", daemon=True).start()


class GenerationWorker:
    """A Ray actor holding its own copy of the model: generates batch ``index`` with the weights of
    ``version`` (loaded when they differ from the ones it holds) and returns it with its tags."""

    def __init__(self, cfg, learner_pid: int | None):
        if learner_pid is not None:
            exit_when_gone(learner_pid)
        torch.set_num_threads(int(cfg.threads))
        self.parts = T.build_parts(cfg)
        self.seeds = SeedStreams(cfg.seed)
        self.version: int | None = None

    def info(self) -> dict[str, Any]:
        import policyopt

        return {"pid": os.getpid(), "policyopt": policyopt.__file__}

    def generate(self, index: int, version: int, weights: list) -> dict[str, Any]:
        """``weights``: ``[ObjectRef]`` of the state dict of ``version`` (fetched only when needed)."""
        if version != self.version:
            import ray

            self.parts.model.load_state_dict(ray.get(weights[0]))
            self.version = version
        ctx, batch, seconds = collect_batch(self.parts, self.seeds, index)
        return {"index": index, "version": version, "batch": pack(batch), "metrics": ctx.metrics, "seconds": seconds}


def pack(batch: LMBatch) -> dict[str, Any]:
    """``batch`` for the trip from a worker to the learner: the per-completion sampler log-prob tensors joined
    into one (serializing hundreds of small tensors one by one costs tens of milliseconds per batch, as much as
    generating it)."""
    ro = batch.rollout
    return {
        "batch": dataclasses.replace(batch, rollout=dataclasses.replace(ro, sampler_logp=[])),
        "sampler_logp": torch.cat(ro.sampler_logp) if ro.sampler_logp else torch.zeros(0),
        "lengths": [len(lp) for lp in ro.sampler_logp],
    }


def unpack(packed: dict[str, Any]) -> LMBatch:
    """The batch :func:`pack` took apart (the same values)."""
    batch = packed["batch"]
    logp = list(torch.split(packed["sampler_logp"], packed["lengths"])) if packed["lengths"] else []
    return dataclasses.replace(batch, rollout=dataclasses.replace(batch.rollout, sampler_logp=logp))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("config key 'async_workers' needs Ray: pip install 'policyopt[ray]'") from None
    return ray


def _connect(cfg) -> bool:
    """Connect to ``cfg.ray_address``, or start a local Ray, unless Ray is already initialized; True if this
    call started or connected it (so the run shuts it down)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if cfg.ray_address:
        try:
            ray.init(address=cfg.ray_address, **kw)
        except ConnectionError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UserError(
                f"config key 'ray_address'={cfg.ray_address!r}: cannot connect to a Ray cluster there ({msg}); "
                "give the head's HOST:PORT, 'auto' on a node of the cluster, or None for a local Ray"
            ) from None
    else:
        ray.init(num_cpus=cfg.async_workers * cfg.threads, **kw)
    return True


def worker_env(threads: int) -> dict[str, str]:
    """Environment of a worker: this policyopt first on ``PYTHONPATH`` (a worker imports the learner's tree; a
    path missing on a cluster node is skipped by Python, which then imports the node's installed copy)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}


class AsyncSource:
    """Batches generated ahead of the learner by ``async_workers`` :class:`GenerationWorker` actors (see the
    module docstring for the version schedule, admission control, resume and fault handling)."""

    def __init__(self, parts: T.LMParts, run: Run):
        self.parts, self.cfg = parts, parts.cfg
        self.staleness = self.cfg.max_staleness
        self.history = WeightHistory()
        if self.staleness:
            run.track("generation_weights", self.history)
        self.workers: list[Any] = []
        self.pending: dict[int, tuple[int, Any]] = {}  # batch index -> (worker slot, result ref)
        self.refs: dict[int, Any] = {}  # version -> ObjectRef of its weights
        self.version = self.next_dispatch = 0
        self.restarts = self.failures_in_a_row = 0
        if self.cfg.async_workers > self.staleness + 1:
            warnings.warn(
                f"async_workers={self.cfg.async_workers} but at most max_staleness + 1 = {self.staleness + 1} "
                "batches can be generated at once; the other workers will idle",
                stacklevel=2,
            )
        self.owns_ray = _connect(self.cfg)
        # started now, so their start-up (imports, building the model) overlaps the learner's warm-start
        self.workers = [self._spawn() for _ in range(self.cfg.async_workers)]
        self.started = False
        run.counters.setdefault("staleness_max", 0)

    # -- workers --
    def _start(self, run: Run) -> None:
        ray = _import_ray()
        self.started = True
        self.version = self.next_dispatch = run.iteration - 1  # the learner's version = the next batch's index
        self.history.add(self.version, _weights(self.parts.model), self.version - self.staleness)
        self.refs = {v: ray.put(s) for v, s in self.history.versions.items()}

    def _spawn(self):
        ray = _import_ray()
        local = not self.cfg.ray_address
        actor = ray.remote(GenerationWorker).options(
            num_cpus=self.cfg.threads, max_restarts=0, runtime_env={"env_vars": worker_env(self.cfg.threads)}
        )
        return actor.remote(self.cfg, os.getpid() if local else None)

    def _submit(self, index: int, slot: int) -> None:
        v = version_for(index, self.staleness)
        if v not in self.refs:  # resumed from a checkpoint without that version (e.g. a synchronous run's)
            v = min(self.refs)
        ref = self.workers[slot].generate.remote(index, v, [self.refs[v]])
        self.pending[index] = (slot, ref)

    def _dispatch(self, upto: int) -> None:
        """Send every admissible batch up to ``upto`` to the least loaded worker (admissible: its version
        exists, i.e. ``index - s <= learner version``)."""
        while self.next_dispatch <= upto and version_for(self.next_dispatch, self.staleness) <= self.version:
            load = [0] * len(self.workers)
            for slot, _ in self.pending.values():
                load[slot] += 1
            self._submit(self.next_dispatch, load.index(min(load)))
            self.next_dispatch += 1

    def _replace(self, slot: int, error: Exception) -> None:
        """Replace the dead worker ``slot`` and send it that worker's outstanding batches again."""
        ray = _import_ray()
        self.restarts += 1
        self.failures_in_a_row += 1
        if self.failures_in_a_row > MAX_RESTARTS_IN_A_ROW:
            raise RuntimeError(f"generation workers died {self.failures_in_a_row} times in a row: {error}") from error
        try:
            ray.kill(self.workers[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        print(f"generation worker {slot} died ({type(error).__name__}); restarting it", file=sys.stderr, flush=True)
        self.workers[slot] = self._spawn()
        for index in sorted(i for i, (s, _) in self.pending.items() if s == slot):
            self._submit(index, slot)

    def _wait(self, index: int) -> dict[str, Any]:
        ray = _import_ray()
        while True:
            slot, ref = self.pending[index]
            try:
                out = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                self._replace(slot, e)
                continue
            del self.pending[index]
            self.failures_in_a_row = 0
            if out["index"] != index:  # the learner consumes batches in index order, each once
                raise RuntimeError(f"expected batch {index}, got batch {out['index']}")
            return out

    # -- the source --
    def next(self, run: Run) -> tuple[SelectionContext, LMBatch, float]:
        if not self.started:
            self._start(run)
        index = run.iteration - 1
        if index != self.version:
            raise RuntimeError(f"learner version {self.version} asked for batch {index}")
        self._dispatch(min(index + self.staleness, self.cfg.total_steps - 1))
        t0 = time.time()
        out = self._wait(index)
        staleness = self.version - out["version"]
        run.counters["staleness_max"] = max(int(run.counters["staleness_max"]), staleness)
        ctx = SelectionContext(self.cfg, index + 1, tracker=None, score=self.parts.score)
        ctx.metrics.update(out["metrics"])
        ctx.metrics.update(
            {
                "stats/staleness": float(staleness),
                "stats/staleness_max": float(run.counters["staleness_max"]),
                "async/batch": float(index),
                "async/restarts": float(self.restarts),
                "perf/learner_wait_s": time.time() - t0,
            }
        )
        return ctx, unpack(out["batch"]), out["seconds"]

    def updated(self, run: Run) -> None:
        ray = _import_ray()
        self.version += 1
        keep_from = self.version - self.staleness
        state = _weights(self.parts.model)
        self.history.add(self.version, state, keep_from)
        self.refs[self.version] = ray.put(state)  # once per version; every worker reads this copy
        self.refs = {v: r for v, r in self.refs.items() if v >= keep_from}
        run.counters.update(async_version=self.version, next_batch=self.version)

    def close(self) -> None:
        if not self.workers and not self.owns_ray:
            return
        ray = _import_ray()
        for w in self.workers:
            try:
                ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.workers, self.pending, self.refs = [], {}, {}
        if self.owns_ray:
            self.owns_ray = False
            ray.shutdown()
