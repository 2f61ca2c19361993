"""RFC 5961 with a scripted peer, in the manner of mirage-tcpip's test_rfc5961.ml:
blind RST, blind SYN and blind data injection against an ESTABLISHED connection."""

from __future__ import annotations

import pytest

from netstack.tcp import seq as sq
from netstack.tcp.connection import MS, SECOND, Segment, TcpConfig
from netstack.tcp.states import State
from netstack.tcp.testing import OUR_ISS, build, flag_string, open_client
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, TcpOptions

NOW = 1 * SECOND
PLAIN = TcpOptions(mss=1460)


def summary(out: list[Segment]) -> list[tuple[str, int, int, int]]:
    return [(flag_string(s.repr.flags), s.repr.seq, s.repr.ack, len(s.payload)) for s in out]


def challenge(conn) -> tuple[str, int, int, int]:
    """RFC 5961 3.2: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>."""
    return (".", conn.snd_nxt, conn.rcv_nxt, 0)


# ----------------------------------------------------------------------
# Blind RST (section 3)


@pytest.mark.parametrize("offset", [1, 100, 30000, 65534])
def test_rst_in_window_but_not_exact_gets_a_challenge_ack(offset: int) -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    out = peer.send(NOW, RST, seq=sq.add(conn.rcv_nxt, offset))
    assert summary(out) == [challenge(conn)]
    assert conn.state == State.ESTABLISHED and conn.events == []
    assert conn.stats["tcp.rst_challenged"] == 1


def test_rst_in_window_with_ack_gets_a_challenge_ack_too() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    out = peer.send(NOW, RST | ACK, seq=sq.add(conn.rcv_nxt, 10))
    assert summary(out) == [challenge(conn)]
    assert conn.state == State.ESTABLISHED


def test_rst_out_of_window_is_dropped_silently() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    for seq in (sq.add(conn.rcv_nxt, -1), sq.add(conn.rcv_nxt, 1 << 20), sq.add(conn.rcv_nxt, 1 << 31)):
        assert peer.send(NOW, RST, seq=seq) == []
    assert conn.state == State.ESTABLISHED
    assert conn.stats["tcp.rst_out_of_window"] == 3


def test_exact_rst_resets() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    assert peer.send(NOW, RST, seq=conn.rcv_nxt) == []
    assert conn.state == State.CLOSED
    assert isinstance(conn.error, ConnectionResetError)
    assert conn.events == ["closed"]


def test_the_peer_answers_the_challenge_with_an_exact_rst() -> None:
    # The legitimate case RFC 5961 keeps working: a peer that really lost
    # its state receives our challenge ACK and answers with RST at SEG.ACK.
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    (ack,) = peer.send(NOW, RST, seq=sq.add(conn.rcv_nxt, 5))
    peer.send(NOW + 1 * MS, RST, seq=ack.repr.ack)
    assert conn.state == State.CLOSED


# ----------------------------------------------------------------------
# Blind SYN (section 4)


@pytest.mark.parametrize(
    "state", [State.ESTABLISHED, State.FIN_WAIT_1, State.FIN_WAIT_2, State.CLOSE_WAIT, State.CLOSING, State.LAST_ACK]
)
def test_in_window_syn_in_a_synchronized_state_gets_a_challenge_ack(state: State) -> None:
    conn, peer = build(state, now=NOW)
    out = peer.send(NOW, SYN, seq=sq.add(conn.rcv_nxt, 10), options=PLAIN, advance=False)
    assert summary(out) == [challenge(conn)]
    assert conn.state == state
    assert conn.stats["tcp.challenge_acks"] == 1


def test_syn_at_rcv_nxt_gets_a_challenge_ack() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    out = peer.send(NOW, SYN | ACK, seq=conn.rcv_nxt, options=PLAIN, advance=False)
    assert summary(out) == [challenge(conn)]
    assert conn.state == State.ESTABLISHED


def test_out_of_window_syn_is_acked_and_dropped() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    out = peer.send(NOW, SYN, seq=sq.add(conn.rcv_nxt, 1 << 30), options=PLAIN, advance=False)
    assert summary(out) == [challenge(conn)]
    assert conn.state == State.ESTABLISHED


