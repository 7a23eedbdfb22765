"""
A scriptable origin server for end-to-end tests, run as its own process.

C{python tests/e2e/backend.py PORT NAME} serves on 127.0.0.1:PORT.  Every
response carries C{X-Backend: NAME}.  Behaviour is chosen by path:

  /echo...                JSON of method, path, query, headers (in order, repeated kept), body
  /status/CODE            that status, with a small body
  /slow?ms=N              answers after N ms (real time: this is the origin, not the unit under test)
  /hang                   never answers
  /stream?chunks=N&ms=M   N chunks (SSE events), one every M ms
  /sse-hold               one event, then the stream stays open
  /big?bytes=N            N bytes of body, produced as the client reads
  /gzip                   a gzip-encoded body with Content-Encoding: gzip
  /redirect               302 to /echo
  /cookie                 Set-Cookie twice; echoes the Cookie it got
  /health                 200, or 503 after POST /control/health?ok=0
  /control/health?ok=0|1  toggles /health
  /count                  how many requests this process has seen
  /cache?cc=...&etag=...  a response with the given Cache-Control and ETag (304 on If-None-Match)
  /jwks                   the JSON document last POSTed to /control/jwks (404 until then): a JWKS endpoint
  /control/jwks           POST a JWKS document for /jwks to serve
  /hangs                  JSON {"open", "cancelled", "total"}: hanging requests (/hang and hang mode)
                          still open, those whose client closed the connection, and all of them
  /control/mode?status=CODE   from now on every request except /control/*, /count and /hangs gets CODE
  /control/mode?hang=1        ... or never answers (counted in /hangs)
  /control/mode               back to normal behaviour
"""

from __future__ import annotations

import gzip
import json
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web import resource, server

STATE: dict[str, Any] = {"healthy": True, "count": 0, "jwks": None, "mode": None, "hangOpen": 0,
                         "hangCancelled": 0, "hangTotal": 0}
_EXEMPT = ("/count", "/hangs")


class Origin(resource.Resource):
    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: server.Request) -> Any:
        STATE["count"] += 1
        request.setHeader(b"X-Backend", self.name.encode())
        path = request.path.decode("latin-1")
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        body = request.content.read() if request.content is not None else b""
        mode = STATE["mode"]
        if mode is not None and path not in _EXEMPT and not path.startswith("/control/"):
            if mode == "hang":
                return _hang(request)
            request.setResponseCode(mode)
            return f"status {mode} from {self.name} (mode)\n".encode()
        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            request.setResponseCode(code)
            return f"status {code} from {self.name}\n".encode()
        if path == "/slow":
            reactor.callLater(int(args.get("ms", "100")) / 1000, _finish, request, b"slow " + self.name.encode() + b"\n")
            return server.NOT_DONE_YET
        if path == "/hang":
            return _hang(request)
        if path == "/hangs":
            return json.dumps({"open": STATE["hangOpen"], "cancelled": STATE["hangCancelled"],
                               "total": STATE["hangTotal"]}).encode()
        if path == "/control/mode":
            STATE["mode"] = "hang" if args.get("hang") == "1" else (int(args["status"]) if "status" in args else None)
            return b"ok\n"
        if path == "/stream":
            request.setHeader(b"Content-Type", b"text/event-stream")
            _stream(request, int(args.get("chunks", "3")), int(args.get("ms", "100")) / 1000, 0)
            return server.NOT_DONE_YET
        if path == "/sse-hold":
            request.setHeader(b"Content-Type", b"text/event-stream")
            request.write(b"data: first\n\n")
            return server.NOT_DONE_YET
        if path == "/big":
            n = int(args.get("bytes", "1048576"))
            request.setHeader(b"Content-Length", str(n).encode())
            request.registerProducer(_BigProducer(request, n), True)
            return server.NOT_DONE_YET
        if path == "/gzip":
            request.setHeader(b"Content-Encoding", b"gzip")
            return gzip.compress(b"compressed hello\n")
        if path == "/redirect":
            request.setResponseCode(302)
            request.setHeader(b"Location", b"/echo")
            return b""
        if path == "/cookie":
            request.responseHeaders.addRawHeader(b"Set-Cookie", b"a=1; Path=/")
            request.responseHeaders.addRawHeader(b"Set-Cookie", b"b=2; Path=/")
            return json.dumps({"cookie": request.getHeader(b"cookie")}).encode()
        if path == "/health":
            if not STATE["healthy"]:
                request.setResponseCode(503)
                return b"unhealthy\n"
            return b"ok\n"
        if path == "/control/health":
            STATE["healthy"] = args.get("ok", "1") == "1"
            return b"ok\n"
        if path == "/control/jwks":
            STATE["jwks"] = body
            return b"ok\n"
        if path == "/jwks":
            if STATE["jwks"] is None:
                request.setResponseCode(404)
                return b"no keys yet\n"
            request.setHeader(b"Content-Type", b"application/json")
            return bytes(STATE["jwks"])
        if path == "/count":
            return str(STATE["count"]).encode()
        if path == "/cache":
            etag = args.get("etag")
            if etag:
                request.setHeader(b"ETag", etag.encode())
                if request.getHeader(b"if-none-match") == etag.encode():
                    request.setResponseCode(304)
                    return b""
            if "cc" in args:
                request.setHeader(b"Cache-Control", args["cc"].encode())
            return json.dumps({"n": STATE["count"], "backend": self.name}).encode()
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({
            "backend": self.name,
            "method": request.method.decode(),
            "path": path,
            "uri": request.uri.decode("latin-1"),
            "headers": [[k.decode(), v.decode("latin-1")] for k, vs in request.requestHeaders.getAllRawHeaders() for v in vs],
            "body": body.decode("latin-1"),
        }).encode()


def _hang(request: server.Request) -> Any:
    """Never answer; count the request, and count it again when its client gives up on it."""
    STATE["hangOpen"] += 1
    STATE["hangTotal"] += 1

    def gone(_: Any) -> None:
        STATE["hangOpen"] -= 1
        STATE["hangCancelled"] += 1

    request.notifyFinish().addErrback(gone)
    return server.NOT_DONE_YET


def _finish(request: server.Request, data: bytes) -> None:
    if not request.finished and not getattr(request, "_disconnected", False):
        request.write(data)
        request.finish()


def _stream(request: server.Request, left: int, interval: float, n: int) -> None:
    if getattr(request, "_disconnected", False):
        return
    if left == 0:
        request.finish()
        return
    request.write(f"data: event {n}\n\n".encode())
    reactor.callLater(interval, _stream, request, left - 1, interval, n + 1)


class _BigProducer:
    def __init__(self, request: server.Request, n: int) -> None:
        self.request = request
        self.left = n
        self.paused = False
        reactor.callLater(0, self.resumeProducing)

    def resumeProducing(self) -> None:
        self.paused = False
        chunk = b"x" * 65536
        while not self.paused and self.left > 0:
            piece = chunk[: min(len(chunk), self.left)]
            self.left -= len(piece)
            self.request.write(piece)
        if self.left == 0 and not self.request.finished:
            self.request.unregisterProducer()
            self.request.finish()
            self.left = -1

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.left = -1
        self.paused = True


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2]
    site = server.Site(Origin(name))
    site.log = lambda request: None  # type: ignore[method-assign]
    TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(site)
    print("ready", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
