"""``wqkernels rewrite SRC... --out-dir DIR``: the batch options and the command."""
from __future__ import annotations

import contextlib
import signal
import sys
from concurrent.futures import Executor

from .._text import printable
from ..batch import BatchError, execute, plan
from ..files import Recipe
from ..files.pages import report_page
from .app import CommandError, write_report
from .report import write_html

__all__ = ["add_options", "is_batch", "run_command"]


def add_options(p) -> None:
    """The batch options of ``wqkernels rewrite`` (with ``--out-dir``)."""
    g = p.add_argument_group("batch rewriting (several SRC, directories or globs, with --out-dir DIR)")
    g.add_argument("--workers", type=int, metavar="N", help="parallel processes (default: the cores)")
    g.add_argument("--skip-existing", action="store_true", help="leave files whose output exists")
    g.add_argument("--recursive", action="store_true", help="descend into subdirectories of SRC")
    g.add_argument("--dask", metavar="ADDRESS", help="run on this dask.distributed scheduler")


def is_batch(args) -> bool:
    """Whether the rewrite command line asks for batch rewriting."""
    return (args.out_dir is not None or len(args.src) > 1 or args.workers is not None or args.skip_existing
            or args.recursive or args.dask is not None)


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
        raise CommandError(str(exc), lines=True) from None
    with contextlib.ExitStack() as stack:
        executor = _dask_executor(args.dask, stack) if args.dask is not None else None
        try:
            result = execute(jobs, args.out_dir, recipe, workers=args.workers, executor=executor,
                             skip_existing=args.skip_existing, progress=not args.quiet,
                             histograms=bool(args.report or args.html))
        except BatchError as exc:
            raise CommandError(str(exc), status=1) from None
    print(result.summary(files=not args.quiet))
    sys.stdout.flush()
    for o in result.failed:
        print(printable(f"wqkernels rewrite: error: {o.error}"), file=sys.stderr)
    if args.report:
        write_report(args.report, result.to_dict())
    write_html(args.html, lambda: report_page(result.to_dict()))
    if result.interrupted:
        print(f"wqkernels rewrite: interrupted: {len(result.ok)} of {len(jobs)} files done; run again "
              f"with --skip-existing to complete the rest", file=sys.stderr)
        return 128 + (args.interrupt[0] or signal.SIGINT)
    return 1 if result.failed else 0


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
