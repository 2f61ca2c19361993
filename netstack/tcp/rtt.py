"""Round-trip time estimation and the retransmission timeout (RFC 6298).

    (2.2) When the first RTT measurement R is made, the host MUST set
          SRTT <- R, RTTVAR <- R/2, RTO <- SRTT + max (G, K*RTTVAR)
    (2.3) When a subsequent RTT measurement R' is made, a host MUST set
          RTTVAR <- (1 - beta) * RTTVAR + beta * |SRTT - R'|
          SRTT <- (1 - alpha) * SRTT + alpha * R'
          with alpha=1/8 and beta=1/4
    (2.4) Whenever RTO is computed, if it is less than 1 second, then the
          RTO SHOULD be rounded up to 1 second.

We use a 200 ms floor instead of 1 s, as Linux does and as the issue asks;
RFC 6298 allows it ("a TCP MAY use a lower minimum"). Back-off doubles the
RTO on each expiry (5.5) up to ``max_ns``; a new measurement after the
back-off ends it (Karn's algorithm: samples are never taken from
retransmitted segments -- the timestamps option makes that moot, because
its echo identifies which transmission was acknowledged).
"""

from __future__ import annotations

MS = 1_000_000
CLOCK_GRANULARITY_NS = 1 * MS


class RttEstimator:
    __slots__ = ("srtt", "rttvar", "rto", "min_ns", "max_ns", "backoff")

    def __init__(self, initial_ns: int = 1000 * MS, min_ns: int = 200 * MS, max_ns: int = 60_000 * MS) -> None:
        self.srtt: int | None = None
        self.rttvar = 0
        self.rto = initial_ns
        self.min_ns = min_ns
        self.max_ns = max_ns
        self.backoff = 0

    def sample(self, rtt_ns: int) -> None:
        rtt_ns = max(rtt_ns, 0)
        if self.srtt is None:
            self.srtt = rtt_ns
            self.rttvar = rtt_ns // 2
        else:
            self.rttvar = (3 * self.rttvar + abs(self.srtt - rtt_ns)) // 4
            self.srtt = (7 * self.srtt + rtt_ns) // 8
        self.backoff = 0
        self.rto = min(self.max_ns, max(self.min_ns, self.srtt + max(CLOCK_GRANULARITY_NS, 4 * self.rttvar)))

    def current(self) -> int:
        """The RTO with back-off applied."""
        return min(self.max_ns, self.rto << self.backoff)

    def back_off(self) -> None:
        if self.rto << self.backoff < self.max_ns:
            self.backoff += 1
