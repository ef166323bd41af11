"""``wqkernels bench``: the kernels timed against NumPy, torch and the bandwidth floor."""
from __future__ import annotations

from .. import bench
from .main import CommandError, write_report

__all__ = ["add_parser"]


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time the kernels against NumPy, torch and the bandwidth floor",
                       description=bench.__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, action="append", help=f"elements (repeatable; default {bench.SIZES})")
    p.add_argument("--only", default="*", metavar="PATTERN", help="run the cases whose name matches this glob")
    p.add_argument("--threads", type=int, default=1, help="threads for wqkernels and torch (default 1)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per implementation (default 7)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(run=_main)


def _main(args) -> int:
    if args.threads < 1 or args.repeat < 1 or any(s < 1 for s in args.size or []):
        raise CommandError("--threads, --repeat and --size must be positive")
    rows = bench.run(tuple(args.size or bench.SIZES), args.only, args.threads, args.repeat)
    if args.json:
        write_report(args.json, rows)
    return 0
