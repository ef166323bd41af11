"""The ``wqkernels`` command: the parser, the error every command reports as one line, and main.

Each command group is a module of this package with ``add_parser(subparsers)``; each command's
parser sets ``run(args)``.  Every error the user can cause ends as one line on stderr and a
non-zero exit status, never a traceback: argparse's own errors too (with the closest option when
one is misspelled), Ctrl-C and SIGTERM (exit 130 / 143, nothing left behind), and a closed pipe
(``wqkernels inspect m.h5 | head`` ends quietly).
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import os
import signal
import sys
import warnings

from .._text import printable
from .._version import __version__
from ..files import atomic
from ..files.atomic import write_json
from ..files.errors import KerasFileError

#: the command groups: modules of this package, each defining add_parser(subparsers)
GROUPS = (".files", ".report", ".bench")


class CommandError(Exception):
    """An error to report as one line, with the exit status to use (`lines`: a message that is a
    list of problems, one per line)."""

    def __init__(self, message: str, status: int = 2, lines: bool = False):
        super().__init__(message)
        self.status = status
        self.lines = lines


def write_report(path: str, document: dict) -> None:
    """Write a report as JSON, atomically; a failure is a CommandError naming the file."""
    try:
        write_json(path, document)
    except KerasFileError as exc:
        raise CommandError(f"{exc} (the report)", status=1) from None
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: cannot write the report ({getattr(exc, 'strerror', None) or exc})",
                           status=1) from None


class Parser(argparse.ArgumentParser):
    """argparse with no abbreviated options (``--bit 8`` is not ``--bits 8``) and one-line errors
    that name the closest option to a misspelled one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        unknown = message.split(": ", 1)[1].split() if message.startswith("unrecognized arguments") else []
        options = self._long_options()
        for word in unknown:
            close = difflib.get_close_matches(word.split("=")[0], options, n=1)
            if word.startswith("-") and close:
                message += f" (did you mean {close[0]}?)"
                break
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


    def _long_options(self) -> list[str]:
        """The long options of this parser and of its subcommands (the unknown ones are
        reported by the top parser)."""
        out = []
        for action in self._actions:
            out += [o for o in action.option_strings if o.startswith("--")]
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    out += sub._long_options()
        return out


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="wqkernels",
                    description="Prune and quantize neural-network weights; rewrite Keras weight files.")
    parser.add_argument("--version", action="version", version=f"wqkernels {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module in GROUPS:
        importlib.import_module(module, __package__).add_parser(sub)
    return parser


@contextlib.contextmanager
def _interrupts():
    """Ctrl-C, SIGTERM and SIGHUP (:data:`~wqkernels.files.atomic.STOP_SIGNALS`) raise
    KeyboardInterrupt for the duration and stop every rename into place
    (:data:`~wqkernels.files.atomic.STOP`), even when the interrupt itself was swallowed on its
    way (in a finaliser or a C callback); yields [the signal received, or None].  A signal the
    process was started ignoring stays ignored (nohup, a shell's background job), as Python
    leaves it."""
    received = [None]

    def handler(signum, frame):
        received[0] = signum
        atomic.STOP.set()
        raise KeyboardInterrupt

    def unraisable(info, report=sys.unraisablehook):
        # an interrupt raised inside a finaliser is swallowed there, and STOP already says so:
        # no "Exception ignored in ..." traceback for it
        if not (info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt)):
            report(info)

    atomic.STOP.clear()
    try:
        old = {s: signal.signal(s, handler) for s in atomic.STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    except ValueError:  # not the main thread: signals are someone else's business
        old = {}
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield received
    finally:
        sys.unraisablehook = hook
        for s, previous in old.items():
            signal.signal(s, previous)


def main(argv: list[str] | None = None) -> int:
    with _interrupts() as received:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help(sys.stderr)
                return 2
            args.interrupt = received
            return _run(args, received)
        except KeyboardInterrupt:  # during start-up
            print("wqkernels: interrupted", file=sys.stderr)
            return 128 + (received[0] or signal.SIGINT)


def _run(args, received: list) -> int:
    """Run the command; every error is one line on stderr."""
    name = f"wqkernels {args.command}"
    try:
        with warnings.catch_warnings():  # a warning is not an error line: what matters is in the report
            warnings.simplefilter("ignore", RuntimeWarning)
            status = int(args.run(args) or 0)
        if atomic.STOP.is_set() and status < 128:  # an interrupt swallowed on its way: the command
            raise KeyboardInterrupt  # did not finish (a batch says so itself, and returns 128 + signal)
        return status
    except CommandError as exc:
        _error(name, str(exc), exc.lines)
        return exc.status
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 128 + (received[0] or signal.SIGINT)
    except BrokenPipeError:  # the reader of our output went away (| head): end quietly
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, ValueError, TypeError) as exc:
        _error(name, str(exc))
        return 1


def _error(name: str, message: str, lines: bool = False) -> None:
    """`message` as one line on stderr (control characters of file names escaped), or one line
    per problem of a list."""
    parts = message.split("\n") if lines else [message]
    print("\n".join(f"{name}: error: {printable(p)}" if k == 0 else printable(p) for k, p in enumerate(parts)),
          file=sys.stderr)
