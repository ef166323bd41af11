"""The examples in the docstrings of the installed package run and print what they say."""
import doctest
import importlib
import os
import pkgutil

import pytest

import wqkernels

os.environ.setdefault("KERAS_BACKEND", "jax")  # for wqkernels.keras, as in the Keras tests
MODULES = sorted(m.name for m in pkgutil.walk_packages(wqkernels.__path__, "wqkernels.")
                 if not m.name.endswith(("__main__", "._core")))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name.split(".")[:2] == ["wqkernels", "keras"]:
        pytest.importorskip("keras", reason="wqkernels.keras needs keras and its backend")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
