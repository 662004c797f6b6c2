"""Executors: run bench cells in a local process pool (default) or on Ray.

Both call the same :func:`run_cell` on a plain-dict job and return its plain-dict outcome, so a spec gives
the same results table on either (training is seeded and deterministic on the CPU; only timings differ).

A cell trains only while it holds its lock (:func:`cell_lock_path`), so no two processes ever write one run
directory, whichever executor or invocation started them. Pool workers die with the bench process that
started them (:func:`die_with_parent`), so killing a bench never leaves cells training on their own.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from policyopt.errors import UserError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class FileLock:
    """An exclusive, non-blocking advisory lock on ``path``: ``fcntl.flock`` (``msvcrt.locking`` on Windows).

    The lock belongs to an open descriptor, so the operating system drops it when the holder exits, however it
    exits: a lock file left behind by a dead process never blocks anyone. The holder writes its pid and host
    into the file for other processes' error messages. The file itself is never removed (removing a lock
    file that another process has open would let two processes hold "the" lock)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if it is free; False if another process (or descriptor) holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {platform.node() or '?'}\n".encode())
        except OSError:  # the note is for messages only
            pass
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the lock

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (empty when unknown)."""
        try:
            return self.path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _lock_fd(fd: int) -> None:
    """Lock ``fd`` exclusively without waiting; OSError when it is held elsewhere."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def cell_lock_path(run_dir: str | Path) -> Path:
    """``RUNS/.CELL.lock``, next to the run directory ``RUNS/CELL`` (a run directory may be deleted and
    recreated while its lock is held)."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


def run_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Train one cell into its run directory, holding the cell's lock; resume it from its checkpoint when one
    exists.

    Never raises for a training failure: the error goes into ``run.json`` (status "failed") and the
    returned outcome, so the other cells keep running. A cell whose lock another process holds is not
    touched: its outcome is "skipped", with an error naming the holder."""
    run_dir = Path(job["run_dir"])
    out = {"algo": job["algo"], "target": job["target"], "seed": job["seed"], "run_dir": str(run_dir)}
    lock = FileLock(cell_lock_path(run_dir))
    if not lock.acquire():
        holder = lock.holder()
        return {
            **out,
            "status": "skipped",
            "seconds": 0.0,
            "error": f"cell is locked by another process{f' ({holder})' if holder else ''}; not run twice",
        }
    try:
        return _train_cell(job, run_dir, out)
    finally:
        lock.release()


def _train_cell(job: dict[str, Any], run_dir: Path, out: dict[str, Any]) -> dict[str, Any]:
    from policyopt import algos, api
    from policyopt.config import resolve
    from policyopt.runs import rundir

    t0 = time.time()
    bench = {"bench": {"target": job["target"], "seed": job["seed"], "digest": job["digest"]}}
    try:
        algo = algos.get(job["algo"])
        resume = rundir.checkpoint_path(run_dir).exists() and (run_dir / "run.json").exists()
        if resume:
            api.resume(run_dir, progress=False)
        else:
            if run_dir.exists():  # started but died before its first checkpoint: start over
                shutil.rmtree(run_dir)
            cfg = resolve(algo.config(), job["config"])
            api.train(cfg, run_dir, algo=job["algo"], **bench)
        out.update(status="finished", resumed=resume)
    except Exception as e:
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        try:  # also for a cell that failed before its run directory existed (a config the trainer refused)
            run_dir.mkdir(parents=True, exist_ok=True)
            rundir.write_info(run_dir, algo=job["algo"], status="failed", error=msg, **bench)
        except Exception:  # noqa: BLE001 - reporting the original error matters more
            pass
        out.update(status="failed", error=msg, traceback=traceback.format_exc(limit=8))
    out["seconds"] = round(time.time() - t0, 2)
    return out


def die_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """Make this process exit as soon as ``parent_pid`` (the process that started it) dies, however it dies.

    On Linux the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``; strictly, on the
    death of the parent *thread* that started this process, which is the bench's main thread). Everywhere
    else a daemon thread checks every ``poll_seconds`` whether this process was re-parented (its parent pid
    changed) and then exits at once. A parent already gone when this runs ends the process right away."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no usable libc: the watchdog below still applies
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent_pid:
                os._exit(1)  # a hard exit, as SIGKILL: the cell's last checkpoint is what a re-run resumes

    threading.Thread(target=watch, name="policyopt-parent-watch", daemon=True).start()


def _worker_init(parent_pid: int) -> None:
    # One process per core: keep each trainer single-threaded (the configs default to threads=1 too).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    die_with_parent(parent_pid)


def run_local(jobs: list[dict], workers: int) -> Iterator[dict]:
    """A process pool (spawned, so no torch state is forked); yields outcomes as cells finish."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    if not jobs:
        return
    ctx = mp.get_context("spawn")
    # Workers are started from this (the calling) thread, which their parent-death signal is tied to.
    pool = ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(jobs))),
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(os.getpid(),),
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
    filesystem every node sees (with working ``flock``, for the cell locks), and every node needs policyopt
    installed. A cell whose lock is held elsewhere comes back "skipped", as in the process pool."""
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
