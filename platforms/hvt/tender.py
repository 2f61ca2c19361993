"""The hvt tender: the host side of a guest, modelled on Solo5's ``solo5-hvt``.

Usage::

    python -m platforms.hvt.tender [--mem=MB] [--net:NAME=IFACE] [--net-mac:NAME=MAC]
        [--block:NAME=PATH] [--block-sector-size:NAME=N] -- IMAGE [ARGS...]

Theory of operation
-------------------

A run goes through these steps, and refuses at the first that fails, with
one line and exit status 1 (64 for a malformed command line)::

    parse the command line -> read IMAGE's manifest -> match the attached
    devices against the declared ones -> open block files, then taps ->
    start the guest -> BOOT -> serve hypercalls* -> guest ends -> exit status

**Devices.** Every device the manifest declares must be attached by name,
and nothing else may be: ``--net:NAME`` for a ``NET_BASIC``, ``--block:NAME``
for a ``BLOCK_BASIC``. Handles are numbered per kind, in manifest order: net
handle ``i`` is the ``i``-th net device, block handle ``j`` the ``j``-th
block device (``tender_devices.number_handles``; ABI.md, "Handles").
``POLL``'s ready set is over net handles, so an image may declare at most 64
of them.

**The guest** is ``python -I -S -OO IMAGE ARGS...``: isolated mode, so that
neither the tender's environment (``PYTHONPATH``) nor the current directory
reaches its ``sys.path``; an image carries every project module it needs.
``-S`` skips ``site``, whose ``.pth`` processing imports whatever the host's
packages ask for (several MiB the guest would carry for ever); instead
``NETSTACK_HVT_SITE`` names the interpreter's site-packages directories, which
the image's ``__main__`` appends to ``sys.path`` for the third-party modules
it preloads (httptools). ``-OO`` drops docstrings (and asserts, which our
code uses only to narrow types): the theory-of-operation texts are for
readers of the source, not for a guest's memory. It starts in its own session (a terminal's Ctrl-C reaches the
tender, which then stops the guest deliberately), in ``/``, with
``/dev/null`` on stdin, stdout and stderr (its console is ``PUTS``), an
environment of ``PATH``, ``LANG=C.UTF-8``, ``NETSTACK_HVT_SITE`` and
``NETSTACK_HVT_CHANNEL`` (the number of its one inherited descriptor, the
channel) and nothing else, and
``PR_SET_PDEATHSIG`` so that it dies with the tender. ``--mem`` (default 512
MiB, Solo5's default) becomes ``RLIMIT_AS``. The address-space limit is what
bounds a Python process's heap on every kernel, whichever way the allocator
grows it (``brk``, or ``mmap`` for pymalloc's arenas and large objects):
Linux does not enforce ``RLIMIT_RSS`` at all, and ``RLIMIT_DATA`` covers
private ``mmap``s only since 4.7. It also counts the interpreter's own
mappings (about 20 MiB of code and libraries), so ``--mem`` is the guest's
whole address space, a little more than its heap. A guest past its limit
gets ``MemoryError`` (which the real guest turns into ``HALT(255, "out of
memory")``) and, rarely, a ``SIGSEGV`` where C code could not grow a stack.

**Serving.** One thread, one ``poll(2)`` over the channel, the guest's pidfd
and a signal wake-up pipe, plus the taps while a ``POLL`` hypercall is
pending. The guest is strictly request/response, so at most one request is
in progress; a ``POLL`` that is not ready at once is kept as a deadline
(monotonic ns), and the loop sleeps until a tap is readable or the deadline
passes. A tap is never polled otherwise, so frames wait in the kernel's tap
queue until the guest asks; the tender keeps no frame queue of its own
beyond one carried frame per tap (``tender_devices``). Replies are sent
non-blocking: if the guest does not read them, the one unsent reply waits
and the tender stops reading requests until it can send it. A guest flooding
garbage therefore costs the tender one receive buffer and one reply, never
more.

**Errors from the guest** (``ABI.md``, "Errors"): a malformed request is
answered ``EINVAL`` and counted; a well-formed request the device cannot
honour (bad handle, partial sector, oversize frame) is answered ``EINVAL``
too; a host I/O failure is answered ``EUNSPEC``. Nothing a guest sends can
raise out of the loop.

**Ending** (exit status, the line on stderr)::

    HALT(status, reason)          min(status, 255); "guest halted with status N: reason"
                                  (silent for HALT(0) without a reason)
    exit without HALT             its exit code; "guest exited with status N without halting"
    killed by SIGSYS              255; "guest killed by the sandbox: NAME refused"
    killed by SIGKILL / SIGSEGV   255; one line saying so (and that memory may be why)
    tender got SIGINT / SIGTERM   the guest gets SIGTERM and the grace period to shut down
                                  (a netstack guest closes its connections and HALTs 0,
                                  as a unix service exits 0); the exit status is then the
                                  guest's. A guest still running after the grace period, or
                                  a second signal: SIGKILL, and 128 + signal (130 / 143).
                                  Either way the taps the tender created are removed.

Solo5's tender exits 1 on SIGINT/SIGTERM ("Exiting on signal N"); a netstack
guest can shut down cleanly, so it is given the chance, and the shell's
128 + signal is kept for a guest that does not. The sandbox's note is
a ``PUTS`` whose text starts with ``"\\0sandbox-refused:"`` followed by the
call's name, sent just before the forbidden call; it is not console text.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import math
import mmap
import os
import re
import resource
import select
import signal
import site
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import BinaryIO, TextIO

from platforms.hvt import abi
from platforms.hvt.abi import AbiError, Call, Result
from platforms.hvt.tender_devices import (
    DEFAULT_SECTOR_SIZE,
    SECTOR_SIZES,
    BlockPort,
    Manifest,
    ManifestDevice,
    NetPort,
    Refused,
    TenderError,
    check_attachments,
    host_side_address,
    number_handles,
    open_block,
    open_net,
    read_manifest,
)

__all__ = [
    "Manifest",
    "ManifestDevice",
    "Options",
    "Tender",
    "TenderError",
    "UsageError",
    "check_attachments",
    "describe_end",
    "frames_to_end",
    "main",
    "parse_args",
    "read_manifest",
]

EXIT_REFUSED = 1
EXIT_USAGE = 64
"""``EX_USAGE`` from ``sysexits.h``: the command line itself is wrong."""
EXIT_ABORT = 255
"""Solo5's ``SOLO5_EXIT_ABORT``: the guest ended abnormally."""

