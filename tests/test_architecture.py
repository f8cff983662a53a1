"""The package's shape (CONTRIBUTING.md, "Layout"): no import cycle, imports only point
downwards through the layers, no module over 450 lines, no function over 80 lines (docstring
included)."""

import ast
import os

import pytest
from conftest import ROOT

PACKAGE = os.path.join(ROOT, "projects", "nrd_rsp")
# Layers from the bottom; a module may import only from its own layer or the ones below.
LAYERS = [
    {"errors", "config", "training_health", "safe_loading", "atomic_io"},
    {"data", "modeling", "checkpoint", "converters", "evaluation", "panoptic_evaluation", "solver"},
    {"engine", "predictor", "model_zoo", "analysis", "export"},
]


def _modules():
    """{dotted name relative to the package: path} of every module of the package."""
    out = {}
    for d, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), PACKAGE)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__") if rel != "__init__" else ""] = os.path.join(d, f)
    return out


def _imports(name, path):
    """Package-relative names of the modules ``name`` imports from the package."""
    with open(path) as f:
        tree = ast.parse(f.read())
    is_pkg = path.endswith("__init__.py")
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[: len(base) - (node.level - 1)] + (
                    node.module.split(".") if node.module else []
                )
            elif node.module and node.module.split(".")[0] == "nrd_rsp":
                parts = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # "from . import data" imports a module
                found.add(".".join(parts + [alias.name]) if not node.module else ".".join(parts))
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("nrd_rsp.")}
    return {m for m in found if m != name}


def _resolve(target, modules):
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target


def _layer(name):
    top = name.split(".")[0]
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    return None


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {
        name: {_resolve(t, modules) for t in _imports(name, path)} - {name, ""}
        for name, path in modules.items()
    }


def test_every_module_is_in_a_layer(graph):
    assert not [m for m in graph if m and _layer(m) is None]


def test_imports_point_downwards(graph):
    bad = [(m, t) for m, targets in graph.items() if m for t in targets if _layer(t) > _layer(m)]
    assert not bad, bad


def test_no_import_cycle(graph):
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for t in graph.get(m, ()):
            if state.get(t) == "open":
                raise AssertionError(f"import cycle: {' -> '.join(stack + [m, t])}")
            if t not in state:
                visit(t, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def _too_long(modules):
    """(modules over 450 lines, functions over 80 lines) of ``{name: path}``."""
    long_modules, long_functions = [], []
    for name, path in modules.items():
        with open(path) as f:
            text = f.read()
        if text.count("\n") > 450:
            long_modules.append((name, text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - start + 1 > 80:
                    long_functions.append((name, node.name, node.end_lineno - start + 1))
    return long_modules, long_functions


def test_module_and_function_sizes():
    long_modules, long_functions = _too_long(_modules())
    assert not long_modules, long_modules
    assert not long_functions, long_functions


@pytest.mark.parametrize("folder", ["tools", "benchmarks"])
def test_script_sizes(folder):
    """The same limits for the scripts of tools/ and benchmarks/ (and their helper modules)."""
    d = os.path.join(ROOT, folder)
    scripts = {
        f"{folder}/{f}": os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".py")
    }
    assert scripts
    long_modules, long_functions = _too_long(scripts)
    assert not long_modules, long_modules
    assert not long_functions, long_functions
