"""Protocol detection from the first bytes of a tunnel. Pure: bytes in, a verdict out.

``detect(data, max_request_line)`` answers ``HTTP2`` (the h2c prior-knowledge client preface
``PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n``), ``HTTP1`` (a request line ``METHOD SP target SP
HTTP/1.0|1.1 CRLF`` with a known method token), ``TCP`` (anything else: L4 policy only), or
``NEED_MORE`` while the bytes so far could still be either. Rules:

- a verdict is final: more bytes never change it (each rule looks only at a prefix);
- ``NEED_MORE`` is bounded: the preface decides within 24 bytes, a request line within
  ``max_request_line`` bytes plus its CRLF. A line that still looks like a request line at the bound
  is ``HTTP1`` (fail closed: the HTTP/1 parser refuses it with 414; calling it TCP would let an
  over-long request line skip L7 policy);
- an empty input is ``NEED_MORE`` (the caller decides what EOF before any byte means: TCP).
"""

from __future__ import annotations

import enum
import re

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Methods llhttp (our HTTP/1 parser) accepts for HTTP, longest first is irrelevant: exact token match.
HTTP1_METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY MOVE LOCK "
    b"UNLOCK SEARCH REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE "
    b"MKCALENDAR LINK UNLINK BIND REBIND UNBIND ACL QUERY".split()
)
_MAX_METHOD = max(len(m) for m in HTTP1_METHODS)
# request-target: visible ASCII (no spaces, no controls); version exactly 1.0 or 1.1.
_REQUEST_LINE = re.compile(rb"([A-Z-]+) ([\x21-\x7e]+) HTTP/1\.[01]\r\n")


class Detected(enum.Enum):
    NEED_MORE = "need-more"
    HTTP1 = "http/1.1"
    HTTP2 = "h2c"
    TCP = "tcp"


def detect(data: bytes, max_request_line: int = 16 * 1024) -> Detected:
    """The protocol of a tunnel whose first bytes are ``data`` (see the module docstring)."""
    if not data:
        return Detected.NEED_MORE
    if data[:1] == b"P" and H2_PREFACE.startswith(data[:24]):
        if len(data) >= len(H2_PREFACE):
            return Detected.HTTP2
        return Detected.NEED_MORE  # a prefix of the preface (also a prefix of "POST"/"PUT" lines: wait)
    space = data.find(b" ", 0, _MAX_METHOD + 1)
    if space < 0:
        if len(data) > _MAX_METHOD or not _could_be_method(data):
            return Detected.TCP
        return Detected.NEED_MORE
    if data[:space] not in HTTP1_METHODS:
        return Detected.TCP
    end = data.find(b"\r\n", space, max_request_line + 2)
    if end < 0:
        if not _could_be_line(data[: max_request_line + 2], space):
            return Detected.TCP
        if len(data) >= max_request_line + 2:
            return Detected.HTTP1  # a request line too long: the HTTP/1 parser refuses it (414), fail closed
        return Detected.NEED_MORE
    return Detected.HTTP1 if _REQUEST_LINE.fullmatch(data, 0, end + 2) else Detected.TCP


def _could_be_method(prefix: bytes) -> bool:
    return any(method.startswith(prefix) for method in HTTP1_METHODS)


_PARTIAL_LINE = re.compile(rb"[\x21-\x7e]*( (H(T(T(P(/(1(\.([01](\r)?)?)?)?)?)?)?)?)?)?")


def _could_be_line(data: bytes, space: int) -> bool:
    """``data`` (no CRLF yet) could still grow into a valid request line."""
    return _PARTIAL_LINE.fullmatch(data, space + 1) is not None
