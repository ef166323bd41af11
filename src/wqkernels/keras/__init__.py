"""Keras 3 integration (the ``keras`` extra): :class:`PruningCallback` prunes while a model trains.

``import wqkernels`` never imports Keras; this subpackage does, with whatever backend Keras is
configured for (``KERAS_BACKEND``: jax, torch or tensorflow).
"""
try:
    import keras
except ModuleNotFoundError as exc:
    raise ImportError(f"wqkernels.keras needs Keras 3 and a backend: pip install 'wqkernels[keras]' ({exc})") from None
if int(keras.__version__.split(".")[0]) < 3:
    raise ImportError(f"wqkernels.keras needs Keras 3 (pip install 'wqkernels[keras]'), found keras {keras.__version__}")

from .callback import PruningCallback  # noqa: E402
from .schedules import PruningSchedule  # noqa: E402

__all__ = ["PruningCallback", "PruningSchedule"]
