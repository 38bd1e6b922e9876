"""The import structure of the cowsim package: no cycles, and the layers of docs/design.md.

Every module under the folders that ``[tool.setuptools.package-dir]`` maps (sim/, service/,
clients/) is parsed with :mod:`ast`; nothing is imported.  Every import statement counts,
wherever it is: at the top, inside a function or class, under ``if TYPE_CHECKING:``, and
``importlib.import_module("...")``/``__import__("...")`` with a literal name.

What counts where:

* **Cycles** are runtime cycles: top-level and function-level imports.  A function-level
  import is how a cycle is usually hidden, so it counts like any other.  Imports under
  ``if TYPE_CHECKING:`` do *not* count: they never run (the modules use postponed
  annotations), and the usual way for a helper module to annotate with the class that
  calls it (``kernel.py`` → ``fault.py`` at runtime, ``fault.py`` → ``Kernel`` for types
  only) is such an import.  Importing ``a.b.c`` also runs the ``__init__`` of ``a.b`` and
  ``a``, so an edge goes to each of those packages too, except those enclosing the importer
  (already initialised by the time it runs).
* **Layers** (docs/design.md, "Dependencies point one way"): every import counts, including
  ``TYPE_CHECKING`` ones, since a type-only import is still a dependency of the layer.
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Forbidden imports per layer: a module in the key's package imports none of these
#: (a name matches itself and everything below it).
LAYER_RULES: dict[str, tuple[str, ...]] = {
    "cowsim.sim": ("grpc", "prometheus_client", "cowsim.service", "cowsim.clients"),
    "cowsim.service": ("cowsim.clients",),
}


@dataclass(frozen=True)
class Import:
    """One imported module name, where it is imported, and how."""

    importer: str  # the importing module
    target: str  # the module imported (a known module when the name is one)
    path: Path
    line: int
    kind: str  # "top", "function" or "type_checking"
    text: str  # the statement, for messages

    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        context = "" if self.kind == "top" else f" ({self.kind.replace('_', ' ')})"
        return f"{path}:{self.line}{context}: {self.text}"


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """The import name → folder mapping setuptools installs (pyproject.toml)."""
    with (root / "pyproject.toml").open("rb") as f:
        mapping: dict[str, str] = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {package: root / folder for package, folder in mapping.items()}


def discover(packages: dict[str, Path]) -> dict[str, Path]:
    """Every module of the mapped packages: import name → file."""
    modules: dict[str, Path] = {}
    for package, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _base_package(module: str, path: Path, level: int) -> str:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    parts = module.split(".")
    if path.name != "__init__.py":
        parts.pop()
    return ".".join(parts[: len(parts) - (level - 1)] if level > 1 else parts)


def _statements(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    """Every node of ``tree`` with the context it runs in: top, function or type_checking."""
    found: list[tuple[ast.AST, str]] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                child_kind = "function"
            found.append((child, child_kind))
            if isinstance(child, ast.If) and _is_type_checking(child.test) and kind == "top":
                for statement in child.body:
                    found.append((statement, "type_checking"))
                    visit(statement, "type_checking")
                for statement in child.orelse:
                    found.append((statement, kind))
                    visit(statement, kind)
            else:
                visit(child, child_kind)

    visit(tree, "top")
    return found


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every module ``module`` (at ``path``) imports, resolved against ``known`` modules."""
    source = path.read_text()
    found: list[Import] = []
    for node, kind in _statements(ast.parse(source, str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = _base_package(module, path, node.level)
                base = f"{package}.{base}" if base else package
            # `from a import b` imports the module a.b when there is one, else a name of a.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                     for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("__import__", "import_module")))):
            names = [node.args[0].value]
        else:
            continue
        text = (ast.get_source_segment(source, node) or "").split("\n")[0]
        for name in dict.fromkeys(names):
            found.append(Import(module, name, path, getattr(node, "lineno", 0), kind, text))
    return found


def runtime_edges(imports: list[Import], known: set[str]) -> dict[tuple[str, str], Import]:
    """Import edges between known modules that run (not TYPE_CHECKING-only), with one
    statement each; ``import a.b.c`` also runs the ``__init__`` of every package above it
    that does not enclose the importer."""
    edges: dict[tuple[str, str], Import] = {}
    for imp in imports:
        if imp.kind == "type_checking":
            continue
        parts = imp.target.split(".")
        for depth in range(len(parts), 0, -1):
            target = ".".join(parts[:depth])
            encloses = imp.importer == target or imp.importer.startswith(target + ".")
            if target in known and not (depth < len(parts) and encloses):
                edges.setdefault((imp.importer, target), imp)
    return edges


def cycles(edges: dict[tuple[str, str], Import]) -> list[list[str]]:
    """One shortest cycle through every edge that lies on a cycle, without repeats;
    each cycle starts at its smallest module name and does not repeat it at the end."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())

    def path(start: str, goal: str) -> list[str] | None:
        """The shortest path start → goal (breadth first, sorted neighbours)."""
        previous: dict[str, str | None] = {start: None}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if node == goal:
                result: list[str] = []
                step: str | None = node
                while step is not None:
                    result.append(step)
                    step = previous[step]
                return result[::-1]
            for nxt in sorted(graph[node]):
                if nxt not in previous:
                    previous[nxt] = node
                    queue.append(nxt)
        return None

    found: dict[tuple[str, ...], list[str]] = {}
    for a, b in sorted(edges):
        back = path(b, a)
        if back is None:
            continue
        cycle = back  # b → ... → a, and the edge a → b closes it
        first = cycle.index(min(cycle))
        canonical = cycle[first:] + cycle[:first]
        found.setdefault(tuple(canonical), canonical)
    return sorted(found.values())


def describe_cycles(found: list[list[str]], edges: dict[tuple[str, str], Import]) -> str:
    lines = [f"{len(found)} import cycle{'s' * (len(found) != 1)} in cowsim "
             "(TYPE_CHECKING-only imports excluded):"]
    for cycle in found:
        lines.append("  " + " -> ".join([*cycle, cycle[0]]))
        for a, b in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
            lines.append(f"      {edges[a, b].where()}")
    return "\n".join(lines)


def layer_violations(imports: list[Import],
                     rules: dict[str, tuple[str, ...]] = LAYER_RULES) -> list[str]:
    def within(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    return [f"{imp.importer} imports {imp.target}: {imp.where()}"
            for imp in imports
            for layer, forbidden in rules.items()
            if within(imp.importer, layer) and any(within(imp.target, f) for f in forbidden)]


def scan(packages: dict[str, Path]) -> tuple[set[str], list[Import]]:
    modules = discover(packages)
    known = set(modules)
    return known, [imp for name, path in modules.items() for imp in imports_of(name, path, known)]


# -- the project --------------------------------------------------------------------------

KNOWN, IMPORTS = scan(package_dirs())


def test_every_package_folder_is_scanned() -> None:
    """The scan sees the modules the layer and cycle tests reason about."""
    assert {"cowsim.sim", "cowsim.sim.kernel", "cowsim.service", "cowsim.clients"} <= KNOWN
    assert any(imp.target.startswith("cowsim.sim") for imp in IMPORTS
               if imp.importer.startswith("cowsim.clients"))


def test_no_import_cycles() -> None:
    edges = runtime_edges(IMPORTS, KNOWN)
    found = cycles(edges)
    assert not found, describe_cycles(found, edges)


def test_layers_follow_docs_design() -> None:
    """sim never imports grpc, prometheus_client, service or clients; service never clients."""
    violations = layer_violations(IMPORTS)
    assert not violations, "layer violations (docs/design.md):\n" + "\n".join(violations)


# -- the checker itself, on small packages written for the purpose -------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> tuple[set[str], list[Import]]:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return scan({"demo": tmp_path / "pkg"})


def test_function_level_and_relative_imports_make_cycles(tmp_path: Path) -> None:
    known, imports = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from demo.b import f\n",
        "b.py": "def f():\n    from . import a\n    return a\n",
        "c.py": "import importlib\n\ndef g():\n    return importlib.import_module('demo.d')\n",
        "d.py": "from .c import g\n",
        "e.py": "import demo.a\n",
    })
    edges = runtime_edges(imports, known)
    assert cycles(edges) == [["demo.a", "demo.b"], ["demo.c", "demo.d"]]
    assert edges["demo.b", "demo.a"].kind == "function"
    message = describe_cycles(cycles(edges), edges)
    assert "demo.a -> demo.b -> demo.a" in message
    assert "b.py:2 (function): from . import a" in message


def test_type_checking_imports_count_for_layers_not_cycles(tmp_path: Path) -> None:
    known, imports = _package(tmp_path, {
        "__init__.py": "",
        "core.py": "from demo.helper import run\n",
        "helper.py": ("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                      "    from demo.core import Core\n    import grpc\n"),
    })
    assert cycles(runtime_edges(imports, known)) == []
    violations = layer_violations(imports, {"demo": ("grpc",)})
    assert violations == ["demo.helper imports grpc: "
                          f"{tmp_path / 'pkg' / 'helper.py'}:5 (type checking): import grpc"]


def test_importing_a_submodule_runs_its_package_init(tmp_path: Path) -> None:
    """``import demo.sub.x`` from outside demo.sub depends on demo/sub/__init__; a module
    inside demo.sub importing a sibling does not loop through its own package."""
    known, imports = _package(tmp_path, {
        "__init__.py": "",
        "top.py": "import demo.sub.x\n",
        "sub/__init__.py": "from demo.sub.x import X\nfrom demo.sub import y\n",
        "sub/x.py": "X = 1\n",
        "sub/y.py": "from demo.sub.x import X\nfrom demo.top import demo\n",
    })
    edges = runtime_edges(imports, known)
    assert ("demo.top", "demo.sub") in edges
    assert ("demo.sub.y", "demo.sub") not in edges
    assert cycles(edges) == [["demo.sub", "demo.sub.y", "demo.top"]]
