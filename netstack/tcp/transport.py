"""asyncio Transports, servers and streams over the TCP layer.

Theory of operation
-------------------
A ``TcpTransport`` is a real ``asyncio.Transport``: any ``asyncio.Protocol``
(or ``asyncio.BufferedProtocol``, fed through ``get_buffer``/``buffer_updated``)
and asyncio's own ``StreamReader``/``StreamWriter`` run over it unchanged.
It turns the connection core's events into protocol callbacks, in asyncio's
order::

    connection_made -> [data_received* -> [eof_received]] -> connection_lost

and the application's calls into core calls, followed by ``kick`` so that
the layer flushes once per loop iteration however many writes there were.

Flow control, both ways, as asyncio defines it:

* writing: ``get_write_buffer_size()`` is the bytes queued but not yet
  transmitted once (data in flight is the kernel-socket-buffer equivalent
  and bounded by the windows). Above the high-water mark (64 KiB by
  default) the protocol gets ``pause_writing()``, below the low-water mark
  ``resume_writing()``.
* reading: ``pause_reading()`` stops ``data_received``; the bytes stay in
  the core's receive buffer, so the window we advertise shrinks and the
  peer stops. ``resume_reading()`` delivers them and reopens the window.

``close()`` sends FIN once the queued data is out, and ``connection_lost``
follows when the FIN is acknowledged (or the connection fails); data that
arrives afterwards is answered with RST, as Linux does for a closed socket.
``write_eof()`` half-closes; a ``write()`` after it raises ``RuntimeError``
as on asyncio's socket transports. ``abort()`` sends RST at once.
A connection that ends cleanly while reading is paused keeps its unread
bytes and EOF for the application, as a kernel socket does:
``connection_lost`` waits until ``resume_reading`` has delivered them.

``get_extra_info("socket")`` is a small stand-in that accepts the
``setsockopt`` calls asyncio programs make on TCP sockets: ``TCP_NODELAY``,
``SO_KEEPALIVE``, ``TCP_KEEPIDLE``, ``TCP_KEEPINTVL``, ``TCP_KEEPCNT``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from netstack.tcp.connection import SECOND, TcpConnection
from netstack.tcp.states import State

DEFAULT_HIGH_WATER = 64 * 1024


def _str_address(packed: bytes) -> str:
    return f"{packed[0]}.{packed[1]}.{packed[2]}.{packed[3]}"


def _feed_buffered(protocol: asyncio.BufferedProtocol, data: bytes) -> None:
    """Hand ``data`` to a ``BufferedProtocol`` through as many ``get_buffer`` calls as it takes.

    asyncio's own transports speak both protocol flavours; so must ours
    (the same loop as ``asyncio.protocols._feed_data_to_buffered_proto``).
    """
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(len(view))
        size = min(len(buffer), len(view))
        if not size:
            raise RuntimeError("get_buffer() returned an empty buffer")
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]


class SocketOptions:
    """What ``get_extra_info("socket")`` returns: options, not a file descriptor."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM
    proto = socket.IPPROTO_TCP

    def __init__(self, transport: TcpTransport) -> None:
        self._transport = transport

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        value = int.from_bytes(value, "little") if isinstance(value, bytes) else int(value)
        connection = self._transport._connection
        now = self._transport._stack_now()
        if level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY:
            connection.nodelay = bool(value)
            self._transport._kick()
        elif level == socket.SOL_SOCKET and option == socket.SO_KEEPALIVE:
            connection.set_keepalive(bool(value), now)
        elif level == socket.IPPROTO_TCP and option == getattr(socket, "TCP_KEEPIDLE", -1):
            connection.set_keepalive(connection.config.keepalive, now, keepalive_idle_ns=value * SECOND)
        elif level == socket.IPPROTO_TCP and option == getattr(socket, "TCP_KEEPINTVL", -2):
            connection.set_keepalive(connection.config.keepalive, now, keepalive_interval_ns=value * SECOND)
        elif level == socket.IPPROTO_TCP and option == getattr(socket, "TCP_KEEPCNT", -3):
            connection.set_keepalive(connection.config.keepalive, now, keepalive_count=value)
        else:
            raise OSError(92, f"option {level}/{option} is not supported by netstack")  # ENOPROTOOPT
        self._transport._layer.touch(connection)

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> int:
        connection = self._transport._connection
        if level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY:
            return int(connection.nodelay)
        if level == socket.SOL_SOCKET and option == socket.SO_KEEPALIVE:
            return int(connection.config.keepalive)
        raise OSError(92, f"option {level}/{option} is not supported by netstack")

    def getpeername(self) -> tuple[str, int]:
        return self._transport.get_extra_info("peername")

    def getsockname(self) -> tuple[str, int]:
        return self._transport.get_extra_info("sockname")


