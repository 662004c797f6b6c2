"""Executors: run bench cells in a local process pool (default) or on Ray.

Both call the same :func:`run_cell` on a plain-dict job and return its plain-dict outcome, so a spec gives
the same results table on either (training is seeded and deterministic on the CPU; only timings differ).
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from policyopt.errors import UserError


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Train one cell into its run directory; resume it from its checkpoint when one exists.

    Never raises for a training failure: the error goes into ``run.json`` (status "failed") and the
    returned outcome, so the other cells keep running."""
    from policyopt import algos, api
    from policyopt.config import resolve
    from policyopt.runs import rundir

    run_dir = Path(job["run_dir"])
    t0 = time.time()
    out = {"algo": job["algo"], "target": job["target"], "seed": job["seed"], "run_dir": str(run_dir)}
    try:
        algo = algos.get(job["algo"])
        bench = {"bench": {"target": job["target"], "seed": job["seed"], "digest": job["digest"]}}
        resume = rundir.checkpoint_path(run_dir).exists() and (run_dir / "run.json").exists()
        if resume:
            api.resume(run_dir, progress=False)
        else:
            if run_dir.exists():  # started but died before its first checkpoint: start over
                shutil.rmtree(run_dir)
            cfg = resolve(algo.config(), job["config"])
            algo.load("train")(cfg, run_dir, resume=False, algo=job["algo"], **bench)
        out.update(status="finished", resumed=resume)
    except Exception as e:
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        try:
            if run_dir.exists():
                from policyopt.runs import rundir as rd

                rd.write_info(run_dir, algo=job["algo"], status="failed", error=msg)
        except Exception:  # noqa: BLE001 - reporting the original error matters more
            pass
        out.update(status="failed", error=msg, traceback=traceback.format_exc(limit=8))
    out["seconds"] = round(time.time() - t0, 2)
    return out


def _worker_init() -> None:
    # One process per core: keep each trainer single-threaded (the configs default to threads=1 too).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_local(jobs: list[dict], workers: int) -> Iterator[dict]:
    """A process pool (spawned, so no torch state is forked); yields outcomes as cells finish."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    if not jobs:
        return
    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(jobs))), mp_context=ctx, initializer=_worker_init
    )
    try:
        futures = {pool.submit(run_cell, j): j for j in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                yield fut.result()
            except BrokenProcessPool as e:  # a worker died (killed, segfault): report the cell, go on
                yield {
                    "algo": job["algo"],
                    "target": job["target"],
                    "seed": job["seed"],
                    "run_dir": job["run_dir"],
                    "status": "failed",
                    "seconds": 0.0,
                    "error": f"worker process died: {e}",
                }
    except BaseException:  # Ctrl-C: start no queued cell; running ones stop at their own KeyboardInterrupt
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_ray(jobs: list[dict], workers: int, address: str | None) -> Iterator[dict]:
    """Ray tasks, one CPU each. ``address=None`` starts a local Ray with ``workers`` CPUs; otherwise connects
    to an existing cluster (``auto`` or ``ray://host:10001``); the bench directory must then be on a
    filesystem
    every node sees, and every node needs policyopt installed."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'policyopt[ray]'") from None
    if not jobs:
        return
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            ray.init(address=address, **kw)
        else:
            ray.init(num_cpus=max(1, workers), runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}}, **kw)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(run_cell)
        pending = {remote.remote(j): j for j in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost worker/node: report the cell, go on
                    yield {
                        "algo": job["algo"],
                        "target": job["target"],
                        "seed": job["seed"],
                        "run_dir": job["run_dir"],
                        "status": "failed",
                        "seconds": 0.0,
                        "error": f"ray task failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                    }
    finally:
        if started:
            ray.shutdown()


def executor(ray_address: str | None, use_ray: bool, workers: int) -> Callable[[list[dict]], Iterable[dict]]:
    if use_ray:
        return lambda jobs: run_ray(jobs, workers, ray_address)
    return lambda jobs: run_local(jobs, workers)
