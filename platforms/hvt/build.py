"""The hvt image builder: one file holding an application, the project modules it reaches, and its manifest.

``python -m platforms.hvt.build services.suresh [-o dist/suresh.hvt] [--list]``

writes ``dist/suresh.hvt`` (by default ``dist/<last part of the name>.hvt``);
``--list`` prints the project modules the image would hold, one a line, and
writes nothing. The tender runs the image (``python -m platforms.hvt.tender
--net:service=tap0 -- dist/suresh.hvt ARGS``); ``build_and_run`` does both,
for a service's ``--platform hvt`` on the host.

What goes in
------------

The modules come from ``platforms.hvt.graph``: the application, the guest
platform ``platforms.hvt`` (which services load by name, so the graph adds
it as a root) and the image's entry point ``platforms.hvt.guest``, and what
they import, transitively, read from source. Then:

* project modules (``netstack``, ``services``, ``platforms``) are packed as
  source, at their package paths, with their packages' ``__init__.py``;
* standard-library and third-party modules are not packed: the guest takes
  them from the host's interpreter. Those the packed modules import go in
  the manifest's ``preload``, and the guest imports them at boot, before its
  sandbox forbids opening files. Their own imports follow from importing
  them; the list is exactly what our code names, nothing more;
* host-only modules never go in (``HOST_ONLY``): ``platforms.unix`` and
  ``platforms.host`` need taps, netlink and uvloop. An application that
  imports them fails the build;
* modules a guest cannot use (``NOT_IN_GUEST``) stay out when they are
  reached only from inside a function, as an optional feature:
  ``services.boot`` imports ``netstack.devices.pcap`` only for ``--pcap``,
  which writes a file, and a sandboxed guest cannot open one (so dpkt is
  not preloaded either); Suresh imports ``netstack.socket_stack`` only for
  ``--net socket``, and a guest cannot make a socket. Imported at module
  level, they fail the build.

The image is a zip (``python IMAGE`` runs its ``__main__.py``)::

    __main__.py     from platforms.hvt.guest import main
                    main("services.suresh", preload=[...])
    manifest.json   {"application": ..., "devices": [...], "modules": [...],
                     "preload": [...], "type": "netstack.manifest", "version": 1}
    netstack/...    the packed sources

``devices`` is the application module's ``DEVICES``, a literal list of
``{"name": ..., "type": "NET_BASIC" | "BLOCK_BASIC"}`` read from its source
(the builder never runs the application); the tender refuses to start an
image whose devices are not all attached.

Determinism: the same sources give the same bytes. Entries are sorted,
every entry has the time 1980-01-01 00:00:00 and mode 0644, compression is
deflate at a fixed level, JSON has sorted keys and no spaces, and nothing
inside names the directory the build ran in.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import marshal
import importlib.util
import json
import os
import re
import stat
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from platforms.hvt.graph import (
    ENTRY_POINTS,
    EX_USAGE,
    PROJECT_ROOT,
    GraphError,
    ModuleGraph,
    external_spec,
    for_target,
    is_project,
    is_within,
    source_of,
)

TARGET = "hvt"
ENTRY_POINT = ENTRY_POINTS[TARGET][0]
MANIFEST_TYPE = "netstack.manifest"
MANIFEST_VERSION = 1
DEVICE_TYPES = ("NET_BASIC", "BLOCK_BASIC")
DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}\Z")
"""Device names appear in the tender's ``--net:NAME=IFACE``: no ``:`` or ``=``, and short."""

HOST_ONLY = {
    "platforms.unix": "the unix platform: a tap and uvloop",
    "platforms.host": "host-side Linux facilities: taps (pyroute2) and namespaces",
}
NOT_IN_GUEST = {
    "netstack.devices.pcap": "--pcap writes a capture file, and a sandboxed guest cannot open files",
    "netstack.socket_stack": "the socket stack uses the host kernel's sockets, and a sandboxed guest cannot make one",
}

ZIP_TIME = (1980, 1, 1, 0, 0, 0)
ZIP_MODE = stat.S_IFREG | 0o644
ZIP_UNIX = 3  # "made by" a Unix system, so that the mode in external_attr means what it says
COMPRESS_LEVEL = 9

TENDER = "platforms.hvt.tender"


