"""The ``wqkernels`` command line (``python -m wqkernels``).

:mod:`.main` builds the parser and runs a command; one module per command group defines its
subcommands: :mod:`.files` (inspect, rewrite, restore), :mod:`.batch` (rewrite with --out-dir),
:mod:`.bench`.  A new command goes into its group's module (or a new module listed in
``main.GROUPS``).
"""
from .main import CommandError, build_parser, main

__all__ = ["main", "build_parser", "CommandError"]
