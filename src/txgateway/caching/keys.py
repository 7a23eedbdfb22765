# -*- test-case-name: tests.test_caching -*-
"""
What a stored response is filed under: the primary cache key (the target URI
as the gateway sees it) and the request fields as the origin saw them, which
its C{Vary} selects among (RFC 9111 §2, §4.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from txgateway.caching.policy import HeaderLookup
    from txgateway.context import RequestContext

__all__ = ["cacheKey", "originFields"]


def cacheKey(context: RequestContext, path: str | None, query: bytes | None) -> bytes:
    """The primary cache key of C{path}/C{query} on C{context}'s scheme and host."""
    scheme = b"https" if context.request.isSecure() else b"http"
    target = (path or "/").encode("latin-1")
    if query is not None:
        target += b"?" + query
    return scheme + b"://" + context.host.encode("latin-1") + target


def originFields(context: RequestContext) -> HeaderLookup:
    """
    Request fields as the origin saw them, for Vary: what the gateway set
    (identity, route rules) replaces, what it removed is absent.  An
    origin that varies on C{X-Consumer} thus varies on the identity.
    """
    route = context.route
    rules = route.config.headers.request if route is not None else None
    setHere: dict[bytes, bytes] = {}
    removed = {h.lower() for h in context.removeHeaders}
    if rules is not None:
        removed |= {h.lower().encode() for h in rules.remove}
        for k, v in rules.set:
            setHere[k.lower().encode()] = v.encode()
    for k2, v2 in context.forwardHeaders:
        setHere[k2.lower()] = v2
    raw = context.request.requestHeaders.getRawHeaders

    def get(name: bytes) -> Sequence[bytes] | None:
        if name in setHere:
            return [setHere[name]]
        if name in removed:
            return None
        return raw(name)  # type: ignore[no-any-return]

    return get
