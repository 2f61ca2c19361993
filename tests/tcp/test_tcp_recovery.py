"""Loss recovery at virtual time: RTO (RFC 6298), fast retransmit and NewReno
(RFC 5681, RFC 6582), SACK-driven recovery (RFC 6675), against a scripted peer."""

from __future__ import annotations

import pytest

from netstack.tcp import seq as sq
from netstack.tcp.connection import MS, SECOND, Segment, TcpConfig, TcpConnection
from netstack.tcp.states import State
from netstack.tcp.testing import OUR_ISS, ScriptedPeer, build, data_segments, flag_string, open_client
from netstack.wire.tcp import ACK, PSH, SYN, TcpOptions

NOW = 1 * SECOND
PLAIN = TcpOptions(mss=1460)  # no timestamps, no SACK: 1460-byte payloads
SACK_TS = TcpOptions(mss=1460, sack_permitted=True, timestamp=(5000, 0))
UNA = sq.add(OUR_ISS, 1)


def seqs(out: list[Segment]) -> list[int]:
    return [sq.sub(segment.repr.seq, UNA) for segment in data_segments(out)]


def expire(conn: TcpConnection, peer: ScriptedPeer) -> tuple[int, list[Segment]]:
    """Move to the next deadline and run it."""
    at = conn.poll_at()
    assert at is not None
    return at, peer.poll(at)


# ----------------------------------------------------------------------
# RTO


def test_rto_retransmits_the_first_segment_with_exponential_back_off() -> None:
    conn, peer = open_client(TcpConfig(rto_initial_ns=SECOND), now=NOW, peer_options=PLAIN)
    conn.send(bytes(2 * 1460))
    sent = NOW + 10 * MS
    assert seqs(peer.take(sent)) == [0, 1460]
    # The handshake measured 0 ns: RTO = max(200 ms, SRTT + 4 RTTVAR) = 200 ms.
    assert conn.poll_at() == sent + 200 * MS
    times = []
    for _ in range(5):
        at, out = expire(conn, peer)
        times.append(at - sent)
        assert seqs(out) == [0]  # cwnd is one segment after a timeout
    assert times == [200 * MS, 600 * MS, 1400 * MS, 3000 * MS, 6200 * MS]
    assert conn.stats["tcp.rto_expired"] == 5
    # The ACK ends the back-off's retransmissions; the second segment follows
    # (cwnd grew by the one segment ACKed).
    at = times[-1] + sent
    out = peer.send(at + 5 * MS, ACK, ack=sq.add(UNA, 1460))
    assert seqs(out) == [1460]


def test_rto_minimum_is_200_ms() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(b"x")
    peer.take(NOW)
    peer.send(NOW + 1 * MS, ACK)  # a 1 ms RTT sample
    assert conn.rtt.srtt is not None and conn.rtt.srtt < 2 * MS
    conn.send(b"y")
    peer.take(NOW + 1 * MS)
    assert conn.poll_at() == NOW + 1 * MS + 200 * MS


def test_rto_follows_the_measured_rtt() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    t = NOW
    for _ in range(40):  # the handshake's 0 ns sample decays by (7/8)**n
        conn.send(b"x")
        peer.take(t)
        t += 300 * MS
        peer.send(t, ACK)
    assert abs(conn.rtt.srtt - 300 * MS) < 20 * MS
    conn.send(b"x")
    peer.take(t)
    assert 300 * MS < conn.poll_at() - t < 500 * MS


def test_karn_no_rtt_sample_from_a_retransmitted_segment() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(b"x" * 100)
    peer.take(NOW)
    srtt = conn.rtt.srtt
    at, out = expire(conn, peer)
    assert seqs(out) == [0]
    # The ACK arrives 50 ms after the retransmission (250 ms after the
    # original): ambiguous, so no sample, and the back-off stays.
    peer.send(at + 50 * MS, ACK)
    assert conn.rtt.srtt == srtt
    assert conn.rtt.backoff == 1
    # The next segment is new: its ACK is a valid sample and ends the back-off.
    conn.send(b"y")
    peer.take(at + 50 * MS)
    peer.send(at + 80 * MS, ACK)
    assert conn.rtt.backoff == 0
    assert conn.rtt.srtt == (7 * srtt + 30 * MS) // 8


