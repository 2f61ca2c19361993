"""One TCP connection, sans-IO (RFC 9293, 7323, 2018, 6675, 5681, 6582, 6298, 5961).

Theory of operation
-------------------
``TcpConnection`` never awaits, never reads a clock and never touches a
device. Its inputs are::

    handle(segment, payload, now)   a segment for this connection arrived
    poll(now)                       timers may be due (see poll_at())
    send(data) / close() / abort()  the application
    read()                          the application takes received bytes

and its outputs are ``dispatch(now)`` -- the segments to transmit now -- plus
``events``, a list the owner drains after every input: ``"connected"``,
``"data"`` (``read()`` has bytes), ``"eof"`` (the peer sent FIN),
``"acked"`` (send-buffer space was freed) and ``"closed"`` (``error`` says
why, ``None`` for a clean close). ``poll_at()`` is the earliest deadline
among the retransmission, delayed-ACK, persist, keepalive and TIME-WAIT
timers -- deadlines are data, there are no timer tasks.

Event order, as a grammar::

    [connected] (data | acked)* [eof] (data | acked)* closed

Sequence numbers. Internally both directions count *stream offsets* in
unbounded ints (offset 0 is the first data byte; the FIN is at the offset
after the last byte) and convert to 32-bit sequence numbers only at the
wire: ``seq = iss + 1 + offset``. So buffers and the SACK scoreboard never
do modular arithmetic; the acceptability tests on incoming segments do,
through ``seq.py``.

State changes go through the table in ``states.py``. Segment processing
follows RFC 9293 3.10.7 "SEGMENT ARRIVES" in its order -- sequence check,
RST, SYN, ACK, text, FIN -- with RFC 7323's PAWS before the sequence check
and RFC 5961's rules for RST, SYN and ACK (challenge ACKs, rate limited).

Sending. ``dispatch`` sends everything the windows allow at once; there is
no pacing tick. Segments carry up to ``max_segment`` payload bytes: the
effective MSS (the peer's MSS less the options on *that* segment) or, when
the device does segmentation offload, a multiple of it up to 64 KiB, with
``Segment.segment_size`` telling the device where to cut. Nagle's algorithm
(RFC 9293 3.7.4) and sender-side silly-window avoidance (3.8.6.2.1) hold
back small segments unless ``nodelay``.

Loss recovery. RTO per RFC 6298 with back-off and a bounded number of
retries, after which the connection fails with ``TimeoutError``. Three
duplicate ACKs, or SACK information showing the first unacknowledged
segment lost (RFC 6675 IsLost), start fast recovery: with SACK, holes are
retransmitted in order while the pipe estimate allows (RFC 6675 NextSeg);
without SACK, NewReno retransmits on each partial ACK (RFC 6582).

Receiving. In-order data goes to the receive buffer (the application reads
it, usually at once); out-of-order data to a bounded ``Reassembly``, which
also produces our SACK blocks. ACKs are delayed (every second full segment
or ``delayed_ack_ns``) except during the quick-ACK phase at the start, for
out-of-order or duplicate data (the peer is waiting), and for FIN. The
advertised window never shrinks (RFC 9293 3.8.6.2.2), and opens only by at
least min(buffer/2, MSS) at a time (receiver silly-window avoidance).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

from netstack.tcp import seq as sq
from netstack.tcp.buffers import Reassembly, Scoreboard
from netstack.tcp.congestion import CongestionControl, NewReno
from netstack.tcp.rtt import RttEstimator
from netstack.tcp.states import CAN_RECEIVE, CAN_SEND, SYNCHRONIZED, Event, State, next_state
from netstack.wire.tcp import ACK, FIN, PSH, RST, SYN, NO_OPTIONS, TcpOptions, TcpRepr

MS = 1_000_000
SECOND = 1_000_000_000
MAX_WINDOW = 65535
TIMESTAMP_OPTION_LEN = 12  # NOP NOP kind len TSval TSecr
DEFAULT_MSS = 536  # RFC 9293 3.7.1: when the peer sends no MSS option


@dataclasses.dataclass(frozen=True, slots=True)
class TcpConfig:
    """Per-connection settings. Times are nanoseconds."""

    mss: int = 1460
    max_segment: int = 0  # payload bytes per segment handed to the device; 0: one MSS
    recv_buffer: int = 1 << 20
    nodelay: bool = False
    delayed_ack_ns: int = 40 * MS
    quickack_segments: int = 16
    rto_initial_ns: int = 1 * SECOND
    rto_min_ns: int = 200 * MS
    rto_max_ns: int = 60 * SECOND
    max_retransmits: int = 12
    syn_retries: int = 6
    time_wait_ns: int = 60 * SECOND
    fin_wait_2_ns: int = 60 * SECOND
    keepalive: bool = False
    keepalive_idle_ns: int = 7200 * SECOND
    keepalive_interval_ns: int = 75 * SECOND
    keepalive_count: int = 9
    timestamps: bool = True
    sack: bool = True
    window_scaling: bool = True
    challenge_acks_per_s: int = 100
    ooo_max_pieces: int = 256


class Segment(NamedTuple):
    """A segment to transmit. ``segment_size`` > 0 asks the device to cut the
    payload into pieces of that size (TCP segmentation offload)."""

    repr: TcpRepr
    payload: bytes | memoryview
    segment_size: int = 0


class OutOfOrderBudget:
    """The bytes of out-of-order data all connections may hold together."""

    __slots__ = ("available",)

    def __init__(self, total: int) -> None:
        self.available = total


def window_scale_for(buffer: int) -> int:
    shift = 0
    while (buffer >> shift) > MAX_WINDOW and shift < 14:
        shift += 1
    return shift


class TcpConnection:
    """One connection's state, from SYN to CLOSED."""

    def __init__(
        self,
        local: tuple[bytes, int],
        remote: tuple[bytes, int],
        iss: int,
        config: TcpConfig,
        now: int,
        *,
        ts_offset: int = 0,
        budget: OutOfOrderBudget | None = None,
        congestion: Callable[[int], CongestionControl] = NewReno,
        stats: dict[str, int] | None = None,
    ) -> None:
        self.local = local
        self.remote = remote
        self.config = config
        self.state = State.CLOSED
        self.events: list[str] = []
        self.error: BaseException | None = None
        self.stats = stats if stats is not None else {}
        self._budget = budget or OutOfOrderBudget(1 << 62)
        self.nodelay = config.nodelay
        # -- send side
        self.iss = iss & sq.MASK
        self._send_buffer = bytearray()
        self._snd_una = 0  # offset of the first unacknowledged byte
        self._snd_nxt = 0  # offset of the next byte to send
        self._snd_max = 0  # highest offset sent so far
        self._syn_acked = False
        self._fin_queued = False
        self._fin_sent = False
        self._fin_acked = False
        self.snd_wnd = 0
        self._max_snd_wnd = 0
        self._snd_wl1 = 0
        self._snd_wl2 = 0
        self._snd_wscale = 0
        self._peer_mss = DEFAULT_MSS
        self._mss = min(DEFAULT_MSS, config.mss)
        self.congestion = congestion(self._mss)
        self._congestion_factory = congestion
        self.rtt = RttEstimator(config.rto_initial_ns, config.rto_min_ns, config.rto_max_ns)
        self._rtt_offset: int | None = None
        self._rtt_sent_at = 0
        self._retransmits = 0
        self.retransmitted_segments = 0
        self._dupacks = 0
        self._in_recovery = False
        self._recovery_point = 0
        self._high_rxt = 0
        self._scoreboard = Scoreboard()
        self._rexmit_now = False  # retransmit the first unacked segment at dispatch
        # -- receive side
        self.irs = 0
        self._rcv_off = 0
        self._rcv_wscale = window_scale_for(config.recv_buffer) if config.window_scaling else 0
        self._adv_right = 0  # offset of the right edge we last advertised
        self._recv_buffer = bytearray()
        self._reassembly = Reassembly(config.recv_buffer, config.ooo_max_pieces)
        self._ooo_fin: int | None = None
        self._fin_received = False
        self._rcv_mss = DEFAULT_MSS
        self._quickack = config.quickack_segments
        self._unacked_bytes = 0
        self._dupacks_owed = 0  # out-of-order segments since the last dispatch
        self.reading_closed = False
        # -- options
        self.ts_enabled = False
        self._ts_offset = ts_offset & sq.MASK
        self._ts_recent = 0
        self._last_ack_sent = 0
        self.sack_enabled = False
        self._ws_enabled = False
        # -- what to send
        self._ack_now = False
        self._syn_pending = False
        self._rst_pending = False
        self._rst_reply: int | None = None  # RST to send with this sequence number
        self._probe_pending = False
        self._closed_reported = False
        # -- timers (deadlines, or None)
        self._rto_at: int | None = None
        self._delack_at: int | None = None
        self._persist_at: int | None = None
        self._persist_backoff = 0
        self._persist_unanswered = 0  # probes since the peer last ACKed anything
        self._keepalive_at: int | None = None
        self._keepalive_probes = 0
        self._close_at: int | None = None  # TIME-WAIT and FIN-WAIT-2 expiry
        self._challenge_window_start = 0
        self._challenges = 0
        self._last_received = now

    # ------------------------------------------------------------------
    # Conversions and small helpers

    def _seq(self, offset: int) -> int:
        return (self.iss + 1 + offset) & sq.MASK

    def _rseq(self, offset: int) -> int:
        return (self.irs + 1 + offset) & sq.MASK

    @property
    def rcv_nxt(self) -> int:
        return self._rseq(self._rcv_off)

    @property
    def snd_una(self) -> int:
        return self._seq(self._snd_una) if self._syn_acked else self.iss

    @property
    def snd_nxt(self) -> int:
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED) and not self._syn_acked:
            return (self.iss + 1) & sq.MASK
        return self._seq(self._snd_nxt)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _transition(self, event: Event) -> None:
        self.state = next_state(self.state, event)

    def _data_end(self) -> int:
        """Offset just past the last byte the application has queued."""
        return self._snd_una + len(self._send_buffer)

    @property
    def mss(self) -> int:
        """The effective send MSS before per-segment options."""
        return self._mss

    def _payload_mss(self) -> int:
        return self._mss - (TIMESTAMP_OPTION_LEN if self.ts_enabled else 0)

    # ------------------------------------------------------------------
    # Opening

    def connect(self, now: int) -> None:
        """Active open: send a SYN."""
        self._transition(Event.ACTIVE_OPEN)
        self._syn_pending = True
        self._rto_at = now + self.rtt.current()

    def accept(self, syn: TcpRepr, now: int) -> None:
        """Passive open from a listener's SYN: answer with SYN-ACK."""
        self._transition(Event.PASSIVE_OPEN)
        self._take_syn(syn, now)
        self._syn_pending = True
        self._rto_at = now + self.rtt.current()

    def accept_established(self, syn_options: TcpOptions, irs: int, window: int, now: int) -> None:
        """Open straight into ESTABLISHED from a SYN cookie's returning ACK."""
        self._transition(Event.PASSIVE_OPEN)
        self.irs = irs & sq.MASK
        self._apply_peer_options(syn_options, syn=True)
        self._syn_acked = True
        self.snd_wnd = window << self._snd_wscale
        self._max_snd_wnd = self.snd_wnd
        # The cookie SYN-ACK offered this window (unscaled); honour it.
        self._adv_right = min(self.config.recv_buffer, MAX_WINDOW)
        self._transition(Event.RCV_ACK_OF_SYN)
        self._arm_keepalive(now)
        self.events.append("connected")

    def _take_syn(self, syn: TcpRepr, now: int) -> None:
        self.irs = syn.seq
        self._rcv_off = 0
        self._apply_peer_options(syn.options, syn=True)
        self.snd_wnd = syn.window  # never scaled in a SYN (RFC 7323 2.2)
        self._max_snd_wnd = self.snd_wnd
        self._snd_wl1 = syn.seq
        self._snd_wl2 = syn.ack
        if self.ts_enabled and syn.options.timestamp is not None:
            self._ts_recent = syn.options.timestamp[0]
        self._last_received = now

    def _apply_peer_options(self, options: TcpOptions, *, syn: bool) -> None:
        config = self.config
        self._peer_mss = options.mss if options.mss else DEFAULT_MSS
        self._mss = max(64, min(self._peer_mss, config.mss))
        self.congestion = self._congestion_factory(self._mss)
        self.ts_enabled = config.timestamps and options.timestamp is not None
        self.sack_enabled = config.sack and options.sack_permitted
        if config.window_scaling and options.window_scale is not None:
            self._ws_enabled = True
            self._snd_wscale = options.window_scale
        else:
            self._ws_enabled = False
            self._snd_wscale = 0
            self._rcv_wscale = 0

    def _syn_options(self, now: int, reply_to_peer: bool) -> TcpOptions:
        config = self.config
        if reply_to_peer:  # SYN-ACK: only what the peer offered
            timestamp = (self._ts_clock(now), self._ts_recent) if self.ts_enabled else None
            return TcpOptions(
                mss=config.mss,
                window_scale=self._rcv_wscale if self._ws_enabled else None,
                sack_permitted=self.sack_enabled,
                timestamp=timestamp,
            )
        return TcpOptions(
            mss=config.mss,
            window_scale=self._rcv_wscale if config.window_scaling else None,
            sack_permitted=config.sack,
            timestamp=(self._ts_clock(now), 0) if config.timestamps else None,
        )

    def _ts_clock(self, now: int) -> int:
        return (now // MS + self._ts_offset) & sq.MASK

    # ------------------------------------------------------------------
    # The application

    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes for sending. Raises ``ConnectionError`` once sending is over."""
        if self.state not in CAN_SEND and self.state not in (State.SYN_SENT, State.SYN_RECEIVED):
            raise ConnectionResetError("connection is closed for sending") if self.error else BrokenPipeError(
                "cannot send after close or write_eof"
            )
        if self._fin_queued:
            raise BrokenPipeError("cannot send after close or write_eof")
        self._send_buffer += data

    def close(self, now: int) -> None:
        """Send a FIN after the queued data (graceful close or half close)."""
        if self._fin_queued or self.state in (State.CLOSED, State.TIME_WAIT):
            if self.reading_closed and self.state == State.FIN_WAIT_2 and self._close_at is None:
                # A half close (write_eof) already took us to FIN-WAIT-2; now
                # nobody will read either: the orphan gets the FIN-WAIT-2 timer.
                self._close_at = now + self.config.fin_wait_2_ns
            return
        if self.state in (State.SYN_SENT, State.LISTEN):
            # Nothing synchronized: RFC 9293 3.10.4 deletes the TCB, no FIN.
            self._transition(Event.CLOSE)
            self._finish(None)
            return
        self._fin_queued = True
        if self.state in (State.ESTABLISHED, State.CLOSE_WAIT):
            self._transition(Event.CLOSE)
        # In SYN-RECEIVED the FIN waits for the handshake to finish.

    def abort(self, now: int) -> None:
        """Reset the connection (RST) and forget it."""
        if self.state == State.CLOSED:
            return
        if self.state in SYNCHRONIZED or self.state == State.SYN_RECEIVED:
            self._rst_pending = True
        self._transition(Event.ABORT)
        self._finish(None)

    def read(self) -> bytes:
        """Take every received in-order byte; may open the window."""
        if not self._recv_buffer:
            return b""
        data = bytes(self._recv_buffer)
        self._recv_buffer.clear()
        self._window_update_check()
        return data

    @property
    def readable(self) -> int:
        return len(self._recv_buffer)

    @property
    def unsent(self) -> int:
        """Queued bytes not yet transmitted once."""
        return max(0, self._data_end() - self._snd_nxt)

    @property
    def buffered(self) -> int:
        """Queued bytes not yet acknowledged (sent or not)."""
        return len(self._send_buffer)

    @property
    def fin_received(self) -> bool:
        return self._fin_received

    def _window_update_check(self) -> None:
        if self.state not in CAN_RECEIVE:
            return
        # Only as much as the window field can express: without scaling a
        # buffer beyond 64 KiB would otherwise ask for an update on every read.
        free = min(self._free_window(), MAX_WINDOW << self._rcv_wscale)
        advertised = self._adv_right - self._rcv_off
        if free - advertised >= min(self.config.recv_buffer // 2, self._rcv_mss * 2):
            self._ack_now = True

    # ------------------------------------------------------------------
    # Incoming segments

    def handle(self, seg: TcpRepr, payload: memoryview, now: int) -> None:
        """Process one segment addressed to this connection."""
        state = self.state
        if state in (State.CLOSED, State.LISTEN):
            # A listening socket is the layer's: a core leaves LISTEN only
            # through accept(); segments for it are not this core's business.
            return
        self._last_received = now
        if self.config.keepalive and state in SYNCHRONIZED:
            self._keepalive_probes = 0
            self._keepalive_at = now + self.config.keepalive_idle_ns
        if state == State.SYN_SENT:
            self._handle_syn_sent(seg, payload, now)
            return
        flags = seg.flags
        if state == State.SYN_RECEIVED and flags & SYN and not flags & ACK and seg.seq == self.irs:
            self._syn_pending = True  # our SYN-ACK was lost: send it again
            return
        # PAWS (RFC 7323 5.3 R1): an old timestamp means an old duplicate.
        ts = seg.options.timestamp
        if self.ts_enabled and ts is not None and not flags & RST:
            if sq.lt(ts[0], self._ts_recent):
                self._count("tcp.paws_rejected")
                self._ack_now = True
                return
        seg_len = len(payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if not self._acceptable(seg.seq, seg_len):
            if flags & RST:
                self._count("tcp.rst_out_of_window")
                return
            self._count("tcp.segment_out_of_window")
            # A retransmission of data we hold: the peer is waiting for an ACK.
            self._ack_now = True
            if state == State.TIME_WAIT and flags & FIN and sq.add(seg.seq, seg_len) == self.rcv_nxt:
                # RFC 9293 3.10.7.4: "The only thing that can arrive in this
                # state is a retransmission of the remote FIN. Acknowledge it,
                # and restart the 2 MSL timeout."
                self._close_at = now + self.config.time_wait_ns
            if not (flags & ACK and seg.seq == self.rcv_nxt and len(payload) > 0):
                return
            payload = payload[:0]  # zero window: process the ACK, not the data
            flags &= ~FIN
        # RFC 7323 4.3: update TS.Recent from segments that cover Last.ACK.sent.
        if self.ts_enabled and ts is not None and sq.le(seg.seq, self._last_ack_sent):
            if sq.ge(ts[0], self._ts_recent):
                self._ts_recent = ts[0]
        if flags & RST:
            self._handle_rst(seg)
            return
        if flags & SYN:
            # RFC 5961 4.2: any SYN in a synchronized state gets a challenge ACK.
            self._count("tcp.syn_in_window")
            self._challenge_ack(now)
            return
        if not flags & ACK:
            self._count("tcp.no_ack")
            return
        if self.state == State.SYN_RECEIVED:
            if not (sq.lt(self.iss, seg.ack) and sq.le(seg.ack, self.snd_nxt)):
                self._count("tcp.bad_ack_in_syn_received")
                self._rst_reply = seg.ack
                return
            self._syn_acked = True
            self._syn_pending = False
            self._rto_at = None
            self._retransmits = 0
            self.snd_wnd = seg.window << self._snd_wscale
            self._max_snd_wnd = max(self._max_snd_wnd, self.snd_wnd)
            self._snd_wl1, self._snd_wl2 = seg.seq, seg.ack
            if self.rtt.backoff == 0:
                self.rtt.sample(now - self._rtt_sent_at)
            self._transition(Event.RCV_ACK_OF_SYN)
            self._arm_keepalive(now)
            self.events.append("connected")
            if self._fin_queued:
                self._transition(Event.CLOSE)  # closed while the handshake was in flight
        if not self._handle_ack(seg, payload, now):
            return
        if self.state == State.CLOSED:
            return
        if self.state == State.TIME_WAIT:
            if flags & FIN:
                self._ack_now = True
                self._close_at = now + self.config.time_wait_ns
            return
        fin_offset = self._rcv_off + sq.sub(seg.seq, self.rcv_nxt) + len(payload)
        if payload and self.state in CAN_RECEIVE:
            self._handle_data(seg.seq, payload, now, bool(flags & PSH))
            if self.state == State.CLOSED:
                return
        if flags & FIN:
            if fin_offset == self._rcv_off:
                self._receive_fin(now)
            elif self._rcv_off < fin_offset <= self._adv_right:
                self._ooo_fin = fin_offset
                self._ack_now = True

    def _acceptable(self, seq: int, seg_len: int) -> bool:
        """RFC 9293 3.10.7.4, the four cases."""
        window = max(0, self._adv_right - self._rcv_off)
        rcv_nxt = self.rcv_nxt
        if seg_len == 0:
            if window == 0:
                return seq == rcv_nxt
            return sq.between(rcv_nxt, seq, sq.add(rcv_nxt, window))
        if window == 0:
            return False
        right = sq.add(rcv_nxt, window)
        return sq.between(rcv_nxt, seq, right) or sq.between(rcv_nxt, sq.add(seq, seg_len - 1), right)

    def _handle_rst(self, seg: TcpRepr) -> None:
        # RFC 5961 3.2: only an exact match resets; in-window gets a challenge.
        if seg.seq != self.rcv_nxt:
            self._count("tcp.rst_challenged")
            self._challenge_ack(self._last_received)
            return
        self._count("tcp.rst_received")
        state = self.state
        self._transition(Event.RCV_RST)
        if state in (State.CLOSING, State.LAST_ACK, State.TIME_WAIT):
            self._finish(None)
        else:
            self._finish(ConnectionResetError("connection reset by peer"))

    def _challenge_ack(self, now: int) -> None:
        if now - self._challenge_window_start >= SECOND:
            self._challenge_window_start = now
            self._challenges = 0
        if self._challenges >= self.config.challenge_acks_per_s:
            self._count("tcp.challenge_ack_limited")
            return
        self._challenges += 1
        self._count("tcp.challenge_acks")
        self._ack_now = True

    def _handle_syn_sent(self, seg: TcpRepr, payload: memoryview, now: int) -> None:
        flags = seg.flags
        if flags & ACK and not (sq.lt(self.iss, seg.ack) and sq.le(seg.ack, self.snd_nxt)):
            if not flags & RST:
                self._rst_reply = seg.ack
            self._count("tcp.bad_ack_in_syn_sent")
            return
        if flags & RST:
            if flags & ACK:
                self._transition(Event.RCV_RST)
                self._finish(ConnectionRefusedError("connection refused"))
            return
        if not flags & SYN:
            return
        self._take_syn(seg, now)
        if flags & ACK:
            self._syn_acked = True
            self._syn_pending = False
            self._rto_at = None
            self._retransmits = 0
            self.snd_wnd = seg.window  # unscaled in a SYN-ACK
            self._max_snd_wnd = self.snd_wnd
            self._snd_wl1, self._snd_wl2 = seg.seq, seg.ack
            if self._rtt_offset is None and self.rtt.backoff == 0:
                self.rtt.sample(now - self._rtt_sent_at)
            self._transition(Event.RCV_SYN_ACK)
            self._arm_keepalive(now)
            self._ack_now = True
            self.events.append("connected")
            if payload:
                self._handle_data(sq.add(seg.seq, 1), payload, now, True)
        else:
            # Simultaneous open: answer with SYN-ACK from the same ISS.
            self._transition(Event.RCV_SYN)
            self._syn_pending = True

    def _handle_ack(self, seg: TcpRepr, payload: memoryview, now: int) -> bool:
        """ACK processing (RFC 9293 3.10.7.4 fifth step). False: drop the segment."""
        ack = seg.ack
        snd_una_seq = self._seq(self._snd_una)
        snd_max_seq = self._seq(self._snd_max)
        # RFC 5961 5.2: acceptable if SND.UNA - MAX.SND.WND <= SEG.ACK <= SND.NXT.
        if sq.gt(ack, snd_max_seq):
            self._count("tcp.ack_of_unsent")
            self._ack_now = True
            return False
        if sq.lt(ack, sq.add(snd_una_seq, -self._max_snd_wnd)):
            self._count("tcp.ack_too_old")
            self._challenge_ack(now)
            return False
        acked = sq.sub(ack, snd_una_seq)
        if self.sack_enabled and seg.options.sack_blocks:
            self._take_sack(seg.options.sack_blocks)
        window = seg.window << self._snd_wscale
        window_changed = False
        # RFC 9293: update the window if the segment is newer (wl1/wl2 rule).
        if sq.lt(self._snd_wl1, seg.seq) or (
            self._snd_wl1 == seg.seq and sq.le(self._snd_wl2, ack)
        ):
            window_changed = window != self.snd_wnd
            self.snd_wnd = window
            self._snd_wl1, self._snd_wl2 = seg.seq, ack
            if window > self._max_snd_wnd:
                self._max_snd_wnd = window
        if acked > 0:
            self._ack_advanced(acked, now)
        elif (
            acked == 0
            and not payload
            and not window_changed
            and not seg.flags & (SYN | FIN)
            and self._snd_max > self._snd_una
        ):
            self._duplicate_ack(now)
        self._persist_unanswered = 0
        if self.snd_wnd > 0:
            self._persist_at = None
            self._persist_backoff = 0
        elif self.unsent and self._snd_nxt == self._snd_una and self._persist_at is None:
            self._persist_at = now + self.rtt.current()
        return True

    def _ack_advanced(self, acked: int, now: int) -> None:
        data_end = self._data_end()
        new_una = self._snd_una + acked
        fin_acked = False
        if new_una > data_end:
            # Only our FIN lies beyond the data, and _handle_ack refused ACKs
            # beyond SND.MAX: this acknowledges the FIN, even when a (spurious)
            # retransmission timeout has since cleared _fin_sent to send it again.
            fin_acked = True
            new_una = data_end
        data_acked = new_una - self._snd_una
        if data_acked:
            del self._send_buffer[:data_acked]
            self._snd_una = new_una
            self.events.append("acked")
        if self._snd_nxt < self._snd_una:
            self._snd_nxt = self._snd_una
        self._scoreboard.advance(self._snd_una)
        self._retransmits = 0
        self._dupacks = 0
        # RTT: one timed segment at a time, never a retransmitted one (Karn).
        if self._rtt_offset is not None and self._snd_una + (1 if fin_acked else 0) >= self._rtt_offset:
            self.rtt.sample(now - self._rtt_sent_at)
            self._rtt_offset = None
        if self._in_recovery:
            if self._snd_una >= self._recovery_point:
                self._in_recovery = False
                self.congestion.on_recovery_end()
            elif not self.sack_enabled:
                # NewReno partial ACK (RFC 6582 3.2 step 3): retransmit the next hole.
                self._rexmit_now = True
        else:
            self.congestion.on_ack(data_acked, False)
        if fin_acked and not self._fin_acked:
            self._fin_acked = True
            self._fin_sent = True
            self._snd_una = data_end
            self._snd_nxt = max(self._snd_nxt, data_end + 1)
            # The owner learns that our side is done (a closing transport
            # reports connection_lost now, not when the peer closes too).
            self.events.append("acked")
            self._fin_ack_event(now)
        # Restart the retransmission timer for what is still outstanding.
        if self._outstanding():
            self._rto_at = now + self.rtt.current()
        else:
            self._rto_at = None

    def _outstanding(self) -> bool:
        # Once the FIN is acknowledged nothing is: _snd_una stays at the FIN's
        # offset (the send buffer is indexed from it) while _snd_max is past it.
        return not self._fin_acked and (self._snd_max > self._snd_una or self._fin_sent)

    def _fin_ack_event(self, now: int) -> None:
        state = self.state
        self._transition(Event.RCV_ACK_OF_FIN)
        if self.state == State.FIN_WAIT_2:
            if self.reading_closed:
                self._close_at = now + self.config.fin_wait_2_ns
        elif self.state == State.TIME_WAIT:
            self._enter_time_wait(now)
        elif self.state == State.CLOSED and state == State.LAST_ACK:
            self._finish(None)

    def _enter_time_wait(self, now: int) -> None:
        self._rto_at = None
        self._persist_at = None
        self._keepalive_at = None
        self._close_at = now + self.config.time_wait_ns
        self._report_closed()

    def _take_sack(self, blocks: tuple[tuple[int, int], ...]) -> None:
        una_seq = self._seq(self._snd_una)
        for left, right in blocks:
            start = self._snd_una + sq.sub(left, una_seq)
            end = self._snd_una + sq.sub(right, una_seq)
            # RFC 2018: ignore blocks outside what is outstanding (and D-SACKs).
            if start < self._snd_una or end > self._snd_max or end <= start:
                continue
            self._scoreboard.add(start, end)

    def _duplicate_ack(self, now: int) -> None:
        self._dupacks += 1
        self._count("tcp.dupacks")
        if self._in_recovery:
            return
        lost_by_sack = self.sack_enabled and self._scoreboard.sacked_above(self._snd_una) > 2 * self._payload_mss()
        if self._dupacks >= 3 or lost_by_sack:
            self._enter_recovery(now)

    def _enter_recovery(self, now: int) -> None:
        self._count("tcp.fast_retransmits")
        self._in_recovery = True
        self._recovery_point = self._snd_max
        self.congestion.on_recovery_start(self._snd_max - self._snd_una)
        self._high_rxt = self._snd_una
        self._rexmit_now = True
        self._rtt_offset = None  # Karn: the timed segment may be retransmitted

    def _handle_data(self, seq: int, payload: memoryview, now: int, push: bool) -> None:
        if self.reading_closed:
            # The application closed: nobody will read this (Linux resets too).
            self._count("tcp.data_after_close")
            self.abort(now)
            return
        offset = self._rcv_off + sq.sub(seq, self.rcv_nxt)
        end = offset + len(payload)
        limit = max(self._adv_right, self._rcv_off)
        if end > limit:  # trim what lies beyond the window we offered
            payload = payload[: max(0, limit - offset)]
            end = offset + len(payload)
        if end <= self._rcv_off:
            self._count("tcp.duplicate_data")
            self._ack_now = True  # the peer is retransmitting: it is waiting
            return
        if len(payload) > self._rcv_mss:
            # Coalesced (GRO) segments can be 64 KiB; the ACK clock must
            # still count wire-sized segments.
            self._rcv_mss = min(len(payload), self.config.mss)
        if offset > self._rcv_off:
            stored = self._reassembly.insert(offset, payload, self._budget.available)
            if stored < 0:
                self._count("tcp.ooo_dropped")
            else:
                self._budget.available -= stored
                self._count("tcp.ooo_segments")
            self._ack_now = True  # duplicate ACK with SACK, right away (RFC 5681 4.2)
            self._dupacks_owed += 1
            return
        if offset < self._rcv_off:
            payload = payload[self._rcv_off - offset :]
        self._recv_buffer += payload
        self._rcv_off = end
        self._dupacks_owed = 0  # the next ACK is a new one, not a duplicate
        filled = False
        if self._reassembly.size:
            before = self._reassembly.size
            for piece in self._reassembly.pop_ready(self._rcv_off):
                self._recv_buffer += piece
                self._rcv_off += len(piece)
            self._budget.available += before - self._reassembly.size
            filled = True
        if self._ooo_fin is not None and self._ooo_fin == self._rcv_off:
            self._receive_fin(now)
        self.events.append("data")
        self._unacked_bytes += len(payload)
        if filled or self._quickack > 0:
            self._quickack = max(0, self._quickack - 1)
            self._ack_now = True
        elif self._unacked_bytes >= 2 * self._rcv_mss:
            self._ack_now = True
        elif self._delack_at is None:
            self._delack_at = now + self.config.delayed_ack_ns

    def _receive_fin(self, now: int) -> None:
        if self._fin_received:
            return
        self._fin_received = True
        self._rcv_off += 1
        self._ooo_fin = None
        self._ack_now = True
        self.events.append("eof")
        self._transition(Event.RCV_FIN)
        if self.state == State.TIME_WAIT:
            self._enter_time_wait(now)

    # ------------------------------------------------------------------
    # Timers

    def poll_at(self) -> int | None:
        deadline = None
        for candidate in (self._rto_at, self._delack_at, self._persist_at, self._keepalive_at, self._close_at):
            if candidate is not None and (deadline is None or candidate < deadline):
                deadline = candidate
        return deadline

    def poll(self, now: int) -> None:
        if self._close_at is not None and now >= self._close_at:
            self._close_at = None
            if self.state == State.TIME_WAIT:
                self._transition(Event.TIME_WAIT_EXPIRED)
                self._finish(None)
                return
            if self.state == State.FIN_WAIT_2:
                self._count("tcp.fin_wait_2_timeout")
                self._transition(Event.GIVE_UP)
                self._finish(None)
                return
        if self._rto_at is not None and now >= self._rto_at:
            self._on_rto(now)
            if self.state == State.CLOSED:
                return
        if self._delack_at is not None and now >= self._delack_at:
            self._delack_at = None
            self._ack_now = True
        if self._persist_at is not None and now >= self._persist_at:
            self._on_persist(now)
        if self._keepalive_at is not None and now >= self._keepalive_at:
            self._on_keepalive(now)

    def _on_rto(self, now: int) -> None:
        self._rto_at = None
        if self._syn_acked and self.snd_wnd == 0 and self._data_end() > self._snd_una:
            # The peer shrank its window to zero under data in flight. RFC 1122
            # 4.2.2.16: the sender "SHOULD NOT time out the connection if data
            # beyond the right window edge is not acknowledged", and "If the
            # window shrinks to zero, the TCP MUST probe it in the standard
            # way": go back to SND.UNA and let the persist timer probe; it
            # gives up only on probes nobody answers.
            self._snd_nxt = self._snd_una
            if self._fin_sent and not self._fin_acked:
                self._fin_sent = False
            if self._persist_at is None:
                self._persist_at = now + self.rtt.current()
            return
        self._retransmits += 1
        limit = self.config.syn_retries if self.state in (State.SYN_SENT, State.SYN_RECEIVED) else self.config.max_retransmits
        if self._retransmits > limit:
            self._count("tcp.timeouts")
            self._transition(Event.GIVE_UP)
            self._finish(TimeoutError("connection timed out"))
            return
        self.rtt.back_off()
        self._rtt_offset = None
        self._count("tcp.rto_expired")
        if self.state in (State.SYN_SENT, State.SYN_RECEIVED) and not self._syn_acked:
            self._syn_pending = True
            self._rto_at = now + self.rtt.current()
            return
        if not self._outstanding():
            return
        # Go back to the first unacknowledged byte with a one-segment window.
        self.congestion.on_timeout(self._snd_max - self._snd_una)
        self._in_recovery = False
        self._dupacks = 0
        self._scoreboard.clear()  # RFC 2018 8: SACKed data may be reneged
        self._snd_nxt = self._snd_una
        if self._fin_sent and not self._fin_acked:
            self._fin_sent = False
        self._rto_at = now + self.rtt.current()

    def _on_persist(self, now: int) -> None:
        self._persist_at = None
        if self.snd_wnd > 0 or not self.unsent:
            return
        self._persist_backoff += 1
        self._persist_unanswered += 1
        # RFC 9293 3.8.6.1: "As long as the receiving TCP peer continues to
        # send acknowledgments in response to the probe segments, the sending
        # TCP peer MUST allow the connection to stay open." So only probes
        # nobody answered count towards giving up; the back-off keeps growing.
        if self._persist_unanswered > self.config.max_retransmits + 8:
            self._count("tcp.timeouts")
            self._transition(Event.GIVE_UP)
            self._finish(TimeoutError("peer's window stayed closed"))
            return
        self._count("tcp.window_probes")
        self._probe_pending = True
        interval = min(self.config.rto_max_ns, self.rtt.current() << min(self._persist_backoff, 16))
        self._persist_at = now + interval

    def _on_keepalive(self, now: int) -> None:
        config = self.config
        if self.state not in SYNCHRONIZED or self.state == State.TIME_WAIT:
            self._keepalive_at = None
            return
        if self._keepalive_probes >= config.keepalive_count:
            self._count("tcp.keepalive_timeouts")
            self._rst_pending = True
            self._transition(Event.GIVE_UP)
            self._finish(TimeoutError("keepalive: peer stopped answering"))
            return
        self._keepalive_probes += 1
        self._count("tcp.keepalive_probes")
        self._probe_pending = True
        self._keepalive_at = now + config.keepalive_interval_ns

    def _arm_keepalive(self, now: int) -> None:
        """On entering ESTABLISHED: idle time counts from the handshake, or a
        connection that never hears from its peer again would never probe."""
        if self.config.keepalive:
            self._keepalive_probes = 0
            self._keepalive_at = now + self.config.keepalive_idle_ns

    def set_keepalive(self, enabled: bool, now: int, **times: int) -> None:
        self.config = dataclasses.replace(self.config, keepalive=enabled, **times)
        self._keepalive_probes = 0
        self._keepalive_at = now + self.config.keepalive_idle_ns if enabled else None

    def _finish(self, error: BaseException | None) -> None:
        self.error = error
        self._rto_at = self._delack_at = self._persist_at = self._keepalive_at = self._close_at = None
        self._budget.available += self._reassembly.clear()
        self._report_closed()

    def _report_closed(self) -> None:
        if not self._closed_reported:
            self._closed_reported = True
            self.events.append("closed")

    # ------------------------------------------------------------------
    # Outgoing segments

    def _free_window(self) -> int:
        return max(0, self.config.recv_buffer - len(self._recv_buffer))

    def _window_field(self, syn: bool) -> int:
        """The window to advertise, never shrinking the right edge (RFC 9293 3.8.6.2.2)."""
        free = self._free_window()
        mss = self._rcv_mss
        right = self._rcv_off + free
        if right - self._adv_right < min(self.config.recv_buffer // 2, mss) and self._adv_right > self._rcv_off:
            right = self._adv_right  # receiver SWS avoidance: do not inch it open
        if right < self._adv_right:
            right = self._adv_right
        window = right - self._rcv_off
        if syn:
            window = min(window, MAX_WINDOW)
            self._adv_right = self._rcv_off + window
            return window
        # With a scale factor the field cannot say every window. Round it
        # down, so that we never offer more than the buffer holds: rounding
        # up promises up to 2**shift - 1 bytes more on every ACK, which
        # small segments add up without end. But never move our own edge
        # left: the peer may be sending up to the edge it saw before, and its
        # data and pure ACKs up there must stay acceptable (a retreating edge
        # made the kernel's ACKs look out of window). So the peer may see the
        # window retract by less than 2**shift bytes (RFC 7323 2.4 notes that
        # a scale factor can produce a retracted window), while we accept up
        # to the furthest edge we ever offered -- which is within the buffer.
        shift = self._rcv_wscale
        field = min(window >> shift, MAX_WINDOW)
        self._adv_right = max(self._adv_right, self._rcv_off + (field << shift))
        return field

    def _options(self, now: int) -> TcpOptions:
        if not self.ts_enabled and not self.sack_enabled:
            return NO_OPTIONS
        timestamp = (self._ts_clock(now), self._ts_recent) if self.ts_enabled else None
        blocks: tuple[tuple[int, int], ...] = ()
        if self.sack_enabled and self._reassembly.size:
            blocks = tuple(
                (self._rseq(start), self._rseq(end)) for start, end in self._reassembly.sack_blocks(3 if timestamp else 4)
            )
        if timestamp is None and not blocks:
            return NO_OPTIONS
        return TcpOptions(timestamp=timestamp, sack_blocks=blocks)

    def _segment(
        self,
        flags: int,
        seq: int,
        now: int,
        payload: bytes | memoryview = b"",
        segment_size: int = 0,
        *,
        syn: bool = False,
        options: TcpOptions | None = None,
    ) -> Segment:
        ack = self.rcv_nxt if flags & ACK else 0
        if syn:
            options = self._syn_options(now, reply_to_peer=bool(flags & ACK))
        elif options is None:
            options = self._options(now)
        window = self._window_field(syn)
        if flags & ACK:
            self._last_ack_sent = ack
            self._ack_now = False
            self._delack_at = None
            self._unacked_bytes = 0
        return Segment(TcpRepr(self.local[1], self.remote[1], seq, ack, flags, window, options), payload, segment_size)

    def dispatch(self, now: int) -> list[Segment]:
        """Every segment to transmit now."""
        out: list[Segment] = []
        reply = self._rst_reply
        if reply is not None:
            self._rst_reply = None
            out.append(Segment(TcpRepr(self.local[1], self.remote[1], reply, 0, RST, 0), b""))
        if self._rst_pending:
            self._rst_pending = False
            out.append(self._segment(RST | ACK, self._ack_seq() if self._syn_acked else sq.add(self.iss, 1), now))
            return out
        state = self.state
        if state == State.CLOSED:
            return out
        if self._syn_pending:
            self._syn_pending = False
            if state == State.SYN_SENT:
                out.append(self._segment(SYN, self.iss, now, syn=True))
            else:
                out.append(self._segment(SYN | ACK, self.iss, now, syn=True))
            if self._rtt_offset is None:
                self._rtt_sent_at = now
            if self._rto_at is None:
                self._rto_at = now + self.rtt.current()
            return out
        if not self._syn_acked:
            if self._ack_now and state == State.SYN_RECEIVED:
                # Simultaneous open: the peer's SYN-ACK repeats its SYN, so it
                # is out of window here and gets an ACK (RFC 9293 3.10.7.4),
                # which is what completes the peer's handshake.
                out.append(self._segment(ACK, self.snd_nxt, now))
            return out
        if state != State.TIME_WAIT:
            if self._rexmit_now:
                self._rexmit_now = False
                self._retransmit_first(now, out)
            if self._in_recovery and self.sack_enabled:
                self._sack_recovery(now, out)
            self._send_new(now, out)
        if self._probe_pending:
            self._probe_pending = False
            out.append(self._segment(ACK, self._seq(self._snd_una - 1), now))
        if self._ack_now and not out:
            out.append(self._segment(ACK, self._ack_seq(), now))
        if self._dupacks_owed:
            # RFC 5681 4.2: "A TCP receiver SHOULD send an immediate duplicate
            # ACK when an out-of-order segment arrives" -- one per segment,
            # even when the driver handled a batch of segments before this
            # dispatch: a sender without SACK counts them to detect a loss.
            # Segments with data do not count as duplicate ACKs (RFC 5681 2).
            pure = sum(1 for segment in out if not segment.payload and segment.repr.flags == ACK)
            for _ in range(self._dupacks_owed - pure):
                out.append(self._segment(ACK, self._ack_seq(), now))
            self._dupacks_owed = 0
        return out

    def _ack_seq(self) -> int:
        """The sequence number of a pure ACK or RST: SND.MAX, not SND.NXT.

        After a timeout SND.NXT has gone back to SND.UNA, and a receiver drops
        a segment below its RCV.NXT without looking at the ACK field (RFC 9293
        3.10.7.4); when both sides time out, each would ignore the other's
        ACKs. But not beyond the peer's window either, where a zero window
        would refuse it: Linux's tcp_acceptable_seq.
        """
        if self._fin_acked:
            return self._seq(self._snd_max)
        return self._seq(min(self._snd_max, self._snd_una + self.snd_wnd))

    def _max_payload(self) -> int:
        mss = self._payload_mss()
        segment = self.config.max_segment
        if segment > mss:
            return (segment // mss) * mss
        return mss

    def _flight(self) -> int:
        flight = self._snd_nxt - self._snd_una
        if self._in_recovery and self.sack_enabled:
            flight = self._pipe()
        return flight

    def _pipe(self) -> int:
        """RFC 6675 pipe: outstanding bytes not SACKed and not deemed lost,
        plus retransmitted bytes not yet acknowledged."""
        scoreboard = self._scoreboard
        lost_threshold = 2 * self._payload_mss()
        pipe = 0
        offset = self._snd_una
        end = self._snd_max
        while offset < end:
            hole_start, hole_end = scoreboard.next_unsacked(offset)
            if hole_start >= end:
                break
            if hole_end == -1 or hole_end > end:
                hole_end = end
            if scoreboard.sacked_above(hole_start) > lost_threshold:
                # Lost: counts only for the part already retransmitted.
                if self._high_rxt > hole_start:
                    pipe += min(self._high_rxt, hole_end) - hole_start
            else:
                pipe += hole_end - hole_start
            offset = hole_end
        return pipe

    def _retransmit_first(self, now: int, out: list[Segment]) -> None:
        length = min(self._payload_mss(), self._data_end() - self._snd_una)
        if length <= 0:
            if self._fin_sent and not self._fin_acked:
                out.append(self._segment(FIN | ACK, self._seq(self._data_end()), now))
            return
        sent = self._emit_data(self._snd_una, length, now, out, retransmission=True)
        self._high_rxt = max(self._high_rxt, self._snd_una + sent)

    def _sack_recovery(self, now: int, out: list[Segment]) -> None:
        """RFC 6675 NextSeg rule 1: retransmit lost holes while the pipe allows."""
        mss = self._payload_mss()
        scoreboard = self._scoreboard
        highest = scoreboard.highest()
        if highest is None:
            return
        cwnd = self.congestion.cwnd
        offset = max(self._high_rxt, self._snd_una)
        while offset < highest:
            pipe = self._pipe()
            if pipe + mss > cwnd and out:
                break
            hole_start, hole_end = scoreboard.next_unsacked(offset)
            if hole_start >= highest:
                break
            if scoreboard.sacked_above(hole_start) <= 2 * mss:
                break
            hole_end = highest if hole_end == -1 else min(hole_end, highest)
            length = min(mss, hole_end - hole_start, self._data_end() - hole_start)
            if length <= 0:
                break
            sent = self._emit_data(hole_start, length, now, out, retransmission=True)
            self._high_rxt = hole_start + sent
            offset = self._high_rxt

    def _send_new(self, now: int, out: list[Segment]) -> None:
        mss = self._payload_mss()
        data_end = self._data_end()
        while True:
            unsent = data_end - self._snd_nxt
            fin_due = self._fin_queued and not self._fin_sent and unsent <= 0
            if unsent <= 0 and not fin_due:
                break
            flight = self._flight()
            window = min(self.snd_wnd, self.congestion.cwnd)
            usable = window - flight
            if fin_due:
                out.append(self._segment(FIN | ACK, self._seq(self._snd_nxt), now))
                self._fin_sent = True
                self._snd_nxt += 1
                self._snd_max = max(self._snd_max, self._snd_nxt)
                if self._rto_at is None:
                    self._rto_at = now + self.rtt.current()
                break
            # Never more than the peer's window allows beyond snd_una.
            usable = min(usable, self._snd_una + self.snd_wnd - self._snd_nxt)
            length = min(unsent, usable, self._max_payload())
            if length <= 0:
                if self.snd_wnd == 0 and flight == 0 and self._persist_at is None:
                    self._persist_at = now + self.rtt.current()
                break
            if length < mss:
                # Nagle (RFC 9293 3.7.4): a small final piece waits for the
                # ACK of what is in flight, unless TCP_NODELAY. Sender SWS
                # avoidance (3.8.6.2.1): a small window-limited piece waits
                # while ACKs are still to come that will open the window.
                if length == unsent:
                    if not (self.nodelay or flight == 0):
                        break
                elif flight > 0 and length < self._max_snd_wnd // 2:
                    break
            elif length < unsent and length % mss and length > mss:
                length -= length % mss  # keep offloaded super-segments whole
            sent = self._emit_data(self._snd_nxt, length, now, out)
            self._snd_nxt += sent
            if self._snd_nxt > self._snd_max:
                self._snd_max = self._snd_nxt

    def _emit_data(self, offset: int, length: int, now: int, out: list[Segment], *, retransmission: bool = False) -> int:
        """Queue a data segment of at most ``length`` bytes at ``offset``; returns
        the bytes it carries (fewer when this segment's options need room, or
        when the FIN rides on it, in which case the FIN is counted too)."""
        options = self._options(now)
        # The MSS bounds header options plus data (RFC 9293 3.7.1, RFC 6691).
        per_segment = self._mss - _options_len(options)
        if length > per_segment and self.config.max_segment <= per_segment:
            length = per_segment
        elif length > per_segment:
            length = min(length, (self._max_payload() // per_segment) * per_segment)
        start = offset - self._snd_una
        payload = bytes(self._send_buffer[start : start + length])
        last = offset + length >= self._data_end()
        flags = ACK | (PSH if last else 0)
        fin = last and self._fin_queued and not self._fin_sent and not retransmission
        if fin:
            flags |= FIN
        segment_size = per_segment if length > per_segment else 0
        out.append(self._segment(flags, self._seq(offset), now, payload, segment_size, options=options))
        if retransmission or offset < self._snd_max:
            self.retransmitted_segments += 1
            self._count("tcp.retransmitted_segments")
            if self._rtt_offset is not None and offset < self._rtt_offset:
                self._rtt_offset = None  # Karn
        elif self._rtt_offset is None:
            self._rtt_offset = offset + length
            self._rtt_sent_at = now
        if self._rto_at is None:
            self._rto_at = now + self.rtt.current()
        if fin:
            self._fin_sent = True
            self._snd_max = max(self._snd_max, offset + length + 1)
            return length + 1
        return length


def _options_len(options: TcpOptions) -> int:
    length = 12 if options.timestamp is not None else 0
    if options.sack_blocks:
        length += 4 + 8 * len(options.sack_blocks)
    return length
