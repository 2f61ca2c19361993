"""UDP (RFC 768) with asyncio datagram endpoints.

Theory of operation
-------------------
``Udp`` demultiplexes datagrams by destination port to ``UdpTransport``s,
which are real ``asyncio.DatagramTransport``s: an application written for
``loop.create_datagram_endpoint`` runs unchanged over
``Stack.create_datagram_endpoint``. Protocol callback order, as asyncio's::

    connection_made -> [datagram_received | error_received]* -> connection_lost

A datagram to a port nobody listens on is answered with ICMP Port
Unreachable (rate limited, see ``icmp.py``). An ICMP Port Unreachable that
quotes one of our datagrams is reported to a *connected* endpoint (one made
with ``remote_addr``) as ``error_received(ConnectionRefusedError)``, as Linux
reports it; unconnected endpoints do not hear of it, also as on Linux.

Checksums are verified unless the device did it (``Offload.rx_checksum``);
a zero checksum means "none" in IPv4 and is accepted (RFC 768). We always
send one. Sends are immediate: there is no write buffer, so
``get_write_buffer_size()`` is 0 and ``pause_writing`` is never called,
exactly like a kernel UDP socket that never fills.

Local ports for endpoints without one are chosen at random from the IANA
dynamic range 49152-65535 (RFC 6056 section 3.3.1, "simple port
randomization"), so an off-path attacker cannot guess them.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from netstack.icmp import Icmpv4
from netstack.ipv4 import HEADROOM, LIMITED_BROADCAST, Datagram, Ipv4
from netstack.wire.ipv4 import PROTOCOL_UDP
from netstack.wire.udp import HEADER_LEN as UDP_HEADER_LEN
from netstack.wire.udp import UdpPacket, UdpRepr

EPHEMERAL_LOW = 49152
EPHEMERAL_HIGH = 65535
MAX_PAYLOAD = 65535 - 20 - UDP_HEADER_LEN

Address = tuple[str, int]


def _pack_address(address: Any) -> tuple[bytes, int]:
    """``(host, port)`` as given to asyncio, to ``(4-byte address, port)``."""
    if not isinstance(address, tuple) or len(address) != 2:
        raise ValueError(f"expected a (host, port) tuple, got {address!r}")
    host, port = address
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"invalid port {port!r}")
    try:
        packed = ipaddress.IPv4Address(host).packed
    except (ipaddress.AddressValueError, ValueError) as error:
        raise ValueError(f"not an IPv4 address: {host!r}") from error
    return packed, port


def _str_address(packed: bytes) -> str:
    return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"


class Udp:
    """The UDP layer of one stack."""

    def __init__(
        self,
        ipv4: Ipv4,
        icmp: Icmpv4,
        transmit: Callable[[list[bytearray]], None],
        now: Callable[[], int],
        stats: Counter[str] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.ipv4 = ipv4
        self.icmp = icmp
        self._transmit = transmit
        self._now = now
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self._rng = rng or random.SystemRandom()
        self._endpoints: dict[int, UdpTransport] = {}
        self._address_cache: dict[bytes, str] = {}

    # -- receive -------------------------------------------------------------

    def handle(self, datagram: Datagram, now: int) -> list[bytearray]:
        """Deliver one UDP datagram. Raises ``UdpError`` if malformed."""
        packet = UdpPacket.new_checked(datagram.payload)
        udp = UdpRepr.parse(packet, datagram.src, datagram.dst, verify_checksum=self.ipv4.verify_checksums)
        endpoint = self._endpoints.get(udp.dst_port)
        if endpoint is None:
            self.stats["udp.closed_port"] += 1
            return self.icmp.port_unreachable(datagram, now)
        src = datagram.src
        host = self._address_cache.get(src)
        if host is None:
            if len(self._address_cache) > 4096:
                self._address_cache.clear()
            host = self._address_cache[src] = _str_address(src)
        self.stats["udp.rx"] += 1
        endpoint._deliver(bytes(packet.payload), (host, udp.src_port), src)
        return []

    def unreachable(self, protocol: int, local_ip: bytes, local_port: int, remote_ip: bytes, remote_port: int, code: int) -> None:
        if protocol != PROTOCOL_UDP:
            return
        endpoint = self._endpoints.get(local_port)
        if endpoint is not None and endpoint._remote == (remote_ip, remote_port):
            endpoint._error(ConnectionRefusedError(errno.ECONNREFUSED, "port unreachable"))

    # -- endpoints -----------------------------------------------------------

    def bind(self, port: int, endpoint: UdpTransport) -> int:
        if port == 0:
            for _ in range(64):
                candidate = self._rng.randint(EPHEMERAL_LOW, EPHEMERAL_HIGH)
                if candidate not in self._endpoints:
                    port = candidate
                    break
            else:
                for candidate in range(EPHEMERAL_LOW, EPHEMERAL_HIGH + 1):
                    if candidate not in self._endpoints:
                        port = candidate
                        break
                else:
                    raise OSError(errno.EADDRINUSE, "no free ephemeral UDP port")
        elif port in self._endpoints:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} is in use")
        self._endpoints[port] = endpoint
        return port

    def unbind(self, port: int, endpoint: UdpTransport) -> None:
        if self._endpoints.get(port) is endpoint:
            del self._endpoints[port]

    def send(self, src_port: int, dst: bytes, dst_port: int, data: bytes | bytearray | memoryview) -> None:
        length = len(data)
        frame = self.ipv4.allocate(UDP_HEADER_LEN + length)
        view = memoryview(frame)[HEADROOM:]
        view[UDP_HEADER_LEN:] = data
        UdpRepr(src_port, dst_port).emit(UdpPacket(view), self.ipv4.address, dst, length)
        self.stats["udp.tx"] += 1
        self._transmit(self.ipv4.send(frame, dst, PROTOCOL_UDP, self._now()))


class UdpTransport(asyncio.DatagramTransport):
    """A UDP endpoint of the direct stack."""

    def __init__(
        self,
        layer: Udp,
        protocol: asyncio.DatagramProtocol,
        loop: asyncio.AbstractEventLoop,
        remote: tuple[bytes, int] | None,
        allow_broadcast: bool,
    ) -> None:
        super().__init__({})
        self._layer = layer
        self._protocol = protocol
        self._loop = loop
        self._remote = remote
        self._allow_broadcast = allow_broadcast
        self._port = 0
        self._closing = False

    def _open(self, local_port: int) -> None:
        self._port = self._layer.bind(local_port, self)
        self._extra["sockname"] = (_str_address(self._layer.ipv4.address), self._port)
        if self._remote is not None:
            self._extra["peername"] = (_str_address(self._remote[0]), self._remote[1])
        self._loop.call_soon(self._protocol.connection_made, self)

    # -- from the layer ------------------------------------------------------

    def _deliver(self, data: bytes, address: Address, src: bytes) -> None:
        if self._closing:
            return
        if self._remote is not None and (src, address[1]) != self._remote:
            self._layer.stats["udp.not_from_peer"] += 1
            return
        try:
            self._protocol.datagram_received(data, address)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler(
                {"message": "datagram_received raised", "exception": exc, "transport": self, "protocol": self._protocol}
            )

    def _error(self, exc: OSError) -> None:
        if not self._closing:
            self._loop.call_soon(self._protocol.error_received, exc)

    # -- asyncio.DatagramTransport -------------------------------------------

    def sendto(self, data: bytes | bytearray | memoryview, addr: Any = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._closing:
            return
        if addr is None:
            if self._remote is None:
                raise ValueError("no destination: pass addr, or create the endpoint with remote_addr")
            dst, port = self._remote
        else:
            dst, port = _pack_address(addr)
            if self._remote is not None and (dst, port) != self._remote:
                raise ValueError(f"Invalid address: must be None or {self._extra['peername']}")
        if len(data) > MAX_PAYLOAD:
            self._error(OSError(errno.EMSGSIZE, "message too long"))
            return
        if port == 0:
            self._error(OSError(errno.EINVAL, "destination port 0"))
            return
        if (dst == LIMITED_BROADCAST or dst == self._layer.ipv4._subnet_broadcast) and not self._allow_broadcast:
            self._error(PermissionError(errno.EACCES, "broadcast needs allow_broadcast=True"))
            return
        self._layer.send(self._port, dst, port, data)

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._layer.unbind(self._port, self)
        self._loop.call_soon(self._protocol.connection_lost, None)

    def is_closing(self) -> bool:
        return self._closing

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        return None
