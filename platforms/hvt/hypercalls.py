"""The guest's side of the hypercall ABI: one blocking call per hypercall.

``Hypercalls`` wraps the channel the tender hands the guest (a
``SOCK_SEQPACKET`` socket, ``platforms.hvt.abi``) and turns each hypercall
into a method: send one request message, receive exactly one response
message, check that it answers the call we made, decode its payload. The
guest is single-threaded and every call completes before the next starts,
so responses never need matching beyond the echoed ``call`` byte. ``HALT``
is the one request without a response.

Call order, per channel::

    receive_boot() -> (walltime | puts | poll | net_read | net_write
                       | block_read | block_write)* -> halt()

Errors say whose fault they are (STYLE.md 8):

- ``TenderError`` (an ``AbiError``): the tender answered with something the
  ABI does not allow (a short message, the wrong call, a payload of the
  wrong size, an unknown result). A guest cannot trust such a tender and
  halts; ``platforms.hvt.guest`` installs ``on_failure`` to do exactly that
  from wherever the call was made, even from inside an event-loop callback
  whose exceptions asyncio would otherwise swallow.
- ``ChannelClosed`` (a ``ConnectionError``): the tender went away.
- Results other than ``OK`` that the ABI allows (``AGAIN`` from
  ``NET_READ``, ``EINVAL``/``EUNSPEC`` from a device call) are returned to
  the device code, which owns their meaning.
"""

from __future__ import annotations

import errno
import mmap
import socket
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from platforms.hvt import abi
from platforms.hvt.abi import AbiError, BootInfo, Call, Result

NET_BATCH = 64
"""Most frames asked for in one ``NET_READ`` (and sent in one ``NET_WRITE``)."""

_RESULTS = frozenset(Result)
_RECEIVE_SIZE = abi.HEADER_LEN + abi.MAX_MESSAGE
_CHANNEL_BUFFER = 4 * 1024 * 1024


class TenderError(AbiError):
    """The tender broke the ABI; the guest cannot go on."""


class ChannelClosed(ConnectionError):
    """The tender closed the channel."""


