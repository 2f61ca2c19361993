"""The hvt platform: devices over hypercalls, asyncio over ``POLL``.

This module is the platform a service picks with ``--platform hvt`` inside
an hvt guest, and it offers what ``platforms.unix`` offers (the
``netstack.protocols.Platform`` contract), plus block devices::

    import platforms.hvt as platform

    netif = platform.netif("service")      # a net device from the boot info
    clock = platform.clock()
    disk = platform.block("storage")       # a block device, if the image declares one
    platform.run(app.start())

It works only inside a guest that ``platforms.hvt.guest.main`` booted (the
image's ``__main__`` does that): every device is one the tender attached
and listed in the boot info, and is reached by hypercalls on the one
channel (``platforms.hvt.hypercalls``). Elsewhere each function raises
``PlatformError`` saying how to start a guest.

Devices. Handles are numbered per kind, in boot-info order (the tender's
numbering, after the manifest's): net handle ``i`` is the ``i``-th net
device, block handle ``j`` the ``j``-th block device.

- ``netif(name)``: the net device called ``name``; when there is no such
  device but exactly one net device, that one. A service's ``--interface``
  names a host tap, which means nothing inside a guest: the tender decided
  which tap backs the device (``--net:NAME=IFACE``). MAC and MTU come from
  the boot info; there is no offload (``Offload`` with ``mtu`` segments).
  ``write`` queues the frame and the queue goes out as one ``NET_WRITE``
  batch per loop iteration (``call_soon``); ``listen`` registers the device
  with the loop's selector, and each wake-up reads ``NET_READ`` batches of
  up to 64 frames until ``AGAIN`` or a batch shorter than 64, one
  ``receive(batch)`` per batch.
- ``block(name)``: ``netstack.protocols.Block`` over ``BLOCK_READ`` and
  ``BLOCK_WRITE``. The calls are synchronous hypercalls, as in Solo5: the
  ``async`` API completes without yielding to other tasks while the tender
  does the I/O.
- ``clock()``: ``monotonic_ns`` is ``time.monotonic_ns`` (a vDSO read, which
  the sandbox allows, on the same clock the tender's ``POLL`` deadlines use);
  ``wall_ns`` is the tender's ``WALLTIME`` read once at boot, carried forward
  by the monotonic clock. Timers run on the loop.

Lifetime, as a grammar::

    netif()* block()* -> run(main) -> sandbox installed -> loop runs main
                      -> [main returns | main raises] -> leftover tasks cancelled
                      -> every netif closed -> loop closed

``run`` installs the sandbox (``platforms.hvt.sandbox``) just before it
enters the loop: the service has parsed its arguments, opened its devices
and imported what it needs, and has not yet touched the network. Signals:
the tender passes SIGINT/SIGTERM on as SIGTERM, which cancels ``main``
exactly as on the unix platform (``run`` then returns ``None``), so a
service closes its connections and the guest HALTs 0; a guest that does not
finish within the tender's grace period is killed. SIGINT itself is
ignored in a guest (``guest.main``), since Ctrl-C at a terminal goes to the
tender, which decides. A ``MemoryError`` reported to the loop
halts the guest with status 255 (``guest.out_of_memory``).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import gc
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from netstack import runner
from netstack.clock import LoopClock
from netstack.protocols import Frame, FrameBatch, Offload, PlatformError
from platforms.hvt import guest, sandbox
from platforms.hvt.abi import BlockDevice, NetDevice, Result
from platforms.hvt.hypercalls import NET_BATCH, Hypercalls
from platforms.hvt.selector import DeviceHandle, HvtSelector

__all__ = ["HvtBlock", "HvtClock", "HvtNetif", "block", "clock", "netif", "run"]

T = TypeVar("T")

ETHERNET_HEADER_LEN = 14
TX_QUEUE_LIMIT = 1024
"""Frames queued between two flushes before ``write`` drops (a full ring)."""
TX_BATCH_BYTES = 128 * 1024
"""Most frame bytes in one ``NET_WRITE``: one Unix datagram must hold it."""
BLOCK_CHUNK_BYTES = 64 * 1024
"""Most bytes in one ``BLOCK_READ``/``BLOCK_WRITE``; larger requests are split."""

_open_netifs: dict[int, HvtNetif] = {}
_selector: HvtSelector | None = None  # the running guest loop's, once run() has made it


# -- the platform functions -------------------------------------------------------


def netif(name: str = "service", **ignored: Any) -> HvtNetif:
    """The net device ``name`` (or the only one); see the module docstring.

    Options meant for a host tap (``host_address``, ``offload``, ``mac``)
    are accepted and ignored: the tender owns the tap. Raises
    ``PlatformError`` when there is no such device or it is already open.
    """
    booted = guest.current()
    devices = list(enumerate(device for device in booted.info.devices if isinstance(device, NetDevice)))
    chosen = [(handle, device) for handle, device in devices if device.name == name]
    if not chosen and len(devices) == 1:
        chosen = devices
    if not chosen:
        names = ", ".join(device.name for _, device in devices) or "none"
        raise PlatformError(f"no net device {name!r} in this guest (attached: {names}); attach it with --net:{name}=TAP")
    handle, device = chosen[0]
    if handle in _open_netifs:
        raise PlatformError(f"net device {device.name!r} is already open")
    opened = HvtNetif(booted.hypercalls, device, handle)
    _open_netifs[handle] = opened
    return opened


def block(name: str) -> HvtBlock:
    """The block device ``name``; ``PlatformError`` if the tender attached none by that name."""
    booted = guest.current()
    devices = [device for device in booted.info.devices if isinstance(device, BlockDevice)]
    for handle, device in enumerate(devices):
        if device.name == name:
            return HvtBlock(booted.hypercalls, device, handle)
    names = ", ".join(device.name for device in devices) or "none"
    raise PlatformError(f"no block device {name!r} in this guest (attached: {names}); attach it with --block:{name}=FILE")


def clock() -> HvtClock:
    return HvtClock(guest.current().wall_offset_ns)


def run(main: Awaitable[T]) -> T | None:
    """Run ``main`` on asyncio's loop over ``HvtSelector``, sandboxed; return its result.

    Returns ``None`` when SIGTERM cancelled ``main``. Exceptions from
    ``main`` propagate after the netifs are closed. A guest runs one loop:
    once sandboxed it cannot make another (a loop's self-pipe is a new
    socket pair, which the sandbox refuses). The sequence is
    ``netstack.runner``'s; the sandbox goes on just before the loop runs.
    SIGTERM arrives through the loop's self-pipe, which ``HvtSelector``
    checks before every POLL (and the tender answers a pending POLL when
    it passes the signal on), so it wakes the guest at once.
    """
    global _selector
    booted = guest.current()
    _selector = HvtSelector(booted.hypercalls)
    loop = asyncio.SelectorEventLoop(_selector)
    loop.set_exception_handler(_exception_handler)

    def before() -> None:
        _shed_boot_memory()
        sandbox.install(booted.hypercalls)

    try:
        return runner.run(loop, main, close_devices=close_netifs, signals=(signal.SIGTERM,), before=before)
    finally:
        _selector = None


def _shed_boot_memory() -> None:
    """Give back what booting used and no longer needs, before the guest settles.

    Imports and argument parsing leave garbage and freed heap behind; a
    collection frees the former and glibc's ``malloc_trim`` returns the
    latter to the tender's host (an idle guest's RSS is a target of ours).
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def close_netifs() -> None:
    """Close every netif opened through this module (flushing what they queued)."""
    while _open_netifs:
        _, device = _open_netifs.popitem()
        device.close()


