"""A hostile peer never makes the core raise, and never makes it hold
unbounded memory: random segments (flags, seq, ack, window, options,
payload), timer runs and application calls, in every state."""

from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from netstack.tcp import seq as sq
from netstack.tcp.connection import MS, SECOND, OutOfOrderBudget, TcpConfig, TcpConnection
from netstack.tcp.states import State
from netstack.tcp.testing import build
from netstack.wire.tcp import ACK, PSH, TcpOptions, TcpPacket, TcpRepr

NOW = 1 * SECOND
LINUX = TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(5000, 0))
CONFIG = TcpConfig(recv_buffer=64 * 1024, ooo_max_pieces=16, keepalive=True, keepalive_idle_ns=2 * SECOND)

u32 = st.integers(0, (1 << 32) - 1)

# Sequence numbers are drawn as (anywhere, value) or (relative, offset) and
# resolved against the connection's numbers when the action runs, so that
# many of them land where the checks are (around RCV.NXT and SND.UNA).
SEQ = st.tuples(st.just(True), u32) | st.tuples(st.just(False), st.sampled_from([0, 1, -1]) | st.integers(-70_000, 70_000))
OPTIONS = st.tuples(
    st.none() | st.integers(0, 65535),  # MSS
    st.none() | st.integers(0, 14),  # window scale
    st.booleans(),  # SACK-permitted
    st.lists(st.tuples(SEQ, SEQ), max_size=4),  # SACK blocks
    st.none() | st.tuples(u32 | st.integers(4990, 5100), u32),  # timestamps
)
SEGMENT = st.tuples(
    st.just("segment"),
    st.tuples(
        st.integers(0, 255) | st.sampled_from([ACK, ACK | PSH]),
        SEQ,
        SEQ,
        st.integers(0, 65535),
        OPTIONS,
        st.integers(0, 16) | st.integers(0, 3000),  # payload length
    ),
)
ACTION = st.one_of(
    SEGMENT,
    SEGMENT,
    SEGMENT,
    st.tuples(st.just("time"), st.integers(0, 130 * SECOND) | st.integers(0, 100 * MS)),
    st.tuples(st.just("send"), st.integers(1, 5000)),
    st.tuples(st.sampled_from(["read", "close", "abort"]), st.none()),
)


def resolve(drawn: tuple[bool, int], anchor: int) -> int:
    anywhere, value = drawn
    return value if anywhere else sq.add(anchor, value)


def make_segment(conn: TcpConnection, drawn) -> tuple[TcpRepr, bytes]:
    flags, seq, ack, window, (mss, wscale, sack_permitted, blocks, timestamp), length = drawn
    una = conn.snd_una
    options = TcpOptions(
        mss=mss,
        window_scale=wscale,
        sack_permitted=sack_permitted,
        sack_blocks=tuple((resolve(left, una), resolve(right, una)) for left, right in blocks),
        timestamp=timestamp,
    )
    segment = TcpRepr(conn.remote[1], conn.local[1], resolve(seq, conn.rcv_nxt), resolve(ack, una), flags, window, options)
    return segment, b"p" * length


def check_output(conn: TcpConnection, now: int) -> None:
    for segment in conn.dispatch(now):
        repr_ = segment.repr
        # Every segment must be emittable: fields in range, options that fit.
        buffer = bytearray(repr_.buffer_len() + len(segment.payload))
        buffer[repr_.buffer_len() :] = segment.payload
        repr_.emit(TcpPacket(buffer), len(segment.payload), 0)
        assert len(segment.payload) <= max(conn.mss, segment.segment_size)


def check_bounds(conn: TcpConnection, budget: OutOfOrderBudget, total: int) -> None:
    reassembly = conn._reassembly
    assert reassembly.size <= conn.config.recv_buffer
    assert len(reassembly) <= conn.config.ooo_max_pieces
    assert 0 <= budget.available <= total
    assert budget.available + reassembly.size == total
    # Unread in-order data and out-of-order data together stay within the buffer.
    assert conn.readable + reassembly.size <= conn.config.recv_buffer
    if conn.state == State.CLOSED:
        assert conn.poll_at() is None


