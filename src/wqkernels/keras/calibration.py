"""Calibrated compression of a Keras model file: the model runs on sample inputs in Keras, and
each prunable layer, in the order the model calls them, is compressed by
:mod:`wqkernels.calibration` from the inputs the already compressed layers before it give.

>>> from wqkernels import Recipe
>>> from wqkernels.keras import rewrite_calibrated
>>> report = rewrite_calibrated("model.keras", "small.keras", Recipe(bits=3), "samples.npy")  # doctest: +SKIP

Keras only runs the model.  A Functional or Sequential model is walked node by node: each
node's outputs for all samples are kept while a later node needs them, in two streams (the
compressed model's, and the float model's that each layer is fitted to; one array while they
agree), so beside the model there are one layer's inputs and outputs twice, and one layer's Gram
matrices (``XᵀX`` and ``XᵀX_f``), in memory.  A layer that
calls its prunable sublayers itself (MultiHeadAttention, Bidirectional, TimeDistributed, a
subclassed model) is run once per sublayer with that sublayer's call intercepted, its inputs
collected for all samples.  The new weights stay in the Keras model until the file rewrite
reads them (:func:`wqkernels.rewrite` with ``weights=`` and ``grids=``), so that every storage
works and the codes written are the calibrated ones.

Kernels of Dense, EinsumDense, Conv1D/2D/3D, Conv*Transpose, DepthwiseConv1D/2D,
SeparableConv1D/2D and LSTM/GRU/SimpleRNN are calibrated; other kernels the recipe selects
(Embedding, ConvLSTM, custom layers) get the data-free transformation, in the Keras model too so
that the layers after them see what the file will hold.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import keras
import numpy as np

from .._text import first_line
from ..allocation import bits_for_sqnr, count_fraction, default_min_size
from ..calibration import (Hessian, KernelView, einsum_view, gptq, gptq_on_grid, mean_output_error, patches,
                           refit, sparsegpt)
from ..files import KerasFileError, Recipe, rewrite
from ..files.buffers import Buffers
from ..files.dtypes import BFLOAT16, is_float
from ..files.keras_native import grid_values, native_grid, native_kernels, on_native_grid
from ..files.plan import plan
from ..files.report import Report
from ..files.source import Source
from ..files.transform import Grid, prepare
from .calls import intercepted, sublayers
from .synthetic import Synthetic, synthesize

__all__ = ["Calibration", "calibrate", "rewrite_calibrated", "load_samples"]

#: rows of input patches handed to the Hessian at once are cut to about this many bytes
ROW_BYTES = 32 << 20


@dataclass
class Calibration:
    """What :func:`calibrate` found, ready for :func:`wqkernels.rewrite`.

    Attributes
    ----------
    weights : dict
        Path in the weights file -> the new values (read from the Keras model when converted
        with ``np.asarray``): calibrated kernels, and biases (or BatchNormalization moving
        means) that took back the mean change of their layer's outputs.
    grids : dict
        Path -> :class:`~wqkernels.files.Grid` of every calibrated kernel that is quantized: the
        scales and zero points of :func:`wqkernels.quantize`, or, for a kernel that
        ``storage="keras"`` writes in Keras's own layout, Keras's as stored
        (:func:`~wqkernels.files.keras_native.native_grid`).
    notes : list of str
        What was done, for the report.
    samples : int
        How many samples the model ran on.
    """

    weights: dict = field(default_factory=dict)
    grids: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    samples: int = 0


def rewrite_calibrated(src, dst, recipe: Recipe, samples, *, in_place: bool = False, progress: bool = False,
                       histograms: bool = False, **options) -> Report:
    """Compress the kernels of a Keras model file from sample inputs and write the result to `dst`.

    :func:`calibrate` followed by :func:`wqkernels.rewrite` with its weights and grids: the
    destination is written as a plain rewrite writes it (any storage), only the values differ.

    Parameters
    ----------
    src, dst, recipe, in_place, progress, histograms
        As for :func:`wqkernels.rewrite`.
    samples : str, os.PathLike, ndarray, list or dict of ndarray
        As for :func:`calibrate`.
    **options
        `batch_size`, `damping`, `act_order`, `bias_correction`, `float_targets`, `refit_damping`
        of :func:`calibrate`.

    Returns
    -------
    Report
        The rewrite's report, with the calibration's notes.
    """
    start = time.perf_counter()
    result = calibrate(src, samples, recipe, progress=progress, **options)
    report = rewrite(src, dst, recipe, in_place=in_place, progress=progress, histograms=histograms,
                     weights=result.weights, grids=result.grids)
    report.notes.extend(result.notes)
    report.seconds = time.perf_counter() - start  # the calibration's time too
    report.recipe["calibration"] = {"samples": result.samples,
                                    "source": "synthetic" if isinstance(samples, Synthetic)
                                    else os.fspath(samples) if isinstance(samples, (str, os.PathLike)) else None}
    return report


def calibrate(src, samples, recipe: Recipe, *, batch_size: int = 128, damping: float = 0.01,
              act_order: bool = True, bias_correction: bool = True, float_targets: bool = True,
              refit_damping: float = 0.1, progress: bool = False) -> Calibration:
    """Run the float model of `src` on `samples` and compress its kernels layer by layer.

    Which kernels are touched, how many zeros each gets and how each is quantized (bits,
    granularity, symmetry, scale search) is what :func:`wqkernels.rewrite` would do with
    `recipe` (the same plan); the calibration chooses the weights: each kernel is refitted to the
    float model's outputs (:func:`~wqkernels.calibration.refit`), pruned by
    :func:`~wqkernels.calibration.sparsegpt`, then rounded by :func:`~wqkernels.calibration.gptq`
    onto the grid :func:`wqkernels.quantize` gives it, all from the Gram matrix of the layer's
    inputs as the compressed model before it produces them.  With ``storage="keras"``, a kernel
    written in Keras's own layout (Dense, EinsumDense) is rounded onto the grid Keras's quantizer
    gives it instead (:func:`~wqkernels.calibration.gptq_on_grid`): per output channel, or per
    group of inputs for int4 in blocks, with Keras's scales, zero points and code range, so that
    the file holds the codes the calibration chose.

    Parameters
    ----------
    src : str or os.PathLike
        A ``.keras`` archive or a full legacy ``.h5`` (a file with its model config that
        ``keras.models.load_model`` loads).
    samples : str, os.PathLike, ndarray, list or dict of ndarray, or Synthetic
        A ``.npy`` file, a ``.npz`` with one array or one per model input (by input name, else
        in order), or the arrays themselves; typically 128 to 1024 samples.  A
        :class:`~wqkernels.keras.synthetic.Synthetic` makes them without data instead, from the
        model's BatchNormalization statistics (:func:`~wqkernels.keras.synthetic.synthesize`).
    recipe : Recipe
        What to do; it must prune or quantize.
    batch_size : int
        Samples per call of a layer.
    damping : float
        Added to the Hessian's diagonal for GPTQ and SparseGPT, as a fraction of its mean.
    act_order : bool
        Quantize the inputs of largest ``H_ii`` first (on the digits CNN at 2 bits: -0.62
        points against -1.30 in input order, mean of 3 seeds).
    bias_correction : bool
        Add the mean gap of each compressed layer's outputs to the float model's to its bias
        (or subtract it from the moving mean of the BatchNormalization right after a layer
        without bias).
    float_targets : bool
        Fit each layer to the float model's outputs (:func:`~wqkernels.calibration.refit`),
        which needs the float model's activations beside the compressed model's; False: to the
        outputs of its float kernel on the compressed model's inputs (GPTQ and SparseGPT as
        published), with half the activations in memory.
    refit_damping : float
        How strongly the refitted kernel is held near the float one, as a fraction of the mean
        of the Hessian's diagonal (the samples are few beside the weights of a layer: 0.01
        fits them too closely, 1.0 too loosely, on the digits CNN).
    progress : bool
        Show a progress bar of the synthetic samples' fit on a terminal.

    Returns
    -------
    Calibration

    Raises
    ------
    ValueError (KerasFileError)
        A file that Keras cannot load or that has no model config, unusable samples, a recipe
        that changes no weight.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    if not (recipe.prunes or recipe.quantizes):
        raise ValueError("calibration needs a recipe that prunes or quantizes")
    batch_size = _positive(batch_size, "batch_size")
    for name, value in (("damping", damping), ("refit_damping", refit_damping)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    src = os.fspath(src)
    with tempfile.TemporaryDirectory(prefix="wqkernels-") as scratch, Source(src, tmp_dir=scratch) as source:
        if source.packed is not None:
            raise KerasFileError(f"{src}: a packed file; calibration needs a model Keras loads (restore it first)")
        if source.config is None:
            raise KerasFileError(f"{src}: no model config (a weights-only file); calibration needs a .keras "
                                 "archive or a full legacy .h5")
        work = plan(source, recipe, Buffers())
        native = native_kernels(source, recipe)[0] if recipe.storage == "keras" else {}
        index = _Index(source, src)
    arrays = None if isinstance(samples, Synthetic) else read_samples(samples)  # a bad file fails in a moment
    model, loading_notes = _load_model(src, source.kind)
    if arrays is None:
        inputs, facts = synthesize(model, samples, where=src, progress=progress)
        loading_notes.append(f"synthesized {samples.count} samples from the statistics of "
                             f"{len(facts['layers'])} BatchNormalization layers in {facts['seconds']:.1f} s"
                             + (f", spread over the model's {facts['classes']} classes (its outputs taken as "
                                f"{facts['scores']})" if facts["classes"] else ""))
    else:
        inputs = _fitted(arrays, model, _where(samples))
    run = _Calibrator(model, recipe, work, index, native, batch_size=batch_size, damping=float(damping),
                      act_order=bool(act_order), bias_correction=bool(bias_correction),
                      float_targets=bool(float_targets), refit_damping=float(refit_damping))
    run.run(inputs, samples)
    result = run.result(len(inputs[0]))
    result.notes.extend(loading_notes)
    return result


# ---- inputs: the model and the samples -------------------------------------------------------

#: warnings Keras gives while loading a model that say nothing to the user: Keras 3.15 warns of
#: a Functional model's own graph container on every load of a file it wrote itself
_LOADING_NOISE = re.compile(r"'_operations_by_depth/")


def _load_model(src: str, kind: str):
    """(the model of `src` as Keras loads it, without optimizer; notes of what Keras warned
    while loading it).  Keras's own output meanwhile (warnings, log lines) is kept from the
    terminal: a failure is one line naming the file, with Keras's reason."""
    suffix = ".keras" if kind == "zip" else ".h5"
    with _named(src, suffix) as path, _keras_output() as caught:
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # whatever Keras raises: one line naming the file
            raise KerasFileError(f"{src}: Keras cannot load the model ({first_line(exc)})") from None
    notes = []
    for w in caught:
        text = first_line(w.message)
        if not _LOADING_NOISE.search(text) and f"Keras, loading the model: {text}" not in notes:
            notes.append(f"Keras, loading the model: {text}")
    return model, notes


@contextlib.contextmanager
def _keras_output():
    """Python's warnings recorded (yields their list), and what is written to the standard output
    and error, by Python or by the backend's own code, dropped: Keras prints its warnings and
    log lines as it loads a model, before any error of ours.  The descriptors and the warning
    filters belong to the whole process: only the main thread takes them; a load in another
    thread leaves them (and Keras's output) alone and records nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    with warnings.catch_warnings(record=True) as caught, tempfile.TemporaryFile() as sink:
        warnings.simplefilter("always")
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = []
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
        except OSError:  # no standard output or error to keep anything from
            pass
        try:
            for fd, _ in saved:
                os.dup2(sink.fileno(), fd)
            with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield caught  # (sys.stdout and sys.stderr too: they need not write to those descriptors)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, old in saved:
                os.dup2(old, fd)
                os.close(old)


@contextlib.contextmanager
def _named(src: str, suffix: str):
    """`src`, or a link to it ending in `suffix` (Keras chooses its loader by the name)."""
    if src.endswith(suffix) or (suffix == ".h5" and src.endswith(".hdf5")):
        yield src
        return
    directory = tempfile.mkdtemp(prefix="wqkernels-")
    try:
        path = os.path.join(directory, "model" + suffix)
        try:
            os.symlink(os.path.abspath(src), path)
        except OSError:
            shutil.copyfile(src, path)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _where(samples) -> str:
    return os.fspath(samples) if isinstance(samples, (str, os.PathLike)) else "samples"


def read_samples(samples, where: str | None = None):
    """The arrays of `samples` (see :func:`load_samples`), checked as far as they can be without
    the model: numbers, at least one sample each, finite, the same count in each."""
    where = _where(samples) if where is None else where
    arrays = _read_samples(samples, where)
    named = arrays.items() if isinstance(arrays, dict) else enumerate(arrays)
    counts = []
    for name, array in named:
        a = np.asarray(array)
        label = f"samples {name!r}" if isinstance(arrays, dict) else "samples" if len(arrays) == 1 \
            else f"samples #{name}"
        if a.dtype.kind not in "fiub":
            raise KerasFileError(f"{where}: {label} must be numbers, got dtype {a.dtype}")
        if a.ndim == 0 or len(a) == 0:
            raise KerasFileError(f"{where}: no samples" + ("" if label == "samples" else f" in {label}"))
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise KerasFileError(f"{where}: {label} hold NaN or infinity")
        counts.append(len(a))
    if len(set(counts)) > 1:
        raise KerasFileError(f"{where}: the inputs have different numbers of samples: {counts}")
    return arrays


def load_samples(samples, model, *, where: str | None = None) -> list:
    """The calibration inputs of `model`: one array per model input, all with the same count.

    `samples` is a ``.npy`` or ``.npz`` path (read without pickles), or an array, a list of
    arrays (in input order) or a dict of arrays (by input name).  Each array is cast to its
    input's dtype; its shape past the first axis must fit the input's.  `where` names the
    samples in errors (default: the path, or "samples").
    """
    where = _where(samples) if where is None else where
    return _fitted(read_samples(samples, where), model, where)


def _fitted(arrays, model, where: str) -> list:
    """The arrays of :func:`read_samples` matched to the inputs of `model`, each checked against
    its input's shape and cast to its dtype."""
    try:
        inputs = list(model.inputs)
    except (AttributeError, ValueError):  # a subclassed model: its inputs are whatever it takes
        inputs = None
    if inputs is None:
        arrays = list(arrays.values()) if isinstance(arrays, dict) else list(arrays)
        if len(arrays) != 1:
            raise KerasFileError(f"{where}: a model without declared inputs takes one array")
        return [np.ascontiguousarray(arrays[0])]
    names = [getattr(t, "name", None) for t in inputs]
    if isinstance(arrays, dict):
        if len(arrays) == 1 and len(names) == 1:
            arrays = list(arrays.values())
        elif set(arrays) == set(names):
            arrays = [arrays[n] for n in names]
        elif len(arrays) == len(names):
            arrays = list(arrays.values())
        else:
            raise KerasFileError(f"{where}: holds {len(arrays)} arrays ({', '.join(arrays)}) but the model has "
                                 f"{len(names)} input{'s' if len(names) != 1 else ''} ({', '.join(map(str, names))})")
    if len(arrays) != len(names):
        raise KerasFileError(f"{where}: {len(arrays)} arrays for a model of {len(names)} inputs")
    out = []
    for array, tensor, name in zip(arrays, inputs, names):
        a = np.asarray(array)
        shape = tuple(tensor.shape)
        if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape[1:], a.shape[1:])):
            expected = "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"
            raise KerasFileError(f"{where}: samples of shape {a.shape} do not fit input {name!r} of shape {expected}")
        with np.errstate(over="ignore"):
            cast = np.ascontiguousarray(a, dtype=tensor.dtype or "float32")
        if cast.dtype != a.dtype and cast.dtype.kind == "f" and not np.isfinite(cast).all():  # float64 beyond float32
            raise KerasFileError(f"{where}: samples for input {name!r} hold NaN or infinity (as {cast.dtype})")
        out.append(cast)
    return out


