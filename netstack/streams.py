"""asyncio's streams over any stack's ``create_server`` / ``create_connection``.

``asyncio.start_server`` and ``asyncio.open_connection`` are a few lines of
wiring (a ``StreamReader`` behind a ``StreamReaderProtocol``, a
``StreamWriter`` over the transport) around the loop's own calls. These are
the same few lines around a stack's, so that both stacks (``stack.Stack``
and ``socket_stack.SocketStack``) offer streams from one implementation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

DEFAULT_LIMIT = 2**16
"""asyncio's own default buffer limit for a ``StreamReader``."""


async def start_server(
    stack: Any,
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    host: str | None = None,
    port: int | None = None,
    *,
    limit: int = DEFAULT_LIMIT,
    **kwds: Any,
) -> Any:
    """As ``asyncio.start_server``, over ``stack.create_server``."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await stack.create_server(factory, host, port, **kwds)


async def open_connection(
    stack: Any, host: str, port: int, *, limit: int = DEFAULT_LIMIT, **kwds: Any
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """As ``asyncio.open_connection``, over ``stack.create_connection``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await stack.create_connection(lambda: protocol, host, port, **kwds)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