def test_give_up_after_max_retransmits() -> None:
    conn, peer = open_client(TcpConfig(max_retransmits=3), now=NOW, peer_options=PLAIN)
    conn.send(b"hello")
    peer.take(NOW)
    retransmissions = 0
    while conn.state != State.CLOSED:
        _, out = expire(conn, peer)
        retransmissions += len(data_segments(out))
    assert retransmissions == 3
    assert isinstance(conn.error, TimeoutError)
    assert conn.events == ["closed"]
    assert conn.poll_at() is None and conn.dispatch(NOW + 3600 * SECOND) == []


@pytest.mark.parametrize("active", [True, False], ids=["SYN", "SYN-ACK"])
def test_syn_retries(active: bool) -> None:
    config = TcpConfig(syn_retries=4, rto_initial_ns=SECOND)
    conn, peer = build(State.SYN_SENT if active else State.SYN_RECEIVED, config, now=NOW)
    sent = []
    while conn.state != State.CLOSED:
        at, out = expire(conn, peer)
        sent += [(at - NOW, flag_string(segment.repr.flags), segment.repr.seq) for segment in out]
    flags = "S" if active else "S."
    assert sent == [(t * SECOND, flags, OUR_ISS) for t in (1, 3, 7, 15)]
    assert isinstance(conn.error, TimeoutError) and conn.events[-1] == "closed"


def test_syn_retransmission_gives_no_rtt_sample() -> None:
    conn, peer = build(State.SYN_SENT, now=NOW)
    at, _ = expire(conn, peer)
    peer.send(at + 10 * MS, SYN | ACK, options=PLAIN)
    assert conn.state == State.ESTABLISHED
    assert conn.rtt.srtt is None  # Karn: which SYN did it answer?


def test_fin_is_retransmitted() -> None:
    conn, peer = build(State.FIN_WAIT_1, now=NOW)
    at, out = expire(conn, peer)
    assert [(flag_string(s.repr.flags), s.repr.seq) for s in out] == [("F.", UNA)]
    peer.send(at, ACK)
    assert conn.state == State.FIN_WAIT_2


# ----------------------------------------------------------------------
# Fast retransmit and NewReno (no SACK)


def test_fast_retransmit_on_the_third_duplicate_ack() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(bytes(10 * 1460))
    assert seqs(peer.take(NOW)) == [i * 1460 for i in range(10)]
    # Segment 0 is lost; 1, 2 and 3 each bring a duplicate ACK.
    assert peer.send(NOW + 1 * MS, ACK, ack=UNA) == []
    assert peer.send(NOW + 1 * MS, ACK, ack=UNA) == []
    out = peer.send(NOW + 1 * MS, ACK, ack=UNA)
    assert [(flag_string(s.repr.flags), sq.sub(s.repr.seq, UNA), len(s.payload)) for s in out] == [(".", 0, 1460)]
    assert conn.stats["tcp.fast_retransmits"] == 1
    # More duplicate ACKs do not retransmit again.
    for _ in range(6):
        assert seqs(peer.send(NOW + 1 * MS, ACK, ack=UNA)) == []
    assert conn.congestion.ssthresh == 5 * 1460
    # The ACK of everything ends recovery: cwnd = ssthresh.
    peer.send(NOW + 2 * MS, ACK, ack=sq.add(UNA, 10 * 1460))
    assert conn.congestion.cwnd == 5 * 1460
    assert "tcp.rto_expired" not in conn.stats


