"""Test helpers for the sans-IO TCP core: a scripted peer and an in-memory wire.

Nothing here reads a clock or sleeps: every call takes ``now`` and time
moves only when a test (or ``Wire.run``) moves it, as in smoltcp's socket
tests and mirage-tcpip's ``test_rfc5961.ml``.

``ScriptedPeer``
    The far end of one ``TcpConnection``, played by hand: the test builds
    each segment (flags, seq, ack, window, options, payload) and asserts on
    exactly what ``dispatch`` answers. The peer keeps its own ``seq`` (next
    sequence number it sends) and, from our segments, ``ack`` (what it would
    acknowledge), so the common case needs no arithmetic in the test.

``build(state, ...)``
    A connection in any state of the RFC 9293 diagram, reached through the
    public API and scripted segments only, with its peer.

``Wire``
    Two connections back to back. ``dispatch`` output of one is ``handle``
    input of the other after ``latency`` nanoseconds of virtual time, plus,
    with a ``rate`` (bytes per second), the time each segment takes on the
    link, so that a window's segments arrive spaced out as on a real link
    (without one, a window arrives at one instant and is handled as one
    batch, as a driver handles a burst of frames before it dispatches). A
    ``fault`` callback may drop, duplicate or delay chosen segments. When
    nothing is in flight, time jumps to the earliest event.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
from collections.abc import Callable, Iterable

from netstack.tcp import seq as sq
from netstack.tcp.connection import MS, Segment, TcpConfig, TcpConnection
from netstack.tcp.states import State
from netstack.wire.tcp import ACK, FIN, NO_OPTIONS, PSH, RST, SYN, TcpOptions, TcpRepr

CLIENT = (bytes([10, 0, 0, 1]), 40000)
SERVER = (bytes([10, 0, 0, 2]), 80)
OUR_ISS = 1_000
PEER_ISS = 2_000_000_000
PEER_WINDOW = 65535
PEER_OPTIONS = TcpOptions(mss=1460)

FLAG_NAMES = ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, "."))


def flag_string(flags: int) -> str:
    """tcpdump's spelling: ``S``, ``S.``, ``.``, ``P.``, ``F.``, ``R``, ``R.``."""
    return "".join(name for bit, name in FLAG_NAMES if flags & bit) or "none"


class ScriptedPeer:
    """The far end of ``conn``, scripted by the test."""

    def __init__(self, conn: TcpConnection, *, isn: int = PEER_ISS, window: int = PEER_WINDOW, wscale: int = 0) -> None:
        self.conn = conn
        self.isn = isn & sq.MASK
        self.seq = self.isn  # the next sequence number this peer sends
        self.ack = 0  # what it acknowledges: conn's next expected byte
        self.window = window
        self.wscale = wscale  # the shift the peer asked us to apply to its windows
        self.received = bytearray()  # what conn sent, in order, as this peer took it

    def segment(
        self,
        flags: int = ACK,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        options: TcpOptions = NO_OPTIONS,
    ) -> TcpRepr:
        return TcpRepr(
            self.conn.remote[1],
            self.conn.local[1],
            self.seq if seq is None else seq & sq.MASK,
            (self.ack if ack is None else ack & sq.MASK) if flags & ACK else (0 if ack is None else ack),
            flags,
            self.window if window is None else window,
            options,
        )

    def send(
        self,
        now: int,
        flags: int = ACK,
        payload: bytes = b"",
        *,
        seq: int | None = None,
        ack: int | None = None,
        window: int | None = None,
        options: TcpOptions = NO_OPTIONS,
        advance: bool | None = None,
    ) -> list[Segment]:
        """Deliver one segment to ``conn`` and return everything it dispatches.

        The peer's own ``seq`` moves past the segment when it was sent at
        ``seq`` (the default) unless ``advance=False``.
        """
        segment = self.segment(flags, payload, seq=seq, ack=ack, window=window, options=options)
        if advance is None:
            advance = seq is None
        self.conn.handle(segment, memoryview(payload), now)
        if advance:
            self.seq = sq.add(self.seq, len(payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0))
        return self.take(now)

    def take(self, now: int) -> list[Segment]:
        """``conn.dispatch(now)``, noting what the peer now would acknowledge."""
        out = self.conn.dispatch(now)
        for segment in out:
            self.observe(segment)
        return out

    def poll(self, now: int) -> list[Segment]:
        self.conn.poll(now)
        return self.take(now)

    def observe(self, segment: Segment) -> None:
        """Track the in-order end of what ``conn`` sent (the peer's RCV.NXT)."""
        repr_ = segment.repr
        length = len(segment.payload) + (1 if repr_.flags & SYN else 0) + (1 if repr_.flags & FIN else 0)
        if repr_.flags & SYN:
            self.ack = sq.add(repr_.seq, length)
            return
        if repr_.flags & RST:
            return
        if sq.le(repr_.seq, self.ack) and sq.gt(sq.add(repr_.seq, length), self.ack):
            skip = sq.sub(self.ack, repr_.seq)
            self.received += bytes(segment.payload)[skip:]
            self.ack = sq.add(repr_.seq, length)


