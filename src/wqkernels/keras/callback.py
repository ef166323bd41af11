"""Pruning while a Keras 3 model trains: :class:`PruningCallback`, on any backend."""
from __future__ import annotations

import math

import keras
import numpy as np

from .. import Recipe
from .._checks import check_fraction, check_int
from .schedules import SCHEDULES, PruningSchedule, check_power, check_steps
from .weights import keep_masks, prunable_weights

__all__ = ["PruningCallback", "RAMP"]

#: The default polynomial schedule reaches its final sparsity after this fraction of the fit, and
#: the rest of the fit trains the final masks: fine-tuning digits CNNs 10 epochs to 0.9 (Adam 1e-3,
#: cosine), ending at 70 % of the fit kept 99.44 / 98.15 % where ending at its last step kept
#: 98.89 / 97.59 % (two seeds, float 99.81 / 98.70 %; benchmarks/FIDELITY_CALLBACK.md).
RAMP = 0.7


class PruningCallback(keras.callbacks.Callback):
    """Prune a model's kernels while it trains, to an exact sparsity or an N:M pattern.

    Sparsity means what it means for ``wqkernels rewrite``: a fraction of all the prunable
    weights of the model (the kernels of Dense, EinsumDense, Conv*, DepthwiseConv,
    SeparableConv, RNN cells and Embedding layers, found as the file layer finds them),
    allocated by the global LAMP criterion (or uniformly), small tensors dense by the same
    defaults; or ``"N:M"`` along the input axis.  When the schedule is over, exactly
    ``floor(sparsity * total)`` of those weights are zero, and ``model.save`` writes a plain
    Keras model (no wrapper layers to strip).

    The masks are recomputed every `frequency` steps from the weights, with the package's
    kernels on NumPy copies (the only time weights leave the device), and applied with
    ``keras.ops`` after every optimizer step (when the next batch begins), before validation and
    at the end of every epoch and of training: every forward pass, validation, the epoch-end
    callbacks listed after this one (``ModelCheckpoint``) and the saved model see pruned weights
    exactly zero.  A weight once pruned stays pruned: the masks are computed on the masked
    weights, whose zeros go first.

    Parameters
    ----------
    sparsity : float or str
        The final sparsity, in [0, 1], or ``"N:M"`` (e.g. ``"2:4"``).
    schedule : {"polynomial", "constant"}, optional
        ``"polynomial"`` (the default): from `initial_sparsity` at `begin_step` to `sparsity`
        at `end_step` with a cubic decay, as TensorFlow Model Optimization's
        ``PolynomialDecay``; for N:M, the fraction of each tensor's runs of M in the pattern
        rises so from 0 to 1, the runs whose dropped weights weigh least first.
        ``"constant"``: `sparsity` (every run in the N:M pattern) from `begin_step` on.
    initial_sparsity : float
        The polynomial schedule's sparsity at `begin_step`, at most `sparsity` (for N:M, its
        fraction of runs in the pattern).
    begin_step, end_step : int, optional
        Optimizer iterations (``model.optimizer.iterations``) where pruning starts and where
        the masks stop changing.  Defaults from the fit (``self.params["epochs"]`` epochs of
        ``self.params["steps"]`` steps, counting from ``initial_epoch``), fixed the first time
        the callback is used: begin at its first step; end at :data:`RAMP` (70 %) of it for the
        polynomial schedule, so the last 30 % trains the final masks, and at its last step for
        the constant one.  A model saved mid-schedule and fitted again continues from its
        optimizer's iteration count.
    frequency : int
        Steps between two mask updates (and one at `end_step`).
    power : float
        The polynomial's exponent.
    allocation : {"global", "uniform"}
        How a fractional sparsity is spread over the tensors, as for ``rewrite``.
    min_size : int, optional
        Tensors with fewer weights stay dense (they still count in the total).  Default:
        :func:`wqkernels.allocation.default_min_size` (256 global, 1024 uniform and N:M).

    Attributes
    ----------
    schedule : PruningSchedule or None
        The schedule in use, once a fit has started.
    step : int
        The optimizer iteration the masks are at.

    Raises
    ------
    ValueError
        A sparsity outside [0, 1] or a bad ``"N:M"``; an unknown schedule or allocation; a
        schedule that ends before it begins (at construction, or when the fit starts for the
        defaults); a model without prunable weights (when the fit starts).

    Notes
    -----
    The optimizer's moments of pruned weights are left as they are: a pruned weight is zeroed
    after every step, so it is zero in every forward pass whatever its moments, and since the
    masks only grow it is never revived.  Element-wise optimizers (SGD, Adam, RMSprop...) update
    the kept weights exactly as if the pruned ones were absent; a global-norm gradient clip
    counts their gradients.  Callbacks acting at the end of a batch (``ModelCheckpoint`` with
    ``save_freq`` in batches) see the last step's update of the pruned weights, not zeros; with
    ``steps_per_execution > 1`` the masks are applied between executions.

    Examples
    --------
    >>> from wqkernels.keras import PruningCallback
    >>> model.fit(x, y, epochs=10, callbacks=[PruningCallback(sparsity=0.9)])  # doctest: +SKIP
    >>> model.save("pruned.keras")  # doctest: +SKIP
    >>> PruningCallback(sparsity="2:4").schedule_kind
    'polynomial'
    >>> PruningCallback(sparsity=1.5)
    Traceback (most recent call last):
    ...
    ValueError: sparsity must be between 0 and 1, got 1.5
    """

    def __init__(self, sparsity, *, schedule: str | None = None, initial_sparsity: float = 0.0,
                 begin_step: int | None = None, end_step: int | None = None, frequency: int = 100,
                 power: float = 3, allocation: str = "global", min_size: int | None = None):
        super().__init__()
        if sparsity is None:
            raise TypeError("sparsity must be a fraction in [0, 1] or 'N:M', got None")
        recipe = Recipe(sparsity=sparsity, allocation=allocation, min_size=min_size)  # rewrite's checks
        self.n_m = recipe.n_m
        self.sparsity = recipe.sparsity
        self.allocation, self.min_size = recipe.allocation, recipe.min_size
        if schedule is None:
            schedule = "polynomial"
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(map(repr, SCHEDULES))}, got {schedule!r}")
        self.schedule_kind = schedule
        self.initial_sparsity = check_fraction(initial_sparsity, "initial_sparsity")
        if schedule == "constant" and self.initial_sparsity != 0:
            raise ValueError(f"initial_sparsity applies to the polynomial schedule, got {initial_sparsity!r} "
                             "with schedule='constant'")
        if self.initial_sparsity > self._final:
            raise ValueError(f"initial_sparsity must be <= sparsity, got {initial_sparsity!r} > {sparsity!r}")
        self.power, self.frequency = check_power(power), check_int(frequency, "frequency", 1)
        check_steps(schedule, begin_step, end_step)
        self.begin_step, self.end_step = begin_step, end_step
        self.schedule: PruningSchedule | None = None
        self.step = 0
        self._kernels = {}
        self._masks, self._device = {}, ([], [], [])
        self._started = False
        self._epoch_start = 0

    @property
    def _final(self) -> float:
        """What the schedule reaches: the sparsity, or for N:M every run in the pattern."""
        return 1.0 if self.n_m else self.sparsity

    # ---- Keras hooks ----------------------------------------------------------------------
    # The masks are applied when a batch begins (right after the previous optimizer step), not
    # when it ends: a callback overriding on_train_batch_end makes Keras wait for every step's
    # logs instead of dispatching the callbacks asynchronously, which costs more than the
    # masking itself (benchmarks/test_bench_callback.py).  Validation, the epoch's end and the end of
    # training see the weights after the last step, so the masks are applied there too.

    def on_train_begin(self, logs=None):
        model = self.model
        self._kernels = {k.path: k for k in prunable_weights(model)}
        if not self._kernels:
            raise ValueError(f"model {model.name!r} has no prunable weights (kernels of Dense, EinsumDense, "
                             "Conv, DepthwiseConv, SeparableConv, RNN or Embedding layers)")
        self.step = self._iterations()
        self._set_masks({})
        self._started = False
        if self.schedule is None and self.params.get("steps") is None and self.end_step is None \
                and self.schedule_kind == "polynomial":
            raise ValueError("the fit does not know its steps per epoch, so the polynomial schedule cannot "
                             "end with it: give end_step")

    def on_epoch_begin(self, epoch, logs=None):
        if not self._started:  # before the fit's first step: its schedule, and the masks in force
            if self.schedule is None:
                self.schedule = self._fit_schedule(epoch)
            self._started = True
            self._update()
        self._epoch_start = self.step

    def on_train_batch_begin(self, batch, logs=None):
        self._advance(self._epoch_start + batch)  # batch: the steps this epoch has run

    def on_test_begin(self, logs=None):
        if self._started:  # validation during the fit
            self._advance(self._iterations())

    def on_epoch_end(self, epoch, logs=None):
        if self._started:
            self._advance(self._iterations())

    def on_train_end(self, logs=None):
        if self._started:  # also after the optimizer replaced the weights (use_ema)
            self._advance(self._iterations())
        self._started = False

    # ---- masks ----------------------------------------------------------------------------

    def _iterations(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _advance(self, step: int) -> None:
        """Bring the masks to `step` (recomputed when an update falls on the way) and apply them."""
        before, self.step = self.step, step
        if self.schedule.last_update(step) != self.schedule.last_update(before):
            self._update()
        else:
            self._apply()

    def _fit_schedule(self, epoch: int) -> PruningSchedule:
        """The schedule with its default steps taken from the fit that starts at `epoch`."""
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        start = max(self.step - epoch * steps, 0) if steps else self.step
        ramp = RAMP if self.schedule_kind == "polynomial" else 1.0
        begin = start if self.begin_step is None else self.begin_step
        end = start + math.ceil(ramp * epochs * steps) if steps else None
        end = end if self.end_step is None else self.end_step
        try:
            return PruningSchedule(self.schedule_kind, self._final, begin, end,
                                   self.frequency, self.initial_sparsity, self.power)
        except ValueError as exc:
            fit_end = start + epochs * steps if steps else "?"
            raise ValueError(f"{exc} (this fit runs from step {start} to {fit_end})") from None

    def _update(self) -> None:
        """Recompute the masks for the current step from the masked weights, and apply them."""
        self.model  # with JAX, brings the training state back into the variables
        sparsity = self.schedule.sparsity_at(self.step)  # for N:M, the fraction of runs in the pattern
        if self.schedule.last_update(self.step) is None or sparsity == 0:
            self._set_masks({})
            return
        values = {}
        for path, kernel in self._kernels.items():
            x = keras.ops.convert_to_numpy(kernel.variable.value)
            if path in self._masks:
                x = np.where(self._masks[path], x, np.zeros((), x.dtype))
            values[path] = x
        if self.n_m:
            masks = keep_masks(values, self._kernels, None, self.n_m, runs=sparsity, min_size=self.min_size)
        else:
            masks = keep_masks(values, self._kernels, sparsity, None, allocation=self.allocation,
                               min_size=self.min_size)
        self._set_masks(masks)
        self._apply()

    def _set_masks(self, masks: dict) -> None:
        """The masks (path -> NumPy bool, True = kept), and their copies on the device."""
        self._masks = masks
        variables = [self._kernels[path].variable for path in masks]
        self._device = (variables, [keras.ops.convert_to_tensor(mask) for mask in masks.values()],
                        [keras.ops.zeros((), v.dtype) for v in variables])

    def _apply(self) -> None:
        """Zero the pruned weights, on the device."""
        variables, masks, zeros = self._device
        if variables:
            self.model  # with JAX, brings the training state back into the variables
            for variable, value in zip(variables, _masked([v.value for v in variables], masks, zeros)):
                variable.assign(value)


def _masked(values: list, masks: list, zeros: list) -> list:
    """Each value with the weights its mask drops set to +0.0."""
    return [keras.ops.where(mask, value, zero) for value, mask, zero in zip(values, masks, zeros)]


if keras.backend.backend() == "jax":  # one compiled call instead of one dispatch per tensor
    import jax

    _masked = jax.jit(_masked)
