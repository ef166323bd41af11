"""wqkernels.keras.PruningCallback: pruning while a Keras 3 model trains (JAX here; the other
backends in a subprocess where they are installed)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import wqkernels
from wqkernels import reference
from wqkernels.allocation import SparsityWarning, prune_model

os.environ.setdefault("KERAS_BACKEND", "jax")

#: keras 3.15 calls np.array(variable) in ways numpy 2 deprecates; nothing of ours
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter that finds wqkernels where these tests found it."""
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=environ, timeout=300)


def test_import_wqkernels_does_not_import_keras():
    done = _run("import wqkernels, sys; assert 'keras' not in sys.modules, sorted(sys.modules)")
    assert done.returncode == 0, done.stderr


def test_without_keras_one_clear_line():
    done = _run("import sys; sys.modules['keras'] = None; import wqkernels.keras")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: wqkernels.keras needs Keras 3") and "wqkernels[keras]" in last, last


# ---- keras ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras():
    pytest.importorskip("jax", reason="keras tests need jax (the CPU backend)")
    return pytest.importorskip("keras", reason="keras tests need keras 3")


@pytest.fixture(scope="module")
def cb(keras):
    import wqkernels.keras as cb
    return cb


def small_cnn(keras, seed: int = 0, dtype: str | None = None):
    """Conv2D 3x3x32 (288 weights) -> BN -> DepthwiseConv2D (288) -> Conv2D 1x1 32->32 (1024)
    -> MaxPool -> Dense 512->10 (5120): two tensors under the default min_size of N:M."""
    from keras import layers
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(32, 3, padding="same", name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
        layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
        layers.Conv2D(32, 1, activation="relu", name="pw", dtype=dtype),
        layers.MaxPooling2D(2, name="pool"),
        layers.Flatten(name="flat"),
        layers.Dense(10, name="head"),
    ], name="small")


def data(n: int = 64, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


def compiled(keras, model, **options):
    optimizer = options.pop("optimizer", None) or keras.optimizers.Adam(1e-2, **options.pop("adam", {}))
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  **options)
    return model


@pytest.fixture(scope="module")
def fresh(keras):
    """A function returning one compiled small CNN, its weights and optimizer state put back to
    where they started (one compiled train step for the tests that fit it)."""
    model = compiled(keras, small_cnn(keras))
    model.optimizer.build(model.trainable_variables)
    start = [np.array(v.numpy()) for v in model.variables + model.optimizer.variables]

    def reset():
        for v, value in zip(model.variables + model.optimizer.variables, start):
            v.assign(value)
        return model
    return reset


def kernels(model) -> dict:
    """The model's kernels (2+ axes, named kernel) as NumPy arrays, by path."""
    return {v.path: np.array(v.numpy()) for v in model.weights
            if v.path.rsplit("/", 1)[-1] in ("kernel", "depthwise_kernel", "pointwise_kernel") and len(v.shape) >= 2}


def assert_same_values(a: dict, b: dict) -> None:
    """The same arrays in the same order (a loaded model's paths lose the model's name)."""
    assert len(a) == len(b)
    for x, y in zip(a.values(), b.values()):
        np.testing.assert_array_equal(x, y)


def zeros(arrays: dict) -> int:
    return sum(int(np.count_nonzero(a == 0)) for a in arrays.values())


def recorder(keras):
    """A callback (listed after the pruning one) that copies the kernels where each step begins,
    i.e. what its forward pass sees (`begins`), and at each epoch's end (`epochs`)."""
    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.begins, self.epochs = [], []

        def on_train_batch_begin(self, batch, logs=None):
            self.begins.append(kernels(self.model))

        def on_epoch_end(self, epoch, logs=None):
            self.epochs.append(kernels(self.model))
    return Recorder()