class Hypercalls:
    """The ABI client over one channel socket.

    ``on_failure(reason)`` is called, instead of raising, when the channel
    breaks (``TenderError``, ``ChannelClosed``, an ``OSError`` on the
    socket); it must not return. Without it those errors are raised, which
    is what tests want.

    Thread-safety: calls are serialised by a lock, so a note sent from
    another thread (the sandbox's refused-call note) cannot interleave its
    request with one in flight.
    """

    def __init__(self, channel: socket.socket, *, on_failure: Callable[[str], NoReturn] | None = None) -> None:
        if channel.type != socket.SOCK_SEQPACKET:
            raise ValueError("the hvt channel is a SOCK_SEQPACKET socket")
        channel.setblocking(True)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            # Best effort: a batch of frames or a block chunk must fit in one
            # message, and a Unix datagram may not exceed the send buffer.
            try:
                channel.setsockopt(socket.SOL_SOCKET, option, _CHANNEL_BUFFER)
            except OSError:
                pass
        self._channel = channel
        # Anonymous memory, not a bytearray (which would be zero-filled):
        # pages a message never reached are never made resident.
        self._buffer = mmap.mmap(-1, _RECEIVE_SIZE)
        self._lock = threading.RLock()  # re-entered by on_failure -> halt
        self.on_failure = on_failure

    @classmethod
    def from_fd(cls, fd: int, **kwargs: Callable[[str], NoReturn] | None) -> Hypercalls:
        return cls(socket.socket(fileno=fd), **kwargs)  # type: ignore[arg-type]

    def fileno(self) -> int:
        return self._channel.fileno()

    # -- boot ------------------------------------------------------------------

    def receive_boot(self) -> BootInfo:
        """The first message: ``BOOT`` with the boot info.

        Raises ``AbiError`` (whatever ``on_failure`` says: the caller halts
        with its own reason) for a malformed message or a different ABI
        version, and ``ChannelClosed`` when the tender sent nothing.
        """
        message = self._receive_raw()
        call, _, _, payload = abi.parse(message)
        if call != Call.BOOT:
            raise AbiError(f"the first message is call {call}, not BOOT")
        if len(payload) >= 4:
            version = abi.read_u32_prefix(payload)[0]
            if version != abi.ABI_VERSION:
                raise AbiError(f"the tender speaks ABI version {version}, this guest {abi.ABI_VERSION}")
        return BootInfo.decode(payload)

    # -- hypercalls ------------------------------------------------------------

    def walltime(self) -> int:
        """Nanoseconds since the Unix epoch, by the tender's clock."""
        return self._u64(self._call_ok(Call.WALLTIME), "WALLTIME")

    def puts(self, text: bytes) -> None:
        """Write ``text`` to the console (the tender's output), as it is."""
        self._call_ok(Call.PUTS, text)

    def poll(self, deadline_ns: int) -> int:
        """Block until a net device has frames or until ``deadline_ns``
        (``time.monotonic_ns`` scale); the ready set, bit ``1 << handle``."""
        deadline_ns = min(max(deadline_ns, 0), (1 << 64) - 1)
        return self._u64(self._call_ok(Call.POLL, abi.u64(deadline_ns)), "POLL")

    def net_read(self, handle: int, max_frames: int = NET_BATCH) -> list[memoryview] | None:
        """Up to ``max_frames`` frames, oldest first; ``None`` for ``AGAIN``.

        Raises ``OSError`` for ``EINVAL``/``EUNSPEC`` (the device failed).
        """
        result, count, payload = self.call(Call.NET_READ, abi.u16(max_frames), handle)
        if result == Result.AGAIN:
            if count or payload:
                self._fail(TenderError("NET_READ answered AGAIN with frames"))
            return None
        if result != Result.OK:
            raise _device_error(result, f"NET_READ on handle {handle}")
        if not 0 < count <= max_frames:
            self._fail(TenderError(f"NET_READ returned {count} frames, {max_frames} at most were asked for"))
        try:
            return abi.decode_frames(payload, count)
        except AbiError as error:
            self._fail(TenderError(f"NET_READ: {error}"))

    def net_write(self, handle: int, frames: Sequence[bytes | bytearray | memoryview]) -> Result:
        """Send ``frames`` as one batch; the tender's result (``OK``, or the
        reason the batch was dropped)."""
        parts: list[bytes | bytearray | memoryview] = []
        size = 0
        for frame in frames:
            parts.append(abi.u32(len(frame)))
            parts.append(frame)
            size += 4 + len(frame)
        header = abi.HEADER.pack(Call.NET_WRITE, 0, handle, size)
        result, _, payload = self._exchange(Call.NET_WRITE, [header, *parts])
        if payload:
            self._fail(TenderError(f"NET_WRITE answered with {len(payload)} payload bytes"))
        return result

    def block_read(self, handle: int, offset: int, length: int) -> bytes:
        """``length`` bytes at byte ``offset``; ``OSError`` if the tender refuses."""
        result, _, payload = self.call(Call.BLOCK_READ, abi.block_read_request(offset, length), handle)
        if result != Result.OK:
            raise _device_error(result, f"BLOCK_READ of {length} bytes at {offset} on handle {handle}")
        if len(payload) != length:
            self._fail(TenderError(f"BLOCK_READ asked for {length} bytes and got {len(payload)}"))
        return bytes(payload)

    def block_write(self, handle: int, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at byte ``offset``; ``OSError`` if the tender refuses."""
        header = abi.HEADER.pack(Call.BLOCK_WRITE, 0, handle, 8 + len(data))
        result, _, payload = self._exchange(Call.BLOCK_WRITE, [header, abi.u64(offset), data])
        if result != Result.OK:
            raise _device_error(result, f"BLOCK_WRITE of {len(data)} bytes at {offset} on handle {handle}")
        if payload:
            self._fail(TenderError(f"BLOCK_WRITE answered with {len(payload)} payload bytes"))

    def halt(self, status: int, reason: bytes = b"") -> None:
        """Tell the tender we are done; it answers nothing. Never raises: a
        guest halting on a dead channel has nobody left to tell."""
        message = abi.request(Call.HALT, abi.u32(status & 0xFFFFFFFF) + reason[: abi.MAX_MESSAGE - 4])
        try:
            with self._lock:
                self._channel.send(message)
        except OSError:
            pass

    # -- the round trip ----------------------------------------------------------

    def call(self, call: Call, payload: bytes = b"", handle: int = 0) -> tuple[Result, int, memoryview]:
        """One request, one response: ``(result, count, payload)``."""
        return self._exchange(call, [abi.request(call, payload, handle)])

    def _call_ok(self, call: Call, payload: bytes = b"") -> memoryview:
        result, _, answer = self.call(call, payload)
        if result != Result.OK:
            self._fail(TenderError(f"{call.name} failed with {result.name}"))
        return answer

    def _exchange(self, call: Call, parts: list[bytes | bytearray | memoryview]) -> tuple[Result, int, memoryview]:
        with self._lock:
            try:
                if len(parts) == 1:
                    self._channel.send(parts[0])
                else:
                    self._channel.sendmsg(parts)
            except OSError as error:
                self._fail(ChannelClosed(f"sending {call.name} to the tender failed: {error}"))
            message = self._receive_raw()
        try:
            answered, result, count, payload = abi.parse(message)
        except AbiError as error:
            self._fail(TenderError(f"malformed reply to {call.name}: {error}"))
        if answered != call:
            self._fail(TenderError(f"the reply to {call.name} is for call {answered}"))
        if result not in _RESULTS:
            self._fail(TenderError(f"the reply to {call.name} has unknown result {result}"))
        return Result(result), count, payload

    def _receive_raw(self) -> bytes:
        # MSG_TRUNC makes recv_into return the message's real length, so a
        # message too large for the ABI is caught instead of silently cut.
        try:
            size = self._channel.recv_into(self._buffer, len(self._buffer), socket.MSG_TRUNC)
        except OSError as error:
            self._fail(ChannelClosed(f"receiving from the tender failed: {error}"))
        if size == 0:
            self._fail(ChannelClosed("the tender closed the channel"))
        if size > len(self._buffer):
            self._fail(TenderError(f"a message of {size} bytes exceeds the ABI's limit"))
        # A copy: the payload (frames handed to a receiver) must survive the
        # next hypercall, which reuses the buffer.
        return bytes(memoryview(self._buffer)[:size])

    def _u64(self, payload: memoryview, name: str) -> int:
        try:
            return abi.read_u64(payload)
        except AbiError as error:
            self._fail(TenderError(f"{name}: {error}"))

    def _fail(self, error: TenderError | ChannelClosed) -> NoReturn:
        if self.on_failure is not None:
            self.on_failure(str(error))
        raise error


def _device_error(result: Result, what: str) -> OSError:
    code = errno.EINVAL if result == Result.EINVAL else errno.EIO
    return OSError(code, f"{what}: the tender answered {result.name}")
