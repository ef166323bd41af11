"""Batch rewriting: many Keras files into one output directory, on all cores, any
``concurrent.futures`` executor or a ``dask.distributed`` cluster.

Each file goes through :func:`wqkernels.rewrite`, which writes a temporary file beside its
destination and renames it into place only when complete, so an output that exists is whole.
On top of that this module plans the work (sources, destinations, collisions) before anything
runs, keeps going when a file fails, and stops cleanly on Ctrl-C or SIGTERM: pending files are
cancelled, the pool's workers are ended with SIGTERM (at once, even inside a long C call) and,
once they are gone, the temporary files of the rewrites they were doing are removed while the
batch still holds the output directory's lock.  Temporary files left by a hard kill of the whole
batch (SIGKILL, power loss) are removed by the next batch into the same directory.
"""
from __future__ import annotations

import contextlib
import glob
import json
import multiprocessing
import os
import re
import signal
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Executor, ProcessPoolExecutor, as_completed, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from .cli import CommandError
from .files.h5tree import KerasFileError
from .files.recipe import Recipe
from .files.report import Report
from .files.rewrite import rewrite
from .progress import progress_bar

__all__ = ["rewrite_many", "plan", "Job", "Outcome", "BatchResult", "BatchError"]

#: files taken from directories and glob patterns (a file named directly may have any name)
SUFFIXES = (".h5", ".hdf5", ".keras")
#: names of our own temporary and lock files, never taken as input
TEMP_PREFIX = ".wqkernels-"
LOCK_NAME = TEMP_PREFIX + "batch.lock"
#: how long stopped workers may take to exit before they are killed
STOP_SECONDS = 10.0
DIED = "the worker process died while rewriting this file (killed, or out of memory)"


