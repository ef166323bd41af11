"""Batch rewriting: many Keras files into one output directory, on all cores, any
``concurrent.futures`` executor or a ``dask.distributed`` cluster.

Each file goes through :func:`wqkernels.rewrite`, which writes a temporary file beside its
destination and renames it into place only when complete, so an output that exists is whole.
On top of that this package plans the work (sources, destinations, collisions: :mod:`.plan`)
before anything runs, keeps going when a file fails (:mod:`.worker`), and stops cleanly on
Ctrl-C or SIGTERM (:mod:`.pool`): pending files are cancelled, the pool's workers are ended with
SIGTERM (at once, even inside a long C call) and, once they are gone, the temporary files of the
rewrites they were doing are removed while the batch still holds the output directory's lock
(:mod:`.outputs`).  Temporary files left by a hard kill of the whole batch (SIGKILL, power loss)
are removed by the next batch into the same directory.  What became of each file is a
:class:`BatchResult` (:mod:`.result`).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Executor

from ..files import Recipe
from ..progress import progress_bar
from .outputs import output_lock, remove_leftovers
from .plan import SUFFIXES, BatchError, Job, identity, plan
from .pool import available_cores, run_executor, run_pool
from .result import BatchResult, Outcome

__all__ = ["rewrite_many", "execute", "plan", "Job", "Outcome", "BatchResult", "BatchError", "SUFFIXES",
           "available_cores"]


def rewrite_many(srcs, out_dir, recipe: Recipe | None = None, *, workers: int | None = None,
                 executor: Executor | None = None, skip_existing: bool = False, progress: bool = True,
                 recursive: bool = False, histograms: bool = False) -> BatchResult:
    """Rewrite many Keras files into `out_dir`, in parallel, with the same recipe.

    Parameters
    ----------
    srcs : str, os.PathLike or iterable of them
        Files, directories (their ``.h5``/``.hdf5``/``.keras`` files) and glob patterns; see
        :func:`plan` for where each lands.
    out_dir : str or os.PathLike
        Created if missing.  With dask or another cluster executor it must be visible to the
        workers at the same path.
    recipe : Recipe, optional
        As for :func:`wqkernels.rewrite`; the default copies the files.
    workers : int, optional
        Worker processes (default: the number of cores available).
    executor : concurrent.futures.Executor, optional
        Run the files there instead (a ``ThreadPoolExecutor``, a dask ``client.get_executor()``,
        ...); it stays open.
    skip_existing : bool
        Leave files whose destination exists (a destination only exists once complete).
    progress : bool
        Draw a progress bar on stderr when it is a terminal (tqdm if installed).
    recursive : bool
        Descend into subdirectories of directories given in `srcs`.
    histograms : bool
        Each file's report keeps the histograms of its weights before and after (as
        :func:`wqkernels.rewrite`), for a page of the batch.

    Returns
    -------
    BatchResult
        A list of the :class:`Report` of each file rewritten, in the order planned, with
        ``outcomes`` (every file's fate), ``summary()`` and ``to_dict()``.

    Raises
    ------
    BatchError
        Before any work: missing sources, name collisions, nothing to do.  After the batch,
        when some files failed (the others are complete); ``error.result`` holds everything.
    KeyboardInterrupt
        Re-raised once pending work is cancelled and the workers have cleaned up.

    Examples
    --------
    >>> import wqkernels
    >>> reports = wqkernels.rewrite_many(["runs/"], "int8", wqkernels.Recipe(bits=8))  # doctest: +SKIP
    >>> print(reports.summary())  # doctest: +SKIP
    """
    recipe = Recipe() if recipe is None else recipe
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    workers = _check_workers(workers, executor)
    jobs = plan(srcs, out_dir, recursive=recursive)
    result = execute(jobs, os.fspath(out_dir), recipe, workers=workers, executor=executor,
                     skip_existing=skip_existing, progress=progress, histograms=histograms)
    if result.interrupted:
        raise KeyboardInterrupt
    if result.failed:
        first = result.failed[0].error
        raise BatchError(f"{len(result.failed)} of {len(jobs)} files failed (the others are done); "
                         f"first: {first}", result)
    return result


def _check_workers(workers, executor) -> int | None:
    if executor is not None:
        if workers is not None:
            raise ValueError("give workers or executor, not both")
        if not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {type(executor).__name__}")
        return None
    if workers is None:
        return available_cores()
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an int, got {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return workers


def execute(jobs: list[Job], out_dir: str, recipe: Recipe, *, workers: int | None = None,
            executor: Executor | None = None, skip_existing: bool = False, progress: bool = True,
            stream=None, histograms: bool = False) -> BatchResult:
    """Run planned jobs; file errors and interruption are recorded in the result, not raised."""
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    outcomes: dict[Job, Outcome] = {}
    notes = []
    interrupted = False
    with output_lock(out_dir) as locked:
        if locked:
            removed = remove_leftovers(jobs)
            if removed:
                notes.append(f"removed {removed} temporary file(s) left by an earlier interrupted run")
        before = {}
        todo = []
        for job in jobs:
            if skip_existing and os.path.exists(job.destination):
                outcomes[job] = Outcome(job, "skipped")
            else:
                before[job] = identity(job.destination)
                todo.append(job)
        if skip_existing and len(todo) < len(jobs):
            notes.append(f"{len(jobs) - len(todo)} file(s) skipped: their destination exists")
        bar = progress_bar(len(todo), sum(j.size for j in todo), enabled=progress, stream=stream)

        def done(job: Job, outcome: tuple) -> None:
            status, value = outcome
            if status == "ok":  # workers get absolute paths; name the files as the user did
                value.source, value.destination = job.source, job.destination
                outcomes[job] = Outcome(job, "ok", report=value)
            else:
                for path in (job.source, job.destination):
                    value = value.replace(os.path.abspath(path), path)
                outcomes[job] = Outcome(job, "failed", error=value)
            bar.advance(job.size)

        order = sorted(todo, key=lambda j: -j.size)  # largest first: the batch ends sooner
        try:
            if executor is None:
                run_pool(order, recipe, workers or available_cores(), done, histograms)
            else:
                run_executor(order, recipe, executor, done, histograms)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        if locked and executor is None:  # our workers are gone; those stopped or killed left files
            removed = remove_leftovers(todo)
            if removed:
                notes.append(f"removed {removed} temporary file(s) of workers that were stopped or killed")
        for job in todo:
            if job not in outcomes:  # interrupted: finished if its destination was just renamed in
                changed = os.path.isfile(job.destination) and identity(job.destination) != before[job]
                outcomes[job] = Outcome(job, "ok") if changed else Outcome(job, "not done")
    return BatchResult([outcomes[j] for j in jobs], time.perf_counter() - start, interrupted, notes)
