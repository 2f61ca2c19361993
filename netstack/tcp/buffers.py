"""Out-of-order reassembly (receiver) and the SACK scoreboard (sender).

Both work in *stream offsets*: unbounded Python ints counting bytes from the
start of the stream, so that no comparison here needs modular arithmetic.
The connection converts to and from 32-bit sequence numbers at its edges.

``Reassembly`` holds data that arrived beyond ``rcv_nxt`` as sorted,
non-overlapping pieces. Overlapping retransmissions are trimmed to the
bytes we do not have yet ("keep what you already have", which is also what
makes overlap-based attacks on the receiver pointless). It is bounded by a
byte limit and a piece count, both enforced on insert; a segment that would
exceed either is refused and counted by the caller, never stored in part.
The caller also passes the global budget (all connections' out-of-order
bytes), so that many connections cannot add up to unbounded memory.

SACK blocks are reported as RFC 2018 section 4 asks: "The first SACK block
(i.e., the one immediately following the kind and length fields in the
option) MUST specify the contiguous block of data containing the segment
which triggered this ACK", followed by the other blocks, most recent first.

``Scoreboard`` records which byte ranges above ``snd_una`` the peer has
SACKed (RFC 6675), merged, and answers the questions loss recovery asks:
is this range SACKed, where are the holes, how much is SACKed above a
point (RFC 6675's IsLost: "more than (DupThresh - 1) * SMSS bytes with
sequence numbers greater than SeqNum have been SACKed").
"""

from __future__ import annotations

import bisect


class Reassembly:
    __slots__ = ("limit", "max_pieces", "_starts", "_pieces", "size", "_recent")

    def __init__(self, limit: int, max_pieces: int = 256) -> None:
        self.limit = limit
        self.max_pieces = max_pieces
        self._starts: list[int] = []
        self._pieces: list[bytes] = []
        self.size = 0
        self._recent: list[int] = []  # starts of recently touched blocks, newest first

    def __len__(self) -> int:
        return len(self._pieces)

    def insert(self, start: int, data: bytes | memoryview, budget: int) -> int:
        """Store the parts of ``data`` (at offset ``start``) we lack.

        Returns the number of new bytes stored, or -1 when storing them would
        exceed ``limit``, ``max_pieces`` or ``budget`` (then nothing is stored).
        """
        end = start + len(data)
        starts, pieces = self._starts, self._pieces
        index = bisect.bisect_right(starts, start)
        if index and starts[index - 1] + len(pieces[index - 1]) > start:
            index -= 1
        new: list[tuple[int, int]] = []
        cursor = start
        probe = index
        while probe < len(starts) and starts[probe] < end:
            piece_start = starts[probe]
            if piece_start > cursor:
                new.append((cursor, piece_start))
            cursor = max(cursor, piece_start + len(pieces[probe]))
            probe += 1
        if cursor < end:
            new.append((cursor, end))
        added = sum(b - a for a, b in new)
        if added == 0:
            self._touch(start)
            return 0
        if self.size + added > self.limit or added > budget or len(pieces) + len(new) > self.max_pieces:
            return -1
        view = memoryview(data)
        for a, b in new:
            at = bisect.bisect_left(starts, a)
            starts.insert(at, a)
            pieces.insert(at, bytes(view[a - start : b - start]))
        self.size += added
        self._touch(start)
        return added

    def _touch(self, offset: int) -> None:
        recent = self._recent
        if offset in recent:
            recent.remove(offset)
        recent.insert(0, offset)
        del recent[8:]

    def pop_ready(self, offset: int) -> list[bytes]:
        """Remove and return the pieces that continue the stream at ``offset``.

        Pieces wholly below ``offset`` are discarded; one straddling it is
        trimmed.
        """
        starts, pieces = self._starts, self._pieces
        out: list[bytes] = []
        while starts and starts[0] <= offset:
            piece = pieces.pop(0)
            piece_start = starts.pop(0)
            self.size -= len(piece)
            piece_end = piece_start + len(piece)
            if piece_end <= offset:
                continue
            out.append(piece[offset - piece_start :])
            offset = piece_end
        return out

    def blocks(self) -> list[tuple[int, int]]:
        """Contiguous ``[start, end)`` blocks held, in offset order."""
        merged: list[tuple[int, int]] = []
        for start, piece in zip(self._starts, self._pieces):
            end = start + len(piece)
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        return merged

    def sack_blocks(self, count: int) -> list[tuple[int, int]]:
        """Up to ``count`` blocks, the most recently changed first (RFC 2018)."""
        blocks = self.blocks()
        if not blocks:
            return []
        ordered: list[tuple[int, int]] = []
        for offset in self._recent:
            for block in blocks:
                if block[0] <= offset < block[1] and block not in ordered:
                    ordered.append(block)
                    break
        for block in reversed(blocks):
            if block not in ordered:
                ordered.append(block)
        return ordered[:count]

    def clear(self) -> int:
        freed = self.size
        self._starts.clear()
        self._pieces.clear()
        self._recent.clear()
        self.size = 0
        return freed


class Scoreboard:
    """Merged SACKed ranges above ``snd_una``, in stream offsets."""

    __slots__ = ("ranges",)

    def __init__(self) -> None:
        self.ranges: list[list[int]] = []

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def add(self, start: int, end: int) -> None:
        if end <= start:
            return
        ranges = self.ranges
        index = bisect.bisect_left(ranges, [start, start])
        if index and ranges[index - 1][1] >= start:
            index -= 1
        while index < len(ranges) and ranges[index][0] <= end:
            start = min(start, ranges[index][0])
            end = max(end, ranges[index][1])
            del ranges[index]
        ranges.insert(index, [start, end])

    def advance(self, una: int) -> None:
        """Forget everything below the cumulative ACK."""
        ranges = self.ranges
        while ranges and ranges[0][1] <= una:
            del ranges[0]
        if ranges and ranges[0][0] < una:
            ranges[0][0] = una

    def clear(self) -> None:
        self.ranges.clear()

    def highest(self) -> int | None:
        return self.ranges[-1][1] if self.ranges else None

    def sacked_bytes(self) -> int:
        return sum(end - start for start, end in self.ranges)

    def sacked_above(self, offset: int) -> int:
        total = 0
        for start, end in reversed(self.ranges):
            if end <= offset:
                break
            total += end - max(start, offset)
        return total

    def next_unsacked(self, offset: int) -> tuple[int, int]:
        """The first unSACKed byte at or after ``offset`` and where that hole ends
        (``end`` is ``-1`` when the hole is unbounded, above every SACKed range)."""
        for start, end in self.ranges:
            if end <= offset:
                continue
            if start > offset:
                return offset, start
            offset = end
        return offset, -1

    def is_sacked(self, offset: int) -> bool:
        for start, end in self.ranges:
            if start <= offset < end:
                return True
            if start > offset:
                return False
        return False
