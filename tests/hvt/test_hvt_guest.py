"""The guest side of hvt against a fake tender: hypercalls, devices, selector, boot.

``FakeTender`` is a thread speaking ``platforms.hvt.abi`` on one end of a
``SOCK_SEQPACKET`` pair, with net devices backed by in-memory queues and
block devices by a ``bytearray``. Device and selector tests talk to it from
this process; ``guest.main`` runs in a subprocess that inherits the other
end (``guest.main`` ends its process), exactly as the real tender starts an
image. ``test_hvt_sandbox.py`` reuses the fake tender.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes.util
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

import platforms.hvt as platform
from netstack.protocols import Block, Clock, Netif, PlatformError
from platforms.hvt import abi, guest
from platforms.hvt.abi import AbiError, BlockDevice, BootInfo, Call, NetDevice, Result
from platforms.hvt.hypercalls import Hypercalls, TenderError
from platforms.hvt.selector import HvtSelector

REPOSITORY = Path(__file__).resolve().parents[2]
WALLTIME_NS = 1_600_000_000 * 10**9
MAC = bytes.fromhex("020000000001")
NETS = (NetDevice("service", MAC, 1500), NetDevice("other", bytes.fromhex("020000000002"), 9000))
DISK = BlockDevice("disk", 512, 512 * 256)
HAVE_SECCOMP = ctypes.util.find_library("seccomp") is not None
needs_seccomp = pytest.mark.skipif(not HAVE_SECCOMP, reason="libseccomp is not installed (apt-get install libseccomp2)")

Reply = Callable[[int, int, memoryview], bytes | None]


class FakeTender:
    """A tender in a thread: serves one guest on ``guest_end``.

    ``rx[handle]`` holds frames for the guest to read; ``tx[handle]`` the
    batches it wrote. ``replies[call]`` replaces the answer to a call (for
    broken-tender tests): ``f(handle, flags, payload) -> message | None``.
    Everything the guest asked is in ``calls``; its console in ``console``,
    its sandbox notes in ``notes``, its ``HALT`` in ``halted``.
    """

    def __init__(
        self,
        info: BootInfo | None = None,
        *,
        boot: bytes | None = None,
        walltime_ns: int = WALLTIME_NS,
        replies: dict[Call, Reply] | None = None,
    ) -> None:
        self.info = info if info is not None else BootInfo(("--x=1",), (*NETS, DISK), 64 << 20)
        self.walltime_ns = walltime_ns
        self.replies = dict(replies or {})
        self.tender_end, self.guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (self.tender_end, self.guest_end):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        nets = [device for device in self.info.devices if isinstance(device, NetDevice)]
        blocks = [device for device in self.info.devices if isinstance(device, BlockDevice)]
        self.rx: dict[int, collections.deque[bytes]] = {handle: collections.deque() for handle in range(len(nets))}
        self.tx: dict[int, list[list[bytes]]] = {handle: [] for handle in range(len(nets))}
        self.disks = {handle: bytearray(device.capacity) for handle, device in enumerate(blocks)}
        self.sector_sizes = {handle: device.sector_size for handle, device in enumerate(blocks)}
        self.calls: list[tuple[Call, int]] = []
        self.polls: list[tuple[int, int]] = []  # (deadline, monotonic_ns when asked)
        self.console = bytearray()
        self.notes: list[str] = []
        self.halted: tuple[int, str] | None = None
        self.halt_event = threading.Event()
        self.closed = threading.Event()
        self._changed = threading.Condition()
        self._stopping = False
        self.tender_end.send(boot if boot is not None else abi.request(Call.BOOT, self.info.encode()))
        self._thread = threading.Thread(target=self._serve, name="fake-tender", daemon=True)
        self._thread.start()

    # -- test controls -------------------------------------------------------------------

    def inject(self, handle: int, *frames: bytes) -> None:
        with self._changed:
            self.rx[handle].extend(frames)
            self._changed.notify_all()

    def written(self, handle: int = 0) -> list[bytes]:
        return [frame for batch in self.tx[handle] for frame in batch]

    def count(self, call: Call) -> int:
        return sum(1 for made, _ in self.calls if made == call)

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for end in (self.tender_end, self.guest_end):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        self.tender_end.close()
        self.guest_end.close()

    # -- serving -------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                try:
                    message = self.tender_end.recv(abi.HEADER_LEN + abi.MAX_MESSAGE)
                except OSError:
                    return
                if not message:
                    return
                call, flags, handle, payload = abi.parse(message)
                self.calls.append((Call(call), handle))
                if call in self.replies:
                    reply = self.replies[Call(call)](handle, flags, payload)
                else:
                    reply = self._answer(Call(call), handle, payload)
                if reply is not None:
                    self.tender_end.send(reply)
        finally:
            self.closed.set()

    def _answer(self, call: Call, handle: int, payload: memoryview) -> bytes | None:
        if call == Call.WALLTIME:
            return abi.response(call, Result.OK, abi.u64(self.walltime_ns))
        if call == Call.PUTS:
            text = bytes(payload)
            if text.startswith(b"\0sandbox-refused:"):
                self.notes.append(text[len(b"\0sandbox-refused:") :].decode())
            else:
                self.console += text
            return abi.response(call, Result.OK)
        if call == Call.POLL:
            deadline = abi.read_u64(payload)
            self.polls.append((deadline, time.monotonic_ns()))
            with self._changed:
                while not self._ready() and not self._stopping:
                    remaining = deadline - time.monotonic_ns()
                    if remaining <= 0:
                        break
                    self._changed.wait(min(remaining / 1e9, 1.0))
                return abi.response(call, Result.OK, abi.u64(self._ready()))
        if call == Call.NET_READ:
            wanted = abi.read_u16(payload)
            with self._changed:
                queue = self.rx[handle]
                frames = [queue.popleft() for _ in range(min(wanted, len(queue)))]
            if not frames:
                return abi.response(call, Result.AGAIN)
            return abi.response(call, Result.OK, abi.encode_frames(frames), count=len(frames))
        if call == Call.NET_WRITE:
            frames, offset = [], 0
            while offset < len(payload):
                length, rest = abi.read_u32_prefix(payload[offset:])
                frames.append(bytes(rest[:length]))
                offset += 4 + length
            self.tx[handle].append(frames)
            return abi.response(call, Result.OK)
        if call == Call.BLOCK_READ:
            offset, length = abi.read_block_request(payload)
            if not self._block_ok(handle, offset, length):
                return abi.response(call, Result.EINVAL)
            return abi.response(call, Result.OK, bytes(self.disks[handle][offset : offset + length]))
        if call == Call.BLOCK_WRITE:
            offset, data = abi.read_u64_prefix(payload)
            if not self._block_ok(handle, offset, len(data)):
                return abi.response(call, Result.EINVAL)
            self.disks[handle][offset : offset + len(data)] = data
            return abi.response(call, Result.OK)
        if call == Call.HALT:
            status, reason = abi.read_u32_prefix(payload)
            self.halted = (status, bytes(reason).decode())
            self.halt_event.set()
            return None
        return abi.response(call, Result.EINVAL)

    def _ready(self) -> int:
        return sum(1 << handle for handle, queue in self.rx.items() if queue)

    def _block_ok(self, handle: int, offset: int, length: int) -> bool:
        size = self.sector_sizes.get(handle)
        return size is not None and offset % size == 0 and length % size == 0 and offset + length <= len(self.disks[handle])


def run_guest(
    tender: FakeTender,
    app_source: str,
    tmp_path: Path,
    *,
    preload: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """``guest.main("hvt_test_app", preload)`` in a subprocess holding the guest end."""
    (tmp_path / "hvt_test_app.py").write_text(textwrap.dedent(app_source))
    code = f"from platforms.hvt.guest import main; main('hvt_test_app', preload={list(preload)!r})"
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPOSITORY)]),
        "NETSTACK_HVT_CHANNEL": str(tender.guest_end.fileno()),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        pass_fds=(tender.guest_end.fileno(),),
        env=env,
        cwd=str(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tender.guest_end.close()  # the guest's copy only: its death closes the channel
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        pytest.fail(f"the guest hung; console so far: {tender.console.decode()!r}, stderr: {stderr}")
    tender.closed.wait(5)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def tender() -> Iterator[FakeTender]:
    fake = FakeTender()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def booted(tender: FakeTender) -> Iterator[FakeTender]:
    """This process as a booted guest of ``tender`` (no sandbox: that needs a subprocess)."""
    guest.boot(Hypercalls(tender.guest_end))
    try:
        yield tender
    finally:
        platform._open_netifs.clear()
        guest._current = None


@pytest.fixture
def loop(booted: FakeTender) -> Iterator[asyncio.AbstractEventLoop]:
    """asyncio's loop over ``HvtSelector``, as ``platform.run`` makes it."""
    event_loop = asyncio.SelectorEventLoop(HvtSelector(guest.current().hypercalls))
    try:
        yield event_loop
    finally:
        event_loop.close()


