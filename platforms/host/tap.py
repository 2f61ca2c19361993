"""A tap device as a ``Netif``: Ethernet frames to and from the host kernel.

Theory of operation
-------------------

Opening ``/dev/net/tun`` and issuing ``TUNSETIFF`` with ``IFF_TAP |
IFF_NO_PI`` attaches the file descriptor to the named tap interface, creating
it when no interface of that name exists. Every frame the kernel transmits on
the interface becomes one ``read`` on the descriptor; every ``write`` of one
frame is received by the kernel as if it had come in on a wire. The
descriptor is non-blocking and read from the event loop.

Who owns the interface decides what we may change::

    created by us      -> bring it up, give the host side ``host_address``,
                          remove it again on close()
    existed already    -> use it exactly as it is: no state, address or MTU
    (ip tuntap add)       changes, and it stays after close()

The distinction is made by the kernel, not by a racy lookup beforehand: a tap
that we attached to and that is not ``IFF_PERSIST`` can only have been
created by our own ``TUNSETIFF`` (a non-persistent tap disappears when its
last descriptor closes, and one still attached elsewhere gives ``EBUSY``).
For the same reason our tap is removed on ``close`` by clearing
``IFF_PERSIST`` (in case somebody set it meanwhile) and closing the
descriptor; no netlink is needed then, so ``close`` works from whatever
network namespace it is called in.

Configuration (up, address, reading the MTU and the kernel side's MAC) uses
pyroute2's netlink client in a short-lived helper thread; see
``_in_fresh_thread`` for why.

Receiving is batched (DESIGN.md, "batch reads per loop wake-up"): on each
readability callback we read until ``EAGAIN`` or ``BATCH_LIMIT`` frames and
hand the batch to the receiver once. A full batch leaves the reader armed, so
a busy device cannot starve the rest of the loop.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from netstack.protocols import Frame, FrameBatch, LargeFrame, Offload, PlatformError

TUN_DEVICE = "/dev/net/tun"
"""The clone device; ``TapNetif(device=...)`` overrides it (tests do)."""

BATCH_LIMIT = 64
"""Most frames handed to the receiver per wake-up."""

READ_SIZE = 10 + 65536 + 14 + 4
"""Bytes asked for per read: any frame the kernel may hand a tap, tags included."""

ETHERNET_HEADER_LEN = 14

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

# <linux/virtio_net.h>: the header in front of every frame with IFF_VNET_HDR.
VNET_HDR = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
_PLAIN_VNET_HDR = bytes(VNET_HDR_LEN)
TCP_CHECKSUM_OFFSET = 16
MAX_OFFLOAD_SEGMENT = 65535 - 40 - 40  # IP packet bound, less room for TCP options

IFNAMSIZ = 16
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags, padding to 40 bytes

_ROOT_FIX = "run as root (or grant CAP_NET_ADMIN)"

T = TypeVar("T")


class TapNetif:
    """A tap interface opened through ``/dev/net/tun``; implements ``Netif``.

    ``TapNetif(name, host_address=..., mac=...)`` opens the tap ``name``
    (creating it when missing; ``"tap%d"`` lets the kernel pick the number,
    see ``name``). ``host_address`` (``"10.0.0.1/24"``, IPv6 works too) is
    given to the kernel side of a tap we create; ``None`` assigns none.
    ``mac`` is our address (six bytes or ``"02:..."``); by default a random
    locally administered unicast one that differs from the kernel side's.

    Callback order (the ``Netif`` contract)::

        listen(receive) -> receive(batch)* -> close()

    ``listen`` must be called from a running event loop. ``close`` is
    idempotent.

    Errors: ``PlatformError`` (one line naming the fix) when the device
    cannot be opened or configured; ``ValueError`` for a bad ``name``,
    ``host_address`` or ``mac``.
    """

    def __init__(
        self,
        name: str = "tap0",
        *,
        host_address: str | None = "10.0.0.1/24",
        mac: bytes | str | None = None,
        device: str | None = None,
        offload: bool = True,
    ) -> None:
        if not name or len(name.encode()) >= IFNAMSIZ or "/" in name or " " in name:
            raise ValueError(f"bad interface name {name!r}: 1 to {IFNAMSIZ - 1} bytes, no '/' or spaces")
        host_interface = ipaddress.ip_interface(host_address) if host_address is not None else None
        wanted_mac = _parse_mac(mac) if mac is not None else None
        if wanted_mac is not None and wanted_mac[0] & 0x01:
            raise ValueError(f"{_format_mac(wanted_mac)} is a multicast address; a netif needs a unicast one")

        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._receive: Callable[[FrameBatch], None] | None = None
        self._rx_frames = self._tx_frames = self._rx_bytes = self._tx_bytes = self._tx_dropped = 0

        fd, self._name, self._created = _attach(device or TUN_DEVICE, name, vnet_hdr=offload)
        self._fd = fd
        self._vnet_hdr = offload
        try:
            self._mtu, self._host_mac = _in_fresh_thread(lambda: _configure(self._name, self._created, host_interface))
        except BaseException:
            self.close()
            raise
        if wanted_mac is None:
            wanted_mac = _random_mac()
            while wanted_mac == self._host_mac:
                wanted_mac = _random_mac()
        elif wanted_mac == self._host_mac:
            self.close()
            raise ValueError(f"mac {_format_mac(wanted_mac)} is the kernel side's MAC of {self._name}; choose another")
        self._mac = wanted_mac
        if offload:
            # Segmentation offload both ways: one write carries up to 64 KiB
            # of TCP and the kernel cuts it and completes its checksums; the
            # kernel hands us TCP segments of up to 64 KiB with checksums it
            # vouches for (valid, or left partial because nothing but this
            # host's own memory carried them), so we need not verify them.
            self._offload = Offload(
                rx_checksum=True, tx_checksum=False, max_tx_segment=MAX_OFFLOAD_SEGMENT, max_rx_segment=65535
            )
        else:
            self._offload = Offload(max_tx_segment=self._mtu, max_rx_segment=self._mtu)
        self._max_frame = self._mtu + ETHERNET_HEADER_LEN
        self._max_large_frame = self._offload.max_tx_segment + ETHERNET_HEADER_LEN

    # -- what this tap is ------------------------------------------------------

    @property
    def name(self) -> str:
        """The interface's name as the kernel knows it (``tap%d`` resolved)."""
        return self._name

    @property
    def created(self) -> bool:
        """Whether we created the interface (and so remove it on ``close``)."""
        return self._created

    @property
    def host_mac(self) -> bytes:
        """The kernel side's MAC: the address the host answers ARP with."""
        return self._host_mac

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("created" if self._created else "attached")
        return f"<TapNetif {self._name} {state} mac={_format_mac(self._mac)} mtu={self._mtu}>"

    # -- the Netif contract ----------------------------------------------------

    @property
    def mac(self) -> bytes:
        return self._mac

    @property
    def mtu(self) -> int:
        """The interface's MTU, read when it was opened."""
        return self._mtu

    @property
    def offload(self) -> Offload:
        return self._offload

    @property
    def stats(self) -> dict[str, int]:
        return {
            "rx_frames": self._rx_frames,
            "tx_frames": self._tx_frames,
            "rx_bytes": self._rx_bytes,
            "tx_bytes": self._tx_bytes,
            "tx_dropped": self._tx_dropped,
        }

    def listen(self, receive: Callable[[FrameBatch], None]) -> None:
        if self._fd < 0:
            raise OSError(errno.EBADF, f"{self._name} is closed")
        if self._receive is not None:
            raise RuntimeError(f"{self._name}: listen() may be called once")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("TapNetif.listen() needs a running event loop; call it from the main coroutine") from None
        self._loop = loop
        self._receive = receive
        loop.add_reader(self._fd, self._on_readable)

    def write(self, frame: Frame) -> None:
        size = len(frame)
        if size > self._max_frame or size < ETHERNET_HEADER_LEN:
            if not (type(frame) is LargeFrame and size <= self._max_large_frame and self._vnet_hdr):
                raise ValueError(f"frame of {size} bytes; {self._name} takes {ETHERNET_HEADER_LEN} to {self._max_frame}")
        try:
            if not self._vnet_hdr:
                os.write(self._fd, frame)
            elif type(frame) is LargeFrame and size > self._max_frame:
                os.writev(self._fd, (_gso_header(frame), frame))
            else:
                os.writev(self._fd, (_PLAIN_VNET_HDR, frame))
        except BlockingIOError:
            self._tx_dropped += 1  # the tap's queue is full: drop, as a full NIC ring would
            return
        except OSError as error:
            # ENOBUFS: the kernel is short of memory for the skb. EIO: the
            # interface is administratively down, i.e. the link is down.
            # Both are transient conditions of the wire, not bugs: drop.
            if error.errno in (errno.ENOBUFS, errno.EIO):
                self._tx_dropped += 1
                return
            raise
        self._tx_frames += 1
        self._tx_bytes += size

    def close(self) -> None:
        fd = self._fd
        if fd < 0:
            return
        self._fd = -1
        loop = self._loop
        if loop is not None and self._receive is not None and not loop.is_closed():
            loop.remove_reader(fd)
        try:
            if self._created:
                # Clear IFF_PERSIST in case someone set it since we created
                # the tap; then closing the last descriptor removes it.
                fcntl.ioctl(fd, TUNSETPERSIST, 0)
        finally:
            os.close(fd)

    # -- receiving -------------------------------------------------------------

    def _on_readable(self) -> None:
        fd = self._fd
        batch: list[Frame] = []
        received = 0
        strip = VNET_HDR_LEN if self._vnet_hdr else 0
        try:
            while len(batch) < BATCH_LIMIT:
                frame = os.read(fd, READ_SIZE)
                if strip:
                    # The header says whether the kernel left the checksum
                    # partial or merged segments (GRO/TSO); with rx_checksum
                    # offered the stack trusts both, so we only skip it.
                    frame = memoryview(frame)[strip:]
                batch.append(frame)
                received += len(frame)
        except BlockingIOError:
            pass
        except OSError as error:
            # The device went away under us (deleted with ``ip link del``
            # reads EBADFD): stop reading, or the loop would spin on it.
            assert self._loop is not None
            self._loop.remove_reader(fd)
            self._loop.call_exception_handler(
                {"message": f"reading {self._name} failed; no more frames will be received", "exception": error}
            )
        if not batch:
            return
        self._rx_frames += len(batch)
        self._rx_bytes += received
        assert self._receive is not None and self._loop is not None
        try:
            self._receive(batch)
        except Exception as error:  # the contract: report and keep delivering
            self._loop.call_exception_handler(
                {"message": f"the receiver of {self._name} raised", "exception": error, "netif": self}
            )