class BatchError(ValueError):
    """The batch cannot start (missing sources, name collisions), or some files failed.

    When files failed, `result` holds the :class:`BatchResult` of the whole batch.
    """

    def __init__(self, message: str, result: BatchResult | None = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Job:
    """One file to rewrite: where it comes from, where it goes, its size in bytes."""

    source: str
    destination: str
    size: int = 0


@dataclass
class Outcome:
    """What became of one job: ``ok``, ``failed``, ``skipped`` or ``not done`` (interrupted)."""

    job: Job
    status: str
    report: Report | None = None
    error: str | None = None

    @property
    def size_after(self) -> int:
        if self.report is not None:
            return self.report.size_after
        return _size(self.job.destination) if self.status == "ok" else 0

    def to_dict(self) -> dict:
        return {"source": self.job.source, "destination": self.job.destination, "status": self.status,
                "error": self.error, "size_before": self.job.size, "size_after": self.size_after,
                "report": None if self.report is None else self.report.to_dict()}


class BatchResult(list):
    """The reports of the files rewritten (in the order planned), with every file's outcome.

    Attributes
    ----------
    outcomes : list of Outcome
        One per planned file, in the order planned.
    seconds : float
        Wall time of the batch.
    interrupted : bool
        The batch was stopped (Ctrl-C, SIGTERM) before every file was done.
    notes : list of str
        Things worth knowing (leftover temporary files removed, ...).
    """

    def __init__(self, outcomes: list, seconds: float = 0.0, interrupted: bool = False, notes=()):
        super().__init__(o.report for o in outcomes if o.status == "ok" and o.report is not None)
        self.outcomes = list(outcomes)
        self.seconds = seconds
        self.interrupted = interrupted
        self.notes = list(notes)

    def _with(self, status: str) -> list:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> list:
        return self._with("ok")

    @property
    def failed(self) -> list:
        return self._with("failed")

    @property
    def skipped(self) -> list:
        return self._with("skipped")

    @property
    def not_done(self) -> list:
        return self._with("not done")

    def totals(self) -> dict:
        ok = self.ok
        before = sum(o.job.size for o in ok)
        after = sum(o.size_after for o in ok)
        return {"files": len(self.outcomes), "ok": len(ok), "failed": len(self.failed),
                "skipped": len(self.skipped), "not_done": len(self.not_done), "bytes_in": before,
                "bytes_out": after, "ratio": before / after if after else None, "seconds": self.seconds,
                "interrupted": self.interrupted}

    def to_dict(self) -> dict:
        """Every file's outcome and report, and the totals: JSON-ready."""
        return {"totals": self.totals(), "notes": list(self.notes),
                "files": [o.to_dict() for o in self.outcomes]}

    def summary(self, files: bool = True) -> str:
        """A table of the files (unless `files` is false: then failed ones only) and the totals."""
        head = ("status", "source", "destination", "before", "after", "ratio", "seconds")
        rows = []
        for o in self.outcomes:
            if not files and o.status != "failed":
                continue
            if o.status == "ok":
                after = o.size_after
                rows.append((o.status, o.job.source, o.job.destination, _bytes(o.job.size), _bytes(after),
                             f"{o.job.size / after:.2f}" if after else "-",
                             f"{o.report.seconds:.2f}" if o.report is not None else "-"))
            else:
                rows.append((o.status, o.job.source, o.job.destination, _bytes(o.job.size), "-", "-", "-"))
        lines = _columns(head, rows) if rows else []
        lines.extend(f"failed: {o.error}" for o in self.failed)
        t = self.totals()
        ratio = f"ratio {t['ratio']:.2f}, " if t["ratio"] else ""
        rate = t["bytes_in"] / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines.append(f"files: {t['ok']} ok, {t['failed']} failed, {t['skipped']} skipped"
                     + (f", {t['not_done']} not done (interrupted)" if self.interrupted else "")
                     + f" of {t['files']}; {_bytes(t['bytes_in'])} -> {_bytes(t['bytes_out'])}, "
                     f"{ratio}{self.seconds:.1f} s ({rate:.1f} MB/s)")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def _columns(head: tuple, rows: list) -> list[str]:
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def _bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---- planning ----------------------------------------------------------------------------------

def plan(srcs, out_dir, *, recursive: bool = False) -> list[Job]:
    """The files to rewrite and their destinations in `out_dir`; nothing is written.

    A file named directly lands as ``out_dir/<its name>``; files found in a directory (only
    ``.h5``, ``.hdf5`` and ``.keras`` files, descending into subdirectories if `recursive`) keep
    their path relative to it; glob patterns are expanded (``**`` descends), each match treated
    as if named directly.  `out_dir`, when inside a source directory, is not scanned.

    Raises
    ------
    BatchError
        A source that does not exist or a pattern that matches nothing, two files that would
        land on the same destination, a destination that is a source, or nothing to do; every
        problem is listed.
    """
    srcs = [srcs] if isinstance(srcs, (str, bytes, os.PathLike)) else list(srcs)
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise BatchError(f"{out_dir}: the output directory exists and is not a directory")
    out_real = os.path.realpath(out_dir)
    problems, pairs = [], []
    for src in srcs:
        src = os.fspath(src)
        if os.path.isdir(src):
            pairs.extend(_scan(src, recursive, out_real))
        elif os.path.exists(src):
            pairs.append((src, os.path.basename(src)))
        elif glob.has_magic(src):
            matches = [m for m in sorted(glob.glob(src, recursive=True)) if not _inside(m, out_real)]
            if not matches:
                problems.append(f"{src}: matches no file")
            for m in matches:
                if os.path.isdir(m):
                    pairs.extend(_scan(m, recursive, out_real))
                elif _candidate(os.path.basename(m)):
                    pairs.append((m, os.path.basename(m)))
        else:
            problems.append(f"{src}: no such file or directory")

    jobs, seen, by_destination = [], set(), {}
    sources = {_identity(s) for s, _ in pairs}
    for src, rel in pairs:
        dst = os.path.join(out_dir, rel)
        key = os.path.normcase(os.path.abspath(dst))
        if (os.path.abspath(src), key) in seen:
            continue  # the same file reached twice (named and inside a named directory)
        seen.add((os.path.abspath(src), key))
        by_destination.setdefault(key, []).append(src)
        if _identity(dst) in sources:
            problems.append(f"{dst}: would overwrite a source file")
        jobs.append(Job(src, dst, _size(src)))
    for key, group in by_destination.items():
        if len(group) > 1:
            problems.append(f"{key}: would be written from {len(group)} files: {', '.join(group)}")
    if problems:
        raise BatchError(f"nothing was rewritten: {len(problems)} problem(s) with the sources\n"
                         + "\n".join(problems))
    if not jobs:
        raise BatchError(f"no Keras files ({', '.join(SUFFIXES)}) in {', '.join(map(os.fspath, srcs))}"
                         + ("" if recursive else " (--recursive descends into subdirectories)"))
    return jobs


def _candidate(name: str) -> bool:
    """A supported file name that is not one of our temporary files."""
    return name.lower().endswith(SUFFIXES) and not name.startswith(TEMP_PREFIX)


def _inside(path: str, directory_real: str) -> bool:
    real = os.path.realpath(path)
    return real == directory_real or real.startswith(directory_real.rstrip(os.sep) + os.sep)


def _scan(top: str, recursive: bool, out_real: str):
    """(path, path relative to top) of the candidate files in `top`, sorted, out_real left out."""
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if recursive and not _inside(os.path.join(root, d), out_real))
        for name in sorted(files):
            path = os.path.join(root, name)
            if _candidate(name) and os.path.isfile(path):
                yield path, os.path.relpath(path, top)


