# -*- test-case-name: tests.test_upstream_response,tests.test_hardening -*-
"""
The strict upstream response parser: Twisted's, refusing what a proxy must not relay.

L{StrictResponseParser} checks the head Twisted's parser reads;
L{plainHead} reads the common head (whole, plain HTTP/1.1, one framing)
without a parser at all, for the client protocol's short way.

Twisted private names used here (held to stock Twisted by
tests/test_upstream_response.py):
  - C{twisted.web._newclient.HTTPClientParser}, C{HTTPParser} (subclassed;
    C{CONNECTION_CONTROL_HEADERS}, C{connHeaders}, C{response},
    C{switchToBodyMode}) and C{Response} (its C{_state}, C{_construct});
  - C{Headers._rawHeaders}, the dict a Headers keeps its fields in;
  - C{HTTPClientParser.request} and C{connectionMade} as Twisted's own
    reset after a 1xx head uses them: an interim response
    (L{txgateway.http.interim}) is relayed to the request's C{interim} client
    and the parser reset for the final head, as Twisted does but without
    its "Ignoring unexpected 1xx response" log line.
"""

from __future__ import annotations

from typing import Any

from twisted.web._newclient import HTTPClientParser, HTTPParser
from twisted.web.http_headers import Headers

from txgateway.http.headers import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_KEEP_ALIVE,
    H_TRANSFER_ENCODING,
    KNOWN_KEYS,
    NO_BODY_STATUS,
    TCHAR,
    connectionTokens,
    optionTokens,
    storedKey,
    storedName,
)
from txgateway.http.interim import RELAYED, relayInterim

__all__ = ["InvalidUpstreamResponse", "StrictResponseParser", "plainHead"]


class InvalidUpstreamResponse(Exception):
    """An upstream response head we will not relay: its framing or a field is unsafe."""


# Bytes a reason phrase may not hold (RFC 9112 §4: HTAB, SP, VCHAR, obs-text).
_PHRASE_CONTROLS = bytes(c for c in range(0x20) if c != 0x09)
# Response fields the stock parser files apart from the end-to-end ones.
_CONNECTION_FIELDS = frozenset(storedName(n) for n in HTTPParser.CONNECTION_CONTROL_HEADERS)



class StrictResponseParser(HTTPClientParser):
    """
    Twisted's response parser, refusing what a proxy must not pass on.

    Twisted reads a response carrying both Content-Length and
    Transfer-Encoding by the latter, keeps CR and NUL inside field values
    and leaves the fields a Connection header names among the end-to-end
    ones.  RFC 9112 §6.3 asks an intermediary to treat the first as an
    error; RFC 9110 §5.5 forbids the second; RFC 9110 §7.6.1 makes the
    third hop-by-hop.  Raising here makes the client protocol drop the
    connection and fail the request, which the forwarder answers with 502.
    """

    def statusReceived(self, status: bytes) -> None:
        super().statusReceived(status)
        phrase = self.response.phrase
        if len(phrase.translate(None, _PHRASE_CONTROLS)) != len(phrase):
            raise InvalidUpstreamResponse("control character in the reason phrase")

    def headerReceived(self, name: bytes, value: bytes) -> None:
        if not name or not TCHAR.issuperset(name):
            raise InvalidUpstreamResponse(f"invalid field name {name[:40]!r}")
        if b"\r" in value or b"\x00" in value:
            raise InvalidUpstreamResponse(f"CR or NUL in the value of {name[:40]!r}")
        super().headerReceived(name, value)

    def allHeadersReceived(self) -> None:
        code = self.response.code
        if 100 <= code < 200 and code != 101:
            # RFC 9110 §15.2: a proxy forwards the 1xx it did not ask for; the
            # final head follows on the same response, read by a fresh parse.
            client = getattr(self.request, "interim", None)
            if client is not None and code in RELAYED:
                relayInterim(client, code, self.response.phrase, self.response.headers)
            self.connectionMade()
            del self.response
            return
        if not 100 <= code < 200:
            conn = self.connHeaders
            te = conn._rawHeaders.get(H_TRANSFER_ENCODING)
            if te is not None:
                if H_CONTENT_LENGTH in conn._rawHeaders:
                    raise InvalidUpstreamResponse("both Content-Length and Transfer-Encoding")
                if self.response.version < (b"HTTP", 1, 1):
                    raise InvalidUpstreamResponse("Transfer-Encoding in an HTTP/1.0 response")
                if len(te) != 1 or te[0].strip(b" \t").lower() != b"chunked":
                    raise InvalidUpstreamResponse(f"unsupported Transfer-Encoding {b', '.join(te)[:60]!r}")
            for token in connectionTokens(conn):
                self.headers.removeHeader(token)
        # Twisted pauses the connection here until someone asks for the body,
        # then resumes it: on epoll that is an unregister and a register of
        # the socket (two syscalls) per response.  The gateway asks for the
        # body while the response Deferred fires, so the pause is kept back
        # and applied only if the body is still unclaimed when it has fired.
        transport: Any = self.transport
        recorder = _PauseRecorder(transport)
        self.transport = recorder  # type: ignore[assignment]
        try:
            super().allHeadersReceived()
        finally:
            self.transport = transport
        response = getattr(self, "response", None)
        if recorder.paused and response is not None and getattr(response, "_state", "INITIAL") == "INITIAL":
            transport.pauseProducing()


