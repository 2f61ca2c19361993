"""The direct stack: Ethernet, ARP, IPv4, ICMP and UDP over one Netif and one Clock.

Theory of operation
-------------------
This is the one place the layers are wired together (STYLE 6: the
constructors are the functor application)::

    netif -> Ethernet demux -> ArpCore
                            -> Ipv4(arp) -> Icmpv4(ipv4)
                                         -> Udp(ipv4, icmp)

and the one place that touches asyncio time. The cores never read a clock
or sleep; the driver here does three things:

1. ``_receive(batch)``: for every frame the device delivered at one wake-up,
   demultiplex and hand it to a core with ``now`` read once per batch; write
   what the cores return; then re-arm the timer.
2. ``_transmit(frames)``: write frames to the netif.
3. ``_arm()``: keep exactly one timer, at the earliest ``poll_at()`` of any
   core, and on expiry call each core's ``poll(now)``. There is no periodic
   tick: an idle stack with nothing pending arms nothing at all.

Bad input never raises out of here: malformed bytes raise the layer's
``WireError``, which is counted as ``<layer>.<reason>`` in ``stats`` and the
frame dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

from netstack import streams

from netstack.arp import ArpConfig, ArpCore
from netstack.icmp import IcmpConfig, Icmpv4
from netstack.ipv4 import Ipv4, Ipv4Config
from netstack.protocols import Clock, FrameBatch, Netif, TimerHandle
from netstack.tcp.layer import TcpLayer, TcpLayerConfig
from netstack.tcp.transport import TcpServer, TcpTransport
from netstack.udp import Udp, UdpTransport, _pack_address
from netstack.wire.errors import WireError
from netstack.wire.ethernet import ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, HEADER_LEN as ETHERNET_HEADER_LEN
from netstack.wire.ipv4 import PROTOCOL_ICMP, PROTOCOL_TCP, PROTOCOL_UDP

log = logging.getLogger("netstack.stack")

_BROADCAST = b"\xff" * 6


class Stack:
    """TCP/IP over ``netif``, timed by ``clock``.

    ``ipv4`` is the interface address with prefix (``"10.0.0.2/24"``);
    ``gateway`` the default router, if any.

    Life cycle::

        Stack(...) -> start() -> [create_datagram_endpoint | ping]* -> close()
    """

    def __init__(
        self,
        netif: Netif,
        clock: Clock,
        *,
        ipv4: str | ipaddress.IPv4Interface,
        gateway: str | ipaddress.IPv4Address | None = None,
        arp_config: ArpConfig | None = None,
        icmp_config: IcmpConfig | None = None,
        ipv4_config: dict[str, Any] | None = None,
        tcp_config: TcpLayerConfig | None = None,
    ) -> None:
        self.netif = netif
        self.clock = clock
        self.stats: Counter[str] = Counter()
        interface = ipaddress.IPv4Interface(ipv4)
        router = ipaddress.IPv4Address(gateway) if gateway is not None else None
        self.ipv4_config = Ipv4Config(interface, router, **(ipv4_config or {}))
        offload = netif.offload
        self.arp = ArpCore(netif.mac, interface.ip.packed, arp_config, self.stats)
        self.ipv4 = Ipv4(
            self.ipv4_config, self.arp, netif.mac, netif.mtu, self.stats, verify_checksums=not offload.rx_checksum
        )
        self.icmp = Icmpv4(self.ipv4, icmp_config, self.stats)
        self.udp = Udp(self.ipv4, self.icmp, self._send, clock.monotonic_ns, self.stats)
        if tcp_config is None:
            tcp_config = TcpLayerConfig()
        if offload.max_tx_segment > netif.mtu and tcp_config.connection.max_segment == 0:
            # The device segments for us: hand it up to 64 KiB per write.
            tcp_config = dataclasses.replace(
                tcp_config, connection=dataclasses.replace(tcp_config.connection, max_segment=offload.max_tx_segment - 40)
            )
        self.tcp = TcpLayer(self.ipv4, tcp_config, self.stats)
        self.icmp.unreachable_handler = self.udp.unreachable
        self.icmp.echo_reply_handler = self._echo_reply
        self._mac = netif.mac
        self._timer: TimerHandle | None = None
        self._timer_deadline: int | None = None
        self._started = False
        self._closed = False
        self._ping_ident = int.from_bytes(os.urandom(2), "big")
        self._ping_sequence = 0
        self._pings: dict[int, tuple[asyncio.Future[float], int, bytes, TimerHandle]] = {}
        self._transports: weakref.WeakSet[UdpTransport] = weakref.WeakSet()
        self._flush_scheduled = False
        self._receiving = False

    # -- life cycle ----------------------------------------------------------

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.ipv4_config.address.ip

    def start(self) -> None:
        """Start receiving and announce our address. Idempotent."""
        if self._started:
            return
        self._started = True
        self.netif.listen(self._receive)
        self._transmit(self.arp.start(self.clock.monotonic_ns()))
        self._arm()
        log.info("stack up: %s on %s, gateway %s", self.ipv4_config.address, _mac_str(self._mac), self.ipv4_config.gateway)

    def close(self) -> None:
        """Close every endpoint and stop the timers; the netif stays open for its owner.

        TCP connections still open are reset (RST), so that no peer waits on
        a stack that is gone; close them gracefully first if that matters.
        """
        if self._closed:
            return
        now = self.clock.monotonic_ns()
        for listener in list(self.tcp.listeners.values()):
            self.tcp.unlisten(listener)
        for connection in list(self.tcp.connections.values()):
            connection.abort(now)
            self.tcp.kick(connection)
        self._transmit(self.tcp.flush(now))
        self._closed = True
        for transport in list(self._transports):
            transport.close()
        for future, _, _, timer in self._pings.values():
            timer.cancel()
            if not future.done():
                future.cancel()
        self._pings.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the receive path ----------------------------------------------------

    def _receive(self, batch: FrameBatch) -> None:
        if self._closed:
            return
        now = self.clock.monotonic_ns()
        stats = self.stats
        mac = self._mac
        out: list[bytearray] = []
        # Applications answer from inside data_received; the flush at the end
        # of this batch carries their writes, so they need not schedule one.
        self._receiving = True
        try:
            for frame in batch:
                view = memoryview(frame)
                try:
                    if len(view) < ETHERNET_HEADER_LEN:
                        stats["ethernet.truncated"] += 1
                        continue
                    dst = view[0:6]
                    if dst != mac and dst != _BROADCAST:
                        stats["ethernet.not_for_us"] += 1
                        continue
                    ethertype = (view[12] << 8) | view[13]
                    if ethertype == ETHERTYPE_IPV4:
                        datagram = self.ipv4.handle(view[ETHERNET_HEADER_LEN:], now)
                        if datagram is None:
                            continue
                        protocol = datagram.protocol
                        if protocol == PROTOCOL_TCP:
                            out += self.tcp.handle(datagram, now)
                        elif protocol == PROTOCOL_UDP:
                            out += self.udp.handle(datagram, now)
                        elif protocol == PROTOCOL_ICMP:
                            out += self.icmp.handle(datagram, now)
                        else:
                            stats["ipv4.protocol_unsupported"] += 1
                    elif ethertype == ETHERTYPE_ARP:
                        out += self.arp.handle(view[ETHERNET_HEADER_LEN:], now)
                    elif ethertype == ETHERTYPE_IPV6:
                        stats["ethernet.ipv6_unsupported"] += 1
                    elif ethertype < 0x0600:
                        stats["ethernet.unsupported_length_field"] += 1
                    else:
                        stats["ethernet.unknown_ethertype"] += 1
                except WireError as error:
                    stats[error.counter] += 1
        finally:
            self._receiving = False
        out += self.tcp.flush(now)
        if out:
            self._transmit(out)
        self._arm()

    def schedule_flush(self) -> None:
        """Flush TCP output once at the end of this loop iteration (many writes, one pass)."""
        if not self._flush_scheduled and not self._receiving and not self._closed:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        frames = self.tcp.flush(self.clock.monotonic_ns())
        if frames:
            self._transmit(frames)
        self._arm()

    # -- the send path -------------------------------------------------------

    def _transmit(self, frames: list[bytearray]) -> None:
        write = self.netif.write
        for frame in frames:
            try:
                write(frame)
            except OSError as error:
                self.stats["netif.write_error"] += 1
                log.debug("netif write failed: %s", error)

    def _send(self, frames: list[bytearray]) -> None:
        """Write what an application call produced, then re-arm: ARP may be
        holding some of it back, with a retry deadline. (The receive path,
        the flush and the timer write with ``_transmit`` and arm once at
        their end.)"""
        self._transmit(frames)
        if frames and not self._closed:
            self._arm()

    # -- timers --------------------------------------------------------------

    def poll_at(self) -> int | None:
        """The earliest deadline any core reports."""
        deadline = self.arp.poll_at()
        for other in (self.ipv4.poll_at(), self.tcp.poll_at()):
            if other is not None and (deadline is None or other < deadline):
                deadline = other
        return deadline

    def _arm(self) -> None:
        if self._closed:
            return
        deadline = self.poll_at()
        if deadline == self._timer_deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self.clock.call_at(deadline, self._on_timer) if deadline is not None else None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        if self._closed:
            return
        now = self.clock.monotonic_ns()
        out = self.arp.poll(now)
        for quote in self.ipv4.poll(now):
            out += self.icmp.reassembly_time_exceeded(quote, now)
        self.tcp.poll(now)
        out += self.tcp.flush(now)
        if out:
            self._transmit(out)
        self._arm()

    # -- UDP -----------------------------------------------------------------

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        remote_addr: tuple[str, int] | None = None,
        *,
        allow_broadcast: bool = False,
    ) -> tuple[UdpTransport, asyncio.DatagramProtocol]:
        """As ``loop.create_datagram_endpoint``, over this stack."""
        if self._closed:
            raise RuntimeError("stack is closed")
        self.start()
        port = 0
        if local_addr is not None:
            host, port = local_addr
            if host not in (None, "", "0.0.0.0") and ipaddress.IPv4Address(host) != self.address:
                raise OSError(99, f"cannot assign requested address {host}")  # EADDRNOTAVAIL
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise ValueError(f"invalid port {port!r}")
        remote = _pack_address(remote_addr) if remote_addr is not None else None
        loop = asyncio.get_running_loop()
        protocol = protocol_factory()
        transport = UdpTransport(self.udp, protocol, loop, remote, allow_broadcast)
        transport._open(port)
        self._transports.add(transport)
        return transport, protocol

    # -- TCP -----------------------------------------------------------------

    def _check_host(self, host: str | None) -> None:
        if host not in (None, "", "0.0.0.0") and ipaddress.IPv4Address(host) != self.address:
            raise OSError(99, f"cannot assign requested address {host}")  # EADDRNOTAVAIL

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        backlog: int = 128,
        start_serving: bool = True,
        **_ignored: Any,
    ) -> TcpServer:
        """As ``loop.create_server``, over this stack (one address, IPv4)."""
        if self._closed:
            raise RuntimeError("stack is closed")
        self.start()
        self._check_host(host)
        if port is None or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"invalid port {port!r}")
        if port == 0:
            port = self.tcp.ephemeral_port(b"\0\0\0\0", 0)
        server = TcpServer(self, port, protocol_factory, backlog, asyncio.get_running_loop())
        if start_serving:
            await server.start_serving()
        return server

    async def create_connection(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str,
        port: int,
        *,
        local_addr: tuple[str, int] | None = None,
        **_ignored: Any,
    ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
        """As ``loop.create_connection``: returns once the handshake completed.

        Raises ``ConnectionRefusedError`` on RST and ``TimeoutError`` when
        the SYN retries are exhausted.
        """
        if self._closed:
            raise RuntimeError("stack is closed")
        self.start()
        remote_ip, remote_port = _pack_address((host, port))
        local_port = 0
        if local_addr is not None:
            self._check_host(local_addr[0])
            local_port = local_addr[1]
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()

        class _Opening:
            def connection_events(self, events: list[str]) -> None:
                if opened.done():
                    return
                if "connected" in events:
                    opened.set_result(None)
                elif "closed" in events:
                    opened.set_exception(connection.error or ConnectionError("connection failed"))

        connection = self.tcp.connect(remote_ip, remote_port, _Opening(), self.clock.monotonic_ns(), local_port=local_port)
        self.tcp.kick(connection)
        self.schedule_flush()
        try:
            await opened
        except asyncio.CancelledError:
            connection.abort(self.clock.monotonic_ns())
            self.tcp.kick(connection)
            self.schedule_flush()
            raise
        protocol = protocol_factory()
        transport = TcpTransport(self, connection, protocol, loop)
        self.tcp.owners[connection] = transport
        transport._start()
        return transport, protocol

    async def start_server(
        self,
        client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        host: str | None = None,
        port: int | None = None,
        **kwds: Any,
    ) -> TcpServer:
        """As ``asyncio.start_server``, over this stack."""
        return await streams.start_server(self, client_connected_cb, host, port, **kwds)

    async def open_connection(self, host: str, port: int, **kwds: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """As ``asyncio.open_connection``, over this stack."""
        return await streams.open_connection(self, host, port, **kwds)

    # -- ICMP echo -----------------------------------------------------------

    async def ping(self, host: str, *, data: bytes = b"", timeout: float = 1.0) -> float:
        """Send one echo request; return the round-trip time in seconds.

        Raises ``TimeoutError`` when no reply arrives within ``timeout``
        seconds of this stack's clock.
        """
        if self._closed:
            raise RuntimeError("stack is closed")
        self.start()
        dst = ipaddress.IPv4Address(host).packed
        self._ping_sequence = (self._ping_sequence + 1) & 0xFFFF
        sequence = self._ping_sequence
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        now = self.clock.monotonic_ns()
        timer = self.clock.call_at(now + int(timeout * 1e9), lambda: self._ping_timeout(sequence))
        self._pings[sequence] = (future, now, dst, timer)
        self._send(self.icmp.echo_request(dst, self._ping_ident, sequence, data, now))
        return await future

    def _ping_timeout(self, sequence: int) -> None:
        entry = self._pings.pop(sequence, None)
        if entry is not None and not entry[0].done():
            entry[0].set_exception(TimeoutError(f"no echo reply in time (sequence {sequence})"))

    def _echo_reply(self, src: bytes, ident: int, sequence: int, data: memoryview, now: int) -> None:
        if ident != self._ping_ident:
            return
        entry = self._pings.get(sequence)
        if entry is None or entry[2] != src:
            return
        del self._pings[sequence]
        future, sent_at, _, timer = entry
        timer.cancel()
        if not future.done():
            future.set_result((now - sent_at) / 1e9)

    # -- inspection ----------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Every counter: the stack's own and the device's (``netif.*``)."""
        merged = dict(self.stats)
        for key, value in self.netif.stats.items():
            merged[f"netif.{key}"] = value
        return merged


def _mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)