def _identity(path: str):
    """(device, inode) of an existing file, else its real path: equal for the same file."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.normcase(os.path.realpath(path))
    return st.st_dev, st.st_ino


# ---- the public function ---------------------------------------------------------------------

def rewrite_many(srcs, out_dir, recipe: Recipe | None = None, *, workers: int | None = None,
                 executor: Executor | None = None, skip_existing: bool = False, progress: bool = True,
                 recursive: bool = False) -> BatchResult:
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
                     skip_existing=skip_existing, progress=progress)
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


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ---- running ---------------------------------------------------------------------------------

def execute(jobs: list[Job], out_dir: str, recipe: Recipe, *, workers: int | None = None,
            executor: Executor | None = None, skip_existing: bool = False, progress: bool = True,
            stream=None) -> BatchResult:
    """Run planned jobs; file errors and interruption are recorded in the result, not raised."""
    start = time.perf_counter()
    os.makedirs(out_dir, exist_ok=True)
    outcomes: dict[Job, Outcome] = {}
    notes = []
    interrupted = False
    with _output_lock(out_dir) as locked:
        if locked:
            removed = _remove_leftovers(jobs)
            if removed:
                notes.append(f"removed {removed} temporary file(s) left by an earlier interrupted run")
        before = {}
        todo = []
        for job in jobs:
            if skip_existing and os.path.exists(job.destination):
                outcomes[job] = Outcome(job, "skipped")
            else:
                before[job] = _identity(job.destination)
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
                _run_pool(order, recipe, workers or available_cores(), done)
            else:
                _run_executor(order, recipe, executor, done)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        if locked and executor is None:  # our workers are gone; those stopped or killed left files
            removed = _remove_leftovers(todo)
            if removed:
                notes.append(f"removed {removed} temporary file(s) of workers that were stopped or killed")
        for job in todo:
            if job not in outcomes:  # interrupted: finished if its destination was just renamed in
                changed = os.path.isfile(job.destination) and _identity(job.destination) != before[job]
                outcomes[job] = Outcome(job, "ok") if changed else Outcome(job, "not done")
    return BatchResult([outcomes[j] for j in jobs], time.perf_counter() - start, interrupted, notes)


def _run_pool(jobs: list[Job], recipe: Recipe, workers: int, done) -> None:
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
        pool = ProcessPoolExecutor(max_workers=limit, mp_context=_context(), initializer=_init_worker,
                                   initargs=(threads,))
        inflight: dict = {}
        try:
            broken = False
            while inflight or (source and not broken):
                while source and not broken and len(inflight) < limit:
                    job = source.popleft()
                    try:
                        fut = _submit(pool, job, recipe, done)
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
                        done(job, ("failed", one_line(exc, job.source)))
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


def _run_executor(jobs: list[Job], recipe: Recipe, executor: Executor, done) -> None:
    """Someone else's executor: everything submitted at once, cancelled on interruption."""
    futures: dict = {}
    try:
        for job in jobs:
            fut = _submit(executor, job, recipe, done)
            if fut is not None:
                futures[fut] = job
        for fut in as_completed(futures):
            try:
                outcome = fut.result()
            except Exception as exc:  # the executor's own failure (lost worker, ...)
                outcome = ("failed", one_line(exc, futures[fut].source))
            done(futures[fut], outcome)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _submit(executor: Executor, job: Job, recipe: Recipe, done):
    """Submit one job, its destination directory made first; None (the job failed) if it cannot be."""
    directory = os.path.dirname(os.path.abspath(job.destination))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        done(job, ("failed", f"{job.destination}: cannot create its directory ({exc.strerror or exc})"))
        return None
    return executor.submit(rewrite_job, os.path.abspath(job.source), os.path.abspath(job.destination),
                           recipe)


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
    pool.shutdown(wait=False, cancel_futures=True)
    for fut, job in inflight.items():
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            done(job, fut.result())


