"""Options at virtual time: MSS both ways, effective MSS, window scaling,
timestamps with PAWS (RFC 7323) and SACK-permitted (RFC 2018)."""

from __future__ import annotations

import pytest

from netstack.tcp import seq as sq
from netstack.tcp.connection import DEFAULT_MSS, MS, SECOND, TcpConfig, _options_len
from netstack.tcp.states import State
from netstack.tcp.testing import OUR_ISS, ScriptedPeer, connection, data_segments, open_client, open_server
from netstack.wire.tcp import ACK, PSH, RST, SYN, TcpOptions

NOW = 1 * SECOND
LINUX_SYN_OPTIONS = TcpOptions(mss=1460, window_scale=7, sack_permitted=True, timestamp=(5000, 0))


def sizes(out) -> list[int]:
    return [len(segment.payload) for segment in data_segments(out)]


# ----------------------------------------------------------------------
# MSS


def test_syn_offers_our_mss_and_everything_we_support() -> None:
    conn = connection(TcpConfig(mss=1400), now=NOW)
    conn.connect(NOW)
    (syn,) = conn.dispatch(NOW)
    options = syn.repr.options
    assert options.mss == 1400
    assert options.sack_permitted and options.timestamp is not None and options.window_scale is not None
    assert options.timestamp[1] == 0  # nothing to echo yet


@pytest.mark.parametrize(
    ("ours", "theirs", "effective"),
    [(1460, 1460, 1460), (1460, 1000, 1000), (500, 1460, 500), (1460, None, DEFAULT_MSS)],
)
def test_mss_is_the_smaller_of_both_offers(ours: int, theirs: int | None, effective: int) -> None:
    conn, peer = open_client(TcpConfig(mss=ours), now=NOW, peer_options=TcpOptions(mss=theirs))
    assert conn.mss == effective
    conn.send(bytes(10 * effective))
    assert sizes(peer.take(NOW)) == [effective] * 10  # no timestamps: the whole MSS is payload


def test_syn_ack_offers_our_mss_whatever_the_peer_offered() -> None:
    server = connection(TcpConfig(mss=1200), now=NOW, client=False)
    peer = ScriptedPeer(server)
    server.accept(peer.segment(SYN, options=TcpOptions(mss=9000)), NOW)
    (syn_ack,) = peer.take(NOW)
    assert syn_ack.repr.options.mss == 1200
    assert server.mss == 1200


def test_timestamps_take_twelve_bytes_of_every_segment() -> None:
    conn, peer = open_client(now=NOW, peer_options=TcpOptions(mss=1460, timestamp=(5000, 0)))
    assert conn.ts_enabled
    conn.send(bytes(4 * 1448))
    out = peer.take(NOW)
    assert sizes(out) == [1448, 1448, 1448, 1448]
    for segment in out:
        assert _options_len(segment.repr.options) + len(segment.payload) <= 1460


def test_sack_blocks_shrink_the_payload_further() -> None:
    conn, peer = open_client(TcpConfig(nodelay=True), now=NOW, peer_options=LINUX_SYN_OPTIONS)
    # The peer's data arrives out of order: we hold two islands and must
    # report them in SACK blocks on every segment we send.
    ts = TcpOptions(timestamp=(5001, 0))
    peer.send(NOW, ACK, b"b" * 100, seq=sq.add(peer.seq, 200), options=ts)
    peer.send(NOW, ACK, b"d" * 100, seq=sq.add(peer.seq, 400), options=ts)
    conn.send(bytes(3000))
    out = data_segments(peer.take(NOW))
    assert [len(segment.repr.options.sack_blocks) for segment in out] == [2, 2, 2]
    per_segment = 1460 - 12 - (4 + 2 * 8)
    assert sizes(out) == [per_segment, per_segment, 3000 - 2 * per_segment]
    for segment in out:
        assert _options_len(segment.repr.options) + len(segment.payload) <= 1460


# ----------------------------------------------------------------------
# Window scaling


def test_window_scaling_both_offer() -> None:
    conn, peer = open_client(TcpConfig(recv_buffer=1 << 20), now=NOW, peer_options=LINUX_SYN_OPTIONS, peer_window=64240)
    assert conn.snd_wnd == 64240  # the SYN-ACK's window is never scaled
    assert peer.send(NOW, ACK, window=1000) == []
    assert conn.snd_wnd == 1000 << 7
    # Ours: 1 MiB needs a shift of 5; the field times 32 is what we offer.
    conn.send(b"x")
    (data,) = peer.take(NOW)
    assert data.repr.window << 5 == 1 << 20


def test_syn_window_is_never_scaled() -> None:
    conn = connection(TcpConfig(recv_buffer=4 << 20), now=NOW)
    conn.connect(NOW)
    (syn,) = conn.dispatch(NOW)
    # 4 MiB >> 6 is 65536, one too many for the field: the shift is 7.
    assert syn.repr.window == 65535 and syn.repr.options.window_scale == 7


def test_no_window_scaling_unless_the_peer_offers_it() -> None:
    conn, peer = open_client(TcpConfig(recv_buffer=1 << 20), now=NOW, peer_options=TcpOptions(mss=1460))
    peer.send(NOW, ACK, window=40000)
    assert conn.snd_wnd == 40000
    conn.send(b"x")
    (data,) = peer.take(NOW)
    assert data.repr.window == 65535  # capped, unscaled


def test_syn_ack_answers_window_scale_only_when_offered() -> None:
    for offered, answered in ((LINUX_SYN_OPTIONS, 5), (TcpOptions(mss=1460), None)):
        conn = connection(TcpConfig(), now=NOW, client=False)
        peer = ScriptedPeer(conn)
        conn.accept(peer.segment(SYN, options=offered), NOW)
        (syn_ack,) = peer.take(NOW)
        assert syn_ack.repr.options.window_scale == answered


