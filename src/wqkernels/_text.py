"""Plain text shared by every layer's output: fixed-width tables, byte counts, one-line errors."""
from __future__ import annotations

import re


def table(head: tuple, rows: list) -> list[str]:
    """Lines of a table with left-aligned columns two spaces apart, the header first; control
    characters in cells (a layer named with terminal escapes) are escaped."""
    rows = [tuple(printable(str(c)) for c in r) for r in rows]
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head).rstrip()] + [fmt.format(*r).rstrip() for r in rows]


def megabytes(n: int) -> str:
    """A byte count for people: ``12.3 MB`` or ``45.6 kB``."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def natural_key(name: str) -> tuple:
    """Sort key reading runs of digits as numbers: ``vars/2`` before ``vars/10``, ``dense_2``
    before ``dense_10`` (Keras's order of its indices and of the names it numbers)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p)


def listing(items, limit: int = 8) -> str:
    """Names for a line of text: ``a, b, c``, or the first `limit` and ``and 12 more``."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def printable(text: str) -> str:
    """`text` with its control characters escaped (``\\n``, ``\\x1b``): a file or layer name
    cannot break a line of output or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def note_lines(notes) -> list[str]:
    """A report's notes as its lines of output, ``note: ...``, each escaped (:func:`printable`)."""
    return [printable(f"note: {n}") for n in notes]


def first_line(exc) -> str:
    """The first line of an exception's (or warning's) message, with the next one when the first
    only announces it ("... error message for object <Dense name=d2>:"), at most 300 characters;
    its type's name when it has none."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text if len(text) <= 300 else text[:299] + "…"


def one_line(exc: BaseException, *, typed: bool = True) -> str:
    """An exception as one line; `typed` puts its type's name first (for errors that are not
    already worded for the user)."""
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if typed and str(exc).strip() else text
