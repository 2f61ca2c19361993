"""The module graph of an application as built for a target, and a command that prints it.

``python -m platforms.hvt.graph services.suresh --target unix|hvt [--external]``
prints the graph in Graphviz DOT; ``dot -Tsvg`` draws it. Retargeting is
one module (DESIGN.md): the graphs of one application for ``unix`` and for
``hvt`` differ only in the platform package and what it alone pulls in, and
a test holds us to it. The image builder (``platforms.hvt.build``) packs
exactly the project modules this graph reaches, so the finding lives here,
once.

Theory of operation
-------------------

What runs for a target is a set of *roots*:

* the application module;
* ``platforms.<target>``, the platform module. Services load it **by name**
  (``importlib.import_module`` in ``services.boot.load_platform``), so that
  retargeting is a command-line switch; no import statement names it, and
  we add it here explicitly;
* the target's entry point, when it has one: an hvt image's ``__main__``
  imports ``platforms.hvt.guest`` (``ENTRY_POINTS``).

From the roots we follow import statements, read from source with ``ast``:
nothing is imported or executed, so finding the graph of a ``unix`` build
does not load uvloop, and the files of a half-written project can be read.
Imports by name (``importlib``, ``__import__``) are not followed; that is
what the explicit roots are for.

Each edge has a kind:

``import``    the import runs when the importing module is loaded (module
              level, including class bodies and module-level ``if``/``try``);
``deferred``  every import of that module by that importer is inside a
              function body: it runs only when the function does;
``package``   a module's own package, which Python loads before the module
              (``netstack.http.server`` -> ``netstack.http`` -> ``netstack``).

Imports under ``if TYPE_CHECKING:`` never run and are skipped. An import
inside ``try`` with an ``except ImportError`` (or broader) is *guarded*: a
guarded import of a module that does not exist is left out instead of
failing.

*Project* modules are those of the packages ``netstack``, ``services`` and
``platforms``, found as files under the project root; the graph follows
them. Every other module (standard library, third party) is *external*: it
is a leaf, named as the import statement names it (``from email.utils
import formatdate`` -> ``email.utils``; ``from X import Y`` -> ``X.Y`` when
``Y`` is a submodule of the installed package ``X``), and is located
without being imported. ``find(..., stop=...)`` records modules it must
not descend into (the builder's host-only modules) without reading them.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
import sys
from collections.abc import Iterable, Sequence
from importlib.machinery import BuiltinImporter, FrozenImporter, ModuleSpec, PathFinder
from pathlib import Path
from typing import Literal, NoReturn

PROJECT_PACKAGES = ("netstack", "services", "platforms")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the project packages: where this file's ``platforms`` package lives."""

TARGETS = ("unix", "hvt")
ENTRY_POINTS: dict[str, tuple[str, ...]] = {"hvt": ("platforms.hvt.guest",)}
"""Modules a target's launcher imports besides the application and the platform."""

EX_USAGE = 64

Kind = Literal["import", "deferred", "package"]
_STRENGTH: dict[Kind, int] = {"import": 2, "package": 1, "deferred": 0}
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


class GraphError(Exception):
    """A module that cannot be found or read. The message is one line, for the user."""


@dataclasses.dataclass(frozen=True)
class Link:
    """How ``importer`` reaches ``imported``: the strongest kind over all its import statements."""

    kind: Kind
    guarded: bool = False
    """Every import statement for it is inside ``try ... except ImportError``."""

    def merge(self, other: Link) -> Link:
        # An import at load time says more than "it is my package" (also loaded at
        # load time), which says more than an import inside a function.
        kind = max(self.kind, other.kind, key=_STRENGTH.__getitem__)
        return Link(kind, self.guarded and other.guarded)


@dataclasses.dataclass
class ModuleGraph:
    """Modules reached from ``roots``, and who imports whom."""

    roots: tuple[str, ...]
    project: dict[str, Path] = dataclasses.field(default_factory=dict)
    """Project module -> its source file, relative to the project root."""
    external: set[str] = dataclasses.field(default_factory=set)
    links: dict[tuple[str, str], Link] = dataclasses.field(default_factory=dict)
    """``(importer, imported)`` -> how."""
    stopped: set[str] = dataclasses.field(default_factory=set)
    """Project modules reached but not read (``find``'s ``stop``)."""


