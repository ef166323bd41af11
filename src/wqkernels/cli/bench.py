"""``wqkernels bench``: the kernels timed against their bandwidth floors, NumPy and torch."""
from __future__ import annotations

import argparse

from .. import bench
from .app import CommandError, write_report

__all__ = ["add_parser"]


def _thread_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return counts


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="time the kernels against their bandwidth floors, NumPy and torch",
                       description=bench.__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, action="append", help=f"elements (repeatable; default {bench.SIZES})")
    p.add_argument("--only", default="*", metavar="PATTERN",
                   help="run the cases whose name matches this glob, or contains this text")
    p.add_argument("--threads", type=_thread_counts, default=(1,), metavar="N[,N...]",
                   help="threads for wqkernels and torch; several (1,2) time each case at each (default 1)")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per implementation (default 7)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(run=_main)


def _main(args) -> int:
    if args.repeat < 1 or any(s < 1 for s in args.size or []):
        raise CommandError("--repeat and --size must be positive")
    rows = bench.run(tuple(args.size or bench.SIZES), args.only, args.threads, args.repeat)
    if args.json:
        write_report(args.json, rows)
    return 0
