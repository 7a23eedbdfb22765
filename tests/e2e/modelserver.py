"""
A simulated model server for the issue 24 end-to-end tests, run as its own process.

C{python tests/e2e/modelserver.py PORT WORKERS SERVICE_MS} serves on
127.0.0.1:PORT (0: the OS picks) and prints C{ready PORT} once it listens.
It behaves as an inference server with a fixed number of workers does: at
most WORKERS requests are computed at once, each for SERVICE_MS of real time,
and the rest wait in its own unbounded first-in-first-out queue, so its
latency grows with its concurrency (past WORKERS, every extra request in
flight adds SERVICE_MS / WORKERS to everyone's wait).  A batch costs one
worker for SERVICE_MS whatever its size, as on a GPU.

  POST|GET /predict       one item: {"echo": <the JSON body or null>, "tag": X-Tag}
  POST /batch_predict     a JSON array, or {"instances": [...]}: the same shape back, one
                          {"echo": item} per item (under "predictions" for instances)
  POST /batch_short       a broken batch server: one result fewer than items
  POST /batch_fail        a failing batch server: 500
  GET  /stats             {"calls", "batches" (the size of each batch call), "order" (X-Tag of
                          each request as its computing began), "max_concurrency", "queued"}
  POST /reset             forget the stats
"""

from __future__ import annotations

import json
import sys
from collections import deque
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class Model(Resource):
    isLeaf = True

    def __init__(self, workers: int, serviceMs: float) -> None:
        super().__init__()
        self.workers = workers
        self.service = serviceMs / 1000.0
        self.busy = 0
        self.queue: deque[tuple[Request, Any]] = deque()
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.batches: list[int] = []
        self.order: list[str] = []
        self.maxConcurrency = 0
        self.inside = 0

    def render(self, request: Request) -> Any:
        path = request.path
        if path == b"/stats":
            return self.json(request, {"calls": self.calls, "batches": self.batches, "order": self.order,
                                       "max_concurrency": self.maxConcurrency, "queued": len(self.queue)})
        if path == b"/reset":
            self.reset()
            return self.json(request, {"ok": True})
        if path not in (b"/predict", b"/batch_predict", b"/batch_short", b"/batch_fail"):
            request.setResponseCode(404)
            return b"not found\n"
        assert request.content is not None
        raw = request.content.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            request.setResponseCode(400)
            return b"bad json\n"
        self.inside += 1
        self.maxConcurrency = max(self.maxConcurrency, self.inside)
        request.notifyFinish().addBoth(self._left)
        self.queue.append((request, body))
        self._next()
        return NOT_DONE_YET

    def _left(self, _: Any) -> None:
        self.inside -= 1

    def _next(self) -> None:
        while self.busy < self.workers and self.queue:
            request, body = self.queue.popleft()
            if getattr(request, "_disconnected", False):
                continue
            self.busy += 1
            self.calls += 1
            tag = request.getHeader(b"x-tag")
            self.order.append(tag.decode() if tag else "")
            reactor.callLater(self.service, self._done, request, body)  # type: ignore[attr-defined]

    def _done(self, request: Request, body: Any) -> None:
        self.busy -= 1
        if request.path.startswith(b"/batch_"):
            items = body["instances"] if isinstance(body, dict) else body
            self.batches.append(len(items))
            answers = [{"echo": item} for item in items]
            if request.path == b"/batch_short":
                answers = answers[1:]
            elif request.path == b"/batch_fail":
                request.setResponseCode(500)
            answer: Any = {"predictions": answers} if isinstance(body, dict) else answers
        else:
            tag = request.getHeader(b"x-tag")
            answer = {"echo": body, "tag": tag.decode() if tag else None}
        if not getattr(request, "_disconnected", False):
            request.write(self.json(request, answer))
            request.finish()
        self._next()

    @staticmethod
    def json(request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value).encode()


def main() -> None:
    port, workers, serviceMs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    site = Site(Model(workers, serviceMs))
    site.noisy = False
    listening = reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)  # type: ignore[attr-defined]
    print(f"ready {listening.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
