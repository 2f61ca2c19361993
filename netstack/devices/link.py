"""An in-memory Ethernet link: two Netifs joined by a virtual cable.

Why it exists: tests of the stack (and of the other device wrappers) need a
peer that behaves like a real network interface, with no tap, no privileges
and no real waiting. ``link_pair()`` returns the two ends; whatever one end
writes, the other end's receiver gets. This is smoltcp's ``Loopback`` and
mirage's ``vnetif`` in-memory backend, specialised to a point-to-point wire.

Theory of operation
-------------------

``write`` copies the frame (the caller may reuse its buffer as soon as
``write`` returns) onto the writer's *pending* list. The first write of a
loop iteration schedules, with ``loop.call_soon``, one delivery that hands
the whole pending list to the peer's receiver as a single batch. That is the
``Netif`` contract's "every frame that was ready at one wake-up": a stack that
writes ten segments in one callback sees them arrive as one batch of ten on
the other side, one loop iteration later, exactly as a tap read loop would
deliver them. Nothing is delivered synchronously inside ``write``, so a
receiver that writes a reply never re-enters its own caller.

Per end, the callback order is the contract's::

    listen(receive) -> receive(batch)* -> close()

Frames that reach an end before it called ``listen`` (or after it closed)
are dropped and counted in that end's ``rx_dropped``, as a NIC with no ring
posted would drop them. Frames already written when the *writer* closes are
on the wire and are still delivered: closing one end of a cable does not
pull back what it already sent.

``capacity`` bounds the pending list (a transmit ring); a write that finds
it full drops the frame and counts ``tx_dropped``, which lets tests exercise
the stack's behaviour under a congested device without any randomness.

Errors, as the contract says: a frame longer than ``mtu + 14`` (or
``max_tx_segment + 14`` when the offload allows larger segments) raises
``ValueError``, the caller's bug; ``write`` after ``close`` raises
``OSError``. A receiver that raises is reported to the loop's exception
handler and later batches are still delivered.

``write`` must run inside the event loop (it schedules the delivery on the
running loop), which is where a ``Netif`` is always used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from netstack.protocols import Frame, FrameBatch, Offload

ETHERNET_HEADER_LEN = 14

DEFAULT_MACS = (bytes.fromhex("020000000001"), bytes.fromhex("020000000002"))
"""Locally administered (bit 1 of the first octet set), unicast, distinct."""


class MemoryNetif:
    """One end of an in-memory link; build a connected pair with ``link_pair``."""

    def __init__(self, mac: bytes, *, mtu: int = 1500, offload: Offload | None = None,
                 capacity: int | None = None) -> None:
        if len(mac) != 6:
            raise ValueError(f"a MAC address is 6 bytes, got {len(mac)}")
        if mtu < 68:
            # RFC 791: every internet module must be able to forward a
            # datagram of 68 octets without further fragmentation.
            raise ValueError(f"mtu {mtu} is below the IPv4 minimum of 68")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._mac = bytes(mac)
        self._mtu = mtu
        self._offload = offload if offload is not None else Offload(max_tx_segment=mtu, max_rx_segment=mtu)
        self._max_frame = max(mtu, self._offload.max_tx_segment) + ETHERNET_HEADER_LEN
        self._capacity = capacity
        self._peer: MemoryNetif | None = None
        self._receive: Callable[[FrameBatch], None] | None = None
        self._listened = False
        self._closed = False
        self._pending: list[bytes] = []
        self._delivery: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = dict.fromkeys(
            ("rx_frames", "tx_frames", "rx_bytes", "tx_bytes", "tx_dropped", "rx_dropped"), 0)

    def __repr__(self) -> str:
        return f"<MemoryNetif {self._mac.hex(':')} mtu={self._mtu}{' closed' if self._closed else ''}>"

    # -- the Netif contract --------------------------------------------------

    @property
    def mac(self) -> bytes:
        return self._mac

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def offload(self) -> Offload:
        return self._offload

    @property
    def stats(self) -> dict[str, int]:
        """A snapshot of the counters (a new dict each time)."""
        return dict(self._stats)

    @property
    def closed(self) -> bool:
        return self._closed

    def listen(self, receive: Callable[[FrameBatch], None]) -> None:
        if self._closed:
            raise OSError("listen on a closed MemoryNetif")
        if self._listened:
            raise RuntimeError("MemoryNetif.listen may be called once")
        self._listened = True
        self._receive = receive

    def write(self, frame: Frame) -> None:
        if self._closed:
            raise OSError("write on a closed MemoryNetif")
        length = len(frame) if not isinstance(frame, memoryview) else frame.nbytes
        if length > self._max_frame:
            raise ValueError(f"frame of {length} bytes exceeds the {self._max_frame}-byte maximum "
                             f"(mtu {self._mtu} + {ETHERNET_HEADER_LEN})")
        if self._capacity is not None and len(self._pending) >= self._capacity:
            self._stats["tx_dropped"] += 1
            return
        self._pending.append(bytes(frame))
        self._stats["tx_frames"] += 1
        self._stats["tx_bytes"] += length
        if self._delivery is None:
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._delivery = loop.call_soon(self._deliver_pending)

    def close(self) -> None:
        """Stop receiving and refuse writes; already-written frames still arrive."""
        self._closed = True
        self._receive = None

    # -- the wire ------------------------------------------------------------

    def _deliver_pending(self) -> None:
        batch, self._pending, self._delivery = self._pending, [], None
        if self._peer is not None and batch:
            self._peer._accept(batch, self._loop)

    def _accept(self, batch: list[bytes], loop: asyncio.AbstractEventLoop | None) -> None:
        receive = self._receive
        if receive is None:
            # Not listening yet, or closed: a NIC with no receive ring.
            self._stats["rx_dropped"] += len(batch)
            return
        self._stats["rx_frames"] += len(batch)
        self._stats["rx_bytes"] += sum(len(frame) for frame in batch)
        try:
            receive(batch)
        except Exception as exc:  # the contract: report it, keep delivering
            if loop is None:
                loop = asyncio.get_running_loop()
            loop.call_exception_handler({
                "message": f"receiver of {self!r} raised",
                "exception": exc,
            })


def link_pair(*, mtu: int = 1500, macs: tuple[bytes, bytes] | None = None,
              offload: Offload | None = None, capacity: int | None = None) -> tuple[MemoryNetif, MemoryNetif]:
    """Two connected ``MemoryNetif``s sharing ``mtu``, ``offload`` and ``capacity``.

    ``macs`` defaults to ``02:00:00:00:00:01`` and ``02:00:00:00:00:02``.
    """
    first_mac, second_mac = macs if macs is not None else DEFAULT_MACS
    if first_mac == second_mac:
        raise ValueError(f"the two ends need distinct MACs, both are {bytes(first_mac).hex(':')}")
    first = MemoryNetif(first_mac, mtu=mtu, offload=offload, capacity=capacity)
    second = MemoryNetif(second_mac, mtu=mtu, offload=offload, capacity=capacity)
    first._peer = second
    second._peer = first
    return first, second