@pytest.mark.keras
@pytest.mark.parametrize("kwargs, message", [
    ({"sparsity": 1.5}, "sparsity must be between 0 and 1, got 1.5"),
    ({"sparsity": -0.1}, "sparsity must be between 0 and 1"),
    ({"sparsity": "3:2"}, "sparsity N:M needs 0 < N <= M, got '3:2'"),
    ({"sparsity": "0:4"}, "sparsity N:M needs 0 < N <= M"),
    ({"sparsity": "two:four"}, "sparsity must be a fraction or 'N:M', got 'two:four'"),
    ({"sparsity": 0.5, "schedule": "cosine"}, "schedule must be one of 'polynomial', 'constant', got 'cosine'"),
    ({"sparsity": 0.5, "begin_step": 100, "end_step": 50}, "end_step must be > begin_step"),
    ({"sparsity": 0.5, "begin_step": 100, "end_step": 100}, "end_step must be > begin_step"),
    ({"sparsity": 0.5, "schedule": "constant", "begin_step": 100, "end_step": 99}, "end_step must be >= begin_step"),
    ({"sparsity": 0.5, "begin_step": -1}, "begin_step must be >= 0, got -1"),
    ({"sparsity": 0.5, "initial_sparsity": 0.6}, "initial_sparsity must be <= sparsity"),
    ({"sparsity": 0.5, "schedule": "constant", "initial_sparsity": 0.2}, "initial_sparsity applies to the polynomial"),
    ({"sparsity": 0.5, "frequency": 0}, "frequency must be >= 1, got 0"),
    ({"sparsity": 0.5, "power": 0}, "power must be a positive number, got 0"),
    ({"sparsity": 0.5, "allocation": "layer"}, "allocation must be one of global, uniform, got 'layer'"),
    ({"sparsity": 0.5, "min_size": -1}, "min_size must be >= 0, got -1"),
])
def test_bad_arguments_at_construction(cb, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cb.PruningCallback(**kwargs)


@pytest.mark.keras
@pytest.mark.parametrize("kwargs", [{"sparsity": None}, {"sparsity": True}, {"sparsity": 0.5, "frequency": 2.5},
                                    {"sparsity": 0.5, "begin_step": "0"}])
def test_wrong_types(cb, kwargs):
    with pytest.raises(TypeError, match="sparsity|frequency|begin_step"):
        cb.PruningCallback(**kwargs)


# ---- schedules --------------------------------------------------------------------------------

@pytest.mark.keras
def test_polynomial_is_tfmot_polynomial_decay(cb):
    s = cb.PruningSchedule("polynomial", 0.8, begin=10, end=110, frequency=25, initial=0.2)
    assert [s.last_update(t) for t in (0, 9, 10, 34, 35, 59, 109, 110, 500)] == [None, None, 10, 10, 35, 35, 85,
                                                                                  110, 110]
    for t in (10, 35, 60, 85, 110):  # tfmot: (initial - final) * (1 - p) ** 3 + final
        p = min(1.0, (t - 10) / 100)
        assert s.sparsity_at(t) == pytest.approx((0.2 - 0.8) * (1 - p) ** 3 + 0.8, abs=1e-15)
    assert s.sparsity_at(9) == 0 and s.sparsity_at(40) == s.sparsity_at(35) and s.sparsity_at(10**6) == 0.8


@pytest.mark.keras
def test_constant_schedule(cb):
    s = cb.PruningSchedule("constant", 0.5, begin=3, end=None, frequency=4)
    assert [s.last_update(t) for t in (2, 3, 6, 7, 100)] == [None, 3, 3, 7, 99]
    assert [s.sparsity_at(t) for t in (2, 3, 100)] == [0.0, 0.5, 0.5]


@pytest.mark.keras
@given(begin=st.integers(0, 50), length=st.integers(1, 300), frequency=st.integers(1, 60),
       initial=st.floats(0, 1), final=st.floats(0, 1), power=st.sampled_from([1, 2, 3, 0.5]))
def test_polynomial_properties(cb, begin, length, frequency, initial, final, power):
    initial, final = min(initial, final), max(initial, final)
    s = cb.PruningSchedule("polynomial", final, begin, begin + length, frequency, initial, power)
    previous, updates = 0.0, []
    for t in range(begin + length + 5):
        value = s.sparsity_at(t)
        assert previous <= value <= final  # never decreasing: a pruned weight stays pruned
        previous = value
        if s.last_update(t) == t:
            updates.append(t)
    assert updates[0] == begin and updates[-1] == begin + length and s.sparsity_at(begin) == initial
    assert all(0 < b - a <= frequency for a, b in zip(updates, updates[1:]))
    assert s.sparsity_at(begin + length) == final


# ---- which weights, which masks ---------------------------------------------------------------

def every_layer_kind(keras):
    """Conv2D, BN, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, a nested Sequential, a
    shared Dense, Embedding, LSTM, Bidirectional GRU, MultiHeadAttention, TimeDistributed,
    a Dense without bias and an int8-quantized Dense (constant initializers: cheap to build)."""
    from keras import layers
    one = {"kernel_initializer": "ones"}
    image = keras.Input((6, 6, 3))
    x = layers.Conv2D(8, 3, padding="same", **one)(image)
    x = layers.BatchNormalization()(x)
    x = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, depthwise_initializer="ones")(x)
    x = layers.SeparableConv2D(8, 3, padding="same", depthwise_initializer="ones", pointwise_initializer="ones")(x)
    x = layers.Conv2DTranspose(6, 3, padding="same", **one)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = keras.Sequential([keras.Input((6,)), layers.Dense(12, **one), layers.Dense(8, **one)])(x)
    shared = layers.Dense(8, **one)
    x = shared(shared(x))
    tokens = keras.Input((5,), dtype="int32")
    y = layers.Embedding(20, 8, embeddings_initializer="ones")(tokens)
    y = layers.LSTM(6, return_sequences=True, recurrent_initializer="ones", **one)(y)
    y = layers.Bidirectional(layers.GRU(4, return_sequences=True, recurrent_initializer="ones", **one))(y)
    y = layers.MultiHeadAttention(2, 4, **one)(y, y)
    y = layers.TimeDistributed(layers.Dense(3, use_bias=False, **one))(y)
    quantized = layers.Dense(4, **one)
    out = quantized(layers.Concatenate()([x, layers.Flatten()(y)]))
    quantized.quantize("int8")
    return keras.Model([image, tokens], out)


