"""Flow control at virtual time: persist timer, keepalive, the receive side
(delayed and quick ACKs, SACK reports, reassembly, the window), and Nagle."""

from __future__ import annotations

import pytest

from netstack.tcp import seq as sq
from netstack.tcp.connection import MS, SECOND, Segment, TcpConfig, TcpConnection
from netstack.tcp.states import State
from netstack.tcp.testing import OUR_ISS, ScriptedPeer, build, data_segments, flag_string, open_client, open_server
from netstack.wire.tcp import ACK, FIN, PSH, SYN, TcpOptions

NOW = 1 * SECOND
PLAIN = TcpOptions(mss=1460)
UNA = sq.add(OUR_ISS, 1)


def acks(out: list[Segment]) -> list[tuple[str, int, int]]:
    """(flags, ack, window) of each segment."""
    return [(flag_string(s.repr.flags), s.repr.ack, s.repr.window) for s in out]


def expire(conn: TcpConnection, peer: ScriptedPeer) -> tuple[int, list[Segment]]:
    at = conn.poll_at()
    assert at is not None
    return at, peer.poll(at)


# ----------------------------------------------------------------------
# Persist timer


def zero_window(config: TcpConfig | None = None) -> tuple[TcpConnection, ScriptedPeer, int]:
    """Two segments fill the peer's window; it ACKs them and closes the window."""
    conn, peer = open_client(config, now=NOW, peer_options=PLAIN, peer_window=2 * 1460)
    conn.send(bytes(5 * 1460))
    assert len(data_segments(peer.take(NOW))) == 2
    t = NOW + 10 * MS
    assert peer.send(t, ACK, window=0) == []
    assert conn.snd_wnd == 0 and conn.unsent == 3 * 1460
    return conn, peer, t


def test_zero_window_arms_the_persist_timer_and_probes_with_snd_una_minus_one() -> None:
    conn, peer, t = zero_window()
    rto = conn.rtt.current()
    assert conn.poll_at() == t + rto
    at, out = expire(conn, peer)
    assert [(flag_string(s.repr.flags), s.repr.seq, len(s.payload)) for s in out] == [(".", sq.add(conn.snd_una, -1), 0)]
    assert conn.stats["tcp.window_probes"] == 1


def test_persist_backs_off_exponentially() -> None:
    conn, peer, t = zero_window(TcpConfig(rto_max_ns=10 * SECOND))
    rto = conn.rtt.current()
    times = []
    for _ in range(8):
        at, out = expire(conn, peer)
        assert len(out) == 1 and not out[0].payload
        times.append(at)
        peer.send(at + 1 * MS, ACK, window=0)  # the peer answers: still closed
    gaps = [b - a for a, b in zip([t] + times, times)]
    assert gaps[:6] == [rto, 2 * rto, 4 * rto, 8 * rto, 16 * rto, 32 * rto]
    assert gaps[6:] == [10 * SECOND, 10 * SECOND]  # capped at rto_max


def test_window_reopening_resumes_sending() -> None:
    conn, peer, t = zero_window()
    at, _ = expire(conn, peer)
    out = peer.send(at + 1 * MS, ACK, window=65535)
    assert [len(s.payload) for s in data_segments(out)] == [1460, 1460, 1460]
    assert conn.unsent == 0
    assert conn._persist_at is None


def test_zero_window_is_allowed_indefinitely_while_the_peer_answers() -> None:
    # RFC 9293 3.8.6.1: "As long as the receiving TCP peer continues to send
    # acknowledgments in response to the probe segments, the sending TCP peer
    # MUST allow the connection to stay open."
    conn, peer, t = zero_window(TcpConfig(rto_max_ns=60 * SECOND, max_retransmits=5))
    for _ in range(100):
        at, _ = expire(conn, peer)
        peer.send(at + 1 * MS, ACK, window=0)
    assert conn.state == State.ESTABLISHED
    out = peer.send(at + 2 * MS, ACK, window=65535)
    assert len(data_segments(out)) == 3


