"""What every wire view shares: a ``memoryview``, a length check, fixed-offset fields.

A view subclasses ``View``, sets the length its fixed fields need and its
layer's error, and declares each plain field in one line::

    class UdpPacket(View):
        __slots__ = ()
        _min_len = HEADER_LEN
        _error = UdpError

        src_port = U16(0)
        checksum = U16(6)

A field with logic (a length counted in words, a range to validate) stays a
hand-written ``property`` in its module.

Speed: views are read for every packet, so a field must cost what the
hand-written property it replaces cost. The field classes are subclasses of
``property`` whose getter and setter are closures over the offsets: a read
is still C ``property.__get__`` calling one small function, within 2 ns of
the old properties on CPython 3.11. A descriptor class with its own Python
``__get__`` measured about 10 ns, a quarter, slower on a one-byte field.

The field classes have no ``__slots__``: a field keeps its docstring in its
``__dict__`` (on a subclass, property's own slot for it is shadowed by the
class docstring), and on 3.11 ``property.__init__`` fails on a subclass
without a ``__dict__``. The dict costs nothing: there are a few dozen field
objects, made once at import, and the closures never look at them.

Assigning a value that does not fit raises before anything is written:
``ValueError`` for ``U8`` and ``U16`` and for a ``Bytes`` value of another
length, ``OverflowError`` for ``U32``.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, ClassVar, Self

from netstack.wire.errors import WireError

_U32 = struct.Struct("!I")


class View:
    """A view over one packet: ``View(buffer)`` to emit, ``new_checked(buffer)`` to parse.

    A subclass sets ``_min_len``, the bytes its fixed fields need, and
    ``_error``, its layer's ``WireError`` subclass. ``new_checked`` raises
    ``_error("truncated")`` for a shorter buffer, then calls ``_check`` for
    whatever else the accessors rely on (lengths read from the header), so
    that no accessor can fail afterwards.
    """

    __slots__ = ("buffer",)

    _min_len: ClassVar[int]
    _error: ClassVar[type[WireError]]

    def __init__(self, buffer: bytes | bytearray | memoryview) -> None:
        self.buffer = memoryview(buffer)

    @classmethod
    def new_checked(cls, buffer: bytes | bytearray | memoryview) -> Self:
        view = cls(buffer)
        size = len(view.buffer)
        if size < cls._min_len:
            raise cls._error("truncated", f"{size} bytes")
        view._check(size)
        return view

    def _check(self, size: int) -> None:
        """Checks past the fixed fields, on a buffer of ``size >= _min_len`` bytes."""


class _Field(property):
    """A ``property`` over one field of a view's buffer, with its own docstring."""

    def __init__(
        self, fget: Callable[[Any], Any], fset: Callable[[Any, Any], None], doc: str | None
    ) -> None:
        super().__init__(fget, fset)
        # Set here, not through property's ``doc``: on 3.11 that is shadowed
        # by the docstring of the field class (``U16``, ...) on a subclass.
        self.__doc__ = doc


class U8(_Field):
    """The byte at ``offset``."""

    def __init__(self, offset: int, doc: str | None = None) -> None:
        def fget(view: View) -> int:
            return view.buffer[offset]

        def fset(view: View, value: int) -> None:
            view.buffer[offset] = value

        super().__init__(fget, fset, doc)


class U16(_Field):
    """The big-endian 16-bit number at ``offset``."""

    def __init__(self, offset: int, doc: str | None = None) -> None:
        # Two indexings beat struct for 16 bits (no tuple to build and unpack).
        low = offset + 1

        def fget(view: View) -> int:
            buf = view.buffer
            return (buf[offset] << 8) | buf[low]

        def fset(view: View, value: int) -> None:
            buf = view.buffer
            buf[offset] = value >> 8
            buf[low] = value & 0xFF

        super().__init__(fget, fset, doc)


class U32(_Field):
    """The big-endian 32-bit number at ``offset``."""

    def __init__(self, offset: int, doc: str | None = None) -> None:
        unpack_from = _U32.unpack_from
        end = offset + 4

        def fget(view: View) -> int:
            return unpack_from(view.buffer, offset)[0]

        # Not struct's pack_into: it zeroes the field before it finds that a
        # value does not fit; to_bytes raises first and writes nothing.
        def fset(view: View, value: int) -> None:
            view.buffer[offset:end] = value.to_bytes(4, "big")

        super().__init__(fget, fset, doc)


class Bytes(_Field):
    """``length`` bytes at ``offset`` (an address); reads copy, writes take exactly ``length``."""

    def __init__(self, offset: int, length: int, doc: str | None = None) -> None:
        end = offset + length

        def fget(view: View) -> bytes:
            return bytes(view.buffer[offset:end])

        def fset(view: View, value: bytes) -> None:
            view.buffer[offset:end] = value

        super().__init__(fget, fset, doc)


class Flag(_Field):
    """One bit of the byte at ``offset``, selected by ``mask``, as a ``bool``."""

    def __init__(self, offset: int, mask: int, doc: str | None = None) -> None:
        def fget(view: View) -> bool:
            return bool(view.buffer[offset] & mask)

        def fset(view: View, value: bool) -> None:
            buf = view.buffer
            buf[offset] = (buf[offset] | mask) if value else (buf[offset] & ~mask)

        super().__init__(fget, fset, doc)
