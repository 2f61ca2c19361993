"""The TCP layer: demultiplexing, listeners, SYN cookies, ISNs, ephemeral ports.

Theory of operation
-------------------
``TcpLayer`` owns every ``TcpConnection`` of one stack, keyed by
``(remote address, remote port, local port)`` (the stack has one local
address). It is sans-IO like the cores below it: ``handle(datagram, now)``
processes a segment, ``poll(now)`` runs due timers, and ``flush(now)``
returns the frames every connection with something to say wants sent.
The stack calls ``flush`` once per received batch and once per loop
iteration in which the application wrote (``schedule_flush``), so that many
writes and many incoming segments turn into as few outgoing segments as the
windows allow, with no timer tick.

Segments that match no connection (RFC 9293 3.10.7.1, "If the state is
CLOSED"): an RST is answered by nothing; anything else by a RST, with
``seq = SEG.ACK`` when the segment had an ACK, else ``seq = 0, ack =
SEG.SEQ + SEG.LEN``. A SYN to a listening port opens a connection in
SYN-RECEIVED, unless that listener's SYN queue (its ``backlog``) is full:
then we answer with a **SYN cookie** and keep no state at all; the returning
ACK proves the peer saw our SYN-ACK and recreates the connection. Cookies
encode a 5-bit time counter (64 s steps, accepted for two steps), a 2-bit
MSS class, and a 25-bit keyed hash of the 4-tuple, the counter and the
peer's ISN. A connection made from a cookie has no window scaling, SACK or
timestamps (there is nowhere to keep them), which costs performance only
while a flood is on.

Initial sequence numbers follow RFC 6528: ``ISN = M + F(localip,
localport, remoteip, remoteport, secretkey)`` with M a 4 microsecond timer
and F a keyed BLAKE2b. Ephemeral ports follow RFC 6056 algorithm 3 ("simple
hash-based"): ``port = min + (F(local, remote, secret) + counter) % range``
so that ports for one destination are not predictable from another's.

Bounds a hostile peer meets: SYN-RECEIVED connections per listener
(``backlog``), connections overall (``max_connections``), out-of-order
bytes per connection (its receive buffer) and overall (``ooo_budget``);
timers are a heap of deadlines, so thousands of TIME-WAIT connections cost
no per-batch scan.
"""

from __future__ import annotations

import dataclasses
# CPython's BLAKE2 module itself: ``hashlib`` serves the same class but loads
# OpenSSL on import, a few MiB of RSS an hvt guest need not pay for ISNs.
from _blake2 import blake2b
import heapq
import itertools
import os
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from netstack.ipv4 import HEADROOM, Datagram, Ipv4
from netstack.tcp import seq as sq
from netstack.tcp.connection import OutOfOrderBudget, Segment, TcpConfig, TcpConnection
from netstack.tcp.states import State
from netstack.wire.checksum import pseudo_header_ipv4
from netstack.wire.ipv4 import PROTOCOL_TCP
from netstack.wire.tcp import ACK, FIN, RST, SYN, TcpOptions, TcpPacket, TcpRepr

EPHEMERAL_LOW = 49152
EPHEMERAL_HIGH = 65535
COOKIE_MSS = (536, 1220, 1440, 1460)
COOKIE_PERIOD_NS = 64 * 1_000_000_000


class ConnectionOwner(Protocol):
    """Whoever receives a connection's events (the asyncio transport)."""

    def connection_events(self, events: list[str]) -> None: ...


@dataclasses.dataclass(slots=True)
class Listener:
    port: int
    on_connection: Callable[[TcpConnection], ConnectionOwner | None]
    backlog: int
    half_open: int = 0
    config: TcpConfig | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TcpLayerConfig:
    max_connections: int = 16384
    ooo_budget: int = 64 << 20
    connection: TcpConfig = TcpConfig()


Key = tuple[bytes, int, int]


