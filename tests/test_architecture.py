"""The package's imports point one way: entry points -> stages -> sources -> core -> utilities.

Every import is read from the source (function-level ones too, which hide circles at import
time), so the structure in docs/architecture.md stays true. No exceptions list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import musicgen_train

PACKAGE = Path(musicgen_train.__file__).parent

# Lower number = lower layer. A module may import its own layer's files (without a circle) and
# anything below. The stages are ordered too: a stage may use the ones before it.
LAYERS = {
    "musicgen_train": 0,
    "musicgen_train.config": 0,
    "musicgen_train.errors": 0,
    "musicgen_train.audio": 0,
    "musicgen_train.logs": 0,
    "musicgen_train.lazy": 0,
    "musicgen_train.locks": 0,
    "musicgen_train.model": 1,
    "musicgen_train.generation": 1,
    "musicgen_train.sources": 2,
    "musicgen_train.data": 3,
    "musicgen_train.evaluation": 4,
    "musicgen_train.training": 5,
    "musicgen_train.registry": 6,
    "musicgen_train.serve": 7,
    "musicgen_train.cli": 8,
    "musicgen_train.pipeline": 8,
    "musicgen_train.generate": 8,
}
LAYER_NAMES = {0: "utilities", 1: "core", 2: "sources", 3: "data", 4: "evaluation"}
LAYER_NAMES |= {5: "training", 6: "registry", 7: "serve", 8: "entry points"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    where = PACKAGE.parent.joinpath(*dotted.split("."))
    return where.with_suffix(".py").exists() or (where / "__init__.py").exists()


def imported_modules(path: Path) -> set[str]:
    """Every musicgen_train module ``path`` imports, at any depth of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # ``from package import module`` names a module, not only an attribute.
            for alias in node.names:
                if is_module(f"{module}.{alias.name}"):
                    found.add(f"{module}.{alias.name}")
    return {m for m in found if m == "musicgen_train" or m.startswith("musicgen_train.")}


def layer_of(module: str) -> int:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    raise AssertionError(f"{module} has no layer: add it to LAYERS and docs/architecture.md")


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        # Importing a package's __init__ is how Python reaches a module in it: count the module.
        graph[module] = {m for m in imported_modules(path) if m in files and m != module}
    return graph


def test_every_module_has_a_layer():
    for module in import_graph():
        layer_of(module)


def test_imports_point_down_the_layers():
    upward = [
        f"{module} ({LAYER_NAMES[layer_of(module)]}) imports {target} "
        f"({LAYER_NAMES[layer_of(target)]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A package's __init__ that re-exports its modules is not a circle with them: importing
    # ``a.b`` runs ``a/__init__`` first by Python's rules, not by the code's choice.
    packages = {m for m in graph if PACKAGE.parent.joinpath(*m.split("."), "__init__.py").exists()}
    return {
        module: {t for t in targets if not (module in packages and t.startswith(module + "."))}
        for module, targets in graph.items()
    }


def test_no_import_circles_between_files():
    cycle = find_cycle(without_package_inits(import_graph()))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_import_circles_between_packages():
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        source = ".".join(module.split(".")[:2])
        packages.setdefault(source, set()).update(
            ".".join(t.split(".")[:2]) for t in targets if ".".join(t.split(".")[:2]) != source
        )
    cycle = find_cycle(packages)
    assert cycle is None, "package circle: " + " -> ".join(cycle)


def test_the_checker_sees_a_circle_and_a_function_level_import(tmp_path):
    """The checks can fail: a circle is found, and an import inside a function is read."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    module = PACKAGE / "model" / "loader.py"
    source = "def f():\n    from musicgen_train.serve.app import create_app\n"
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    tree_imports = {
        n.module for n in ast.walk(ast.parse(probe.read_text())) if isinstance(n, ast.ImportFrom)
    }
    assert tree_imports == {"musicgen_train.serve.app"}
    assert layer_of("musicgen_train.serve.app") > layer_of(module_name(module))


def test_no_module_a_reader_cannot_hold():
    long = {
        module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert not long, f"modules over 400 lines (split them along their ideas): {long}"
