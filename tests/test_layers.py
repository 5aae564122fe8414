"""The house's two storeys, checked from the source: the core (sessions, graphs, runs, streams,
the loop, the watcher, device memory, errors) never imports the serving storey (batcher, device
pool, metrics, Ray Serve) nor the tools (bench CLI); serving never imports the tools; and the
package's runtime imports, those inside functions included, form no circle. Imports under
``if TYPE_CHECKING:`` are annotations only and are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

import ascend_async

ROOT = Path(ascend_async.__file__).parent
SERVING = {"_batcher", "_pool", "_metrics", "ray_serve"}
TOOLS = {"bench", "__main__", "_probe"}  # _probe: the benchmarks' seam


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) or "__init__"


def _storey(module: str) -> str:
    top = module.split(".")[0]
    if top in TOOLS:
        return "tools"
    if top in SERVING:
        return "serving"
    if top == "__init__":
        return "package"
    return "core"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, module: str) -> set[str]:
    """The package modules ``module`` imports at runtime (relative and absolute forms)."""
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    if module == "__init__":
        package = []
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[: len(package) - (child.level - 1)] if child.level > 1 else list(package)
                    target = ".".join([*base, child.module] if child.module else base)
                    names = [target] if child.module else [".".join([*base, a.name]) for a in child.names]
                    found.update(n for n in names if n)
                elif child.module and child.module.startswith("ascend_async."):
                    found.add(child.module.removeprefix("ascend_async."))
            elif isinstance(child, ast.Import):
                for a in child.names:
                    if a.name.startswith("ascend_async."):
                        found.add(a.name.removeprefix("ascend_async."))
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for p in ROOT.rglob("*.py") if "_native" not in p.parts or p.parent.name == "_native"]
    mods = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps = set()
        for target in _imports(path, mod):
            # "from . import _hooks" names a module; "from ._graph import Graph" too.
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != mod:
                deps.add(target)
        graph[mod] = deps
    return graph


def test_the_graph_is_read_from_real_imports() -> None:
    g = _graph()
    assert "_hooks" in g["_session"] and "_hooks" in g["_batcher"] and "_session" in g["_pool"]
    assert "bench._inputs" in g["bench._fix"]  # a relative import one level down


def test_the_core_never_imports_serving_or_tools() -> None:
    wrong = {
        (mod, dep, _storey(dep))
        for mod, deps in _graph().items()
        for dep in deps
        if (_storey(mod) == "core" and _storey(dep) in ("serving", "tools"))
        or (_storey(mod) == "serving" and _storey(dep) == "tools")
    }
    assert not wrong, f"imports across the storeys, downward only: {sorted(wrong)}"


def test_no_import_circle() -> None:
    g = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                cycles.append([*stack[stack.index(d) :], d])
            elif not state.get(d):
                dfs(d)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if not state.get(m):
            dfs(m)
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)