# -- opening -------------------------------------------------------------------


def _gso_header(frame: LargeFrame) -> bytes:
    """The virtio-net header asking the kernel to segment a TCP/IPv4 frame."""
    ip_header_len = (frame[ETHERNET_HEADER_LEN] & 0x0F) * 4
    csum_start = ETHERNET_HEADER_LEN + ip_header_len
    tcp_header_len = (frame[csum_start + 12] >> 4) * 4
    return VNET_HDR.pack(
        VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_TCPV4,
        csum_start + tcp_header_len,
        frame.segment_size,
        csum_start,
        TCP_CHECKSUM_OFFSET,
    )


def _attach(device: str, name: str, *, vnet_hdr: bool = False) -> tuple[int, str, bool]:
    """Open ``device`` and attach to tap ``name``: ``(fd, actual name, created)``."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise PlatformError(
            f"cannot open {device}: no such device; load the tun module (modprobe tun) "
            f"or create it (mkdir -p /dev/net && mknod {device} c 10 200)"
        ) from None
    except OSError as error:
        if error.errno in (errno.ENODEV, errno.ENXIO):
            raise PlatformError(f"cannot open {device}: the tun driver is not loaded; run modprobe tun") from None
        if error.errno in (errno.EPERM, errno.EACCES):
            raise PlatformError(f"cannot open {device}: permission denied; {_ROOT_FIX}") from None
        raise PlatformError(f"cannot open {device}: {error.strerror}") from None
    try:
        request = bytearray(_IFREQ.pack(name.encode(), IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)))
        fcntl.ioctl(fd, TUNSETIFF, request)
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
        actual = _IFREQ.unpack(request)[0].rstrip(b"\0").decode()
        fcntl.ioctl(fd, TUNGETIFF, request)
        flags = _IFREQ.unpack(request)[1]
    except OSError as error:
        os.close(fd)
        raise _attach_error(name, error) from None
    return fd, actual, not flags & IFF_PERSIST


def _attach_error(name: str, error: OSError) -> PlatformError:
    if error.errno in (errno.EPERM, errno.EACCES):
        if _exists(name):
            return PlatformError(
                f"cannot attach to tap {name}: permission denied; run as root, or give yourself the tap "
                f"(ip tuntap del dev {name} mode tap && ip tuntap add dev {name} mode tap user $USER)"
            )
        return PlatformError(f"cannot create tap {name}: permission denied; {_ROOT_FIX}")
    if error.errno == errno.EBUSY:
        return PlatformError(
            f"tap {name} is busy: another process has it open; stop that process or choose another name"
        )
    if error.errno == errno.EINVAL:
        return PlatformError(
            f"cannot open {name} as a tap: an interface of that name exists and is not a single-queue tap; "
            "choose another name"
        )
    return PlatformError(f"cannot open tap {name}: {error.strerror}")


def _exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _configure(
    name: str, created: bool, host_interface: ipaddress.IPv4Interface | ipaddress.IPv6Interface | None
) -> tuple[int, bytes]:
    """Bring a tap we created up with its host address; return ``(mtu, host MAC)``."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            (index,) = ipr.link_lookup(ifname=name)
            if created:
                if host_interface is not None:
                    ipr.addr(
                        "add",
                        index=index,
                        address=str(host_interface.ip),
                        prefixlen=host_interface.network.prefixlen,
                    )
                ipr.link("set", index=index, state="up")
            (link,) = ipr.get_links(index)
            return int(link.get("mtu") or 1500), _parse_mac(link.get("address"))
    except NetlinkError as error:
        fix = f"; {_ROOT_FIX}" if error.code in (errno.EPERM, errno.EACCES) else ""
        raise PlatformError(f"cannot configure tap {name}: {os.strerror(error.code)}{fix}") from None


