"""
A small demo backend standing in for a Python ML inference service.

Run as C{python examples/demo_backend.py PORT [NAME [INTERFACE]]} (interface 127.0.0.1 by default).  It answers:
  GET  /health            {"status": "ok"}
  POST /predict           a fake prediction for the posted JSON
  POST /batch_predict     fake predictions for a list
  GET  /v1/users          a cacheable user list (Cache-Control: max-age=30)
  anything else           an echo of the request (method, path, headers, body)
Every answer names the backend in X-Backend, so you can watch balancing.
"""

from __future__ import annotations

import json
import sys

from twisted.internet import endpoints, reactor
from twisted.web import resource, server


class Demo(resource.Resource):
    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: server.Request) -> bytes:
        path = request.path.decode("latin-1")
        request.setHeader(b"X-Backend", self.name.encode())
        request.setHeader(b"Content-Type", b"application/json")
        body = request.content.read() if request.content is not None else b""
        if path == "/health":
            out = {"status": "ok", "backend": self.name}
        elif path == "/predict" and request.method == b"POST":
            text = _field(body, "text")
            out = {"backend": self.name, "input": text, "label": "positive" if "fast" in str(text).lower() else "neutral",
                   "score": round(0.5 + (len(str(text)) % 50) / 100, 2)}
        elif path == "/batch_predict" and request.method == b"POST":
            items = _field(body, "texts") or []
            out = {"backend": self.name, "predictions": [{"input": t, "label": "neutral"} for t in items]}
        elif path.startswith("/v1/users"):
            request.setHeader(b"Cache-Control", b"max-age=30")
            out = {"backend": self.name, "users": [{"id": 1, "name": "ada"}, {"id": 2, "name": "grace"}]}
        else:
            out = {
                "backend": self.name, "method": request.method.decode(), "path": path,
                "query": request.uri.partition(b"?")[2].decode("latin-1"),
                "headers": {k.decode(): [v.decode("latin-1") for v in vs] for k, vs in request.requestHeaders.getAllRawHeaders()},
                "body": body.decode("utf-8", "replace"),
            }
        return json.dumps(out).encode() + b"\n"


def _field(body: bytes, name: str) -> object:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    return data.get(name) if isinstance(data, dict) else None


def main() -> None:
    port = int(sys.argv[1])
    name = sys.argv[2] if len(sys.argv) > 2 else f"backend-{port}"
    interface = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    site = server.Site(Demo(name))
    site.log = lambda request: None  # type: ignore[method-assign]
    endpoints.TCP4ServerEndpoint(reactor, port, interface=interface).listen(site)
    print(f"demo backend {name} on http://{interface}:{port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
