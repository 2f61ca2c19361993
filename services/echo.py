"""The echo service: ARP, ping, and the classic test ports over UDP and TCP.

* echo, port 7 (RFC 862): UDP datagrams and TCP streams come back as sent;
* discard, port 9 (RFC 863): TCP data is read and thrown away;
* chargen-style source, port 19: TCP sends an endless stream until the
  client closes (bulk transfer from us, for benchmarks; RFC 864's line
  pattern is not kept, only its role).

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
DISCARD_PORT = 9
SOURCE_PORT = 19
SOURCE_CHUNK = bytes(range(256)) * 256  # 64 KiB

DEVICES = [{"name": "service", "type": "NET_BASIC"}]
"""What the application needs from a platform; an hvt image's manifest lists it."""


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


class _TcpEcho(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()  # do not read faster than the client takes it back

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class _TcpDiscard(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        pass


class _TcpSource(asyncio.Protocol):
    """Writes until the transport pushes back, then waits for resume_writing."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.paused = False
        self._fill()

    def _fill(self) -> None:
        while not self.paused and not self.transport.is_closing():
            self.transport.write(SOURCE_CHUNK)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._fill()

    def data_received(self, data: bytes) -> None:
        pass


class Echo:
    """Echo, discard and source over any stack with asyncio's endpoint and server calls."""

    def __init__(self, stack: Stack, *, port: int = ECHO_PORT) -> None:
        self.stack = stack
        self.port = port

    async def start(self) -> None:
        """Serve until cancelled."""
        stack = self.stack
        stack.start()
        transport, _ = await stack.create_datagram_endpoint(_UdpEcho, local_addr=("0.0.0.0", self.port))
        servers = [
            await stack.create_server(_TcpEcho, port=self.port),
            await stack.create_server(_TcpDiscard, port=DISCARD_PORT),
            await stack.create_server(_TcpSource, port=SOURCE_PORT),
        ]
        log.info(
            "echo ready: %s, UDP and TCP echo on port %d, TCP discard on %d, TCP source on %d",
            stack.address, self.port, DISCARD_PORT, SOURCE_PORT,
        )
        try:
            await asyncio.Event().wait()
        finally:
            transport.close()
            for server in servers:
                server.close()
                server.close_clients()
            stack.close()
            counters = " ".join(f"{key}={value}" for key, value in sorted(stack.counters().items()) if value)
            log.info("echo stopped; counters: %s", counters)


def main(argv: list[str] | None = None) -> int:
    parser = boot.parser("python -m services.echo", "Echo service over the netstack direct stack.")
    args = parser.parse_args(argv)
    boot.check(args, parser)
    status = boot.run_image_if_hvt_host(args, "services.echo", argv)
    if status is not None:
        return status
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
