"""Sequence-number arithmetic modulo 2**32 (RFC 9293 section 3.4).

"It is essential to remember that the actual sequence number space is
finite, though very large ... all arithmetic dealing with sequence numbers
must be performed modulo 2**32." Comparisons are by the sign of the 32-bit
difference, which is correct while the two numbers are less than 2**31
apart, which windows guarantee.
"""

from __future__ import annotations

MOD = 1 << 32
MASK = MOD - 1
HALF = 1 << 31


def add(a: int, n: int) -> int:
    return (a + n) & MASK


def sub(a: int, b: int) -> int:
    """``a - b`` as a signed distance."""
    d = (a - b) & MASK
    return d - MOD if d >= HALF else d


def lt(a: int, b: int) -> bool:
    return ((a - b) & MASK) >= HALF


def le(a: int, b: int) -> bool:
    return a == b or ((a - b) & MASK) >= HALF


def gt(a: int, b: int) -> bool:
    return a != b and ((a - b) & MASK) < HALF


def ge(a: int, b: int) -> bool:
    return ((a - b) & MASK) < HALF


def between(low: int, x: int, high: int) -> bool:
    """``low <= x < high`` in sequence space."""
    return ((x - low) & MASK) < ((high - low) & MASK)