MAX_MESSAGE_BYTES = abi.HEADER_LEN + abi.MAX_MESSAGE
"""A whole message: the header and at most ``MAX_MESSAGE`` bytes of payload."""
DEFAULT_MEM_MB = 512
MAX_MEM_MB = 1 << 32
GRACE_SECONDS = 2.0
"""How long a guest may take to exit after HALT, a closed channel or SIGTERM."""
SANDBOX_NOTE = b"\0sandbox-refused:"
MESSAGES_PER_WAKEUP = 64
"""Requests served per wake-up before the loop looks at its other descriptors."""
DRAIN_LIMIT = 10_000
"""Most messages served after the guest has gone (its queue is bounded by the kernel anyway)."""
POLL_SLICE_MS = 60_000
"""Longest single ``poll(2)`` sleep; a farther deadline is reached in slices."""

USAGE = (
    "usage: python -m platforms.hvt.tender [--mem=MB] [--net:NAME=IFACE] [--net-mac:NAME=MAC] "
    "[--block:NAME=PATH] [--block-sector-size:NAME=N] -- IMAGE [ARGS...]"
)

_SO_SNDBUFFORCE = 32  # <asm-generic/socket.h>; needs CAP_NET_ADMIN, which a tender opening taps has
_UNIX_DGRAM_OVERHEAD = 64  # the kernel refuses a message longer than sk_sndbuf - 32
_PR_SET_PDEATHSIG = 1
_POLL_CLOSED = select.POLLHUP | select.POLLERR | select.POLLNVAL
_U32 = struct.Struct("<I")


class UsageError(Exception):
    """The command line is malformed (exit 64)."""


# -- the command line -------------------------------------------------------------


@dataclasses.dataclass
class Options:
    image: str
    args: tuple[str, ...] = ()
    mem_mb: int = DEFAULT_MEM_MB
    net: dict[str, str] = dataclasses.field(default_factory=dict)
    net_mac: dict[str, str] = dataclasses.field(default_factory=dict)
    block: dict[str, str] = dataclasses.field(default_factory=dict)
    block_sector_size: dict[str, int] = dataclasses.field(default_factory=dict)


_NAMED_OPTION = re.compile(r"--(net|net-mac|block|block-sector-size):([^=]+)=(.*)\Z", re.DOTALL)
_MAC = re.compile(r"[0-9A-Fa-f]{1,2}(:[0-9A-Fa-f]{1,2}){5}\Z")