def frame(number: int, size: int = 60) -> bytes:
    return MAC + bytes(6) + b"\x08\x00" + number.to_bytes(4, "big") + bytes(size - 18)


# -- boot and the platform functions ---------------------------------------------------------


def test_boot_reads_the_devices_and_the_command_line(booted: FakeTender) -> None:
    info = guest.current().info
    assert info.cmdline == ("--x=1",)
    assert info.devices == (*NETS, DISK)
    assert info.memory_limit == 64 << 20
    assert [call for call, _ in booted.calls] == [Call.WALLTIME]


def test_outside_a_guest_the_platform_says_how_to_start_one() -> None:
    with pytest.raises(PlatformError, match="platforms.hvt.tender"):
        platform.netif("service")
    with pytest.raises(PlatformError, match="inside an hvt guest"):
        platform.clock()


def test_clock_wall_time_comes_from_walltime(booted: FakeTender) -> None:
    clock = platform.clock()
    assert isinstance(clock, Clock)
    wall = clock.wall_ns()
    assert WALLTIME_NS <= wall < WALLTIME_NS + 5 * 10**9  # not the host's time.time_ns()
    assert abs(clock.monotonic_ns() - time.monotonic_ns()) < 10**9
    assert booted.count(Call.WALLTIME) == 1  # read once at boot, never again
    later = clock.wall_ns()
    assert later >= wall


