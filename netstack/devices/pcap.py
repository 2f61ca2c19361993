"""Packet capture around any Netif, in libpcap format.

Why it exists: when the stack misbehaves, the first question is "what went
over the wire?", and the answer should open in Wireshark or tcpdump. A
``PcapNetif`` wraps any ``Netif`` (a tap, a memory link, a fault injector)
and is itself a ``Netif``, so capture is a line in the wiring, not a feature
of each device (smoltcp's ``phy::PcapWriter``).

Theory of operation
-------------------

Both directions go into one file, in the order they happened: a frame we
``write`` is recorded when the wrapped device accepts it (a ``write`` that
raises is not recorded, since it never reached the wire); a batch delivered
by the wrapped device is recorded just before our receiver sees it, every
frame of the batch with the one timestamp of that wake-up. Classic pcap has
no direction field; the Ethernet source address tells the directions apart.

The file header is written by ``dpkt.pcap.Writer`` (linktype Ethernet,
nanosecond magic). Records are packed here rather than with
``Writer.writepkt``, because that takes a float of seconds, which cannot hold
nanoseconds since the epoch and can round a fraction up to a full second;
and because it does not apply ``snaplen``. Timestamps come from
``clock.wall_ns()``, so a capture taken under a ``ManualClock`` is
reproducible to the byte.

Flushing: received batches flush once each; writes schedule one flush per
loop iteration (``call_soon``), so a capture file is readable while the
stack runs without a system call per frame. ``flush()`` forces it.

``close()`` closes the wrapped device, flushes, and closes the file only if
``PcapNetif`` opened it from a path; a file object passed in stays open,
and belongs to the caller.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from typing import BinaryIO

import dpkt

from netstack.clock import LoopClock
from netstack.protocols import Clock, Frame, FrameBatch, Netif, Offload

# dpkt.pcap.Writer writes the file header in the host's byte order, and a
# reader takes the byte order of every record from the magic number; "=" packs
# the record header in that same native order with standard sizes.
_RECORD_HEADER = struct.Struct("=IIII")  # seconds, nanoseconds, captured length, original length


class PcapNetif:
    """A ``Netif`` that records every frame in and out of ``netif`` to a pcap file."""

    def __init__(self, netif: Netif, file_or_path: BinaryIO | str | os.PathLike[str], *,
                 clock: Clock | None = None, snaplen: int = 65535) -> None:
        if snaplen < 1:
            raise ValueError(f"snaplen must be positive, got {snaplen}")
        self._netif = netif
        self._clock: Clock = clock if clock is not None else LoopClock()
        self._snaplen = snaplen
        if isinstance(file_or_path, (str, os.PathLike)):
            self._file: BinaryIO = open(file_or_path, "wb")  # closed in close(), not a with-block
            self._owns_file = True
        else:
            self._file = file_or_path
            self._owns_file = False
        dpkt.pcap.Writer(self._file, snaplen=snaplen, linktype=dpkt.pcap.DLT_EN10MB, nano=True)
        self._file.flush()
        self._receive: Callable[[FrameBatch], None] | None = None
        self._flush_scheduled = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<PcapNetif around {self._netif!r}>"

    # -- the Netif contract --------------------------------------------------

    @property
    def mac(self) -> bytes:
        return self._netif.mac

    @property
    def mtu(self) -> int:
        return self._netif.mtu

    @property
    def offload(self) -> Offload:
        return self._netif.offload

    @property
    def stats(self) -> dict[str, int]:
        return self._netif.stats

    def listen(self, receive: Callable[[FrameBatch], None]) -> None:
        self._receive = receive
        self._netif.listen(self._record_batch)

    def write(self, frame: Frame) -> None:
        self._netif.write(frame)
        if self._closed:
            return
        self._record(frame, self._clock.wall_ns())
        if not self._flush_scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._file.flush()
                return
            self._flush_scheduled = True
            loop.call_soon(self._scheduled_flush)

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._netif.close()
        finally:
            self._closed = True
            self._file.flush()
            if self._owns_file:
                self._file.close()

    # -- capture -------------------------------------------------------------

    def flush(self) -> None:
        """Push recorded frames to the file now."""
        if not self._closed:
            self._file.flush()

    def _record(self, frame: Frame, wall_ns: int) -> None:
        seconds, nanoseconds = divmod(wall_ns, 1_000_000_000)
        view = memoryview(frame)
        captured = view[: self._snaplen]
        self._file.write(_RECORD_HEADER.pack(seconds, nanoseconds, captured.nbytes, view.nbytes))
        self._file.write(captured)

    def _record_batch(self, batch: FrameBatch) -> None:
        if not self._closed:
            now = self._clock.wall_ns()
            for frame in batch:
                self._record(frame, now)
            self._file.flush()
        receive = self._receive
        if receive is not None:
            receive(batch)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()