class _PauseRecorder:
    """Stands for the parser's transport while headers complete: notes a pause instead of pausing."""

    __slots__ = ("_transport", "paused")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)



def plainHead(data: bytes) -> tuple[int, int, bytes, Headers, int | None] | None:
    """
    The response head at the start of C{data} if it is whole and plain:
    C{(where the body starts, code, phrase, end-to-end fields, Content-Length
    or None for a chunked body)}.  None for anything the stock parser should
    judge instead.

    Plain is what nearly every backend sends: HTTP/1.1, a 2xx-5xx status
    that has a body, valid field names, no stray CR, LF or NUL, exactly one
    Content-Length or one C{Transfer-Encoding: chunked}, and no other
    connection field but C{Connection} (without C{close}) and C{Keep-Alive}.  The fields are filed as the strict parser
    files them: connection fields apart, names as twisted.web's Headers
    spells them, values stripped, and what a Connection option names dropped.

    Not split by llhttp as request heads are (L{txgateway.http.heads}): for
    a response head, filing the fields is most of the cost, and a sketch
    with llhttp (a new parser per head, since it then waits for the body)
    saved 0.2-0.5 of 3.4-5.1 us for 5-7 fields before the checks that would
    keep its answer this one's (#25).
    """
    end = data.find(b"\r\n\r\n")
    if end == -1:
        return None
    head = data[:end]
    lines = head.split(b"\r\n")
    breaks = len(lines) - 1
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\x00" in head:
        return None  # a bare LF or CR, or a NUL, somewhere
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[0] != b"HTTP/1.1":
        return None
    codeBytes = status[1]
    if len(codeBytes) != 3 or not codeBytes.isdigit():
        return None
    code = int(codeBytes)
    phrase = status[2] if len(status) == 3 else b""
    if code < 200 or code in NO_BODY_STATUS or len(phrase.translate(None, _PHRASE_CONTROLS)) != len(phrase):
        return None
    headers = Headers()
    raw = headers._rawHeaders
    length = -1
    chunked = False
    options: list[bytes] | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return None
        key = KNOWN_KEYS.get(name)  # names in there are valid tokens
        if key is None:
            if not name or not TCHAR.issuperset(name):
                return None
            key = storedKey(name)
        value = value.strip()
        if key in _CONNECTION_FIELDS:
            if key == H_CONTENT_LENGTH:
                if length != -1 or not value.isdigit():
                    return None  # repeated or odd framing
                length = int(value)
            elif key == H_CONNECTION:
                if options is None:
                    options = []
                options.append(value)
            elif key == H_TRANSFER_ENCODING:
                if chunked or value.lower() != b"chunked":
                    return None  # repeated, or a coding we do not decode
                chunked = True
            elif key != H_KEEP_ALIVE:
                return None  # an upgrade, TE, trailers...
            continue
        values = raw.get(key)
        if values is None:
            raw[key] = [value]
        else:
            values.append(value)
    if chunked:
        if length != -1:
            return None  # both framings: the strict parser refuses it
    elif length == -1:
        return None  # read to the close: the stock parser does that
    if options is not None:
        # "Connection: keep-alive" (many servers send it) is fine; a close,
        # or an option that is not a field name, is for the stock parser.
        for value in options:
            for token in value.lower().split(b","):
                token = token.strip()
                if token == b"close" or (token and not TCHAR.issuperset(token)):
                    return None
        for token in optionTokens(options):
            raw.pop(KNOWN_KEYS.get(token) or storedKey(token), None)
    return end + 4, code, phrase, headers, (None if chunked else length)