def test_clock_timers_run_on_the_loop(loop: asyncio.AbstractEventLoop) -> None:
    clock = platform.clock()
    fired: list[int] = []

    async def main() -> None:
        clock.call_at(clock.monotonic_ns() + 20_000_000, lambda: fired.append(clock.monotonic_ns()))
        clock.call_at(clock.monotonic_ns() + 10_000_000, lambda: fired.append(0)).cancel()
        await asyncio.sleep(0.05)

    start = time.monotonic_ns()
    loop.run_until_complete(main())
    assert len(fired) == 1 and fired[0] - start >= 20_000_000


def test_netif_is_the_named_device_with_its_mac_and_mtu(booted: FakeTender) -> None:
    other = platform.netif("other", host_address="10.0.0.1/24", offload=True)
    assert isinstance(other, Netif)
    assert (other.handle, other.mac, other.mtu) == (1, NETS[1].mac, 9000)
    assert other.offload.max_tx_segment == 9000 and not other.offload.tx_checksum and not other.offload.rx_checksum
    with pytest.raises(PlatformError, match="already open"):
        platform.netif("other")
    with pytest.raises(PlatformError, match="no net device 'tap0'.*service, other"):
        platform.netif("tap0")  # two devices: a name that matches none is an error


def test_netif_with_one_device_ignores_the_name(tmp_path: Path) -> None:
    tender = FakeTender(BootInfo((), (NetDevice("service", MAC, 1500),)))
    try:
        guest.boot(Hypercalls(tender.guest_end))
        device = platform.netif("tap0")  # --interface's default: means nothing in a guest
        assert (device.name, device.handle, device.mac) == ("service", 0, MAC)
    finally:
        platform._open_netifs.clear()
        guest._current = None
        tender.stop()


def test_netif_writes_one_batch_per_loop_iteration(booted: FakeTender, loop: asyncio.AbstractEventLoop) -> None:
    device = platform.netif("service")

    async def main() -> None:
        buffer = bytearray(frame(0))
        device.write(buffer)
        buffer[-1] = 0xFF  # the caller may reuse its buffer at once
        device.write(frame(1))
        device.write(frame(2))
        assert booted.count(Call.NET_WRITE) == 0  # queued, not sent: write never blocks
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert booted.count(Call.NET_WRITE) == 1
        for number in range(100):
            device.write(frame(number))
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert [len(batch) for batch in booted.tx[0]] == [3, 64, 36]
    assert booted.written()[:3] == [frame(0), frame(1), frame(2)]
    assert device.stats["tx_frames"] == 103 and device.stats["tx_bytes"] == 103 * 60