def parse_args(argv: Sequence[str]) -> Options | None:
    """``Options`` from the tender's arguments; ``None`` for ``--help``; ``UsageError`` if malformed.

    Options come first; ``--`` or the first argument that is not an option
    is IMAGE, and everything after IMAGE is the guest's.
    """
    mem_mb = DEFAULT_MEM_MB
    tables: dict[str, dict[str, str]] = {"net": {}, "net-mac": {}, "block": {}, "block-sector-size": {}}
    index = 0
    while index < len(argv):
        argument = argv[index]
        if argument == "--":
            index += 1
            break
        if not argument.startswith("-"):
            break
        index += 1
        if argument in ("--help", "-h"):
            return None
        if argument.startswith("--mem="):
            value = argument[len("--mem=") :]
            if not (value.isascii() and value.isdigit()) or not 0 < int(value) <= MAX_MEM_MB:
                raise UsageError(f"--mem={value}: expected a number of MiB from 1 to {MAX_MEM_MB}")
            mem_mb = int(value)
            continue
        match = _NAMED_OPTION.match(argument)
        if match is None:
            raise UsageError(f"unknown option {argument!r}")
        kind, name, value = match.groups()
        if not value:
            raise UsageError(f"{argument}: empty value")
        if name in tables[kind]:
            raise UsageError(f"--{kind}:{name} given twice")
        tables[kind][name] = value
    if index >= len(argv):
        raise UsageError("missing IMAGE")
    image, args = argv[index], tuple(argv[index + 1 :])

    for name, interface in tables["net"].items():
        if len(interface.encode()) >= 16 or "/" in interface or " " in interface:
            raise UsageError(f"--net:{name}={interface}: an interface name is 1 to 15 bytes, no '/' or spaces")
    for name, mac in tables["net-mac"].items():
        if _MAC.match(mac) is None:
            raise UsageError(f"--net-mac:{name}={mac}: expected six hex bytes like 02:00:00:00:00:01")
        if int(mac.split(":")[0], 16) & 0x01:
            raise UsageError(f"--net-mac:{name}={mac}: a multicast address; a netif needs a unicast one")
    sector_sizes: dict[str, int] = {}
    for name, value in tables["block-sector-size"].items():
        if not (value.isascii() and value.isdigit()) or int(value) not in SECTOR_SIZES:
            raise UsageError(f"--block-sector-size:{name}={value}: a power of two from 512 to 65536")
        sector_sizes[name] = int(value)
    return Options(
        image=image,
        args=args,
        mem_mb=mem_mb,
        net=tables["net"],
        net_mac=tables["net-mac"],
        block=tables["block"],
        block_sector_size=sector_sizes,
    )


# -- how a guest ended ------------------------------------------------------------------


def describe_end(
    returncode: int, halt: tuple[int, str] | None, refused_call: str | None, mem_mb: int, *, booted: bool = True
) -> tuple[int, str | None]:
    """``(exit status, line or None)`` for a guest that ended so (see the module docstring).

    ``booted``: whether the guest made any hypercall at all.
    """
    if halt is not None:
        status, reason = halt
        code = min(status, EXIT_ABORT)
        if status == 0 and not reason:
            return 0, None
        return code, f"guest halted with status {status}" + (f": {reason}" if reason else "")
    if returncode >= 0:
        # A guest that failed before its first hypercall never reached its
        # boot code (which halts on every error): most often the interpreter
        # could not map itself in the address space --mem allows.
        hint = f" before booting (could it start in {mem_mb} MiB? see --mem)" if returncode and not booted else ""
        return returncode, f"guest exited with status {returncode} without halting{hint}"
    number = -returncode
    name = _signal_name(number)
    if number == signal.SIGSYS:
        refused = f"{refused_call} refused" if refused_call else "a forbidden system call"
        return EXIT_ABORT, f"guest killed by the sandbox: {refused}"
    if number == signal.SIGKILL:
        return EXIT_ABORT, f"guest killed by SIGKILL (out of memory, or killed from outside; --mem={mem_mb})"
    if number in (signal.SIGSEGV, signal.SIGBUS):
        return EXIT_ABORT, f"guest crashed with {name} (it may have run out of its {mem_mb} MiB; see --mem)"
    return EXIT_ABORT, f"guest killed by {name}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- the tender ---------------------------------------------------------------------------


