# -*- test-case-name: tests.test_forwarder,tests.test_auth -*-
"""
The upstream request's head, made from the client's; the client response's head, made from the upstream's.

L{Messages} applies the header rules (hop-by-hop fields dropped, the
route's C{headers:} plan, X-Forwarded-* and/or RFC 7239 C{Forwarded} as
C{server.forwarded_header} says, Via, the request id and trace context) in
both directions.  Header values set from templates (C{X-Client:
{client_ip}}) are filled here, per request, from the route's plan.  It writes straight into a C{Headers}' own
dict: the client's values were sanitised when they were parsed and the
route's rules when its plan was made (see L{HeaderPlan}), so going through
C{setRawHeaders} would only redo that per request.

Twisted private names used here: C{Headers._rawHeaders}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from txgateway.http.addresses import (
    AddressSet,
    ForwardedFor,
    bareIP,
    forwardedElement,
    forwardedNode,
    splitForwarded,
)
from txgateway.http.headers import (
    H_CONNECTION,
    H_CONTENT_LENGTH,
    H_DATE,
    H_FORWARDED,
    H_HOST,
    H_REQUEST_ID,
    H_TRACEPARENT,
    H_VIA,
    H_XFF,
    H_XFH,
    H_XFP,
    NO_BODY_STATUS,
    HeaderPlan,
    addHeader,
    connectionTokens,
    fillTemplates,
)

if TYPE_CHECKING:
    from txgateway.cluster import Endpoint
    from txgateway.config import ServerConfig
    from txgateway.context import RequestContext

__all__ = ["Messages"]


class Messages:
    """The header rules of one config, both ways."""

    def __init__(self, server: ServerConfig) -> None:
        self.via = b" ".join((b"1.1 " + server.via.encode()).splitlines())
        # RFC 9110 §7.6.3: a Via entry names the protocol the message was
        # received in; an HTTP/2 client's request (or target's response) says 2.
        self.via2 = b"2" + self.via[3:]
        # The one membership cache of trusted_proxies for this config, and
        # the one X-Forwarded-For walk: the Runtime reads client addresses
        # through it too.
        self.trusted = AddressSet(server.trusted_proxies)
        self.forwardedFor = ForwardedFor(self.trusted)
        self.forwardedMode = server.forwarded_header
        self.xForwarded = server.forwarded_header != "forwarded"
        self.forwarded = server.forwarded_header != "x-forwarded"
        self._plans: dict[Any, HeaderPlan] = {}

    def headerPlan(self, route: Any) -> HeaderPlan:
        plan = self._plans.get(route)
        if plan is None:
            plan = self._plans[route] = HeaderPlan(route)
        return plan

    # -- the upstream request

    def upstreamHeaders(self, context: RequestContext, endpoint: Endpoint) -> Headers:
        """The upstream request's headers."""
        request = context.request
        src: Headers = request.requestHeaders
        raw = src._rawHeaders
        plan = self.headerPlan(context.route)
        drop = plan.requestDrop
        if H_CONNECTION in raw:
            drop = drop | connectionTokens(src)
        if context.removeHeaders:
            drop = drop | {h.lower() for h in context.removeHeaders}
        out = Headers()
        o = out._rawHeaders
        for name, values in raw.items():
            if name.lower() not in drop:
                o[name] = list(values)
        trustedPeer = context.peerIP in self.trusted
        clientHost = raw.get(H_HOST)
        if self.xForwarded:
            xff = self.forwardedFor.hops(raw.get(H_XFF)) if trustedPeer else None
            peer = context.peerIP.encode()
            o[H_XFF] = [b", ".join([*xff, peer]) if xff else peer]
            proto = raw.get(H_XFP) if trustedPeer else None
            o[H_XFP] = proto[-1:] if proto else [b"https" if request.isSecure() else b"http"]
            fhost = raw.get(H_XFH) if trustedPeer else None
            if fhost:
                o[H_XFH] = fhost[-1:]
            elif clientHost:
                o[H_XFH] = clientHost[:1]
        if self.forwarded:
            o.pop(H_FORWARDED, None)
            o[H_FORWARDED] = [self.forwardedValue(context, raw, clientHost, trustedPeer)]
        via = raw.get(H_VIA)
        mine = self.via2 if getattr(request, "clientproto", None) == b"HTTP/2" else self.via
        o[H_VIA] = [*via, mine] if via else [mine]
        o[H_HOST] = clientHost[:1] if plan.preserveHost and clientHost else [endpoint.netloc]
        o[H_REQUEST_ID] = [context.requestId.encode()]
        if context.traceId is not None:
            o[H_TRACEPARENT] = [f"00-{context.traceId}-{context.spanId}-{context.traceFlags}".encode()]
        for k, v in plan.requestSet:
            o[k] = list(v)
        if plan.requestTemplates:
            fillTemplates(o, plan.requestTemplates, context)
        for k2, v2 in context.forwardHeaders:
            out.setRawHeaders(k2, [v2])  # filter-made values (identity...): sanitised as usual
        return out

    def forwardedValue(self, context: RequestContext, raw: dict[bytes, list[bytes]], clientHost: list[bytes] | None,
                       trustedPeer: bool) -> bytes:
        """
        The C{Forwarded} field sent upstream: the trusted proxies' elements
        (from the client's on, as the X-Forwarded-For walk keeps them), then
        this hop's C{for=peer;host=...;proto=...}, values quoted as RFC 7239 says.
        """
        prior: list[bytes] = []
        if trustedPeer:
            elements = splitForwarded(raw.get(H_FORWARDED))
            trusted = self.trusted
            i = len(elements) - 1
            while i > 0 and bareIP(elements[i][1].get("for", "unknown")) in trusted:
                i -= 1
            prior = [e for e, _ in elements[max(i, 0):]]
            if not prior:
                # A proxy in front that only speaks X-Forwarded-For: its hops
                # become for= elements, so the backend still learns the client.
                hops = self.forwardedFor.hops(raw.get(H_XFF)) or ()
                prior = [b"for=" + forwardedNode(bareIP(h)).encode("latin-1") for h in hops]
        host = clientHost[0].decode("latin-1") if clientHost else None
        mine = forwardedElement(context.peerIP, host, "https" if context.request.isSecure() else "http")
        return b", ".join([*prior, mine])

    @staticmethod
    def upstreamURL(context: RequestContext, endpoint: Endpoint) -> bytes:
        path = context.upstreamPath.encode("latin-1")
        if context.query is not None:
            return endpoint.urlBytes + path + b"?" + context.query
        return endpoint.urlBytes + path

    # -- the response

    def startResponse(self, context: RequestContext, response: IResponse) -> None:
        """Status and headers of an upstream (or stored) response, made fit for the client."""
        request = context.request
        code = response.code
        request.setResponseCode(code, response.phrase)
        out: Headers = request.responseHeaders
        o = out._rawHeaders
        date = o.get(H_DATE)
        o.pop(H_DATE, None)
        src: Headers = response.headers
        s = src._rawHeaders
        plan = self.headerPlan(context.route)
        drop = plan.responseDrop
        if H_CONNECTION in s:
            drop = drop | connectionTokens(src)
        for name, values in s.items():
            if name.lower() not in drop:
                o[name] = list(values)
        if date and H_DATE not in s:
            o[H_DATE] = date
        length = response.length
        if length is not UNKNOWN_LENGTH and context.method != b"HEAD" and code not in NO_BODY_STATUS and code >= 200:
            o[H_CONTENT_LENGTH] = [b"%d" % length]
        via = s.get(H_VIA)
        mine = self.via2 if getattr(response, "version", (b"HTTP", 1, 1))[1] == 2 else self.via
        o[H_VIA] = [*via, mine] if via else [mine]
        self.finishHeaders(context)
        for k, v in plan.responseSet:
            o[k] = list(v)
        if plan.responseTemplates:
            fillTemplates(o, plan.responseTemplates, context)

    @staticmethod
    def finishHeaders(context: RequestContext) -> None:
        """Headers every response carries, proxied or local."""
        o = context.request.responseHeaders._rawHeaders
        o[H_REQUEST_ID] = [context.requestId.encode()]
        for k, v in context.responseHeaders:
            addHeader(o, k, v)