def data_segments(out: Iterable[Segment]) -> list[Segment]:
    return [segment for segment in out if segment.payload]


def connection(config: TcpConfig | None = None, *, now: int = 0, iss: int = OUR_ISS, client: bool = True) -> TcpConnection:
    local, remote = (CLIENT, SERVER) if client else (SERVER, CLIENT)
    return TcpConnection(local, remote, iss, config or TcpConfig(), now)


def open_client(
    config: TcpConfig | None = None,
    *,
    now: int = 0,
    peer_options: TcpOptions = PEER_OPTIONS,
    peer_window: int = PEER_WINDOW,
    peer_isn: int = PEER_ISS,
    iss: int = OUR_ISS,
) -> tuple[TcpConnection, ScriptedPeer]:
    """An active open completed against a scripted peer: ESTABLISHED, events drained."""
    conn = connection(config, now=now, iss=iss)
    peer = ScriptedPeer(conn, isn=peer_isn, window=peer_window, wscale=peer_options.window_scale or 0)
    conn.connect(now)
    (syn,) = peer.take(now)
    assert syn.repr.flags == SYN
    if syn.repr.options.window_scale is None:
        peer.wscale = 0
    peer.send(now, SYN | ACK, options=peer_options, window=min(peer_window, 65535))
    assert conn.state == State.ESTABLISHED, conn.state
    conn.events.clear()
    return conn, peer


def open_server(
    config: TcpConfig | None = None,
    *,
    now: int = 0,
    peer_options: TcpOptions = PEER_OPTIONS,
    peer_window: int = PEER_WINDOW,
    peer_isn: int = PEER_ISS,
    iss: int = OUR_ISS,
) -> tuple[TcpConnection, ScriptedPeer]:
    """A passive open completed by a scripted client: ESTABLISHED, events drained."""
    conn = connection(config, now=now, iss=iss, client=False)
    peer = ScriptedPeer(conn, isn=peer_isn, window=peer_window, wscale=peer_options.window_scale or 0)
    syn = peer.segment(SYN, options=peer_options, window=min(peer_window, 65535))
    conn.accept(syn, now)
    peer.seq = sq.add(peer.seq, 1)
    (syn_ack,) = peer.take(now)
    assert syn_ack.repr.flags == SYN | ACK
    if syn_ack.repr.options.window_scale is None:
        peer.wscale = 0
    window = peer_window >> peer.wscale
    assert peer.send(now, ACK, window=window) == []
    assert conn.state == State.ESTABLISHED, conn.state
    conn.events.clear()
    return conn, peer


