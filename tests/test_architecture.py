"""The package's layering (docs/architecture.md): imports point one way, with no cycles.

Read from the source with ``ast``, counting every import: module level, inside functions and under
``TYPE_CHECKING``, so a cycle cannot hide behind a deferred import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import convnext

PACKAGE = Path(convnext.__file__).parent

# Lowest first: a module may import modules of its own layer or of a lower one, never of a higher one.
LAYERS = [
    ("errors", "files", "preprocess", "runtime", "plots"),
    ("models",),
    ("weights",),
    ("checkpoint",),
    ("data",),
    ("infer", "info"),
    ("train",),
    ("study",),
    ("cli", "__main__"),
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["convnext", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every convnext module ``name`` imports, including the packages a submodule import initialises."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else module for a in node.names]
        for t in targets:
            if not t.startswith("convnext"):
                continue
            while t not in mods:
                t = t.rsplit(".", 1)[0]
            parts = t.split(".")
            for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ too
                dep = ".".join(parts[:i])
                if dep != name and not name.startswith(dep + "."):
                    found.add(dep)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def _layer(module: str) -> int:
    return RANK[module.split(".")[1]]


def test_every_module_belongs_to_a_layer():
    assert all(name == "convnext" or name.split(".")[1] in RANK for name in _graph()), \
        "a new top-level module must be placed in LAYERS (and in docs/architecture.md)"


def test_imports_point_down_the_layers():
    wrong = [f"{a} -> {b}" for a, deps in _graph().items() if a != "convnext"
             for b in deps if _layer(b) > _layer(a)]
    assert not wrong, "imports against the layering: " + ", ".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_models_layer_is_light():
    # the model definitions need torch only: no PIL, no checkpoint/weights/export code
    code = ("import sys, convnext.models; "
            "heavy = [m for m in ('PIL', 'convnext.checkpoint', 'convnext.weights', 'convnext.infer', 'convnext.data', "
            "'convnext.train', 'safetensors', 'onnx') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
