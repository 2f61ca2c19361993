"""The error every wire format raises for bytes it cannot accept."""

from __future__ import annotations


class WireError(ValueError):
    """Bytes from the network that a layer cannot accept.

    ``reason`` is a short token naming what was wrong (``"truncated"``,
    ``"bad_checksum"``, ``"bad_version"`` ...). Malformed bytes
    (``truncated``, ``bad_length``, ``bad_checksum``) are the sender's or the
    link's fault; well-formed but unsupported input (``unsupported_*``) is
    ours not to handle. A caller drops the frame and counts
    ``f"{layer}.{reason}"``.
    """

    layer = "wire"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{self.layer}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason

    @property
    def counter(self) -> str:
        return f"{self.layer}.{self.reason}"
