"""Keras 3 integration (the ``keras`` extra): :class:`PruningCallback` prunes while a model
trains; :func:`calibrate` runs a model file's float model on sample inputs and compresses its
kernels layer by layer, and :func:`rewrite_calibrated` writes the file with the result;
:func:`synthesize` makes calibration samples without data from a model's BatchNorm statistics.

``import wqkernels`` never imports Keras; this subpackage does, with whatever backend Keras is
configured for (``KERAS_BACKEND``: jax, torch or tensorflow).  The calibration's module is
imported when one of its names is first used.
"""
import importlib

try:
    import keras
except ModuleNotFoundError as exc:
    raise ImportError(f"wqkernels.keras needs Keras 3 and a backend: pip install 'wqkernels[keras]' ({exc})") from None
if int(keras.__version__.split(".")[0]) < 3:
    raise ImportError(f"wqkernels.keras needs Keras 3 (pip install 'wqkernels[keras]'), found keras {keras.__version__}")

from .callback import PruningCallback  # noqa: E402
from .schedules import PruningSchedule  # noqa: E402

#: the names defined on first use and the modules that define them
_LAZY = {"calibrate": ".calibration", "rewrite_calibrated": ".calibration", "Calibration": ".calibration",
         "load_samples": ".calibration", "Synthetic": ".synthetic", "synthesize": ".synthetic"}

__all__ = ["PruningCallback", "PruningSchedule", *sorted(_LAZY)]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name], __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
