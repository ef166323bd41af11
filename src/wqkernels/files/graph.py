"""The layer graph of a model config, and the data-free BatchNorm correction a rewrite plans from it.

:func:`graph` reads which layers feed which from a Sequential or functional config (Keras 3's
``keras_history`` or Keras 2's nested ``inbound_nodes`` lists).  :func:`input_moments` follows a
layer's input back to a BatchNormalization through the layers whose statistics it knows:

* BatchNormalization (channels last): ``N(beta, gamma^2)`` per channel;
* ReLU (plain or capped: ReLU6) and Activation("relu"/"relu6") of such a Gaussian:
  :func:`~wqkernels.correction.relu_moments`;
* Dropout layers and linear activations: unchanged at inference; Flatten (channels last): each
  channel repeated, as :func:`~wqkernels.correction.output_moments` tiles it; average pooling:
  the mean exactly (padding aside), the variance an upper bound;
* max pooling of a plain ReLU of such a Gaussian: the rectified max of the window's values taken
  as Gaussians of pairwise correlation :data:`~wqkernels.correction.POOL_CORRELATION`
  (:func:`~wqkernels.correction.max_relu_moments`); of anything else, and global max pooling,
  taken as mean-preserving (an underestimate: the max of a window is larger than its values'
  mean); no longer Gaussian;
* Add: the sum of the means and of the variances (the branches taken as independent);
  Concatenate on the channel axis: each branch's channels side by side;
* zero padding: taken as leaving the statistics as they are (as a convolution's own zero padding
  at the borders is ignored).

Anything else (an input, a layer with its own weights, a reshape) is not known,
and layers reading it are left alone.  :func:`corrections` gives, for a rewrite that prunes, the
new bias or following BatchNorm statistics of each layer whose input is known
(:func:`wqkernels.correction.correct_layer`), as values to write instead of the file's.

A Dense layer reading a flattened map of a plain ReLU of a BatchNormalization of a convolution
(stride 1, the map's shape known from the config) gets its inputs' covariance as well
(:func:`input_covariance`): neighbouring positions of that map share the convolution's inputs, and
their correlations make the Dense layer's output variance, and what pruning keeps of it, differ
from independent inputs' (measured on the benchmark's BN CNNs: the float output variance is 4-5
times the independent estimate; FIDELITY.md).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..correction import conv_covariance, correct_layer, max_relu_moments, relu_covariance, relu_moments
from .buffers import Buffers
from .layouts import Entry
from .recipe import Recipe
from .roles import _children, class_name, layer_name
from .transform import pruned

__all__ = ["Node", "graph", "owner", "input_moments", "input_covariance", "corrections"]


@dataclass(frozen=True)
class Node:
    """One layer of a model config: its class, its config and the layers it reads; `through`
    for a nested model's name, which stands for its output (what it reads passes on unchanged);
    `shape`, its input's shape when known (Keras 3's ``build_config``, or carried forward from
    the model's input shape: :func:`_with_shapes`)."""

    cls: str | None
    config: dict
    inputs: tuple
    through: bool = False
    shape: tuple | None = None  # the input's shape without the batch axis, when known


def graph(config: dict | None) -> dict:
    """{layer name: Node} of a model config, in config order; empty without one.

    Layers of a Sequential read the layer before; a functional model's layers read what their
    first inbound node names.  A nested model's layers are nodes of their own (its input layers
    read what the model reads; its name is a `through` node reading its single output layer),
    unless a name inside it repeats one outside it: then the model is one node whose statistics
    are unknown.
    """
    out = {}
    _add(config, (), out, 0)
    return _with_shapes(out)


#: nested models followed inside one another: real models nest two or three deep
_NESTING = 16


