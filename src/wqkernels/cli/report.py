"""The ``report`` and ``compare`` subcommands, and the ``--html`` pages of the others."""
from __future__ import annotations

import json
import sys

from .._text import first_line
from ..files.atomic import same_file
from ..files.charts import MissingExtra, require
from ..files.compare import compare
from ..files.pages import compare_page, page, write_page
from .app import CommandError

__all__ = ["add_parser", "check_page", "write_html"]


def add_report(sub) -> None:
    p = sub.add_parser("report", help="turn a saved JSON report (--report, compare --json) into an HTML page")
    p.add_argument("report", metavar="REPORT.json", help="the report of a rewrite, of a batch, or a comparison")
    p.add_argument("-o", "--output", required=True, metavar="PAGE.html", help="the page to write")
    p.set_defaults(run=run_report)


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare the weights of two files of the same model")
    p.add_argument("a", metavar="FIRST", help="a Keras file (any layout or storage), e.g. the original")
    p.add_argument("b", metavar="SECOND", help="another file of the same model, e.g. its compressed rewrite")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a table")
    p.add_argument("--html", metavar="PAGE.html", help="also write the comparison as an HTML page")
    p.add_argument("--quiet", action="store_true", help="no progress bar, and only the totals of the table")
    p.set_defaults(run=run_compare)


def check_page(path: str | None, *others: str) -> None:
    """Before any work: the page needs matplotlib and must not be one of the command's files."""
    if path is None:
        return
    try:
        require()
    except MissingExtra as exc:
        raise CommandError(str(exc)) from None
    for other in others:
        if other is not None and same_file(path, other):
            raise CommandError(f"--html {path}: is also a file of this command; give the page another name")


def write_html(path: str | None, build) -> None:
    """Write the page ``build()`` makes to `path`, atomically; a failure is one line naming the file."""
    if path is None:
        return
    try:
        text = build()
    except MissingExtra as exc:
        raise CommandError(str(exc)) from None
    try:
        write_page(path, text)
    except (OSError, ValueError) as exc:
        raise CommandError(f"{path}: cannot write the page ({getattr(exc, 'strerror', None) or exc})",
                           status=1) from None


def run_report(args) -> int:
    check_page(args.output, args.report)
    try:
        with open(args.report, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as exc:
        raise CommandError(f"{args.report}: cannot read ({exc.strerror or exc})", status=1) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CommandError(f"{args.report}: not JSON ({exc})", status=1) from None
    try:
        text = page(document)
    except ValueError as exc:
        raise CommandError(f"{args.report}: {exc}", status=1) from None
    write_html(args.output, lambda: text)
    return 0


def run_compare(args) -> int:
    check_page(args.html, args.a, args.b)
    try:
        comparison = compare(args.a, args.b, progress=not args.quiet)
    except (OSError, ValueError) as exc:  # a KerasFileError (a ValueError) names the file
        raise CommandError(first_line(exc), status=1) from None
    if args.json:
        json.dump(comparison.to_dict(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(comparison.table(weights=not args.quiet))
    write_html(args.html, lambda: compare_page(comparison))
    return 0


def add_parser(sub) -> None:
    """Register the two subcommands."""
    for add in (add_report, add_compare):
        add(sub)