def build(state: State, config: TcpConfig | None = None, *, now: int = 0, **open_args: object) -> tuple[TcpConnection, ScriptedPeer]:
    """A connection in ``state``, reached through the public API and scripted segments."""
    if state == State.CLOSED:
        conn = connection(config, now=now)
        return conn, ScriptedPeer(conn)
    if state == State.LISTEN:
        # The core has no listen(): listeners live in the layer. This is the
        # one state a test has to construct by assignment.
        conn = connection(config, now=now, client=False)
        conn.state = State.LISTEN
        return conn, ScriptedPeer(conn)
    if state == State.SYN_SENT:
        conn = connection(config, now=now)
        peer = ScriptedPeer(conn)
        conn.connect(now)
        peer.take(now)
        return conn, peer
    if state == State.SYN_RECEIVED:
        conn = connection(config, now=now, client=False)
        peer = ScriptedPeer(conn)
        conn.accept(peer.segment(SYN, options=PEER_OPTIONS), now)
        peer.seq = sq.add(peer.seq, 1)
        peer.take(now)
        return conn, peer
    conn, peer = open_client(config, now=now, **open_args)  # type: ignore[arg-type]
    if state == State.ESTABLISHED:
        return conn, peer
    if state in (State.CLOSE_WAIT, State.LAST_ACK):
        peer.send(now, FIN | ACK)
        if state == State.LAST_ACK:
            conn.close(now)
            peer.take(now)
    else:
        conn.close(now)
        peer.take(now)  # our FIN
        if state == State.FIN_WAIT_2:
            peer.send(now, ACK)
        elif state == State.CLOSING:
            # The peer's FIN crosses ours: it does not acknowledge our FIN yet.
            peer.send(now, FIN | ACK, ack=sq.add(peer.ack, -1))
        elif state == State.TIME_WAIT:
            peer.send(now, ACK)
            peer.send(now, FIN | ACK)
    assert conn.state == state, (conn.state, state)
    conn.events.clear()
    return conn, peer


# ----------------------------------------------------------------------
# Two connections back to back


Fault = Callable[[str, Segment], Iterable[int]]
"""``fault(direction, segment)`` gives the extra delays (ns) of each copy to
deliver: ``[0]`` as is, ``[]`` drop, ``[0, 0]`` duplicate, ``[5 * MS]`` late."""


class Stuck(AssertionError):
    """The wire ran out of events (or of time) before the goal was reached."""


def lossy(seed: int, drop: float = 0.03, duplicate: float = 0.03, reorder: float = 0.03, delay: int = 3 * MS) -> Fault:
    """A seeded fault that drops, duplicates and delays (reorders) segments."""
    rng = random.Random(seed)

    def fault(direction: str, segment: Segment) -> list[int]:
        roll = rng.random()
        if roll < drop:
            return []
        if roll < drop + duplicate:
            return [0, rng.randrange(delay)]
        if roll < drop + duplicate + reorder:
            return [rng.randrange(1, delay)]
        return [0]

    return fault


@dataclasses.dataclass
class Delivered:
    at: int
    direction: str  # "a>b" or "b>a"
    segment: Segment


