"""What a rewrite will do before anything is written: which weights it rewrites, how many
weights of each it zeroes, and what it leaves out."""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..allocation import NARROW_FAN_IN, default_min_size, prune_counts
from .._text import listing, megabytes
from .buffers import Buffers
from .errors import KerasFileError
from .recipe import Recipe
from .source import Source

__all__ = ["Plan", "plan", "skipped", "planned_reads", "NOTHING_REWRITTEN"]

#: the start of the note of a rewrite that changes no weight (the command line also prints it on
#: stderr): not an error, since stripping the optimizer or copying can be all that is wanted
NOTHING_REWRITTEN = "nothing rewritten: "


@dataclass
class Plan:
    """The work of one rewrite, decided from the source and the recipe."""

    selected: list            # the entries the recipe rewrites, in file order
    counts: dict              # path -> how many weights magnitude pruning zeroes
    skip: frozenset           # paths left out with everything below them (a stripped optimizer)
    notes: list = field(default_factory=list)


def plan(source: Source, recipe: Recipe, buffers: Buffers, advance=None) -> Plan:
    """Plan the rewrite of `source`; pruning counts read the weights one tensor at a time
    (``advance(nbytes)``, when given, is called after each read: a progress bar's)."""
    notes = []
    selected = [e for e in source.entries if recipe.selects(e)]
    if not recipe.changes:
        selected = []
    counts = {}
    if recipe.prunes and selected:
        def read(e):
            x = source.read(e, buffers)
            if advance is not None:
                advance(source.stored_bytes(e))
            return x
        try:
            counts = _prune_counts(read, _candidates(source, recipe), recipe, notes)
        except ValueError as exc:  # NaN or infinity in a weight: say which, as the rewrite does
            text = re.sub(r"^tensors\[('.*?')\] ", r"weight \1: ", str(exc))
            raise KerasFileError(f"{source.path}: {text}") from None
    skip = skipped(source, recipe)
    if skip:
        notes.append("optimizer state removed" + (
            " and the compile config with it (Keras would compile the model and expect the optimizer's "
            "variables): the model loads uncompiled" if strips_compile_config(source, recipe) else ""))
    elif selected:
        notes.extend(_kept_optimizer(source))
    notes.extend(_narrow_kernels(selected, recipe))
    if not selected and source.packed is None:  # (a packed source is restored at least)
        notes.append(NOTHING_REWRITTEN + _why_nothing(source, recipe))
    if source.role_source != "config":
        notes.append(f"roles from {source.role_source}: layer classes guessed from group and "
                     f"dataset names" + ("; float tensors of 2 or more axes in layers no name identifies "
                                         "are taken for kernels, channels last (--exclude keeps them)"
                                         if "shape" in source.role_source else ""))
    return Plan(selected, counts, skip, notes)


def _narrow_kernels(selected: list, recipe: Recipe) -> list:
    """A note naming the kernels that get more bits than --bits (the narrow rule): without it, a
    small model of narrow kernels summed up as 6.00 bits/weight at --bits 4 said nothing of why."""
    if recipe.bits is None:
        return []
    wider = [e for e in selected if recipe.bits_for(e) > recipe.bits]
    if not wider:
        return []
    widths = "/".join(str(b) for b in sorted({recipe.bits_for(e) for e in wider}))
    return [f"{len(wider)} narrow kernel{'s' if len(wider) != 1 else ''} (at most {NARROW_FAN_IN} weights per "
            f"output channel) at {widths} bits, not {recipe.bits}: {listing(e.layer_name or e.path for e in wider)}; "
            f"--narrow-bits 0 keeps them at {recipe.bits}"]


def _why_nothing(source: Source, recipe: Recipe) -> str:
    """Why a rewrite selects no weight, in the words of the command line."""
    if not recipe.changes:
        return "the recipe changes no weight (no --bits, --target-sqnr, --sparsity, --storage or --compress)"
    prunable = [e for e in source.entries if e.prunable]
    if not prunable:
        return "the file has no prunable weights (kernels)"
    matched = [e for e in prunable if recipe.selects(e, by_size=False)]
    if not matched:
        return f"no prunable weight matches --include/--exclude ({len(prunable)} prunable; see wqkernels inspect)"
    return f"every prunable weight is under --min-size {recipe.min_size}"