class TcpLayer:
    def __init__(
        self,
        ipv4: Ipv4,
        config: TcpLayerConfig | None = None,
        stats: Counter[str] | None = None,
        *,
        secret: bytes | None = None,
    ) -> None:
        self.ipv4 = ipv4
        self.config = config or TcpLayerConfig()
        self.stats: Counter[str] = stats if stats is not None else Counter()
        self.connections: dict[Key, TcpConnection] = {}
        self.listeners: dict[int, Listener] = {}
        self.owners: dict[TcpConnection, ConnectionOwner] = {}
        self._listener_of: dict[TcpConnection, Listener] = {}
        self._secret = secret or os.urandom(32)
        self._budget = OutOfOrderBudget(self.config.ooo_budget)
        self._dirty: dict[TcpConnection, None] = {}
        self._timers: list[tuple[int, int, TcpConnection]] = []
        self._scheduled: dict[TcpConnection, int] = {}
        self._sequence = itertools.count()
        self._port_counter = int.from_bytes(os.urandom(2), "big")
        self.total_connections = 0
        verify = ipv4.verify_checksums
        self._verify = verify

    # -- helpers -------------------------------------------------------------

    def _hash(self, *parts: Any, size: int = 4) -> int:
        h = blake2b(key=self._secret, digest_size=size)
        for part in parts:
            h.update(part if isinstance(part, bytes) else int(part).to_bytes(8, "big", signed=True))
        return int.from_bytes(h.digest(), "big")

    def isn(self, local_port: int, remote_ip: bytes, remote_port: int, now: int) -> int:
        """RFC 6528: a 4-microsecond clock plus a keyed hash of the 4-tuple."""
        return (now // 4000 + self._hash(self.ipv4.address, local_port, remote_ip, remote_port)) & sq.MASK

    def _connection_config(self, mss_for_path: int) -> TcpConfig:
        config = self.config.connection
        mss = min(config.mss, mss_for_path)
        return config if mss == config.mss else dataclasses.replace(config, mss=mss)

    def path_mss(self) -> int:
        return self.ipv4.mtu - 40

    # -- opening ---------------------------------------------------------------

    def listen(self, port: int, on_connection: Callable[[TcpConnection], ConnectionOwner | None], backlog: int = 128, config: TcpConfig | None = None) -> Listener:
        if port in self.listeners:
            raise OSError(98, f"TCP port {port} is already listening")  # EADDRINUSE
        listener = Listener(port, on_connection, max(1, backlog), config=config)
        self.listeners[port] = listener
        return listener

    def unlisten(self, listener: Listener) -> None:
        if self.listeners.get(listener.port) is listener:
            del self.listeners[listener.port]

    def ephemeral_port(self, remote_ip: bytes, remote_port: int) -> int:
        span = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1
        offset = self._hash(self.ipv4.address, remote_ip, remote_port)
        for _ in range(span):
            self._port_counter += 1
            port = EPHEMERAL_LOW + (offset + self._port_counter) % span
            if (remote_ip, remote_port, port) not in self.connections and port not in self.listeners:
                return port
        raise OSError(99, "no free ephemeral TCP port")  # EADDRNOTAVAIL

    def connect(self, remote_ip: bytes, remote_port: int, owner: ConnectionOwner, now: int, *, local_port: int = 0, config: TcpConfig | None = None) -> TcpConnection:
        if len(self.connections) >= self.config.max_connections:
            raise OSError(105, "too many TCP connections")  # ENOBUFS
        if local_port == 0:
            local_port = self.ephemeral_port(remote_ip, remote_port)
        elif (remote_ip, remote_port, local_port) in self.connections:
            raise OSError(98, f"TCP port {local_port} is in use for that peer")
        connection = TcpConnection(
            (self.ipv4.address, local_port),
            (remote_ip, remote_port),
            self.isn(local_port, remote_ip, remote_port, now),
            config or self._connection_config(self.path_mss()),
            now,
            ts_offset=self._hash(remote_ip, remote_port, local_port, 1),
            budget=self._budget,
            stats=self.stats,
        )
        self._register(connection, owner)
        connection.connect(now)
        self.touch(connection)
        return connection

    def _register(self, connection: TcpConnection, owner: ConnectionOwner | None) -> None:
        self.connections[(connection.remote[0], connection.remote[1], connection.local[1])] = connection
        if owner is not None:
            self.owners[connection] = owner
        self.total_connections += 1
        self.stats["tcp.connections_opened"] += 1

    # -- receive ---------------------------------------------------------------

    def handle(self, datagram: Datagram, now: int) -> list[bytearray]:
        """Process one TCP segment. Raises ``TcpError`` if malformed."""
        payload = datagram.payload
        packet = TcpPacket.new_checked(payload)
        pseudo = pseudo_header_ipv4(datagram.src, datagram.dst, PROTOCOL_TCP, len(payload)) if self._verify else None
        segment = TcpRepr.parse(packet, pseudo)
        if datagram.broadcast:
            self.stats["tcp.broadcast_dropped"] += 1
            return []
        data = packet.payload
        key = (datagram.src, segment.src_port, segment.dst_port)
        connection = self.connections.get(key)
        if connection is not None:
            if (
                connection.state == State.TIME_WAIT
                and segment.flags & (SYN | ACK | RST) == SYN
                and sq.gt(segment.seq, connection.rcv_nxt)
                and segment.dst_port in self.listeners
            ):
                # RFC 6191-style reuse: a new incarnation may start over.
                self._forget(connection)
                return self._handle_listen(datagram, segment, data, now)
            connection.handle(segment, data, now)
            self._after(connection)
            return []
        return self._handle_listen(datagram, segment, data, now)

    def _handle_listen(self, datagram: Datagram, segment: TcpRepr, data: memoryview, now: int) -> list[bytearray]:
        flags = segment.flags
        listener = self.listeners.get(segment.dst_port)
        if listener is None or flags & RST:
            if not flags & RST:
                self.stats["tcp.closed_port"] += 1
            return self._reset_for(datagram, segment, len(data))
        if flags & ACK:
            if not flags & SYN and self._cookie_ack(listener, datagram, segment, data, now):
                return []
            return self._reset_for(datagram, segment, len(data))
        if not flags & SYN:
            self.stats["tcp.listen_no_syn"] += 1
            return []
        if flags & FIN:
            self.stats["tcp.syn_fin_dropped"] += 1
            return []
        if listener.half_open >= listener.backlog or len(self.connections) >= self.config.max_connections:
            return self._cookie_syn_ack(datagram, segment, now)
        config = listener.config or self._connection_config(self.path_mss())
        connection = TcpConnection(
            (self.ipv4.address, segment.dst_port),
            (datagram.src, segment.src_port),
            self.isn(segment.dst_port, datagram.src, segment.src_port, now),
            config,
            now,
            ts_offset=self._hash(datagram.src, segment.src_port, segment.dst_port, 1),
            budget=self._budget,
            stats=self.stats,
        )
        self._register(connection, None)
        listener.half_open += 1
        self._listener_of[connection] = listener
        connection.accept(segment, now)
        self._after(connection)
        return []

    def _reset_for(self, datagram: Datagram, segment: TcpRepr, payload_len: int) -> list[bytearray]:
        flags = segment.flags
        if flags & RST:
            return []
        self.stats["tcp.resets_sent"] += 1
        if flags & ACK:
            reply = TcpRepr(segment.dst_port, segment.src_port, segment.ack, 0, RST, 0)
        else:
            seg_len = payload_len + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
            reply = TcpRepr(segment.dst_port, segment.src_port, 0, sq.add(segment.seq, seg_len), RST | ACK, 0)
        return self._frames(datagram.src, Segment(reply, b""), 0)

    # -- SYN cookies -------------------------------------------------------------

    def _cookie(self, remote_ip: bytes, remote_port: int, local_port: int, peer_isn: int, counter: int, mss_class: int) -> int:
        mac = self._hash(remote_ip, remote_port, local_port, peer_isn, counter, mss_class, size=4) & 0x1FFFFFF
        return (mac << 7) | ((counter & 0x1F) << 2) | mss_class

    def _cookie_syn_ack(self, datagram: Datagram, segment: TcpRepr, now: int) -> list[bytearray]:
        self.stats["tcp.syn_cookies_sent"] += 1
        peer_mss = segment.options.mss or 536
        mss = min(peer_mss, self.path_mss())
        mss_class = max(i for i, value in enumerate(COOKIE_MSS) if value <= mss) if mss >= COOKIE_MSS[0] else 0
        counter = now // COOKIE_PERIOD_NS
        isn = self._cookie(datagram.src, segment.src_port, segment.dst_port, segment.seq, counter, mss_class)
        reply = TcpRepr(
            segment.dst_port, segment.src_port, isn, sq.add(segment.seq, 1), SYN | ACK,
            min(self.config.connection.recv_buffer, 65535), TcpOptions(mss=COOKIE_MSS[mss_class]),
        )
        return self._frames(datagram.src, Segment(reply, b""), 0)

    def _cookie_ack(self, listener: Listener, datagram: Datagram, segment: TcpRepr, data: memoryview, now: int) -> bool:
        isn = sq.add(segment.ack, -1)
        peer_isn = sq.add(segment.seq, -1)
        counter_bits = (isn >> 2) & 0x1F
        mss_class = isn & 0x3
        current = now // COOKIE_PERIOD_NS
        for counter in (current, current - 1):
            if counter & 0x1F == counter_bits and self._cookie(
                datagram.src, segment.src_port, segment.dst_port, peer_isn, counter, mss_class
            ) == isn:
                break
        else:
            self.stats["tcp.bad_cookie"] += 1
            return False
        if len(self.connections) >= self.config.max_connections:
            self.stats["tcp.connections_refused"] += 1
            return False
        self.stats["tcp.syn_cookies_accepted"] += 1
        config = dataclasses.replace(
            listener.config or self.config.connection, timestamps=False, sack=False, window_scaling=False
        )
        config = dataclasses.replace(config, mss=min(config.mss, COOKIE_MSS[mss_class]))
        connection = TcpConnection(
            (self.ipv4.address, segment.dst_port),
            (datagram.src, segment.src_port),
            isn,
            config,
            now,
            budget=self._budget,
            stats=self.stats,
        )
        self._register(connection, None)
        connection.accept_established(TcpOptions(mss=COOKIE_MSS[mss_class]), peer_isn, segment.window, now)
        # Tie the connection to its listener, then let it see the ACK's data.
        self._listener_of[connection] = listener
        listener.half_open += 1
        connection.handle(segment, data, now)
        self._after(connection)
        return True

    # -- events, timers, output ------------------------------------------------

    def _after(self, connection: TcpConnection) -> None:
        """Deliver a connection's events, schedule its timer, mark it for output."""
        events = connection.events
        if events:
            connection.events = []
            if "connected" in events:
                listener = self._listener_of.pop(connection, None)
                if listener is not None:
                    listener.half_open -= 1
                    if self.listeners.get(listener.port) is listener:
                        owner = listener.on_connection(connection)
                        if owner is None:
                            connection.abort(0)
                        else:
                            self.owners[connection] = owner
                    else:
                        connection.abort(0)
            owner = self.owners.get(connection)
            if owner is not None:
                owner.connection_events(events)
        self._dirty[connection] = None
        self.touch(connection)

    def touch(self, connection: TcpConnection) -> None:
        deadline = connection.poll_at()
        if deadline is not None and self._scheduled.get(connection) != deadline:
            self._scheduled[connection] = deadline
            heapq.heappush(self._timers, (deadline, next(self._sequence), connection))

    def kick(self, connection: TcpConnection) -> None:
        """The application acted on ``connection``: it needs a ``flush``."""
        self._dirty[connection] = None

    def poll_at(self) -> int | None:
        timers = self._timers
        while timers:
            deadline, _, connection = timers[0]
            if self._scheduled.get(connection) == deadline:
                return deadline
            heapq.heappop(timers)
        return None

    def poll(self, now: int) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, connection = heapq.heappop(timers)
            if self._scheduled.get(connection) != deadline:
                continue
            del self._scheduled[connection]
            connection.poll(now)
            self._after(connection)

    def flush(self, now: int) -> list[bytearray]:
        frames: list[bytearray] = []
        while self._dirty:
            dirty = list(self._dirty)
            self._dirty.clear()
            for connection in dirty:
                segments = connection.dispatch(now)
                remote = connection.remote[0]
                for segment in segments:
                    frames += self._frames(remote, segment, now)
                if connection.events:
                    self._after(connection)
                    self._dirty.pop(connection, None)
                else:
                    self.touch(connection)
                if connection.state == State.CLOSED:
                    self._forget(connection)
        return frames

    def _forget(self, connection: TcpConnection) -> None:
        key = (connection.remote[0], connection.remote[1], connection.local[1])
        if self.connections.get(key) is connection:
            del self.connections[key]
            self.stats["tcp.connections_closed"] += 1
        self._scheduled.pop(connection, None)
        self.owners.pop(connection, None)
        listener = self._listener_of.pop(connection, None)
        if listener is not None:
            listener.half_open -= 1

    def _frames(self, remote: bytes, segment: Segment, now: int) -> list[bytearray]:
        tcp = segment.repr
        payload = segment.payload
        header_len = tcp.buffer_len()
        large = segment.segment_size and header_len + len(payload) + 20 > self.ipv4.mtu
        frame = self.ipv4.allocate(header_len + len(payload), segment.segment_size if large else 0)
        view = memoryview(frame)[HEADROOM:]
        if payload:
            view[header_len:] = payload
        pseudo = pseudo_header_ipv4(self.ipv4.address, remote, PROTOCOL_TCP, len(view))
        if large:
            # The device completes the checksum of every piece it cuts.
            packet = TcpPacket(view)
            tcp.emit(packet, len(payload), None)
            packet.checksum = pseudo
        else:
            tcp.emit(TcpPacket(view), len(payload), pseudo)
        self.stats["tcp.segments_sent"] += 1
        return self.ipv4.send(frame, remote, PROTOCOL_TCP, now, dont_fragment=True)

    # -- inspection ------------------------------------------------------------

    def open_connections(self) -> int:
        return sum(1 for c in self.connections.values() if c.state not in (State.TIME_WAIT, State.CLOSED))