def _add(config, outer: tuple, out: dict, depth: int) -> str | None:
    """Add the layers of model `config` to `out`, its input layers reading `outer`; the name of
    its single output layer, or None."""
    layers = _children(config) if isinstance(config, dict) else None
    functional = any("inbound_nodes" in c for c in layers or [])
    entry = _io_names(config, "input_layers") if functional else []
    previous = outer
    for child in layers or []:
        name = layer_name(child)
        if name is None:
            continue
        inner = child.get("config") if isinstance(child.get("config"), dict) else {}
        if functional:
            nodes = child.get("inbound_nodes") or []
            inputs = tuple(_sources(nodes[0])) if isinstance(nodes, list) and nodes else ()
            if not inputs and name in entry and entry.index(name) < len(outer):
                inputs = (outer[entry.index(name)],)
        else:
            inputs = previous
        if _children(child) is not None and depth < _NESTING and not (_names(child) & (out.keys() | {name})):
            last = _add(child, inputs, out, depth + 1)
            out[name] = Node(class_name(child), inner, (last,) if last is not None else (), through=True)
        else:
            out[name] = Node(class_name(child), inner, inputs, shape=_input_shape(child))
        previous = (name,)
    if not functional:
        return previous[0] if previous is not outer else None
    ends = _io_names(config, "output_layers")
    return ends[0] if len(ends) == 1 else None


def _input_shape(layer: dict) -> tuple | None:
    """A layer's single input shape without the batch axis, from its ``build_config``, or None."""
    build = layer.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    if not isinstance(shape, list) or len(shape) < 2 or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape[1:]):
        return None
    return tuple(shape[1:])


def _with_shapes(nodes: dict) -> dict:
    """`nodes` with each single-input layer's input shape filled in where the config does not
    record it (legacy ``.h5`` configs, Keras 2's and Keras 3's, carry no ``build_config``): the
    model's input shapes carried forward, in config order, through the layers whose output shape
    follows from their config (:func:`_output_shape`); unknown past any other."""
    outputs, out = {}, {}
    for name, node in nodes.items():
        shapes = [outputs.get(s) for s in node.inputs]
        shape = node.shape or (shapes[0] if len(shapes) == 1 else None) or _declared(node.config)
        if _forwards(node):
            outputs[name] = shape
        else:
            outputs[name] = _output_shape(node.cls, node.config, [shape] if len(shapes) <= 1 else shapes)
        out[name] = node if node.shape is not None or shape is None or len(node.inputs) > 1 \
            else replace(node, shape=shape)
    return out


def _declared(cfg: dict) -> tuple | None:
    """The input shape a layer's config declares without the batch axis: an InputLayer's
    ``batch_shape`` (Keras 3) or ``batch_input_shape`` (Keras 2, also on a Sequential's first
    layer), or None."""
    for key in ("batch_shape", "batch_input_shape"):
        shape = cfg.get(key)
        if isinstance(shape, list) and len(shape) >= 2 and all(_positive(n) for n in shape[1:]):
            return tuple(shape[1:])
    return None


def _positive(n) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0

def _io_names(config: dict, key: str) -> list:
    """The layer names of a functional config's ``input_layers`` or ``output_layers`` (a list of
    ``[name, node, tensor]``, or one such triple)."""
    inner = config.get("config") if isinstance(config.get("config"), dict) else {}
    items = inner.get(key)
    if isinstance(items, list) and len(items) == 3 and isinstance(items[0], str):
        items = [items]
    return [i[0] for i in items if isinstance(i, list) and i and isinstance(i[0], str)] \
        if isinstance(items, list) else []


def _names(config: dict) -> set:
    """Every layer name inside a model config, at any depth."""
    found, stack = set(), list(_children(config) or [])
    while stack:
        child = stack.pop()
        name = layer_name(child)
        if name is not None:
            found.add(name)
        stack.extend(_children(child) or [])
    return found


def _sources(node) -> list:
    """The layer names an inbound node reads, in order (walked with a stack of its own: a hostile
    config may nest as deep as the JSON parser allows)."""
    found, stack = [], [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "__keras_tensor__":
                history = (item.get("config") or {}).get("keras_history") if isinstance(item.get("config"), dict) \
                    else None
                if isinstance(history, list) and history and isinstance(history[0], str):
                    found.append(history[0])
                continue
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
                found.append(item[0])  # Keras 2: [layer name, node index, tensor index, kwargs]
                continue
            stack.extend(reversed(item))
    return found


def consumers(nodes: dict) -> dict:
    """{layer name: names of the layers reading it}."""
    out = {name: [] for name in nodes}
    for name, node in nodes.items():
        for source in node.inputs:
            out.setdefault(source, []).append(name)
    return out


#: layers that leave each channel's statistics as they are at inference
_SAME = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout",
         "AlphaDropout", "Identity")
_AVERAGE = ("AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
            "GlobalAveragePooling2D", "GlobalAveragePooling3D")
_PADDING = ("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D")
_MAX = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
        "GlobalMaxPooling3D")


