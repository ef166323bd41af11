"""Keras 3 integration (the ``keras`` extra): calibrated compression of model files.

:func:`calibrate` runs a model file's float model on sample inputs and compresses its kernels
layer by layer; :func:`rewrite_calibrated` writes the file with the result.  Nothing here
imports Keras until one of them is used.
"""
import importlib

#: the public names and the modules that define them
_EXPORTS = {"calibrate": ".calibration", "rewrite_calibrated": ".calibration", "Calibration": ".calibration",
            "load_samples": ".calibration"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