# -- net -----------------------------------------------------------------------------


class HvtNetif:
    """A net device of the guest (``netstack.protocols.Netif``).

    Callback order::

        listen(receive) -> receive(batch)* -> close()

    ``listen`` must be called from the loop ``run`` made (it registers the
    device with ``HvtSelector``). ``write`` copies the frame into the
    transmit queue (the caller may reuse its buffer at once); the queue is
    flushed once per loop iteration, as one ``NET_WRITE`` per 64 frames, or
    at once when no loop is running. A frame beyond ``TX_QUEUE_LIMIT``
    queued ones, or one the tender refuses, is dropped and counted in
    ``tx_dropped``. After ``close``, ``write`` raises ``OSError`` (EBADF).
    """

    def __init__(self, hypercalls: Hypercalls, device: NetDevice, handle: int) -> None:
        self._hypercalls = hypercalls
        self._device = device
        self._handle = handle
        self._selectable = DeviceHandle(handle)
        self._offload = Offload(max_tx_segment=device.mtu, max_rx_segment=device.mtu)
        self._max_frame = device.mtu + ETHERNET_HEADER_LEN
        self._loop: asyncio.AbstractEventLoop | None = None
        self._receive: Callable[[FrameBatch], None] | None = None
        self._queue: list[bytes] = []
        self._flush_scheduled = False
        self._closed = False
        self._rx_frames = self._tx_frames = self._rx_bytes = self._tx_bytes = self._tx_dropped = 0

    def __repr__(self) -> str:
        mac = ":".join(f"{octet:02x}" for octet in self._device.mac)
        return f"<HvtNetif {self._device.name} handle={self._handle} mac={mac} mtu={self._device.mtu}>"

    @property
    def name(self) -> str:
        return self._device.name

    @property
    def handle(self) -> int:
        return self._handle

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the Netif contract ------------------------------------------------------

    @property
    def mac(self) -> bytes:
        return self._device.mac

    @property
    def mtu(self) -> int:
        return self._device.mtu

    @property
    def offload(self) -> Offload:
        return self._offload

    @property
    def stats(self) -> dict[str, int]:
        return {
            "rx_frames": self._rx_frames,
            "tx_frames": self._tx_frames,
            "rx_bytes": self._rx_bytes,
            "tx_bytes": self._tx_bytes,
            "tx_dropped": self._tx_dropped,
        }

    def listen(self, receive: Callable[[FrameBatch], None]) -> None:
        if self._closed:
            raise OSError(errno.EBADF, f"net device {self._device.name} is closed")
        if self._receive is not None:
            raise RuntimeError(f"{self._device.name}: listen() may be called once")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("HvtNetif.listen() needs the running loop of platforms.hvt.run()") from None
        try:
            loop.add_reader(self._selectable, self._on_readable)
        except (OSError, ValueError):
            raise RuntimeError("HvtNetif.listen() needs the loop of platforms.hvt.run() (an HvtSelector)") from None
        self._loop = loop
        self._receive = receive

    def write(self, frame: Frame) -> None:
        if self._closed:
            raise OSError(errno.EBADF, f"net device {self._device.name} is closed")
        size = len(frame)
        if size > self._max_frame or size < ETHERNET_HEADER_LEN:
            raise ValueError(f"frame of {size} bytes; {self._device.name} takes {ETHERNET_HEADER_LEN} to {self._max_frame}")
        if len(self._queue) >= TX_QUEUE_LIMIT:
            self._tx_dropped += 1
            return
        self._queue.append(bytes(frame))
        if self._flush_scheduled:
            return
        if _selector is not None:
            # Out with the next select, just before the guest waits: one
            # NET_WRITE per loop iteration and no iteration of its own.
            self._flush_scheduled = True
            _selector.flush_before_wait(self)
            return
        loop = self._loop
        if loop is None:
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
        self._flush_scheduled = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send every queued frame now."""
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        start = 0
        while start < len(queue):
            end = start
            size = 0
            while end < len(queue) and end - start < NET_BATCH and (end == start or size + len(queue[end]) <= TX_BATCH_BYTES):
                size += len(queue[end])
                end += 1
            batch = queue[start:end]
            if self._hypercalls.net_write(self._handle, batch) == Result.OK:
                self._tx_frames += len(batch)
                self._tx_bytes += size
            else:
                self._tx_dropped += len(batch)
            start = end

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            _open_netifs.pop(self._handle, None)
            loop = self._loop
            if loop is not None and self._receive is not None and not loop.is_closed():
                loop.remove_reader(self._selectable)

    # -- receiving -----------------------------------------------------------------

    def _on_readable(self) -> None:
        receive = self._receive
        loop = self._loop
        assert receive is not None and loop is not None
        while not self._closed:
            try:
                batch = self._hypercalls.net_read(self._handle)
            except OSError as error:
                # The tender says the device failed: stop, or the loop would
                # spin on a ready set that never drains.
                loop.remove_reader(self._selectable)
                loop.call_exception_handler(
                    {"message": f"reading {self._device.name} failed; no more frames will be received", "exception": error}
                )
                return
            if batch is None:
                return
            short = len(batch) < NET_BATCH
            self._rx_frames += len(batch)
            self._rx_bytes += sum(len(frame) for frame in batch)
            try:
                receive(batch)
            except Exception as error:  # the contract: report and keep delivering
                loop.call_exception_handler(
                    {"message": f"the receiver of {self._device.name} raised", "exception": error, "netif": self}
                )
            if short:
                # The tender had no more when it answered. POLL's ready set
                # is level-triggered ("a net handle has frames"), so frames
                # that arrived since wake the next select; asking again now
                # would cost a round trip per wake-up to hear AGAIN.
                return


# -- block ---------------------------------------------------------------------------


class HvtBlock:
    """A block device of the guest (``netstack.protocols.Block``).

    Sector numbers and counts are checked here, before any hypercall:
    a partial sector or a range past ``size`` raises ``ValueError``; the
    tender refusing a request it should have taken raises ``OSError``.
    Requests larger than ``BLOCK_CHUNK_BYTES`` go out in several calls.
    """

    def __init__(self, hypercalls: Hypercalls, device: BlockDevice, handle: int) -> None:
        if device.sector_size <= 0 or device.capacity % device.sector_size:
            raise PlatformError(
                f"block device {device.name!r}: capacity {device.capacity} is not a whole number of {device.sector_size}-byte sectors"
            )
        self._hypercalls = hypercalls
        self._device = device
        self._handle = handle
        self._chunk = max(1, BLOCK_CHUNK_BYTES // device.sector_size) * device.sector_size

    def __repr__(self) -> str:
        return f"<HvtBlock {self._device.name} handle={self._handle} {self.size} bytes>"

    @property
    def name(self) -> str:
        return self._device.name

    @property
    def sector_size(self) -> int:
        return self._device.sector_size

    @property
    def size(self) -> int:
        return self._device.capacity

    async def read(self, sector: int, count: int = 1) -> bytes:
        offset, length = self._range(sector, count * self.sector_size if count >= 0 else -1)
        parts = []
        end = offset + length
        while offset < end:
            step = min(self._chunk, end - offset)
            parts.append(self._hypercalls.block_read(self._handle, offset, step))
            offset += step
        return b"".join(parts)

    async def write(self, sector: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if len(view) % self.sector_size:
            raise ValueError(f"{len(view)} bytes is not a whole number of {self.sector_size}-byte sectors")
        offset, length = self._range(sector, len(view))
        done = 0
        while done < length:
            step = min(self._chunk, length - done)
            self._hypercalls.block_write(self._handle, offset + done, view[done : done + step])
            done += step

    def _range(self, sector: int, length: int) -> tuple[int, int]:
        if sector < 0 or length < 0:
            raise ValueError(f"sector {sector} and length {length} must not be negative")
        offset = sector * self.sector_size
        if offset + length > self.size:
            raise ValueError(
                f"sectors {sector} to {sector + length // self.sector_size - 1} are beyond {self._device.name} "
                f"({self.size // self.sector_size} sectors)"
            )
        return offset, length


# -- time ----------------------------------------------------------------------------


class HvtClock(LoopClock):
    """``LoopClock`` with the tender's wall time (see the module docstring)."""

    def __init__(self, wall_offset_ns: int) -> None:
        self._wall_offset_ns = wall_offset_ns

    def wall_ns(self) -> int:
        return time.monotonic_ns() + self._wall_offset_ns


# -- the loop ------------------------------------------------------------------------


def _exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if isinstance(context.get("exception"), MemoryError):
        guest.out_of_memory()
    loop.default_exception_handler(context)


