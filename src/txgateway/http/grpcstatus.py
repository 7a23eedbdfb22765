# -*- test-case-name: tests.test_grpc -*-
"""
gRPC status codes, and the gateway's own answers as gRPC errors.

A gRPC client reads a call's outcome from C{grpc-status} and
C{grpc-message}, not from the HTTP status, which for gRPC is always 200: a
gateway 503 in an HTTP body reaches a grpcio caller as an opaque
"UNAVAILABLE: 503 Service Unavailable" at best.  So when the request is a
gRPC call (C{content-type: application/grpc*}), an answer the gateway makes
itself (no route, 429, 503, 401/403, 504, 502) is given as HTTP 200 with no
message, its status in L{grpcAnswer}'s fields, with the code of
L{CODE_FOR_STATUS} (the mapping of gRPC's own doc/http-grpc-status-mapping.md,
read the other way).

Also here: the names of the codes (for C{retries.on: ["grpc:UNAVAILABLE"]}),
C{grpc-timeout} read as a deadline (L{grpcTimeout}), and C{grpc-message}'s
percent-encoding.

A primitive module: it imports nothing from txgateway.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

__all__ = ["CODES", "CODE_FOR_STATUS", "NAMES", "codeFor", "codeName", "grpcAnswer", "grpcFailure", "grpcStatusOf", "grpcTimeout",
           "isGrpc", "messageOf"]

# https://grpc.github.io/grpc/core/md_doc_statuscodes.html
NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
CODES = {name: i for i, name in enumerate(NAMES)}

# The gateway's own HTTP answers, as the gRPC code a client should see.
CODE_FOR_STATUS = {
    400: CODES["INTERNAL"],
    401: CODES["UNAUTHENTICATED"],
    403: CODES["PERMISSION_DENIED"],
    404: CODES["UNIMPLEMENTED"],  # no route: the method is not served here
    405: CODES["UNIMPLEMENTED"],
    408: CODES["DEADLINE_EXCEEDED"],
    413: CODES["RESOURCE_EXHAUSTED"],
    429: CODES["RESOURCE_EXHAUSTED"],
    431: CODES["RESOURCE_EXHAUSTED"],
    502: CODES["UNAVAILABLE"],
    503: CODES["UNAVAILABLE"],
    504: CODES["DEADLINE_EXCEEDED"],
}

_TIMEOUT = re.compile(rb"^\s*(\d{1,8})([HMSmun])\s*$")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# grpc-message: percent-encode everything outside printable ASCII, and % itself.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def isGrpc(contentType: bytes | None) -> bool:
    """Whether a request with this C{Content-Type} is a gRPC call (C{application/grpc}, C{+proto}, ...)."""
    if not contentType:
        return False
    ct = contentType.lower()
    return ct == b"application/grpc" or ct.startswith((b"application/grpc+", b"application/grpc;"))


def codeFor(status: int) -> int:
    """The gRPC code of one of the gateway's own HTTP answers (UNKNOWN for one not mapped)."""
    code = CODE_FOR_STATUS.get(status)
    if code is not None:
        return code
    return CODES["INTERNAL"] if 400 <= status < 500 else CODES["UNKNOWN"]


def codeName(code: int) -> str:
    """The name of a gRPC status code (C{UNAVAILABLE}); an unknown number stays a number."""
    return NAMES[code] if 0 <= code < len(NAMES) else str(code)


def grpcAnswer(status: int, message: str) -> list[tuple[bytes, bytes]]:
    """C{grpc-status} and C{grpc-message} of the gateway's own C{status} answer."""
    text = quote(message, safe=_MESSAGE_SAFE).encode("ascii")
    return [(b"grpc-status", b"%d" % codeFor(status)), (b"grpc-message", text)]


def grpcTimeout(value: bytes | None) -> float | None:
    """C{grpc-timeout} (C{100m}, C{5S}, ...) in seconds, or None when absent or malformed."""
    if not value:
        return None
    m = _TIMEOUT.match(value)
    if m is None:
        return None
    return int(m.group(1)) * _UNITS[m.group(2)]


def grpcStatusOf(headers: object, trailers: object) -> int | None:
    """The C{grpc-status} of a response: from its trailers, or its head (a trailers-only response)."""
    for fields in (trailers, headers):
        get = getattr(fields, "getRawHeaders", None)
        values = get(b"grpc-status") if get is not None else None
        if values:
            try:
                return int(values[0])
            except ValueError:
                return CODES["UNKNOWN"]
    return None


def grpcFailure(headers: object) -> str | None:
    """
    The retry condition (C{grpc:UNAVAILABLE}, ...) of a trailers-only
    response, whose C{grpc-status} is in its head, when it is not OK; None
    otherwise.  A status that only comes in the trailers follows messages
    already on their way to the client: too late to try again.
    """
    get = getattr(headers, "getRawHeaders", None)
    values = get(b"grpc-status") if get is not None else None
    if not values or values[0] == b"0":
        return None
    try:
        code = int(values[0])
    except ValueError:
        code = CODES["UNKNOWN"]
    return "grpc:" + (NAMES[code] if 0 <= code < len(NAMES) else "UNKNOWN")  # retries.on names only known codes


def messageOf(status: int, body: bytes) -> str:
    """The text of one of the gateway's JSON error bodies (see L{txgateway.http.errors}), for C{grpc-message}."""
    try:
        text = json.loads(body).get("error")
    except (ValueError, AttributeError):
        text = None
    return text if isinstance(text, str) else f"gateway answered HTTP {status}"
