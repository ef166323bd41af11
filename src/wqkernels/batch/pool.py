"""Running a batch's jobs: our own process pool (a worker that dies costs only its file), or
someone else's executor; stopping both cleanly on Ctrl-C or SIGTERM."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool

from ..files import Recipe
from ..files.atomic import STOP_SIGNALS
from .plan import Job
from .worker import describe_failure, init_worker, rewrite_job

__all__ = ["run_pool", "run_executor", "available_cores"]

#: how long stopped workers may take to exit before they are killed
STOP_SECONDS = 10.0
DIED = "the worker process died while rewriting this file (killed, or out of memory)"


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def run_pool(jobs: list[Job], recipe: Recipe, workers: int, done, histograms: bool = False) -> None:
    """Our own process pool, at most `workers` files in flight.

    A worker that dies (killed, out of memory) breaks a ProcessPoolExecutor and every file in
    flight with it: those files are retried one at a time in a fresh pool, so only the file that
    kills its worker again is reported failed.
    """
    workers = min(workers, len(jobs)) or 1
    threads = max(1, available_cores() // workers)
    queue, suspects = deque(jobs), deque()
    while queue or suspects:
        isolate = bool(suspects)
        source, limit = (suspects, 1) if isolate else (queue, workers)
        pool = ProcessPoolExecutor(max_workers=limit, mp_context=_context(), initializer=init_worker,
                                   initargs=(threads,))
        inflight: dict = {}
        try:
            broken = False
            while inflight or (source and not broken):
                while source and not broken and len(inflight) < limit:
                    job = source.popleft()
                    try:
                        with _main_not_imported():  # (our pool's workers start as jobs are submitted)
                            fut = _submit(pool, job, recipe, done, histograms)
                    except BrokenProcessPool:
                        source.appendleft(job)
                        broken = True
                    else:
                        if fut is not None:
                            inflight[fut] = job
                if not inflight:
                    break
                finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job = inflight.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if isolate:
                            done(job, ("failed", f"{job.source}: {DIED}"))
                        else:
                            suspects.append(job)
                    except Exception as exc:  # the result did not come back (cannot happen normally)
                        done(job, ("failed", describe_failure(exc, job.source)))
                    else:
                        done(job, outcome)
        except BaseException:
            _stop_pool(pool, inflight, done)
            raise
        if broken:  # the pool joins its workers while it breaks down: one blocked on the queues a
            _kill_workers(pool)  # dead worker left behind would keep shutdown waiting for ever
        pool.shutdown(wait=True)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL every worker process of `pool` still running (its files are retried)."""
    for p in _workers(pool):
        with contextlib.suppress(Exception):
            p.kill()


def _workers(pool: ProcessPoolExecutor) -> list:
    """The worker processes of `pool` (a private attribute of CPython's executor; none once gone)."""
    return list((getattr(pool, "_processes", None) or {}).values())


def run_executor(jobs: list[Job], recipe: Recipe, executor: Executor, done, histograms: bool = False) -> None:
    """Someone else's executor: everything submitted at once, cancelled on interruption."""
    futures: dict = {}
    try:
        for job in jobs:
            fut = _submit(executor, job, recipe, done, histograms)
            if fut is not None:
                futures[fut] = job
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as exc:  # the executor's own failure (lost worker, ...)
                outcome = ("failed", describe_failure(exc, futures[fut].source))
            done(futures[fut], outcome)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _submit(executor: Executor, job: Job, recipe: Recipe, done, histograms: bool):
    """Submit one job, its destination directory made first; None (the job failed) if it cannot be.
    `histograms`: the reports keep each weight's histograms (see :func:`wqkernels.rewrite`)."""
    directory = os.path.dirname(os.path.abspath(job.destination))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        done(job, ("failed", f"{job.destination}: cannot create its directory ({exc.strerror or exc})"))
        return None
    return executor.submit(rewrite_job, os.path.abspath(job.source), os.path.abspath(job.destination),
                           recipe, histograms)


@contextlib.contextmanager
def _main_not_imported():
    """Processes started meanwhile do not import the caller's ``__main__``: multiprocessing makes
    each worker run the script again, and a script calling rewrite_many without ``if __name__ ==
    "__main__":`` then failed every file (its workers died starting a batch of their own).  The
    jobs need nothing of ``__main__``: their function and arguments are wqkernels'."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if not saved:
        yield
        return
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _context():
    """forkserver where there is one (no fork of a threaded parent), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # the server imports the rewrite once; every worker forked from it starts with it loaded
    context.set_forkserver_preload(["wqkernels.files.rewrite"])
    return context


def _stop_pool(pool: ProcessPoolExecutor, inflight: dict, done) -> None:
    """Cancel what waits, SIGTERM the workers, collect what finished meanwhile; workers still
    alive after STOP_SECONDS are killed.  Their temporary files are removed afterwards."""
    with _signals_ignored():
        _stop_workers(pool, inflight, done)


def _stop_workers(pool: ProcessPoolExecutor, inflight: dict, done) -> None:
    for fut in inflight:
        fut.cancel()
    processes = _workers(pool)
    for p in processes:
        with contextlib.suppress(Exception):
            p.terminate()
    deadline = time.monotonic() + STOP_SECONDS
    for p in processes:
        with contextlib.suppress(Exception):
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1.0)
    # The pool's manager thread must end here: left running, it closes its wake-up pipe while the
    # interpreter's exit hook writes to it (CPython 3.11 checks and writes without a lock), and the
    # process printed an OSError traceback after "interrupted".  Private, like _processes; taken
    # before shutdown, which forgets it.
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        manager.join(max(1.0, deadline - time.monotonic()))
    for fut, job in inflight.items():
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            done(job, fut.result())


@contextlib.contextmanager
def _signals_ignored():
    """A second Ctrl-C, SIGTERM or SIGHUP must not interrupt the cleanup of the first (main thread only)."""
    try:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in STOP_SIGNALS}
    except ValueError:
        old = {}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
