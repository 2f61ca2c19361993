"""Boot arguments and wiring shared by every service's ``main``.

Services take their configuration as boot arguments in MirageOS's spelling
(``--ipv4=10.0.0.2/24 --ipv4-gateway=10.0.0.1 --logs=*:info,arp:debug``).
A bad argument exits with status 64 (``EX_USAGE``) and a usage line, as a
unikernel that cannot boot its configuration would; a platform that cannot
provide a device exits 1 with one line naming the fix.

This module is the only part of ``services`` that imports a platform, and
it does so by name (``platforms.<name>``), so that retargeting is a command
line switch and not a code change.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import logging
import os
import sys
from types import ModuleType
from typing import Any, NoReturn

from netstack.protocols import Clock, Netif

EX_USAGE = 64
PLATFORMS = ("unix", "hvt")
DEFAULT_IPV4 = ipaddress.IPv4Interface("10.0.0.2/24")

_LEVELS = {
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "quiet": logging.CRITICAL + 10,
}


class BootArgumentParser(argparse.ArgumentParser):
    """``argparse`` that exits 64 with a usage line on a bad argument."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def _ipv4_interface(text: str) -> ipaddress.IPv4Interface:
    if "/" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} needs a prefix length, e.g. 10.0.0.2/24")
    try:
        return ipaddress.IPv4Interface(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _ipv4_address(text: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _faults(text: str) -> Any:
    # Imported only when asked for: its parser pulls in decimal, memory that
    # most runs (and every hvt guest without --faults) need not carry.
    from netstack.devices.faults import FaultConfig

    try:
        return FaultConfig.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_log_levels(spec: str) -> dict[str, int]:
    """MirageOS's ``--logs`` syntax: ``*:info,arp:debug`` (``*`` or empty source = all).

    Raises ``ValueError`` naming the bad item.
    """
    levels: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        source, _, level = item.rpartition(":")
        if level.lower() not in _LEVELS:
            raise ValueError(f"unknown log level {level!r} in {item!r} (use one of {', '.join(_LEVELS)})")
        levels[source or "*"] = _LEVELS[level.lower()]
    return levels


def _logs(text: str) -> dict[str, int]:
    try:
        return parse_log_levels(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def configure_logging(levels: dict[str, int]) -> None:
    """One line per event on stderr; ``source`` names map to ``netstack.<source>`` loggers too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(levels.get("*", logging.INFO))
    for source, level in levels.items():
        if source == "*":
            continue
        logging.getLogger(source).setLevel(level)
        logging.getLogger(f"netstack.{source}").setLevel(level)


def parser(prog: str, description: str) -> BootArgumentParser:
    """A parser with the boot arguments every networked service takes."""
    result = BootArgumentParser(prog=prog, description=description)
    result.add_argument("--platform", default="unix", choices=PLATFORMS, help="target platform (default: unix)")
    result.add_argument("--interface", default="tap0", help="tap interface name (default: tap0)")
    result.add_argument("--ipv4", type=_ipv4_interface, default=None,
                        help=f"our address with prefix (default: {DEFAULT_IPV4})")
    result.add_argument("--ipv4-gateway", type=_ipv4_address, default=None,
                        help="default gateway; also the host side of a tap we create "
                             "(default: the first address of the --ipv4 network, 10.0.0.1)")
    result.add_argument("--pcap", metavar="FILE", help="record every frame in and out to FILE (libpcap)")
    result.add_argument("--faults", type=_faults, metavar="SPEC",
                        help="inject faults, e.g. drop=2%%,dup=1%%,reorder=10%%,corrupt=0.5%%,seed=7")
    result.add_argument("--logs", type=_logs, default={"*": logging.INFO}, metavar="SPEC",
                        help="log levels per source, e.g. '*:info,arp:debug' (default: *:info)")
    return result


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def clock_time(text: str) -> str:
    """``HH:MM`` on a 24-hour clock."""
    hours, _, minutes = text.partition(":")
    if not (len(hours) == 2 and len(minutes) == 2 and hours.isdigit() and minutes.isdigit()
            and int(hours) < 24 and int(minutes) < 60):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 14:20")
    return text


def check(args: argparse.Namespace, parser_: BootArgumentParser) -> None:
    """Cross-argument checks that argparse cannot express; fills in defaults.

    ``args.ipv4_given`` says whether ``--ipv4`` was on the command line
    (the socket stack binds to it only then).
    """
    args.ipv4_given = args.ipv4 is not None
    if args.ipv4 is None:
        args.ipv4 = DEFAULT_IPV4
    if args.ipv4_gateway is None:
        first = next(args.ipv4.network.hosts(), None)
        args.ipv4_gateway = first if first is not None and first != args.ipv4.ip else None
    if args.ipv4_gateway is not None and args.ipv4_gateway not in args.ipv4.network:
        parser_.error(f"--ipv4-gateway {args.ipv4_gateway} is not on the network {args.ipv4.network}")
    if args.ipv4_gateway == args.ipv4.ip:
        parser_.error("--ipv4-gateway must differ from --ipv4")


def run_image_if_hvt_host(args: argparse.Namespace, application: str, argv: list[str] | None) -> int | None:
    """On the host, ``--platform hvt`` means: build ``application``'s image and
    run it under the tender; returns the tender's exit status. ``None`` when the
    service should run here (another platform, or already inside a guest,
    which has the tender's channel).

    The launcher is loaded by name, as platforms are: an import statement
    would make host-side tooling part of the application's module graph, and
    of its image.
    """
    if args.platform != "hvt" or "NETSTACK_HVT_CHANNEL" in os.environ:
        return None
    launcher = importlib.import_module("platforms.hvt.build")
    return launcher.build_and_run(application, argv)


def load_platform(name: str) -> ModuleType:
    return importlib.import_module(f"platforms.{name}")


def open_netif(platform: ModuleType, args: argparse.Namespace, clock: Clock) -> Netif:
    """The platform's netif, wrapped as the arguments ask (pcap outermost, so it sees faults)."""
    host_side = f"{args.ipv4_gateway}/{args.ipv4.network.prefixlen}" if args.ipv4_gateway is not None else None
    options: dict[str, Any] = {}
    if args.faults is not None and args.faults.corrupt > 0:
        # Offloads let the kernel leave checksums partial; corruption we add
        # must be caught by checksums, so ask for frames with full ones.
        options["offload"] = False
    netif: Any = platform.netif(args.interface, host_address=host_side, **options)
    if args.faults is not None:
        from netstack.devices.faults import FaultInjector

        netif = FaultInjector(netif, args.faults, clock=clock)
    if args.pcap:
        # Imported here: dpkt costs a few MiB of RSS that most runs never need.
        from netstack.devices.pcap import PcapNetif

        netif = PcapNetif(netif, args.pcap, clock=clock)
    return netif
