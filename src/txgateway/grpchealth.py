# -*- test-case-name: tests.test_grpchealth -*-
"""
Active health checks by the standard gRPC health-checking protocol.

With C{health.active.grpc_service} set, each probe is a unary call of
C{grpc.health.v1.Health/Check} over HTTP/2 (its own L{H2Client}, never the
request pool) asking about that service (C{""}: the server as a whole).
The two messages are tiny, so they are encoded here by hand rather than
with generated protobuf code:

  - C{HealthCheckRequest}: field 1, C{string service};
  - C{HealthCheckResponse}: field 1, C{enum status} (C{SERVING} = 1).

L{GrpcHealthProbe} has the request shape L{txgateway.probing} uses for
its HTTP probes, so the checker's loop, streaks and verdicts are the same:
a C{SERVING} answer is a 200; anything else fails the probe with a
L{GrpcHealthFailure} saying why (C{NOT_SERVING}, C{UNIMPLEMENTED}: the
target has no health service, ...).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers

from txgateway.http.client.h2client import H2Client, tlsCreatorFor
from txgateway.http.client.h2pool import H2Settings
from txgateway.http.grpcstatus import codeName, grpcStatusOf
from txgateway.http.replay import BytesProducer, StillTransport

if TYPE_CHECKING:
    from txgateway.config import UpstreamConfig

__all__ = ["CHECK_PATH", "GrpcHealthFailure", "GrpcHealthProbe", "checkRequest", "grpcProbe", "servingStatus"]

CHECK_PATH = b"/grpc.health.v1.Health/Check"
SERVING_STATUS = ("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")
_HEADERS = {b"content-type": [b"application/grpc"], b"user-agent": [b"txgateway-health-check"]}


class GrpcHealthFailure(Exception):
    """The target answered the health check, but not SERVING (or not at all as gRPC)."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _readVarint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def checkRequest(service: str) -> bytes:
    """The gRPC-framed C{HealthCheckRequest} for C{service}."""
    name = service.encode("utf-8")
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + struct.pack(">I", len(message)) + message


def servingStatus(body: bytes) -> int:
    """The C{status} of a gRPC-framed C{HealthCheckResponse} (0, UNKNOWN, when absent)."""
    if len(body) < 5:
        raise ValueError("no response message")
    if body[0] != 0:
        raise ValueError("a compressed response message (none was asked for)")
    (length,) = struct.unpack(">I", body[1:5])
    message = body[5:5 + length]
    status = 0
    at = 0
    while at < len(message):
        key, at = _readVarint(message, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _readVarint(message, at)
            if field == 1:
                status = value
        elif wire == 2:
            size, at = _readVarint(message, at)
            at += size
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return status


class _Serving:
    """What a SERVING target's probe gives the checker: a 200 with nothing more to read (treq's C{collect} reads it)."""

    code = 200
    length = 0

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(StillTransport())
        protocol.connectionLost(Failure(ResponseDone()))


class GrpcHealthProbe:
    """Health probes of one upstream's targets, over their own HTTP/2 connections."""

    def __init__(self, client: H2Client, service: str) -> None:
        self.client = client
        self.service = service
        self._body = checkRequest(service)

    def request(self, method: str, url: bytes, **_: Any) -> Deferred[Any]:
        """Call Health/Check at C{url}'s target (the path is L{CHECK_PATH}); fires with a 200 when SERVING."""
        d = self.client.request(b"POST", url, Headers(_HEADERS), BytesProducer(self._body))
        return d.addCallback(self._read)

    def _read(self, response: Any) -> Deferred[Any]:
        if response.code != 200:
            raise GrpcHealthFailure(f"HTTP status {response.code}, not a gRPC answer")
        from treq import collect  # loaded by the first active check, as for HTTP probes

        parts: list[bytes] = []
        d: Deferred[Any] = collect(response, parts.append)
        return d.addCallback(lambda _: self._verdict(b"".join(parts), response))

    def _verdict(self, body: bytes, response: Any) -> _Serving:
        status = grpcStatusOf(response.headers, getattr(response, "trailers", None))
        if status is None:
            raise GrpcHealthFailure("no grpc-status in the answer")
        if status != 0:
            message = (response.trailers.getRawHeaders(b"grpc-message") or
                       response.headers.getRawHeaders(b"grpc-message") or [b""])[0]
            raise GrpcHealthFailure(f"gRPC {codeName(status)} {message.decode('utf-8', 'replace')}".rstrip())
        serving = servingStatus(body)
        if serving != 1:
            name = SERVING_STATUS[serving] if serving < len(SERVING_STATUS) else str(serving)
            raise GrpcHealthFailure(f"service {self.service!r} is {name}")
        return _Serving()

    def closeCachedConnections(self) -> Deferred[None]:
        """Close the probes' connections (the checker stopped)."""
        return self.client.close()


def grpcProbe(reactor: Any, upstream: UpstreamConfig, policy: Any = None) -> GrpcHealthProbe:
    """
    The probes of one upstream: one HTTP/2 connection per target, kept
    between probes, made as the upstream's requests' are (its TLS settings).
    """
    active = upstream.health.active
    assert active is not None and active.grpc_service is not None
    client = H2Client(reactor, H2Settings(maxConnections=1, maxStreams=1), active.timeout,
                      lambda host: tlsCreatorFor(host, policy))
    return GrpcHealthProbe(client, active.grpc_service)
