"""Fault injection around any Netif: drop, duplicate, reorder, corrupt.

Why it exists: TCP's retransmission, reassembly and checksum paths only run
when the network misbehaves, and a test network that never misbehaves never
exercises them. ``FaultInjector`` wraps any ``Netif`` and is itself a
``Netif`` (smoltcp's ``phy::FaultInjector``, Linux ``netem``), so the same
stack can be driven over a lossy link in tests and over a real tap with
``--faults drop=2%,seed=7`` when reproducing a field report.

Theory of operation
-------------------

Every frame that passes in a faulted direction (``config.direction``: rx,
tx or both) goes through one decision, in this order::

    drop? -> corrupt? -> duplicate? -> reorder?

- **drop**: the frame vanishes; nothing else applies to it.
- **corrupt**: a *copy* of the frame gets one bit flipped, at a random bit
  position at or after byte 14. The Ethernet header is left alone so that
  the frame still reaches the IP layer and its checksums (not MAC
  filtering) are what catch the damage. A frame of 14 bytes or less has
  nothing past the header and is passed unharmed. The caller's buffer is
  never written.
- **duplicate**: the frame goes out twice, back to back.
- **reorder**: the frame is held back, and released right after the next
  frame in the same direction that gets through (so the two swap places,
  like netem's ``reorder``); if no such frame comes within ``hold_ns`` (1 ms
  by default) a deadline armed with ``clock.call_at`` releases it alone.
  Reordering therefore never loses a frame. At most one frame per direction
  is held: a frame chosen for reordering while another is held goes out
  first, followed by the held one, so frames move at most one place.

Randomness is a ``random.Random`` per direction, seeded from
``config.seed``, and every frame draws the same five numbers whatever the
outcome. Hence the fate of the n-th frame in a direction depends only on the
seed, the rates and n, not on how rx and tx interleave nor on what happened
to earlier frames: the same seed and the same frames give the same faults.

Counters, merged into the wrapped device's ``stats``: ``faults_dropped``,
``faults_duplicated``, ``faults_corrupted``, ``faults_reordered`` (a held
frame released after a later one) and ``faults_delayed`` (a held frame
released by its deadline: late, but still in order).

``close()`` **discards** frames still held, counting them in
``faults_dropped``: after ``close`` the contract forbids delivering to the
receiver, and the wrapped device is about to refuse writes; releasing from
inside ``close`` would also call the receiver re-entrantly from whoever
closes. Then it closes the wrapped device.

Errors are the contract's: ``write`` checks the frame size and the closed
state itself, *before* any fault, so a caller's bug raises ``ValueError``
even for a frame that would have been dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from typing import Literal

from netstack.protocols import Clock, Frame, FrameBatch, Netif, Offload, TimerHandle

ETHERNET_HEADER_LEN = 14

Direction = Literal["both", "rx", "tx"]
_DIRECTIONS = ("both", "rx", "tx")

_KEYS = {
    "drop": "drop",
    "dup": "duplicate",
    "duplicate": "duplicate",
    "reorder": "reorder",
    "corrupt": "corrupt",
    "seed": "seed",
    "direction": "direction",
}
_PROBABILITIES = ("drop", "duplicate", "reorder", "corrupt")


@dataclasses.dataclass(frozen=True, slots=True)
class FaultConfig:
    """What to inject: probabilities in [0, 1], a seed, and the directions.

    ``str(config)`` is a spec that ``FaultConfig.parse`` reads back to an
    equal config, so a run can log exactly what it used.
    """

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    seed: int = 0
    direction: Direction = "both"

    def __post_init__(self) -> None:
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value!r}: a probability must be between 0 and 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r}: the seed must be an integer")
        if self.direction not in _DIRECTIONS:
            raise ValueError(f"direction={self.direction!r}: expected one of both, rx, tx")

    @classmethod
    def parse(cls, spec: str) -> FaultConfig:
        """Read ``"drop=2%,dup=1%,reorder=10%,corrupt=0.5%,seed=7,direction=rx"``.

        Rates are percentages (``2%``) or fractions (``0.02``). Keys are
        ``drop``, ``dup`` (or ``duplicate``), ``reorder``, ``corrupt``,
        ``seed`` and ``direction`` (``both``, ``rx`` or ``tx``); each at most
        once; anything left out is zero (``seed`` 0, ``direction`` both).
        A blank spec means no faults. ``ValueError`` names the bad item.
        """
        values: dict[str, object] = {}
        if not spec.strip():
            return cls()
        for item in spec.split(","):
            text = item.strip()
            key, equals, value = text.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not equals or not key or not value:
                raise ValueError(f"fault spec item {text!r} is not of the form key=value")
            field = _KEYS.get(key)
            if field is None:
                raise ValueError(f"fault spec item {text!r}: unknown key {key!r} "
                                 f"(expected drop, dup, duplicate, reorder, corrupt, seed or direction)")
            if field in values:
                raise ValueError(f"fault spec item {text!r}: {field} is given more than once")
            if field == "seed":
                try:
                    values[field] = int(value)
                except ValueError:
                    raise ValueError(f"fault spec item {text!r}: the seed must be an integer") from None
            elif field == "direction":
                direction = value.lower()
                if direction not in _DIRECTIONS:
                    raise ValueError(f"fault spec item {text!r}: direction must be both, rx or tx")
                values[field] = direction
            else:
                values[field] = _parse_probability(text, value)
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return (f"drop={self.drop!r},dup={self.duplicate!r},reorder={self.reorder!r},"
                f"corrupt={self.corrupt!r},seed={self.seed},direction={self.direction}")


def _parse_probability(item: str, value: str) -> float:
    percent = value.endswith("%")
    body = value[:-1].strip() if percent else value
    if not body or body.lstrip("+-")[:1] not in set("0123456789."):
        raise ValueError(f"fault spec item {item!r}: {value!r} is not a number or percentage")
    try:
        # A percentage is read as the same decimal with the point moved
        # ("2.3%" as "2.3e-2"), so "2.3%" gives exactly the float "0.023" does;
        # dividing the float by 100 would not.
        number = float(body + "e-2" if percent else body)
    except ValueError:
        raise ValueError(f"fault spec item {item!r}: {value!r} is not a number or percentage") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise ValueError(f"fault spec item {item!r}: {value!r} is not a finite number")
    if not 0 <= number <= 1:
        raise ValueError(f"fault spec item {item!r}: a rate must be between 0 and 1 (or 0% and 100%)")
    return float(number)


class _Lane:
    """The state of one direction: its random stream and the frame it holds."""

    __slots__ = ("name", "random", "held", "held_copies", "timer")

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        # String seeds are hashed with SHA-512, not with the per-process
        # str hash, so they are stable across runs; the two directions get
        # independent streams from one seed.
        self.random = random.Random(f"{seed}/{name}")
        self.held: bytes | bytearray | None = None
        self.held_copies = 0
        self.timer: TimerHandle | None = None


class FaultInjector:
    """A ``Netif`` that drops, duplicates, reorders and corrupts frames of ``netif``."""

    def __init__(self, netif: Netif, config: FaultConfig, *, clock: Clock, hold_ns: int = 1_000_000) -> None:
        if hold_ns <= 0:
            raise ValueError(f"hold_ns must be positive, got {hold_ns}")
        self._netif = netif
        self._config = config
        self._clock = clock
        self._hold_ns = hold_ns
        self._tx = _Lane("tx", config.seed) if config.direction in ("both", "tx") else None
        self._rx = _Lane("rx", config.seed) if config.direction in ("both", "rx") else None
        self._receive: Callable[[FrameBatch], None] | None = None
        self._closed = False
        self._counters = dict.fromkeys(
            ("faults_dropped", "faults_duplicated", "faults_reordered", "faults_delayed", "faults_corrupted"), 0)

    def __repr__(self) -> str:
        return f"<FaultInjector {self._config} around {self._netif!r}>"

    @property
    def config(self) -> FaultConfig:
        return self._config

    # -- the Netif contract --------------------------------------------------

    @property
    def mac(self) -> bytes:
        return self._netif.mac

    @property
    def mtu(self) -> int:
        return self._netif.mtu

    @property
    def offload(self) -> Offload:
        offload = self._netif.offload
        if self.config.corrupt > 0 and self.config.direction in ("both", "tx") and offload.max_tx_segment > self._netif.mtu:
            # A device that completes TCP checksums would hide our corruption
            # behind a valid checksum: do without segmentation offload.
            return dataclasses.replace(offload, max_tx_segment=self._netif.mtu)
        return offload

    @property
    def stats(self) -> dict[str, int]:
        return {**self._netif.stats, **self._counters}

    def listen(self, receive: Callable[[FrameBatch], None]) -> None:
        if self._rx is None:
            self._netif.listen(receive)  # nothing to do on receive: no wrapper cost
            return
        self._receive = receive
        self._netif.listen(self._receive_batch)

    def write(self, frame: Frame) -> None:
        if self._closed:
            raise OSError("write on a closed FaultInjector")
        lane = self._tx
        if lane is None:
            self._netif.write(frame)
            return
        limit = max(self._netif.mtu, self._netif.offload.max_tx_segment) + ETHERNET_HEADER_LEN
        if len(frame) > limit:
            raise ValueError(f"frame of {len(frame)} bytes exceeds the {limit}-byte maximum")
        out: list[Frame] = []
        self._apply(lane, frame, out)
        write = self._netif.write
        for outgoing in out:
            write(outgoing)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._receive = None
        for lane in (self._tx, self._rx):
            if lane is not None and lane.held is not None:
                self._counters["faults_dropped"] += 1
                self._unhold(lane)
        self._netif.close()

    # -- the faults ----------------------------------------------------------

    def _apply(self, lane: _Lane, frame: Frame, out: list[Frame]) -> None:
        """Decide the fate of ``frame``; append to ``out`` what leaves the lane now."""
        draw = lane.random.random
        drop_draw, corrupt_draw, position_draw, duplicate_draw, reorder_draw = (
            draw(), draw(), draw(), draw(), draw())
        config = self._config
        counters = self._counters
        if drop_draw < config.drop:
            counters["faults_dropped"] += 1
            return
        owned = False  # True once ``frame`` is our own copy, not the caller's buffer
        if corrupt_draw < config.corrupt and len(frame) > ETHERNET_HEADER_LEN:
            frame = _flip_bit(frame, position_draw)
            owned = True
            counters["faults_corrupted"] += 1
        copies = 1
        if duplicate_draw < config.duplicate:
            copies = 2
            counters["faults_duplicated"] += 1
        if lane.held is None and reorder_draw < config.reorder:
            # Frames are only valid during the call that passed them in.
            lane.held = frame if owned else bytes(frame)  # type: ignore[assignment]
            lane.held_copies = copies
            lane.timer = self._clock.call_at(self._clock.monotonic_ns() + self._hold_ns,
                                             lambda: self._release_at_deadline(lane))
            return
        out.append(frame)
        if copies == 2:
            out.append(frame)
        if lane.held is not None:
            out.extend([lane.held] * lane.held_copies)
            counters["faults_reordered"] += 1
            self._unhold(lane)

    def _unhold(self, lane: _Lane) -> None:
        if lane.timer is not None:
            lane.timer.cancel()
        lane.held, lane.held_copies, lane.timer = None, 0, None

    def _receive_batch(self, batch: FrameBatch) -> None:
        lane = self._rx
        assert lane is not None
        out: list[Frame] = []
        for frame in batch:
            self._apply(lane, frame, out)
        receive = self._receive
        if out and receive is not None:
            # An exception propagates to the wrapped device, which reports
            # it to the loop as the contract says.
            receive(out)

    def _release_at_deadline(self, lane: _Lane) -> None:
        held, copies = lane.held, lane.held_copies
        lane.held, lane.held_copies, lane.timer = None, 0, None
        if held is None or self._closed:
            return
        self._counters["faults_delayed"] += 1
        try:
            if lane is self._rx:
                if self._receive is not None:
                    self._receive([held] * copies)
            else:
                for _ in range(copies):
                    self._netif.write(held)
        except Exception as exc:
            # We are the device delivering here, not the wrapped one, so
            # reporting is ours (the contract's rule for receivers; a write
            # to a device gone away is reported the same way).
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise exc from None
            loop.call_exception_handler({
                "message": f"releasing a held {lane.name} frame in {self!r} raised",
                "exception": exc,
            })


def _flip_bit(frame: Frame, position_draw: float) -> bytearray:
    """A copy of ``frame`` with one bit flipped at or after byte 14."""
    damaged = bytearray(frame)
    span = (len(damaged) - ETHERNET_HEADER_LEN) * 8
    bit = ETHERNET_HEADER_LEN * 8 + min(int(position_draw * span), span - 1)
    damaged[bit // 8] ^= 0x80 >> (bit % 8)
    return damaged