def run(state: State, actions) -> None:
    conn, peer = build(state, CONFIG, now=NOW, peer_options=LINUX) if state not in (
        State.CLOSED, State.LISTEN, State.SYN_SENT, State.SYN_RECEIVED
    ) else build(state, CONFIG, now=NOW)
    total = 20_000
    budget = OutOfOrderBudget(total)
    conn._budget = budget
    now = NOW
    for kind, argument in actions:
        if kind == "segment":
            segment, payload = make_segment(conn, argument)
            conn.handle(segment, memoryview(payload), now)
        elif kind == "time":
            now += argument
            conn.poll(now)
        elif kind == "send":
            try:
                conn.send(b"s" * argument)
            except ConnectionError:
                assert conn.state not in (State.ESTABLISHED, State.CLOSE_WAIT) or conn._fin_queued
        elif kind == "read":
            conn.read()
        elif kind == "close":
            conn.close(now)
        elif kind == "abort":
            conn.abort(now)
        check_output(conn, now)
        conn.events.clear()
        check_bounds(conn, budget, total)
        deadline = conn.poll_at()
        assert deadline is None or isinstance(deadline, int)


# TCP_HOSTILE_EXAMPLES=5000 for a long hunt; the default keeps the suite quick.
SETTINGS = settings(max_examples=int(os.environ.get("TCP_HOSTILE_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(state: State):
    @SETTINGS
    @given(st.lists(ACTION, min_size=1, max_size=30))
    def test(actions) -> None:
        run(state, actions)

    test.__name__ = f"test_hostile_input_in_{state.name}"
    return test


for _state in State:
    globals()[f"test_hostile_input_in_{_state.name}"] = make(_state)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 64 * 1024), st.integers(1, 3000)), max_size=200))
def test_out_of_order_memory_is_bounded(pieces) -> None:
    conn, peer = build(State.ESTABLISHED, CONFIG, now=NOW, peer_options=LINUX)
    budget = OutOfOrderBudget(30_000)
    conn._budget = budget
    rcv_nxt = conn.rcv_nxt
    for offset, length in pieces:
        peer.send(NOW, ACK, b"x" * length, seq=sq.add(rcv_nxt, 1 + offset), options=TcpOptions(timestamp=(5000, 0)))
        check_bounds(conn, budget, 30_000)
        assert conn._reassembly.size <= 30_000


def test_a_flood_of_one_byte_islands_is_bounded_by_the_piece_count() -> None:
    conn, peer = build(State.ESTABLISHED, CONFIG, now=NOW, peer_options=LINUX)
    rcv_nxt = conn.rcv_nxt
    for i in range(5000):
        peer.send(NOW, ACK, b"x", seq=sq.add(rcv_nxt, 2 * i + 1), options=TcpOptions(timestamp=(5000, 0)))
    assert len(conn._reassembly) == CONFIG.ooo_max_pieces
    assert conn.stats["tcp.ooo_dropped"] == 5000 - CONFIG.ooo_max_pieces


def test_the_budget_is_shared_and_returned() -> None:
    budget = OutOfOrderBudget(10_000)
    conns = []
    for _ in range(3):
        conn, peer = build(State.ESTABLISHED, CONFIG, now=NOW, peer_options=LINUX)
        conn._budget = budget
        for i in range(10):
            peer.send(NOW, ACK, b"y" * 1000, seq=sq.add(conn.rcv_nxt, 1 + 1001 * i), options=TcpOptions(timestamp=(5000, 0)))
        conns.append(conn)
    held = [conn._reassembly.size for conn in conns]
    assert sum(held) == 10_000 and budget.available == 0
    assert held[2] == 0  # the first connections took it all: the third got nothing
    for conn in conns:
        conn.abort(NOW)
    assert budget.available == 10_000


def test_tiny_segments_to_an_application_that_does_not_read_are_bounded() -> None:
    # Rounding a scaled window field up on every ACK would let one-byte
    # segments hold the window open for ever; it is rounded down, so the
    # window closes at the end of the buffer whatever the segment sizes.
    config = TcpConfig(recv_buffer=1 << 17, quickack_segments=1 << 30)
    conn, peer = build(State.ESTABLISHED, config, now=NOW, peer_options=LINUX)
    assert conn._rcv_wscale == 2
    for _ in range(140_000):
        out = peer.send(NOW, ACK, b"w", options=TcpOptions(timestamp=(5000, 0)), advance=False)
        if conn.readable == config.recv_buffer:
            break
        peer.seq = sq.add(peer.seq, 1)
    assert conn.readable == config.recv_buffer
    assert out[-1].repr.window == 0
    # Reading makes room again, and the stream continues where it stopped.
    assert len(conn.read()) == config.recv_buffer
    (update,) = peer.take(NOW)
    assert update.repr.window << 2 == config.recv_buffer
    peer.send(NOW, ACK, b"z", seq=conn.rcv_nxt, options=TcpOptions(timestamp=(5000, 0)))
    assert conn.read() == b"z"