def test_a_window_update_is_not_a_duplicate_ack() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(bytes(10 * 1460))
    peer.take(NOW)
    for window in (30000, 40000, 50000):
        assert peer.send(NOW, ACK, ack=UNA, window=window) == []
    assert "tcp.fast_retransmits" not in conn.stats


def test_duplicate_acks_with_data_do_not_count() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(bytes(10 * 1460))
    peer.take(NOW)
    for _ in range(4):
        peer.send(NOW, ACK, b"request", ack=UNA)
    assert "tcp.fast_retransmits" not in conn.stats


def test_newreno_partial_ack_retransmits_the_next_hole() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(bytes(10 * 1460))
    peer.take(NOW)
    # Segments 0 and 4 are lost. 1..3 bring three duplicate ACKs.
    out = []
    for _ in range(3):
        out += peer.send(NOW + 1 * MS, ACK, ack=UNA)
    assert seqs(out) == [0]
    for _ in range(5):  # 5..9
        assert seqs(peer.send(NOW + 1 * MS, ACK, ack=UNA)) == []
    # The retransmitted 0 fills up to 4: a partial ACK (RFC 6582 3.2 step 3)
    # retransmits the first unacknowledged segment at once.
    out = peer.send(NOW + 2 * MS, ACK, ack=sq.add(UNA, 4 * 1460))
    assert seqs(out) == [4 * 1460]
    assert conn._in_recovery
    # The full ACK ends recovery, without a timeout.
    peer.send(NOW + 3 * MS, ACK, ack=sq.add(UNA, 10 * 1460))
    assert not conn._in_recovery
    assert "tcp.rto_expired" not in conn.stats
    assert conn.retransmitted_segments == 2


# ----------------------------------------------------------------------
# SACK


class SackReceiver:
    """What a SACK-capable receiver answers to each data segment (RFC 2018 4)."""

    def __init__(self, peer: ScriptedPeer) -> None:
        self.peer = peer
        self.held: list[list[int]] = []  # merged [start, end) offsets above the cumulative ACK
        self.cumulative = 0
        self.recent: list[int] = []

    def receive(self, now: int, segment: Segment) -> list[Segment]:
        start = sq.sub(segment.repr.seq, UNA)
        end = start + len(segment.payload)
        if start <= self.cumulative:
            self.cumulative = max(self.cumulative, end)
        else:
            self.held.append([start, end])
            self.recent.insert(0, start)
        merged: list[list[int]] = []
        for block in sorted(self.held):
            if merged and merged[-1][1] >= block[0]:
                merged[-1][1] = max(merged[-1][1], block[1])
            else:
                merged.append(list(block))
        while merged and merged[0][0] <= self.cumulative:
            self.cumulative = max(self.cumulative, merged.pop(0)[1])
        self.held = merged
        ordered: list[list[int]] = []
        for offset in self.recent:
            for block in merged:
                if block[0] <= offset < block[1] and block not in ordered:
                    ordered.append(block)
        blocks = tuple((sq.add(UNA, a), sq.add(UNA, b)) for a, b in ordered[:3])
        return self.peer.send(
            now, ACK, ack=sq.add(UNA, self.cumulative), options=TcpOptions(sack_blocks=blocks, timestamp=(6000, 0))
        )


def grow_cwnd(conn: TcpConnection, peer: ScriptedPeer, segments: int, now: int) -> None:
    """Slow start: one ACK per segment until cwnd holds ``segments``."""
    mss = conn._payload_mss()
    while conn.congestion.cwnd < segments * mss + 1000:
        conn.send(bytes(mss))
        for segment in data_segments(peer.take(now)):
            peer.send(now, ACK, ack=sq.add(segment.repr.seq, len(segment.payload)), options=TcpOptions(timestamp=(6000, 0)))