def test_zero_window_probes_unanswered_give_up() -> None:
    conn, peer, t = zero_window(TcpConfig(max_retransmits=3))
    probes = 0
    while conn.state != State.CLOSED:
        _, out = expire(conn, peer)
        probes += len(out)
        assert probes < 100
    assert isinstance(conn.error, TimeoutError)


# ----------------------------------------------------------------------
# Keepalive


KEEPALIVE = TcpConfig(keepalive=True, keepalive_idle_ns=10 * SECOND, keepalive_interval_ns=SECOND, keepalive_count=3)


@pytest.mark.parametrize("opener", [open_client, open_server], ids=["client", "server"])
def test_keepalive_expiry(opener) -> None:
    conn, peer = opener(KEEPALIVE, now=NOW, peer_options=PLAIN)
    assert conn.poll_at() == NOW + 10 * SECOND  # armed when the connection opens
    probes = []
    while conn.state != State.CLOSED:
        at, out = expire(conn, peer)
        probes += [(at - NOW, flag_string(s.repr.flags), s.repr.seq, len(s.payload)) for s in out]
    probe = (".", sq.add(conn.snd_una, -1), 0)
    assert probes == [
        (10 * SECOND, *probe),
        (11 * SECOND, *probe),
        (12 * SECOND, *probe),
        (13 * SECOND, "R.", conn.snd_nxt, 0),
    ]
    assert isinstance(conn.error, TimeoutError)
    assert conn.events == ["closed"]
    assert conn.stats["tcp.keepalive_timeouts"] == 1


def test_keepalive_answered_keeps_the_connection() -> None:
    conn, peer = open_client(KEEPALIVE, now=NOW, peer_options=PLAIN)
    at, _ = expire(conn, peer)
    at, _ = expire(conn, peer)  # two probes unanswered
    peer.send(at + 5 * MS, ACK)  # then an answer
    assert conn.poll_at() == at + 5 * MS + 10 * SECOND
    for _ in range(3):
        at, _ = expire(conn, peer)
    assert conn.state == State.ESTABLISHED  # three fresh probes allowed again


def test_keepalive_set_on_an_open_connection() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    assert conn.poll_at() is None
    conn.set_keepalive(True, NOW + SECOND, keepalive_idle_ns=5 * SECOND)
    assert conn.poll_at() == NOW + 6 * SECOND
    conn.set_keepalive(False, NOW + SECOND)
    assert conn.poll_at() is None


# ----------------------------------------------------------------------
# The receive side


def quick_acks_done(config: TcpConfig | None = None) -> tuple[TcpConnection, ScriptedPeer]:
    conn, peer = open_server(config or TcpConfig(quickack_segments=2), now=NOW, peer_options=PLAIN)
    for _ in range(2):
        assert len(peer.send(NOW, ACK | PSH, b"q" * 100)) == 1
    conn.read()
    return conn, peer


def test_quick_ack_during_the_first_segments() -> None:
    conn, peer = open_server(TcpConfig(quickack_segments=4), now=NOW, peer_options=PLAIN)
    for i in range(4):
        out = peer.send(NOW, ACK | PSH, b"x" * 10)
        assert acks(out) == [(".", peer.seq, out[0].repr.window)], i
    assert peer.send(NOW, ACK | PSH, b"x" * 10) == []  # now delayed


def test_delayed_ack_every_second_full_segment() -> None:
    conn, peer = quick_acks_done()
    assert peer.send(NOW, ACK, b"a" * 1460) == []
    assert conn.poll_at() == NOW + 40 * MS
    out = peer.send(NOW + 1 * MS, ACK, b"b" * 1460)
    assert [(f, a) for f, a, _ in acks(out)] == [(".", peer.seq)]
    assert conn.poll_at() is None  # the ACK cancelled the delayed-ACK timer


