"""A progress bar: tqdm when installed, else one line of our own; only on a terminal.

Both count bytes of input (for MB/s and the ETA); a batch's bar also shows the files done out of
the total, one file's bar (``total_files=None``) its label.
"""
from __future__ import annotations

import sys
import time

__all__ = ["progress_bar"]


def progress_bar(total_files: int | None, total_bytes: int, *, enabled: bool = True, stream=None,
                 use_tqdm: bool = True, label: str = "", unit: str = "B"):
    """A progress object with ``advance(nbytes)`` and ``close()``.

    Nothing is drawn unless `enabled` and `stream` (default: stderr) is a terminal.  tqdm is used
    when it can be imported and `use_tqdm`; otherwise a plain line rewritten in place.  Each
    ``advance`` is one more file done, unless `total_files` is None: then the bar follows the
    bytes of one file's work alone, described by `label`.  With a `unit` other than bytes
    (``"step"``), the bar counts those instead.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled or not _isatty(stream) or total_files == 0 or (total_files is None and not total_bytes):
        return NoProgress()
    if use_tqdm:
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return TqdmProgress(tqdm, total_files, total_bytes, stream, label, unit)
    return LineProgress(total_files, total_bytes, stream, label=label, unit=unit)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class NoProgress:
    """Draws nothing."""

    def advance(self, nbytes: int) -> None:
        pass

    def close(self) -> None:
        pass


class TqdmProgress:
    """A tqdm bar over bytes, its description counting files (or the label)."""

    def __init__(self, tqdm, total_files: int | None, total_bytes: int, stream, label: str = "", unit: str = "B"):
        self.files, self.total_files, self.label = 0, total_files, label
        counted = "{n_fmt}B/{total_fmt}B" if unit == "B" else "{n_fmt}/{total_fmt} " + unit + "s"
        self.bar = tqdm(total=total_bytes, unit=unit, unit_scale=unit == "B", unit_divisor=1000, file=stream,
                        desc=self._desc(), leave=False, dynamic_ncols=True, mininterval=0.2,
                        bar_format="{desc} {percentage:3.0f}%|{bar}| " + counted + " [{elapsed}<{remaining}, {rate_fmt}]")

    def _desc(self) -> str:
        return self.label if self.total_files is None else f"{self.files}/{self.total_files} files"

    def advance(self, nbytes: int) -> None:
        if self.total_files is not None:
            self.files += 1
            self.bar.set_description_str(self._desc(), refresh=False)
        self.bar.update(nbytes)

    def close(self) -> None:
        self.bar.close()


class LineProgress:
    """``  3/16 files  61.2/320.0 MB  25.4 MB/s  ETA 0:10`` rewritten in place with a carriage return
    (for one file: its label in place of the files)."""

    def __init__(self, total_files: int | None, total_bytes: int, stream, interval: float = 0.2,
                 label: str = "", unit: str = "B"):
        self.stream, self.interval, self.label, self.unit = stream, interval, label, unit
        self.total_files, self.total_bytes = total_files, total_bytes
        self.files = self.nbytes = 0
        self.start = self.last = time.monotonic()
        self.width = 0
        self._draw()

    def advance(self, nbytes: int) -> None:
        self.files += self.total_files is not None
        self.nbytes += nbytes
        now = time.monotonic()
        if now - self.last >= self.interval or self.files == self.total_files or self.nbytes >= self.total_bytes:
            self.last = now
            self._draw()

    def _draw(self) -> None:
        elapsed = time.monotonic() - self.start
        rate = self.nbytes / elapsed if elapsed > 0 and self.nbytes else 0.0
        eta = "?" if not rate else _clock((self.total_bytes - self.nbytes) / rate)
        done = self.label if self.total_files is None else f"{self.files}/{self.total_files} files"
        if self.unit == "B":
            line = (f"{done}  {self.nbytes / 1e6:.1f}/{self.total_bytes / 1e6:.1f} MB"
                    f"  {rate / 1e6:.1f} MB/s  ETA {eta}")
        else:
            line = f"{done}  {self.nbytes}/{self.total_bytes} {self.unit}s  {rate:.1f} {self.unit}s/s  ETA {eta}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def close(self) -> None:
        self.stream.write("\r" + " " * self.width + "\r")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"