@dataclass(frozen=True)
class Moments:
    """Per-channel mean and variance of a layer's output; `gaussian` when normally distributed."""

    mean: np.ndarray
    var: np.ndarray
    gaussian: bool


def input_moments(nodes: dict, name: str, bn_weights, memo: dict | None = None) -> Moments | None:
    """The moments of layer `name`'s single input, or None when not known (module docstring).

    ``bn_weights(layer)`` gives a BatchNormalization's {"gamma", "beta", ...} arrays, or None.
    """
    memo = {} if memo is None else memo
    node = nodes.get(name)
    if node is None or len(node.inputs) != 1:
        return None
    return _moments(nodes, node.inputs[0], bn_weights, memo)


#: the most layers followed back from a layer's input to a BatchNormalization: real paths are a
#: few pass-through layers long, and a config of thousands chained in any order stays shallow
_DEPTH = 64


def _moments(nodes, name, bn_weights, memo, depth=0):
    if name not in memo:
        if depth > _DEPTH:
            return None  # (not memoised: reached from nearer, it may be known)
        memo[name] = None  # (a cycle in a broken config stays unknown)
        memo[name] = _moments_of(nodes, name, bn_weights, memo, depth)
    return memo[name]


def _passes(cls: str | None) -> bool:
    """Whether a layer of class `cls` may pass known statistics on (so its inputs are worth following)."""
    return cls in ("ReLU", "Activation", "Add", "Concatenate", "Flatten") or cls in _SAME or cls in _AVERAGE \
        or cls in _MAX or cls in _PADDING


def _relu(cls: str | None, cfg: dict) -> tuple[bool, float | None]:
    """(whether the layer is a ReLU whose moments are known, its cap): a plain ReLU, one capped
    by a positive ``max_value`` (ReLU6), Activation("relu") or Activation("relu6")."""
    if cls == "Activation":
        return {"relu": (True, None), "relu6": (True, 6.0)}.get(cfg.get("activation"), (False, None))
    if cls != "ReLU" or cfg.get("negative_slope") or cfg.get("threshold"):
        return False, None
    cap = cfg.get("max_value")
    if cap is None:
        return True, None
    if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap < float("inf"):
        return False, None
    return True, float(cap)


def _moments_of(nodes, name, bn_weights, memo, depth=0) -> Moments | None:
    node = nodes.get(name)
    if node is None:
        return None
    cfg, cls = node.config, node.cls
    if _forwards(node):  # a nested model's output, or its input layer
        return _moments(nodes, node.inputs[0], bn_weights, memo, depth + 1) if len(node.inputs) == 1 else None
    if cls != "BatchNormalization" and not _passes(cls):
        return None
    if cls == "BatchNormalization":
        weights = bn_weights(name) if _channels_last_axis(cfg.get("axis", -1)) else None
        if weights is None:
            return None
        beta, gamma = weights.get("beta"), weights.get("gamma")
        mean = np.asarray(beta, np.float64) if beta is not None else np.zeros(weights["moving_mean"].shape)
        std = np.abs(np.asarray(gamma, np.float64)) if gamma is not None else np.ones(mean.shape)
        return Moments(mean, std * std, True)
    parts = [_moments(nodes, s, bn_weights, memo, depth + 1) for s in node.inputs]
    if not parts or any(p is None for p in parts):
        return None
    if cls == "Add":
        if len({p.mean.shape for p in parts}) != 1:
            return None
        return Moments(sum(p.mean for p in parts), sum(p.var for p in parts), all(p.gaussian for p in parts))
    if cls == "Concatenate":
        if cfg.get("axis", -1) != -1 or any(p.mean.ndim != 1 for p in parts):
            return None
        return Moments(np.concatenate([p.mean for p in parts]), np.concatenate([p.var for p in parts]),
                       all(p.gaussian for p in parts))
    if len(parts) != 1:
        return None
    x = parts[0]
    relu, cap = _relu(cls, cfg)
    if relu:
        if not x.gaussian:
            return None
        m1, m2 = relu_moments(x.mean, np.sqrt(x.var), cap)
        return Moments(m1, np.maximum(m2 - m1 * m1, 0.0), False)
    if _unchanged(node):
        return x
    if cls in _PADDING:
        return x if cfg.get("data_format", "channels_last") == "channels_last" else None
    if cls in _AVERAGE or cls == "Flatten":
        return x if cfg.get("data_format", "channels_last") == "channels_last" else None
    if cls in _MAX:
        if cfg.get("data_format", "channels_last") != "channels_last":
            return None
        window = _window(cls, cfg)
        before = nodes.get(_maker(nodes, node.inputs[0], _forwards))
        pre = _moments(nodes, before.inputs[0], bn_weights, memo, depth + 2) \
            if window and before is not None and _is_relu(before) and len(before.inputs) == 1 else None
        if pre is not None and pre.gaussian:
            m1, m2 = max_relu_moments(pre.mean, np.sqrt(pre.var), window)
            return Moments(m1, np.maximum(m2 - m1 * m1, 0.0), False)
        return Moments(x.mean, x.var, False)
    return None


