"""The ``wqkernels`` command: one subcommand per module, each with ``add_parser`` and ``run``.

Every error the user can cause ends as one line on stderr and a non-zero exit status, never a
traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from ._version import __version__

#: subcommand name -> module (relative to the package) defining add_parser(subparsers) and run(args)
COMMANDS = {
    "bench": ".bench",
    "inspect": ".files.commands",
    "rewrite": ".files.commands",
    "restore": ".files.commands",
}


class CommandError(Exception):
    """An error to report as one line, with the exit status to use."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wqkernels",
        description="Prune and quantize neural-network weights; rewrite Keras weight files.")
    parser.add_argument("--version", action="version", version=f"wqkernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
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
