"""A quick version of the fidelity benchmark: the CLI defaults against asymmetric min/max.

Trains the digits MLP of ``models.py`` (a few seconds; cached like the benchmark's models) and
checks, on its test outputs, that each bit width's default recipe is not worse than asymmetric
min/max per channel, and that the benchmark's in-memory recipes are what ``wqkernels.rewrite``
writes.  Run explicitly::

    PYTHONPATH=src python -m pytest benchmarks/test_fidelity.py -p no:cacheprovider
"""
from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("keras", reason="the fidelity benchmark trains Keras models")
pytest.importorskip("jax", reason="the fidelity benchmark uses the JAX backend")
pytest.importorskip("sklearn", reason="the fidelity benchmark trains on scikit-learn's data")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fidelity  # noqa: E402
import models  # noqa: E402
import wqkernels  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.keras, pytest.mark.filterwarnings("ignore")]

#: how much larger than asymmetric min/max's output error a default may be: the seed-to-seed
#: spread of that ratio on the benchmark's models is about this size
TOLERANCE = 1.10


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    path, _ = models.trained("mlp", 0)
    return fidelity.Case("mlp", 0, path, str(tmp_path_factory.mktemp("fidelity")))


def _error(case, candidate) -> float:
    out, _ = case.outputs(candidate)
    return fidelity.metrics(case.task, out, case.reference)["rel_err"]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_default_not_worse_than_asymmetric_minmax(case, bits):
    default = [c for c in fidelity.quantization_grid(bits) if c.label == "default"][0]
    baseline = fidelity.Candidate("baseline", f"int{bits}", wqkernels.Recipe(bits=bits, symmetric=False,
                                                                           method="minmax", rounding="nearest"))
    ours, theirs = _error(case, default), _error(case, baseline)
    assert ours <= TOLERANCE * theirs, f"int{bits}: default {ours:.4f}, asymmetric min/max {theirs:.4f}"


@pytest.mark.parametrize("bits", [2, 4])
def test_the_former_default_fails_the_same_check(case, bits):
    """The check can fail: symmetric mse per channel, the default before these measurements."""
    former = fidelity.Candidate("former", f"int{bits}", wqkernels.Recipe(bits=bits, symmetric=True, method="mse",
                                                                         rounding="nearest"))
    baseline = fidelity.Candidate("baseline", f"int{bits}", wqkernels.Recipe(bits=bits, symmetric=False,
                                                                           method="minmax", rounding="nearest"))
    assert _error(case, former) > TOLERANCE * _error(case, baseline)


@pytest.mark.parametrize("candidate", [c for c in fidelity.grid(bits=(2, 4)) if c.recipe is not None][::5],
                         ids=lambda c: f"{c.group} {c.label}")
def test_benchmark_recipes_are_what_rewrite_writes(case, candidate):
    case.compress(candidate, via="rewrite")  # raises when a tensor differs


def test_float_outputs_are_the_models(case):
    import keras

    model = keras.models.load_model(case.path, compile=False)
    assert fidelity.metrics(case.task, models.predict(model, case.task.x_test), case.reference)["rel_err"] < 1e-6
