"""What became of a batch: one :class:`Outcome` per planned file, the :class:`BatchResult` of all."""
from __future__ import annotations

from dataclasses import dataclass

from .._text import megabytes, note_lines, printable, table
from ..files.report import Report
from .plan import Job, file_size

__all__ = ["Outcome", "BatchResult"]


@dataclass
class Outcome:
    """What became of one job: ``ok``, ``failed``, ``skipped`` or ``not done`` (interrupted)."""

    job: Job
    status: str
    report: Report | None = None
    error: str | None = None

    @property
    def size_after(self) -> int:
        if self.report is not None:
            return self.report.size_after
        return file_size(self.job.destination) if self.status == "ok" else 0

    def to_dict(self) -> dict:
        return {"source": self.job.source, "destination": self.job.destination, "status": self.status,
                "error": self.error, "size_before": self.job.size, "size_after": self.size_after,
                "report": None if self.report is None else self.report.to_dict()}


class BatchResult(list):
    """The reports of the files rewritten (in the order planned), with every file's outcome.

    Attributes
    ----------
    outcomes : list of Outcome
        One per planned file, in the order planned.
    seconds : float
        Wall time of the batch.
    interrupted : bool
        The batch was stopped (Ctrl-C, SIGTERM) before every file was done.
    notes : list of str
        Things worth knowing (leftover temporary files removed, ...).
    """

    def __init__(self, outcomes: list, seconds: float = 0.0, interrupted: bool = False, notes=()):
        super().__init__(o.report for o in outcomes if o.status == "ok" and o.report is not None)
        self.outcomes = list(outcomes)
        self.seconds = seconds
        self.interrupted = interrupted
        self.notes = list(notes)

    def _with(self, status: str) -> list:
        return [o for o in self.outcomes if o.status == status]

    @property
    def ok(self) -> list:
        return self._with("ok")

    @property
    def failed(self) -> list:
        return self._with("failed")

    @property
    def skipped(self) -> list:
        return self._with("skipped")

    @property
    def not_done(self) -> list:
        return self._with("not done")

    def totals(self) -> dict:
        ok = self.ok
        before = sum(o.job.size for o in ok)
        after = sum(o.size_after for o in ok)
        return {"files": len(self.outcomes), "ok": len(ok), "failed": len(self.failed),
                "skipped": len(self.skipped), "not_done": len(self.not_done), "bytes_in": before,
                "bytes_out": after, "ratio": before / after if after else None, "seconds": self.seconds,
                "interrupted": self.interrupted}

    def to_dict(self) -> dict:
        """Every file's outcome and report, and the totals: JSON-ready."""
        return {"totals": self.totals(), "notes": list(self.notes),
                "files": [o.to_dict() for o in self.outcomes]}

    def summary(self, files: bool = True) -> str:
        """A table of the files (unless `files` is false: then failed ones only) and the totals."""
        head = ("status", "source", "destination", "before", "after", "ratio", "seconds")
        rows = []
        for o in self.outcomes:
            if not files and o.status != "failed":
                continue
            if o.status == "ok":
                after = o.size_after
                rows.append((o.status, o.job.source, o.job.destination, megabytes(o.job.size), megabytes(after),
                             f"{o.job.size / after:.2f}" if after else "-",
                             f"{o.report.seconds:.2f}" if o.report is not None else "-"))
            else:
                rows.append((o.status, o.job.source, o.job.destination, megabytes(o.job.size), "-", "-", "-"))
        lines = table(head, rows) if rows else []
        lines.extend(printable(f"failed: {o.error}") for o in self.failed)  # (names escaped: one line each)
        t = self.totals()
        ratio = f"ratio {t['ratio']:.2f}, " if t["ratio"] else ""
        rate = t["bytes_in"] / self.seconds / 1e6 if self.seconds > 0 else 0.0
        lines.append(f"files: {t['ok']} ok, {t['failed']} failed, {t['skipped']} skipped"
                     + (f", {t['not_done']} not done (interrupted)" if self.interrupted else "")
                     + f" of {t['files']}; {megabytes(t['bytes_in'])} -> {megabytes(t['bytes_out'])}, "
                     f"{ratio}{self.seconds:.1f} s ({rate:.1f} MB/s)")
        lines.extend(note_lines(self.notes))
        return "\n".join(lines)