@contextlib.contextmanager
def _signals_ignored():
    """A second Ctrl-C or SIGTERM must not interrupt the cleanup of the first (main thread only)."""
    try:
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:
        old = {}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


# ---- in the worker ---------------------------------------------------------------------------

def _init_worker(threads: int) -> None:
    """Pool worker setup: Ctrl-C is the parent's business, SIGTERM ends the worker at once (its
    temporary file is removed by the parent), and the kernels share the cores with the other
    workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from . import _core
    _core.set_max_threads(threads)


def rewrite_job(source: str, destination: str, recipe: Recipe) -> tuple:
    """Rewrite one file: ``("ok", Report)`` or ``("failed", one-line error)``; runs in a worker."""
    try:
        return "ok", rewrite(source, destination, recipe)
    except Exception as exc:  # noqa: BLE001 -- one bad file must not stop the batch
        return "failed", one_line(exc, source)


def one_line(exc: BaseException, source: str) -> str:
    """An error as one line naming the file."""
    if isinstance(exc, (KerasFileError, NotImplementedError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    text = text.strip().splitlines()[0]
    return text if source in text else f"{source}: {text}"


# ---- leftovers and the output lock -----------------------------------------------------------

@contextlib.contextmanager
def _output_lock(out_dir: str):
    """Hold an exclusive lock on `out_dir` for the batch; yields whether it is held (False where
    the platform or file system has no locks).  A second batch into the same directory is refused:
    it would remove the first one's temporary files."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    path = os.path.join(out_dir, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BatchError(f"{out_dir}: cannot write into the output directory ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchError(f"{out_dir}: another batch rewrite is writing into this directory") from None
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still locked: a waiting batch then opens a new file
    finally:
        os.close(fd)


def _remove_leftovers(jobs: list[Job]) -> int:
    """Remove the temporary files a killed rewrite left beside our destinations.

    :func:`wqkernels.rewrite` names them ``.<destination name>.<8 random characters>.tmp`` and,
    for .keras archives, ``.wqkernels-<random>.weights.h5`` (Python's mkstemp).
    """
    names_by_dir: dict[str, set] = {}
    for job in jobs:
        d, name = os.path.split(os.path.abspath(job.destination))
        names_by_dir.setdefault(d, set()).add(name)
    removed = 0
    for d, names in names_by_dir.items():
        try:
            entries = os.listdir(d)
        except OSError:
            continue
        for entry in entries:
            m = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.tmp", entry)
            ours = (m is not None and m.group(1) in names) or (
                entry.startswith(TEMP_PREFIX) and entry.endswith(".weights.h5"))
            if ours:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(d, entry))
                    removed += 1
    return removed


