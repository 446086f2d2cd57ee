"""The module graph: every module imports on its own, and steerlab's imports form no circle.

1. Every module of ``steerlab`` and ``sdf_addon`` is imported in a fresh interpreter, one after the
   other with every ``steerlab``/``sdf_addon`` module dropped from ``sys.modules`` in between, so a
   module that imports only when another one was imported first fails here. Modules that need vLLM
   (``steerlab/backends/vllm*.py``) are skipped when vLLM is not installed, and only when their
   import fails for that reason. ``__main__`` modules are left out (importing one may run the
   command line); they are in the graph below like every other module.

2. The import graph is read from the source with ``ast``: every ``import`` and ``from ... import``,
   at module level, inside functions and inside ``if TYPE_CHECKING:`` (a type-only import is still
   a dependency: a room knows what is downstream of it, nothing upstream), relative or absolute.
   The rule for an edge:

   - ``import steerlab.a.b`` and ``from steerlab.a.b import name`` are edges to ``steerlab.a.b``;
   - ``from steerlab.a import b`` is an edge to the module ``steerlab.a.b`` when that is a module,
     otherwise (a name defined in the package) to the package ``steerlab.a`` (its ``__init__``);
   - importing ``steerlab.a.b`` also runs ``steerlab/a/__init__.py``, but that is *not* an edge:
     a package that imports its submodules (to re-export them, or lazily in a function) is in a
     circle with one of them only when that submodule imports the package itself back, and such a
     back-import is an explicit ``from steerlab.a import name`` edge, which the graph holds.

   The graph over ``steerlab`` and ``sdf_addon`` must have no cycle; a failure prints every
   strongly connected component with one cycle in it, each edge as ``file:line``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("steerlab", "sdf_addon")
NEEDS_VLLM = ("steerlab.backends.vllm",)  # modules named so, or starting so (vllm_steer), may need vllm


def module_files() -> dict[str, Path]:
    """Every module of the packages: dotted name -> source file."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package modules one import statement in module ``name`` depends on (see the rule above)."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            parts = alias.name.split(".")
            # the longest prefix that is one of ours (``import steerlab.a.b`` -> steerlab.a.b)
            for k in range(len(parts), 0, -1):
                if ".".join(parts[:k]) in MODULES:
                    out.append(".".join(parts[:k]))
                    break
        return out
    if node.level:
        package = name.split(".") if _is_package(name) else name.split(".")[:-1]
        base_parts = package[: len(package) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in MODULES:
            out.append(sub)
        elif base in MODULES:
            out.append(base)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first import of it}."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(name, node):
                    if target != name:
                        edges[target] = min(edges.get(target, node.lineno), node.lineno)
        graph[name] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module, staying inside the component."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w in members and w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def describe_cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    lines = []
    for component in strongly_connected(graph):
        cycle = one_cycle(graph, component)
        lines.append(f"circle among {', '.join(component)}; one cycle:")
        for a, b in zip(cycle, cycle[1:], strict=False):
            lines.append(f"  {MODULES[a].relative_to(REPO)}:{graph[a][b]}  {a} -> {b}")
        lines.append("  every edge inside it:")
        for a in component:
            for b in sorted(set(graph[a]) & set(component)):
                lines.append(f"    {MODULES[a].relative_to(REPO)}:{graph[a][b]}  {a} -> {b}")
    return lines


def test_the_graph_reader_follows_the_rule():
    """A few edges whose reading the rule above decides, checked on the real tree."""
    graph = import_graph()
    # ``from steerlab.backends import vllm_steer``: the submodule, not the package
    assert "steerlab.backends.vllm_steer" in graph["steerlab.backends.vllm"]
    assert "steerlab.backends" not in graph["steerlab.backends.vllm"]
    # imports inside functions count (backends/__init__ imports its backends lazily)
    assert "steerlab.backends.vllm" in graph["steerlab.backends"]
    # ``from steerlab.errors import X``: the module steerlab.errors
    assert "steerlab.errors" in graph["steerlab.models"]


def test_steerlab_imports_form_no_cycle():
    graph = import_graph()
    cycles = describe_cycles(graph)
    print("\n".join(cycles))
    assert not cycles, "the import graph has circles:\n" + "\n".join(cycles)


FRESH_IMPORTS = r"""
import importlib, json, sys, traceback
results = {}
for name in json.loads(sys.argv[1]):
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("steerlab", "sdf_addon")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
        results[name] = None
    except BaseException as exc:
        results[name] = [type(exc).__name__, getattr(exc, "name", None), traceback.format_exc()]
print(json.dumps(results))
"""


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(m for m in MODULES if not m.endswith(".__main__"))
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORTS, json.dumps(names)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(results) == names
    has_vllm = importlib.util.find_spec("vllm") is not None
    failed = {}
    for name, failure in results.items():
        if failure is None:
            continue
        kind, missing, trace = failure
        needs_vllm = name.startswith(NEEDS_VLLM) and kind == "ModuleNotFoundError" and missing == "vllm"
        if needs_vllm and not has_vllm:
            continue  # skipped: this module needs vLLM, which this environment lacks
        failed[name] = trace
    assert not failed, "modules that do not import on their own:\n" + "\n".join(
        f"{name}:\n{trace}" for name, trace in failed.items()
    )


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_module_is_found(package):
    assert package in MODULES and any(m.startswith(package + ".") for m in MODULES)
