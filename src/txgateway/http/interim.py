# -*- test-case-name: tests.test_upstream_response,tests.e2e.test_caching -*-
"""
Interim (1xx) responses relayed from the upstream to the client (RFC 9110 §15.2).

A proxy must forward the 1xx responses it did not ask for: C{102
Processing}, C{103 Early Hints} (RFC 8297), and others the future defines.
The forward in progress puts its client's request in L{INTERIM} (when that
client can take interim responses, L{interimTarget}); the agent gives it to
the upstream request it makes, and the upstream parser
(L{txgateway.http.client.parser}) hands each 1xx head to L{relayInterim},
which writes it to the client before the final response.  A 1xx is never stored by the cache and
nothing of it survives into the final response: the parser starts afresh
for the final head.

Why a context variable: the interim head arrives deep in the HTTP client
(the connection's parser), under the attempt loop, the pool and Twisted's
Agent, none of which carries the client's request; each forward runs as its
own coroutine (C{ensureDeferred}), which gives it its own copy of the
context, so the client set in one forward is seen by the agent calls made
from that forward and nowhere else.  C{100} and C{101} are not relayed: the
gateway answers C{Expect: 100-continue} itself, and upgrades are not
forwarded.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

from twisted.web.http_headers import Headers

__all__ = ["INTERIM", "RELAYED", "interimTarget", "relayInterim"]

# The client request of the forward in progress, when it can take interim responses.
INTERIM: ContextVar[Any] = ContextVar("txgateway.interim", default=None)

# Informational codes relayed; 100 and 101 are not (see the module docstring).
RELAYED = frozenset(range(102, 200))

_PHRASES = {102: b"Processing", 103: b"Early Hints"}
# RFC 9110 §7.6.1: connection-specific fields stay on their hop.
_HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                         b"transfer-encoding", b"upgrade", b"content-length"))


def interimTarget(request: Any) -> Any:
    """
    C{request} if its client may get interim responses, else None: RFC 9110
    §15.2 forbids sending a 1xx to an HTTP/1.0 client, and only an HTTP/1.1
    connection writes one as a plain head.
    """
    if getattr(request, "clientproto", None) != b"HTTP/1.1":
        return None
    if getattr(getattr(request, "channel", None), "writeHeaders", None) is None:
        return None
    return request


def relayInterim(request: Any, code: int, phrase: bytes, headers: Headers) -> None:
    """Write one interim response to C{request}'s client, unless its final response has begun (or it left)."""
    if request.startedWriting or request.finished or getattr(request, "gone", False):
        return
    fields = Headers()
    drop = set(_HOP_BY_HOP)
    for value in headers.getRawHeaders(b"connection") or ():
        drop.update(t.strip().lower() for t in value.split(b","))
    for name, values in headers.getAllRawHeaders():
        if name.lower() not in drop:
            fields.setRawHeaders(name, list(values))
    request.channel.writeHeaders(b"HTTP/1.1", b"%d" % code, phrase or _PHRASES.get(code, b"Informational"), fields)
