"""The GOAWAY scanner: graceful GOAWAYs are lifted out, every other byte reaches h2 unchanged and in order."""

from __future__ import annotations

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
)
from hypothesis import given
from hypothesis import strategies as st

from meshcore.hbone._frames import FrameTooLarge, Goaway, GoawayScanner
from meshcore.hbone._h2_speedups import original_raw_data_repr, raw_data_repr

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _scan(chunks: list[bytes], *, skip_preface: bool = False) -> tuple[bytes, list[object]]:
    scanner = GoawayScanner(skip_preface=skip_preface, max_frame_size=1 << 20)
    passed = bytearray()
    lifted: list[object] = []
    for chunk in chunks:
        for segment in scanner.feed(chunk):
            if isinstance(segment, (bytes, memoryview)):
                passed += segment
            else:
                lifted.append(segment)
    return bytes(passed), lifted


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


OTHER_FRAMES = [
    SettingsFrame(0, settings={4: 65535}).serialize(),
    DataFrame(1, data=b"\x00\x00\x00\x07\x00" * 20).serialize(),  # body that looks like GOAWAY headers
    PingFrame(0, opaque_data=b"12345678").serialize(),
]
GRACEFUL = GoAwayFrame(0, last_stream_id=7, error_code=0, additional_data=b"bye").serialize()


@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_graceful_goaway_is_lifted_out_at_any_split(cuts):
    before, after = b"".join(OTHER_FRAMES), b"".join(reversed(OTHER_FRAMES))
    passed, lifted = _scan(_split(PREFACE + before + GRACEFUL + after, cuts), skip_preface=True)
    assert passed == PREFACE + before + after
    assert lifted == [Goaway(7, b"bye")]


def test_goaway_with_an_error_code_is_left_for_h2():
    frame = GoAwayFrame(0, last_stream_id=3, error_code=2).serialize()
    passed, lifted = _scan([OTHER_FRAMES[0] + frame])
    assert passed == OTHER_FRAMES[0] + frame and lifted == []


def test_goaway_inside_a_header_block_is_left_for_h2_to_reject():
    opening = HeadersFrame(1, data=b"\x82").serialize()  # no END_HEADERS: a CONTINUATION must follow
    continuation = ContinuationFrame(1, data=b"\x84", flags=["END_HEADERS"]).serialize()
    passed, lifted = _scan([opening + GRACEFUL + continuation])
    assert passed == opening + GRACEFUL + continuation and lifted == []


def test_an_oversized_frame_header_is_reported_before_its_body_arrives():
    passed, lifted = _scan([OTHER_FRAMES[0] + b"HTTP/1.1 400 Bad Request\r\n"])
    assert passed == OTHER_FRAMES[0]
    assert lifted == [FrameTooLarge(int.from_bytes(b"HTT", "big"))]


@given(data=st.binary(max_size=64))
def test_the_h2_repr_speedup_gives_exactly_hyperframes_output(data):
    original = original_raw_data_repr()
    assert callable(original)
    assert raw_data_repr(data) == original(data)
    assert raw_data_repr(memoryview(data)) == original(data)
