# -*- test-case-name: tests.test_hardening,tests.test_channel,tests.test_heads_httptools -*-
"""
Request-head checks that need no connection: the request line, the
authority (Host or an absolute-form target), a head read whole, and the raw
answer a refused request gets.

Pure functions of bytes, so the channel (L{txgateway.http.channel}) keeps
only the state machine and each rule here can be read, and tested, on its
own.  No private Twisted name is used here.

A head read whole is split by llhttp (through C{httptools}, the C parser
uvicorn uses): about three times faster than splitting it in Python.
L{splitWholeHeadPython} is the rule, L{splitWholeHead} must give exactly what
it gives (held to it by tests/test_heads_httptools.py).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser

from txgateway.http.errors import errorBody
from txgateway.http.headers import FRAMING as _FRAMING
from txgateway.http.headers import TCHAR as _TCHAR

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers

__all__ = ["RefusalHook", "checkRequestLine", "rawResponse", "splitAbsoluteForm", "splitWholeHead",
           "splitWholeHeadPython", "validAuthority"]


def rawResponse(status: int, reason: bytes, message: str, requestId: str | None = None) -> bytes:
    """A whole JSON error response, written straight to a transport, that closes the connection."""
    body = errorBody(status, message, requestId)
    # The id is one the gateway made or accepted (plain characters only).
    idLine = b"X-Request-ID: %s\r\n" % requestId.encode("ascii") if requestId is not None else b""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s"
            b"Connection: close\r\n\r\n%s" % (status, reason, len(body), idLine, body))


# What the Site calls for a request the channel refused: (client address,
# method, request-target, the request's headers so far or None, status)
# -> the request id to answer with, after writing its access-log line.
RefusalHook = Callable[[str, bytes, bytes, "Headers | None", int], "str | None"]


# RFC 3986 §3.2.2 host (reg-name restricted to unreserved characters: nothing
# a log line, a header or a backend's router could read two ways) and §3.2.3
# port.
_AUTHORITY = re.compile(rb"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._~-]+))(?::([0-9]{0,5}))?")


def validAuthority(value: bytes) -> bool:
    """
    Whether C{value} is a usable C{host[:port]} (RFC 9112 §3.2, RFC 3986 §3.2.2).

    An empty host is refused: an C{http} URI must name one (RFC 9110 §4.2.1).
    """
    m = _AUTHORITY.fullmatch(value)
    if m is None:
        return False
    literal, _, port = m.groups()
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
    return not port or int(port) <= 65535


def splitAbsoluteForm(target: bytes) -> tuple[bytes, bytes]:
    """
    C{(authority, origin-form)} of an absolute-form request-target (RFC 9112 §3.2.2).

    Raises L{ValueError} for a scheme other than http(s), user information
    (RFC 9110 §4.2.4) or an invalid authority.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise ValueError("only http and https absolute-form targets are served")
    end = len(rest)
    for stop in (b"/", b"?"):
        i = rest.find(stop)
        if i != -1 and i < end:
            end = i
    authority, origin = rest[:end], rest[end:]
    if b"@" in authority:
        raise ValueError("user information in the request-target")
    if not validAuthority(authority):
        raise ValueError("invalid authority in the request-target")
    if not origin.startswith(b"/"):
        origin = b"/" + origin
    return authority, origin


def checkRequestLine(line: bytes, maxUriBytes: int) -> tuple[int, bytes, str] | None:
    """
    C{(status, reason, message)} to refuse a request line with, or None.

    The checks twisted.web does not make: the length of the target (414),
    and bytes a backend could read differently from us (400).
    """
    parts = line.split(b" ")
    if len(parts) != 3:
        return 400, b"Bad Request", "malformed request line"
    target = parts[1]
    if len(target) > maxUriBytes:
        return 414, b"URI Too Long", f"request-target over {maxUriBytes} bytes"
    if not target.isascii() or b"\x7f" in target:
        # RFC 3986: a URI is ASCII; DEL and bytes above are never valid.
        return 400, b"Bad Request", "non-ASCII byte in the request-target"
    if b"#" in target:
        # RFC 9112 §3.2: no fragment; a backend that cuts at '#' would
        # see another path than the one we routed.
        return 400, b"Bad Request", "fragment in the request-target"
    return None


def splitWholeHeadPython(data: bytes, maxHeaders: int) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """
    C{(request line, [(name, value), ...])} of a bodiless head ending in
    C{data}'s final CRLF CRLF, or None when anything in it needs the
    line-by-line path (a body's framing fields, obs-fold, an invalid name
    or value, too many fields, a bare LF in the request line).

    The rule L{splitWholeHead} follows, in Python: what llhttp refuses or
    reads another way is judged here.
    """
    lines = data[:-4].split(b"\r\n")
    first = lines[0]
    if not first or len(lines) - 1 > maxHeaders or b"\n" in first:
        return None
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or not _TCHAR.issuperset(name) or name.lower() in _FRAMING:
            return None
        value = value.strip(b" \t")
        if b"\x00" in value or b"\r" in value or b"\n" in value:
            return None
        fields.append((name, value))
    return first, fields


# Only a name this long can be a framing one: most names skip the lower().
_FRAMING_SIZES = frozenset(len(name) for name in _FRAMING)


class _Fields:
    """
    Where llhttp's callbacks leave one head's fields: names as sent, values
    without the trailing whitespace llhttp keeps (it drops the leading
    itself), and whether one of them frames a body.
    """

    __slots__ = ("fields", "framing")

    def __init__(self) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.framing = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value.rstrip(b" \t")))
        if len(name) in _FRAMING_SIZES and name.lower() in _FRAMING:
            self.framing = True


def splitWholeHead(data: bytes, maxHeaders: int) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """
    L{splitWholeHeadPython}'s answer for C{data}, a read ending in CRLF CRLF,
    with the fields split by llhttp.

    Strict llhttp (the default) accepts only CRLF line ends, no obs-fold, a
    token before each colon with nothing between them, and values of HTAB,
    SP, VCHAR and obs-text.  So once it has read the head without an error,
    with exactly one CRLF per field plus two in all of C{data} (none before
    the request line, none in a second message after the head), its fields
    are the head's lines one to one, and the rule's remaining checks are the
    request line's, the framing names and the count.  Whatever llhttp
    refuses (a method it does not know, a control character or DEL in a
    value, an upgrade...) or any count that does not add up is judged by the
    Python rule itself: the answer is the same for every input, and only
    rare heads pay for both.
    """
    if data[-4:] != b"\r\n\r\n":
        return splitWholeHeadPython(data, maxHeaders)  # not a whole head: the channel never asks
    # A parser per head: reusing one (kept in a pool after a bodiless
    # message) saved ~0.4 us of the ~1.3 a new one costs, for module-level
    # mutable state and a leniency flag to keep it usable; not worth it.
    seen = _Fields()
    parser = HttpRequestParser(seen)
    fields = seen.fields
    try:
        parser.feed_data(data)
    except (HttpParserError, HttpParserUpgrade):
        return splitWholeHeadPython(data, maxHeaders)
    if data.count(b"\r\n") != len(fields) + 2:
        return splitWholeHeadPython(data, maxHeaders)
    if seen.framing:
        return None  # a body's framing: the line-by-line path reads it
    # llhttp skips empty lines, and a bare LF, before a request line.
    first = data[:data.find(b"\r\n")]
    if not first or b"\n" in first or len(fields) > maxHeaders:
        return None
    return first, fields