def _read_samples(samples, where: str):
    if isinstance(samples, dict):
        return dict(samples)
    if isinstance(samples, (list, tuple)):
        return list(samples)
    if not isinstance(samples, (str, os.PathLike)):
        return [samples]
    if not os.path.isfile(where):
        raise KerasFileError(f"{where}: no such file")
    try:
        data = np.load(where, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        why = "arrays of Python objects are not read" if "pickle" in str(exc) else first_line(exc)
        raise KerasFileError(f"{where}: not a .npy or .npz file of numbers ({why})") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            try:
                return {k: data[k] for k in data.files}
            except (ValueError, OSError, EOFError) as exc:
                raise KerasFileError(f"{where}: unreadable array ({first_line(exc)})") from None
    return [data]


def _positive(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ---- which file weight each Keras variable is ---------------------------------------------------

def _digest(a) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(a, dtype=np.float32).tobytes(), digest_size=16).digest()


class _Index:
    """The float weights of the file by content: Keras loaded each variable from one of them."""

    def __init__(self, source: Source, where: str):
        self.where = where
        self.by_content = defaultdict(list)
        for e in source.entries:
            if e.role not in ("optimizer", "variable") and is_float(e.dtype):
                self.by_content[(tuple(e.shape), _digest(source.read(e)))].append(e)
        self._found = {}

    def entry(self, variable):
        """The file's entry holding `variable`'s values; None if none does or several could."""
        key = id(variable)
        if key not in self._found:
            value = keras.ops.convert_to_numpy(variable)
            found = None
            if is_float(str(value.dtype)):
                candidates = self.by_content.get((tuple(value.shape), _digest(value)), [])
                found = _pick(candidates, variable)
            self._found[key] = found
        return self._found[key]


def _pick(candidates: list, variable):
    """The one candidate entry of `variable`: by content, else by its layer's name and its role."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    names = set(variable.path.split("/")[:-1])
    role = variable.path.split("/")[-1]
    narrowed = [e for e in candidates if e.layer in names or names & set(e.path.split("/")[:-1])]
    if len(narrowed) > 1:
        narrowed = [e for e in narrowed if e.role == role] or narrowed
    return narrowed[0] if len(narrowed) == 1 else None


# ---- the layers that are calibrated ---------------------------------------------------------------

def _values(variable) -> np.ndarray:
    """A variable's current values as a NumPy array."""
    return np.asarray(keras.ops.convert_to_numpy(variable))


class _Kernel:
    """One kernel of a layer: its variable, its view, and its rows for a call of the layer.

    ``rows(args, kwargs, value)`` yields the rows in pieces; ``value(variable)`` gives the
    values of the layer's other weights to use (current or float), for kernels whose inputs
    come from another kernel of the layer (`depends`).
    """

    def __init__(self, variable, view: KernelView, rows, depends: bool = False):
        self.variable, self.view, self.rows, self.depends = variable, view, rows, depends
        self.entry = None


class _Layer:
    """A calibrated layer: its kernels in the order they are compressed, and its bias."""

    def __init__(self, layer, kernels: list, bias=None):
        self.layer, self.kernels, self.bias = layer, kernels, bias

    def shift(self, deltas: list):
        """The mean fall of the layer's outputs per output channel (its last kernel's outputs,
        which carry the changes of the kernels before), or None."""
        return None if deltas[-1] is None else deltas[-1].reshape(-1)

    def corrections(self, deltas: list) -> list:
        """(variable, new value) pairs that take back the mean fall of the outputs."""
        shift = self.shift(deltas)
        if shift is None or self.bias is None:
            return []
        bias = _values(self.bias)
        return [(self.bias, (bias + shift.reshape(bias.shape)).astype(bias.dtype))]


def _first(args: tuple, kwargs: dict):
    """The main input of a layer call."""
    if args:
        return args[0]
    for key in ("inputs", "sequences", "x"):
        if key in kwargs:
            return kwargs[key]
    raise ValueError("a layer call without inputs")


def _chunks(x: np.ndarray, per_sample: int):
    """x cut along its first axis so that each piece's rows take about ROW_BYTES."""
    step = max(1, ROW_BYTES // max(per_sample, 1))
    for start in range(0, len(x), step):
        yield x[start:start + step]


def _flat_rows(k: int):
    """Rows of a layer that multiplies the last axis of its input (Dense, RNN kernels)."""
    def rows(args, kwargs, value):
        x = np.asarray(_first(args, kwargs), dtype=np.float32).reshape(-1, k)
        yield from _chunks(x, 4 * k)
    return rows


def _variable(layer, name: str):
    """A layer's weight variable (Dense and Conv keep their kernel as ``_kernel``)."""
    v = getattr(layer, "_" + name, None)
    return v if isinstance(v, keras.Variable) else getattr(layer, name, None)


def _dense(layer) -> _Layer:
    kernel = _variable(layer, "kernel")
    return _Layer(layer, [_Kernel(kernel, KernelView.linear(kernel.shape), _flat_rows(kernel.shape[0]))], layer.bias)


def _patch_rows(layer, kernel_size, groups=1, depthwise=False, padding=None, strides=None, input_dilation=1):
    """Rows of a convolution's input patches, per call, in pieces of about ROW_BYTES."""
    padding = layer.padding if padding is None else padding
    strides = layer.strides if strides is None else strides
    growth = math.prod(np.broadcast_to(input_dilation, len(kernel_size)))

    def rows(args, kwargs, value):
        x = np.asarray(_first(args, kwargs), dtype=np.float32)
        if getattr(layer, "data_format", "channels_last") == "channels_first":
            x = np.moveaxis(x, 1, -1)
        per_sample = 4 * math.prod(x.shape[1:]) * math.prod(kernel_size) * growth
        for part in _chunks(x, per_sample):
            yield patches(part, kernel_size, strides=strides, padding=padding, dilation=layer.dilation_rate,
                          input_dilation=input_dilation, groups=x.shape[-1] if depthwise else groups)
    return rows


def _conv(layer) -> _Layer:
    kernel = _variable(layer, "kernel")
    groups = getattr(layer, "groups", 1)
    return _Layer(layer, [_Kernel(kernel, KernelView.grouped(kernel.shape, groups),
                                  _patch_rows(layer, kernel.shape[:-2], groups=groups))], layer.bias)


def _depthwise(layer) -> _Layer:
    kernel = _variable(layer, "kernel")
    return _Layer(layer, [_Kernel(kernel, KernelView.depthwise(kernel.shape),
                                  _patch_rows(layer, kernel.shape[:-2], depthwise=True))], layer.bias)


def _separable(layer) -> _Layer:
    """SeparableConv: the depthwise kernel from input patches, then the pointwise kernel from
    what the depthwise kernel makes of them; the bias after both."""
    depthwise, pointwise = layer.depthwise_kernel, layer.pointwise_kernel
    view = KernelView.depthwise(depthwise.shape)
    patch_rows = _patch_rows(layer, depthwise.shape[:-2], depthwise=True)

    def pointwise_rows(args, kwargs, value):
        matrix = view.matrix(value(depthwise), np.float32)  # (channels, taps, multiplier)
        for rows in patch_rows(args, kwargs, value):
            yield np.einsum("ngk,gkm->ngm", rows, matrix).reshape(len(rows), -1)

    return _Layer(layer, [_Kernel(depthwise, view, patch_rows),
                          _Kernel(pointwise, KernelView.linear(pointwise.shape), pointwise_rows, depends=True)],
                  layer.bias)


def _transposed(layer) -> _Layer:
    """Conv*Transpose: the convolution of the stride-dilated input with the flipped kernel."""
    kernel = _variable(layer, "kernel")
    size = kernel.shape[:-2]
    output_padding = layer.output_padding or (None,) * len(size)
    pads = [_transpose_padding(k, s, d, layer.padding, p)
            for k, s, d, p in zip(size, layer.strides, layer.dilation_rate, output_padding)]
    rows = _patch_rows(layer, size, padding=pads, strides=1, input_dilation=layer.strides)
    return _Layer(layer, [_Kernel(kernel, KernelView.transposed(kernel.shape), rows)], layer.bias)


def _transpose_padding(kernel: int, stride: int, dilation: int, padding: str, output_padding) -> tuple:
    """Keras's padding (before, after) of the stride-dilated input of a transposed convolution."""
    span = (kernel - 1) * dilation + 1
    if padding == "valid":
        extra = max(span, stride) - span if output_padding is None else output_padding
        return span - 1, span - 1 + extra
    total = stride + span - 2 if output_padding is None else span + span % 2 - 2 + output_padding
    before = min(total // 2 + total % 2, span - 1)
    return before, total - before


class _Einsum(_Layer):
    """EinsumDense: rows from the equation; the bias takes the fall where it spans the outputs."""

    def __init__(self, layer):
        kernel = _variable(layer, "kernel")
        self.equation = layer.equation
        self.views = {}

        def rows(args, kwargs, value):
            x = np.asarray(_first(args, kwargs), dtype=np.float32)
            view, order, summed = self._view(x.ndim, kernel.shape)
            if summed:
                x = x.sum(axis=summed)
            g, k, _ = view.matrix_shape
            yield from _chunks(np.ascontiguousarray(x.transpose(order)).reshape(-1, g, k), 4 * g * k)

        view = self._view(None, kernel.shape)[0]
        super().__init__(layer, [_Kernel(kernel, view, rows)], getattr(layer, "bias", None))

    def _view(self, ndim, shape):
        """einsum_view for an input of `ndim` axes (None: the kernel's view, which does not
        depend on how many axes an ellipsis stands for)."""
        if ndim is None:
            x_sub = self.equation.split(",")[0]
            ndim = len(x_sub.replace("...", "")) + ("..." in x_sub)
        if ndim not in self.views:
            self.views[ndim] = einsum_view(self.equation, ndim, tuple(shape))
        return self.views[ndim]

    def corrections(self, deltas):
        """The bias spans some output axes (its shape has 1 elsewhere): it takes the fall when
        the fall varies along those axes only."""
        if deltas[0] is None or self.bias is None:
            return []
        lhs, out = self.equation.split("->")
        k_sub = lhs.split(",")[1]
        view = self.kernels[0].view
        varying = [k_sub[a] for a in view.groups + view.outputs]
        bias_axes = getattr(self.layer, "bias_axes", None) or ""
        if not set(varying) <= set(bias_axes):
            return []
        spec = out[min(out.find(c) for c in bias_axes):]
        sizes = {c: view.split[a] for c, a in zip(varying, view.groups + view.outputs)}
        delta = deltas[0].reshape([sizes[c] for c in varying])
        delta = np.transpose(delta, [varying.index(c) for c in spec if c in varying])
        delta = delta.reshape([sizes.get(c, 1) for c in spec])
        bias = _values(self.bias)
        if delta.ndim != bias.ndim:
            return []
        return [(self.bias, (bias + delta).astype(bias.dtype))]


class _Recurrent(_Layer):
    """LSTM, GRU, SimpleRNN: the kernel from the inputs at every step, then the recurrent kernel
    from the states before every step (zeros, then the layer's outputs but the last)."""

    def __init__(self, layer):
        cell = layer.cell
        self.gru = isinstance(cell, keras.layers.GRUCell)
        self.reset_after = bool(getattr(cell, "reset_after", False))
        self.copy = None

        def state_rows(args, kwargs, value):
            x = np.asarray(_first(args, kwargs), dtype=np.float32)
            copy = self._copy(layer, x, value)
            for part in _chunks(x, 4 * math.prod(x.shape[1:])):
                states = np.asarray(keras.ops.convert_to_numpy(copy(part)), dtype=np.float32)
                previous = np.concatenate([np.zeros_like(states[:, :1]), states[:, :-1]], axis=1)
                yield previous.reshape(-1, previous.shape[-1])

        kernel, recurrent = cell.kernel, cell.recurrent_kernel
        super().__init__(layer, [_Kernel(kernel, KernelView.linear(kernel.shape), _flat_rows(kernel.shape[0])),
                                 _Kernel(recurrent, KernelView.linear(recurrent.shape), state_rows, depends=True)],
                         getattr(cell, "bias", None))

    def _copy(self, layer, x, value):
        """The layer returning its whole output sequence, with the weights `value` gives."""
        if self.copy is None:
            config = dict(layer.get_config(), return_sequences=True, return_state=False, stateful=False)
            self.copy = type(layer).from_config(config)
            self.copy(x[:1])
        self.copy.set_weights([value(v) for v in layer.weights])
        return self.copy

    def shift(self, deltas):
        return None  # the outputs are states, not a linear map of the inputs

    def corrections(self, deltas):
        if self.bias is None:
            return []
        bias = _values(self.bias).copy()
        kernel, recurrent = (None if d is None else d.reshape(-1) for d in deltas)
        if self.gru and self.reset_after:  # two bias rows: the inputs', the states'
            for row, delta in ((0, kernel), (1, recurrent)):
                if delta is not None:
                    bias[row] += delta
        else:
            if kernel is not None:
                bias += kernel
            if recurrent is not None:  # a GRU without reset_after resets the state of its candidate part
                part = 2 * recurrent.size // 3 if self.gru else recurrent.size
                bias[:part] += recurrent[:part]
        return [(self.bias, bias)]


def _handler(layer):
    """The calibrated form of `layer`, or None when its kernels are not calibrated."""
    L = keras.layers
    if getattr(layer, "quantization_mode", None) or not getattr(layer, "built", False):
        return None
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        return _separable(layer)
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return _depthwise(layer)
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        return _transposed(layer)
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        return _conv(layer)
    if isinstance(layer, L.EinsumDense):
        return _Einsum(layer)
    if isinstance(layer, L.Dense):
        return _dense(layer)
    if isinstance(layer, L.RNN) and isinstance(getattr(layer, "cell", None), (L.LSTMCell, L.GRUCell, L.SimpleRNNCell)):
        return _Recurrent(layer)
    return None


# ---- running the model -------------------------------------------------------------------------

def _graph(op):
    """The Functional graph of a Functional or Sequential model, else None."""
    if isinstance(op, keras.Sequential):
        op = getattr(op, "_functional", None)
    if isinstance(op, keras.Model) and hasattr(op, "_nodes_by_depth") and getattr(op, "inputs", None):
        return op
    return None


def _numpy(value):
    return keras.tree.map_structure(lambda a: _values(a) if keras.ops.is_tensor(a) else a, value)


class _Calls:
    """The calls of an operation on all samples, in batches, in the two streams: 0 with the
    compressed model's values, 1 with the float model's (the same objects while they agree).

    ``fill(s, stream)`` gives (args, kwargs) for the samples of slice s (None: all).
    """

    def __init__(self, fill, count: int, batch_size: int, identical: bool):
        self.fill, self.count, self.batch_size, self.identical = fill, count, batch_size, identical

    def slices(self) -> list:
        return [slice(i, min(i + self.batch_size, self.count)) for i in range(0, self.count, self.batch_size)]

    def stream(self, which: int):
        for s in self.slices():
            yield self.fill(s, which)

    def pairs(self):
        for s in self.slices():
            compressed = self.fill(s, 0)
            yield compressed, compressed if self.identical else self.fill(s, 1)


class _Captured:
    """The calls of one layer collected in both streams (lists of (args, kwargs))."""

    def __init__(self, compressed: list, floats: list, identical: bool):
        self.compressed, self.floats, self.identical = compressed, floats, identical

    def pairs(self):
        return zip(self.compressed, self.compressed if self.identical else self.floats)


class _Complete(Exception):
    """Every layer there is to compress is done: the rest of the model need not run."""


class _Calibrator:
    """One calibration: the walk of the model, the layers compressed on the way.

    Each tensor of the walk is held in two streams, the compressed model's and the float
    model's (one array while they agree); every changed variable's float values are kept until
    its operation has run in the float stream.
    """

    def __init__(self, model, recipe: Recipe, work, index: _Index, native: dict, *, batch_size, damping, act_order,
                 bias_correction, float_targets, refit_damping):
        self.model, self.recipe, self.index = model, recipe, index
        self.native = native  # kernel path -> NativeKernel: quantized on Keras's own grid
        self.batch_size, self.damping, self.act_order = batch_size, damping, act_order
        self.refit_damping = refit_damping
        self.bias_correction, self.float_targets = bias_correction, float_targets
        self.counts = work.counts
        self.selected = {e.path for e in work.selected}
        self.weights, self.grids = {}, {}
        self.floats = {}  # id(variable) -> (variable, float values) while the float stream needs them
        self.done = set()
        self.stats = Counter()
        self.handlers = {}
        handled = set()
        for layer in [model] + sublayers(model):
            h = _handler(layer)
            if h is None:
                continue
            for k in h.kernels:
                k.entry = index.entry(k.variable)
                handled.add(id(k.variable))
            if any(k.entry is not None and k.entry.path in self.selected for k in h.kernels):
                self.handlers[id(layer)] = h
        self.data_free = {}  # selected kernels that are not calibrated: id -> (variable, entry)
        for variable in model.weights:
            if id(variable) not in handled:
                e = index.entry(variable)
                if e is not None and e.path in self.selected:
                    self.data_free[id(variable)] = (variable, e)

    def result(self, count: int) -> Calibration:
        done = ", ".join(f"{n} {noun if n == 1 else noun + ('es' if noun.endswith('s') else 's')} {what}"
                         for (noun, what), n in sorted(self.stats.items()))
        return Calibration(self.weights, self.grids, [f"calibrated on {count} samples: {done or 'nothing'}"], count)

    # -- the walk --

    def run(self, inputs: list, where) -> None:
        graph = _graph(self.model)
        try:
            if graph is not None:
                self.graph(graph, [(a, a) for a in inputs])
            else:  # a subclassed model: its layers intercepted as it calls them

                def fill(s, stream):
                    batch = [a if s is None else a[s] for a in inputs]
                    return (batch[0] if len(batch) == 1 else batch,), {}

                self.op(self.model, _Calls(fill, len(inputs[0]), self.batch_size, True), [])
        except _Complete:
            pass
        except _Failure as failure:
            name = os.fspath(where) if isinstance(where, (str, os.PathLike)) else "samples"
            raise KerasFileError(f"{name}: layer {failure.op.name!r} of the model fails on the samples "
                                 f"({first_line(failure.error)})") from None

    def _work(self, op) -> list:
        return [layer for layer in [op] + sublayers(op) if id(layer) in self.handlers and id(layer) not in self.done]

    def graph(self, graph, inputs: list) -> list:
        """Run a Functional graph node by node on all samples; each node's outputs (a pair of
        streams) are kept while a later node needs them."""
        count = len(inputs[0][0])
        nodes = [node for depth in sorted(graph._nodes_by_depth, reverse=True)
                 for node in graph._nodes_by_depth[depth] if node.operation is not None and not node.is_input]
        values = {id(t): pair for t, pair in zip(graph.inputs, inputs)}
        consumers = defaultdict(list)
        for node in nodes:
            for t in node.input_tensors:
                consumers[id(t)].append(node)
        uses = Counter({key: len(v) for key, v in consumers.items()})
        for t in graph.outputs:
            uses[id(t)] += 1
        for node in nodes:
            if len(self.done) == len(self.handlers) and not self.data_free:
                raise _Complete
            if any(id(t) not in values for t in node.input_tensors):
                continue  # not reachable from the inputs (Keras skips it too)

            def fill(s, stream, node=node):
                return node.arguments.fill_in({id(t): values[id(t)][stream] if s is None else values[id(t)][stream][s]
                                               for t in node.input_tensors})

            identical = all(values[id(t)][0] is values[id(t)][1] for t in node.input_tensors)
            after = [c.operation for t in node.outputs[:1] for c in consumers[id(t)]]
            outputs = self.op(node.operation, _Calls(fill, count, self.batch_size, identical), after)
            for t in node.input_tensors:
                uses[id(t)] -= 1
                if uses[id(t)] <= 0:
                    values.pop(id(t), None)
            for t, pair in zip(node.outputs, outputs):
                if uses[id(t)] > 0:
                    values[id(t)] = pair
        return [values[id(t)] for t in graph.outputs]

    def op(self, op, calls: _Calls, after: list) -> list:
        """Compress what `op` holds, then its outputs for all samples, as (compressed, float) pairs."""
        work = self._work(op)
        graph = _graph(op) if work else None
        if graph is not None:
            args, kwargs = calls.fill(None, 0)
            if len(args) == 1 and not any(isinstance(v, np.ndarray) for v in keras.tree.flatten(kwargs)):
                floats = calls.fill(None, 1)[0][0]
                inner = list(zip(keras.tree.flatten(args[0]), keras.tree.flatten(floats)))
                if len(inner) == len(graph.inputs):
                    return self.graph(graph, inner)
        for variable in getattr(op, "weights", []):
            if id(variable) in self.data_free:
                self._data_free(*self.data_free.pop(id(variable)))
        if op in work:
            self.compress(op, calls, after)
        work = self._work(op)
        if work:
            self.inside(op, calls, work)
        return self.outputs(op, calls)

    def _data_free(self, variable, e) -> None:
        """A kernel that is not calibrated gets, in the model too, what the rewrite gives it."""
        x = np.ascontiguousarray(_values(variable), dtype=np.float32)
        pruned, quantization, out = prepare(x, e, self.recipe, self.counts, Buffers())
        values = pruned if quantization is None else quantization.values(pruned, out)
        self._change(variable, np.array(values).reshape(variable.shape))
        self.stats["kernel", "left to the data-free rewrite"] += 1

    def _change(self, variable, value) -> None:
        """Assign a variable, keeping its float values for the float stream."""
        self.floats.setdefault(id(variable), (variable, _values(variable).copy()))
        variable.assign(value)

    def _float_value(self, variable) -> np.ndarray:
        return self.floats[id(variable)][1] if id(variable) in self.floats else _values(variable)

    def outputs(self, op, calls: _Calls) -> list:
        """op's outputs in both streams; the float values of its variables are then let go."""
        ours = [self.floats[id(v)] for v in getattr(op, "weights", []) if id(v) in self.floats]
        compressed = self._outputs(op, calls, 0)
        if not self.float_targets or (calls.identical and not ours):
            floats = compressed
        else:
            with _swapped(ours):
                floats = self._outputs(op, calls, 1)
        for variable, _ in ours:
            self.floats.pop(id(variable), None)
        return list(zip(compressed, floats))

    def _outputs(self, op, calls: _Calls, stream: int) -> list:
        out = None
        for s in calls.slices():
            ys = _apply(op, *calls.fill(s, stream))
            if any(y.ndim == 0 or len(y) != s.stop - s.start for y in ys):  # not batched: run it once
                return _apply(op, *calls.fill(None, stream))
            if out is None:
                out = [np.empty((calls.count,) + y.shape[1:], y.dtype) for y in ys]
            for o, y in zip(out, ys):
                o[s] = y
        return out or []

    def inside(self, op, calls: _Calls, work: list) -> None:
        """Layers that `op` calls itself: in the order of their first call, each compressed from
        its calls collected over all samples (in the float stream with op's float values)."""
        order = []
        with intercepted(work, lambda layer, a, k: order.append(layer) if layer not in order else None):
            _apply(op, *calls.fill(calls.slices()[0], 0))
        for layer in order:
            if id(layer) in self.done:
                continue
            compressed = self._capture(op, calls, layer, 0)
            ours = [self.floats[id(v)] for v in getattr(op, "weights", []) if id(v) in self.floats]
            identical = calls.identical and not ours
            if not identical:
                with _swapped(ours):
                    floats = self._capture(op, calls, layer, 1)
            self.compress(layer, _Captured(compressed, None if identical else floats, identical), after=[])

    def _capture(self, op, calls: _Calls, layer, stream: int) -> list:
        captured = []
        with intercepted([layer], lambda _, a, k: captured.append(_numpy((a, k)))):
            for args, kwargs in calls.stream(stream):
                _apply(op, args, kwargs)
        return captured

    # -- one layer --

    def compress(self, layer, calls, after: list) -> None:
        """Compress the selected kernels of `layer` from its calls, then correct its bias."""
        h = self.handlers[id(layer)]
        self.done.add(id(layer))
        deltas = []
        for k in h.kernels:
            before = np.array(_values(k.variable), dtype=np.float32)
            g, n, _ = k.view.matrix_shape
            hessian = Hessian(n, g)
            targets = not calls.identical if self.float_targets else False
            targets = targets or k.depends
            for (args, kwargs), (float_args, float_kwargs) in calls.pairs():
                rows = k.rows(args, kwargs, _values)
                if not targets:
                    for part in rows:
                        hessian.add(part)
                    continue
                for part, target in zip(rows, k.rows(float_args, float_kwargs, self._float_value)):
                    hessian.add(part, target)
            if hessian.count == 0:
                deltas.append(None)
                continue
            values = before
            if k.entry is not None and k.entry.path in self.selected:
                values = self.kernel(k, before, hessian)
                self._change(k.variable, values)
                self.weights[k.entry.path] = _Value(k.variable)
                self.stats[f"{type(layer).__name__} kernel", "calibrated"] += 1
            deltas.append(mean_output_error(hessian, before, values, k.view))
        if self.bias_correction:
            self.correct(h, deltas, after)

    def kernel(self, k: _Kernel, w: np.ndarray, hessian: Hessian) -> np.ndarray:
        """The kernel refitted to the float outputs, pruned (SparseGPT) and quantized (GPTQ)."""
        e, recipe = k.entry, self.recipe
        options = {"view": k.view, "damping": self.damping}
        if hessian.cross() is not None:
            w = refit(w, hessian, view=k.view, damping=self.refit_damping)
        if recipe.n_m is not None:
            least = default_min_size("n:m") if recipe.min_size is None else recipe.min_size
            if w.size >= least:
                w = sparsegpt(w, hessian, n=recipe.n_m[0], m=recipe.n_m[1], **options)
        elif recipe.prunes and self.counts.get(e.path, 0):
            w = sparsegpt(w, hessian, count_fraction(self.counts[e.path], w.size), **options)
        if not recipe.quantizes:
            return w
        if e.path in self.native:
            return self.native_kernel(self.native[e.path], e, w, hessian, options)
        view, grid_options = recipe.layout_for(e)
        if recipe.bits is not None:
            bits = recipe.bits_for(e)
        else:
            search = grid_options if recipe.method is None else dict(grid_options, method=recipe.method)
            bits = int(bits_for_sqnr(w.reshape(view), recipe.target_sqnr, **search))
        # GPTQ rounds column by column, pushing each error onto the columns left: the file's own
        # rounding rule has no part in it (and changes nothing on values already on the grid)
        grid_options = {k: v for k, v in grid_options.items() if k != "rounding"}
        q = gptq(w.reshape(view), hessian, bits, method=recipe.method_for(bits), act_order=self.act_order,
                 **grid_options, **options)
        self.grids[e.path] = Grid(bits, q.scale, q.zero_point)
        return q.dequantize().reshape(w.shape)

    def native_kernel(self, native, e, w: np.ndarray, hessian: Hessian, options: dict) -> np.ndarray:
        """A kernel that storage="keras" writes in Keras's layout, rounded by GPTQ onto the grid
        Keras's quantizer gives it (its scales, zero points and code range, in its layout), so
        that the file stores the codes GPTQ chose; returns the weight Keras computes with."""
        recipe, bfloat16 = self.recipe, e.dtype == BFLOAT16
        bits, block = recipe.bits, recipe.block_size
        grid = native_grid(native, w, bits, block, recipe.method_for(bits), bfloat16)
        scale, zero_point, low, high = grid_values(native, w.shape, grid, block)
        values = gptq_on_grid(w, hessian, scale, zero_point, low, high, act_order=self.act_order, **options)
        self.grids[e.path] = grid
        return on_native_grid(native, values, grid, block, bfloat16, values)[1]

    def correct(self, h: _Layer, deltas: list, after: list) -> None:
        """Take back the mean fall of the layer's outputs: in its bias, or in the moving mean
        of the BatchNormalization that follows a layer without bias."""
        if all(d is None for d in deltas):
            return
        changes = h.corrections(deltas)
        if not changes and h.bias is None:
            shift = h.shift(deltas)
            norms = [op for op in after if isinstance(op, keras.layers.BatchNormalization)]
            if shift is not None and len(norms) == 1 and tuple(norms[0].moving_mean.shape) == shift.shape:
                mean = _values(norms[0].moving_mean)
                changes = [(norms[0].moving_mean, (mean - shift).astype(mean.dtype))]
        for variable, value in changes:
            e = self.index.entry(variable)
            if e is None or e.path in self.selected:
                continue  # not found in the file: left as it is, as the file will have it
            self._change(variable, value)
            self.weights[e.path] = _Value(variable)
            self.stats["bias", "corrected"] += 1


class _Failure(Exception):
    """An operation of the model raised on the samples."""

    def __init__(self, op, error):
        super().__init__(str(error))
        self.op, self.error = op, error


def _apply(op, args: tuple, kwargs: dict) -> list:
    """op's outputs for one call, flattened, as arrays; what Keras raises becomes a _Failure."""
    try:
        return [_values(y) for y in keras.tree.flatten(op(*args, **kwargs))]
    except (KerasFileError, _Failure, _Complete, MemoryError):
        raise
    except Exception as exc:
        raise _Failure(op, exc) from exc


@contextlib.contextmanager
def _swapped(pairs: list):
    """The variables of (variable, float values) pairs hold their float values meanwhile."""
    current = [(v, _values(v).copy()) for v, _ in pairs]
    for v, value in pairs:
        v.assign(value)
    try:
        yield
    finally:
        for v, value in current:
            v.assign(value)


class _Value:
    """A variable's values, read when NumPy converts it (after the calibration is complete)."""

    def __init__(self, variable):
        self.variable = variable
        self.shape = tuple(variable.shape)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(_values(self.variable), dtype=dtype)