class TcpTransport(asyncio.Transport):
    """One TCP connection as an asyncio transport."""

    def __init__(self, stack: Any, connection: TcpConnection, protocol: asyncio.BaseProtocol, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(
            {
                "peername": (_str_address(connection.remote[0]), connection.remote[1]),
                "sockname": (_str_address(connection.local[0]), connection.local[1]),
                "tcp_connection": connection,
            }
        )
        self._extra["socket"] = SocketOptions(self)
        self._stack = stack
        self._layer = stack.tcp
        self._connection = connection
        self._protocol: Any = protocol
        self._loop = loop
        self._closing = False
        self._lost = False
        self._reading = True
        self._eof_delivered = False
        self._eof_written = False
        self._writing_paused = False
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._made = False
        self._lost_deferred = False  # closed cleanly while unread data waits for resume_reading
        self.on_lost: Callable[[TcpTransport], None] | None = None

    def _stack_now(self) -> int:
        return self._stack.clock.monotonic_ns()

    def _kick(self) -> None:
        self._layer.kick(self._connection)
        self._stack.schedule_flush()

    def _start(self) -> None:
        """Call ``connection_made`` and deliver anything that already arrived."""
        self._made = True
        self._protocol.connection_made(self)
        self._deliver()
        if self._connection.state == State.CLOSED and not self._lost:
            # The connection ended before connection_made could run (one
            # batch held the handshake's ACK, data and a RST, say): its
            # "closed" event went to nobody, so report it now.
            self._on_closed()

    # -- from the layer ------------------------------------------------------

    def connection_events(self, events: list[str]) -> None:
        if not self._made:
            return
        for event in events:
            if event == "data" or event == "eof":
                self._deliver()
            elif event == "acked":
                self._maybe_resume_writing()
            elif event == "closed":
                self._on_closed()
        if self._closing and not self._lost and self._connection.state in (
            State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED,
        ):
            self._connection_lost(None)

    def _on_closed(self) -> None:
        self._deliver()
        error = self._connection.error
        if error is None and self._unread():
            # A clean close (both FINs exchanged) while the application has
            # paused reading: the bytes and the EOF are still its to read,
            # as they stay in a kernel socket. connection_lost waits until
            # _deliver has handed them over.
            self._lost_deferred = True
            return
        self._connection_lost(error)

    def _unread(self) -> bool:
        connection = self._connection
        return not self._closing and (connection.readable > 0 or (connection.fin_received and not self._eof_delivered))

    def _deliver(self) -> None:
        if not self._reading or self._lost:
            return
        self._deliver_once()
        if self._lost_deferred and not self._lost and not self._unread():
            self._connection_lost(None)

    def _deliver_once(self) -> None:
        connection = self._connection
        if connection.readable and not self._closing:
            data = connection.read()
            try:
                if isinstance(self._protocol, asyncio.BufferedProtocol):
                    _feed_buffered(self._protocol, data)
                else:
                    self._protocol.data_received(data)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "data_received raised")
                return
        if connection.fin_received and not self._eof_delivered and not connection.readable:
            self._eof_delivered = True
            if self._closing:
                return
            try:
                keep_open = self._protocol.eof_received()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "eof_received raised")
                return
            if not keep_open:
                self.close()

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        self._loop.call_exception_handler({"message": message, "exception": exc, "transport": self, "protocol": self._protocol})
        self.abort()

    def _connection_lost(self, error: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self.on_lost is not None:
            self.on_lost(self)
        self._loop.call_soon(self._protocol.connection_lost, error)

    def _maybe_resume_writing(self) -> None:
        if self._writing_paused and self.get_write_buffer_size() <= self._low:
            self._writing_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler({"message": "resume_writing raised", "exception": exc, "transport": self})

    # -- asyncio.BaseTransport -----------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        connection = self._connection
        connection.reading_closed = True
        if connection.state == State.CLOSED:
            self._connection_lost(connection.error)
            return
        connection.close(self._stack_now())
        self._kick()
        if connection.state in (State.FIN_WAIT_2, State.TIME_WAIT, State.CLOSED):
            # Our FIN was already acknowledged (write_eof came first), or the
            # connection is over: no later event would report the loss.
            self._connection_lost(None)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    # -- asyncio.ReadTransport -----------------------------------------------

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        if self._reading:
            return
        self._reading = True
        self._loop.call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        self._deliver()
        self._kick()  # the window may have opened

    # -- asyncio.WriteTransport ----------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._maybe_pause_writing()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        return self._connection.unsent

    def _maybe_pause_writing(self) -> None:
        if not self._writing_paused and self.get_write_buffer_size() > self._high:
            self._writing_paused = True
            try:
                self._protocol.pause_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler({"message": "pause_writing raised", "exception": exc, "transport": self})

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
        if self._eof_written:
            # As asyncio's socket transports: the data could never be sent,
            # and dropping it silently would hide the application's bug.
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._closing or self._connection.state == State.CLOSED:
            return  # as asyncio does: writing to a closing transport is ignored
        try:
            self._connection.send(data)
        except ConnectionError:
            return
        self._kick()
        self._maybe_pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        self._connection.close(self._stack_now())
        self._kick()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._connection.abort(self._stack_now())
        self._kick()
        self._connection_lost(None)


class TcpServer(asyncio.AbstractServer):
    """What ``Stack.create_server`` returns."""

    def __init__(self, stack: Any, port: int, protocol_factory: Callable[[], asyncio.BaseProtocol], backlog: int, loop: asyncio.AbstractEventLoop) -> None:
        self._stack = stack
        self._port = port
        self._factory = protocol_factory
        self._backlog = backlog
        self._loop = loop
        self._listener: Any = None
        self._transports: set[TcpTransport] = set()
        self._closed = loop.create_future()
        self._serving_forever: asyncio.Future[None] | None = None
        self._no_clients: asyncio.Future[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def sockets(self) -> tuple[()]:
        return ()

    def _accept(self, connection: TcpConnection) -> TcpTransport | None:
        try:
            protocol = self._factory()
        except Exception as exc:  # a broken factory must not break the stack
            self._loop.call_exception_handler({"message": "protocol factory raised", "exception": exc})
            return None
        transport = TcpTransport(self._stack, connection, protocol, self._loop)
        transport.on_lost = self._forget
        self._transports.add(transport)
        # Started now, inside the batch that completed the handshake, so that
        # data riding on the handshake's ACK is answered in the same batch: a
        # reply then carries the ACK instead of following a bare one.
        try:
            transport._start()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            transport._fatal_error(exc, "connection_made raised")
        return transport

    def _forget(self, transport: TcpTransport) -> None:
        self._transports.discard(transport)
        if not self._transports and self._no_clients is not None and not self._no_clients.done():
            self._no_clients.set_result(None)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._listener is not None

    async def start_serving(self) -> None:
        if self._listener is None and not self._closed.done():
            self._listener = self._stack.tcp.listen(self._port, self._accept, self._backlog)

    async def serve_forever(self) -> None:
        await self.start_serving()
        self._serving_forever = self._loop.create_future()
        try:
            await self._serving_forever
        except asyncio.CancelledError:
            self.close()
            raise

    def close(self) -> None:
        if self._listener is not None:
            self._stack.tcp.unlisten(self._listener)
            self._listener = None
        if self._serving_forever is not None and not self._serving_forever.done():
            self._serving_forever.cancel()
        if not self._closed.done():
            self._closed.set_result(None)

    def close_clients(self) -> None:
        for transport in list(self._transports):
            transport.close()

    def abort_clients(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    async def wait_closed(self) -> None:
        """Wait for ``close()`` and then for every connection it accepted to end."""
        await asyncio.shield(self._closed)
        if self._transports:
            if self._no_clients is None or self._no_clients.done():
                self._no_clients = self._loop.create_future()
            await asyncio.shield(self._no_clients)

    async def __aenter__(self) -> TcpServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()
