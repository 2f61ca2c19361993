"""Retargeting is one module: Suresh's module graphs for unix and hvt differ only in the platform package.

The graphs come from the real command (``python -m platforms.hvt.graph``),
in Graphviz DOT, parsed back into node and edge lines. The command lives in
``platforms.hvt``, whose package (the guest platform) is imported first;
while it does not import, these tests report an expected failure saying why.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLATFORM_PACKAGES = ("platforms.unix", "platforms.hvt", "platforms.host")

NODE = re.compile(r'\s*"(?P<name>[^"]+)"(?P<attributes> \[[^\]]*\])?;\Z')
EDGE = re.compile(r'\s*"(?P<importer>[^"]+)" -> "(?P<imported>[^"]+)"(?P<attributes> \[[^\]]*\])?;\Z')


def run(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "NETSTACK_HVT_CHANNEL")}
    return subprocess.run([sys.executable, "-m", "platforms.hvt.graph", *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def hvt_package_imports() -> None:
    result = subprocess.run([sys.executable, "-c", "import platforms.hvt"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "no output"
        pytest.xfail(f"platforms.hvt does not import yet (the guest side is in progress): {last}")


def graph(application: str, target: str, *options: str) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """Nodes (name -> attributes) and edges ((importer, imported) -> attributes) of a DOT graph."""
    result = run(application, "--target", target, *options)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("digraph ") and lines[-1] == "}"
    nodes: dict[str, str] = {}
    edges: dict[tuple[str, str], str] = {}
    for line in lines[1:-1]:
        if (edge := EDGE.match(line)) is not None:
            edges[edge["importer"], edge["imported"]] = edge["attributes"] or ""
        elif (node := NODE.match(line)) is not None:
            nodes[node["name"]] = node["attributes"] or ""
        else:
            assert line.lstrip().startswith(("//", "node ")), line
    assert set(nodes) >= {name for pair in edges for name in pair}
    return nodes, edges


def in_platform_package(module: str) -> bool:
    return any(module == package or module.startswith(package + ".") for package in PLATFORM_PACKAGES)


def test_suresh_graphs_for_unix_and_hvt_differ_only_in_the_platform_package() -> None:
    unix_nodes, unix_edges = graph("services.suresh", "unix")
    hvt_nodes, hvt_edges = graph("services.suresh", "hvt")
    assert "platforms.unix" in unix_nodes and "platforms.hvt" in hvt_nodes
    assert not any(module.startswith("platforms.hvt") for module in unix_nodes)
    assert not any(module.startswith(("platforms.unix", "platforms.host")) for module in hvt_nodes)

    def without_platform(nodes: dict[str, str], edges: dict[tuple[str, str], str]) -> tuple[dict, dict]:
        return (
            {name: attributes for name, attributes in nodes.items() if not in_platform_package(name)},
            {pair: attributes for pair, attributes in edges.items() if not any(map(in_platform_package, pair))},
        )

    unix_rest, hvt_rest = without_platform(unix_nodes, unix_edges), without_platform(hvt_nodes, hvt_edges)
    assert unix_rest == hvt_rest
    assert {"services.suresh", "services.boot", "netstack.stack", "netstack.http.server"} <= set(unix_rest[0])


def test_only_project_modules_by_default_and_external_ones_on_request() -> None:
    project, _ = graph("services.suresh", "unix")
    assert project == graph("services.suresh", "unix", "--project-only")[0]
    assert all(name.split(".")[0] in ("netstack", "services", "platforms") for name in project)
    everything, edges = graph("services.suresh", "unix", "--external")
    assert {"uvloop", "httptools", "asyncio"} <= set(everything)
    assert everything["uvloop"] == " [shape=ellipse]"
    assert ("platforms.unix", "uvloop") in edges


def test_edge_kinds() -> None:
    nodes, edges = graph("services.suresh", "hvt")
    assert nodes["services.suresh"] == " [peripheries=2]"  # a root
    assert edges["services.suresh", "services.boot"] == ""  # at module level
    assert edges["services.suresh", "netstack.stack"] == " [style=dashed]"  # inside main
    assert edges["netstack.http.server", "netstack.http"] == " [style=dotted]"  # its package


def test_the_graph_is_deterministic() -> None:
    first = run("services.suresh", "--target", "hvt", "--external")
    second = run("services.suresh", "--target", "hvt", "--external")
    assert first.returncode == 0 and first.stdout == second.stdout


def test_errors() -> None:
    unknown = run("services.nope", "--target", "hvt")
    assert unknown.returncode == 1 and len(unknown.stderr.splitlines()) == 1 and "services.nope" in unknown.stderr
    for args in ([], ["services.suresh"], ["services.suresh", "--target", "xen"],
                 ["services.suresh", "--target", "hvt", "--external", "--project-only"]):
        result = run(*args)
        assert result.returncode == 64, args
        assert result.stderr.startswith("usage: python -m platforms.hvt.graph")


def test_imports_read_from_source(tmp_path: Path) -> None:
    """What counts as an import: relative ones, submodules by ``from``; not TYPE_CHECKING, not by name."""
    from platforms.hvt import graph as module_graph

    files = {
        "netstack/__init__.py": "",
        "netstack/wire/__init__.py": "",
        "netstack/wire/ethernet.py": "",
        "netstack/a.py": """\
            from typing import TYPE_CHECKING
            from .wire import ethernet
            if TYPE_CHECKING:
                from netstack import typed_only
            class A:
                import netstack.b
            def later():
                import importlib
                importlib.import_module("netstack.by_name")
                from netstack import c
            """,
        "netstack/b.py": "try:\n    import netstack.optional\nexcept ImportError:\n    pass\n",
        "netstack/c.py": "from collections import abc\n",
        "netstack/by_name.py": "",
        "netstack/typed_only.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    found = module_graph.find(["netstack.a"], root=tmp_path)
    assert sorted(found.project) == ["netstack", "netstack.a", "netstack.b", "netstack.c", "netstack.wire", "netstack.wire.ethernet"]
    kinds = {pair: link.kind for pair, link in found.links.items()}
    assert kinds[("netstack.a", "netstack.wire.ethernet")] == "import"
    assert kinds[("netstack.a", "netstack.b")] == "import"  # a class body runs at load
    assert kinds[("netstack.a", "netstack.c")] == "deferred"
    assert kinds[("netstack.a", "importlib")] == "deferred"
    assert kinds[("netstack.wire.ethernet", "netstack.wire")] == "package"
    assert kinds[("netstack.c", "collections.abc")] == "import"  # ``from X import Y``, Y a submodule
    assert found.external == {"typing", "importlib", "collections.abc"}
