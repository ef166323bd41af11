"""Load an original and a rewritten Keras model with stock Keras and compare them on the test set:
file size, memory of the loaded model's variables (and which layers Keras runs quantized),
test accuracy.

    python examples/compare.py model.keras model.int4.keras
"""
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from make_model import digits  # noqa: E402


def main(original, rewritten):
    _, _, xt, yt = digits()
    for path in (original, rewritten):
        m = keras.models.load_model(path, compile=False)
        accuracy = float((m.predict(xt, verbose=0).argmax(axis=1) == yt).mean())
        memory = sum(np.asarray(v).nbytes for v in m.weights)
        modes = sorted({layer.quantization_mode for layer in m.layers if getattr(layer, "quantization_mode", None)})
        quantized = [layer.name for layer in m.layers if getattr(layer, "quantization_mode", None)]
        runs = f" ({', '.join(modes)} layers: {', '.join(quantized)})" if quantized else ""
        print(f"{path}: {os.path.getsize(path):,} bytes, {memory:,} bytes of variables{runs}, "
              f"test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