class BuildError(Exception):
    """The application cannot become an image. The message is one line, for the user."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What an image of ``application`` holds; ``archive`` makes its bytes."""

    application: str
    devices: tuple[dict[str, str], ...]
    modules: dict[str, Path]
    """Packed module -> its source, relative to ``root``."""
    preload: tuple[str, ...]
    root: Path

    def manifest(self) -> dict[str, Any]:
        return {
            "type": MANIFEST_TYPE,
            "version": MANIFEST_VERSION,
            "application": self.application,
            "devices": [dict(device) for device in self.devices],
            "preload": list(self.preload),
            "modules": sorted(self.modules),
        }

    def main_source(self) -> str:
        # A guest has no TLS (nothing it could verify a certificate with), and
        # asyncio's optional import of ssl loads OpenSSL: several MiB of RSS.
        # The tender runs the guest with -S (no site, see tender.py) and names
        # the site-packages directories to search for third-party modules.
        return (
            "import os, sys\n"
            "sys.modules.setdefault('ssl', None)\n"
            "sys.path.extend(p for p in os.environ.get('NETSTACK_HVT_SITE', '').split(os.pathsep) if p)\n"
            f"from {ENTRY_POINT} import main\n"
            f"main({json.dumps(self.application)}, preload={json.dumps(list(self.preload))})\n"
        )

    def archive(self) -> bytes:
        entries = {
            "__main__.py": self.main_source().encode(),
            "manifest.json": (json.dumps(self.manifest(), sort_keys=True, separators=(",", ":")) + "\n").encode(),
        }
        for path in self.modules.values():
            source = (self.root / path).read_bytes()
            entries[path.as_posix()] = source
            entries[path.with_suffix(".pyc").as_posix()] = _bytecode(source, path.as_posix())
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for name in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = ZIP_UNIX
                info.external_attr = ZIP_MODE << 16
                archive.writestr(info, entries[name], compresslevel=COMPRESS_LEVEL)
        return buffer.getvalue()


def _bytecode(source: bytes, name: str) -> bytes:
    """The module compiled as the guest runs it (``-OO``), as an unchecked hash-based pyc.

    zipimport cannot cache what it compiles, so without these a guest would
    compile every module at every boot (about 50 ms of Suresh's). A
    hash-based pyc (PEP 552) carries no timestamp, so the image stays
    byte-for-byte reproducible; "unchecked" because the image is immutable.
    It ties the image to this interpreter's bytecode version, as the tender
    runs the guest with ``sys.executable``.
    """
    code = compile(source, name, "exec", optimize=2, dont_inherit=True)
    return importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + importlib.util.source_hash(source) + marshal.dumps(code)


def plan(application: str, *, root: Path = PROJECT_ROOT) -> Plan:
    """Find what an image of ``application`` holds; raises ``BuildError``."""
    if source_of(application, root) is None:
        raise BuildError(f"no application module {application!r} in netstack, services or platforms under {root}")
    devices = read_devices(application, root)
    try:
        graph = for_target(application, TARGET, root=root, stop=(*HOST_ONLY, *NOT_IN_GUEST))
    except GraphError as error:
        raise BuildError(str(error)) from None
    _check_guest_only(graph)
    modules = {module: path for module, path in graph.project.items() if module not in graph.stopped}
    preload = set()
    for (importer, imported), _ in sorted(graph.links.items()):
        if importer in modules and not is_project(imported):
            if external_spec(imported) is None:
                raise BuildError(f"{importer} imports {imported}, which is not installed")
            preload.add(imported)
    return Plan(application, devices, dict(sorted(modules.items())), tuple(sorted(preload)), root)


def read_devices(application: str, root: Path = PROJECT_ROOT) -> tuple[dict[str, str], ...]:
    """The application's ``DEVICES``, read from its source and checked."""
    path = source_of(application, root)
    if path is None:
        raise BuildError(f"no application module {application!r}")
    try:
        tree = ast.parse((root / path).read_bytes(), filename=str(path))
    except SyntaxError as error:
        raise BuildError(f"{path}:{error.lineno}: {error.msg}") from None
    value: ast.expr | None = None
    for statement in tree.body:  # the last module-level assignment wins, as it would at run time
        if isinstance(statement, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "DEVICES" for target in statement.targets
        ):
            value = statement.value
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            if statement.target.id == "DEVICES" and statement.value is not None:
                value = statement.value
    if value is None:
        raise BuildError(
            f"{application} declares no DEVICES (a module-level list such as "
            '[{"name": "service", "type": "NET_BASIC"}])'
        )
    try:
        devices = ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        raise BuildError(
            f"{application}.DEVICES must be a literal list (the builder reads it without running the application)"
        ) from None
    return check_devices(devices, f"{application}.DEVICES")


def check_devices(devices: object, where: str) -> tuple[dict[str, str], ...]:
    if not isinstance(devices, list):
        raise BuildError(f"{where} must be a list of {{'name': ..., 'type': ...}}, not {type(devices).__name__}")
    seen: set[str] = set()
    for device in devices:
        if not isinstance(device, dict) or set(device) != {"name", "type"}:
            raise BuildError(f"{where}: {device!r} must be a dict with exactly the keys 'name' and 'type'")
        name, kind = device["name"], device["type"]
        if not isinstance(name, str) or not DEVICE_NAME.match(name):
            raise BuildError(f"{where}: device name {name!r} must be 1-63 letters, digits, '_' or '-'")
        if kind not in DEVICE_TYPES:
            raise BuildError(f"{where}: device {name!r} has type {kind!r}; use one of {', '.join(DEVICE_TYPES)}")
        if name in seen:
            raise BuildError(f"{where}: device name {name!r} is declared twice")
        seen.add(name)
    return tuple({"name": device["name"], "type": device["type"]} for device in devices)


