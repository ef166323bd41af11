"""The ``wqkernels`` command line (``python -m wqkernels``).

:mod:`.app` builds the parser and runs a command; one module per command group defines its
subcommands: :mod:`.files` (inspect, rewrite, restore), :mod:`.batch` (rewrite with --out-dir),
:mod:`.bench`.  A new command goes into its group's module (or a new module listed in
``app.GROUPS``).
"""
import importlib
import sys

__all__ = ["main", "build_parser", "CommandError"]


def main(argv: list | None = None) -> int:
    """Run the command line; Ctrl-C while the package is still being imported ends it with
    one line, as it does later."""
    try:
        from .app import main as run
    except KeyboardInterrupt:
        print("wqkernels: interrupted", file=sys.stderr)
        return 130
    return run(argv)


def __getattr__(name: str):
    if name in ("build_parser", "CommandError"):
        return getattr(importlib.import_module(".app", __name__), name)
    raise AttributeError(f"module 'wqkernels.cli' has no attribute {name!r}")