def _maker(nodes: dict, name: str | None, past) -> str | None:
    """The name of the layer that makes `name`'s output: `name`, or, followed back through the
    single input of each layer `past(node)` accepts, the first it does not; None where the chain
    breaks (an unknown layer, one of several inputs, longer than :data:`_DEPTH`)."""
    for _ in range(_DEPTH):
        node = nodes.get(name)
        if node is None:
            return None
        if not past(node):
            return name
        if len(node.inputs) != 1:
            return None
        name = node.inputs[0]
    return None


def _forwards(node: Node) -> bool:
    """Whether the layer passes its input on as it is: a nested model's output, an input layer."""
    return node.through or node.cls == "InputLayer"


def _unchanged(node: Node) -> bool:
    """Whether the layer changes nothing at inference: dropout, identity, a linear activation."""
    return node.cls in _SAME or (node.cls == "Activation" and node.config.get("activation") == "linear")


def _is_relu(node: Node) -> bool:
    """Whether the layer is a plain ReLU (no cap, slope or threshold)."""
    return _relu(node.cls, node.config) == (True, None)


def _window(cls: str, cfg: dict) -> int | None:
    """The number of values a (non-global) max pooling layer takes the max of, or None."""
    if cls.startswith("Global"):
        return None
    size = cfg.get("pool_size", 2)
    sizes = size if isinstance(size, (list, tuple)) else [size] * int(cls[-2])
    if not sizes or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
        return None
    return int(np.prod(sizes))


def _channels_last_axis(axis) -> bool:
    if isinstance(axis, list) and len(axis) == 1:
        axis = axis[0]
    return axis == -1


_CONV = ("Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D")


def _ones(value) -> bool:
    """Whether a stride or dilation config value is 1 along every axis."""
    return all(v == 1 for v in (value if isinstance(value, (list, tuple)) else [value]))


def _feeding(nodes: dict, name: str | None) -> str | None:
    """The layer whose output layer `name` reads, past those that change nothing at inference
    (:func:`_forwards`, :func:`_unchanged`), or None."""
    node = nodes.get(name)
    if node is None or len(node.inputs) != 1:
        return None
    return _maker(nodes, node.inputs[0], lambda n: _forwards(n) or _unchanged(n))


#: layers whose output has their input's shape
_SHAPE_KEPT = _SAME + ("BatchNormalization", "LayerNormalization", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax",
                       "Activation")
_POOLING = ("MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D")
_ELEMENTWISE = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")