def test_netif_write_errors(booted: FakeTender, loop: asyncio.AbstractEventLoop) -> None:
    device = platform.netif("service")
    with pytest.raises(ValueError, match="1514"):
        device.write(bytes(1515))
    with pytest.raises(ValueError):
        device.write(bytes(10))

    async def flood() -> None:
        for number in range(platform.TX_QUEUE_LIMIT + 5):
            device.write(frame(number))  # a full ring drops, never blocks
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    loop.run_until_complete(flood())
    assert device.stats["tx_dropped"] == 5
    assert len(booted.written()) == platform.TX_QUEUE_LIMIT
    device.write(frame(7))  # queued; close flushes it
    device.close()
    assert booted.written()[-1] == frame(7)
    with pytest.raises(OSError):
        device.write(frame(8))


def test_netif_outside_a_loop_writes_at_once(booted: FakeTender) -> None:
    device = platform.netif("service")
    device.write(frame(1))
    assert booted.written() == [frame(1)]


def test_netif_receives_batches_until_again(booted: FakeTender, loop: asyncio.AbstractEventLoop) -> None:
    device = platform.netif("service")
    batches: list[list[bytes]] = []
    booted.inject(0, *(frame(number) for number in range(70)))

    async def main() -> None:
        device.listen(lambda batch: batches.append([bytes(f) for f in batch]))
        while sum(map(len, batches)) < 70:
            await asyncio.sleep(0.001)

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    assert [len(batch) for batch in batches] == [64, 6]
    assert [f for batch in batches for f in batch] == [frame(number) for number in range(70)]
    net_reads = [handle for call, handle in booted.calls if call == Call.NET_READ]
    assert net_reads == [0, 0]  # a full batch, then a short one: the tender had no more
    assert device.stats["rx_frames"] == 70


def test_netif_receiver_that_raises_is_reported_and_delivery_goes_on(
    booted: FakeTender, loop: asyncio.AbstractEventLoop
) -> None:
    device = platform.netif("service")
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))
    received: list[bytes] = []

    def receive(batch: Sequence[bytes]) -> None:
        received.extend(bytes(f) for f in batch)
        if len(received) == 1:
            raise RuntimeError("receiver bug")

    async def main() -> None:
        device.listen(receive)
        booted.inject(0, frame(1))
        while len(received) < 1:
            await asyncio.sleep(0.001)
        booted.inject(0, frame(2))
        while len(received) < 2:
            await asyncio.sleep(0.001)

    loop.run_until_complete(asyncio.wait_for(main(), 10))
    assert received == [frame(1), frame(2)]
    assert reported == ["the receiver of service raised"]


# -- the selector ------------------------------------------------------------------------------


def test_selector_wakes_when_a_frame_arrives(booted: FakeTender, loop: asyncio.AbstractEventLoop) -> None:
    device = platform.netif("service")
    arrived = loop.create_future()

    async def main() -> int:
        device.listen(lambda batch: arrived.done() or arrived.set_result(time.monotonic_ns()))
        return await asyncio.wait_for(arrived, 30)

    timer = threading.Timer(0.1, booted.inject, (0, frame(1)))
    start = time.monotonic_ns()
    timer.start()
    try:
        when = loop.run_until_complete(main())
    finally:
        timer.cancel()
    assert 90_000_000 <= when - start < 5 * 10**9
    # The wait was one POLL whose deadline was the wait_for timeout, not a spin.
    assert max(deadline - asked for deadline, asked in booted.polls) > 10 * 10**9
    assert len(booted.polls) < 10


def test_selector_wakes_at_the_deadline(booted: FakeTender, loop: asyncio.AbstractEventLoop) -> None:
    start = time.monotonic_ns()
    loop.run_until_complete(asyncio.sleep(0.05))
    elapsed = time.monotonic_ns() - start
    assert 50_000_000 <= elapsed < 2 * 10**9
    waits = [deadline - asked for deadline, asked in booted.polls if deadline > asked]
    assert waits and all(wait <= 60_000_000 for wait in waits)