#: the group of the optimizer's state, by layout
OPTIMIZER = {"keras3": "optimizer", "legacy": "optimizer_weights"}

#: the share of a file's stored bytes from which a rewrite that keeps the optimizer's state says so
OPTIMIZER_SHARE = 0.1


def skipped(source: Source, recipe: Recipe) -> frozenset:
    """The paths a rewrite leaves out with everything below them (a stripped optimizer)."""
    optimizer = OPTIMIZER.get(source.layout)
    if recipe.strip_optimizer and optimizer is not None and optimizer in source.root:
        return frozenset({optimizer})
    return frozenset()


def _kept_optimizer(source: Source) -> list:
    """A note when the optimizer's state, which the rewrite copies as it is, is a large part of
    the file: a model saved after training often holds two moments per weight, twice the weights."""
    optimizer = OPTIMIZER.get(source.layout)
    if optimizer is None:
        return []
    stored = {path: info.stored for path, info in source.members.items() if info is not None}
    state = sum(n for path, n in stored.items() if path.startswith(optimizer + "/"))
    total = sum(stored.values())
    if not total or state < OPTIMIZER_SHARE * total:
        return []
    return [f"optimizer state kept as it is: {megabytes(state)}, {state / total:.0%} of the file's data; "
            "--strip-optimizer drops it when the model is only to run"]


def strips_compile_config(source: Source, recipe: Recipe) -> bool:
    """Whether the rewrite also leaves out the archive's compile config: a stripped optimizer
    that Keras would otherwise build on load, then warn that its saved variables are missing."""
    return (recipe.strip_optimizer and source.kind == "zip" and isinstance(source.config, dict)
            and source.config.get("compile_config") is not None and bool(skipped(source, recipe)))


def planned_reads(source: Source, recipe: Recipe) -> int:
    """How many stored bytes :func:`plan` reads: each weight the pruning counts need once, and
    under global allocation the tensors it spreads zeros over once more (its second pass; see
    :func:`~wqkernels.allocation.prune_counts`)."""
    if not (recipe.changes and recipe.prunes and recipe.n_m is None and any(map(recipe.selects, source.entries))):
        return 0
    candidates = _candidates(source, recipe)
    total = sum(source.stored_bytes(e) for e in candidates)
    if recipe.allocation == "global":
        least = max(default_min_size(recipe.allocation) if recipe.min_size is None else recipe.min_size, 1)
        total += sum(source.stored_bytes(e) for e in candidates if math.prod(e.shape) >= least)
    return total


def _candidates(source: Source, recipe: Recipe) -> list:
    """The weights magnitude pruning spreads its zeros over: whatever their size (those under
    min_size stay dense but count in the total)."""
    return [e for e in source.entries if recipe.selects(e, by_size=False)]


def _prune_counts(read, entries: list, recipe: Recipe, notes: list) -> dict:
    """How many weights of each entry magnitude pruning zeroes: `recipe.sparsity` of all of
    them, allocated by :func:`wqkernels.allocation.prune_counts`; ``read(entry)`` is called for
    one tensor at a time, so a model larger than memory can be pruned.  Empty for N:M patterns,
    which need no plan.

    Tensors under the recipe's min_size (default: the allocation's own) stay dense, but count
    in the total that `sparsity` is a fraction of.  Warnings (an unreachable sparsity) are
    appended to `notes` instead of being printed.
    """
    if recipe.n_m is not None:
        return {}
    tensors = {e.path: _OnRequest(read, e) for e in entries}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        counts = prune_counts(tensors, recipe.sparsity, allocation=recipe.allocation, min_size=recipe.min_size)
    notes.extend(str(w.message) for w in caught)
    return counts


class _OnRequest:
    """A weight of the file, read when NumPy converts it (and not kept)."""

    def __init__(self, read, entry):
        self.read, self.entry, self.shape = read, entry, entry.shape

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.read(self.entry), dtype=dtype)
