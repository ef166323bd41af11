"""Which weights are kernels, and along which axes they are quantized.

Roles come from the layer class and the weight's name (legacy ``.h5``) or index (Keras 3
``.weights.h5``).  The class comes from the model config when there is one, descending into
nested models; without a config it is guessed from the group names Keras derives from class names
(``depthwise_conv2d_1`` -> DepthwiseConv2D).
"""
from __future__ import annotations

import json
import math
import re

from ..calibration.rows import einsum_subscripts

#: weight roles that are pruned and quantized; everything else is kept as it is
KERNEL_ROLES = ("kernel", "recurrent_kernel", "depthwise_kernel", "pointwise_kernel", "embeddings",
                "reverse_embeddings")

#: Keras 3 ``vars/<i>`` index tables, by layer class family
_KERNEL_BIAS = ("kernel", "bias")
_VAR_TABLES = {
    "separable": ("depthwise_kernel", "pointwise_kernel", "bias"),
    "embedding": ("embeddings",),
    "reversible_embedding": ("embeddings", "reverse_embeddings"),  # the second when not tied
    "rnn_cell": ("kernel", "recurrent_kernel", "bias"),
}
_KERNEL_CLASSES = re.compile(r"^(Dense|EinsumDense|Conv[123]D|Convolution[123]D|Conv[123]DTranspose|"
                             r"Convolution[123]DTranspose|DepthwiseConv[12]D|LocallyConnected[12]D)$")
_KNOWN_CLASSES = (
    "Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
    "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    "Embedding", "ReversibleEmbedding", "LSTM", "GRU", "SimpleRNN", "LSTMCell", "GRUCell", "SimpleRNNCell", "ConvLSTM1D",
    "ConvLSTM2D", "ConvLSTM3D", "Bidirectional", "TimeDistributed", "BatchNormalization",
    "LayerNormalization", "GroupNormalization", "UnitNormalization", "PReLU", "InputLayer",
    "Sequential", "Functional", "Model", "MultiHeadAttention",
)


def to_snake_case(name: str) -> str:
    """Keras's own class-name -> group-name rule (``keras.src.utils.naming.to_snake_case``)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


_SNAKE_TO_CLASS = {to_snake_case(c): c for c in _KNOWN_CLASSES}
#: sublayers Keras 3 saves under attribute names rather than class names
_SNAKE_TO_CLASS.update({f"{p}_dense": "EinsumDense" for p in ("query", "key", "value", "output")})


def class_from_name(name: str, extra_classes=()) -> str | None:
    """Guess a layer class from a Keras-generated name: ``conv2d_3`` -> Conv2D, else None."""
    table = dict(_SNAKE_TO_CLASS)
    table.update({to_snake_case(c): c for c in extra_classes})
    if name in table:
        return table[name]
    stem = re.sub(r"_\d+$", "", name)
    return table.get(stem)


def weight_role(weight_name: str) -> str:
    """The role of a legacy weight from the last part of its name: ``dense/kernel:0`` -> kernel."""
    return re.sub(r":\d+$", "", weight_name.rsplit("/", 1)[-1])


def var_role(layer_class: str | None, index: int, in_cell: bool) -> str | None:
    """The role of Keras 3 ``vars/<index>`` of a layer of `layer_class`, or None when unknown."""
    if in_cell or (layer_class or "").endswith("Cell"):
        table = _VAR_TABLES["rnn_cell"]
    elif layer_class is None:
        return None
    elif layer_class.startswith("SeparableConv"):
        table = _VAR_TABLES["separable"]
    elif layer_class == "Embedding":
        table = _VAR_TABLES["embedding"]
    elif layer_class == "ReversibleEmbedding":
        table = _VAR_TABLES["reversible_embedding"]
    elif _KERNEL_CLASSES.match(layer_class):
        table = _KERNEL_BIAS
    else:  # a known layer without kernels (normalisation, PReLU, ...): kept as it is
        return "other"
    return table[index] if index < len(table) else "other"


# ---- EinsumDense kernels ---------------------------------------------------------------------

#: the sublayers of a MultiHeadAttention (which have no config of their own) and the kernel axes
#: each sums over: query/key/value ``(dim, heads, head_dim)`` axis 0, output ``(heads,
#: head_dim, *out)`` axes 0 and 1 (whatever the rank of the attention's input)
_ATTENTION_REDUCED = {"query_dense": (0,), "key_dense": (0,), "value_dense": (0,), "output_dense": (0, 1)}


def reduced_axes(layer_class: str | None, layer_config: dict | None, name: str | None, ndim: int) -> tuple | None:
    """The axes an EinsumDense kernel of `ndim` axes sums over (contracts): those its
    equation's output does not name, as Keras's own quantizer takes them; for the sublayers of
    a MultiHeadAttention, without a config of their own, from their `name`.  None for other
    classes, and when neither tells (the kernel is then taken as channels last)."""
    if layer_class != "EinsumDense":
        return None
    inner = layer_config.get("config") if isinstance(layer_config, dict) else None
    parts = einsum_subscripts(inner.get("equation", "")) if isinstance(inner, dict) else None
    if parts is not None:
        _, kernel, output = parts
        return tuple(i for i, c in enumerate(kernel) if c not in output) if len(kernel) == ndim else None
    reduced = _ATTENTION_REDUCED.get(re.sub(r"^_", "", name or ""))
    return reduced if reduced is not None and max(reduced) < ndim - 1 else None


def _runs(shape: tuple, reduced: tuple) -> list[tuple[bool, int]]:
    """The kernel's axes as runs of summed (True) or kept (False) axes: (summed, size) each."""
    runs = []
    for axis, n in enumerate(shape):
        summed = axis in reduced
        if runs and runs[-1][0] == summed:
            runs[-1] = (summed, runs[-1][1] * n)
        else:
            runs.append((summed, n))
    return runs