@pytest.mark.keras
def test_prunable_weights_are_the_file_layers(keras, cb, tmp_path):
    """The same tensors as ``wqkernels.inspect`` marks prunable in the saved model."""
    from wqkernels.keras.weights import prunable_weights

    model = every_layer_kind(keras)
    path = tmp_path / "m.keras"
    model.save(path)
    ours = prunable_weights(model)
    theirs = [w for w in wqkernels.inspect(path) if w.prunable]
    assert sorted((k.role, k.shape) for k in ours) == sorted((w.role, tuple(w.shape)) for w in theirs)
    assert len(ours) == 20 and len({k.path for k in ours}) == len(ours)


@pytest.mark.keras
@given(seed=st.integers(0, 2**32 - 1), sparsity=st.floats(0, 1), allocation=st.sampled_from(["global", "uniform"]),
       min_size=st.sampled_from([None, 0, 300]), zeroed=st.floats(0, 0.5))
def test_masks_prune_as_prune_model(cb, seed, sparsity, allocation, min_size, zeroed):
    """Fraction masks zero exactly what prune_model zeroes, zeros already present included."""
    from wqkernels.keras.weights import keep_masks
    rng = np.random.default_rng(seed)
    values = {"a": rng.normal(size=(3, 3, 8, 16)).astype(np.float32), "b": rng.normal(size=(64, 10)),
              "c": rng.normal(size=(10, 4)).astype(np.float16)}
    values["a"][rng.random(values["a"].shape) < zeroed] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SparsityWarning)
        keep = keep_masks(values, {}, sparsity, None, allocation=allocation, min_size=min_size)
        expected = prune_model(values, sparsity, allocation=allocation, min_size=min_size)
    for name, x in values.items():
        got = np.where(keep[name], x, 0) if name in keep else x
        np.testing.assert_array_equal(got, expected[name])
        if name in keep:
            assert not keep[name][x == 0].any()


@pytest.mark.keras
@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (3, 8)])
def test_n_m_masks_follow_the_input_axis(cb, fresh, n, m):
    from wqkernels.keras.weights import keep_masks, prunable_weights
    model = fresh()
    found = {k.path: k for k in prunable_weights(model)}
    values = {p: np.array(k.variable.numpy()) for p, k in found.items()}
    keep = keep_masks(values, found, None, (n, m))
    assert sorted(keep) == ["small/head/kernel", "small/pw/kernel"]  # 288-weight tensors stay dense
    for path, mask in keep.items():
        x = values[path]
        flat = x.reshape(-1, x.shape[-1])  # Dense (in, out) and 1x1 Conv (1, 1, in, out): runs along in
        np.testing.assert_array_equal(np.where(mask, x, 0).reshape(flat.shape),
                                      reference.prune_n_m(flat, n, m, axis=0))
    assert keep_masks(values, found, None, (2, 4), min_size=0).keys() == found.keys()


