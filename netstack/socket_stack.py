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
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import Any


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
            protocol_factory, self._host(host), port, backlog=backlog, start_serving=start_serving,
            family=socket.AF_INET if self.address.version == 4 else socket.AF_INET6, **kwds,
        )
        self._servers.append(server)
        return server

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: str, port: int, **kwds: Any
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        loop = asyncio.get_running_loop()
        return await loop.create_connection(protocol_factory, host, port, **kwds)  # type: ignore[return-value]

    async def start_server(
        self,
        client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        host: str | None = None,
        port: int | None = None,
        **kwds: Any,
    ) -> asyncio.AbstractServer:
        kwds.setdefault("reuse_address", True)
        server = await asyncio.start_server(client_connected_cb, self._host(host), port, **kwds)
        self._servers.append(server)
        return server

    async def open_connection(self, host: str, port: int, **kwds: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(host, port, **kwds)

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
