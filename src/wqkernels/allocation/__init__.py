"""Allocation across a model's tensors: how much to prune each (:mod:`.lamp`), how many bits each
needs and which scale search each bit width uses (:mod:`.bits`)."""
from .bits import BIT_WIDTHS, bits_for_sqnr, default_method
from .lamp import (ALLOCATIONS, DEFAULT_MIN_SIZE, UNIFORM_MIN_SIZE, SparsityWarning, count_fraction,
                   default_min_size, lamp_scores, prune_counts, prune_model)

__all__ = ["DEFAULT_MIN_SIZE", "UNIFORM_MIN_SIZE", "ALLOCATIONS", "BIT_WIDTHS", "SparsityWarning",
           "default_method", "default_min_size", "prune_model", "prune_counts", "count_fraction",
           "bits_for_sqnr", "lamp_scores"]