class Wire:
    """``a`` and ``b`` joined by two one-way links of ``latency`` ns."""

    def __init__(
        self,
        a: TcpConnection,
        b: TcpConnection,
        *,
        now: int = 0,
        latency: int = 1 * MS,
        rate: int | None = None,
        fault: Fault | None = None,
        listening: Iterable[TcpConnection] = (),
    ) -> None:
        self.a, self.b = a, b
        self.now = now
        self.latency = latency
        self.rate = rate
        self._link_free = {"a>b": now, "b>a": now}
        self.fault = fault
        self.listening = set(map(id, listening))
        self.log: list[Delivered] = []  # every segment handed to the wire, in order
        self._queue: list[tuple[int, int, str, Segment]] = []
        self._order = itertools.count()

    def _peer(self, direction: str) -> TcpConnection:
        return self.b if direction == "a>b" else self.a

    def flush(self) -> None:
        """Dispatch both sides and put what they send on the wire."""
        for conn, direction in ((self.a, "a>b"), (self.b, "b>a")):
            for segment in conn.dispatch(self.now):
                for piece in cut(segment):
                    self.log.append(Delivered(self.now, direction, piece))
                    departure = self.now
                    if self.rate:
                        start = max(self.now, self._link_free[direction])
                        departure = start + (40 + len(piece.payload)) * 1_000_000_000 // self.rate
                        self._link_free[direction] = departure
                    delays = [0] if self.fault is None else self.fault(direction, piece)
                    for delay in delays:
                        at = departure + self.latency + delay
                        heapq.heappush(self._queue, (at, next(self._order), direction, piece))

    def next_event(self) -> int | None:
        candidates = [t for t in (self.a.poll_at(), self.b.poll_at()) if t is not None]
        if self._queue:
            candidates.append(self._queue[0][0])
        return min(candidates) if candidates else None

    def step(self) -> bool:
        """Flush, move to the next event, run it. False when nothing is left."""
        self.flush()
        at = self.next_event()
        if at is None:
            return False
        self.now = max(self.now, at)
        while self._queue and self._queue[0][0] <= self.now:
            _, _, direction, segment = heapq.heappop(self._queue)
            self.deliver(direction, segment)
        for conn in (self.a, self.b):
            deadline = conn.poll_at()
            if deadline is not None and deadline <= self.now:
                conn.poll(self.now)
        self.flush()
        return True

    def deliver(self, direction: str, segment: Segment) -> None:
        conn = self._peer(direction)
        repr_ = segment.repr
        if conn.state == State.CLOSED and id(conn) in self.listening and repr_.flags & (SYN | ACK | RST) == SYN:
            self.listening.discard(id(conn))
            conn.accept(repr_, self.now)
            return
        conn.handle(repr_, memoryview(bytes(segment.payload)), self.now)

    def run(
        self,
        until: Callable[[], bool],
        *,
        app: Callable[[int], None] | None = None,
        limit: int = 600 * 1_000_000_000,
        max_steps: int = 10_000_000,
    ) -> None:
        """Step until ``until()``; ``app(now)`` runs after every step."""
        deadline = self.now + limit
        for _ in range(max_steps):
            if app is not None:
                app(self.now)
            if until():
                return
            if not self.step() or self.now > deadline:
                if app is not None:
                    app(self.now)
                if until():
                    return
                raise Stuck(f"stuck at {self.now / 1e9:.3f}s: {self.a.state} / {self.b.state}")
        raise Stuck("too many steps")

    def sent(self, direction: str) -> list[Segment]:
        return [entry.segment for entry in self.log if entry.direction == direction]


def cut(segment: Segment) -> list[Segment]:
    """What a device does with ``segment_size`` (TCP segmentation offload)."""
    size = segment.segment_size
    if not size or len(segment.payload) <= size:
        return [Segment(segment.repr, bytes(segment.payload))]
    repr_ = segment.repr
    payload = bytes(segment.payload)
    pieces = []
    for start in range(0, len(payload), size):
        last = start + size >= len(payload)
        flags = repr_.flags if last else repr_.flags & ~(FIN | PSH)
        pieces.append(Segment(dataclasses.replace(repr_, seq=sq.add(repr_.seq, start), flags=flags), payload[start : start + size]))
    return pieces


def pair(
    client_config: TcpConfig | None = None,
    server_config: TcpConfig | None = None,
    *,
    now: int = 0,
    latency: int = 1 * MS,
    rate: int | None = None,
    fault: Fault | None = None,
) -> Wire:
    """A client and a listening server on a wire, the client's SYN not yet sent."""
    client = TcpConnection(CLIENT, SERVER, OUR_ISS, client_config or TcpConfig(), now)
    server = TcpConnection(SERVER, CLIENT, PEER_ISS, server_config or TcpConfig(), now, ts_offset=777_777)
    return Wire(client, server, now=now, latency=latency, rate=rate, fault=fault, listening=(server,))