def _einsum_layout(shape: tuple, reduced: tuple) -> tuple[tuple, int | None, int]:
    """(view, channel axis, reduction axis) of an EinsumDense kernel: its runs of summed and
    kept axes each flattened (a free reshape); the channel axis is the one kept run, or None
    when the kept axes are not contiguous; blocks run along the last summed run (a length-1 axis
    is added when nothing is summed)."""
    runs = _runs(tuple(shape), reduced)
    if not any(summed for summed, _ in runs):
        runs.append((True, 1))
    view = tuple(n for _, n in runs)
    kept = [i for i, (summed, _) in enumerate(runs) if not summed]
    along = max(i for i, (summed, _) in enumerate(runs) if summed)
    return view, kept[0] if len(kept) == 1 else None, along


def channel_view(shape: tuple, layer_class: str | None, role: str, reduced: tuple | None = None) -> tuple:
    """How a kernel is quantized per channel: ``(view, axis, block_size)``, one scale per index
    of `axis` of the view when `block_size` is None, else per block of `block_size` along it.

    A kernel whose `reduced` (summed) axes are known (EinsumDense): one scale per combination of
    the axes it does not sum, as Keras's own quantizer gives.  When those axes are contiguous
    (leading, trailing or between summed ones) they are flattened into one axis of the view;
    when summed axes lie between them (``"abc,dce->abde"``, kernel ``(d, c, e)``), the view is
    ``(d, c, e)`` with one block the length of ``c``: still one scale per ``(d, e)``.  Only
    kernels summing over two or more separate runs of axes while keeping separate runs get a
    finer granularity than that (a scale per combination of all axes but the last summed run),
    never a coarser one.  Other kernels: their own shape along :func:`channel_axis`.
    """
    if reduced is None:
        return tuple(shape), channel_axis(layer_class, role, len(shape)), None
    view, axis, along = _einsum_layout(shape, reduced)
    return (view, axis, None) if axis is not None else (view, along, view[along])


def channel_axis(layer_class: str | None, role: str, ndim: int) -> int:
    """The axis with one scale per index (the output channel), as a non-negative axis, of a
    kernel whose layer class tells its layout (an EinsumDense's equation: :func:`channel_view`).

    Dense/Conv kernels: last; depthwise kernels (DepthwiseConv and the depthwise half of
    SeparableConv): 2 = ``ndim - 2`` (input channels); Conv*Transpose: second-to-last;
    Embedding: 0 (one scale per row); a ReversibleEmbedding's ``reverse_embeddings`` ``(dim,
    vocab)`` projects like a Dense kernel: last.
    """
    cls = layer_class or ""
    if role == "embeddings":
        return 0
    if ndim >= 2 and (_is_depthwise(layer_class, role) or (role == "kernel" and cls.endswith("Transpose"))):
        return ndim - 2
    return ndim - 1


def fan_in(layer_class: str | None, role: str, shape: tuple, reduced: tuple | None = None) -> int | None:
    """How many weights of a kernel each output of its layer sums: the weights per output
    channel (a depthwise kernel's output channel reads only its ``kh * kw``, whatever its depth
    multiplier; an EinsumDense's, those of its `reduced` axes), or None for an embedding table,
    whose rows are looked up, not summed."""
    if role == "embeddings":
        return None
    if reduced is not None:
        return math.prod(shape[a] for a in reduced)
    if _is_depthwise(layer_class, role):
        return math.prod(shape[:-2]) if len(shape) >= 2 else 1
    axis = channel_axis(layer_class, role, len(shape))
    return math.prod(shape) // max(shape[axis], 1) if shape else 1


def _is_depthwise(layer_class: str | None, role: str) -> bool:
    return role == "depthwise_kernel" or (role == "kernel" and (layer_class or "").startswith("DepthwiseConv"))