@pytest.mark.keras
def test_n_m_masks_follow_an_einsum_equation(keras, cb):
    """An EinsumDense kernel runs its N:M patterns along the axis its equation sums, here the
    last one ("ab,cb->ac": kernel (out, in)), as the file layer does."""
    from wqkernels.keras.weights import keep_masks, prunable_weights
    inputs = keras.Input((64,))
    outputs = keras.layers.EinsumDense("ab,cb->ac", output_shape=(32,), name="proj")(inputs)
    model = keras.Model(inputs, outputs)
    found = {k.path: k for k in prunable_weights(model)}
    assert [k.reduced for k in found.values()] == [(1,)]
    values = {p: np.array(k.variable.numpy()) for p, k in found.items()}
    keep = keep_masks(values, found, None, (2, 4), min_size=0)
    (path, mask), = keep.items()
    np.testing.assert_array_equal(np.where(mask, values[path], 0), reference.prune_n_m(values[path], 2, 4, axis=1))


# ---- training ---------------------------------------------------------------------------------

@pytest.mark.keras
def test_polynomial_fit_zeros_stay_and_end_exact(keras, cb, fresh, tmp_path):
    """Every forward pass sees the masks; the zeros only grow, each update reaches the schedule's
    exact count, and the saved model holds exactly floor(0.9 * total) zeros."""
    model = fresh()
    callback = cb.PruningCallback(0.9, frequency=3)
    record = recorder(keras)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback, record])
    assert (callback.schedule.begin, callback.schedule.end, callback.step) == (0, 17, 24)  # 70 % of 24
    total = sum(a.size for a in record.begins[0].values())
    previous = {p: np.zeros(a.shape, bool) for p, a in record.begins[0].items()}
    for step, seen in enumerate(record.begins):
        assert zeros(seen) == math.floor(callback.schedule.sparsity_at(step) * total), step
        for path, a in seen.items():
            assert (a[previous[path]] == 0).all(), (step, path)
            previous[path] = a == 0
    final = kernels(model)
    assert zeros(final) == math.floor(0.9 * total) == zeros(record.epochs[-1])
    model.save(tmp_path / "pruned.keras")
    loaded = keras.models.load_model(tmp_path / "pruned.keras")
    assert_same_values(kernels(loaded), final)
    prunable = [w for w in wqkernels.inspect(tmp_path / "pruned.keras") if w.prunable]
    assert sum(round(w.sparsity * math.prod(w.shape)) for w in prunable) == math.floor(0.9 * total)


@pytest.mark.keras
def test_moments_of_pruned_weights_do_not_matter(keras, cb, fresh):
    """Zeroing Adam's moments of the pruned weights after every step changes nothing, bit for bit
    (while those moments are not zero without it)."""
    x, y = data()

    def run(reset_moments: bool):
        model = fresh()
        pruning = cb.PruningCallback(0.75, frequency=2)
        extra = []
        if reset_moments:
            class Reset(keras.callbacks.Callback):
                def on_train_batch_begin(self, batch, logs=None):
                    opt = self.model.optimizer
                    for path, keep in pruning._masks.items():
                        i = opt._get_variable_index(pruning._kernels[path].variable)
                        for slots in (opt._momentums, opt._velocities):
                            slots[i].assign(np.where(keep, slots[i].numpy(), 0))
            extra = [Reset()]
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[pruning] + extra)
        opt = model.optimizer
        moments = [np.abs(opt._momentums[opt._get_variable_index(pruning._kernels[p].variable)].numpy())[~keep].max()
                   for p, keep in pruning._masks.items()]
        return [np.array(v.numpy()) for v in model.weights], moments

    plain, moments = run(False)
    reset, _ = run(True)
    assert min(moments) > 0
    for a, b in zip(plain, reset):
        np.testing.assert_array_equal(a, b)


def runs_in_pattern(x: np.ndarray, n: int, m: int) -> np.ndarray:
    """Which runs of m inputs (per output) of a Dense or 1x1 Conv kernel keep at most n weights."""
    runs = x.reshape(-1, m, x.shape[-1])
    return np.count_nonzero(runs, axis=1) <= n


