"""A behaviour-preserving speed fix for h2/hyperframe, installed when ``meshcore.hbone`` is imported.

h2's ``H2Connection._receive_frame`` formats ``repr(frame)`` for a trace log on *every* received frame,
even when nothing logs it, and hyperframe's DATA frame repr hex-encodes the whole payload before
cutting it to 10 bytes. With 1 MiB frames that was ~30% of the CPU of an HBONE transfer (profiled:
``binascii.hexlify`` + ``bytes.decode`` on every frame). ``install`` swaps in a function that returns
exactly the same string but only encodes the bytes it shows. Idempotent; touches nothing else.
"""

from __future__ import annotations

import binascii

from hyperframe import frame as _hyperframe

_ORIGINAL = getattr(_hyperframe, "_raw_data_repr", None)


def raw_data_repr(data: bytes | memoryview | None) -> str:
    """Same output as hyperframe's ``_raw_data_repr``: at most 10 bytes as hex, then ``...``."""
    if not data:
        return "None"
    shown = binascii.hexlify(data[:11]).decode("ascii")
    if len(shown) > 20:
        shown = shown[:20] + "..."
    return "<hex:" + shown + ">"


def install() -> None:
    """Use ``raw_data_repr`` in hyperframe if it still has the function we replace."""
    if _ORIGINAL is not None:
        _hyperframe._raw_data_repr = raw_data_repr


def original_raw_data_repr() -> object:
    """hyperframe's own function (for the test that proves both give the same output)."""
    return _ORIGINAL
