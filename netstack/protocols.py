"""The contracts between netstack, its platforms and its applications.

An application is written against these small protocols, never against a
concrete device: the platform module supplies a ``Netif`` and a ``Clock`` and
runs the event loop; ``netstack.stack.Stack`` turns those into TCP/IP.
Retargeting an application swaps the platform module and nothing else.

Every protocol here states its callback order as a grammar, in the manner of
asyncio's ``protocols.py``, and the errors it may raise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

Frame = bytes | bytearray | memoryview
"""One Ethernet II frame, destination MAC first, no preamble and no FCS."""

FrameBatch = Sequence[Frame]
"""Frames delivered together from one wake-up of the device, oldest first."""


class LargeFrame(bytearray):
    """A frame holding one TCP segment larger than the MTU, for a device with
    segmentation offload (``Offload.max_tx_segment`` > ``mtu``).

    The device cuts the TCP payload into pieces of ``segment_size`` bytes,
    copying and fixing up the headers (IPv4 total length, identification and
    checksum; TCP sequence number, flags and checksum), exactly as a NIC does
    with TSO. The TCP checksum field holds only the pseudo-header sum (not
    complemented) for the device to complete.
    """

    __slots__ = ("segment_size",)

    def __init__(self, size: int, segment_size: int) -> None:
        super().__init__(size)
        self.segment_size = segment_size


@dataclasses.dataclass(frozen=True, slots=True)
class Offload:
    """What a network interface does for us, so the stack can skip it.

    ``rx_checksum``: received frames had their IP/UDP/TCP checksums verified
    by the device; a frame with a bad checksum never reaches ``listen``.
    ``tx_checksum``: the device fills in UDP/TCP checksums of frames we write
    (the stack still writes the IPv4 header checksum itself).
    ``max_tx_segment`` / ``max_rx_segment``: the largest IP packet, in bytes,
    the device accepts from us / may hand to us. Equal to the MTU unless the
    device segments or coalesces (TSO/GRO), when it may be up to 65535.
    """

    rx_checksum: bool = False
    tx_checksum: bool = False
    max_tx_segment: int = 1500
    max_rx_segment: int = 1500


@runtime_checkable
class Netif(Protocol):
    """An Ethernet network interface.

    Callback order::

        listen(receive) -> receive(batch)* -> close()

    ``listen`` may be called once; frames that arrive before it are dropped
    by the device. After ``close`` no more batches are delivered and ``write``
    raises ``OSError``.

    ``write`` never blocks the event loop. A frame the device cannot take now
    (its queue is full) is dropped and counted in ``stats["tx_dropped"]``,
    exactly as a full NIC ring would drop it; a frame longer than
    ``mtu + 14`` raises ``ValueError``, because that is the caller's bug,
    unless it is a ``LargeFrame`` of at most ``max_tx_segment + 14`` bytes
    for a device that offers segmentation offload. A device that has gone
    away raises ``OSError``.

    ``receive`` is called from the event loop with every frame that was
    ready at one wake-up (a batch), so that the stack can do per-wake-up work
    (flushing acknowledgements, re-arming timers) once per batch. The frames
    are only valid during the call: a receiver that keeps one copies it.
    ``receive`` must not raise; if it does, the exception is reported to the
    loop's exception handler and the device keeps delivering.
    """

    @property
    def mac(self) -> bytes:
        """Our six-byte hardware address."""
        ...

    @property
    def mtu(self) -> int:
        """Largest IP packet (Ethernet payload) in bytes, typically 1500."""
        ...

    @property
    def offload(self) -> Offload: ...

    @property
    def stats(self) -> dict[str, int]:
        """Device counters: rx_frames, tx_frames, rx_bytes, tx_bytes, tx_dropped."""
        ...

    def listen(self, receive: Callable[[FrameBatch], None]) -> None: ...

    def write(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """Time, for every protocol core and driver in the stack.

    Cores never read a clock: the driver reads ``monotonic_ns`` and passes
    ``now`` in. Nothing in ``netstack`` calls ``time`` directly.

    ``call_at(deadline_ns, callback)`` runs ``callback()`` once, from the
    event loop, no earlier than ``monotonic_ns() >= deadline_ns``; a deadline
    in the past runs at the next loop iteration. ``cancel()`` on the handle
    stops a callback that has not run; cancelling twice is harmless.

    Callback order::

        call_at(d, cb) -> [cancel() | cb()]
    """

    def monotonic_ns(self) -> int:
        """Nanoseconds from an arbitrary origin; never goes backwards."""
        ...

    def wall_ns(self) -> int:
        """Nanoseconds since the Unix epoch (may jump)."""
        ...

    def call_at(self, deadline_ns: int, callback: Callable[[], None]) -> TimerHandle: ...


class Platform(Protocol):
    """What a platform *module* (``platforms.unix``, ``platforms.hvt``) offers.

    ``netif(name, **options)`` opens the named interface (for unix, a tap
    device, created when missing). It raises ``PlatformError`` with a single
    line that names the fix when it cannot (no privilege, no device).

    ``clock()`` returns the platform's ``Clock``.

    ``run(main)`` enters the platform's event loop, runs the coroutine
    ``main`` to completion and returns its result. SIGINT and SIGTERM cancel
    ``main``; ``run`` then returns ``None`` after the coroutine has cleaned
    up, so that a service exits 0. Devices opened with ``netif`` are closed
    (and taps that ``netif`` created are removed) before ``run`` returns.
    """

    def netif(self, name: str, **options: Any) -> Netif: ...

    def clock(self) -> Clock: ...

    def run(self, main: Awaitable[Any]) -> Any: ...


class PlatformError(Exception):
    """A platform cannot provide what was asked; ``str()`` is one line for the user."""


@runtime_checkable
class Stack(Protocol):
    """TCP/IP for an application: asyncio's own calls, over some network.

    Implemented by ``netstack.stack.Stack`` (our TCP/IP over a ``Netif``) and
    by the socket stack (the host kernel's sockets); both pass the suite in
    ``netstack.conformance``. The signatures are asyncio's, so code written
    for ``loop.create_server`` or ``asyncio.open_connection`` moves over by
    replacing the receiver.

    Transports handed to protocols follow asyncio's callback order::

        connection_made -> data_received* -> [eof_received] -> connection_lost

    Errors are asyncio's too: ``ConnectionRefusedError`` (RST or ICMP port
    unreachable), ``TimeoutError`` (no answer), ``OSError`` with
    ``EADDRINUSE`` for a port in use and ``EADDRNOTAVAIL`` for an address
    that is not ours.
    """

    async def create_server(
        self, protocol_factory: Callable[[], Any], host: str | None = None, port: int | None = None, **kwds: Any
    ) -> Any: ...

    async def create_connection(
        self, protocol_factory: Callable[[], Any], host: str, port: int, **kwds: Any
    ) -> tuple[Any, Any]: ...

    async def start_server(
        self, client_connected_cb: Callable[..., Any], host: str | None = None, port: int | None = None, **kwds: Any
    ) -> Any: ...

    async def open_connection(self, host: str, port: int, **kwds: Any) -> tuple[Any, Any]: ...

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], Any],
        local_addr: tuple[str, int] | None = None,
        remote_addr: tuple[str, int] | None = None,
        **kwds: Any,
    ) -> tuple[Any, Any]: ...


@runtime_checkable
class Http(Protocol):
    """An HTTP/1.1 server for an application, over any ``Stack`` (cohttp's ``Server``).

    Implemented by ``netstack.http.Http(stack, clock, *, limits=None, logger=None)``.
    ``make(callback, routes=None)`` pairs an ``async def callback(request) -> Response``
    with optional routes ``{path: {methods}}``: a declared path requested with another
    method is answered 405 with ``Allow`` without calling the callback (GET implies
    HEAD). ``listen(port, server)`` returns once accepting; the handle has ``port``,
    ``connections``, ``close()``, ``wait_closed()`` and ``serve_forever()``. Responses are
    built with ``netstack.http.respond_string(status=200, body="",
    content_type="text/plain; charset=utf-8", headers=None)`` (or ``respond_json``).

    Callback order, per connection::

        callback(request_1) -> callback(request_2) -> ...   (never two at once)

    each request complete (body read, at most ``Limits.max_body_bytes``), in the order
    the client sent them; the responses go out in that order.

    Errors: a callback that raises (or returns something that is not a ``Response``)
    gives its client a 500 and one log line; the server and the connection go on.
    ``listen`` raises ``OSError`` (``EADDRINUSE``) as the stack does. ``Response`` raises
    ``ValueError`` for a status outside 200-599 or a header that would split the response.
    """

    def make(
        self, callback: Callable[[Any], Awaitable[Any]], *, routes: Mapping[str, Collection[str]] | None = None
    ) -> Any: ...

    async def listen(self, port: int, server: Any, *, host: str | None = None) -> Any: ...

    @property
    def connections_open(self) -> int: ...

    @property
    def connections_total(self) -> int: ...


@runtime_checkable
class Block(Protocol):
    """A block device: whole sectors, read and written asynchronously.

    ``sector_size`` is in bytes; ``size`` is the capacity in bytes, a whole
    number of sectors. ``read(sector, count)`` returns ``count`` sectors
    starting at ``sector``; ``write(sector, data)`` writes ``data``, a whole
    number of sectors. Partial sectors or a range beyond ``size`` raise
    ``ValueError`` (the caller's bug); a failing device raises ``OSError``.
    Calls complete in the order they were made.
    """

    @property
    def sector_size(self) -> int: ...

    @property
    def size(self) -> int: ...

    async def read(self, sector: int, count: int = 1) -> bytes: ...

    async def write(self, sector: int, data: bytes) -> None: ...