def test_selector_select_maps_the_ready_set(booted: FakeTender) -> None:
    selector = HvtSelector(guest.current().hypercalls)
    device = platform.netif("other")
    key = selector.register(device._selectable, 1, "data")
    assert selector.get_map()[device._selectable] is key
    assert selector.select(0) == []  # nothing waiting: POLL with a deadline of now
    booted.inject(1, frame(1))
    booted.inject(0, frame(2))  # handle 0 is not registered: not reported
    assert selector.select(None) == [(key, 1)]
    deadline, asked = booted.polls[-1]
    assert 0 < deadline - asked <= 24 * 3600 * 10**9  # None: far ahead, but a deadline a tender can sleep to
    selector.unregister(device._selectable)
    assert len(selector.get_map()) == 0
    with pytest.raises(ValueError):
        selector.register(2_000_000, 1)  # the pseudo-fd range is for device handles


def test_selector_sees_real_descriptors(booted: FakeTender) -> None:
    selector = HvtSelector(guest.current().hypercalls)
    reader, writer = socket.socketpair()
    try:
        key = selector.register(reader, 1)
        writer.send(b"x")
        start = time.monotonic_ns()
        assert selector.select(10) == [(key, 1)]
        assert time.monotonic_ns() - start < 10**9  # POLL was told not to wait
    finally:
        reader.close()
        writer.close()


# -- block -----------------------------------------------------------------------------------


def test_block_round_trips_sectors(booted: FakeTender, loop: asyncio.AbstractEventLoop) -> None:
    disk = platform.block("disk")
    assert isinstance(disk, Block)
    assert (disk.sector_size, disk.size) == (512, 512 * 256)

    async def main() -> None:
        await disk.write(3, b"a" * 512 + b"b" * 512)
        assert await disk.read(3, 2) == b"a" * 512 + b"b" * 512
        assert await disk.read(4) == b"b" * 512
        everything = bytes(range(256)) * 512
        await disk.write(0, everything)  # 128 KiB: more than one message
        assert await disk.read(0, 256) == everything

    loop.run_until_complete(main())
    assert booted.disks[0][512 * 255 :] == (bytes(range(256)) * 2)
    assert booted.count(Call.BLOCK_WRITE) == 1 + 2


def test_block_refuses_partial_sectors_and_ranges_past_the_end(booted: FakeTender, loop: asyncio.AbstractEventLoop) -> None:
    disk = platform.block("disk")
    for attempt in (disk.write(0, b"x" * 100), disk.write(255, b"x" * 1024), disk.read(256), disk.read(-1), disk.read(0, 257)):
        with pytest.raises(ValueError):
            loop.run_until_complete(attempt)
    assert booted.count(Call.BLOCK_READ) == booted.count(Call.BLOCK_WRITE) == 0  # checked before any hypercall
    with pytest.raises(PlatformError, match="no block device 'nope'.*disk"):
        platform.block("nope")


def test_block_device_failure_is_oserror(booted: FakeTender, loop: asyncio.AbstractEventLoop) -> None:
    booted.replies[Call.BLOCK_READ] = lambda handle, flags, payload: abi.response(Call.BLOCK_READ, Result.EUNSPEC)
    with pytest.raises(OSError, match="EUNSPEC"):
        loop.run_until_complete(platform.block("disk").read(0))


# -- hypercalls and a broken tender -------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        abi.response(Call.PUTS, Result.OK, abi.u64(1)),  # another call's answer
        abi.response(Call.WALLTIME, Result.OK, b"\x01\x02"),  # payload of the wrong size
        abi.response(Call.WALLTIME, Result.OK)[:5],  # shorter than a header
        abi.HEADER.pack(Call.WALLTIME, 0, 0, 100) + bytes(8),  # length that lies
        abi.HEADER.pack(Call.WALLTIME, 9, 0, 8) + bytes(8),  # unknown result
    ],
)
def test_a_malformed_reply_is_a_tender_error(tender: FakeTender, reply: bytes) -> None:
    hypercalls = Hypercalls(tender.guest_end)
    hypercalls.receive_boot()
    tender.replies[Call.WALLTIME] = lambda *_: reply
    with pytest.raises(TenderError):
        hypercalls.walltime()