def _output_shape(cls: str | None, cfg: dict, shapes: list) -> tuple | None:
    """The output shape (no batch axis) of a layer of class `cls` and config `cfg` given its
    inputs' shapes, or None where it is not known: channels-last convolutions (stride, dilation,
    "same"/"valid"/"causal" padding), depthwise and separable ones, pooling, zero padding,
    Flatten, Dense, element-wise merges, Concatenate on the last axis, and the layers that keep
    their input's shape.  Anything else (a reshape, a transposed convolution, ...) is unknown."""
    if not shapes or any(s is None for s in shapes):
        return None
    if cls in _ELEMENTWISE:
        return shapes[0] if len(set(shapes)) == 1 else None
    if cls == "Concatenate":
        if cfg.get("axis", -1) not in (-1, len(shapes[0])) or len({s[:-1] for s in shapes}) != 1:
            return None
        return shapes[0][:-1] + (sum(s[-1] for s in shapes),)
    if len(shapes) != 1:
        return None
    shape = shapes[0]
    if cls in _SHAPE_KEPT:
        return shape
    if cls == "Flatten":
        return (int(np.prod(shape)),) if cfg.get("data_format", "channels_last") == "channels_last" else None
    if cls == "Dense":
        return shape[:-1] + (cfg["units"],) if _positive(cfg.get("units")) else None
    if cfg.get("data_format", "channels_last") != "channels_last" or len(cls or "") < 2 or not cls[-2].isdigit():
        return None
    rank = int(cls[-2])
    if len(shape) != rank + 1:
        return None
    if cls.startswith("Global"):
        return (1,) * rank + shape[-1:] if cfg.get("keepdims") is True else shape[-1:]
    if cls.startswith("ZeroPadding"):
        pads = _pairs(cfg.get("padding", 1), rank)
        return None if pads is None else tuple(n + a + b for n, (a, b) in zip(shape, pads)) + shape[-1:]
    if cls in _POOLING:
        size = _sizes(cfg.get("pool_size", 2), rank)
        strides = _sizes(cfg.get("strides") if cfg.get("strides") is not None else size, rank)
        channels = shape[-1]
        dilation = (1,) * rank
    elif cls in _CONV or cls.startswith(("DepthwiseConv", "SeparableConv", "SeparableConvolution")):
        size, strides = _sizes(cfg.get("kernel_size"), rank), _sizes(cfg.get("strides", 1), rank)
        dilation = _sizes(cfg.get("dilation_rate", 1), rank)
        multiplier = cfg.get("depth_multiplier", 1)
        channels = shape[-1] * multiplier if cls.startswith("Depthwise") and _positive(multiplier) else \
            cfg.get("filters")
        if not _positive(channels):
            return None
    else:
        return None
    if size is None or strides is None or dilation is None:
        return None
    padding = cfg.get("padding", "valid")
    spatial = []
    for n, k, st, d in zip(shape, size, strides, dilation):
        if padding in ("same", "causal"):
            spatial.append((n + st - 1) // st)
        elif padding == "valid" and n >= (k - 1) * d + 1:
            spatial.append((n - (k - 1) * d - 1) // st + 1)
        else:
            return None
    return tuple(spatial) + (channels,)


def _sizes(value, rank: int) -> tuple | None:
    """A config's size, stride or dilation (an int, or one per axis) as `rank` positive ints, or None."""
    sizes = tuple(value) if isinstance(value, (list, tuple)) else (value,) * rank
    return sizes if len(sizes) == rank and all(_positive(n) for n in sizes) else None


def _pairs(value, rank: int) -> tuple | None:
    """A ZeroPadding config's padding (an int, one per axis, or a (before, after) pair per axis)
    as `rank` pairs of non-negative ints, or None."""
    if not isinstance(value, (list, tuple)):
        value = (value,) * rank
    pairs = tuple(tuple(v) if isinstance(v, (list, tuple)) else (v, v) for v in value)
    ok = len(pairs) == rank and all(len(p) == 2 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                        for n in p) for p in pairs)
    return pairs if ok else None


def input_covariance(nodes: dict, name: str, bn_weights, kernel_of, memo: dict) -> np.ndarray | None:
    """The covariance of a Dense layer's inputs when they are a flattened map of a plain ReLU of a
    BatchNormalization of a convolution whose input statistics are known, or None.

    The convolution's inputs are taken as independent (:func:`input_moments`); output positions
    whose windows overlap then share inputs (:func:`~wqkernels.correction.conv_covariance`),
    which sets the correlations; the BN's output is ``N(beta, gamma^2)`` with them (a negative
    gamma flips its channel's signs); the ReLU's covariance is that of rectified Gaussians
    (:func:`~wqkernels.correction.relu_covariance`).  ``kernel_of(layer)`` gives a layer's float
    kernel, or None.  Dropout and linear activations are passed through.
    """
    flatten = _feeding(nodes, name)
    node = nodes.get(flatten)
    if node is None or node.cls != "Flatten" or node.config.get("data_format", "channels_last") != "channels_last":
        return None
    relu = _feeding(nodes, flatten)
    node = nodes.get(relu)
    if node is None or not _is_relu(node):
        return None
    bn_name = _feeding(nodes, relu)
    bn = nodes.get(bn_name)
    if bn is None or bn.cls != "BatchNormalization" or not _channels_last_axis(bn.config.get("axis", -1)):
        return None
    conv_name = _feeding(nodes, bn_name)
    conv = nodes.get(conv_name)
    if conv is None or conv.cls not in _CONV or conv.shape is None or len(conv.inputs) != 1:
        return None
    cfg = conv.config
    if cfg.get("data_format", "channels_last") != "channels_last" or cfg.get("activation", "linear") != "linear" \
            or not _ones(cfg.get("strides", 1)) or not _ones(cfg.get("dilation_rate", 1)) \
            or cfg.get("groups", 1) != 1 or cfg.get("padding", "valid") not in ("same", "valid"):
        return None
    weights, kernel = bn_weights(bn_name), kernel_of(conv_name)
    moments = input_moments(nodes, conv_name, bn_weights, memo)
    if weights is None or kernel is None or moments is None or kernel.shape[-2] != conv.shape[-1] \
            or moments.var.size != kernel.shape[-2] or len(conv.shape) != kernel.ndim - 1:
        return None
    try:
        z = conv_covariance(kernel, moments.var, conv.shape[:-1], cfg.get("padding", "valid"))
    except ValueError:  # a recorded shape the kernel does not fit: the inputs stay independent
        return None
    if z is None:
        return None
    outputs = kernel.shape[-1]
    beta = np.asarray(weights.get("beta", np.zeros(outputs)), np.float64).reshape(-1)
    gamma = np.asarray(weights.get("gamma", np.ones(outputs)), np.float64).reshape(-1)
    if beta.size != outputs or gamma.size != outputs:
        return None
    positions = z.shape[0] // outputs
    sd = np.sqrt(np.maximum(np.diag(z), 0.0))
    live = sd > 0
    corr = np.where(np.outer(live, live), z / np.outer(np.where(live, sd, 1.0), np.where(live, sd, 1.0)), 0.0)
    corr[np.diag_indices(corr.shape[0])] = 1.0
    sign = np.tile(np.where(gamma < 0, -1.0, 1.0), positions)
    return relu_covariance(np.tile(beta, positions), np.tile(np.abs(gamma), positions), corr * np.outer(sign, sign))


#: the layers corrected, and how their kernels map onto channels (wqkernels.correction.KINDS)
_KINDS = {"Dense": "dense", "Conv1D": "conv", "Conv2D": "conv", "Conv3D": "conv",
          "Convolution1D": "conv", "Convolution2D": "conv", "Convolution3D": "conv",
          "DepthwiseConv1D": "depthwise", "DepthwiseConv2D": "depthwise"}

#: the order of a Keras 3 BatchNormalization's vars (gamma without scale=False, beta without center=False)
_BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")


def _bn_roles(config: dict) -> list:
    """The roles of a Keras 3 BatchNormalization's ``vars/<i>`` in order: gamma unless
    ``scale=False``, beta unless ``center=False``, then the moving mean and variance (the var
    tables of ``roles`` are per class, and this one depends on the config)."""
    return [name for name, on in zip(_BN_VARS, (config.get("scale", True), config.get("center", True), True, True))
            if on]


def owner(e: Entry, nodes: dict) -> str:
    """The layer of `nodes` whose weight `e` is: its layer, or, for a weight of a nested model in a
    legacy file (grouped under the top-level model's name), the group holding it."""
    node = nodes.get(e.layer)
    if node is not None and not node.through:
        return e.layer
    parts = e.path.rsplit("/", 2)
    if len(parts) == 3 and parts[1] in nodes and not nodes[parts[1]].through:
        return parts[1]
    return e.layer


def _layer_entries(source, nodes: dict) -> dict:
    """{layer name: {role: entry}} of the weights of the layers in `nodes` (the graph of the
    source's config); a BatchNormalization's roles by name, or by index (:func:`_bn_roles`)."""
    out = {}
    for e in source.entries:
        name = owner(e, nodes)
        node = nodes.get(name)
        if node is None or node.through or e.role in ("optimizer", "variable"):
            continue
        role = e.role
        if node.cls == "BatchNormalization" and role not in _BN_VARS:
            parent, _, index = e.path.rpartition("/")
            names = _bn_roles(node.config)
            if parent.rpartition("/")[2] == "vars" and index.isdigit() and int(index) < len(names):
                role = names[int(index)]
        out.setdefault(name, {}).setdefault(role, e)
    return out


def corrections(source, recipe: Recipe, counts: dict, selected: list, buffers: Buffers) -> tuple[dict, list]:
    """({weight path: values to write}, [what was corrected]) for a rewrite that prunes.

    For each selected kernel of a Dense, convolution or depthwise layer whose input statistics
    are known (:func:`input_moments`): with a bias, the kernel pruned and scaled per channel
    (computed again when it is written, so that no kernel is held) and the new bias;
    without one, and read by a BatchNormalization only, that BN's new moving_mean and
    moving_variance.  A Dense kernel's variances are those of its inputs' covariance where
    :func:`input_covariance` knows it.  Each kernel is read and pruned once here.
    """
    if not (recipe.bn_correction and recipe.prunes) or not isinstance(source.config, dict):
        return {}, []
    nodes = graph(source.config)
    readers = consumers(nodes)
    entries = _layer_entries(source, nodes)
    memo, out, done = {}, {}, []

    def read(e):
        return np.asarray(source.read(e, buffers), np.float64)

    def has_statistics(name) -> bool:
        return {"moving_mean", "moving_variance"} <= entries.get(name, {}).keys()

    def bn_weights(name):
        if not has_statistics(name):
            return None
        return {role: read(e) for role, e in entries[name].items() if role in _BN_VARS}

    def kernel_of(name):
        e = entries.get(name, {}).get("kernel")
        return None if e is None else read(e)

    order = {name: i for i, name in enumerate(nodes)}
    for e in sorted(selected, key=lambda e: order.get(owner(e, nodes), len(order))):  # in model order
        name = owner(e, nodes)
        node = nodes.get(name)
        kind = _KINDS.get(node.cls) if node is not None else None
        if kind is None or e.role != "kernel" or node.config.get("data_format", "channels_last") != "channels_last":
            continue
        own = entries.get(name, {})
        after = readers.get(name, [])
        bn = after[0] if len(after) == 1 and nodes[after[0]].cls == "BatchNormalization" else None
        target = "bias" if "bias" in own else None
        if target is None and (bn is None or node.config.get("activation", "linear") != "linear"
                               or not has_statistics(bn) or not _channels_last_axis(nodes[bn].config.get("axis", -1))):
            continue
        moments = input_moments(nodes, name, bn_weights, memo)
        if moments is None:
            continue
        kernel = source.read(e, buffers).astype(np.float32)
        kept = pruned(kernel, e, recipe, counts)
        if kept is kernel:  # left dense: nothing shifted
            continue
        try:
            cov = input_covariance(nodes, name, bn_weights, kernel_of, memo) if kind == "dense" else None
            if cov is not None and cov.shape[0] != kernel.shape[0]:
                cov = None  # (a reshape the graph missed)
            if target == "bias":
                fixed = correct_layer(kernel, kept, moments.mean, moments.var, kind, bias=read(own["bias"]), cov=cov)
            else:
                stats = entries[bn]
                fixed = correct_layer(kernel, kept, moments.mean, moments.var, kind,
                                      moving_mean=read(stats["moving_mean"]),
                                      moving_variance=read(stats["moving_variance"]),
                                      epsilon=float(nodes[bn].config.get("epsilon", 1e-3)), cov=cov)
        except (ValueError, TypeError):  # shapes the graph does not explain (a reshape it missed), or a
            # config value of the wrong type (an epsilon that is no number): left alone
            continue
        if target == "bias":
            out[e.path] = _Scaled(source, e, recipe, counts, fixed.scale)
            out[own["bias"].path] = fixed.bias
            done.append(f"{name} (kernel scale, bias)")
        else:
            out[entries[bn]["moving_mean"].path] = fixed.moving_mean
            out[entries[bn]["moving_variance"].path] = fixed.moving_variance
            done.append(f"{name} ({bn} moving mean and variance)")
    return out, done


class _Scaled:
    """A kernel pruned as the recipe prunes it and scaled per output channel, computed when
    NumPy converts it, as it is written (the rewrite's pruning then finds its zeros already
    there): holding every corrected kernel until its turn would hold most of a model."""

    def __init__(self, source, entry: Entry, recipe: Recipe, counts: dict, scale: np.ndarray):
        self.source, self.entry, self.recipe, self.counts = source, entry, recipe, counts
        self.scale, self.shape = scale, entry.shape

    def __array__(self, dtype=None, copy=None):
        kernel = np.asarray(self.source.read(self.entry), np.float32)
        x = pruned(kernel, self.entry, self.recipe, self.counts) * self.scale
        return np.asarray(x, dtype=np.float32 if dtype is None else dtype)
