"""Allocation across a model's tensors: how much to prune each (:mod:`.lamp`), how many bits each
needs, and the quantization defaults: grid, scale search and rounding (:mod:`.bits`)."""
from .bits import (BIT_WIDTHS, DEFAULT_ROUNDING, DEFAULT_SYMMETRIC, NARROW_EXTRA_BITS, NARROW_FAN_IN,
                   bits_for_sqnr, channel_bits, default_method, default_rounding)
from .lamp import (ALLOCATIONS, DEFAULT_MIN_SIZE, UNIFORM_MIN_SIZE, SparsityWarning, count_fraction,
                   default_min_size, lamp_scores, prune_counts, prune_model)

__all__ = ["DEFAULT_MIN_SIZE", "UNIFORM_MIN_SIZE", "ALLOCATIONS", "BIT_WIDTHS", "DEFAULT_SYMMETRIC",
           "DEFAULT_ROUNDING", "NARROW_FAN_IN", "NARROW_EXTRA_BITS", "SparsityWarning",
           "default_method", "default_rounding", "channel_bits", "default_min_size",
           "prune_model", "prune_counts", "count_fraction", "bits_for_sqnr", "lamp_scores"]