def is_project(module: str) -> bool:
    return module.partition(".")[0] in PROJECT_PACKAGES


def is_within(module: str, package: str) -> bool:
    """``module`` is ``package`` or one of its submodules."""
    return module == package or module.startswith(package + ".")


def roots(application: str, target: str) -> tuple[str, ...]:
    """What runs when ``application`` is built for ``target``."""
    return (application, f"platforms.{target}", *ENTRY_POINTS.get(target, ()))


def source_of(module: str, root: Path = PROJECT_ROOT) -> Path | None:
    """The project file that defines ``module``, relative to ``root``; ``None`` when there is none."""
    if not is_project(module) or not _MODULE_NAME.match(module):
        return None
    base = Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


def for_target(application: str, target: str, *, root: Path = PROJECT_ROOT, stop: Iterable[str] = ()) -> ModuleGraph:
    """The graph of ``application`` built for ``target``; raises ``GraphError``."""
    return find(roots(application, target), root=root, stop=stop)


def find(roots_: Sequence[str], *, root: Path = PROJECT_ROOT, stop: Iterable[str] = ()) -> ModuleGraph:
    """Follow project imports from ``roots_``; modules within a ``stop`` package are recorded, not read."""
    stop = tuple(stop)
    graph = ModuleGraph(tuple(roots_))
    pending: list[str] = []
    for module in roots_:
        if source_of(module, root) is None:
            raise GraphError(f"no module named {module!r} in {', '.join(PROJECT_PACKAGES)} under {root}")
        pending.append(module)
    while pending:
        module = pending.pop()
        if module in graph.project:
            continue
        path = source_of(module, root)
        assert path is not None
        graph.project[module] = path
        if any(is_within(module, package) for package in stop):
            graph.stopped.add(module)  # not read, and not a way to reach anything
            continue
        parent = _parent_package(module)
        if parent:
            _link(graph, module, parent, Link("package"))
            pending.append(parent)
        for statement in _imports(module, path, root):
            for target in _resolve(statement, root):
                _link(graph, module, target, Link(statement.kind, statement.guarded))
                if is_project(target):
                    pending.append(target)
                else:
                    graph.external.add(target)
    return graph


def external_spec(module: str) -> ModuleSpec | None:
    """Where an installed module is, found without importing it; ``None`` when it is not installed."""
    loaded = sys.modules.get(module)
    if loaded is not None:
        return getattr(loaded, "__spec__", None) or ModuleSpec(module, None)
    top, *rest = module.split(".")
    spec = BuiltinImporter.find_spec(top) or FrozenImporter.find_spec(top) or PathFinder.find_spec(top)
    name = top
    for part in rest:
        if spec is None or not spec.submodule_search_locations:
            return None
        name = f"{name}.{part}"
        spec = PathFinder.find_spec(name, list(spec.submodule_search_locations))
    return spec


