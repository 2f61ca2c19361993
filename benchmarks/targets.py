"""Every target the benchmarks know, how each starts, and why one may be skipped.

Our services run in the ``tap`` topology (they create ``tap0`` in their own
namespace); the peers run in the ``veth`` topology (see
``benchmarks.topology``). A target whose program or tool is missing is
skipped with a one-line reason instead of failing the run, so the same
command works on a fresh machine, after ``pip install -e '.[bench]'``, and
as TCP, Suresh and hvt land.

Names are what the tables print; keep them short and stable, since results
files from different days are compared by them.
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import Target
from benchmarks.peers import BODY, HTTP_PORT, READY, nginx_config
from benchmarks.topology import Topology, command_line, python_environment, wait_for_tcp
from platforms.host.netns import REPOSITORY

SERVICE_START_TIMEOUT = 20.0
TAP_BOOT_ARGUMENTS = ["--platform", "unix", "--interface", "tap0", "--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1"]
ECHO_READY = "echo ready"
SURESH_READY = f"suresh listening on TCP port {HTTP_PORT}"
INSTALL_BENCH = "pip install -e '.[bench]'"


def _module_missing(module: str, reason: str) -> str | None:
    """``reason`` when ``module`` cannot be found (a missing parent package counts too)."""
    try:
        return reason if importlib.util.find_spec(module) is None else None
    except ModuleNotFoundError:
        return reason


def _tool_missing(tool: str, install: str) -> str | None:
    return f"{tool} is not installed ({install})" if shutil.which(tool) is None else None


# -- our services -----------------------------------------------------------------------


def echo_arguments() -> list[str]:
    return ["-m", "services.echo", *TAP_BOOT_ARGUMENTS]


def _launch_python_service(arguments: list[str], ready: str, *,  # type: ignore[no-untyped-def]
                           in_workdir: bool = False):
    """Start ``python -u *arguments`` in the server namespace and wait for ``ready``.

    ``in_workdir``: run in the target's own temporary directory rather than
    the repository (``--platform hvt`` writes ``dist/`` where it runs).
    """

    def launch(topology: Topology, workdir: Path) -> subprocess.Popen[Any]:
        return topology.server.start_service(arguments, ready=ready, timeout=SERVICE_START_TIMEOUT,
                                             cwd=workdir if in_workdir else None)

    return launch


def echo_tap() -> Target:
    """services.echo on our direct stack behind a tap: ARP, ping, UDP echo on 7."""
    return Target(
        name="services.echo (tap)",
        topology="tap",
        launch=_launch_python_service(echo_arguments(), ECHO_READY),
        port=7,
        unavailable=lambda: _module_missing("services.echo", "services.echo is not importable"),
    )


def suresh_tap() -> Target:
    """Suresh on our direct stack behind a tap (the unix platform)."""
    arguments = ["-m", "services.suresh", *TAP_BOOT_ARGUMENTS, f"--port={HTTP_PORT}"]
    return Target(
        name="suresh (tap)",
        topology="tap",
        launch=_launch_python_service(arguments, SURESH_READY),
        port=HTTP_PORT,
        unavailable=lambda: _module_missing("services.suresh", "services.suresh is not built yet"),
    )


def suresh_socket() -> Target:
    """Suresh on the host kernel's sockets (``--net socket``), a kernel peer like the others.

    Runs in the veth server namespace so that it crosses the same link as
    the peers. The exact boot arguments of ``--net socket`` are settled
    when it lands; adjust ``arguments`` then.
    """
    arguments = ["-m", "services.suresh", "--net", "socket", "--ipv4=10.0.1.2/24", f"--port={HTTP_PORT}"]
    return Target(
        name="suresh (socket)",
        topology="veth",
        launch=_launch_python_service(arguments, SURESH_READY),
        port=HTTP_PORT,
        unavailable=lambda: _module_missing("services.suresh", "services.suresh is not built yet"),
    )


HVT_IMAGE_NAME = "suresh.hvt"
HVT_GUEST_ARGUMENTS = ["--ipv4=10.0.0.2/24", "--ipv4-gateway=10.0.0.1", f"--port={HTTP_PORT}"]
SECCOMP_LIBRARIES = ("libseccomp.so.2", "libseccomp.so")  # what platforms.hvt.sandbox dlopens


def _seccomp_missing() -> str | None:
    for name in SECCOMP_LIBRARIES:
        try:
            ctypes.CDLL(name)
            return None
        except OSError:
            continue
    return "libseccomp is not installed (apt-get install -y libseccomp2): an hvt guest cannot run unsandboxed"


def _hvt_unavailable() -> str | None:
    return (_module_missing("services.suresh", "services.suresh is not built yet")
            or _module_missing("platforms.hvt.tender", "platforms.hvt is not built yet")
            or _seccomp_missing())


def suresh_hvt() -> Target:
    """Suresh as an hvt guest under the tender, started by the one-step command.

    ``python -m services.suresh --platform hvt --interface tap0 ...`` builds
    ``dist/suresh.hvt`` in its working directory (the target's temporary
    directory, so nothing lands in the repository) and execs the tender,
    which creates ``tap0`` and starts the guest; the ready line comes
    through the tender's console. Stopping is by the ``Popen`` PID, which
    after ``ip netns exec`` and the exec is the tender's: SIGTERM, which the
    tender forwards to the guest (it closes its connections and halts 0).
    """
    arguments = ["-m", "services.suresh", "--platform", "hvt", "--interface", "tap0", *HVT_GUEST_ARGUMENTS]
    return Target(name="suresh (hvt)", topology="tap",
                  launch=_launch_python_service(arguments, SURESH_READY, in_workdir=True),
                  port=HTTP_PORT, unavailable=_hvt_unavailable)


def build_hvt_image(output: Path) -> int:
    """Build Suresh's hvt image at ``output`` (outside any namespace: it only reads sources); its size.

    The footprint benchmark builds once per run and times the tender alone
    (``suresh_hvt_tender``), so that the build is not part of the boot time.
    """
    done = subprocess.run([sys.executable, "-m", "platforms.hvt.build", "services.suresh", "-o", str(output)],
                          capture_output=True, text=True, timeout=120, cwd=REPOSITORY, env=python_environment())
    if done.returncode != 0:
        raise RuntimeError(f"hvt image build failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    return output.stat().st_size


def suresh_hvt_tender(image: Path) -> Target:
    """Suresh's prebuilt hvt ``image`` under the tender alone (no build): what boot time measures.

    ``python -m platforms.hvt.tender --net:service=tap0 -- IMAGE --ipv4=... --port=8080``.
    Same name as ``suresh_hvt``: it is the same guest, only started without
    the build step.
    """
    arguments = ["-m", "platforms.hvt.tender", "--net:service=tap0", "--", str(image), *HVT_GUEST_ARGUMENTS]
    return Target(name="suresh (hvt)", topology="tap",
                  launch=_launch_python_service(arguments, SURESH_READY, in_workdir=True),
                  port=HTTP_PORT, unavailable=_hvt_unavailable)


def hvt_guest_pid(tender_pid: int, image: Path) -> int:
    """The guest of the tender ``tender_pid``: its child whose command line holds ``image``.

    The tender starts the guest as ``python -I -S -OO IMAGE ARGS`` with the
    image's absolute path; children are found through ``/proc/*/stat``
    (field 4 is the parent's PID), which needs no kernel option.
    """
    wanted = image.resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2:].split()[1])
            if parent != tender_pid:
                continue
            argv = command_line(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if any(part.endswith(image.name) and Path(part).resolve() == wanted for part in argv):
            found.append(int(entry.name))
    if len(found) != 1:
        raise RuntimeError(f"expected one hvt guest of tender {tender_pid} running {image}, found {found}")
    return found[0]


# -- peers ------------------------------------------------------------------------------


def _launch_peer(kind: str):  # type: ignore[no-untyped-def]
    def launch(topology: Topology, workdir: Path) -> subprocess.Popen[Any]:
        arguments = ["-m", "benchmarks.peers", kind, "--host", topology.server_address, "--port", str(HTTP_PORT)]
        return topology.server.start_service(arguments, ready=READY, timeout=SERVICE_START_TIMEOUT)

    return launch


def _uvloop_missing() -> str | None:
    return _module_missing("uvloop", "uvloop is not installed (pip install -e .)")


def echo_peer() -> Target:
    """The raw uvloop echo (UDP 7, TCP discard 9, TCP source 19) on the kernel's stack over veth.

    In this topology the Linux kernel itself answers ping, which makes it
    the ICMP reference too.
    """
    return Target(name="raw uvloop echo (veth)", topology="veth", launch=_launch_peer("echo"), port=7,
                  unavailable=_uvloop_missing, reference=True)


def raw_http() -> Target:
    return Target(name="raw uvloop HTTP (veth)", topology="veth", launch=_launch_peer("raw-http"),
                  port=HTTP_PORT, unavailable=_uvloop_missing, reference=True)


def aiohttp_peer() -> Target:
    return Target(name="aiohttp (veth)", topology="veth", launch=_launch_peer("aiohttp"), port=HTTP_PORT,
                  unavailable=lambda: _module_missing("aiohttp", f"aiohttp is not installed ({INSTALL_BENCH})"))


def uvicorn_peer() -> Target:
    def unavailable() -> str | None:
        return (_module_missing("uvicorn", f"uvicorn is not installed ({INSTALL_BENCH})")
                or _module_missing("httptools", "httptools is not installed (pip install -e .)"))

    return Target(name="uvicorn+httptools (veth)", topology="veth", launch=_launch_peer("uvicorn"),
                  port=HTTP_PORT, unavailable=unavailable)


def nginx_peer() -> Target:
    """nginx-light, one worker: the native reference, started by PID in the server namespace."""

    def launch(topology: Topology, workdir: Path) -> subprocess.Popen[Any]:
        configuration = nginx_config(workdir, topology.server_address, HTTP_PORT)
        log = open(workdir / "nginx.out", "wb")  # noqa: SIM115 - the process holds it open
        try:
            process = topology.server.popen(
                ["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(configuration)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        try:
            wait_for_tcp(topology.client, topology.server_address, HTTP_PORT, process=process)
        except RuntimeError as error:
            details = (workdir / "nginx.out").read_text(errors="replace")[-1000:]
            raise RuntimeError(f"{error}; nginx said: {details}") from None
        return process

    return Target(name="nginx (veth)", topology="veth", launch=launch, port=HTTP_PORT,
                  unavailable=lambda: _tool_missing("nginx", "apt-get install -y nginx-light"))


def http_targets() -> list[Target]:
    """Every HTTP target, ours first, in the order the rounds alternate them."""
    return [suresh_tap(), suresh_hvt(), suresh_socket(), raw_http(), aiohttp_peer(), uvicorn_peer(), nginx_peer()]


def serving_mismatch(running: Any) -> str | None:
    """Why a started HTTP target does not serve Suresh's bytes on ``GET /``, or ``None``.

    Comparing like with like means every target sends the same body; this
    checks it once, from inside the client namespace, before any round.
    """
    from benchmarks.clients import http_get

    try:
        with running.client.enter():
            status, body = http_get(running.address, running.target.port)
    except (OSError, ValueError) as error:
        return f"GET / failed: {error}"
    if status != 200 or body != BODY:
        return f"GET / answered {status} {body[:60]!r} instead of 200 {BODY.decode()!r}"
    return None


def start_http_targets(session: Any, targets: list[Target], results: Any) -> list[Any]:
    """Start the available HTTP targets and keep those serving the expected body."""
    serving = []
    for running in session.start_all(targets, results):
        reason = serving_mismatch(running)
        if reason is None:
            serving.append(running)
        else:
            running.stop()
            results.skip(running.name, reason)
    return serving