def test_delayed_ack_within_40_ms() -> None:
    conn, peer = quick_acks_done()
    assert peer.send(NOW, ACK | PSH, b"small") == []
    assert peer.poll(NOW + 40 * MS - 1) == []
    out = peer.poll(NOW + 40 * MS)
    assert [(f, a) for f, a, _ in acks(out)] == [(".", peer.seq)]


def test_delayed_ack_configurable() -> None:
    conn, peer = quick_acks_done(TcpConfig(quickack_segments=2, delayed_ack_ns=5 * MS))
    peer.send(NOW, ACK | PSH, b"small")
    assert conn.poll_at() == NOW + 5 * MS


def test_data_we_send_carries_the_delayed_ack() -> None:
    conn, peer = quick_acks_done()
    peer.send(NOW, ACK | PSH, b"request")
    conn.send(b"response")
    (out,) = peer.take(NOW + 1 * MS)
    assert out.repr.ack == peer.seq and bytes(out.payload) == b"response"
    assert conn.poll_at() != NOW + 40 * MS


def test_out_of_order_data_gets_an_immediate_duplicate_ack_with_sack() -> None:
    conn, peer = quick_acks_done(TcpConfig(quickack_segments=2))
    conn.sack_enabled = True  # negotiated: see test_tcp_options for the handshake
    rcv_nxt = peer.seq
    (dup,) = peer.send(NOW, ACK, b"c" * 100, seq=sq.add(rcv_nxt, 200))
    assert dup.repr.ack == rcv_nxt
    assert dup.repr.options.sack_blocks == ((sq.add(rcv_nxt, 200), sq.add(rcv_nxt, 300)),)
    (dup,) = peer.send(NOW, ACK, b"e" * 100, seq=sq.add(rcv_nxt, 400))
    # The block of the segment that triggered the ACK comes first (RFC 2018 4).
    assert dup.repr.options.sack_blocks == (
        (sq.add(rcv_nxt, 400), sq.add(rcv_nxt, 500)),
        (sq.add(rcv_nxt, 200), sq.add(rcv_nxt, 300)),
    )
    (dup,) = peer.send(NOW, ACK, b"d" * 100, seq=sq.add(rcv_nxt, 300))
    assert dup.repr.options.sack_blocks == ((sq.add(rcv_nxt, 200), sq.add(rcv_nxt, 500)),)
    assert conn.read() == b""
    # The hole filled: everything is delivered, ACKed at once, no SACK left.
    (ack,) = peer.send(NOW, ACK, b"a" * 100 + b"b" * 100, seq=rcv_nxt)
    assert conn.read() == b"a" * 100 + b"b" * 100 + b"c" * 100 + b"d" * 100 + b"e" * 100
    assert ack.repr.ack == sq.add(rcv_nxt, 500)
    assert ack.repr.options.sack_blocks == ()
    assert conn._reassembly.size == 0


def test_reassembly_with_overlaps_and_duplicates() -> None:
    conn, peer = quick_acks_done()
    rcv_nxt = peer.seq
    stream = bytes(range(256)) * 8
    pieces = [(1000, 1500), (200, 700), (600, 1200), (1400, 2048), (0, 300), (100, 150)]
    for start, end in pieces:
        peer.send(NOW, ACK, stream[start:end], seq=sq.add(rcv_nxt, start))
    assert conn.read() == stream
    assert conn.rcv_nxt == sq.add(rcv_nxt, len(stream))


def test_an_out_of_order_fin_waits_for_the_data_before_it() -> None:
    conn, peer = quick_acks_done()
    rcv_nxt = peer.seq
    peer.send(NOW, ACK | FIN, b"world", seq=sq.add(rcv_nxt, 6))
    assert conn.state == State.ESTABLISHED
    out = peer.send(NOW, ACK, b"hello ", seq=rcv_nxt)
    assert conn.read() == b"hello world"
    assert conn.state == State.CLOSE_WAIT
    assert out[-1].repr.ack == sq.add(rcv_nxt, 12)


