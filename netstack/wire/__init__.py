"""Packet formats, one module per protocol.

Each module has two levels, as in smoltcp's ``Packet<T>`` + ``Repr``:

* a **view** (``EthernetFrame``, ``Ipv4Packet``, ...) over a ``memoryview``.
  ``View.new_checked(buffer)`` checks every length the accessors rely on and
  raises the layer's error, so no accessor can fail afterwards;
  ``View(buffer)`` skips the check and is for emitting into a buffer the
  caller sized with ``Repr.buffer_len()``.
* a **repr** (``EthernetRepr``, ``Ipv4Repr``, ...): a small validated record
  with ``parse(view)``, ``buffer_len()`` and ``emit(view)``.

Malformed bytes raise the layer's own subclass of ``WireError`` and nothing
else; its ``reason`` is a short token used as a drop-counter key.
Parsing never copies payloads: ``view.payload`` is a slice of the buffer.
"""

from netstack.wire.errors import WireError

__all__ = ["WireError"]
