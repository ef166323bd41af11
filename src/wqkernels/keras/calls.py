"""A live model's layers, nested ones included, and their calls seen as the model runs."""
from __future__ import annotations

import contextlib


def sublayers(op) -> list:
    """Every layer inside `op` (nested models' and wrappers' layers too), `op` itself not."""
    flatten = getattr(op, "_flatten_layers", None)
    return list(flatten(include_self=False, recursive=True)) if flatten is not None else []


@contextlib.contextmanager
def intercepted(layers: list, record):
    """Calls of `layers` reported to ``record(layer, args, kwargs)`` before they run."""
    saved = []
    for layer in layers:
        own = layer.__dict__.get("call")
        original = layer.call

        def call(*args, _layer=layer, _original=original, **kwargs):
            record(_layer, args, kwargs)
            return _original(*args, **kwargs)

        saved.append((layer, own))
        layer.call = call
    try:
        yield
    finally:
        for layer, own in saved:
            if own is None:
                del layer.call
            else:
                layer.call = own
