"""Keras weight files: inspect, load and rewrite .h5, .weights.h5 and .keras without TensorFlow."""
from .h5tree import KerasFileError
from .recipe import Recipe
from .report import Report, WeightInfo
from .rewrite import inspect, load_weights, restore, rewrite

__all__ = ["inspect", "load_weights", "rewrite", "restore", "Recipe", "Report", "WeightInfo",
           "KerasFileError"]
