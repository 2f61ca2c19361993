"""The conformance suite every Stack and every TCP transport must pass.

Why it exists (STYLE 11, in the spirit of trio's ``check_two_way_stream``):
the direct stack (``stack.py``) and the socket stack (host kernel sockets)
promise one contract, asyncio's. Applications are written once against it,
so the two must be indistinguishable to them. One suite, parametrized by a
*pair factory*, checks both.

The API
-------
A **pair factory** is a zero-argument callable returning an async context
manager that yields a ``StackPair``: two stack-like objects that can reach
each other (they may be one and the same object, for the socket stack on
loopback), the address each is reachable at, and a ``quiesce`` coroutine
function. A stack-like object offers ``create_server``,
``create_connection``, ``start_server``, ``open_connection`` and
``create_datagram_endpoint`` with asyncio's signatures.

Every check is an ``async def check_*(pair) -> None`` that raises
``AssertionError`` on a breach of contract; ``CHECKS`` lists them all, so a
driver parametrizes over them::

    @pytest.mark.parametrize("check", CHECKS, ids=check_id)
    async def test_stack(check):
        await run_check(check, my_pair_factory)

``run_check`` opens a fresh pair for the one check, runs it under a
real-time safety timeout, and fails it if anything reached the event loop's
exception handler meanwhile (a protocol callback that raised, a transport
that reported a fatal error): a transport can break the contract without
any await in the check seeing it.

``quiesce()`` means "let everything in flight land": when it returns, no
segment is on the way and nothing will happen until some timer fires. The
checks use it where they must tell *stuck* from *slow*: a sender that stays
paused, a datagram that was lost and is to be sent again. A pair over real
sockets implements it as a short real sleep; ``VirtualTime`` implements it
exactly, without letting virtual time pass, for stacks timed by a
``ManualClock``.

What the checks assume about the contract
-----------------------------------------
Protocol callbacks follow asyncio's grammar, checked on every callback by
``Peer``::

    connection_made -> (data_received | pause_writing | resume_writing)*
                    -> [eof_received -> (pause_writing | resume_writing)*]
                    -> connection_lost

(``pause_writing`` and ``resume_writing`` alternate, pause first.)

``abort()`` must make the peer see an error (``connection_lost`` with a
``ConnectionError``, or ``ConnectionResetError`` from a stream): a transport
over a kernel socket has to set ``SO_LINGER`` to ``(1, 0)`` before closing
for that, or the kernel sends a FIN and the peer sees a clean end of file.
``write()`` after ``write_eof()`` raises ``RuntimeError``, as asyncio's
socket transports do, rather than dropping the data silently.

Where asyncio's own socket transports differ among themselves or across
Python versions, the checks assert nothing: a ``write()`` after ``close()``
(the selector transport still sends it), an empty datagram (asyncio's
socket transport drops it before Python 3.13), or whether
``Server.wait_closed`` waits for the connections it accepted (Python 3.12
does, 3.11 does not; the checks close every connection before waiting). Nor do they assume
``connection_lost`` after an EOF that ``eof_received`` kept open: a socket
transport reports it only once closed, so checks close such transports.

The package: ``harness`` (``StackPair``, ``VirtualTime``,
``direct_stack_pair``, ``run_check``), ``peers`` (the recording protocols
the checks drive), ``transport_checks`` (the TCP transport's contract) and
``stack_checks`` (streams, servers, many connections, UDP).

``direct_stack_pair`` is the pair factory for two direct stacks joined by
an in-memory link (optionally through a ``FaultInjector``), used by this
project's own drivers and usable by anyone testing code over a ``Stack``.
A socket stack on loopback would yield ``StackPair(stack, stack,
"127.0.0.1", "127.0.0.1")``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from netstack.conformance.harness import (
    KIB,
    MIB,
    PairFactory,
    StackPair,
    VirtualTime,
    check_id,
    direct_stack_pair,
    payload,
    run_check,
    server_port,
    wait_or_quiet,
    wait_or_stall,
)
from netstack.conformance.peers import Accepted, Collector, Datagrams, Echo, Peer
from netstack.conformance.stack_checks import (
    check_many_concurrent_connections,
    check_serve_forever_cancelled,
    check_server_close_and_wait_closed,
    check_streams,
    check_streams_bulk_with_drain,
    check_udp_closed_port_refused,
    check_udp_echo,
)
from netstack.conformance.transport_checks import (
    check_abort_resets_the_peer,
    check_buffered_protocol,
    check_close_after_write_eof,
    check_close_flushes_buffered_data,
    check_connect_both_directions,
    check_connection_refused,
    check_data_integrity_write_sizes,
    check_extra_info,
    check_flow_control,
    check_half_close_client_first,
    check_half_close_server_first,
    check_pause_reading_holds_data_and_eof,
    check_paused_reader_after_write_eof_gets_late_data,
    check_write_after_write_eof_raises,
    check_write_buffer_limits,
    check_writelines,
)

CHECKS: tuple[Callable[[StackPair], Awaitable[None]], ...] = (
    check_connect_both_directions,
    check_data_integrity_write_sizes,
    check_writelines,
    check_half_close_client_first,
    check_half_close_server_first,
    check_write_after_write_eof_raises,
    check_close_after_write_eof,
    check_close_flushes_buffered_data,
    check_abort_resets_the_peer,
    check_buffered_protocol,
    check_connection_refused,
    check_extra_info,
    check_write_buffer_limits,
    check_flow_control,
    check_pause_reading_holds_data_and_eof,
    check_paused_reader_after_write_eof_gets_late_data,
    check_streams,
    check_streams_bulk_with_drain,
    check_server_close_and_wait_closed,
    check_serve_forever_cancelled,
    check_many_concurrent_connections,
    check_udp_echo,
    check_udp_closed_port_refused,
)
"""Every check, in a stable order; drivers parametrize over this."""

__all__ = [
    "CHECKS", "KIB", "MIB", "Accepted", "Collector", "Datagrams", "Echo", "PairFactory", "Peer", "StackPair",
    "VirtualTime", "check_id", "direct_stack_pair", "payload", "run_check", "server_port", "wait_or_quiet",
    "wait_or_stall", *(check.__name__ for check in CHECKS),
]