def test_duplicate_data_is_acked_at_once() -> None:
    conn, peer = quick_acks_done()
    peer.send(NOW, ACK | PSH, b"once")
    conn.read()
    out = peer.send(NOW, ACK | PSH, b"once", seq=sq.add(peer.seq, -4))
    assert [(f, a) for f, a, _ in acks(out)] == [(".", peer.seq)]
    assert conn.read() == b""


def window_edges(out: list[Segment], scale: int) -> list[int]:
    return [sq.add(s.repr.ack, s.repr.window << scale) for s in out if s.repr.flags & ACK]


def test_receive_window_never_shrinks_and_reopens_after_read() -> None:
    conn, peer = open_server(TcpConfig(recv_buffer=8 * 1460, quickack_segments=100), now=NOW, peer_options=PLAIN)
    edges = []
    # The application does not read: the window closes, its right edge stays.
    for _ in range(8):
        out = peer.send(NOW, ACK, b"z" * 1460)
        edges += window_edges(out, 0)
    assert out[-1].repr.window == 0
    assert all(sq.le(a, b) for a, b in zip(edges, edges[1:]))
    assert len(set(edges)) == 1
    # More data is outside the window: not taken, ACKed with the same edge.
    out = peer.send(NOW, ACK, b"!" * 100, advance=False)
    assert acks(out) == [(".", peer.seq, 0)]
    # Reading opens the window and announces it at once.
    assert len(conn.read()) == 8 * 1460
    out = peer.take(NOW)
    assert acks(out) == [(".", peer.seq, 8 * 1460)]


def test_zero_window_probe_is_answered() -> None:
    conn, peer = open_server(TcpConfig(recv_buffer=1460, quickack_segments=100), now=NOW, peer_options=PLAIN)
    peer.send(NOW, ACK, b"z" * 1460)
    # A probe: one byte beyond the closed window, or seq - 1.
    for seq in (peer.seq, sq.add(peer.seq, -1)):
        out = peer.send(NOW + SECOND, ACK, b"?", seq=seq, advance=False)
        assert acks(out) == [(".", peer.seq, 0)]
    assert conn.read() == b"z" * 1460


def test_small_reads_do_not_inch_the_window_open() -> None:
    # Receiver silly-window avoidance: a window update only once the window
    # can open by min(buffer / 2, 2 * MSS).
    conn, peer = open_server(TcpConfig(recv_buffer=64 * 1460, quickack_segments=100), now=NOW, peer_options=PLAIN)
    peer.send(NOW, ACK, b"z" * 100)
    conn.read()
    assert peer.take(NOW) == []


# ----------------------------------------------------------------------
# Nagle


def test_nagle_coalesces_small_writes_while_data_is_in_flight() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(b"a")
    assert [bytes(s.payload) for s in peer.take(NOW)] == [b"a"]  # nothing in flight: goes
    for byte in b"bcdef":
        conn.send(bytes([byte]))
        assert peer.take(NOW) == []
    out = peer.send(NOW + 10 * MS, ACK)
    assert [bytes(s.payload) for s in out] == [b"bcdef"]


def test_nagle_sends_full_segments_at_once() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(b"a")
    peer.take(NOW)
    conn.send(bytes(2 * 1460 + 10))
    assert [len(s.payload) for s in peer.take(NOW)] == [1460, 1460]


def test_nodelay_sends_small_writes_immediately() -> None:
    conn, peer = open_client(TcpConfig(nodelay=True), now=NOW, peer_options=PLAIN)
    for byte in b"abc":
        conn.send(bytes([byte]))
        assert [bytes(s.payload) for s in peer.take(NOW)] == [bytes([byte])]
    # TCP_NODELAY can be switched on an open connection (the transport does).
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(b"a")
    peer.take(NOW)
    conn.send(b"b")
    assert peer.take(NOW) == []
    conn.nodelay = True
    conn.send(b"c")
    assert [bytes(s.payload) for s in peer.take(NOW)] == [b"bc"]