def test_syn_with_data_is_not_delivered() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    peer.send(NOW, SYN, b"injected", seq=conn.rcv_nxt, options=PLAIN, advance=False)
    assert conn.read() == b"" and conn.state == State.ESTABLISHED


# ----------------------------------------------------------------------
# Blind data injection (section 5)


def established_with_data_in_flight():
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    conn.send(b"x" * 1000)
    peer.take(NOW)  # not acknowledged yet: SND.UNA = ISS + 1, SND.NXT = ISS + 1001
    return conn, peer


@pytest.mark.parametrize(
    "ack_offset",
    [-70_000, -(1 << 30), (1 << 31) - 1],
    ids=["just-too-old", "far-too-old", "half-space-away"],
)
def test_data_with_an_ack_too_old_is_dropped_with_a_challenge_ack(ack_offset: int) -> None:
    conn, peer = established_with_data_in_flight()
    una = sq.add(OUR_ISS, 1)
    out = peer.send(NOW, ACK | PSH, b"injected", ack=sq.add(una, ack_offset), advance=False)
    assert conn.read() == b""
    assert conn.events == []
    assert summary(out) == [challenge(conn)]


def test_data_with_an_ack_of_unsent_data_is_dropped_and_acked() -> None:
    conn, peer = established_with_data_in_flight()
    out = peer.send(NOW, ACK | PSH, b"injected", ack=sq.add(OUR_ISS, 1 + 1000 + 1), advance=False)
    assert conn.read() == b""
    assert summary(out) == [challenge(conn)]
    assert conn.buffered == 1000  # nothing was taken as acknowledged


def test_data_with_an_old_but_acceptable_ack_is_delivered() -> None:
    # SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT is acceptable (RFC 5961 5.2).
    conn, peer = established_with_data_in_flight()
    peer.send(NOW, ACK | PSH, b"genuine", ack=sq.add(OUR_ISS, 1 - 60_000))
    assert conn.read() == b"genuine"


def test_fin_with_a_bad_ack_does_not_close() -> None:
    conn, peer = established_with_data_in_flight()
    peer.send(NOW, ACK | FIN, ack=sq.add(OUR_ISS, 1 - 100_000), advance=False)
    assert conn.state == State.ESTABLISHED


def test_data_without_ack_is_dropped() -> None:
    conn, peer = open_client(now=NOW, peer_options=PLAIN)
    assert peer.send(NOW, PSH, b"no ack flag", advance=False) == []
    assert conn.read() == b""


# ----------------------------------------------------------------------
# Rate limit (section 7)


def test_challenge_acks_are_rate_limited() -> None:
    conn, peer = open_client(TcpConfig(challenge_acks_per_s=10), now=NOW, peer_options=PLAIN)
    sent = 0
    for i in range(50):
        sent += len(peer.send(NOW + i * MS, RST, seq=sq.add(conn.rcv_nxt, 1 + i)))
    assert sent == 10
    assert conn.stats["tcp.challenge_ack_limited"] == 40
    # A new second, a new allowance.
    sent = sum(len(peer.send(NOW + SECOND + i * MS, SYN, seq=sq.add(conn.rcv_nxt, 5), advance=False)) for i in range(20))
    assert sent == 10
    assert conn.state == State.ESTABLISHED


def test_rate_limit_shared_by_rst_syn_and_bad_ack() -> None:
    conn, peer = established_with_data_in_flight()
    conn.config = TcpConfig(challenge_acks_per_s=3)
    old = sq.add(OUR_ISS, 1 - 100_000)
    sent = []
    sent += peer.send(NOW, RST, seq=sq.add(conn.rcv_nxt, 1))
    sent += peer.send(NOW, SYN, seq=sq.add(conn.rcv_nxt, 1), advance=False)
    sent += peer.send(NOW, ACK, b"x", ack=old, advance=False)
    sent += peer.send(NOW, RST, seq=sq.add(conn.rcv_nxt, 2))
    assert len(sent) == 3