def to_dot(graph: ModuleGraph, *, title: str, external: bool = False) -> str:
    """Graphviz DOT, in a fixed order: nodes sorted, then edges sorted."""
    shown = set(graph.project) | (graph.external if external else set())
    lines = [
        f"digraph {_quote(title)} {{",
        "  // double border: a root; dashed: imported inside a function; dotted: the module's package",
        '  node [shape=box, fontname="monospace"];',
    ]
    for module in sorted(shown):
        attributes = []
        if module in graph.roots:
            attributes.append("peripheries=2")
        if module not in graph.project:
            attributes.append("shape=ellipse")
        lines.append(f"  {_quote(module)}{_attributes(attributes)};")
    for (importer, imported), link in sorted(graph.links.items()):
        if importer in shown and imported in shown:
            style = {"import": [], "deferred": ["style=dashed"], "package": ["style=dotted"]}[link.kind]
            lines.append(f"  {_quote(importer)} -> {_quote(imported)}{_attributes(style)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- reading import statements ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Import:
    module: str
    """Absolute name of what the statement imports (``from X import ...`` -> ``X``)."""
    names: tuple[str, ...]
    """What ``from X import ...`` takes from it; empty for ``import X``."""
    kind: Kind
    guarded: bool


class _ImportScanner(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.functions = 0
        self.guards = 0
        self.found: list[_Import] = []

    def _add(self, module: str, names: tuple[str, ...]) -> None:
        kind: Kind = "deferred" if self.functions else "import"
        self.found.append(_Import(module, names, kind, self.guards > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, ())

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level:
            base = self.package.split(".") if self.package else []
            if node.level > len(base):
                raise GraphError(f"a relative import in {self.package or 'a top-level module'} goes above its package")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join([*base, module] if module else base)
        self._add(module, tuple(alias.name for alias in node.names if alias.name != "*"))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for statement in node.orelse:  # the body never runs
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(_catches_import_error(handler) for handler in node.handlers)
        self.guards += guarded
        for statement in node.body:
            self.visit(statement)
        self.guards -= guarded
        for statement in (*node.handlers, *node.orelse, *node.finalbody):
            self.visit(statement)

    visit_TryStar = visit_Try


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(kind, ast.Name) and kind.id in _IMPORT_ERRORS for kind in types)


def _imports(module: str, path: Path, root: Path) -> list[_Import]:
    try:
        tree = ast.parse((root / path).read_bytes(), filename=str(path))
    except SyntaxError as error:
        raise GraphError(f"{path}:{error.lineno}: {error.msg}") from None
    except OSError as error:
        raise GraphError(f"cannot read {path}: {error.strerror}") from None
    scanner = _ImportScanner(module, path.name == "__init__.py")
    scanner.visit(tree)
    return scanner.found


def _resolve(statement: _Import, root: Path) -> list[str]:
    """The modules a statement loads, deepest first; their packages come as ``package`` links.

    ``from netstack.wire import ethernet`` loads ``netstack.wire.ethernet``;
    a name that is not a submodule is an attribute of the module itself.
    """
    module = statement.module
    if is_project(module):
        if source_of(module, root) is None:
            if statement.guarded:
                return []
            raise GraphError(f"an import names {module!r}, which is not a module under {root}")
        submodules = [f"{module}.{name}" for name in statement.names if source_of(f"{module}.{name}", root)]
    else:
        spec = external_spec(module)
        if spec is None:
            return [] if statement.guarded else [module]  # the builder reports what is not installed
        package = bool(spec.submodule_search_locations)
        submodules = [f"{module}.{name}" for name in statement.names if package and external_spec(f"{module}.{name}")]
    if not statement.names or len(submodules) < len(statement.names):
        submodules.append(module)
    return submodules


def _parent_package(module: str) -> str:
    return module.rpartition(".")[0]


def _link(graph: ModuleGraph, importer: str, imported: str, link: Link) -> None:
    if importer == imported:
        return
    key = (importer, imported)
    graph.links[key] = graph.links[key].merge(link) if key in graph.links else link


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attributes(attributes: list[str]) -> str:
    return f" [{', '.join(attributes)}]" if attributes else ""


# -- the command ------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m platforms.hvt.graph",
                     description="Print an application's module graph for a target, in Graphviz DOT.")
    parser.add_argument("application", help="the application module, e.g. services.suresh")
    parser.add_argument("--target", required=True, choices=TARGETS, help="the platform it is built for")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--project-only", action="store_true",
                       help="only modules of netstack, services and platforms (the default)")
    shown.add_argument("--external", action="store_true",
                       help="also the standard-library and third-party modules they import")
    args = parser.parse_args(argv)
    try:
        graph = for_target(args.application, args.target)
    except GraphError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(to_dot(graph, title=f"{args.application} on {args.target}", external=args.external))
    return 0


if __name__ == "__main__":
    sys.exit(main())