@pytest.mark.keras
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 0.999])
def test_n_m_masks_on_some_runs(cb, fresh, fraction):
    """floor(fraction * runs) runs of each tensor take the pattern: those whose dropped weights
    weigh least (ties: the first in C order); the others stay dense."""
    from wqkernels.keras.weights import keep_masks, prunable_weights
    model = fresh()
    found = {k.path: k for k in prunable_weights(model)}
    values = {p: np.array(k.variable.numpy()) for p, k in found.items()}
    values["small/head/kernel"][:8, :3] = 0  # runs already in the pattern weigh nothing
    keep = keep_masks(values, found, None, (2, 4), runs=fraction)
    full = keep_masks(values, found, None, (2, 4))
    for path, mask in keep.items():
        x = values[path]
        flat_full = np.where(full[path], x, 0).reshape(-1, 4, x.shape[-1])
        flat = x.reshape(-1, 4, x.shape[-1])
        dropped = np.abs(np.where(flat_full == 0, flat, 0).astype(np.float64)).sum(axis=1)  # (runs, outputs)
        order = np.argsort(dropped.T.ravel(), kind="stable")  # C order of the (output, run) view
        chosen = np.zeros(dropped.size, bool)
        chosen[order[:math.floor(fraction * dropped.size)]] = True
        chosen = chosen.reshape(dropped.T.shape).T[:, None, :]
        expected = np.where(chosen, flat_full, flat).reshape(x.shape)
        np.testing.assert_array_equal(np.where(mask, x, 0), expected)
        assert not mask[x == 0].any()


@pytest.mark.keras
def test_n_m_fit_grows_to_the_pattern(keras, cb, fresh):
    """The polynomial schedule puts floor(s * runs) runs of each tensor in the pattern at each
    update; the zeros only grow; at the end every run of the large tensors is 2:4 and the small
    ones are dense."""
    model = fresh()
    callback = cb.PruningCallback("2:4", frequency=3)
    record = recorder(keras)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback, record])
    assert (callback.schedule.begin, callback.schedule.end) == (0, 17)
    previous = {p: np.zeros(a.shape, bool) for p, a in record.begins[0].items()}
    grew = set()
    for step, seen in enumerate(record.begins):
        fraction = callback.schedule.sparsity_at(step)
        for path in ("small/pw/kernel", "small/head/kernel"):
            pattern = runs_in_pattern(seen[path], 2, 4)
            assert pattern.sum() >= math.floor(fraction * pattern.size), (step, path)
            grew.add(int(pattern.sum()))
        for path, a in seen.items():
            assert (a[previous[path]] == 0).all(), (step, path)
            previous[path] = a == 0
    assert len(grew) > 3  # the pattern spread over several updates
    weights = kernels(model)
    for path in ("small/pw/kernel", "small/head/kernel"):
        runs = weights[path].reshape(-1, 4, weights[path].shape[-1])  # 4 consecutive inputs per output
        assert (np.count_nonzero(runs, axis=1) == 2).all(), path
    assert zeros({p: weights[p] for p in ("small/conv/kernel", "small/dw/kernel")}) == 0


@pytest.mark.keras
def test_n_m_constant_fit(keras, cb, fresh):
    """schedule="constant": every run in the pattern from the first step on."""
    model = fresh()
    record = recorder(keras)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              callbacks=[cb.PruningCallback("2:4", schedule="constant"), record])
    for seen in record.begins:
        for path in ("small/pw/kernel", "small/head/kernel"):
            runs = seen[path].reshape(-1, 4, seen[path].shape[-1])
            assert (np.count_nonzero(runs, axis=1) == 2).all(), path