def test_a_closed_channel_is_reported_not_hung(tender: FakeTender) -> None:
    reasons: list[str] = []

    def on_failure(reason: str) -> None:
        reasons.append(reason)
        raise SystemExit(255)

    hypercalls = Hypercalls(tender.guest_end, on_failure=on_failure)  # type: ignore[arg-type]
    hypercalls.receive_boot()
    tender.tender_end.shutdown(socket.SHUT_RDWR)
    with pytest.raises(SystemExit):
        hypercalls.walltime()
    assert "closed the channel" in reasons[0] or "failed" in reasons[0]


def test_boot_of_another_abi_version_is_refused() -> None:
    tender = FakeTender(boot=abi.request(Call.BOOT, BootInfo((), (), version=2).encode()))
    try:
        with pytest.raises(AbiError, match="ABI version 2"):
            Hypercalls(tender.guest_end).receive_boot()
    finally:
        tender.stop()


def test_console_is_line_buffered(booted: FakeTender) -> None:
    console = guest.Console(guest.current().hypercalls, "<test>")
    console.write("no newline yet")
    assert booted.count(Call.PUTS) == 0
    console.write(", now\nand a tail")
    assert bytes(booted.console) == b"no newline yet, now\n"
    console.flush()
    assert bytes(booted.console) == b"no newline yet, now\nand a tail"
    print("ü", file=console)
    assert bytes(booted.console).endswith("ü\n".encode())


# -- guest.main in a subprocess ------------------------------------------------------------------


def test_main_passes_the_boot_arguments_and_halts_with_the_return_code(tender: FakeTender, tmp_path: Path) -> None:
    result = run_guest(
        tender,
        """
        import logging, sys
        def main(argv):
            print("argv", argv, "sys.argv", sys.argv)
            logging.getLogger("app").warning("to the console")
            print("partial line without newline", end="")
            return 3
        """,
        tmp_path,
        preload=["json"],
    )
    assert tender.halted == (3, "")
    assert result.returncode == 3
    console = tender.console.decode()
    assert "argv ['--platform', 'hvt', '--x=1'] sys.argv ['hvt_test_app', '--platform', 'hvt', '--x=1']" in console
    assert "to the console" in console
    assert console.endswith("partial line without newline")  # flushed before HALT
    assert result.stdout == result.stderr == ""  # everything went through PUTS


@pytest.mark.parametrize(("body", "status"), [("return None", 0), ("raise SystemExit(64)", 64), ("sys.exit('bad')", 1)])
def test_main_return_and_exit_codes(tender: FakeTender, tmp_path: Path, body: str, status: int) -> None:
    result = run_guest(tender, f"import sys\ndef main(argv):\n    {body}\n", tmp_path)
    assert tender.halted is not None and tender.halted[0] == status
    assert result.returncode == status


def test_an_uncaught_exception_prints_its_traceback_and_halts_255(tender: FakeTender, tmp_path: Path) -> None:
    run_guest(tender, "def main(argv):\n    raise KeyError('lost')\n", tmp_path)
    assert tender.halted is not None and tender.halted[0] == 255
    assert tender.halted[1] == "hvt_test_app raised an uncaught KeyError"
    console = tender.console.decode()
    assert "Traceback (most recent call last)" in console and "KeyError: 'lost'" in console


def test_memory_error_halts_with_out_of_memory(tender: FakeTender, tmp_path: Path) -> None:
    result = run_guest(tender, "def main(argv):\n    hog = bytearray(1 << 50)\n", tmp_path)
    assert tender.halted == (255, "out of memory (--mem too small?)")
    assert result.returncode == 255


def test_another_abi_version_halts_255_and_prints_nothing(tmp_path: Path) -> None:
    tender = FakeTender(boot=abi.request(Call.BOOT, BootInfo(("--x",), (), version=7).encode()))
    try:
        result = run_guest(tender, "def main(argv):\n    print('ran')\n", tmp_path)
        assert tender.halted is not None and tender.halted[0] == 255
        assert "ABI version 7" in tender.halted[1]
        assert tender.console == b"" and result.returncode == 255
    finally:
        tender.stop()