def test_window_scaling_off_in_our_config() -> None:
    conn, peer = open_server(TcpConfig(window_scaling=False), now=NOW, peer_options=LINUX_SYN_OPTIONS)
    peer.send(NOW, ACK, window=1000)
    assert conn.snd_wnd == 1000  # the peer's shift does not apply either


# ----------------------------------------------------------------------
# Timestamps and PAWS


def test_timestamps_negotiated_only_when_both_offer() -> None:
    conn, _ = open_client(now=NOW, peer_options=TcpOptions(mss=1460))
    assert not conn.ts_enabled
    conn, _ = open_client(TcpConfig(timestamps=False), now=NOW, peer_options=LINUX_SYN_OPTIONS)
    assert not conn.ts_enabled
    conn.send(b"x")
    assert conn.dispatch(NOW)[0].repr.options.timestamp is None
    server, peer = open_server(TcpConfig(timestamps=False), now=NOW, peer_options=LINUX_SYN_OPTIONS)
    assert not server.ts_enabled


def test_timestamps_echo_the_most_recent_in_order_value() -> None:
    conn, peer = open_client(now=NOW, peer_options=LINUX_SYN_OPTIONS)
    (ack,) = peer.send(NOW + 5 * MS, ACK | PSH, b"one", options=TcpOptions(timestamp=(6000, 0)))
    assert ack.repr.options.timestamp[1] == 6000
    assert ack.repr.options.timestamp[0] == (NOW + 5 * MS) // MS  # our clock in ms
    # An out-of-order segment's TSval is not taken (RFC 7323 4.3).
    (dup,) = peer.send(NOW, ACK, b"later", seq=sq.add(peer.seq, 10), options=TcpOptions(timestamp=(7000, 0)))
    assert dup.repr.options.timestamp[1] == 6000


def test_paws_drops_an_old_timestamp_and_acks() -> None:
    conn, peer = open_client(now=NOW, peer_options=LINUX_SYN_OPTIONS)
    peer.send(NOW, ACK | PSH, b"new", options=TcpOptions(timestamp=(6000, 0)))
    assert conn.read() == b"new"
    # An old duplicate from a previous wrap of the sequence space: the
    # sequence number fits, the timestamp is older. Dropped, ACKed.
    out = peer.send(NOW, ACK | PSH, b"old!", options=TcpOptions(timestamp=(5999, 0)), advance=False)
    assert conn.read() == b""
    assert conn.stats.get("tcp.paws_rejected") == 1
    assert [(segment.repr.flags, segment.repr.ack, len(segment.payload)) for segment in out] == [(ACK, peer.seq, 0)]
    # The same bytes with a current timestamp are taken.
    peer.send(NOW, ACK | PSH, b"old!", options=TcpOptions(timestamp=(6001, 0)))
    assert conn.read() == b"old!"


def test_paws_compares_timestamps_modulo_two_to_the_32() -> None:
    conn, peer = open_client(now=NOW, peer_options=TcpOptions(mss=1460, timestamp=(0xFFFF_FF00, 0)))
    peer.send(NOW, ACK | PSH, b"after the wrap", options=TcpOptions(timestamp=(0x10, 0)))
    assert conn.read() == b"after the wrap"
    peer.send(NOW, ACK | PSH, b"old", options=TcpOptions(timestamp=(0xFFFF_FFF0, 0)), advance=False)
    assert conn.read() == b""


def test_paws_does_not_apply_to_rst() -> None:
    conn, peer = open_client(now=NOW, peer_options=LINUX_SYN_OPTIONS)
    peer.send(NOW, ACK, options=TcpOptions(timestamp=(6000, 0)))
    peer.send(NOW, RST, seq=conn.rcv_nxt, options=TcpOptions(timestamp=(1, 0)))
    assert conn.state == State.CLOSED


# ----------------------------------------------------------------------
# SACK-permitted


@pytest.mark.parametrize(
    ("ours", "theirs", "negotiated"), [(True, True, True), (True, False, False), (False, True, False), (False, False, False)]
)
def test_sack_only_when_both_offer(ours: bool, theirs: bool, negotiated: bool) -> None:
    offered = TcpOptions(mss=1460, sack_permitted=theirs)
    client, peer = open_client(TcpConfig(sack=ours), now=NOW, peer_options=offered)
    assert client.sack_enabled == negotiated
    # Out-of-order data gets SACK blocks only when negotiated.
    (dup,) = peer.send(NOW, ACK, b"x" * 10, seq=sq.add(peer.seq, 100))
    assert bool(dup.repr.options.sack_blocks) == negotiated
    server = connection(TcpConfig(sack=ours), now=NOW, client=False)
    peer = ScriptedPeer(server)
    server.accept(peer.segment(SYN, options=offered), NOW)
    (syn_ack,) = peer.take(NOW)
    assert syn_ack.repr.options.sack_permitted == negotiated
    assert server.sack_enabled == negotiated


def test_peer_sack_blocks_are_ignored_unless_negotiated() -> None:
    conn, peer = open_client(TcpConfig(sack=False), now=NOW, peer_options=LINUX_SYN_OPTIONS)
    conn.send(bytes(5 * 1460))
    peer.take(NOW)
    una = sq.add(OUR_ISS, 1)
    blocks = ((sq.add(una, 1460), sq.add(una, 5 * 1460)),)
    peer.send(NOW, ACK, ack=una, options=TcpOptions(sack_blocks=blocks))
    assert not conn._scoreboard
