"""
Helpers shared by the issue 24 in-memory tests (tests/test_protection*.py):
an origin that answers only when told, a request left pending, and a
clean-up that answers what is still held.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from txgateway.testing import GatewayFixture

__all__ = ["Held", "pending", "settle"]


class Held(Resource):
    """An origin that answers only when the test says so (a busy model server)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Request] = []
        self.seen: list[tuple[bytes, bytes, bytes]] = []

    def render(self, request: Request) -> object:
        assert request.content is not None
        body = request.content.read()
        self.seen.append((request.method, request.path, body))
        self.waiting.append(request)
        return NOT_DONE_YET

    def answer(self, body: bytes | None = None, code: int = 200) -> None:
        request = self.waiting.pop(0)
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        if body is None:
            body = json.dumps({"path": request.path.decode()}).encode()
        request.write(body)
        request.finish()


def settle(fixture: GatewayFixture, *origins: Any) -> None:
    """Answer what the origins still hold and let every timer run: no request is left suspended after a test."""
    for origin in origins:
        while getattr(origin, "waiting", None):
            origin.answer()
            fixture.flush()
    fixture.clock.advance(120)
    fixture.flush()


def pending(fixture: GatewayFixture, method: bytes = b"GET", path: bytes = b"/p",
            body: bytes | None = None, headers: dict[bytes, list[bytes]] | None = None) -> list[Any]:
    got: list[Any] = []
    fixture.requestDeferred(method, b"http://gw.example" + path, headers, body).addBoth(got.append)
    return got