def test_sack_recovers_three_losses_in_one_window_without_a_timeout() -> None:
    conn, peer = open_client(now=NOW, peer_options=SACK_TS)
    assert conn.sack_enabled and conn.ts_enabled
    mss = conn._payload_mss()
    assert mss == 1448
    grow_cwnd(conn, peer, 20, NOW)
    base = sq.sub(conn.snd_una, UNA)
    receiver = SackReceiver(peer)
    receiver.cumulative = base
    conn.send(bytes(20 * mss))
    window = data_segments(peer.take(NOW))
    assert len(window) == 20 and all(len(s.payload) == mss for s in window)
    lost = {3, 9, 15}
    retransmitted: list[int] = []
    t = NOW + 10 * MS
    for index, segment in enumerate(window):
        if index in lost:
            continue
        out = receiver.receive(t, segment)
        retransmitted += [(index, (sq.sub(s.repr.seq, UNA) - base) // mss) for s in data_segments(out)]
    # RFC 6675 IsLost: more than 2 * SMSS SACKed above a hole. The
    # retransmissions go while the window's SACKs are still arriving and
    # reach the receiver after them.
    # Only the holes, in order, each once, each on the third SACK above it.
    assert retransmitted == [(6, 3), (12, 9), (18, 15)]
    assert conn.stats["tcp.fast_retransmits"] == 1  # one recovery episode
    for _, index in retransmitted:
        out = receiver.receive(t + 10 * MS, window[index])
        assert data_segments(out) == []
    assert conn.snd_una == sq.add(UNA, base + 20 * mss)
    assert not conn._in_recovery
    assert "tcp.rto_expired" not in conn.stats
    assert conn.retransmitted_segments == 3


def test_sack_blocks_beyond_what_was_sent_are_ignored() -> None:
    conn, peer = open_client(now=NOW, peer_options=SACK_TS)
    conn.send(bytes(4 * 1448))
    peer.take(NOW)
    bogus = ((sq.add(UNA, 10_000), sq.add(UNA, 20_000)), (sq.add(UNA, -5000), UNA))
    for _ in range(3):
        peer.send(NOW, ACK, ack=UNA, options=TcpOptions(sack_blocks=bogus, timestamp=(6000, 0)))
    assert not conn._scoreboard


def test_rto_forgets_sack_information() -> None:
    conn, peer = open_client(now=NOW, peer_options=SACK_TS)
    conn.send(bytes(4 * 1448))
    peer.take(NOW)
    block = ((sq.add(UNA, 1448), sq.add(UNA, 2 * 1448)),)
    peer.send(NOW, ACK, ack=UNA, options=TcpOptions(sack_blocks=block, timestamp=(6000, 0)))
    assert conn._scoreboard
    expire(conn, peer)
    assert not conn._scoreboard  # RFC 2018 8: the receiver may have reneged


def test_ack_of_the_fin_after_a_spurious_timeout() -> None:
    # The timeout fires while the peer's ACK of everything (FIN included) is
    # still on its way; only the first segment is resent (cwnd is one
    # segment). The late ACK must still count as the ACK of our FIN.
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(bytes(3 * 1460))
    conn.close(NOW)
    out = peer.take(NOW)
    assert [flag_string(s.repr.flags) for s in out] == [".", ".", "FP."]
    at, out = expire(conn, peer)
    assert seqs(out) == [0]
    out = peer.send(at + 1 * MS, ACK, ack=sq.add(UNA, 3 * 1460 + 1))
    assert out == []
    assert conn.state == State.FIN_WAIT_2
    assert conn.buffered == 0
    assert conn.poll_at() is None


def test_pure_acks_carry_snd_max_after_a_timeout() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(bytes(3 * 1460))
    peer.take(NOW)
    at, out = expire(conn, peer)
    assert seqs(out) == [0]  # went back to SND.UNA
    # The peer has all three segments (its ACKs were lost) and sends data.
    out = peer.send(at + 1 * MS, ACK | PSH, b"reply", ack=UNA)
    assert [(flag_string(s.repr.flags), s.repr.seq) for s in out] == [(".", sq.add(UNA, 3 * 1460))]
