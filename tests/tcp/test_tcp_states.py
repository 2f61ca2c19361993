"""The RFC 9293 state table, driven edge by edge through the public API.

Every ``(state, event)`` pair of ``states.TRANSITIONS`` is reached from a
connection built in ``state`` by scripted segments and API calls only, and
the event is triggered the way a peer or an application would trigger it.
Then: simultaneous open and close on a wire, RST in every state, and the
TIME-WAIT lifetime.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from netstack.tcp import seq as sq
from netstack.tcp.connection import MS, SECOND, TcpConfig, TcpConnection
from netstack.tcp.states import SYNCHRONIZED, TRANSITIONS, Event, LocalProtocolError, State, next_state
from netstack.tcp.testing import (
    OUR_ISS,
    PEER_OPTIONS,
    ScriptedPeer,
    build,
    flag_string,
    pair,
)
from netstack.wire.tcp import ACK, FIN, RST, SYN

S, E = State, Event
NOW = 5 * SECOND

Trigger = Callable[[TcpConnection, ScriptedPeer, int], None]


def exhaust(conn: TcpConnection, peer: ScriptedPeer, now: int) -> None:
    """Let every timer fire, answering nothing, until the connection gives up."""
    for _ in range(100):
        if conn.state == S.CLOSED:
            return
        at = conn.poll_at()
        assert at is not None, f"{conn.state} has no timer left and is not closed"
        now = max(now, at)
        peer.poll(now)
    raise AssertionError(f"still {conn.state} after 100 timer expiries")


def give_up(conn: TcpConnection, peer: ScriptedPeer, now: int) -> None:
    state = conn.state
    if state in (S.ESTABLISHED, S.CLOSE_WAIT):
        conn.send(b"never acknowledged")
        peer.take(now)
    elif state == S.FIN_WAIT_2:
        # Nothing of ours is outstanding; a peer that vanished is found by keepalive.
        conn.set_keepalive(True, now, keepalive_idle_ns=10 * SECOND, keepalive_interval_ns=SECOND, keepalive_count=3)
    exhaust(conn, peer, now)
    assert isinstance(conn.error, TimeoutError)


def rcv_rst(conn: TcpConnection, peer: ScriptedPeer, now: int) -> None:
    if conn.state == S.SYN_SENT:
        # RFC 9293 3.10.7.3: in SYN-SENT an RST is acceptable if it acknowledges our SYN.
        peer.send(now, RST | ACK, seq=0, ack=sq.add(OUR_ISS, 1))
    else:
        peer.send(now, RST, seq=conn.rcv_nxt)


def rcv_fin(conn: TcpConnection, peer: ScriptedPeer, now: int) -> None:
    if conn.state == S.FIN_WAIT_1:
        # The peer has not seen our FIN yet: simultaneous close.
        peer.send(now, FIN | ACK, ack=sq.add(peer.ack, -1))
    else:
        peer.send(now, FIN | ACK)


def listen_then_accept(conn: TcpConnection, peer: ScriptedPeer, now: int) -> None:
    conn.accept(peer.segment(SYN, options=PEER_OPTIONS), now)


TRIGGERS: dict[Event, Trigger] = {
    E.ACTIVE_OPEN: lambda conn, peer, now: conn.connect(now),
    E.PASSIVE_OPEN: listen_then_accept,
    E.RCV_SYN_ACK: lambda conn, peer, now: peer.send(now, SYN | ACK, options=PEER_OPTIONS),
    E.RCV_SYN: lambda conn, peer, now: peer.send(now, SYN, options=PEER_OPTIONS),
    E.RCV_ACK_OF_SYN: lambda conn, peer, now: peer.send(now, ACK),
    E.RCV_FIN: rcv_fin,
    E.RCV_ACK_OF_FIN: lambda conn, peer, now: peer.send(now, ACK),
    E.CLOSE: lambda conn, peer, now: conn.close(now),
    E.RCV_RST: rcv_rst,
    E.ABORT: lambda conn, peer, now: conn.abort(now),
    E.GIVE_UP: give_up,
    E.TIME_WAIT_EXPIRED: lambda conn, peer, now: conn.poll(now + conn.config.time_wait_ns),
}


@pytest.mark.parametrize(
    ("state", "event"), sorted(TRANSITIONS, key=lambda pair: (list(S).index(pair[0]), list(E).index(pair[1]))),
    ids=lambda value: value.name,
)
def test_every_transition_in_the_table(state: State, event: Event) -> None:
    conn, peer = build(state, now=NOW)
    TRIGGERS[event](conn, peer, NOW)
    assert conn.state == TRANSITIONS[(state, event)]
    if conn.state == S.CLOSED and state not in (S.CLOSED, S.TIME_WAIT):  # TIME-WAIT reported it on entry
        assert conn.events[-1] == "closed"


def test_the_table_refuses_what_it_does_not_have() -> None:
    with pytest.raises(LocalProtocolError, match="no transition from TIME-WAIT on active open"):
        next_state(S.TIME_WAIT, E.ACTIVE_OPEN)


def test_every_state_is_reachable_and_every_state_can_end() -> None:
    targets = {S.CLOSED} | set(TRANSITIONS.values())
    assert targets == set(S) - {S.LISTEN}  # LISTEN is the layer's, entered by no event
    for state in S:
        if state != S.CLOSED:
            assert (state, E.ABORT) in TRANSITIONS


# ----------------------------------------------------------------------
# Opening and closing, segment by segment


def test_active_open_segments() -> None:
    conn, peer = build(S.CLOSED, now=NOW)
    conn.connect(NOW)
    (syn,) = peer.take(NOW)
    assert (flag_string(syn.repr.flags), syn.repr.seq, syn.repr.ack) == ("S", OUR_ISS, 0)
    assert conn.poll_at() == NOW + SECOND  # the initial RTO
    (ack,) = peer.send(NOW + 10 * MS, SYN | ACK, options=PEER_OPTIONS)
    assert (flag_string(ack.repr.flags), ack.repr.seq, ack.repr.ack) == (".", OUR_ISS + 1, peer.seq)
    assert conn.events == ["connected"]
    assert conn.rtt.srtt == 10 * MS


def test_passive_open_segments() -> None:
    conn, peer = build(S.SYN_RECEIVED, now=NOW)
    assert conn.snd_nxt == sq.add(OUR_ISS, 1)
    assert peer.send(NOW + 3 * MS, ACK) == []
    assert conn.state == S.ESTABLISHED and conn.events == ["connected"]
    assert conn.rtt.srtt == 3 * MS


def test_lost_syn_ack_is_resent_on_a_retransmitted_syn() -> None:
    conn, peer = build(S.SYN_RECEIVED, now=NOW)
    (again,) = peer.send(NOW + 100 * MS, SYN, seq=sq.add(peer.seq, -1), options=PEER_OPTIONS)
    assert flag_string(again.repr.flags) == "S." and again.repr.seq == OUR_ISS
    assert conn.state == S.SYN_RECEIVED


def test_syn_received_bad_ack_is_answered_with_reset() -> None:
    conn, peer = build(S.SYN_RECEIVED, now=NOW)
    (rst,) = peer.send(NOW, ACK, ack=sq.add(OUR_ISS, 5000))
    assert (flag_string(rst.repr.flags), rst.repr.seq) == ("R", sq.add(OUR_ISS, 5000))
    assert conn.state == S.SYN_RECEIVED


def test_syn_sent_bad_ack_is_answered_with_reset_and_ignored() -> None:
    conn, peer = build(S.SYN_SENT, now=NOW)
    (rst,) = peer.send(NOW, SYN | ACK, ack=12345, options=PEER_OPTIONS)
    assert (flag_string(rst.repr.flags), rst.repr.seq) == ("R", 12345)
    assert conn.state == S.SYN_SENT
    # ... and an RST that does not acknowledge our SYN is ignored.
    assert peer.send(NOW, RST | ACK, ack=12345) == []
    assert conn.state == S.SYN_SENT


def test_refused_connect() -> None:
    conn, peer = build(S.SYN_SENT, now=NOW)
    assert peer.send(NOW, RST | ACK, seq=0, ack=sq.add(OUR_ISS, 1)) == []
    assert conn.state == S.CLOSED
    assert isinstance(conn.error, ConnectionRefusedError)
    assert conn.events == ["closed"]


def test_close_in_syn_received_sends_fin_once_established() -> None:
    conn, peer = build(S.SYN_RECEIVED, now=NOW)
    conn.close(NOW)
    assert conn.state == S.SYN_RECEIVED  # RFC 9293 3.10.4: queued until ESTABLISHED
    out = peer.send(NOW, ACK)
    assert conn.state == S.FIN_WAIT_1
    assert [flag_string(s.repr.flags) for s in out] == ["F."]
    assert out[0].repr.seq == sq.add(OUR_ISS, 1)


def test_simultaneous_open_on_a_wire() -> None:
    wire = pair()
    a, b = wire.a, wire.b
    wire.listening.clear()
    # Both sides connect; the SYNs cross.
    b.connect(0)
    a.connect(0)
    wire.run(lambda: a.state == b.state == S.ESTABLISHED)
    flags = [(entry.direction, flag_string(entry.segment.repr.flags)) for entry in wire.log]
    assert flags[:4] == [("a>b", "S"), ("b>a", "S"), ("a>b", "S."), ("b>a", "S.")]
    assert a.events == b.events == ["connected"]
    a.send(b"hello")
    b.send(b"world")
    wire.run(lambda: a.readable and b.readable)
    assert (a.read(), b.read()) == (b"world", b"hello")


def test_simultaneous_close_on_a_wire() -> None:
    wire = pair()
    wire.a.connect(0)
    wire.run(lambda: wire.a.state == wire.b.state == S.ESTABLISHED)
    a, b = wire.a, wire.b
    a.close(wire.now)
    b.close(wire.now)
    wire.run(lambda: a.state == b.state == S.TIME_WAIT)
    fins = [entry for entry in wire.log if entry.segment.repr.flags & FIN]
    assert [entry.direction for entry in fins] == ["a>b", "b>a"]
    assert fins[0].at == fins[1].at  # they crossed: both went through CLOSING
    for conn in (a, b):  # ... the ACK of our FIN may be reported ("acked") after "eof"
        assert conn.events[-1] == "closed" and "eof" in conn.events and "data" not in conn.events
    start = wire.now
    wire.run(lambda: a.state == b.state == S.CLOSED)
    assert wire.now - start <= a.config.time_wait_ns + 2 * MS


def test_half_close_keeps_receiving() -> None:
    conn, peer = build(S.FIN_WAIT_2, now=NOW)
    out = peer.send(NOW, ACK | FIN, b"late data")
    assert conn.read() == b"late data"
    assert conn.state == S.TIME_WAIT
    assert [(flag_string(s.repr.flags), s.repr.ack) for s in out] == [(".", peer.seq)]


def test_close_wait_can_still_send() -> None:
    conn, peer = build(S.CLOSE_WAIT, now=NOW)
    conn.send(b"reply")
    (data,) = peer.take(NOW)
    assert bytes(data.payload) == b"reply"
    conn.close(NOW)
    (fin,) = peer.take(NOW)
    assert flag_string(fin.repr.flags) == "F." and fin.repr.seq == sq.add(OUR_ISS, 1 + 5)
    peer.send(NOW, ACK)
    assert conn.state == S.CLOSED and conn.error is None
    assert conn.events[-1] == "closed"


def test_fin_rides_on_the_last_data_segment() -> None:
    conn, peer = build(S.ESTABLISHED, now=NOW)
    conn.send(b"bye")
    conn.close(NOW)
    (seg,) = peer.take(NOW)
    assert flag_string(seg.repr.flags) == "FP." and bytes(seg.payload) == b"bye"


def test_send_after_close_is_refused() -> None:
    conn, _ = build(S.FIN_WAIT_1, now=NOW)
    with pytest.raises(BrokenPipeError):
        conn.send(b"x")


def test_fin_wait_2_times_out_once_the_application_has_closed() -> None:
    conn, peer = build(S.FIN_WAIT_1, TcpConfig(fin_wait_2_ns=30 * SECOND), now=NOW)
    conn.reading_closed = True
    peer.send(NOW, ACK)
    assert conn.state == S.FIN_WAIT_2
    assert conn.poll_at() == NOW + 30 * SECOND
    conn.poll(NOW + 30 * SECOND - 1)
    assert conn.state == S.FIN_WAIT_2
    conn.poll(NOW + 30 * SECOND)
    assert conn.state == S.CLOSED and conn.events[-1] == "closed"


# ----------------------------------------------------------------------
# RST in every state


@pytest.mark.parametrize("state", sorted(SYNCHRONIZED | {S.SYN_RECEIVED}, key=list(S).index), ids=lambda s: s.name)
def test_exact_rst_resets_in_every_state(state: State) -> None:
    conn, peer = build(state, now=NOW)
    assert peer.send(NOW, RST, seq=conn.rcv_nxt) == []
    assert conn.state == S.CLOSED
    assert conn.events == ([] if state == S.TIME_WAIT else ["closed"])  # TIME-WAIT reported it on entry
    if state in (S.CLOSING, S.LAST_ACK, S.TIME_WAIT):
        assert conn.error is None  # our FIN was sent: a reset there loses nothing
    else:
        assert isinstance(conn.error, ConnectionResetError)
    assert conn.poll_at() is None and conn.dispatch(NOW) == []


@pytest.mark.parametrize("state", sorted(SYNCHRONIZED | {S.SYN_RECEIVED}, key=list(S).index), ids=lambda s: s.name)
def test_out_of_window_rst_is_ignored_in_every_state(state: State) -> None:
    conn, peer = build(state, now=NOW)
    assert peer.send(NOW, RST, seq=sq.add(conn.rcv_nxt, -100)) == []
    assert peer.send(NOW, RST, seq=sq.add(conn.rcv_nxt, 1 << 30)) == []
    assert conn.state == state


@pytest.mark.parametrize("state", [S.CLOSED, S.LISTEN, S.SYN_SENT], ids=lambda s: s.name)
def test_rst_without_ack_is_ignored_where_nothing_is_synchronized(state: State) -> None:
    conn, peer = build(state, now=NOW)
    assert peer.send(NOW, RST, seq=0) == []
    assert conn.state == state


@pytest.mark.parametrize("state", sorted(SYNCHRONIZED | {S.SYN_RECEIVED}, key=list(S).index), ids=lambda s: s.name)
def test_abort_sends_rst_in_every_synchronized_state(state: State) -> None:
    conn, peer = build(state, now=NOW)
    conn.abort(NOW)
    (rst,) = peer.take(NOW)
    assert flag_string(rst.repr.flags) == "R."
    assert rst.repr.seq == conn.snd_nxt  # ISS + 1 in SYN-RECEIVED
    assert conn.state == S.CLOSED and conn.error is None


def test_abort_in_syn_sent_is_silent() -> None:
    conn, peer = build(S.SYN_SENT, now=NOW)
    conn.abort(NOW)
    assert peer.take(NOW) == [] and conn.state == S.CLOSED


# ----------------------------------------------------------------------
# TIME-WAIT


@pytest.mark.parametrize("lifetime", [1 * SECOND, 60 * SECOND, 5 * MS])
def test_time_wait_lifetime_is_configurable(lifetime: int) -> None:
    conn, peer = build(S.TIME_WAIT, TcpConfig(time_wait_ns=lifetime), now=NOW)
    assert conn.events == [] and conn.poll_at() == NOW + lifetime
    conn.poll(NOW + lifetime - 1)
    assert conn.state == S.TIME_WAIT
    conn.poll(NOW + lifetime)
    assert conn.state == S.CLOSED and conn.error is None


def test_time_wait_reports_closed_on_entry() -> None:
    conn, peer = build(S.FIN_WAIT_2, now=NOW)
    peer.send(NOW, FIN | ACK)
    assert conn.events == ["eof", "closed"]
    conn.events.clear()
    conn.poll(NOW + conn.config.time_wait_ns)
    assert conn.events == []  # reported once


def test_time_wait_acks_a_retransmitted_fin_and_restarts_the_timer() -> None:
    conn, peer = build(S.TIME_WAIT, TcpConfig(time_wait_ns=10 * SECOND), now=NOW)
    later = NOW + 4 * SECOND
    (ack,) = peer.send(later, FIN | ACK, seq=sq.add(peer.seq, -1))
    assert (flag_string(ack.repr.flags), ack.repr.ack) == (".", peer.seq)
    assert conn.poll_at() == later + 10 * SECOND


def test_time_wait_sends_no_data_and_no_retransmissions() -> None:
    conn, peer = build(S.TIME_WAIT, now=NOW)
    assert conn.poll_at() == NOW + conn.config.time_wait_ns
    assert peer.take(NOW + SECOND) == []


def test_fin_wait_2_without_a_close_waits_for_the_peer_indefinitely() -> None:
    # Half close: the peer may keep sending for as long as it likes. Nothing
    # of ours is outstanding, so no timer may run (no retransmission timer
    # that would end in a give-up), and our ACKs carry SND.NXT past the FIN.
    conn, peer = build(S.FIN_WAIT_2, now=NOW)
    assert conn.poll_at() is None
    later = NOW + 3600 * SECOND
    (ack,) = peer.send(later, ACK, b"still talking")
    assert conn.state == S.FIN_WAIT_2
    assert (ack.repr.seq, ack.repr.ack) == (sq.add(OUR_ISS, 2), peer.seq)


def test_close_after_a_half_close_arms_the_fin_wait_2_timer() -> None:
    # write_eof took us to FIN-WAIT-2; the application then closes for good
    # (the transport sets reading_closed first). A peer that never sends
    # its FIN must not keep the orphan for ever.
    conn, peer = build(State.FIN_WAIT_2, TcpConfig(fin_wait_2_ns=30 * SECOND), now=NOW)
    assert conn.poll_at() is None
    later = NOW + 5 * SECOND
    conn.reading_closed = True
    conn.close(later)
    assert conn.poll_at() == later + 30 * SECOND
    conn.poll(later + 30 * SECOND)
    assert conn.state == S.CLOSED


def test_a_core_in_listen_ignores_segments() -> None:
    # Listeners live in the layer; a core in LISTEN leaves it only by accept().
    # (Found by the hostile-input test: an RST used to ask the table for a
    # LISTEN transition it does not have.)
    for flags in (RST, RST | ACK, ACK, FIN | ACK, SYN):
        conn, peer = build(S.LISTEN, now=NOW)
        assert peer.send(NOW, flags, seq=conn.rcv_nxt, options=PEER_OPTIONS) == []
        assert conn.state == S.LISTEN