class Tender:
    """One guest run: ``Tender(image, args, net={...}, block={...}, mem_mb=...).run() -> exit status``.

    ``run`` raises ``TenderError`` for a refusal before the guest starts
    (bad image, devices missing or unknown, a tap or file that cannot be
    opened); once the guest runs, it returns the exit status described in
    the module docstring. ``console`` receives the banner and the guest's
    ``PUTS`` (bytes); ``log`` the tender's own lines. ``stats`` counts
    the guest's calls and those answered ``EINVAL`` (``malformed``,
    ``refused``) or ``EUNSPEC`` (``unspecified``); each port in ``nets``
    has its own frame counters.
    """

    def __init__(
        self,
        image: str,
        args: Sequence[str] = (),
        *,
        net: Mapping[str, str] | None = None,
        net_mac: Mapping[str, str] | None = None,
        block: Mapping[str, str] | None = None,
        block_sector_size: Mapping[str, int] | None = None,
        mem_mb: int = DEFAULT_MEM_MB,
        console: BinaryIO | None = None,
        log: TextIO | None = None,
        grace: float = GRACE_SECONDS,
    ) -> None:
        self.options = Options(
            image=image,
            args=tuple(args),
            mem_mb=mem_mb,
            net=dict(net or {}),
            net_mac=dict(net_mac or {}),
            block=dict(block or {}),
            block_sector_size=dict(block_sector_size or {}),
        )
        self._console: BinaryIO | None = console if console is not None else sys.stdout.buffer
        self._log = log if log is not None else sys.stderr
        self._grace = grace
        self.nets: dict[int, NetPort] = {}  # by handle (tender_devices.number_handles)
        self.blocks: dict[int, BlockPort] = {}
        self.stats = {"calls": 0, "malformed": 0, "refused": 0, "unspecified": 0}
        self.last_error: str | None = None
        self.halt: tuple[int, str] | None = None
        self.refused_call: str | None = None

        self._channel: socket.socket | None = None
        self._guest: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._wake_read = self._wake_write = -1
        self._signals: list[int] = []
        self._stop_deadline: int | None = None  # set when a signal asked the guest to stop
        self._max_message = MAX_MESSAGE_BYTES
        # Anonymous maps rather than bytearrays: their pages cost memory only
        # once a message that large has been through them.
        self._in = mmap.mmap(-1, MAX_MESSAGE_BYTES + 1)  # one more byte, so an oversize message shows as truncated
        self._out = mmap.mmap(-1, MAX_MESSAGE_BYTES)
        self._out_view = memoryview(self._out)
        self._unsent: bytes | None = None
        self._poll_deadline: int | None = None
        self._channel_closed = False
        self._guest_exited = False
        self._draining = False
        self._idle = select.poll()  # channel, pidfd, wake-up pipe
        self._waiting = select.poll()  # the same, plus the taps: while a POLL is pending
        self._taps = select.poll()  # the taps alone, for POLL's immediate answer
        self._net_by_fd: dict[int, int] = {}
        self._handlers: dict[int, Callable[[int, int, memoryview], bytes | memoryview | None]] = {
            Call.WALLTIME: self._walltime,
            Call.PUTS: self._puts,
            Call.POLL: self._poll,
            Call.NET_READ: self._net_read,
            Call.NET_WRITE: self._net_write,
            Call.BLOCK_READ: self._block_read,
            Call.BLOCK_WRITE: self._block_write,
            Call.HALT: self._halt,
        }

    @classmethod
    def from_options(cls, options: Options, **kw: object) -> Tender:
        return cls(
            options.image,
            options.args,
            net=options.net,
            net_mac=options.net_mac,
            block=options.block,
            block_sector_size=options.block_sector_size,
            mem_mb=options.mem_mb,
            **kw,  # type: ignore[arg-type]
        )

    # -- the run ------------------------------------------------------------------------

    def run(self) -> int:
        options = self.options
        manifest = read_manifest(options.image)
        check_attachments(manifest, options)
        handles = number_handles(manifest)
        try:
            # The guest's interpreter starts and imports while we open the
            # devices (a tap takes tens of milliseconds); it waits for BOOT.
            self._spawn_guest()
            try:
                for name in manifest.named(abi.DeviceType.BLOCK_BASIC):
                    size = options.block_sector_size.get(name, DEFAULT_SECTOR_SIZE)
                    self.blocks[handles[name]] = open_block(name, options.block[name], size)
                for name in manifest.named(abi.DeviceType.NET_BASIC):
                    self.nets[handles[name]] = open_net(
                        name, options.net[name], options.net_mac.get(name), host_side_address(options.args)
                    )
                boot = self._boot_info(manifest)
            except BaseException:
                if self._guest is not None:
                    _stop(self._guest, self._grace)
                raise
            self._banner(manifest)
            self._boot_guest(boot)
            try:
                self._serve()
            finally:
                code = self._finish()
            return code
        finally:
            self._close()

    def _boot_info(self, manifest: Manifest) -> bytes:
        handles = number_handles(manifest)
        devices: list[abi.Device] = []
        for device in manifest.devices:  # in manifest order, whatever the numbering
            if device.type == abi.DeviceType.NET_BASIC:
                port = self.nets[handles[device.name]]
                devices.append(abi.NetDevice(device.name, port.mac, port.mtu))
            else:
                block = self.blocks[handles[device.name]]
                devices.append(abi.BlockDevice(device.name, block.sector_size, block.capacity))
        info = abi.BootInfo(self.options.args, tuple(devices), self.options.mem_mb << 20)
        message = abi.request(Call.BOOT, info.encode())
        if len(message) > MAX_MESSAGE_BYTES:
            raise TenderError(f"the guest's command line is too long ({len(message)} bytes of boot info)")
        return message

    def _banner(self, manifest: Manifest) -> None:
        parts = [
            f"{port.name}={port.tap.name} ({':'.join(f'{b:02x}' for b in port.mac)}, mtu {port.mtu})"
            for port in self.nets.values()
        ] + [
            f"{block.name}={block.path} ({block.capacity // block.sector_size} x {block.sector_size})"
            for block in self.blocks.values()
        ]
        devices = ", ".join(parts) or "none"
        line = (
            f"netstack hvt tender: image {self.options.image} ({manifest.application}), "
            f"mem {self.options.mem_mb} MiB, devices: {devices}\n"
        )
        self._write_console(line.encode())

    def _spawn_guest(self) -> None:
        tender_end, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._channel = tender_end
        try:
            self._max_message = _size_channel(tender_end, guest_end)
            if self._max_message < MAX_MESSAGE_BYTES:
                self._say(
                    f"tender: the channel carries messages of at most {self._max_message} bytes, not "
                    f"{MAX_MESSAGE_BYTES} (run with CAP_NET_ADMIN, or raise net.core.wmem_max)"
                )
            tender_end.setblocking(False)
            self._install_signal_handlers()
            limit = self.options.mem_mb << 20
            env = {
                "PATH": os.environ.get("PATH", os.defpath),
                "LANG": "C.UTF-8",
                "NETSTACK_HVT_CHANNEL": str(guest_end.fileno()),
                "NETSTACK_HVT_SITE": os.pathsep.join(site.getsitepackages()),
            }
            try:
                self._guest = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-OO", os.path.abspath(self.options.image), *self.options.args],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    pass_fds=(guest_end.fileno(),),
                    close_fds=True,
                    env=env,
                    cwd="/",
                    start_new_session=True,
                    preexec_fn=_guest_preexec(limit),
                )
            except (OSError, subprocess.SubprocessError) as error:
                raise TenderError(f"cannot start the guest: {error}") from None
        finally:
            guest_end.close()  # the guest's copy is its own; ours would hide its exit (no POLLHUP)
        try:
            self._pidfd = os.pidfd_open(self._guest.pid)
        except (AttributeError, OSError):
            self._pidfd = -1  # older kernels: the channel's hang-up tells us instead

    def _boot_guest(self, boot: bytes) -> None:
        """Send BOOT (the guest's first message) and start watching the channel and taps."""
        assert self._channel is not None
        try:
            self._channel.send(boot)
        except OSError:
            # The guest died while we opened the devices (too little --mem,
            # say); _finish reports how it ended.
            self._channel_closed = True
        channel = self._channel.fileno()
        for poller in (self._idle, self._waiting):
            poller.register(channel, select.POLLIN)
            poller.register(self._wake_read, select.POLLIN)
            if self._pidfd >= 0:
                poller.register(self._pidfd, select.POLLIN)
        for handle, port in self.nets.items():
            self._waiting.register(port.fd, select.POLLIN)
            self._taps.register(port.fd, select.POLLIN)
            self._net_by_fd[port.fd] = handle

    # -- the loop -------------------------------------------------------------------------

    def _serve(self) -> None:
        assert self._channel is not None
        channel = self._channel.fileno()
        while self.halt is None and not (self._channel_closed or self._guest_exited or self._give_up_on_guest()):
            waiting = self._poll_deadline is not None
            events = (self._waiting if waiting else self._idle).poll(self._timeout_ms())
            channel_events = 0
            tap_ready = False
            for fd, mask in events:
                if fd == channel:
                    channel_events = mask
                elif fd == self._wake_read:
                    _drain(fd)
                elif fd == self._pidfd:
                    self._guest_exited = True
                else:
                    tap_ready = True
            if self._give_up_on_guest():
                return
            if channel_events & (select.POLLOUT | _POLL_CLOSED) and self._unsent is not None:
                self._flush()
            if channel_events & (select.POLLIN | _POLL_CLOSED) and self._unsent is None:
                self._receive()
            deadline = self._poll_deadline
            if deadline is not None:
                ready = self._ready_set() if tap_ready else 0
                if ready or time.monotonic_ns() >= deadline:
                    self._answer_poll(ready)
        if self.halt is None and not self._give_up_on_guest():
            # The guest has gone (or hung up); its last messages, a HALT or
            # console text, may still be queued: serve them, dropping the
            # replies nobody will read.
            self._draining = True
            self._unsent = None
            self._receive(limit=DRAIN_LIMIT)

    def _give_up_on_guest(self) -> bool:
        """After SIGINT/SIGTERM: pass SIGTERM on once and let the guest shut
        down (close its connections, HALT) for up to the grace period; a second
        signal or the end of the grace period ends the wait."""
        if not self._signals:
            return False
        if self._stop_deadline is None:
            self._stop_deadline = time.monotonic_ns() + int(self._grace * 1e9)
            guest = self._guest
            if guest is not None and guest.poll() is None:
                try:
                    guest.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
            if self._poll_deadline is not None:
                # The guest waits in POLL; its signal is queued in its loop's
                # self-pipe, which it reads only once POLL returns.
                self._answer_poll(0)
            return False
        return len(self._signals) > 1 or time.monotonic_ns() >= self._stop_deadline

    def _timeout_ms(self) -> int | None:
        deadlines = [d for d in (self._poll_deadline, self._stop_deadline) if d is not None]
        if not deadlines:
            return None
        remaining = min(deadlines) - time.monotonic_ns()
        return min(max(0, math.ceil(remaining / 1_000_000)), POLL_SLICE_MS)

    def _receive(self, limit: int | None = MESSAGES_PER_WAKEUP) -> None:
        assert self._channel is not None
        buffer = self._in
        served = 0
        while self.halt is None and (self._unsent is None or self._draining):
            if limit is not None and served >= limit:
                return
            try:
                size, _, flags, _ = self._channel.recvmsg_into([buffer])
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionResetError:
                # The guest closed with one of our replies unread. The error
                # is reported once; what it sent before is still queued.
                self._channel_closed = True
                continue
            except OSError:
                self._channel_closed = True
                return
            if size == 0 and self._peer_closed():
                self._channel_closed = True
                return
            served += 1
            if flags & socket.MSG_TRUNC:
                self._malformed(buffer[0] if size else 0, f"message longer than {MAX_MESSAGE_BYTES} bytes")
                continue
            self._handle(memoryview(buffer)[:size])

    def _peer_closed(self) -> bool:
        """A zero-byte read is the end of the channel only if the guest hung up (else an empty message)."""
        assert self._channel is not None
        probe = select.poll()
        probe.register(self._channel.fileno(), select.POLLIN)
        return any(mask & _POLL_CLOSED for _, mask in probe.poll(0))

    def _handle(self, message: memoryview) -> None:
        self.stats["calls"] += 1
        if self._poll_deadline is not None:
            self._answer_poll()  # a request before the POLL's answer: answer the POLL first, in order
        call = message[0] if len(message) else 0
        try:
            call, flags, handle, payload = abi.parse(message)
            handler = self._handlers.get(call)
            if handler is None:
                raise AbiError(f"unknown call {call}")
            reply = handler(handle, flags, payload)
        except AbiError as error:
            self._malformed(call, str(error))
            return
        except Refused as error:
            self.stats["refused"] += 1
            self.last_error = str(error)
            reply = abi.response(call, Result.EINVAL)
        except OSError as error:
            self.stats["unspecified"] += 1
            self.last_error = f"{Call(call).name}: {error}"
            reply = abi.response(call, Result.EUNSPEC)
        if reply is not None:
            self._send(reply)

    def _malformed(self, call: int, error: str) -> None:
        self.stats["malformed"] += 1
        self.last_error = error
        self._send(abi.response(call, Result.EINVAL))

    def _send(self, message: bytes | memoryview) -> None:
        assert self._channel is not None
        if self._channel_closed:
            return
        try:
            self._channel.send(message)
        except BlockingIOError:
            if self._draining:
                return
            # The guest is not reading its replies: keep this one and stop
            # reading requests until it can go (SEQPACKET sends whole or not at all).
            self._unsent = bytes(message)
            self._set_channel_events(select.POLLOUT)
        except OSError as error:
            self._channel_closed = True
            if error.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                return  # the guest has gone
            # Replies are sized to what the channel carries, so this is a bug
            # of ours; the guest must not wait for ever for its answer, so
            # hang up, and it halts on the closed channel.
            self._say(f"tender: cannot answer the guest ({error.strerror}); closing the channel")
            self._channel.shutdown(socket.SHUT_RDWR)

    def _flush(self) -> None:
        assert self._channel is not None
        if self._unsent is None:
            return
        message, self._unsent = self._unsent, None
        self._set_channel_events(select.POLLIN)
        self._send(message)

    def _set_channel_events(self, events: int) -> None:
        assert self._channel is not None
        for poller in (self._idle, self._waiting):
            poller.modify(self._channel.fileno(), events)

    # -- hypercalls ----------------------------------------------------------------------

    def _walltime(self, handle: int, flags: int, payload: memoryview) -> bytes:
        _no_handle(handle, flags)
        if len(payload):
            raise AbiError(f"WALLTIME takes no payload, got {len(payload)} bytes")
        return abi.response(Call.WALLTIME, Result.OK, abi.u64(time.time_ns()))

    def _puts(self, handle: int, flags: int, payload: memoryview) -> bytes:
        _no_handle(handle, flags)
        if payload[: len(SANDBOX_NOTE)] == SANDBOX_NOTE:
            name = bytes(payload[len(SANDBOX_NOTE) : len(SANDBOX_NOTE) + 64]).decode("ascii", "replace").strip()
            self.refused_call = "".join(c if c.isprintable() else "?" for c in name) or None
        else:
            self._write_console(payload)
        return abi.response(Call.PUTS, Result.OK)

    def _poll(self, handle: int, flags: int, payload: memoryview) -> bytes | None:
        _no_handle(handle, flags)
        deadline = abi.read_u64(payload)
        ready = self._ready_set()
        if ready or deadline <= time.monotonic_ns():
            return abi.response(Call.POLL, Result.OK, abi.u64(ready))
        self._poll_deadline = deadline
        return None

    def _answer_poll(self, ready: int | None = None) -> None:
        self._poll_deadline = None
        if ready is None:
            ready = self._ready_set()
        self._send(abi.response(Call.POLL, Result.OK, abi.u64(ready)))

    def _ready_set(self) -> int:
        ready = 0
        for handle, port in self.nets.items():
            if port.ready:
                ready |= 1 << handle
        if self.nets:
            for fd, _ in self._taps.poll(0):
                ready |= 1 << self._net_by_fd[fd]
        return ready

    def _net_read(self, handle: int, flags: int, payload: memoryview) -> bytes | memoryview:
        max_frames = abi.read_u16(payload)
        port = self._net(handle, flags)
        if max_frames == 0:
            raise Refused("NET_READ of at most 0 frames")
        out = self._out_view
        try:
            count, end = port.read_into(out, abi.HEADER_LEN, self._max_message, max_frames)
        except OSError:
            self._forget_tap(port)
            raise
        if port.failed is not None:
            self._forget_tap(port)
        if count == 0:
            return abi.response(Call.NET_READ, Result.AGAIN)
        abi.HEADER.pack_into(out, 0, Call.NET_READ, Result.OK, count, end - abi.HEADER_LEN)
        return out[:end]

    def _net_write(self, handle: int, flags: int, payload: memoryview) -> bytes:
        frames = frames_to_end(payload)
        port = self._net(handle, flags)
        port.check_batch(frames)
        port.write_batch(frames)
        return abi.response(Call.NET_WRITE, Result.OK)

    def _block_read(self, handle: int, flags: int, payload: memoryview) -> memoryview:
        offset, length = abi.read_block_request(payload)
        block = self._block(handle, flags)
        block.check(offset, length)
        if abi.HEADER_LEN + length > self._max_message:
            raise Refused(f"BLOCK_READ of {length} bytes does not fit in one message")
        out = self._out_view
        block.read_into(out[abi.HEADER_LEN : abi.HEADER_LEN + length], offset)
        abi.HEADER.pack_into(out, 0, Call.BLOCK_READ, Result.OK, 0, length)
        return out[: abi.HEADER_LEN + length]

    def _block_write(self, handle: int, flags: int, payload: memoryview) -> bytes:
        offset, data = abi.read_u64_prefix(payload)
        block = self._block(handle, flags)
        block.check(offset, len(data))
        block.write(data, offset)
        return abi.response(Call.BLOCK_WRITE, Result.OK)

    def _halt(self, handle: int, flags: int, payload: memoryview) -> None:
        _no_handle(handle, flags)
        status, reason = abi.read_u32_prefix(payload)
        text = bytes(reason[:1024]).decode("utf-8", "replace")
        self.halt = (status, " ".join(text.split()))  # one line, whatever the guest sent
        return None

    def _net(self, handle: int, flags: int) -> NetPort:
        if flags:
            raise AbiError(f"flags {flags:#x} are reserved and must be 0")
        port = self.nets.get(handle)
        if port is None:
            raise Refused(f"no net handle {handle} (the guest has {sorted(self.nets)})")
        return port

    def _block(self, handle: int, flags: int) -> BlockPort:
        if flags:
            raise AbiError(f"flags {flags:#x} are reserved and must be 0")
        block = self.blocks.get(handle)
        if block is None:
            raise Refused(f"no block handle {handle} (the guest has {sorted(self.blocks)})")
        return block

    def _forget_tap(self, port: NetPort) -> None:
        """Stop polling a tap that failed, or POLL would report it ready for ever."""
        if port.fd in self._net_by_fd:
            del self._net_by_fd[port.fd]
            self._waiting.unregister(port.fd)
            self._taps.unregister(port.fd)

    # -- the end ------------------------------------------------------------------------

    def _finish(self) -> int:
        guest = self._guest
        if guest is None:
            return EXIT_ABORT
        if self._signals and self.halt is None:
            # Stopped by a signal and the guest did not halt (it died of the
            # SIGTERM we passed on, or outlived the grace period).
            number = self._signals[0]
            _stop(guest, self._grace)
            self._say(f"tender: stopped by {_signal_name(number)}; the guest was terminated")
            return 128 + number
        # HALT, a closed channel, or the guest's exit: it has (nearly) gone.
        try:
            returncode = guest.wait(timeout=self._grace)
        except subprocess.TimeoutExpired:
            _stop(guest, self._grace)
            returncode = guest.returncode
            if self.halt is None:
                self._say("tender: the guest closed its channel without halting and was stopped")
                return EXIT_ABORT
        code, line = describe_end(
            returncode, self.halt, self.refused_call, self.options.mem_mb, booted=self.stats["calls"] > 0
        )
        if self.stats["malformed"]:
            self._say(
                f"tender: {self.stats['malformed']} malformed hypercalls answered EINVAL (last: {self.last_error})"
            )
        if line is not None:
            self._say(line)
        return code

    def _close(self) -> None:
        guest = self._guest
        if guest is not None and guest.poll() is None:
            _stop(guest, self._grace)  # an exception in the loop: never leave the guest behind
        self._restore_signal_handlers()
        if self._channel is not None:
            self._channel.close()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        errors: list[BaseException] = []
        for port in [*self.nets.values(), *self.blocks.values()]:
            try:
                port.close()
            except OSError as error:
                errors.append(error)
        if errors:
            self._say(f"tender: closing the devices failed: {errors[0]}")

    # -- signals and output --------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._previous: dict[int, object] = {}
        self._previous_wakeup = None
        try:
            self._previous_wakeup = signal.set_wakeup_fd(self._wake_write, warn_on_full_buffer=False)
        except ValueError:
            return  # not the main thread: no handlers (the embedding program handles signals)
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._on_signal)

    def _on_signal(self, number: int, frame: object) -> None:
        self._signals.append(number)

    def _restore_signal_handlers(self) -> None:
        for number, handler in getattr(self, "_previous", {}).items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        if getattr(self, "_previous_wakeup", None) is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
        for fd in (self._wake_read, self._wake_write):
            if fd >= 0:
                os.close(fd)
        self._wake_read = self._wake_write = -1

    def _write_console(self, data: bytes | memoryview) -> None:
        if self._console is None:
            return
        try:
            self._console.write(data)
            self._console.flush()
        except (BrokenPipeError, ValueError):
            self._console = None  # nobody reads the console any more; keep serving the guest

    def _say(self, line: str) -> None:
        try:
            print(line, file=self._log, flush=True)
        except (BrokenPipeError, ValueError):
            pass


