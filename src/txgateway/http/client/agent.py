# -*- test-case-name: tests.test_forwarder -*-
"""
The upstream HTTP/1.1 client: Twisted's Agent over the gateway's pool.

L{makeClient} gives an upstream its L{UpstreamAgent}, the
L{txgateway.interfaces.IUpstreamClient} every forward goes through;
L{probeAgent} gives health checks a plain Agent over the same kind of pool.

Twisted private names used here (held to stock Twisted by the
byte-for-byte comparisons in tests/test_forwarder.py C{AgentTests}):
  - C{twisted.web._newclient.Request} (subclassed; C{_construct},
    C{_writeHeaders}) and C{Headers._rawHeaders};
  - C{Agent._getEndpoint}, C{Agent._requestWithEndpoint}, C{Agent._pool};
  - C{Agent._endpointFactory} (replaced by L{UpstreamAgent.connectVia});
  - C{twisted.web.client._ensureValidMethod} and C{Agent._computeHostValue},
    in L{UpstreamAgent._requestWithEndpoint} (the stock one, which also
    gives the request the client to relay interim responses to,
    L{txgateway.http.interim}).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web._newclient import Request as _Request
from twisted.web.client import URI, Agent, HTTPConnectionPool, _ensureValidMethod
from twisted.web.error import SchemeNotSupported
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from txgateway.http.client.pool import ConnectionPool, TargetEndpoints
from txgateway.http.headers import H_HOST
from txgateway.http.interim import INTERIM
from txgateway.interfaces import IUpstreamClient

if TYPE_CHECKING:
    from txgateway.http.sending import WriteBatcher

__all__ = ["UpstreamAgent", "UpstreamRequest", "makeClient", "probeAgent"]


class UpstreamRequest(_Request):
    """
    A forwarded request, its head written in one join.

    The stock C{_writeHeaders} looks Host up by name, runs the method and
    target through regular expressions and builds a list per field.  Here
    the target was checked by L{UpstreamAgent.request} with the same expression,
    a standard method needs no check, and the fields are the gateway's
    own Headers (values sanitised when they were stored): the same bytes,
    about 3 us less a request.
    """

    def _writeHeaders(self, transport: Any, TEorCL: bytes | None) -> None:
        raw = self.headers._rawHeaders
        hosts = raw.get(H_HOST)
        method = self.method
        if hosts is None or len(hosts) != 1 or not self.persistent or method not in _METHODS:
            super()._writeHeaders(transport, TEorCL)
            return
        parts = [method, b" ", self.uri, b" HTTP/1.1\r\n"]
        if TEorCL is not None:
            parts.append(TEorCL)
        for name, values in raw.items():
            for value in values:
                parts += (name, b": ", value, b"\r\n")
        parts.append(b"\r\n")
        transport.writeSequence(parts)


# RFC 9110 §9 and RFC 5789 methods: tokens, so twisted's check cannot refuse them.  Others are checked the stock way.
_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"))


# Methods a stale pooled connection's request is sent again for (ConnectionPool.reuse).
_REPLAYABLE = frozenset((b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"TRACE"))
_VALID_URI = re.compile(rb"[\x21-\x7e]+")  # as twisted.web's own check: no controls, spaces or non-ASCII


@implementer(IUpstreamClient)
class UpstreamAgent(Agent):
    """
    The Agent, without parsing the same target URL prefix for every request.

    C{Agent.request} runs each URL through C{urlparse} and asks the endpoint
    factory for its endpoint (about 7 us a request).  The forwarder's URLs
    are always one of the upstream's target URLs plus a path, so the parsed
    scheme and authority, the endpoint and the pool key are kept per target
    prefix.  A URL whose path or query C{urlparse} would rewrite (a C{;} or
    a trailing C{?}, which it drops) goes the stock way, so what reaches the
    backend is the same byte for byte.
    """

    _origins: dict[bytes, tuple[URI, IStreamClientEndpoint, tuple[bytes, bytes, int]]]
    pool: HTTPConnectionPool

    @classmethod
    def usingEndpointFactory(cls, reactor: Any, endpointFactory: IAgentEndpointFactory,  # type: ignore[override]
                             contextFactory: Any = None, connectTimeout: float | None = None,
                             bindAddress: Any = None, pool: HTTPConnectionPool | None = None) -> UpstreamAgent:
        agent = super().usingEndpointFactory(reactor, endpointFactory, pool=pool)
        agent._origins = {}
        agent.pool = agent._pool
        return agent  # type: ignore[return-value]

    def connectVia(self, endpoints: IAgentEndpointFactory) -> None:
        """
        Make new connections through C{endpoints} from now on (pooled ones
        stay): how L{txgateway.testing} puts in-memory origins behind the
        real client, its pool and its fast paths.
        """
        self._endpointFactory = endpoints
        self._origins = {}

    def close(self) -> Deferred[None]:
        """Close the pool's idle connections (the drain's last step, or a reload that replaced the pool)."""
        return self.pool.closeCachedConnections()  # type: ignore[no-any-return]

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        at = uri.find(b"://")
        cut = uri.find(b"/", at + 3) if at != -1 else -1
        if cut == -1 or b";" in uri or uri[-1:] == b"?" or b"#" in uri or _VALID_URI.fullmatch(uri) is None:
            return super().request(method, uri, headers, bodyProducer)
        base = uri[:cut]
        known = self._origins.get(base)
        if known is None:
            parsed = URI.fromBytes(base + b"/")
            try:
                endpoint = self._getEndpoint(parsed)
            except SchemeNotSupported:
                return super().request(method, uri, headers, bodyProducer)
            known = (parsed, endpoint, (parsed.scheme, parsed.host, parsed.port))
            if len(self._origins) < 1024:
                self._origins[base] = known
        parsed, endpoint, key = known
        target = uri[cut:]
        path, _, query = target.partition(b"?")
        full = URI(parsed.scheme, parsed.netloc, parsed.host, parsed.port, path, b"", query, b"")
        pool: Any = self._pool
        takeIdle = getattr(pool, "takeIdle", None)
        if takeIdle is not None and headers is not None and H_HOST in headers._rawHeaders \
                and not pool.retryAutomatically:
            # A pooled connection is there to take: ask it directly, without
            # the connection Deferred, its callback and the chaining of the
            # request's Deferred onto it that _requestWithEndpoint goes through.
            connection = takeIdle(key)
            if connection is not None:
                req = UpstreamRequest._construct(method, target, headers, bodyProducer,
                                                 persistent=pool.persistent, parsedURI=full)
                req.interim = INTERIM.get()
                if bodyProducer is None and method in _REPLAYABLE:
                    connection = pool.reuse(connection, key, endpoint)
                return connection.request(req)  # type: ignore[no-any-return]
        return self._requestWithEndpoint(key, endpoint, method, full, headers, bodyProducer, target)

    def _requestWithEndpoint(self, key: Any, endpoint: IStreamClientEndpoint, method: bytes,  # type: ignore[override]
                             parsedURI: URI, headers: Headers | None, bodyProducer: IBodyProducer | None,
                             requestPath: bytes) -> Deferred[IResponse]:
        """
        Twisted's own, but the request carries the forward's client for
        interim responses (read here, in the forward's context: the
        connection may be made later, outside it).
        """
        client = INTERIM.get()
        method = _ensureValidMethod(method)
        if headers is None:
            headers = Headers()
        if not headers.hasHeader(b"Host"):
            headers = headers.copy()
            headers.addRawHeader(b"Host", self._computeHostValue(parsedURI.scheme, parsedURI.host, parsedURI.port))
        pool: Any = self._pool

        def connected(proto: Any) -> Deferred[IResponse]:
            req = _Request._construct(method, requestPath, headers, bodyProducer, persistent=pool.persistent,
                                      parsedURI=parsedURI)
            req.interim = client
            return proto.request(req)  # type: ignore[no-any-return]

        return pool.getConnection(key, endpoint).addCallback(connected)  # type: ignore[no-any-return]


def makeClient(reactor: Any, maxPerTarget: int, idleTimeout: float, connectTimeout: float,
               writes: WriteBatcher | None = None, tls: Any = None) -> UpstreamAgent:
    """
    The pooled client of one upstream (C{pool.max_per_target}, C{pool.idle_timeout}, C{timeouts.connect};
    C{tls}: its L{txgateway.tls.client.ClientTLSPolicy}; without one, the defaults when an https target needs them).
    """
    pool = ConnectionPool(reactor, persistent=True)
    pool.writes = writes
    pool.maxPersistentPerHost = maxPerTarget
    pool.cachedConnectionTimeout = idleTimeout  # type: ignore[assignment]
    # Our own retry policy decides and counts retries.  What the pool still
    # does itself is ConnectionPool.reuse: the one replay of a bodiless
    # idempotent request whose reused connection the target had closed.
    pool.retryAutomatically = False
    return UpstreamAgent.usingEndpointFactory(reactor, TargetEndpoints(reactor, connectTimeout, tls), pool=pool)


def probeAgent(reactor: Any, connectTimeout: float, tls: Any = None) -> tuple[Agent, HTTPConnectionPool]:
    """
    A plain Agent for health probes, keeping one idle connection per target; close the pool when done.
    C{tls}: as for L{makeClient}, so probes of https targets trust the upstream's CA.
    """
    pool = ConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    agent = Agent.usingEndpointFactory(reactor, TargetEndpoints(reactor, connectTimeout, tls), pool=pool)
    return agent, pool
