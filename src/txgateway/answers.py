# -*- test-case-name: tests.test_edge_answers -*-
"""
Routes that answer themselves: C{routes[].redirect} and C{routes[].respond}.

An L{AnswerForwarder} stands where a route's way upstream would (it is an
L{IForwarder}), so the route's chain (IP rules, auth, rate limits) runs
first and L{txgateway.forwarding.forward} writes the answer like any
response: the route's response header rules apply, the access log and
metrics tell the same story, and C{compress} can compress a C{respond}
body.  No upstream is needed, and none is contacted.

Templates (see L{txgateway.http.templates}) are split once, at config
load; a request fills them from its own values, each escaped for where it
lands: a Location percent-encodes and never lets C{//evil.com} become a
protocol-relative URL, a header value loses control characters, an HTML
body is HTML-escaped.  A hostile C{Host} in a redirect gets a 400.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import succeed
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from txgateway.http.replay import StillTransport
from txgateway.http.templates import BadValue, Template, escaperFor, requestValues
from txgateway.interfaces import IForwarder

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from txgateway.config.schema import RedirectConfig, RespondConfig
    from txgateway.context import RequestContext

__all__ = ["AnswerForwarder", "answerFor"]


class _Redirect:
    __slots__ = ("status", "location", "schemeOnly")

    def __init__(self, config: RedirectConfig) -> None:
        self.status = config.status
        self.schemeOnly = config.scheme
        self.location = Template(config.to if config.to is not None else "{host}{path}", "url")

    def head(self, context: RequestContext) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        values = requestValues(context)
        if self.schemeOnly is not None:
            query = values["query"]
            location = f"{self.schemeOnly}://{self.location.render(values)}"
            location += "?" + self.location.escape("query", query) if context.query is not None else ""
        else:
            location = self.location.render(values)
            if location.startswith(("//", "/\\")):  # a template starting with a variable must stay local
                location = "/" + location.lstrip("/\\")
        return self.status, [(b"Location", location.encode("ascii")), (b"Content-Length", b"0")], b""


class _Respond:
    __slots__ = ("status", "headers", "body")

    def __init__(self, config: RespondConfig) -> None:
        self.status = config.status
        ct = next((v for k, v in config.headers if k.lower() == "content-type"), None)
        self.headers = tuple((k.encode(), Template(v, "header")) for k, v in config.headers)
        if ct is None:
            self.headers += ((b"Content-Type", Template("text/plain; charset=utf-8")),)
        self.body = Template(config.body, escaperFor(ct))

    def head(self, context: RequestContext) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        values = requestValues(context)
        body = self.body.render(values).encode("utf-8")
        headers = [(k, t.render(values).encode("utf-8")) for k, t in self.headers]
        headers.append((b"Content-Length", b"%d" % len(body)))
        return self.status, headers, body


@implementer(IResponse)
class _Answer:
    """A made-up C{IResponse} holding one whole body."""

    version = (b"HTTP", 1, 1)
    request = None
    previousResponse = None

    def __init__(self, code: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.code = code
        self.phrase = RESPONSES.get(code, b"")
        self.headers = Headers()
        for k, v in headers:
            self.headers.addRawHeader(k, v)
        self.length = len(body)
        self._body = body

    def deliverBody(self, protocol: Any) -> None:
        protocol.makeConnection(StillTransport())
        if self._body:
            protocol.dataReceived(self._body)
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


class _Done:
    __slots__ = ("response",)

    def __init__(self, response: IResponse) -> None:
        self.response = response

    def finish(self, complete: bool, clientGone: bool) -> None:
        pass


@implementer(IForwarder)
class AnswerForwarder:
    """A route's answer written in its config, in place of an upstream."""

    __slots__ = ("answer",)

    def __init__(self, answer: _Redirect | _Respond) -> None:
        self.answer = answer

    def fetch(self, context: RequestContext, method: bytes | None = None,
              extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Deferred[Any]:
        try:
            code, headers, body = self.answer.head(context)
        except BadValue as e:
            context.outcome = "bad_host"
            msg = f"bad request: {e}\n".encode("ascii", "backslashreplace")
            code, headers, body = 400, [(b"Content-Type", b"text/plain"), (b"Content-Length", b"%d" % len(msg))], msg
        context.upstream = None
        return succeed(_Done(_Answer(code, headers, body)))


def answerFor(route: Any) -> AnswerForwarder | None:
    """The route's own answer (a redirect or a C{respond}), or None when it forwards upstream."""
    config = route.config
    if config.redirect is not None:
        return AnswerForwarder(_Redirect(config.redirect))
    if config.respond is not None:
        return AnswerForwarder(_Respond(config.respond))
    return None