def test_scaled_receive_window_edge_never_retreats_and_never_overcommits() -> None:
    # With a window scale the field counts units of 2**shift bytes. The edge
    # we accept up to never moves left (the peer may have sent up to it), and
    # never passes the end of the buffer; the peer may see it retract by less
    # than one unit when the window is not a multiple of the unit.
    options = TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(5000, 0))
    buffer = 1 << 20
    conn, peer = open_server(TcpConfig(recv_buffer=buffer, quickack_segments=1000), now=NOW, peer_options=options)
    scale = conn._rcv_wscale
    assert scale == 5
    start = peer.seq
    furthest = start
    for size in (100, 1000, 37, 1460, 5, 999, 31, 33):
        out = peer.send(NOW, ACK, b"w" * size, options=TcpOptions(timestamp=(5001, 0)))
        (edge,) = window_edges(out, scale)
        assert sq.gt(edge, sq.add(furthest, -(1 << scale)))  # retracted by less than one unit
        assert sq.sub(edge, start) <= buffer  # offered no more than the buffer holds
        furthest = edge if sq.gt(edge, furthest) else furthest
        assert sq.sub(sq.add(conn.rcv_nxt, conn._adv_right - conn._rcv_off), furthest) >= 0  # still accepted
    # Data up to the furthest edge ever offered is taken whole.
    peer.send(NOW, ACK, b"f" * sq.sub(furthest, peer.seq), options=TcpOptions(timestamp=(5001, 0)))
    assert conn.rcv_nxt == furthest
    assert conn.readable == sq.sub(furthest, start) <= buffer


def test_small_segments_and_reads_do_not_move_the_right_edge_by_less_than_an_mss() -> None:
    conn, peer = open_server(TcpConfig(recv_buffer=8 * 1460, quickack_segments=1000), now=NOW, peer_options=PLAIN)
    edges = []
    for _ in range(5):
        out = peer.send(NOW, ACK, b"s" * 100)
        conn.read()
        edges += window_edges(out, 0)
    # Each read freed 100 bytes: too little to open the window (RFC 9293
    # 3.8.6.2.2), so every ACK carries the same right edge ...
    assert len(set(edges)) == 1
    # ... until the opening is worth a segment (min(buffer/2, MSS) = 536
    # here): 600 bytes consumed when the seventh segment is ACKed.
    out = peer.send(NOW, ACK, b"s" * 100)
    assert window_edges(out, 0) == edges[:1]
    conn.read()
    out = peer.send(NOW, ACK, b"s" * 100)
    assert sq.sub(window_edges(out, 0)[0], edges[0]) == 600


def test_data_beyond_the_window_is_trimmed() -> None:
    conn, peer = open_server(TcpConfig(recv_buffer=1000, quickack_segments=1000), now=NOW, peer_options=PLAIN)
    out = peer.send(NOW, ACK, bytes(range(200)) * 7, advance=False)  # 1400 bytes into a 1000-byte window
    assert conn.read() == (bytes(range(200)) * 7)[:1000]
    assert out[-1].repr.ack == sq.add(peer.seq, 1000)


def test_data_after_the_application_closed_reading_resets() -> None:
    conn, peer = open_server(now=NOW, peer_options=PLAIN)
    conn.reading_closed = True
    conn.close(NOW)
    peer.take(NOW)
    out = peer.send(NOW, ACK | PSH, b"nobody will read this")
    assert [flag_string(s.repr.flags) for s in out] == ["R."]
    assert conn.state == State.CLOSED


def test_syn_ack_with_data() -> None:
    conn, peer = build(State.SYN_SENT, now=NOW)
    out = peer.send(NOW, SYN | ACK, b"early", options=PLAIN)
    assert conn.state == State.ESTABLISHED and conn.read() == b"early"
    assert out[-1].repr.ack == peer.seq


