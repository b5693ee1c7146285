"""The package's layout: no import circle inside keras_egt, every public name resolves."""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "keras_egt"


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, modules):
    """The keras_egt modules `path` imports, at module level or inside a function."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # A package's own __init__ and its parents are not edges: importing
            # keras_egt.x runs keras_egt/__init__.py, which imports nothing eagerly.
            if target in modules and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph():
    """`{module: modules it imports}` over every module of keras_egt."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, paths) for name, path in paths.items()}


def circles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_circle_finder_finds_a_hand_made_circle():
    # a -> b -> c -> a is one circle; d -> a hangs off it.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_graph_reads_lazy_imports_too():
    # The circles that matter hide in function-level imports: the graph sees them.
    graph = import_graph()
    assert "keras_egt.exit_rule" in graph["keras_egt.cascade"]
    assert "keras_egt.compiled_cascade" in graph["keras_egt.cascade"]  # a lazy import


def test_no_import_circle_inside_the_package():
    assert circles(import_graph()) == []


def test_exit_rule_imports_no_other_module():
    # The rule every runner calls stands alone (numpy only), so a deploy folder runs
    # it without Keras.
    assert import_graph()["keras_egt.exit_rule"] == set()


@pytest.mark.parametrize("package", ["keras_egt", "keras_egt.export"])
def test_every_public_name_resolves(package):
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not missing, f"{package}.__all__ names that do not resolve: {missing}"
