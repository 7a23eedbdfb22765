"""
A tiny OTLP/HTTP trace receiver for the end-to-end tests: C{python otlpreceiver.py PORT}.

POST /v1/traces (OTLP JSON) keeps the spans; GET /spans answers every span
received so far as a JSON list, each with its resource's attributes under
C{"resource"}; GET /posts the number of POSTs.  Prints "ready PORT" once it
listens.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class Receiver(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, Any]] = []
        self.posts: list[dict[str, str]] = []

    def render_POST(self, request: Any) -> bytes:
        if request.path != b"/v1/traces":
            request.setResponseCode(404)
            return b""
        self.posts.append({k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()})
        doc = json.loads(request.content.read())
        for rs in doc["resourceSpans"]:
            resource = {a["key"]: a["value"] for a in rs.get("resource", {}).get("attributes", [])}
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    span["resource"] = resource
                    self.spans.append(span)
        request.setHeader(b"content-type", b"application/json")
        return b"{}"

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/posts":
            return json.dumps(self.posts).encode()
        return json.dumps(self.spans).encode()


def main() -> None:
    port = reactor.listenTCP(int(sys.argv[1]), Site(Receiver()), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"ready {port.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
