"""pytest settings and fixtures shared by all tests: hypothesis profiles (CI runs more examples),
and small Keras files of every layout written with h5py alone (no Keras needed)."""
import os
import signal
import sys
import zipfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "data"))
import make_keras2_files as k2  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")

# The command lines the tests interrupt keep a stop signal ignored when started ignoring it, as
# a suite run in the background (nohup, a script's `&`) would pass it on: they are started as
# from a terminal (Ctrl-C Python's own handler, SIGHUP the default; exec gives children SIG_DFL).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def keras20(tmp_path):
    path = tmp_path / "keras20.h5"
    return path, k2.write_keras20_full(path)


@pytest.fixture
def tfkeras(tmp_path):
    path = tmp_path / "tfkeras.h5"
    return path, k2.write_tfkeras_weights(path)


@pytest.fixture
def keras3_zip(tmp_path):
    """A .keras archive with a Keras 3 weights file (no config names: roles from group names)."""
    rng = np.random.default_rng(3)
    weights = tmp_path / "model.weights.h5"
    with h5py.File(weights, "w") as f:
        f.create_group("vars").attrs["name"] = "model"
        for group, arrays in (("conv2d", [(3, 3, 2, 8), (8,)]), ("depthwise_conv2d", [(3, 3, 8, 1), (8,)]),
                              ("conv2d_transpose", [(3, 3, 4, 8), (4,)]), ("embedding", [(30, 8)])):
            g = f.create_group(f"layers/{group}/vars")
            for i, shape in enumerate(arrays):
                g.create_dataset(str(i), data=rng.standard_normal(shape).astype(np.float32))
        f.create_group("optimizer/vars").create_dataset("0", data=np.int64(3))
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", '{"keras_version": "3.15.1"}')
        z.writestr(zipfile.ZipInfo("config.json"), '{"class_name": "Functional", "config": {"layers": []}}',
                   compress_type=zipfile.ZIP_DEFLATED)
        z.write(weights, "model.weights.h5")
    weights.unlink()
    return path
