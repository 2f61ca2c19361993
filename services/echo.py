"""The echo service: answers ARP and ping, and echoes UDP on port 7 (RFC 862).

``python -m services.echo --platform unix --interface tap0 \\
    --ipv4=10.0.0.2/24 --ipv4-gateway=10.0.0.1 [--pcap FILE]``

The application is ``Echo``, a class over a ``Stack`` (its devices come in
through the constructor: the Python form of a MirageOS functor); ``main``
is the wiring that picks the platform and builds netif -> stack -> Echo.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from netstack.protocols import PlatformError
from netstack.stack import Stack
from services import boot

log = logging.getLogger("echo")

ECHO_PORT = 7


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class Echo:
    """Echo over any stack with ``create_datagram_endpoint``."""

    def __init__(self, stack: Stack, *, port: int = ECHO_PORT) -> None:
        self.stack = stack
        self.port = port

    async def start(self) -> None:
        """Serve until cancelled."""
        self.stack.start()
        transport, _ = await self.stack.create_datagram_endpoint(_UdpEcho, local_addr=("0.0.0.0", self.port))
        log.info("echo ready: %s, UDP echo on port %d", self.stack.address, self.port)
        try:
            await asyncio.Event().wait()
        finally:
            transport.close()
            self.stack.close()
            log.info("echo stopped")


def main(argv: list[str] | None = None) -> int:
    parser = boot.parser("python -m services.echo", "Echo service over the netstack direct stack.")
    args = parser.parse_args(argv)
    boot.check(args, parser)
    boot.configure_logging(args.logs)
    platform = boot.load_platform(args.platform)
    clock = platform.clock()
    try:
        netif = boot.open_netif(platform, args, clock)
    except PlatformError as error:
        print(f"echo: {error}", file=sys.stderr)
        return 1
    stack = Stack(netif, clock, ipv4=args.ipv4, gateway=args.ipv4_gateway)
    try:
        platform.run(Echo(stack).start())
    except PlatformError as error:
        print(f"echo: {error}", file=sys.stderr)
        return 1
    finally:
        netif.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
