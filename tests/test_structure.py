"""The package's shape: no module imports one that imports it back, at the top or inside a
function (an import put inside a function to dodge a cycle is still a cycle for a reader)."""
import ast
import os

from tests.conftest import ROOT


def import_graph(package_dir: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports anywhere}, names dotted from the package's
    folder name; imports under `if TYPE_CHECKING:` are for readers and type checkers and left out."""
    root = os.path.dirname(package_dir)
    modules = {}
    for folder, _, names in os.walk(package_dir):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    graph = {}
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        tree = ast.parse(open(path, encoding="utf-8").read())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
        graph[module] = {target for node in ast.walk(tree) if id(node) not in typing_only
                         for target in _targets(node, package, modules)}
    return graph


def _targets(node, package: str, modules: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:   # relative: from . import x, from ..y import z
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]   # a submodule
    return found or ([base] if base in modules else [])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of two or more modules (Tarjan), sorted."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def test_vhred_has_no_import_cycle():
    graph = import_graph(os.path.join(ROOT, "vhred"))
    assert len(graph) > 40 and "vhred.candidates" in graph["vhred.generate"]   # the graph was read
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (pkg / "sub" / "c.py").write_text("from ..a import x\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import e\n")
    (pkg / "e.py").write_text("import pkg.d\n")
    graph = import_graph(str(pkg))
    assert graph["pkg.b"] == {"pkg.sub.c"} and graph["pkg.d"] == set() and graph["pkg.e"] == {"pkg.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
