"""Where benchmark servers and clients run: namespaces joined by a tap or a veth pair.

Every target crosses a virtual link, ours or the kernel's (issue 3), and
nothing a benchmark sends can leave the namespaces it created:

``tap``  one namespace. Our service is started inside it and creates
         ``tap0`` itself (host side 10.0.0.1/24, service 10.0.0.2). The
         client runs in the same namespace and reaches the service through
         the tap: kernel stack -> tap -> our stack.

``veth`` two namespaces joined by a veth pair: the server namespace holds
         10.0.1.2/24, the client namespace 10.0.1.1/24. Kernel peers (the
         raw uvloop servers, aiohttp, uvicorn, nginx, or the kernel itself
         answering ping) run in the server namespace: kernel stack -> veth
         -> kernel stack.

The namespace machinery is ``platforms.host.netns`` (shared with the tests):
``Namespace.delete`` stops, by PID, exactly the processes started through
it and then deletes the namespace, which removes the tap or veth pair with
it. ``Session`` owns every topology of one benchmark run and deletes them
all when the run ends, fails or is interrupted.

Lifetime::

    Session() -> (start(target) -> Running)* -> close()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import Results, Target, progress
from platforms.host.netns import REPOSITORY, Namespace

TAP_SERVER_ADDRESS = "10.0.0.2"
TAP_CLIENT_ADDRESS = "10.0.0.1"
VETH_SERVER_ADDRESS = "10.0.1.2"
VETH_CLIENT_ADDRESS = "10.0.1.1"
VETH_PREFIX_LENGTH = 24


class Topology:
    """A server namespace, a client namespace (maybe the same) and their addresses."""

    kind = ""

    def __init__(self, server: Namespace, client: Namespace, server_address: str, client_address: str) -> None:
        self.server = server
        self.client = client
        self.server_address = server_address
        self.client_address = client_address

    def close(self) -> None:
        """Stop what was started inside (by PID) and delete the namespaces."""
        for namespace in {id(self.client): self.client, id(self.server): self.server}.values():
            namespace.delete()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.server.name} {self.server_address}>"


class TapTopology(Topology):
    """One namespace; the service inside creates the tap (10.0.0.1 host side, 10.0.0.2 ours)."""

    kind = "tap"

    def __init__(self) -> None:
        namespace = Namespace("bench-tap")
        super().__init__(namespace, namespace, TAP_SERVER_ADDRESS, TAP_CLIENT_ADDRESS)


class VethTopology(Topology):
    """Two namespaces and a veth pair: server 10.0.1.2/24, client 10.0.1.1/24."""

    kind = "veth"

    def __init__(self) -> None:
        server = Namespace("bench-srv")
        try:
            client = Namespace("bench-cli")
        except BaseException:
            server.delete()
            raise
        super().__init__(server, client, VETH_SERVER_ADDRESS, VETH_CLIENT_ADDRESS)
        try:
            # Interface names are per namespace, so fixed names cannot collide.
            server.run(["ip", "link", "add", "veth-srv", "type", "veth", "peer", "name", "veth-cli",
                        "netns", client.name])
            server.run(["ip", "address", "add", f"{VETH_SERVER_ADDRESS}/{VETH_PREFIX_LENGTH}", "dev", "veth-srv"])
            client.run(["ip", "address", "add", f"{VETH_CLIENT_ADDRESS}/{VETH_PREFIX_LENGTH}", "dev", "veth-cli"])
            server.run(["ip", "link", "set", "veth-srv", "up"])
            client.run(["ip", "link", "set", "veth-cli", "up"])
        except BaseException:
            self.close()
            raise


def make_topology(kind: str) -> Topology:
    if kind == "tap":
        return TapTopology()
    if kind == "veth":
        return VethTopology()
    raise ValueError(f"unknown topology {kind!r}")


# -- processes --------------------------------------------------------------------------


def python_environment() -> dict[str, str]:
    """The environment for Python processes inside a namespace: the repository importable."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")]))
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def run_client(namespace: Namespace, command: str, arguments: Sequence[str], *, timeout: float) -> Any:
    """Run ``python -m benchmarks.clients COMMAND ...`` inside ``namespace``; its JSON result.

    ``timeout`` bounds the whole process; the client bounds its own loop too.
    """
    done = namespace.run([sys.executable, "-m", "benchmarks.clients", command, *map(str, arguments)],
                         check=False, timeout=timeout, env=python_environment(), cwd=REPOSITORY)
    if done.returncode != 0:
        raise RuntimeError(f"client {command} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"client {command} printed nothing; stderr: {done.stderr.strip()[-2000:]}")
    return json.loads(lines[-1])


def wait_for_tcp(namespace: Namespace, host: str, port: int, *, timeout: float = 10.0,
                 process: subprocess.Popen[Any] | None = None) -> None:
    """Wait until ``host:port`` accepts a TCP connection, seen from inside ``namespace``.

    Connects from this process's thread moved into the namespace
    (``Namespace.enter``); fails early when ``process`` has exited.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited ({process.returncode}) before accepting on {host}:{port}")
        try:
            with namespace.enter(), socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as error:
            last_error = error
            time.sleep(0.02)
    raise RuntimeError(f"{host}:{port} did not accept a connection within {timeout} s: {last_error}")


def probe_tcp(namespace: Namespace, host: str, port: int, *, timeout: float = 2.0) -> str | None:
    """``None`` when ``host:port`` accepts a TCP connection from ``namespace``; else why not."""
    try:
        with namespace.enter(), socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as error:
        return f"no TCP connection to {host}:{port} ({error.strerror or error})"


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (peak RSS), ``RssAnon`` etc. of ``pid`` from ``/proc/PID/status``, in KiB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith(("Vm", "Rss")) and value.strip().endswith("kB"):
            fields[name] = int(value.split()[0])
    return fields


def command_line(pid: int) -> list[str]:
    return [part for part in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if part]


def check_is_python(pid: int) -> None:
    """Fail unless ``pid`` is a Python interpreter, not ``ip netns exec`` still waiting.

    ``ip netns exec`` execs the command in place, so the ``Popen`` PID is the
    interpreter's own; this checks that assumption before we read its
    memory, so that we never report the footprint of the wrong process.
    """
    argv = command_line(pid)
    executable = Path(argv[0]).name if argv else ""
    if not executable.startswith("python"):
        raise RuntimeError(f"PID {pid} is {argv!r}, not the Python service; memory figures would be wrong")


# -- a benchmark run's servers ----------------------------------------------------------


class Running:
    """A started target: its topology, its server process (if any) and its address."""

    def __init__(self, target: Target, topology: Topology, process: subprocess.Popen[Any] | None,
                 workdir: Path) -> None:
        self.target = target
        self.topology = topology
        self.process = process
        self.workdir = workdir
        self.launched_ns = 0

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def address(self) -> str:
        return self.topology.server_address

    @property
    def client(self) -> Namespace:
        return self.topology.client

    def stop(self) -> None:
        self.topology.close()


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which CPUs the servers and the clients run on.

    On a small machine, where the scheduler puts the client and the server
    decides the result more than the code does: on the same CPU a round
    trip is a direct hand-off; on two CPUs every wake-up is an
    inter-processor interrupt, which costs tens of microseconds in a VM.
    Left to the scheduler, whole rounds land in one mode or the other and
    the medians jump between them. Pinning makes rounds comparable:

    ``split``  servers on the last usable CPU, clients on the first (the
               default with two CPUs or more: a client and a server are
               different machines in real life)
    ``same``   everything on the first CPU (measures CPU cost per request)
    ``any``    no pinning; the scheduler decides

    Pinning works by inheritance: this process sets its own affinity to the
    servers' CPUs while it starts a server (children inherit it, including
    nginx's workers) and to the clients' otherwise.
    """

    mode: str
    server: frozenset[int] | None = None
    client: frozenset[int] | None = None

    @classmethod
    def choose(cls, mode: str) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if mode == "auto":
            mode = "split" if len(cpus) >= 2 else "same"
        if mode == "split":
            if len(cpus) < 2:
                raise SystemExit("--cpus split needs two usable CPUs")
            return cls(mode, frozenset({cpus[-1]}), frozenset({cpus[0]}))
        if mode == "same":
            return cls(mode, frozenset({cpus[0]}), frozenset({cpus[0]}))
        if mode == "any":
            return cls(mode)
        raise SystemExit(f"unknown --cpus {mode!r}")

    def describe(self) -> str:
        if self.server is None or self.client is None:
            return "not pinned (scheduler decides)"
        return f"{self.mode}: servers on CPU {_cpu_list(self.server)}, clients on CPU {_cpu_list(self.client)}"


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


class Session:
    """Every topology one benchmark run creates; ``close`` deletes them all.

    While the session is open this thread runs on the clients' CPUs (see
    ``Placement``), so every client process it starts inherits them.
    """

    def __init__(self, benchmark: str, placement: Placement | None = None) -> None:
        self.benchmark = benchmark
        self.placement = placement or Placement("any")
        self._stack = contextlib.ExitStack()
        self._workdir = Path(tempfile.mkdtemp(prefix=f"bench-{benchmark}-"))
        self._stack.callback(shutil.rmtree, self._workdir, ignore_errors=True)
        original = os.sched_getaffinity(0)
        self._stack.callback(os.sched_setaffinity, 0, original)
        if self.placement.client is not None:
            os.sched_setaffinity(0, self.placement.client)
        progress(benchmark, f"placement {self.placement.describe()}")

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def start(self, target: Target, *, before_launch: Callable[[Topology], None] | None = None) -> Running:
        """Create the target's topology and start its server; deleted at ``close`` at the latest.

        ``before_launch(topology)`` runs once the namespaces exist and just
        before the server starts (the footprint benchmark starts its boot
        poller there); ``Running.launched_ns`` is the monotonic time taken
        right before the server process is created.
        """
        topology = make_topology(target.topology)
        self._stack.callback(topology.close)
        workdir = Path(tempfile.mkdtemp(prefix="target-", dir=self._workdir))
        progress(self.benchmark, f"start {target.name} in {topology.server.name}")
        try:
            if before_launch is not None:
                before_launch(topology)
            launched_ns = time.monotonic_ns()
            if self.placement.server is not None:
                os.sched_setaffinity(0, self.placement.server)
            try:
                process = target.launch(topology, workdir)
            finally:
                if self.placement.client is not None:
                    os.sched_setaffinity(0, self.placement.client)
        except BaseException:
            topology.close()
            raise
        running = Running(target, topology, process, workdir)
        running.launched_ns = launched_ns
        return running

    def start_all(self, targets: Sequence[Target], results: Results) -> list[Running]:
        """Start every target that can run; the others are recorded as skipped with their reason."""
        running = []
        for target in targets:
            reason = target.skip_reason()
            if reason is None:
                try:
                    running.append(self.start(target))
                    continue
                except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                    reason = f"failed to start: {str(error).splitlines()[0]}"
            results.skip(target.name, reason)
        return running

