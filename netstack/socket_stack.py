"""The ``Stack`` contract over the host kernel's sockets.

MirageOS's unix target can run an application over its own TCP/IP on a tap
or over the host's socket API (``--net socket``); this is the second of
those. It is deliberately thin: asyncio already speaks the contract, so each
call forwards to the running loop with the stack's own address filled in
where the caller gave none. It exists so that an application written against
``netstack.protocols.Stack`` needs no privileges to run, and so that the
conformance suite has the kernel's behaviour to hold our direct stack to.

``address`` is where servers bind when no host is given (default
``127.0.0.1``: nothing is exposed beyond this machine unless asked).

One difference from asyncio's socket transports is smoothed over:
``abort()`` must reset the connection (the peer sees ``ConnectionResetError``,
as with the direct stack), but asyncio's socket transports just close the
socket, which sends a FIN. Protocols therefore get a thin ``_Transport``
proxy whose ``abort()`` first sets ``SO_LINGER`` to ``(1, 0)``, the socket
API's way of asking for a RST.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Any

from netstack import streams


class _Transport(asyncio.Transport):
    """asyncio's socket transport, with ``abort()`` that resets (see above)."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport

    def abort(self) -> None:
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._transport.abort()

    # Everything else is the socket transport's own.
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol = self._transport.get_protocol()
        return protocol.protocol if isinstance(protocol, _Shim) else protocol

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def write(self, data: Any) -> None:
        self._transport.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._transport.writelines(list_of_data)

    def write_eof(self) -> None:
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()


class _Shim(asyncio.Protocol):
    """Hands the application's protocol a ``_Transport`` and forwards every callback."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = _Transport(transport)  # type: ignore[arg-type]
        self.protocol.connection_made(self.transport)

    def data_received(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return self.protocol.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()


class _BufferedShim(_Shim, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint: int) -> Any:
        return self.protocol.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.protocol.buffer_updated(nbytes)


def _shimmed(protocol_factory: Callable[[], Any]) -> Callable[[], _Shim]:
    def factory() -> _Shim:
        protocol = protocol_factory()
        return _BufferedShim(protocol) if isinstance(protocol, asyncio.BufferedProtocol) else _Shim(protocol)

    return factory


class SocketStack:
    """Kernel TCP/IP behind the ``Stack`` contract."""

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.address = ipaddress.ip_address(address)
        self.stats: dict[str, int] = {}
        self._servers: list[asyncio.AbstractServer] = []

    def start(self) -> None:
        """Nothing to start: the kernel is already up. Present for symmetry with ``Stack``."""

    def _host(self, host: str | None) -> str:
        return str(self.address) if host in (None, "") else host

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | None = None,
        port: int | None = None,
        *,
        backlog: int = 128,
        start_serving: bool = True,
        **kwds: Any,
    ) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        kwds.setdefault("reuse_address", True)
        server = await loop.create_server(
            _shimmed(protocol_factory), self._host(host), port, backlog=backlog, start_serving=start_serving,
            family=socket.AF_INET if self.address.version == 4 else socket.AF_INET6, **kwds,
        )
        self._servers.append(server)
        return server

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **kwds: Any
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()
        _, shim = await loop.create_connection(_shimmed(protocol_factory), host, port, **kwds)
        return shim.transport, shim.protocol

    async def start_server(
        self,
        client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        host: str | None = None,
        port: int | None = None,
        **kwds: Any,
    ) -> asyncio.AbstractServer:
        # Through our create_server, so that stream transports reset on abort() too.
        return await streams.start_server(self, client_connected_cb, host, port, **kwds)

    async def open_connection(self, host: str, port: int, **kwds: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await streams.open_connection(self, host, port, **kwds)

    async def create_datagram_endpoint(
        self,
        protocol_factory: Callable[[], asyncio.DatagramProtocol],
        local_addr: tuple[str, int] | None = None,
        remote_addr: tuple[str, int] | None = None,
        **kwds: Any,
    ) -> tuple[asyncio.DatagramTransport, asyncio.DatagramProtocol]:
        loop = asyncio.get_running_loop()
        if local_addr is not None and local_addr[0] in ("", "0.0.0.0", None):
            local_addr = (str(self.address), local_addr[1])
        if local_addr is None and remote_addr is None:
            local_addr = (str(self.address), 0)
        return await loop.create_datagram_endpoint(protocol_factory, local_addr=local_addr, remote_addr=remote_addr, **kwds)

    def counters(self) -> dict[str, int]:
        """The kernel keeps its own counters (``nstat``); we have none of ours."""
        return dict(self.stats)

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()
