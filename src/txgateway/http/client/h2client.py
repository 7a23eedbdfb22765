# -*- test-case-name: tests.test_h2client -*-
"""
The HTTP/2 upstream client: C{protocol: http2} and C{protocol: grpc} upstreams.

L{H2Client} provides L{txgateway.interfaces.IUpstreamClient}, the shape of
Twisted's C{IAgent.request}, so the attempt loop, breakers, retries,
timeouts, passive health, metrics and the access log treat an HTTP/2
target as they treat an HTTP/1.1 one.  Each target gets a
L{txgateway.http.client.h2pool.TargetPool}; an C{http://} target is spoken
to with prior knowledge (RFC 9113 §3.3), an C{https://} one over TLS whose
ALPN must choose C{h2}.

The request head is made fit for HTTP/2 here: C{Host} becomes
C{:authority}, field names go lower case, connection-specific fields are
dropped (RFC 9113 §8.2.2), and C{te: trailers} is sent (gRPC targets
require it; a response's trailers are read either way).

A request the target refused without reading it (GOAWAY past its stream,
REFUSED_STREAM) is sent once more on another connection when its body is
in memory, as the HTTP/1.1 pool replays a request its stale connection
lost: not counted as a retry, nor against the target.

No private name of any library is used here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from txgateway.http.client.h2pool import H2Settings, TargetPool
from txgateway.http.client.h2state import StreamRefused
from txgateway.http.client.pool import TargetEndpoints
from txgateway.http.replay import BytesProducer
from txgateway.interfaces import IUpstreamClient

if TYPE_CHECKING:
    from txgateway.config import UpstreamConfig

__all__ = ["H2Client", "h2Fields", "makeH2Client", "tlsCreatorFor"]

# RFC 9113 §8.2.2 (and Host, which becomes :authority; TE, sent as "trailers" only).
_NOT_SENT = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
                       b"host", b"te", b"content-length"))
_TE = (b"te", b"trailers")


def tlsCreatorFor(host: str, policy: Any = None) -> Any:
    """
    The TLS connection creator of an C{https://} HTTP/2 target: verify it
    as C{host}, offer C{h2} by ALPN.  The one place the upstream's TLS
    settings come in (C{policy}: its L{txgateway.tls.client.ClientTLSPolicy}
    from C{upstreams.NAME.tls}: private CA, client certificate, SNI), for
    its requests and its gRPC health probes alike; without one, the system
    CA store as for any https:// target.
    """
    if policy is not None:
        return policy.creatorFor(host, (b"h2",))
    # Imported only here: pyOpenSSL costs every process ~15 MB otherwise.
    from twisted.internet.ssl import optionsForClientTLS

    return optionsForClientTLS(host, acceptableProtocols=[b"h2"])


def h2Fields(headers: Headers | None, length: Any) -> tuple[bytes | None, list[tuple[bytes, bytes]]]:
    """
    The C{:authority} (the Host field) and the other fields of an HTTP/2
    request head, from the gateway's upstream headers; C{length} is the
    body's length (an int when known).
    """
    authority = None
    fields: list[tuple[bytes, bytes]] = []
    if headers is not None:
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower in _NOT_SENT:
                if lower == b"host" and values:
                    authority = values[0]
                continue
            fields.extend((lower, v) for v in values)
    if isinstance(length, int):
        fields.append((b"content-length", b"%d" % length))
    fields.append(_TE)
    return authority, fields


class _Origin:
    __slots__ = ("scheme", "authority", "pool")

    def __init__(self, scheme: bytes, authority: bytes, pool: TargetPool) -> None:
        self.scheme = scheme
        self.authority = authority
        self.pool = pool


@implementer(IUpstreamClient)
class H2Client:
    """
    Sends requests to an upstream's targets over HTTP/2, one pool per target.

    C{tls(host)} makes the TLS connection creator of an C{https://} target
    (L{tlsCreatorFor} by default).
    """

    def __init__(self, reactor: Any, settings: H2Settings, connectTimeout: float,
                 tls: Callable[[str], Any] = tlsCreatorFor) -> None:
        self.reactor = reactor
        self.settings = settings
        self.connectTimeout = connectTimeout
        self.tls = tls
        self._origins: dict[bytes, _Origin] = {}
        self._endpoints: IAgentEndpointFactory | None = None
        self._plain = TargetEndpoints(reactor, connectTimeout)

    def connectVia(self, endpoints: IAgentEndpointFactory) -> None:
        """New connections go through C{endpoints} from now on (in-memory targets in tests)."""
        self._endpoints = endpoints
        self._origins = {}

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        at = uri.find(b"://")
        cut = uri.find(b"/", at + 3) if at != -1 else -1
        if at == -1:
            return fail(ValueError(f"not an absolute URL: {uri[:200]!r}"))
        base = uri[:cut] if cut != -1 else uri
        path = uri[cut:] if cut != -1 else b"/"
        origin = self._origins.get(base)
        if origin is None:
            try:
                origin = self._origin(base, uri[:at], uri[at + 3:len(base)])
            except ValueError as e:
                return fail(e)
            if len(self._origins) < 1024:
                self._origins[base] = origin
        authority, fields = h2Fields(headers, getattr(bodyProducer, "length", None))
        scheme = origin.scheme

        def send(connection: Any) -> Deferred[IResponse]:
            return connection.request(method, scheme, authority or origin.authority, path, fields,  # type: ignore[no-any-return]
                                      bodyProducer)

        d = origin.pool.acquire().addCallback(send)
        if bodyProducer is None or type(bodyProducer) is BytesProducer:
            # A stream the target never read (GOAWAY, REFUSED_STREAM) is sent
            # once more, on another connection, when its body can be sent
            # again: a target restarting gracefully costs no error and no retry.
            def again(failure: Failure) -> Deferred[IResponse]:
                failure.trap(StreamRefused)
                return origin.pool.acquire().addCallback(send)

            d.addErrback(again)
        return d

    def _origin(self, base: bytes, scheme: bytes, netloc: bytes) -> _Origin:
        if scheme not in (b"http", b"https"):
            raise ValueError(f"an HTTP/2 target is http:// or https://, not {scheme!r}")
        parsed = URI.fromBytes(base + b"/")
        endpoint: IStreamClientEndpoint
        if self._endpoints is not None:
            endpoint = self._endpoints.endpointForURI(parsed)
        else:
            # The plain TCP endpoint of the HTTP/1.1 client; TLS with ALPN h2 on top of it.
            endpoint = self._plain.endpointForURI(URI(b"http", parsed.netloc, parsed.host, parsed.port, b"/", b"", b"", b""))
            if scheme == b"https":
                # Imported only here: pyOpenSSL costs every process ~15 MB otherwise.
                from twisted.internet.endpoints import wrapClientTLS

                endpoint = wrapClientTLS(self.tls(parsed.host.decode("ascii").strip("[]")), endpoint)
        pool = TargetPool(self.reactor, endpoint, self.settings, scheme == b"https" and self._endpoints is None,
                          base.decode("ascii", "replace"))
        return _Origin(scheme, netloc, pool)

    def close(self) -> Deferred[None]:
        """Close every target's connections; fires when they are closed."""
        origins, self._origins = self._origins, {}
        pools = {id(o.pool): o.pool for o in origins.values()}
        return DeferredList([p.close() for p in pools.values()]).addCallback(lambda _: None)

    def closeCachedConnections(self) -> Deferred[None]:
        """L{close}, by the name the drain and a reload call an HTTP/1.1 pool's."""
        return self.close()


def makeH2Client(reactor: Any, upstream: UpstreamConfig, policy: Any = None) -> H2Client:
    """The HTTP/2 client of one upstream, from its C{pool}, C{timeouts.connect} and TLS C{policy}."""
    pool = upstream.pool
    settings = H2Settings(maxConnections=pool.max_connections, maxStreams=pool.max_streams,
                          idleTimeout=pool.idle_timeout, pingInterval=pool.ping_interval,
                          pingTimeout=pool.ping_timeout)
    return H2Client(reactor, settings, upstream.timeouts.connect,
                    lambda host: tlsCreatorFor(host, policy))