@pytest.mark.keras
def test_resumed_fit_continues_the_schedule(keras, cb, fresh, tmp_path):
    """Saved after 2 of 4 epochs, loaded and fitted on from initial_epoch=2 with a new callback:
    the same weights, bit for bit, as the fit that ran through (the schedule continues from the
    optimizer's iteration count), and the loaded model keeps its zeros."""
    x, y = data()
    through = fresh()
    through.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
                callbacks=[cb.PruningCallback(0.8, frequency=5)])
    through = [np.array(v.numpy()) for v in through.weights]

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = epoch == 1
    first = fresh()
    first.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0,
              callbacks=[cb.PruningCallback(0.8, frequency=5), Stop()])
    halfway = kernels(first)
    first.save(tmp_path / "half.keras")
    loaded = keras.models.load_model(tmp_path / "half.keras")
    assert_same_values(kernels(loaded), halfway)
    again = cb.PruningCallback(0.8, frequency=5)
    loaded.fit(x, y, batch_size=8, epochs=4, initial_epoch=2, shuffle=False, verbose=0, callbacks=[again])
    assert (again.schedule.begin, again.schedule.end, again.step) == (0, 23, 32)
    for a, b in zip(kernels(loaded).values(), halfway.values()):
        assert (a[b == 0] == 0).all()
    assert_same_values({v.path: np.array(v.numpy()) for v in loaded.weights}, dict(enumerate(through)))


@pytest.mark.keras
def test_exact_with_ema_steps_per_execution_and_float16(keras, cb):
    """The optimizer's moving average replaces the weights after the last step (masked again at
    the end); masks between executions of 3 steps; a float16 layer."""
    model = compiled(keras, small_cnn(keras, dtype="float16"), adam={"use_ema": True}, steps_per_execution=3)
    callback = cb.PruningCallback(0.6, schedule="constant", begin_step=0)
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    weights = kernels(model)
    assert weights["small/pw/kernel"].dtype == np.float16
    assert zeros(weights) == math.floor(0.6 * sum(a.size for a in weights.values()))


@pytest.mark.keras
def test_errors_when_the_fit_starts(keras, cb, fresh):
    from keras import layers
    x, y = data(16)
    norm = keras.Sequential([keras.Input((8, 8, 1)), layers.BatchNormalization(), layers.Flatten()])
    norm.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="model 'sequential.*' has no prunable weights"):
        norm.fit(x, x.reshape(16, -1), verbose=0, callbacks=[cb.PruningCallback(0.5)])
    model = fresh()
    with pytest.raises(ValueError, match=r"end_step must be > begin_step .* \(this fit runs from step 0 to 2\)"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb.PruningCallback(0.5, begin_step=5)])

    def batches():
        while True:
            yield x[:8], y[:8]
    with pytest.raises(ValueError, match="give end_step"):
        model.fit(batches(), epochs=1, shuffle=False, verbose=0, callbacks=[cb.PruningCallback(0.5)])
    model.fit(x, y, epochs=0, verbose=0, callbacks=[cb.PruningCallback(0.5)])  # nothing to do, no error


@pytest.mark.keras
def test_unreachable_sparsity_warns(keras, cb, fresh):
    """Only 288 + 288 weights under min_size 1024: uniform 0.99 cannot be reached exactly."""
    model = fresh()
    x, y = data(16)
    with pytest.warns(SparsityWarning):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[cb.PruningCallback(0.99, schedule="constant", begin_step=0, allocation="uniform")])


# ---- other backends ---------------------------------------------------------------------------

BACKEND_SCRIPT = """
    import math, warnings
    import numpy as np, keras
    from keras import layers
    from wqkernels.keras import PruningCallback
    warnings.simplefilter("ignore")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(16, 3), layers.BatchNormalization(),
                              layers.DepthwiseConv2D(3), layers.Conv2D(32, 1), layers.Flatten(), layers.Dense(10)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 64)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[PruningCallback(0.9, frequency=3)])
    w = [keras.ops.convert_to_numpy(v) for v in model.weights if v.path.endswith("kernel")]
    total = sum(a.size for a in w)
    assert sum(int((a == 0).sum()) for a in w) == math.floor(0.9 * total)
    print(keras.backend.backend(), "ok")
"""


@pytest.mark.keras
@pytest.mark.parametrize("backend, module", [("torch", "torch"), ("tensorflow", "tensorflow")])
def test_other_backends(backend, module):
    import importlib.util
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"the {backend} backend needs {module}, which is not installed")
    # one OpenMP thread: torch's wheel brings its own OpenMP runtime beside the one of our
    # kernels, and with two threads one torch backward pass was seen to hang with both loaded
    done = _run(BACKEND_SCRIPT, KERAS_BACKEND=backend, OMP_NUM_THREADS="1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [backend, "ok"]
