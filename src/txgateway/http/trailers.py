# -*- test-case-name: tests.test_h2server -*-
"""
Response trailers, relayed from an upstream to a client that can take them.

An upstream response (an C{IResponse}) that has trailers carries them as a
C{trailers} attribute (a C{Headers}) by the time its body ends: the HTTP/2
upstream client sets it (gRPC's C{grpc-status} and C{grpc-message} arrive
this way).  The forwarder calls L{relayTrailers} just before it finishes
the client's response; an HTTP/2 client gets them as the stream's last
HEADERS frame (L{GatewayH2Stream.writeTrailers
<txgateway.http.h2stream.GatewayH2Stream.writeTrailers>}).  An HTTP/1.1
client does not: twisted.web's chunked writer has no trailer section, and
a field that only some clients get is not something an application can
rely on.

No private name of any library is used here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["relayTrailers", "responseTrailers"]


def responseTrailers(response: Any) -> list[tuple[bytes, bytes]]:
    """The trailer fields C{response} carries, as (name, value) pairs; none when it has none."""
    trailers = getattr(response, "trailers", None)
    if trailers is None:
        return []
    if hasattr(trailers, "getAllRawHeaders"):
        return [(name, value) for name, values in trailers.getAllRawHeaders() for value in values]
    return list(trailers)


# A gRPC "trailers-only" answer carries these in its head (one HEADERS frame ending the stream).
_STATUS_FIELDS = (b"grpc-status", b"grpc-message", b"grpc-status-details-bin")


def relayTrailers(request: Any, response: Any) -> bool:
    """
    Hand C{response}'s trailers to C{request}'s client if its channel can
    send them; whether it could (False also when there were none).

    A gRPC answer with no message and its status in the head (trailers-only)
    is relayed as a head and trailers: twisted.web ends a stream with a DATA
    frame after the head, and a gRPC client reads a status in a head that
    does not end the stream as no status at all (UNKNOWN).  Its status
    fields move to the trailers while the head is not yet written.
    """
    write = getattr(getattr(request, "channel", None), "writeTrailers", None)
    if write is None:
        return False
    fields = responseTrailers(response)
    if not fields and not getattr(request, "startedWriting", True):
        headers = request.responseHeaders
        for name in _STATUS_FIELDS:
            values = headers.getRawHeaders(name)
            if values:
                fields.extend((name, v) for v in values)
                headers.removeHeader(name)
    if not fields:
        return False
    write(fields)
    return True
