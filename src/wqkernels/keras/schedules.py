"""When a :class:`~wqkernels.keras.PruningCallback` recomputes its masks, and to which sparsity.

Steps are optimizer iterations (``model.optimizer.iterations``: the number of training batches
applied so far), so a schedule continues where it stopped when a saved model is fitted again.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from .._checks import check_fraction, check_int

#: the schedules :class:`PruningSchedule` knows
SCHEDULES = ("polynomial", "constant")


@dataclass(frozen=True)
class PruningSchedule:
    """Sparsity as a function of the training step, with masks recomputed every `frequency` steps.

    Masks are recomputed at ``begin + k * frequency`` (k = 0, 1, ...) up to `end`, and at `end`
    itself; after `end` they stay as they are (`end` None: never).  Between two updates the
    sparsity is the one of the last update; before `begin` nothing is pruned.

    Parameters
    ----------
    kind : {"polynomial", "constant"}
        ``"polynomial"``: from `initial` at `begin` to `final` at `end`, as TensorFlow Model
        Optimization's ``PolynomialDecay``: ``final + (initial - final) * (1 - p) ** power``
        with ``p = (step - begin) / (end - begin)``.  ``"constant"``: `final` from `begin` on.
    final : float
        The sparsity reached, in [0, 1].
    begin, end : int
        Steps; `end` >= `begin` (> for "polynomial"), or None for a constant schedule that
        never stops recomputing.
    frequency : int
        Steps between two mask updates, >= 1.
    initial : float
        The polynomial's sparsity at `begin`, in [0, `final`].
    power : float
        The polynomial's exponent, > 0.

    Examples
    --------
    >>> from wqkernels.keras.schedules import PruningSchedule
    >>> s = PruningSchedule("polynomial", 0.9, begin=0, end=1000, frequency=100)
    >>> s.last_update(250), round(s.sparsity_at(250), 4), s.sparsity_at(1200)
    (200, 0.4392, 0.9)
    >>> s.last_update(-1) is None
    True
    """

    kind: str
    final: float
    begin: int
    end: int | None
    frequency: int = 100
    initial: float = 0.0
    power: float = 3.0

    def __post_init__(self):
        set_ = object.__setattr__
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {self.kind!r}")
        set_(self, "final", check_fraction(self.final, "sparsity"))
        set_(self, "initial", check_fraction(self.initial, "initial_sparsity"))
        if self.initial > self.final:
            raise ValueError(f"initial_sparsity must be <= sparsity, got {self.initial} > {self.final}")
        set_(self, "power", check_power(self.power))
        set_(self, "frequency", check_int(self.frequency, "frequency", 1))
        set_(self, "begin", check_int(self.begin, "begin_step", 0))
        if self.kind == "polynomial" and self.end is None:
            raise ValueError("the polynomial schedule needs an end_step")
        check_steps(self.kind, self.begin, self.end)

    def last_update(self, step: int) -> int | None:
        """The last step <= `step` at which the masks are recomputed (None before `begin`)."""
        if step < self.begin:
            return None
        if self.end is not None and step >= self.end:
            return self.end
        return self.begin + (step - self.begin) // self.frequency * self.frequency

    def sparsity_at(self, step: int) -> float:
        """The sparsity in force after `step` steps (0 before `begin`)."""
        update = self.last_update(step)
        if update is None:
            return 0.0
        if self.kind == "constant" or update == self.end:
            return self.final
        progress = (update - self.begin) / (self.end - self.begin)
        return self.initial + (self.final - self.initial) * (1.0 - (1.0 - progress) ** self.power)


def check_power(power) -> float:
    """The polynomial's exponent: a real number > 0."""
    if isinstance(power, bool) or not isinstance(power, numbers.Real):
        raise TypeError(f"power must be a real number, got {power!r}")
    if not (math.isfinite(power) and power > 0):
        raise ValueError(f"power must be a positive number, got {power!r}")
    return float(power)


def check_steps(kind: str, begin: int | None, end: int | None) -> None:
    """begin_step and end_step (either may be None = not known yet): integers >= 0, and a
    schedule that does not end before it begins (a polynomial needs end > begin)."""
    if begin is not None:
        check_int(begin, "begin_step", 0)
    if end is not None:
        check_int(end, "end_step", 0)
    if begin is None or end is None:
        return
    if kind == "polynomial" and end <= begin:
        raise ValueError(f"end_step must be > begin_step for the polynomial schedule, got "
                         f"begin_step={begin} and end_step={end}")
    if end < begin:
        raise ValueError(f"end_step must be >= begin_step, got begin_step={begin} and end_step={end}")
