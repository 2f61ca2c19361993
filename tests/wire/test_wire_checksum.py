"""The Internet checksum against RFC 1071's worked example, known headers and a naive reference."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given

from netstack.wire import checksum


def naive_sum16(data: bytes, initial: int = 0) -> int:
    """RFC 1071 4.1, word by word with an end-around carry after every addition."""
    total = initial
    if len(data) % 2:
        data = bytes(data) + b"\x00"
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_rfc1071_example():
    # RFC 1071 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (after folding).
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert checksum.sum16(data) == 0xDDF2
    assert checksum.checksum(data) == 0x220D


def test_known_ipv4_header():
    # A real header (Wikipedia, "IPv4 header checksum"): checksum b861.
    header = bytearray.fromhex("45000073" "00004000" "4011b861" "c0a80001" "c0a800c7")
    assert checksum.is_valid(header)
    header[10:12] = b"\x00\x00"
    assert checksum.checksum(header) == 0xB861
    assert not checksum.is_valid(header)


def test_edge_values():
    assert checksum.sum16(b"") == 0
    assert checksum.sum16(b"\x00" * 7) == 0
    assert checksum.checksum(b"\x00\x00") == 0xFFFF
    assert checksum.sum16(b"\xff\xff") == 0xFFFF
    assert checksum.sum16(b"\xff\xff\xff\xff") == 0xFFFF
    assert checksum.sum16(b"\x00\x01", initial=0xFFFE) == 0xFFFF
    assert checksum.sum16(b"\x00\x00", initial=0xFFFF) == 0xFFFF
    assert checksum.sum16(b"\xab") == 0xAB00
    assert checksum.sum16(memoryview(b"\x12\x34\x56")) == (0x1234 + 0x5600)
    assert checksum.finish(0xFFFF) == 0
    assert not checksum.is_valid(b"")


def test_pseudo_header_ipv4():
    src = bytes([192, 168, 1, 2])
    dst = bytes([8, 8, 8, 8])
    expected = naive_sum16(src + dst + bytes([0, 17]) + (37).to_bytes(2, "big"))
    assert checksum.pseudo_header_ipv4(src, dst, 17, 37) == expected


def test_sum16_many_matches_concatenation():
    parts = [b"\x01\x02", b"\xff\xfe\x10\x20", b"\x33"]
    assert checksum.sum16_many(parts) == checksum.sum16(b"".join(parts))


@given(st.binary(max_size=2000), st.integers(0, 0xFFFF))
def test_sum16_matches_naive(data, initial):
    assert checksum.sum16(data, initial) == naive_sum16(data, initial)
    assert checksum.sum16(memoryview(bytearray(data)), initial) == naive_sum16(data, initial)


@given(st.binary(max_size=200).filter(lambda b: len(b) % 2 == 0), st.binary(max_size=200))
def test_sum16_is_additive_over_even_prefixes(head, tail):
    both = checksum.sum16(head + tail)
    assert both == checksum.sum16(tail, checksum.sum16(head))
    assert both == checksum.sum16_many([head, tail])


@given(
    st.binary(max_size=300).filter(lambda b: len(b) % 2 == 0),
    st.binary(max_size=300),
    st.integers(0, 0xFFFF),
)
def test_is_valid_after_fill(head, tail, initial):
    # A checksum field at any even offset, any data length (odd included),
    # any pseudo-header sum: filling it makes the whole thing valid.
    data = bytearray(head + b"\x00\x00" + tail)
    value = checksum.checksum(data, initial)
    data[len(head) : len(head) + 2] = value.to_bytes(2, "big")
    assert checksum.is_valid(data, initial)


@given(st.binary(min_size=2, max_size=300), st.data())
def test_single_bit_flip_is_detected(data, draw):
    buf = bytearray(data + b"\x00\x00")
    value = checksum.checksum(buf)
    buf[-2:] = value.to_bytes(2, "big")
    bit = draw.draw(st.integers(0, len(buf) * 8 - 1))
    buf[bit // 8] ^= 1 << (bit % 8)
    assert not checksum.is_valid(buf)