# -- helpers ----------------------------------------------------------------------------


def frames_to_end(payload: memoryview) -> list[memoryview]:
    """NET_WRITE's batch: ``(u32 length, frame)`` records up to the end of the payload.

    The request header has no count field (its third field is the handle),
    so a NET_WRITE batch is as many records as its payload holds.
    """
    frames: list[memoryview] = []
    offset = 0
    end = len(payload)
    while offset < end:
        if offset + 4 > end:
            raise AbiError("frame batch is truncated")
        (length,) = _U32.unpack_from(payload, offset)
        offset += 4
        if offset + length > end:
            raise AbiError("frame in batch is truncated")
        frames.append(payload[offset : offset + length])
        offset += length
    if not frames:
        raise AbiError("NET_WRITE of no frames")
    return frames


def _no_handle(handle: int, flags: int) -> None:
    if handle or flags:
        raise AbiError(f"handle {handle} and flags {flags:#x} must be 0 for this call")


def _size_channel(tender_end: socket.socket, guest_end: socket.socket) -> int:
    """Let both ends send a whole ``MAX_MESSAGE_BYTES``; return the largest message they can.

    A Unix datagram or seqpacket message must fit in its sender's send
    buffer, 208 KiB by default; ``SO_SNDBUFFORCE`` lifts the
    ``net.core.wmem_max`` cap for a tender with ``CAP_NET_ADMIN``.
    """
    want = MAX_MESSAGE_BYTES + 2 * _UNIX_DGRAM_OVERHEAD
    sizes = []
    for end in (tender_end, guest_end):
        try:
            end.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, want)
        except OSError:
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, want)
        sizes.append(end.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - _UNIX_DGRAM_OVERHEAD)
    return min(MAX_MESSAGE_BYTES, *sizes)


def _guest_preexec(limit: int) -> Callable[[], None]:
    """What the guest's child process does before ``exec``: die with us, cap its memory.

    No core dumps either: a sandbox kill is a SIGSYS, whose default action
    dumps core, and a guest's memory is not something to leave in ``/``.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the tender died before prctl took effect
            os._exit(EXIT_ABORT)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reaped either way."""
    if process.poll() is None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        except ProcessLookupError:
            process.wait()


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


# -- the command ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        options = parse_args(argv)
    except UsageError as error:
        print(f"tender: {error}\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    if options is None:
        print(USAGE)
        return 0
    try:
        return Tender.from_options(options).run()
    except TenderError as error:
        print(f"tender: {error}", file=sys.stderr, flush=True)
        return EXIT_REFUSED
    except KeyboardInterrupt:  # Ctrl-C before the guest started (afterwards it is handled)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
