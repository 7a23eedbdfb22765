"""
A scriptable origin server for end-to-end tests, run as its own process.

C{python tests/e2e/backend.py PORT NAME} serves on 127.0.0.1:PORT (0: a port the OS
picks) and prints C{ready PORT} once it listens.  Every
response carries C{X-Backend: NAME}.  Behaviour is chosen by path:

  /echo...                JSON of method, path, query, headers (in order, repeated kept), body
  /status/CODE            that status, with a small body
  /slow?ms=N              answers after N ms (real time: this is the origin, not the unit under test)
  /hang                   never answers
  /stream?chunks=N&ms=M   N chunks (SSE events), one every M ms
  /sse-hold               one event, then the stream stays open
  /big?bytes=N            N bytes of body, produced as the client reads
  /split?bytes=N&ms=M     N bytes with a Content-Length: the head and half the body, the rest M ms later
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
  ?acao=ORIGIN            (on any path) the answer carries Access-Control-Allow-Origin: ORIGIN
  /raw/KIND               these exact bytes, then close (see RAW below): broken framing, bad fields, a bare response
  /cacheable?...          a cacheable-looking JSON answer shaped by parameters (all optional):
                          cc (Cache-Control), etag (304 on a matching If-None-Match), lm=N (Last-Modified
                          N s ago; 304 on If-Modified-Since when no etag), expires=N (Expires N s from now,
                          may be negative), date=N (Date shifted N s), age=N (Age), vary (Vary, and the body
                          echoes those request fields), cookie=1 (Set-Cookie), auth=1 (body says whether
                          Authorization came), status, ms (delay), bytes=N (body padded to N bytes),
                          key (counter name; default the path+query), hdr=NAME:VALUE (repeatable: exact
                          field lines, e.g. a malformed Expires), etag304=TAG (the 304 carries this ETag
                          instead).  The body is JSON with "n", the
                          number of requests this key has seen, so a test can tell a cached answer.
                          POST/PUT/DELETE answer 201/200/204 (Location from loc=).
  /cacheable-count?key=K  how many requests /cacheable saw for key K
  /control/cacheable?key=K&status=S   from now on answer S for key K (status=0 restores)
  /model                  an inference answer: JSON {"version": NAME, "score": S, "meta": {"n": N}}, after M ms
  /control/model?score=S&ms=M   set /model's score (default 0.5) and delay (default 0)
  /model-seen             JSON {"total", "mirrored"}: /model requests, and those marked X-Txgateway-Mirror
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web import resource, server

STATE: dict[str, Any] = {"score": 0.5, "modelMs": 0, "modelSeen": 0, "modelMirrored": 0, "healthy": True, "count": 0, "jwks": None, "mode": None, "hangOpen": 0,
                         "hangCancelled": 0, "hangTotal": 0, "keys": {}, "fail": {}}
_EXEMPT = ("/count", "/hangs", "/cacheable-count", "/model-seen")


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
        if "acao" in args:  # a backend with CORS headers of its own
            request.setHeader(b"Access-Control-Allow-Origin", args["acao"].encode())
        mode = STATE["mode"]
        if mode is not None and path not in _EXEMPT and not path.startswith("/control/"):
            if mode == "hang":
                return _hang(request)
            request.setResponseCode(mode)
            return f"status {mode} from {self.name} (mode)\n".encode()
        if path == "/model":
            return _model(request, self.name)
        if path == "/control/model":
            STATE["score"] = float(args.get("score", "0.5"))
            STATE["modelMs"] = int(args.get("ms", "0"))
            return b"ok\n"
        if path == "/model-seen":
            return json.dumps({"total": STATE["modelSeen"], "mirrored": STATE["modelMirrored"]}).encode()
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
        if path == "/split":
            n = int(args.get("bytes", "1000"))
            request.setHeader(b"Content-Length", b"%d" % n)
            request.write(b"a" * (n // 2))
            reactor.callLater(int(args.get("ms", "50")) / 1000, _finish, request, b"b" * (n - n // 2))
            return server.NOT_DONE_YET
        if path == "/big":
            n = int(args.get("bytes", "1048576"))
            request.setHeader(b"Content-Length", str(n).encode())
            request.registerProducer(_BigProducer(request, n), True)
            return server.NOT_DONE_YET
        if path == "/doc":
            return _doc(request, args)
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
        if path.startswith("/raw/") and path[5:] in RAW:
            transport = request.channel.transport  # type: ignore[union-attr]
            transport.write(RAW[path[5:]])
            transport.loseConnection()
            return server.NOT_DONE_YET
        if path == "/cacheable":
            return _cacheable(request, self.name, args)
        if path == "/cacheable-count":
            return str(STATE["keys"].get(args.get("key", ""), 0)).encode()
        if path == "/control/cacheable":
            STATE["fail"][args.get("key", "")] = int(args.get("status", "0"))
            return b"ok\n"
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


def _model(request: server.Request, name: str) -> Any:
    """An inference service's answer (canary tests): a version, a score, and metadata that always differs."""
    STATE["modelSeen"] += 1
    if request.getHeader(b"x-txgateway-mirror"):
        STATE["modelMirrored"] += 1
    request.setHeader(b"Content-Type", b"application/json")
    body = json.dumps({"version": name, "score": STATE["score"], "meta": {"n": STATE["modelSeen"]}}).encode()
    if not STATE["modelMs"]:
        return body
    reactor.callLater(STATE["modelMs"] / 1000, _finish, request, body)
    return server.NOT_DONE_YET


def _hang(request: server.Request) -> Any:
    """Never answer; count the request, and count it again when its client gives up on it."""
    STATE["hangOpen"] += 1
    STATE["hangTotal"] += 1

    def gone(_: Any) -> None:
        STATE["hangOpen"] -= 1
        STATE["hangCancelled"] += 1

    request.notifyFinish().addErrback(gone)
    return server.NOT_DONE_YET


