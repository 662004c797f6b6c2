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
    bench = _bench_info(job)
    try:
        algo = algos.get(_preset(job))
        resume = rundir.checkpoint_path(run_dir).exists() and (run_dir / "run.json").exists()
        if resume:
            api.resume(run_dir, progress=False)
        else:
            if run_dir.exists():  # started but died before its first checkpoint: start over
                shutil.rmtree(run_dir)
            cfg = resolve(algo.config(), job["config"])
            api.train(cfg, run_dir, algo=_preset(job), **bench)
        out.update(status="finished", resumed=resume)
    except Exception as e:
        msg = _message(e)
        _record_failure(run_dir, {"algo": _preset(job), **bench}, msg)
        out.update(status="failed", error=msg, traceback=traceback.format_exc(limit=8))
    out["seconds"] = round(time.time() - t0, 2)
    return out


def job_members(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The cell jobs of a job: a population job's members, else the job itself."""
    return list(job.get("members") or [job])


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Run a cell job (:func:`run_cell`) or a population job (:func:`run_population`): one outcome per cell."""
    return run_population(job) if "members" in job else [run_cell(job)]


def failed_outcomes(job: dict[str, Any], error: str) -> list[dict[str, Any]]:
    """Every cell of ``job`` failed with ``error`` (a worker that died, a lost Ray task)."""
    keys = ("algo", "target", "seed", "run_dir")
    return [{**{k: m[k] for k in keys}, "status": "failed", "seconds": 0.0, "error": error} for m in job_members(job)]


def run_population(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Train a population job's cells together, holding every member's cell lock (all or none: when another
    process holds one, no member is touched and each outcome is "skipped").

    Members that were started before (each has a checkpoint) resume together, and members that were not start
    together; a population of both (one stopped between its members' first checkpoints) continues member by
    member through :func:`run_cell`'s path. Never raises for a training failure (see :func:`run_cell`)."""
    cells = job_members(job)
    dirs = [Path(m["run_dir"]) for m in cells]
    outs = [
        {"algo": m["algo"], "target": m["target"], "seed": m["seed"], "run_dir": str(d)} for m, d in zip(cells, dirs)
    ]
    held: list[FileLock] = []
    for d in dirs:
        lock = FileLock(cell_lock_path(d))
        if not lock.acquire():
            holder = lock.holder()
            for other in held:
                other.release()
            error = f"a member's cell is locked by another process{f' ({holder})' if holder else ''}; not run twice"
            return [{**o, "status": "skipped", "seconds": 0.0, "error": error} for o in outs]
        held.append(lock)
    try:
        return _train_population(job, cells, dirs, outs)
    finally:
        for lock in held:
            lock.release()


def _train_population(job: dict, cells: list[dict], dirs: list[Path], outs: list[dict]) -> list[dict[str, Any]]:
    from policyopt import algos
    from policyopt.config import resolve
    from policyopt.runs import members, rundir
    from policyopt.runs.lifecycle import family_of

    started = [rundir.checkpoint_path(d).exists() and (d / "run.json").exists() for d in dirs]
    if any(started) and not all(started):
        return [_train_cell(m, d, o) for m, d, o in zip(cells, dirs, outs)]
    t0 = time.time()
    infos = [{"algo": _preset(m), **_bench_info(m)} for m in cells]
    error = trace = ""
    try:
        for d in dirs:
            if d.exists() and not any(started):  # started but died before the first checkpoint: start over
                shutil.rmtree(d)
        cfgs = [resolve(algos.get(_preset(m)).config(), m["config"]) for m in cells]
        batched = members.load_batched(job["population"])
        members.run_members(family_of(cfgs[0]), cfgs, dirs, resume=all(started), batched=batched, infos=infos)
    except Exception as e:
        error, trace = _message(e), traceback.format_exc(limit=8)
    seconds = round((time.time() - t0) / len(cells), 2)  # each member's share of the population's time
    for d, o, info in zip(dirs, outs, infos):
        o.update(resumed=all(started), seconds=seconds, population=len(cells))
        if (d / "eval.json").exists() and rundir.read_info(d).get("status") == "finished":
            o.update(status="finished")
            continue
        msg = error or "the batched trainer returned without this member's final evaluation"
        _record_failure(d, info, msg)
        o.update(status="failed", error=msg, traceback=trace)
    return outs


def _preset(job: dict[str, Any]) -> str:
    """The registered preset of a cell job (its ``algo`` is a grid variant's label when the spec has a grid)."""
    return job.get("preset") or job["algo"]


def _bench_info(job: dict[str, Any]) -> dict[str, Any]:
    info = {"target": job["target"], "seed": job["seed"], "digest": job["digest"]}
    return {"bench": {**info, "entry": job["algo"]} if job["algo"] != _preset(job) else info}


def _message(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def _record_failure(run_dir: Path, info: dict[str, Any], msg: str) -> None:
    """``run.json`` says the cell failed, also for a cell that failed before its run directory existed."""
    from policyopt.runs import rundir

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_info(run_dir, **info, status="failed", error=msg)
    except Exception:  # noqa: BLE001 - reporting the original error matters more
        pass


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
        futures = {pool.submit(run_job, j): j for j in jobs}
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                yield from fut.result()
            except BrokenProcessPool as e:  # a worker died (killed, segfault): report the cells, go on
                yield from failed_outcomes(job, f"worker process died: {e}")
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
        remote = ray.remote(num_cpus=1, max_retries=0)(run_job)  # a population job is one task
        pending = {remote.remote(j): j for j in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield from ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost worker/node: report the cells, go on
                    yield from failed_outcomes(job, f"ray task failed: {type(e).__name__}: {str(e).splitlines()[0]}")
    finally:
        if started:
            ray.shutdown()


def executor(ray_address: str | None, use_ray: bool, workers: int) -> Callable[[list[dict]], Iterable[dict]]:
    if use_ray:
        return lambda jobs: run_ray(jobs, workers, ray_address)
    return lambda jobs: run_local(jobs, workers)
