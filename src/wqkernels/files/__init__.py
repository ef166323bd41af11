"""Keras weight files: inspect, load and rewrite .h5, .weights.h5 and .keras without TensorFlow.

The modules, in the order a rewrite uses them:

- :mod:`.errors` the layer's one error; :mod:`.h5tree` strict HDF5 walking and exact copying;
- :mod:`.layouts` and :mod:`.roles`: which layout a file has, and what each weight is (layer,
  class, role, channel axis), from the model config or from names;
- :mod:`.source`: an open file; :mod:`.recipe`: what to do; :mod:`.plan`: what will be done;
- :mod:`.transform`: one weight pruned and quantized in one buffer (:mod:`.buffers`);
- :mod:`.writers`: one writer per storage (float in :mod:`.writers`, packed in :mod:`.packed`);
- :mod:`.report`: what was done; :mod:`.atomic`: outputs renamed into place only when whole;
- :mod:`.rewrite`: the public functions that tie them together.
"""
from .errors import KerasFileError
from .recipe import Recipe
from .report import Report, WeightInfo
from .rewrite import inspect, load_weights, restore, rewrite
from .transform import Grid

__all__ = ["inspect", "load_weights", "rewrite", "restore", "Recipe", "Report", "WeightInfo",
           "KerasFileError", "Grid"]
