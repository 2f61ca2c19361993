"""Congestion control behind a small interface (RFC 5681, RFC 6582, RFC 6928).

A ``CongestionControl`` is told about acknowledged bytes, entry to loss
recovery and retransmission timeouts, and answers ``cwnd``. The connection
core does loss *detection* and recovery bookkeeping (duplicate ACKs, SACK
scoreboard, recovery point); this object only decides how big the window is,
so that CUBIC (RFC 9438) can be added beside ``NewReno`` without touching
the core.

Initial window (RFC 6928): ``min(10*MSS, max(2*MSS, 14600))``.
Slow start and congestion avoidance (RFC 5681 3.1), with appropriate byte
counting (RFC 3465, L=2*MSS) in slow start: "cwnd += min(N, SMSS)" per ACK
is the RFC 5681 rule; counting up to 2*SMSS lets one stretch ACK from a
delayed-ACK receiver count for the two segments it covers.
On entering fast recovery: ssthresh = max(FlightSize/2, 2*SMSS) (eq. 4),
cwnd = ssthresh (RFC 6675 / RFC 6582 with SACK-style pipe accounting).
After an RTO: ssthresh as above, cwnd = 1 segment (the loss window).
"""

from __future__ import annotations

from typing import Protocol


class CongestionControl(Protocol):
    cwnd: int
    ssthresh: int

    def on_ack(self, acked: int, in_recovery: bool) -> None: ...

    def on_recovery_start(self, flight_size: int) -> None: ...

    def on_recovery_end(self) -> None: ...

    def on_timeout(self, flight_size: int) -> None: ...

    def set_mss(self, mss: int) -> None: ...


def initial_window(mss: int) -> int:
    return min(10 * mss, max(2 * mss, 14600))


class NewReno:
    __slots__ = ("mss", "cwnd", "ssthresh", "_avoidance_credit")

    def __init__(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = initial_window(mss)
        self.ssthresh = 1 << 30
        self._avoidance_credit = 0

    def set_mss(self, mss: int) -> None:
        self.mss = mss
        self.cwnd = initial_window(mss)

    def on_ack(self, acked: int, in_recovery: bool) -> None:
        if in_recovery or acked <= 0:
            return
        if self.cwnd < self.ssthresh:
            self.cwnd += min(acked, 2 * self.mss)
        else:
            # cwnd += SMSS*SMSS/cwnd per ACK, done exactly by byte credit.
            self._avoidance_credit += acked
            if self._avoidance_credit >= self.cwnd:
                self._avoidance_credit -= self.cwnd
                self.cwnd += self.mss

    def on_recovery_start(self, flight_size: int) -> None:
        self.ssthresh = max(flight_size // 2, 2 * self.mss)
        self.cwnd = self.ssthresh

    def on_recovery_end(self) -> None:
        self.cwnd = self.ssthresh

    def on_timeout(self, flight_size: int) -> None:
        self.ssthresh = max(flight_size // 2, 2 * self.mss)
        self.cwnd = self.mss
        self._avoidance_credit = 0