def _in_fresh_thread(function: Callable[[], T]) -> T:
    """Run ``function()`` in a new thread, wait for it, and return its result.

    Why a thread: pyroute2's synchronous ``IPRoute`` runs an event loop of its
    own, which cannot start in a thread whose loop is already running (a tap
    may be opened from inside ``main``). Why a *fresh* one: a new thread
    starts in the network namespace of the thread that created it, so its
    netlink socket sees the same interfaces that ``TUNSETIFF`` just used,
    even when the caller has switched namespaces with ``setns`` (tests do).
    Opening a tap is a start-up event; blocking the loop for it is fine.
    """
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = function()
        except BaseException as error:  # re-raised in the caller
            outcome["error"] = error

    thread = threading.Thread(target=work, name="tap-netlink", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


# -- MAC addresses ---------------------------------------------------------------


def _random_mac() -> bytes:
    """A random unicast (bit 0 clear), locally administered (bit 1 set) address."""
    first, *rest = os.urandom(6)
    return bytes([(first & 0xFC) | 0x02, *rest])


def _parse_mac(mac: bytes | str) -> bytes:
    if isinstance(mac, str):
        try:
            parsed = bytes(int(part, 16) for part in mac.split(":"))
        except ValueError:
            parsed = b""
        if len(parsed) != 6 or any(len(part) not in (1, 2) for part in mac.split(":")):
            raise ValueError(f"bad MAC address {mac!r}; expected six hex bytes like 02:00:00:00:00:01")
    else:
        parsed = bytes(mac)
        if len(parsed) != 6:
            raise ValueError(f"a MAC address is 6 bytes, not {len(parsed)}")
    return parsed


def _format_mac(mac: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in mac)