def block_view(shape: tuple, layer_class: str | None, role: str, reduced: tuple | None = None) -> tuple[tuple, int]:
    """The view on which blocks run along the reduction (input) axis: (view shape, block axis).

    When the channel axes trail (Dense, Conv, RNN and depthwise kernels), the leading reduction
    axes are flattened into one: ``(kh, kw, in, out)`` -> ``(kh*kw*in, out)`` with blocks along
    axis 0, a free reshape of the C-ordered array.  Otherwise (Conv*Transpose ``(kh, kw, out, in)``,
    Embedding ``(vocab, dim)``) blocks run along the last axis.  An EinsumDense kernel whose
    `reduced` (summed) axes are known: its runs of summed and kept axes flattened, blocks along
    the (last) summed run (:func:`channel_view`).
    """
    if reduced is not None:
        view, _, along = _einsum_layout(shape, reduced)
        return view, along
    ndim = len(shape)
    axis = channel_axis(layer_class, role, ndim)
    if axis == ndim - 1 or _is_depthwise(layer_class, role):
        lead = 1
        for n in shape[:axis]:
            lead *= n
        tail = 1
        for n in shape[axis:]:
            tail *= n
        return (lead, tail), 0
    return tuple(shape), ndim - 1


# ---- model configs ---------------------------------------------------------------------------

def parse_config(text) -> dict | None:
    """The model config from a JSON attribute or member (bytes or str), or None if unusable."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        config = json.loads(str(text))
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def _children(layer_config: dict) -> list | None:
    """The layer configs inside a model config, or None when it is not a model."""
    inner = layer_config.get("config")
    if isinstance(inner, list):  # Keras 2.0 Sequential: "config": [layers...]
        return [c for c in inner if isinstance(c, dict)]
    if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
        return [c for c in inner["layers"] if isinstance(c, dict)]
    return None


def class_name(layer_config: dict) -> str | None:
    """The layer class a config names, or None when it names none (or not as a string)."""
    cls = layer_config.get("class_name")
    return cls if isinstance(cls, str) else None


def layer_name(layer_config: dict) -> str | None:
    inner = layer_config.get("config")
    if isinstance(inner, dict) and isinstance(inner.get("name"), str):
        return inner["name"]
    name = layer_config.get("name")
    return name if isinstance(name, str) else None


def quantization_mode(layer_config: dict) -> str | None:
    """The mode of a layer Keras has quantized (``"int8"``, ``"int4/128"``, ...: its dtype
    policy's), or None for a float layer."""
    inner = layer_config.get("config")
    dtype = inner.get("dtype") if isinstance(inner, dict) else None
    policy = dtype.get("config") if isinstance(dtype, dict) else None
    mode = policy.get("mode") if isinstance(policy, dict) else None
    if isinstance(mode, str):
        return mode
    return "int8" if isinstance(dtype, dict) and "Quantized" in str(dtype.get("class_name", "")) else None


def _is_quantized(layer_config: dict) -> bool:
    """Layers already in Keras's own quantized formats are left alone."""
    return quantization_mode(layer_config) is not None


class ModelLayers:
    """Layer classes by name from a model config, descending into nested models."""

    def __init__(self, config: dict | None):
        self.top = {}
        self.classes = set()
        self.leaves = {}  # name -> the first layer (not a model) of that name, depth first
        if config is not None:
            for child in _children(config) or []:
                self._index(child)
                name = layer_name(child)
                if name is not None:
                    self.top[name] = child

    def _index(self, layer_config: dict) -> None:
        cls = class_name(layer_config)
        if cls is not None:
            self.classes.add(cls)
        children = _children(layer_config)
        name = layer_name(layer_config)
        if children is None and name is not None:
            self.leaves.setdefault(name, layer_config)
        for child in children or []:
            self._index(child)

    def resolve(self, top_name: str, parts: list[str]) -> tuple[str | None, bool, str, str | None]:
        """(class, quantized, how, own name) of the layer owning a weight of layer group `top_name`.

        `parts` are the group components of the weight's path (without the weight name); inside
        a nested model the component naming one of its layers selects it, and the own name is
        that layer's (None for the top-level layer itself).
        """
        current = self.top.get(top_name)
        if current is None:
            return class_from_name(top_name, self.classes), False, "names", None
        own = None
        for part in parts:
            children = _children(current)
            if children is None:
                break
            for child in children:
                if layer_name(child) == part:
                    current, own = child, part
                    break
        if _children(current) is not None and parts:  # still at a model: guess from the names
            guess = class_from_name(parts[-1], self.classes)
            return guess, False, "names", own
        if class_name(current) is None:  # a config naming no usable class: as without one
            return class_from_name(top_name, self.classes), False, "names", None
        return class_name(current), _is_quantized(current), "config", own

    def class_for_group(self, group_name: str, vars_name: str | None) -> tuple[str | None, bool, str]:
        """(class, quantized, how) for a Keras 3 ``layers/<group>`` with its ``vars`` name attribute."""
        if vars_name is not None:
            found = self.leaves.get(vars_name)
            if found is not None and class_name(found) is not None:
                return class_name(found), _is_quantized(found), "config"
        return class_from_name(group_name, self.classes), False, "names"

    def find(self, name: str | None) -> dict | None:
        """The config of the (innermost) layer named `name`, or None: one look-up in an index
        made with the config's (a search of the config per weight made models of many layers
        quadratic)."""
        return None if name is None else self.leaves.get(name)