def _check_guest_only(graph: ModuleGraph) -> None:
    for root_module in graph.roots:
        if root_module in graph.stopped:
            raise BuildError(f"{root_module} is host-only; it cannot run in an hvt guest")
    for (importer, imported), link in sorted(graph.links.items()):
        if importer in graph.stopped:
            continue
        for package, reason in HOST_ONLY.items():
            if is_within(imported, package):
                raise BuildError(
                    f"{importer} imports {imported}, which is host-only ({reason}); services load "
                    "their platform by name in main (services.boot.load_platform), never by import"
                )
        for module, reason in NOT_IN_GUEST.items():
            if is_within(imported, module) and link.kind == "import":
                raise BuildError(
                    f"{importer} imports {imported} when it loads, and an hvt guest cannot have it: {reason}"
                )


def default_output(application: str) -> Path:
    return Path("dist") / f"{application.rpartition('.')[2]}.hvt"


def write(image: Plan, output: Path) -> int:
    """Write the image to ``output`` (atomically, creating its directory); returns its size."""
    data = image.archive()
    output.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, output)
    except BaseException:
        os.unlink(temporary)
        raise
    return len(data)


def build(application: str, output: Path | None = None, *, root: Path = PROJECT_ROOT) -> Plan:
    """Plan and write the image of ``application``; raises ``BuildError`` or ``OSError``."""
    image = plan(application, root=root)
    write(image, output if output is not None else default_output(application))
    return image


# -- build and run, for a service's --platform hvt on the host ---------------------------


class _UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def tender_command(image: Path, devices: Sequence[dict[str, str]], interface: str, boot_arguments: Sequence[str]) -> list[str]:
    """The tender's command line: the net device on ``interface``, then the image and its boot arguments."""
    attach = [f"--net:{device['name']}={interface}" for device in devices if device["type"] == "NET_BASIC"]
    return [sys.executable, "-m", TENDER, *attach, "--", str(image), *boot_arguments]


class UsageError(Exception):
    """Boot arguments that an hvt guest cannot honour (exit 64)."""


def build_for_tender(application: str, argv: Sequence[str]) -> list[str]:
    """Build ``dist/<name>.hvt`` for a service's boot arguments ``argv``; the tender command that runs it.

    ``--platform`` and ``--interface`` are the host's business: the first is
    why we are here (the guest adds its own), the second names the tap that
    backs the application's net device. The other arguments are the guest's.
    Raises ``UsageError``, ``BuildError`` or ``OSError``.
    """
    parser = argparse.ArgumentParser(add_help=False)  # abbreviations allowed, as the service's own parser
    parser.add_argument("--platform")
    parser.add_argument("--interface", default="tap0")
    parser.add_argument("--pcap")
    known, boot_arguments = parser.parse_known_args(list(argv))
    if known.pcap is not None:
        raise UsageError(f"--pcap is not available with --platform hvt: {NOT_IN_GUEST['netstack.devices.pcap']}")
    image = plan(application)
    net = [device["name"] for device in image.devices if device["type"] == "NET_BASIC"]
    block = [device["name"] for device in image.devices if device["type"] == "BLOCK_BASIC"]
    if block or len(net) > 1:
        raise UsageError(
            f"{application} declares devices {', '.join(net + block)}; --interface attaches one net device, "
            f"so run the tender: python -m {TENDER} --net:NAME=IFACE --block:NAME=PATH -- IMAGE ARGS"
        )
    output = default_output(application)
    write(image, output)
    return tender_command(output, image.devices, known.interface, boot_arguments)


def build_and_run(application: str, argv: Sequence[str] | None = None) -> int:
    """``--platform hvt`` on the host: build ``dist/<name>.hvt`` and become its tender.

    The tender replaces this process (``execv``), so SIGINT and SIGTERM reach
    it directly and its exit status (the guest's) is ours. Returns only on
    an error: 1 for a failed build, 64 for boot arguments hvt cannot honour.
    """
    prog = f"python -m {application}"
    try:
        command = build_for_tender(application, sys.argv[1:] if argv is None else argv)
    except UsageError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EX_USAGE
    except (BuildError, OSError) as error:
        print(f"{prog}: cannot build the hvt image: {error}", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    raise AssertionError("unreachable: execv returned")


# -- the command ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = _UsageParser(prog="python -m platforms.hvt.build",
                          description="Build an hvt image: an application, the project modules it reaches, its manifest.")
    parser.add_argument("application", help="the application module, e.g. services.suresh")
    parser.add_argument("-o", "--output", type=Path, help="the image file (default: dist/<name>.hvt)")
    parser.add_argument("--list", action="store_true", help="print the project modules the image holds, and exit")
    args = parser.parse_args(argv)
    try:
        image = plan(args.application)
        if args.list:
            sys.stdout.write("".join(f"{module}\n" for module in image.modules))
            return 0
        output = args.output if args.output is not None else default_output(args.application)
        size = write(image, output)
    except BuildError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{parser.prog}: cannot write the image: {error}", file=sys.stderr)
        return 1
    print(f"{output}: {size} bytes, {len(image.modules)} modules, devices "
          f"{', '.join(device['name'] for device in image.devices) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
