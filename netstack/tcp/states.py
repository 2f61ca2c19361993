"""The TCP state machine of RFC 9293 section 3.3.2, as a table.

Every state change in ``connection.py`` goes through ``next_state(state,
event)``; a pair missing from the table is a ``LocalProtocolError`` (our
bug), never a silent change. The connection decides *which* event a segment
or a call amounts to (RFC 9293 3.10 "Event Processing"); this table decides
only where that event leads. The diagram, redrawn as a grammar::

    CLOSED --open(active)--> SYN-SENT --rcv SYN,ACK--> ESTABLISHED
    CLOSED --rcv SYN--> SYN-RECEIVED --rcv ACK--> ESTABLISHED
    SYN-SENT --rcv SYN--> SYN-RECEIVED                 (simultaneous open)
    ESTABLISHED --close--> FIN-WAIT-1 --ACK of FIN--> FIN-WAIT-2 --rcv FIN--> TIME-WAIT
    FIN-WAIT-1 --rcv FIN--> CLOSING --ACK of FIN--> TIME-WAIT   (simultaneous close)
    ESTABLISHED --rcv FIN--> CLOSE-WAIT --close--> LAST-ACK --ACK of FIN--> CLOSED
    TIME-WAIT --2MSL--> CLOSED
    any --abort / acceptable RST / give up--> CLOSED
"""

from __future__ import annotations

import enum


class State(enum.Enum):
    CLOSED = "CLOSED"
    LISTEN = "LISTEN"
    SYN_SENT = "SYN-SENT"
    SYN_RECEIVED = "SYN-RECEIVED"
    ESTABLISHED = "ESTABLISHED"
    FIN_WAIT_1 = "FIN-WAIT-1"
    FIN_WAIT_2 = "FIN-WAIT-2"
    CLOSE_WAIT = "CLOSE-WAIT"
    CLOSING = "CLOSING"
    LAST_ACK = "LAST-ACK"
    TIME_WAIT = "TIME-WAIT"


class Event(enum.Enum):
    ACTIVE_OPEN = "active open"
    PASSIVE_OPEN = "SYN received by a listener"
    RCV_SYN = "SYN received"
    RCV_SYN_ACK = "SYN,ACK received"
    RCV_ACK_OF_SYN = "ACK of our SYN received"
    RCV_FIN = "FIN received"
    RCV_ACK_OF_FIN = "ACK of our FIN received"
    CLOSE = "close by the application"
    RCV_RST = "acceptable RST received"
    ABORT = "abort by the application"
    GIVE_UP = "retransmissions exhausted"
    TIME_WAIT_EXPIRED = "2MSL timer expired"


class LocalProtocolError(RuntimeError):
    """The connection asked for a transition the table does not have: our bug."""


S, E = State, Event

_SYNCHRONIZED_OR_OPENING = (
    S.SYN_SENT, S.SYN_RECEIVED, S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2,
    S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK, S.TIME_WAIT,
)

TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.CLOSED, E.ACTIVE_OPEN): S.SYN_SENT,
    (S.LISTEN, E.PASSIVE_OPEN): S.SYN_RECEIVED,
    (S.CLOSED, E.PASSIVE_OPEN): S.SYN_RECEIVED,
    (S.SYN_SENT, E.RCV_SYN_ACK): S.ESTABLISHED,
    (S.SYN_SENT, E.RCV_SYN): S.SYN_RECEIVED,
    (S.SYN_SENT, E.CLOSE): S.CLOSED,
    (S.SYN_RECEIVED, E.RCV_ACK_OF_SYN): S.ESTABLISHED,
    # No (SYN-RECEIVED, CLOSE): a close there is queued until ESTABLISHED,
    # which RFC 9293 3.10.4 allows ("queue for processing after entering
    # ESTABLISHED state"); then it is (ESTABLISHED, CLOSE).
    (S.ESTABLISHED, E.CLOSE): S.FIN_WAIT_1,
    (S.ESTABLISHED, E.RCV_FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT_1, E.RCV_ACK_OF_FIN): S.FIN_WAIT_2,
    (S.FIN_WAIT_1, E.RCV_FIN): S.CLOSING,
    (S.FIN_WAIT_2, E.RCV_FIN): S.TIME_WAIT,
    (S.CLOSING, E.RCV_ACK_OF_FIN): S.TIME_WAIT,
    (S.CLOSE_WAIT, E.CLOSE): S.LAST_ACK,
    (S.LAST_ACK, E.RCV_ACK_OF_FIN): S.CLOSED,
    (S.TIME_WAIT, E.TIME_WAIT_EXPIRED): S.CLOSED,
    (S.LISTEN, E.CLOSE): S.CLOSED,
}
for _state in _SYNCHRONIZED_OR_OPENING:
    TRANSITIONS[(_state, E.ABORT)] = S.CLOSED
    TRANSITIONS[(_state, E.RCV_RST)] = S.CLOSED
    if _state != S.TIME_WAIT:  # nothing is retransmitted or probed in TIME-WAIT
        TRANSITIONS[(_state, E.GIVE_UP)] = S.CLOSED
TRANSITIONS[(S.CLOSED, E.ABORT)] = S.CLOSED
TRANSITIONS[(S.LISTEN, E.ABORT)] = S.CLOSED

SYNCHRONIZED = frozenset(
    {S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK, S.TIME_WAIT}
)
"""States in which both sides' sequence numbers are known (RFC 9293 3.10.7.4)."""

CAN_SEND = frozenset({S.ESTABLISHED, S.CLOSE_WAIT})
"""States in which the application may still queue data."""

CAN_RECEIVE = frozenset({S.ESTABLISHED, S.FIN_WAIT_1, S.FIN_WAIT_2})
"""States in which new data from the peer is accepted (SYN-RECEIVED turns
into ESTABLISHED on the ACK before its data is processed)."""

FIN_SENT = frozenset({S.FIN_WAIT_1, S.FIN_WAIT_2, S.CLOSING, S.LAST_ACK, S.TIME_WAIT})


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LocalProtocolError(f"no transition from {state.value} on {event.value}") from None
