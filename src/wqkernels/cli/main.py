"""The ``wqkernels`` command: the parser, the error every command reports as one line, and main.

Each command group is a module of this package with ``add_parser(subparsers)``; each command's
parser sets ``run(args)``.  Every error the user can cause ends as one line on stderr and a
non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .._version import __version__
from ..files.atomic import write_json

#: the command groups: modules of this package, each defining add_parser(subparsers)
GROUPS = (".files", ".report", ".bench")


class CommandError(Exception):
    """An error to report as one line, with the exit status to use."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def write_report(path: str, document: dict) -> None:
    """Write a report as JSON, atomically; a failure is a CommandError naming the file."""
    try:
        write_json(path, document)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: cannot write the report ({getattr(exc, 'strerror', None) or exc})",
                           status=1) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wqkernels",
        description="Prune and quantize neural-network weights; rewrite Keras weight files.")
    parser.add_argument("--version", action="version", version=f"wqkernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in GROUPS:
        importlib.import_module(module, __package__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except CommandError as exc:
        print(f"wqkernels {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print(f"wqkernels {args.command}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError) as exc:
        print(f"wqkernels {args.command}: error: {exc}", file=sys.stderr)
        return 1
