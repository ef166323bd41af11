"""The package's imports run one way: kernels <- algorithms <- files <- batch <- cli.

Each module is parsed (not imported) and every import of another part of the package is checked
against the layer of the importer: nothing imports a layer above its own, and only the algorithm
modules call the kernels.
"""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "src" / "wqkernels"

#: the layer of each top-level part of the package, lowest first
LAYERS = {
    "_core": 0, "_version": 0,
    "_checks": 1, "_schemes": 1, "_text": 1, "threads": 1, "progress": 1,
    "quantization": 1, "packing": 1, "pruning": 1, "statistics": 1, "allocation": 1, "reference": 1,
    "calibration": 1, "correction": 1, "bench": 1, "keras_schemes": 1,
    "files": 2,
    "batch": 3, "keras": 3,
    "cli": 4, "__main__": 4,
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, parts


def _imported_parts(path: pathlib.Path, parts: list) -> set:
    """The top-level parts of the package that the module at `path` imports."""
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name.split(".") for a in node.names]
            found.update(n[1] for n in names if n[0] == "wqkernels" and len(n) > 1)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                mod = (node.module or "").split(".")
                if mod[0] != "wqkernels":
                    continue
                target = mod[1:]
            else:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # from . import x, y at the top of the package
                found.update(a.name for a in node.names)
    return found


CASES = [(path, parts) for path, parts in _modules() if parts]


def test_every_part_has_a_layer():
    unknown = {parts[0] for _, parts in CASES} - set(LAYERS)
    assert not unknown, f"add these parts of the package to LAYERS: {sorted(unknown)}"


@pytest.mark.parametrize("path,parts", CASES, ids=lambda c: "/".join(c) if isinstance(c, list) else "")
def test_imports_run_one_way(path, parts):
    own = LAYERS[parts[0]]
    upward = sorted(p for p in _imported_parts(path, parts) - {parts[0]} if LAYERS.get(p, -1) > own)
    assert not upward, f"{path.relative_to(PACKAGE)} (layer {own}) imports from above: {upward}"


@pytest.mark.parametrize("path,parts", CASES, ids=lambda c: "/".join(c) if isinstance(c, list) else "")
def test_only_algorithms_call_the_kernels(path, parts):
    if LAYERS[parts[0]] > 1:
        assert "_core" not in _imported_parts(path, parts), \
            f"{path.relative_to(PACKAGE)} reaches into the kernels; call the public function instead"


def test_the_check_can_fail(tmp_path):
    """An upward import is seen (the checker itself is not vacuous)."""
    bad = tmp_path / "m.py"
    bad.write_text("from ..cli import main\nfrom wqkernels.batch import plan\n")
    assert _imported_parts(bad, ["files", "m"]) == {"cli", "batch"}


def test_import_is_light_and_names_resolve_on_use():
    """``import wqkernels`` imports no NumPy (the command line takes Ctrl-C from its first
    instant); every public name resolves, to the object its module defines."""
    import importlib
    import subprocess
    import sys
    code = "import sys, wqkernels; assert 'numpy' not in sys.modules, 'numpy imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    import wqkernels
    for name in wqkernels.__all__:
        value = getattr(wqkernels, name)
        if name != "__version__":
            assert value is getattr(importlib.import_module(wqkernels._NAMES[name], "wqkernels"), name), name
    assert set(wqkernels.__all__) <= set(dir(wqkernels))
    with pytest.raises(AttributeError, match="no attribute 'nonesuch'"):
        wqkernels.nonesuch