# Responses no well-behaved server sends, written byte for byte by /raw/KIND.
RAW = {
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
    "two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "te-identity": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\nhello",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    "nul-header": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "cr-header": b"HTTP/1.1 200 OK\r\nX-Bad: a\rSet-Cookie: injected=1\r\nContent-Length: 2\r\n\r\nok",
    "bare": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbare",
    "conn-named": b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: secret\r\nX-Public: p\r\n"
                  b"Content-Length: 2\r\n\r\nok",
    "truncated": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf",
    "chunked-cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    # Interim responses before the final one (RFC 9110 §15.2, RFC 8297).
    "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
                   b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nok",
    "processing": b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.js>; rel=preload\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
}


def _cacheable(request: server.Request, name: str, args: dict[str, str]) -> Any:
    from email.utils import formatdate

    key = args.get("key") or request.uri.decode("latin-1")
    n = STATE["keys"][key] = STATE["keys"].get(key, 0) + 1
    now = time.time()
    method = request.method
    if method in (b"POST", b"PUT", b"DELETE", b"PATCH"):
        request.setResponseCode({b"POST": 201, b"DELETE": 204}.get(method, 200))
        if "loc" in args:
            request.setHeader(b"Location", args["loc"].encode())
        return b"" if method == b"DELETE" else json.dumps({"n": n, "method": method.decode()}).encode()
    failing = STATE["fail"].get(key, 0)
    if failing:
        request.setResponseCode(failing)
        return f"failing with {failing}\n".encode()
    if "date" in args:
        request.setHeader(b"Date", formatdate(now + float(args["date"]), usegmt=True).encode())
    if "age" in args:
        request.setHeader(b"Age", args["age"].encode())
    if "cc" in args:
        request.setHeader(b"Cache-Control", args["cc"].encode())
    for line in request.args.get(b"hdr", []):
        name, _, value = line.partition(b":")
        request.responseHeaders.addRawHeader(name.strip(), value.strip())
    if "expires" in args:
        request.setHeader(b"Expires", formatdate(now + float(args["expires"]), usegmt=True).encode())
    if "cookie" in args:
        request.setHeader(b"Set-Cookie", b"session=" + str(n).encode() + b"; Path=/")
    etag = args.get("etag")
    lm = formatdate(now - float(args["lm"]), usegmt=True).encode() if "lm" in args else None
    if lm is not None:
        request.setHeader(b"Last-Modified", lm)
    if etag:
        request.setHeader(b"ETag", etag.encode())
        inm = request.getHeader(b"if-none-match")
        if inm is not None and etag.encode() in [t.strip() for t in inm.split(b",")]:
            request.setResponseCode(304)
            if "etag304" in args:
                request.setHeader(b"ETag", args["etag304"].encode())
            return b""
    elif lm is not None and request.getHeader(b"if-modified-since") == lm:
        request.setResponseCode(304)
        return b""
    body: dict[str, Any] = {"n": n, "backend": name, "key": key}
    if "vary" in args:
        request.setHeader(b"Vary", args["vary"].encode())
        body["varied"] = {f.strip(): (request.getHeader(f.strip().encode()) or b"").decode("latin-1")
                          for f in args["vary"].split(",") if f.strip() != "*"}
    if "auth" in args:
        body["authorized"] = request.getHeader(b"authorization") is not None
    if "status" in args:
        request.setResponseCode(int(args["status"]))
    request.setHeader(b"Content-Type", b"application/json")
    data = json.dumps(body).encode()
    if "bytes" in args:
        data = data + b" " * max(0, int(args["bytes"]) - len(data))
    if "ms" in args:
        reactor.callLater(int(args["ms"]) / 1000, _finish, request, data)
        return server.NOT_DONE_YET
    return data


def docBody(n: int) -> bytes:
    """The deterministic JSON-ish body of C{/doc?bytes=n} (the compression tests rebuild it)."""
    out = b"[" + b",".join(b'{"id":%d,"name":"item-%d","tags":["a","b"],"ok":true}' % (i, i) for i in range(n // 40 + 2))
    return out[:n]


def _doc(request: server.Request, args: dict[str, str]) -> Any:
    """C{/doc}: C{bytes} of JSON in C{chunks} writes C{ms} apart (chunked when more than one), with C{etag}, C{cc}, C{type}."""
    body = docBody(int(args.get("bytes", "65536")))
    request.setHeader(b"Content-Type", args.get("type", "application/json").encode())
    if "etag" in args:
        request.setHeader(b"ETag", args["etag"].encode())
    if "cc" in args:
        request.setHeader(b"Cache-Control", args["cc"].encode())
    chunks = int(args.get("chunks", "1"))
    if chunks <= 1:
        return body
    size = len(body) // chunks + 1
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    _parts(request, parts, int(args.get("ms", "20")) / 1000)
    return server.NOT_DONE_YET


def _parts(request: server.Request, parts: list[bytes], interval: float) -> None:
    if getattr(request, "_disconnected", False):
        return
    if not parts:
        request.finish()
        return
    request.write(parts[0])
    reactor.callLater(interval, _parts, request, parts[1:], interval)


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
    interface = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"  # another loopback address: DNS discovery tests
    site = server.Site(Origin(name))
    site.log = lambda request: None  # type: ignore[method-assign]
    # PORT 0: the OS picks; the harness reads the port from the first line.
    d = TCP4ServerEndpoint(reactor, port, interface=interface).listen(site)
    d.addCallback(lambda listening: print("ready", listening.getHost().port, flush=True))
    d.addErrback(lambda f: (print(f.getErrorMessage(), flush=True), reactor.stop()))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