def test_send_into_a_zero_window_arms_the_persist_timer() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN, peer_window=0)
    conn.send(b"waiting")
    assert peer.take(NOW) == []
    assert conn.poll_at() == NOW + conn.rtt.current()
    at, out = expire(conn, peer)
    assert [(s.repr.seq, len(s.payload)) for s in out] == [(sq.add(conn.snd_una, -1), 0)]
    out = peer.send(at, ACK, window=1000)
    assert [bytes(s.payload) for s in out] == [b"waiting"]


def test_data_queued_before_the_handshake_completes() -> None:
    conn, peer = build(State.SYN_SENT, now=NOW)
    conn.send(b"GET / HTTP/1.0\r\n\r\n")
    out = peer.send(NOW, SYN | ACK, options=PLAIN)
    assert [bytes(s.payload) for s in out] == [b"GET / HTTP/1.0\r\n\r\n"]
    assert out[0].repr.ack == peer.seq


def test_a_window_shrunk_to_zero_under_data_in_flight_is_probed_not_timed_out() -> None:
    # RFC 1122 4.2.2.16: robust against window shrinking; probe a zero window
    # "in the standard way"; do not time out for data beyond the right edge.
    conn, peer = open_client(TcpConfig(max_retransmits=3), now=NOW, peer_options=PLAIN)
    conn.send(bytes(4 * 1460))
    peer.take(NOW)
    peer.send(NOW + 1 * MS, ACK, ack=sq.add(UNA, 2 * 1460), window=0)  # drops the other two
    probes = 0
    for _ in range(30):
        at, out = expire(conn, peer)
        for segment in out:
            assert not segment.payload and segment.repr.seq == sq.add(UNA, 2 * 1460 - 1)
            probes += 1
            peer.send(at + 1 * MS, ACK, ack=sq.add(UNA, 2 * 1460), window=0)
    assert conn.state == State.ESTABLISHED and probes > 3
    out = peer.send(at + 2 * MS, ACK, ack=sq.add(UNA, 2 * 1460), window=65535)
    assert [sq.sub(s.repr.seq, UNA) for s in data_segments(out)] == [2 * 1460, 3 * 1460]
    peer.send(at + 3 * MS, ACK, ack=sq.add(UNA, 4 * 1460))
    assert conn.buffered == 0 and conn.poll_at() is None


def test_one_duplicate_ack_per_out_of_order_segment_even_in_a_batch() -> None:
    # The stack handles a whole batch of frames before it dispatches. A
    # sender without SACK counts duplicate ACKs, so each out-of-order segment
    # still needs its own (RFC 5681 4.2).
    conn, peer = quick_acks_done()
    rcv_nxt = peer.seq
    for i in range(1, 4):
        conn.handle(peer.segment(ACK, seq=sq.add(rcv_nxt, 100 * i)), memoryview(b"o" * 100), NOW)
    out = peer.take(NOW)
    assert acks(out) == [(".", rcv_nxt, out[0].repr.window)] * 3


def test_no_duplicate_acks_owed_once_the_hole_is_filled_in_the_same_batch() -> None:
    conn, peer = quick_acks_done()
    rcv_nxt = peer.seq
    conn.handle(peer.segment(ACK, seq=sq.add(rcv_nxt, 100)), memoryview(b"o" * 100), NOW)
    conn.handle(peer.segment(ACK, seq=sq.add(rcv_nxt, 200)), memoryview(b"o" * 100), NOW)
    conn.handle(peer.segment(ACK, seq=rcv_nxt), memoryview(b"i" * 100), NOW)
    out = peer.take(NOW)
    # One ACK of everything: more copies would be duplicate ACKs of new data.
    assert [(f, a) for f, a, _ in acks(out)] == [(".", sq.add(rcv_nxt, 300))]
