# -*- test-case-name: tests.test_cors -*-
"""
CORS at the edge: the gateway answers for the backends it fronts.

A browser decides whether a page may read a cross-origin response from the
C{Access-Control-*} headers on it, and before a non-simple request it sends a
preflight C{OPTIONS} that carries no credentials.  Answering both here means
a backend never has to know which origins its users' pages come from, and a
preflight never needs to pass authentication (it runs before auth in the
chain, see L{txgateway.middleware}).

What browsers require (WHATWG Fetch, "CORS protocol"), and what this does:

  - a preflight is C{OPTIONS} with C{Origin} and
    C{Access-Control-Request-Method}; it succeeds only on a 2xx status with
    an C{Access-Control-Allow-Origin} that matches.  An allowed preflight is
    answered 204 with the route's lists; a refused one (unknown origin,
    method or header) gets 403 without any CORS header, which makes the
    browser fail it, and a JSON body saying why for whoever reads the
    network tab.  The backend never sees a preflight of a CORS route.
  - an actual request from an allowed origin gets C{Access-Control-Allow-Origin}
    (the origin itself, or C{*} when any origin is allowed without
    credentials), C{Access-Control-Allow-Credentials: true} when configured and
    C{Access-Control-Expose-Headers}.  A request from another origin is
    still forwarded, with no CORS headers: the browser then withholds the
    response from the page.  CORS protects readers, not the server; use auth
    or IP rules to keep requests out.
  - whenever the answer depends on C{Origin} (anything but a plain C{*}),
    every response of the route says C{Vary: Origin}, including those to
    requests with no or a refused origin, so a shared cache never hands one
    origin's answer to another.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import implementer

from txgateway.context import LocalResponse, RequestContext, jsonResponse
from txgateway.interfaces import IRequestFilter

if TYPE_CHECKING:
    from txgateway.config import CorsConfig
    from txgateway.middleware import Deps
    from txgateway.observe import Metrics
    from txgateway.routing import CompiledRoute

__all__ = ["CorsFilter", "OriginMatcher", "corsFilter"]

_VARY_ORIGIN = (b"Vary", b"Origin")
_VARY_PREFLIGHT = (b"Vary", b"Access-Control-Request-Method, Access-Control-Request-Headers")
# Methods a browser sends without asking (Fetch: CORS-safelisted methods).
_SAFELISTED_METHODS = frozenset((b"GET", b"HEAD", b"POST"))
_HOST_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789-.")


class OriginMatcher:
    """
    Exact origins, C{*}, and C{https://*.example.com} patterns.

    A wildcard stands for one or more DNS labels of a subdomain: it matches
    C{https://a.example.com} and C{https://a.b.example.com}, never the bare
    C{https://example.com}, another scheme or port, or C{https://evilexample.com}.
    """

    __slots__ = ("anyOrigin", "exact", "wildcards")

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self.anyOrigin = "*" in patterns
        exact = set()
        wildcards = []
        for p in patterns:
            if p == "*":
                continue
            scheme, sep, rest = p.partition("://*.")
            if sep:
                wildcards.append(((scheme + "://").encode(), ("." + rest).encode()))
            else:
                exact.add(p.encode())
        self.exact = frozenset(exact)
        self.wildcards = tuple(wildcards)

    def allows(self, origin: bytes) -> bool:
        if self.anyOrigin:
            return True
        origin = origin.lower()
        if origin in self.exact:
            return True
        for prefix, suffix in self.wildcards:
            if origin.startswith(prefix) and origin.endswith(suffix):
                label = origin[len(prefix):len(origin) - len(suffix)]
                if label and label[0] != 0x2E and label[-1] != 0x2E and all(c in _HOST_CHARS for c in label):
                    return True
        return False


@implementer(IRequestFilter)
class CorsFilter:
    """One route's CORS policy: answers preflights, decorates actual responses."""

    def __init__(self, config: CorsConfig, metrics: Metrics | None = None, routeName: str = "") -> None:
        self.origins = OriginMatcher(config.allow_origins)
        self.credentials = config.allow_credentials
        # "*" is only meaningful to a browser without credentials; with them
        # (or with a list of origins) the origin is echoed, so the answer varies.
        self.literalStar = self.origins.anyOrigin and not self.credentials
        self.varies = not self.literalStar
        self.anyMethod = "*" in config.allow_methods
        self.methods = frozenset(m.encode() for m in config.allow_methods if m != "*")
        self.methodsValue = ", ".join(m for m in config.allow_methods if m != "*").encode()
        self.anyHeader = "*" in config.allow_headers
        self.headerSet = frozenset(h.lower().encode() for h in config.allow_headers if h != "*")
        self.headersValue = ", ".join(h for h in config.allow_headers if h != "*").encode()
        self.exposeValue = ", ".join(config.expose_headers).encode() if config.expose_headers else None
        self.maxAge = b"%d" % int(config.max_age) if config.max_age is not None else None
        self.metrics = metrics
        self.routeName = routeName

    def filterRequest(self, context: RequestContext) -> LocalResponse | None:
        if self.varies:
            context.responseHeaders.append(_VARY_ORIGIN)
        origin = context.header(b"origin")
        if origin is None:
            return None
        if context.method == b"OPTIONS":
            requested = context.header(b"access-control-request-method")
            if requested is not None:
                return self.preflight(context, origin, requested.strip())
        if self.origins.allows(origin):
            self.allowOrigin(context.responseHeaders, origin)
            if self.exposeValue is not None:
                context.responseHeaders.append((b"Access-Control-Expose-Headers", self.exposeValue))
        return None

    def allowOrigin(self, headers: list[tuple[bytes, bytes]], origin: bytes) -> None:
        headers.append((b"Access-Control-Allow-Origin", b"*" if self.literalStar else origin))
        if self.credentials:
            headers.append((b"Access-Control-Allow-Credentials", b"true"))

    def preflight(self, context: RequestContext, origin: bytes, method: bytes) -> LocalResponse:
        if not self.origins.allows(origin):
            return self.refuse(context, "origin not allowed", origin=origin.decode("latin-1"))
        if not (self.anyMethod or method in self.methods or method in _SAFELISTED_METHODS):
            return self.refuse(context, "method not allowed", method=method.decode("latin-1"))
        requested = _headerList(context.header(b"access-control-request-headers"))
        if not self.anyHeader:
            unknown = [h for h in requested if h not in self.headerSet]
            if unknown:
                return self.refuse(context, "header not allowed", request_headers=b", ".join(unknown).decode("latin-1"))
        headers: list[tuple[bytes, bytes]] = []
        self.allowOrigin(headers, origin)
        # With "*" the request's own method and headers are echoed: a literal
        # "*" is ignored by browsers for credentialed requests and never
        # covers Authorization.
        headers.append((b"Access-Control-Allow-Methods",
                        method if self.anyMethod or not self.methodsValue else self.methodsValue))
        if requested:
            headers.append((b"Access-Control-Allow-Headers",
                            b", ".join(requested) if self.anyHeader else self.headersValue))
        if self.maxAge is not None:
            headers.append((b"Access-Control-Max-Age", self.maxAge))
        headers.append(_VARY_PREFLIGHT)
        return LocalResponse(204, headers)

    def refuse(self, context: RequestContext, why: str, **extra: str) -> LocalResponse:
        if self.metrics is not None:
            self.metrics.authFailures.labels(self.routeName, "cors").inc()
        return jsonResponse(context, 403, f"CORS preflight refused: {why}", [_VARY_PREFLIGHT], **extra)


def _headerList(value: bytes | None) -> list[bytes]:
    if not value:
        return []
    return [h.strip().lower() for h in value.split(b",") if h.strip()]


def corsFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    """The route's CORS handling (preflights answered here), or None."""
    config = route.config.cors
    if config is None:
        return None
    return CorsFilter(config, deps.metrics, route.name)