# ---- the command line ------------------------------------------------------------------------

def add_options(p) -> None:
    """The batch options of ``wqkernels rewrite`` (with ``--out-dir``)."""
    g = p.add_argument_group("batch rewriting (several SRC, directories or globs, with --out-dir DIR)")
    g.add_argument("--workers", type=int, metavar="N", help="parallel processes (default: the cores)")
    g.add_argument("--skip-existing", action="store_true", help="leave files whose output exists")
    g.add_argument("--recursive", action="store_true", help="descend into subdirectories of SRC")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no line per file")
    g.add_argument("--dask", metavar="ADDRESS", help="run on this dask.distributed scheduler")


def is_batch(args) -> bool:
    """Whether the rewrite command line asks for batch rewriting."""
    return (args.out_dir is not None or len(args.src) > 1 or args.workers is not None or args.skip_existing
            or args.recursive or args.quiet or args.dask is not None)


def run_command(args, recipe: Recipe) -> int:
    """``wqkernels rewrite SRC... --out-dir DIR``: the summary on stdout, failures on stderr too."""
    if args.out_dir is None:
        raise CommandError("several SRC, directories and the batch options need --out-dir DIR")
    if args.in_place:
        raise CommandError("--in-place rewrites one file with -o; it cannot be used with --out-dir")
    if args.dask is not None and args.workers is not None:
        raise CommandError("--workers and --dask exclude each other (the cluster has its workers)")
    if args.workers is not None and args.workers < 1:
        raise CommandError(f"--workers must be at least 1, got {args.workers}")
    try:
        jobs = plan(args.src, args.out_dir, recursive=args.recursive)
    except BatchError as exc:
        raise CommandError(str(exc)) from None
    with contextlib.ExitStack() as stack:
        executor = _dask_executor(args.dask, stack) if args.dask is not None else None
        signum = stack.enter_context(_sigterm_interrupts())
        try:
            result = execute(jobs, args.out_dir, recipe, workers=args.workers, executor=executor,
                             skip_existing=args.skip_existing, progress=not args.quiet)
        except BatchError as exc:
            raise CommandError(str(exc), status=1) from None
    print(result.summary(files=not args.quiet))
    sys.stdout.flush()
    for o in result.failed:
        print(f"wqkernels rewrite: error: {o.error}", file=sys.stderr)
    if args.report:
        _write_json(args.report, result.to_dict())
    if result.interrupted:
        print(f"wqkernels rewrite: interrupted: {len(result.ok)} of {len(jobs)} files done; run again "
              f"with --skip-existing to complete the rest", file=sys.stderr)
        return 128 + (signum[0] or signal.SIGINT)
    return 1 if result.failed else 0


@contextlib.contextmanager
def _sigterm_interrupts():
    """SIGTERM raises KeyboardInterrupt in the main thread for the duration (yields [signum])."""
    received = [None]

    def handler(signum, frame):
        received[0] = signum
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield received
        return
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, old)


def _dask_executor(address: str, stack: contextlib.ExitStack) -> Executor:
    try:
        from distributed import Client
    except ImportError:
        raise CommandError("--dask needs dask.distributed: pip install 'wqkernels[dask]'") from None
    try:
        client = Client(address, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise CommandError(f"cannot reach the dask scheduler at {address} ({exc})", status=1) from None
    stack.callback(client.close)
    return client.get_executor(pure=False)


def _write_json(path: str, document: dict) -> None:
    """Write a JSON file through a temporary file renamed into place."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(document, f, indent=1)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise CommandError(f"{path}: cannot write the report ({exc.strerror or exc})", status=1) from None
