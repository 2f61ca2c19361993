"""The hypercall ABI (platforms/hvt/abi.py): byte literals, round trips, and only declared errors.

Layered as STYLE.md 10 asks: a few messages pinned as byte literals (so that
the layout in ABI.md cannot drift silently), property-based round trips for
every call and for boot info with net and block devices, every ``AbiError``
path by construction, and a fuzz of each decoder with the invariant "raises
``AbiError`` or nothing".
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from platforms.hvt import abi
from platforms.hvt.abi import ABI_VERSION, AbiError, BlockDevice, BootInfo, Call, NetDevice, Result

U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda name: len(name.encode()) < 256
)
net_devices = st.builds(NetDevice, names, st.binary(min_size=6, max_size=6), U16)
block_devices = st.builds(BlockDevice, names, U32, U64)
arguments = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=30)
# One empty argument alone encodes as an empty command line, which decodes as
# no argument at all; any other list survives the trip.
cmdlines = st.lists(arguments, max_size=6).filter(lambda args: args != [""]).map(tuple)
boot_infos = st.builds(BootInfo, cmdlines, st.lists(net_devices | block_devices, max_size=8).map(tuple), U64)


# -- byte literals -----------------------------------------------------------------


def test_header_layout_is_little_endian_call_flags_handle_length() -> None:
    assert abi.HEADER_LEN == 8
    assert abi.request(Call.NET_READ, b"\x40\x00", handle=3) == b"\x04\x00\x03\x00\x02\x00\x00\x00\x40\x00"
    assert abi.response(Call.NET_READ, Result.AGAIN) == b"\x04\x01\x00\x00\x00\x00\x00\x00"
    assert abi.response(Call.POLL, Result.OK, abi.u64(0b101)) == b"\x03\x00\x00\x00\x08\x00\x00\x00" + bytes(
        [5, 0, 0, 0, 0, 0, 0, 0]
    )


def test_call_and_result_numbers_are_the_documented_ones() -> None:
    assert [(call.name, int(call)) for call in Call] == [
        ("BOOT", 0),
        ("WALLTIME", 1),
        ("PUTS", 2),
        ("POLL", 3),
        ("NET_READ", 4),
        ("NET_WRITE", 5),
        ("BLOCK_READ", 6),
        ("BLOCK_WRITE", 7),
        ("HALT", 8),
    ]
    assert [(result.name, int(result)) for result in Result] == [("OK", 0), ("AGAIN", 1), ("EINVAL", 2), ("EUNSPEC", 3)]


def test_boot_info_layout() -> None:
    info = BootInfo(("--ipv4=10.0.0.2/24", "-v"), (NetDevice("service", b"\x02\x00\x00\x00\x00\x01", 1500),), 64 << 20)
    cmdline = b"--ipv4=10.0.0.2/24\0-v"
    assert info.encode() == (
        struct.pack("<IQHI", ABI_VERSION, 64 << 20, 1, len(cmdline))
        + cmdline
        + b"\x01\x07service"
        + b"\x02\x00\x00\x00\x00\x01"
        + struct.pack("<H", 1500)
    )
    disk = BootInfo((), (BlockDevice("disk", 512, 1 << 20),))
    assert disk.encode()[-(2 + 4 + 12) :] == b"\x02\x04disk" + struct.pack("<IQ", 512, 1 << 20)


# -- round trips -------------------------------------------------------------------


@given(st.sampled_from(list(Call)), st.binary(max_size=64), U16, st.integers(0, 255))
def test_request_round_trip(call: Call, payload: bytes, handle: int, flags: int) -> None:
    parsed_call, parsed_flags, parsed_handle, parsed_payload = abi.parse(abi.request(call, payload, handle, flags))
    assert (parsed_call, parsed_flags, parsed_handle, bytes(parsed_payload)) == (call, flags, handle, payload)


@given(st.sampled_from(list(Call)), st.sampled_from(list(Result)), st.binary(max_size=64), U16)
def test_response_round_trip(call: Call, result: Result, payload: bytes, count: int) -> None:
    parsed = abi.parse(abi.response(call, result, payload, count))
    assert (parsed[0], parsed[1], parsed[2], bytes(parsed[3])) == (call, result, count, payload)


@given(st.lists(st.binary(max_size=200), max_size=10))
def test_frame_batch_round_trip(frames: list[bytes]) -> None:
    decoded = abi.decode_frames(memoryview(abi.encode_frames(frames)), len(frames))
    assert [bytes(frame) for frame in decoded] == frames


@given(boot_infos)
def test_boot_info_round_trip(info: BootInfo) -> None:
    assert BootInfo.decode(info.encode()) == info


def test_boot_info_with_net_and_block_devices_keeps_their_order() -> None:
    devices = (
        NetDevice("service", b"\x02\x00\x00\x00\x00\x01", 1500),
        BlockDevice("disk", 4096, 4096 * 10),
        NetDevice("admin", b"\x02\x00\x00\x00\x00\x02", 9000),
    )
    decoded = BootInfo.decode(BootInfo(("a", "", "b c"), devices, 1 << 30).encode())
    assert decoded.devices == devices
    assert decoded.cmdline == ("a", "", "b c")
    assert decoded.memory_limit == 1 << 30
    assert BootInfo.decode(BootInfo((), ()).encode()) == BootInfo((), ())


# -- each call's payload, both ways ------------------------------------------------


@given(U64)
def test_walltime_and_poll_payloads(value: int) -> None:
    assert abi.read_u64(memoryview(abi.u64(value))) == value  # WALLTIME's answer, POLL's deadline and ready set


@given(U16)
def test_net_read_payload(max_frames: int) -> None:
    assert abi.read_u16(memoryview(abi.u16(max_frames))) == max_frames


@given(U64, U32)
def test_block_read_payload(offset: int, length: int) -> None:
    assert abi.read_block_request(memoryview(abi.block_read_request(offset, length))) == (offset, length)


@given(U64, st.binary(max_size=64))
def test_block_write_payload(offset: int, data: bytes) -> None:
    parsed_offset, rest = abi.read_u64_prefix(memoryview(abi.u64(offset) + data))
    assert (parsed_offset, bytes(rest)) == (offset, data)


@given(U32, st.binary(max_size=64))
def test_halt_payload(status: int, reason: bytes) -> None:
    parsed_status, rest = abi.read_u32_prefix(memoryview(abi.u32(status) + reason))
    assert (parsed_status, bytes(rest)) == (status, reason)


# -- every AbiError path ---------------------------------------------------------


@pytest.mark.parametrize("message", [b"", b"\x01", b"\x01\x00\x00\x00\x00\x00\x00"])
def test_truncated_header(message: bytes) -> None:
    with pytest.raises(AbiError, match="shorter than its header"):
        abi.parse(message)


@pytest.mark.parametrize(
    "message",
    [
        abi.request(Call.PUTS, b"hello")[:-1],  # payload shorter than its length
        abi.request(Call.PUTS, b"hello") + b"!",  # longer
        b"\x02\x00\x00\x00\xff\xff\xff\xff",  # a huge length, no payload
    ],
)
def test_length_mismatch(message: bytes) -> None:
    with pytest.raises(AbiError, match="payload bytes"):
        abi.parse(message)


@pytest.mark.parametrize(
    ("payload", "count", "error"),
    [
        (b"\x05\x00\x00", 1, "frame batch is truncated"),  # a length prefix cut short
        (b"\x05\x00\x00\x00abc", 1, "frame in batch is truncated"),  # a frame cut short
        (abi.encode_frames([b"ab"]), 2, "frame batch is truncated"),  # fewer frames than counted
        (abi.encode_frames([b"ab", b"cd"]), 1, "trailing bytes"),  # more
    ],
)
def test_truncated_frame_batch(payload: bytes, count: int, error: str) -> None:
    with pytest.raises(AbiError, match=error):
        abi.decode_frames(memoryview(payload), count)


GOOD_BOOT = BootInfo(("x",), (NetDevice("n", b"\x02" * 6, 1500), BlockDevice("b", 512, 512))).encode()
HEAD = struct.Struct("<IQHI")


def _boot(
    version: int = ABI_VERSION, count: int = 0, cmdline: bytes = b"", rest: bytes = b"", cmd_len: int | None = None
) -> bytes:
    return HEAD.pack(version, 0, count, len(cmdline) if cmd_len is None else cmd_len) + cmdline + rest


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (GOOD_BOOT[: HEAD.size - 1], "boot info is truncated"),
        (_boot(version=ABI_VERSION + 1), "ABI version 2"),
        (_boot(version=0), "ABI version 0"),
        (_boot(cmdline=b"ab", cmd_len=3), "command line is truncated"),
        (_boot(cmdline=b"\xff\xfe"), "not UTF-8"),
        (_boot(count=1), "device is truncated"),
        (_boot(count=1, rest=b"\x01"), "device is truncated"),
        (_boot(count=1, rest=b"\x01\x01\xff" + bytes(8)), "device name is not UTF-8"),
        (_boot(count=1, rest=b"\x01\x01n" + bytes(7)), "net device is truncated"),
        (_boot(count=1, rest=b"\x02\x01b" + bytes(11)), "block device is truncated"),
        (_boot(count=1, rest=b"\x03\x01x" + bytes(8)), "unknown device type 3"),
        (_boot(count=1, rest=b"\x01\x05n" + bytes(8)), "net device is truncated"),  # a name longer than what is left
        (GOOD_BOOT + b"\0", "trailing bytes"),
        (_boot(count=2, rest=b"\x01\x01n" + bytes(8)), "device is truncated"),  # fewer devices than counted
    ],
)
def test_bad_boot_info(data: bytes, error: str) -> None:
    with pytest.raises(AbiError, match=error):
        BootInfo.decode(data)


@pytest.mark.parametrize(
    ("reader", "payload"),
    [
        (abi.read_u16, b"\x01"),
        (abi.read_u16, b"\x01\x02\x03"),
        (abi.read_u64, bytes(7)),
        (abi.read_u64, bytes(9)),
        (abi.read_block_request, bytes(11)),
        (abi.read_block_request, bytes(13)),
        (abi.read_u32_prefix, bytes(3)),
        (abi.read_u64_prefix, bytes(7)),
    ],
)
def test_payload_of_the_wrong_size(reader, payload: bytes) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AbiError, match="payload bytes"):
        reader(memoryview(payload))


def test_boot_info_refuses_to_encode_a_nameless_device() -> None:
    with pytest.raises(ValueError, match="1-255 bytes"):
        BootInfo((), (NetDevice("", b"\x02" * 6, 1500),)).encode()
    with pytest.raises(ValueError, match="1-255 bytes"):
        BootInfo((), (BlockDevice("x" * 256, 512, 512),)).encode()


# -- fuzz: only declared errors -----------------------------------------------------


@given(st.binary(max_size=200))
def test_parse_raises_only_abi_errors(data: bytes) -> None:
    try:
        abi.parse(data)
    except AbiError:
        pass


@given(st.binary(max_size=200), st.integers(0, 20))
def test_decode_frames_raises_only_abi_errors(data: bytes, count: int) -> None:
    try:
        abi.decode_frames(memoryview(data), count)
    except AbiError:
        pass


@given(st.binary(max_size=200))
def test_boot_info_decode_raises_only_abi_errors(data: bytes) -> None:
    try:
        BootInfo.decode(struct.pack("<I", ABI_VERSION) + data)
    except AbiError:
        pass


@given(boot_infos, st.data())
def test_every_truncation_of_boot_info_is_an_abi_error(info: BootInfo, data: st.DataObject) -> None:
    encoded = info.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(AbiError):
        BootInfo.decode(encoded[:cut])