def test_a_malformed_boot_message_halts_255(tmp_path: Path) -> None:
    tender = FakeTender(boot=abi.request(Call.BOOT, b"\x01\x00"))
    try:
        run_guest(tender, "def main(argv):\n    print('ran')\n", tmp_path)
        assert tender.halted is not None and tender.halted[0] == 255
        assert "bad boot message" in tender.halted[1] and "truncated" in tender.halted[1]
        assert tender.console == b""
    finally:
        tender.stop()


def test_a_malformed_reply_at_boot_halts_255_with_a_clear_message(tmp_path: Path) -> None:
    tender = FakeTender(replies={Call.WALLTIME: lambda *_: abi.response(Call.POLL, Result.OK, abi.u64(0))})
    try:
        result = run_guest(tender, "def main(argv):\n    print('ran')\n", tmp_path)
        assert tender.halted is not None and tender.halted[0] == 255
        assert "the tender broke the ABI: the reply to WALLTIME is for call 3" in tender.halted[1]
        assert result.returncode == 255
    finally:
        tender.stop()


def test_a_guest_without_a_channel_says_so(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from platforms.hvt.guest import main; main('json')"],
        env={"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(REPOSITORY)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 255
    assert "NETSTACK_HVT_CHANNEL is not set" in result.stderr


# -- platform.run in a guest (sandboxed) ---------------------------------------------------------

ECHO_APP = """
import asyncio
import platforms.hvt as platform

def main(argv):
    netif = platform.netif("ignored", host_address="10.0.0.1/24")
    clock = platform.clock()

    async def echo():
        done = asyncio.get_running_loop().create_future()
        seen = []

        def receive(batch):
            for frame in batch:
                seen.append(bytes(frame))
                netif.write(bytes(reversed(frame)))
            if len(seen) >= 5 and not done.done():
                done.set_result(len(seen))

        netif.listen(receive)
        print("listening, wall clock", clock.wall_ns() // 10**9)
        return await done

    count = platform.run(echo())
    print("echoed", count)
    return 0
"""


@needs_seccomp
def test_run_echoes_frames_inside_the_sandbox(tmp_path: Path) -> None:
    tender = FakeTender(BootInfo((), (NetDevice("service", MAC, 1500),)))
    try:
        timer = threading.Timer(0.5, tender.inject, [0, *(frame(n) for n in range(5))])
        timer.start()
        result = run_guest(tender, ECHO_APP, tmp_path)
        timer.cancel()
        assert tender.halted == (0, ""), (tender.console.decode(), result.stderr)
        assert sorted(tender.written()) == sorted(bytes(reversed(frame(n))) for n in range(5))
        console = tender.console.decode()
        assert f"listening, wall clock {WALLTIME_NS // 10**9}" in console and "echoed 5" in console
        assert tender.notes == []
    finally:
        tender.stop()


@needs_seccomp
def test_a_malformed_reply_inside_the_loop_halts_instead_of_hanging(tmp_path: Path) -> None:
    tender = FakeTender(BootInfo((), (NetDevice("service", MAC, 1500),)))
    tender.replies[Call.POLL] = lambda handle, flags, payload: abi.response(Call.POLL, Result.OK, b"short")
    try:
        result = run_guest(tender, ECHO_APP, tmp_path)
        assert tender.halted is not None and tender.halted[0] == 255
        assert "the tender broke the ABI: POLL: expected 8 payload bytes, got 5" in tender.halted[1]
        assert result.returncode == 255
    finally:
        tender.stop()


@needs_seccomp
def test_memory_error_in_a_loop_callback_halts_with_out_of_memory(tmp_path: Path) -> None:
    tender = FakeTender(BootInfo((), (NetDevice("service", MAC, 1500),)))
    try:
        result = run_guest(
            tender,
            """
            import asyncio
            import platforms.hvt as platform

            def exhausted():
                raise MemoryError

            async def serve():
                asyncio.get_running_loop().call_soon(exhausted)  # asyncio reports, never raises, these
                await asyncio.sleep(30)

            def main(argv):
                platform.run(serve())
            """,
            tmp_path,
        )
        assert tender.halted == (255, "out of memory (--mem too small?)")
        assert result.returncode == 255
    finally:
        tender.stop()
