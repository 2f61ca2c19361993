"""Network namespaces for tests and benchmarks that touch a tap or send packets.

Every such test or benchmark runs inside a namespace of its own (DESIGN.md):
nothing it sends can reach a real network, and deleting the namespace removes
every interface in it. ``tests/conftest.py`` turns these helpers into the
fixtures ``netns`` and ``tap_netns``; ``benchmarks/`` uses them directly. It
lives with the unix platform because namespaces are a Linux facility; nothing
in the stack or the services imports it.

A ``Namespace`` has two ways in:

- ``popen``/``run``/``start_service`` start *processes* inside it through
  ``ip netns exec``. It remembers what it started, and ``delete`` stops
  exactly those processes, by PID, before deleting the namespace.
- ``enter()`` moves the *calling thread* of the test process in for the
  duration of a ``with`` block (``setns``), so that a ``TapNetif`` can be
  opened inside. Descriptors opened there stay bound to the namespace after
  the block; threads started there inherit it.

Lifetime::

    Namespace() -> (popen | run | start_service | enter)* -> delete()

``delete`` is idempotent and also runs when the test failed (the fixtures
call it in ``finally``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parent.parent.parent
CLONE_NEWNET = 0x40000000
TUN_DEVICE = "/dev/net/tun"

_numbers = itertools.count()


def unavailable_reason() -> str | None:
    """Why namespace tests cannot run here, in one line; ``None`` if they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces and taps)"
    if not os.path.exists(TUN_DEVICE):
        return f"{TUN_DEVICE} is missing (modprobe tun)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


class ServiceProcess(subprocess.Popen):
    """A ``Popen`` whose merged stdout/stderr is collected line by line.

    A reader thread keeps draining the pipe after the ready line, so that a
    chatty service never blocks on a full pipe; ``lines`` holds everything
    read so far.
    """

    lines: list[str]
    drain_thread: threading.Thread | None = None

    def start_reading(self) -> queue.Queue[str | None]:
        self.lines = []
        arrivals: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:
            assert self.stdout is not None
            for line in self.stdout:
                self.lines.append(line)
                arrivals.put(line)
            arrivals.put(None)

        self.drain_thread = threading.Thread(target=drain, name=f"drain-{self.pid}", daemon=True)
        self.drain_thread.start()
        return arrivals

    def output(self) -> str:
        return "".join(self.lines)


class Namespace:
    """A uniquely named network namespace, deleted by ``delete()``.

    Usable as a context manager. Loopback is brought up at creation.
    """

    def __init__(self, prefix: str = "nst") -> None:
        self.name = f"{prefix}-{os.getpid()}-{next(_numbers)}"
        self._processes: list[subprocess.Popen[Any]] = []
        self._deleted = False
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, text=True)
        try:
            self.run(["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.delete()
            raise

    def __repr__(self) -> str:
        return f"<Namespace {self.name}{' deleted' if self._deleted else ''}>"

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    # -- processes inside --------------------------------------------------------

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` prefixed so that they run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *map(str, args)]

    def run(self, args: Sequence[str], *, check: bool = True, timeout: float = 30.0, **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command inside to completion; output captured as text."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        result = subprocess.run(self.command(args), timeout=timeout, **kw)
        if check and result.returncode != 0:
            raise subprocess.CalledProcessError(result.returncode, result.args, result.stdout, result.stderr)
        return result

    def popen(self, args: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a command inside; ``delete`` terminates it if still running.

        ``ip netns exec`` execs the command in place, so the PID is the
        command's own.
        """
        self._check_alive()
        process = subprocess.Popen(self.command(args), **kw)
        self._processes.append(process)
        return process

    def start_service(
        self,
        args: Sequence[str],
        *,
        ready: str,
        timeout: float = 10.0,
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> ServiceProcess:
        """Start ``python -u *args`` inside and wait for a line containing ``ready``.

        ``args`` are the interpreter's arguments (``["-m", "services.echo",
        "--port=7"]``). The repository is on ``PYTHONPATH`` and is the default
        working directory. stdout and stderr are merged; the returned
        process's ``lines``/``output()`` hold what it printed. If the line
        does not come within ``timeout`` seconds, or the process exits
        first, it is stopped and ``RuntimeError`` carries its output.
        """
        self._check_alive()
        environment = dict(os.environ if env is None else env)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPOSITORY), environment.get("PYTHONPATH")])
        )
        environment["PYTHONUNBUFFERED"] = "1"
        process = ServiceProcess(
            self.command([sys.executable, "-u", *args]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            env=environment,
            cwd=cwd if cwd is not None else REPOSITORY,
        )
        self._processes.append(process)
        arrivals = process.start_reading()
        try:
            line = arrivals.get(timeout=timeout)
            while line is not None and ready not in line:
                line = arrivals.get(timeout=timeout)
        except queue.Empty:
            _stop(process)
            raise RuntimeError(
                f"{' '.join(args)} did not print {ready!r} within {timeout} s; output:\n{process.output()}"
            ) from None
        if line is None:
            _stop(process)
            raise RuntimeError(
                f"{' '.join(args)} exited ({process.returncode}) before printing {ready!r}; output:\n{process.output()}"
            )
        return process

    # -- the test process's own thread inside ------------------------------------

    @contextlib.contextmanager
    def enter(self) -> Iterator[Namespace]:
        """Switch the calling thread into this namespace for a ``with`` block."""
        self._check_alive()
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(f"/run/netns/{self.name}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield self
            finally:
                _setns(original)
        finally:
            os.close(original)

    # -- teardown ------------------------------------------------------------------

    def delete(self) -> None:
        """Stop the processes started here (by PID), then delete the namespace."""
        if self._deleted:
            return
        self._deleted = True
        try:
            for process in self._processes:
                _stop(process)
        finally:
            subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, text=True)

    def _check_alive(self) -> None:
        if self._deleted:
            raise RuntimeError(f"namespace {self.name} was deleted")


def _stop(process: subprocess.Popen[Any], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reap it either way."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
    drain_thread = getattr(process, "drain_thread", None)
    if drain_thread is not None:
        drain_thread.join(timeout=grace)  # it ends at EOF; closing under it would raise there
        if drain_thread.is_alive():
            return  # a grandchild holds the pipe open; leave the stream to the thread
    for stream in (process.stdout, process.stderr, process.stdin):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


@dataclasses.dataclass
class TapNamespace:
    """What the ``tap_netns`` fixture yields: a tap inside its own namespace.

    ``netif`` is an open ``TapNetif`` (not yet listening) whose host side is
    ``host_address``/``prefix_length``; the stack under test uses
    ``stack_address``. Processes started with ``namespace.popen`` etc. talk
    to the stack through the tap.
    """

    namespace: Namespace
    tap_name: str
    netif: Any  # platforms.host.tap.TapNetif; kept untyped so collection never imports it
    stack_address: str = "10.0.0.2"
    host_address: str = "10.0.0.1"
    prefix_length: int = 24


@contextlib.contextmanager
def open_tap_namespace(namespace: Namespace, tap_name: str = "tap0") -> Iterator[TapNamespace]:
    """Open (create) ``tap_name`` inside ``namespace``, host side 10.0.0.1/24."""
    from platforms.host.tap import TapNetif

    with namespace.enter():
        netif = TapNetif(tap_name, host_address="10.0.0.1/24")
    try:
        yield TapNamespace(namespace=namespace, tap_name=netif.name, netif=netif)
    finally:
        netif.close()
