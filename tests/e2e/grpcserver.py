"""
A grpcio test service for the end-to-end tests (run as a process):
C{python grpcserver.py PORT NAME}, printing C{ready PORT} once it serves.

Service C{test.Echo}, built without protoc (generic handlers, messages as
raw bytes):

  - C{Unary}: answers the request message prefixed with the server's name
    (C{NAME:}), with a C{x-served-by} trailer; a request C{fail:CODE:text}
    aborts with that status, C{failon:NAME:CODE:text} only on the server
    called NAME, C{sleep:SECONDS} answers after a pause (for deadlines),
    C{wait:SECONDS} too but stops early, counting it, when the call is
    cancelled (RST_STREAM);
  - C{Cancelled}: how many C{wait:} calls were cancelled; C{Waiting}: how many are in progress;
  - C{ServerStream}: the request C{N} is answered with N messages C{NAME:i};
  - C{ClientStream}: the request messages joined with C{+};
  - C{Bidi}: each request message echoed as it comes;
  - C{SetHealth}: the request C{SERVICE=STATUS} sets the health service's
    answer (C{SERVING} / C{NOT_SERVING}) for SERVICE (empty: the server).

Plus the standard C{grpc.health.v1.Health} service.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def _raw(data: bytes) -> bytes:
    return data


def serve(port: int, name: str) -> None:
    prefix = name.encode() + b":"
    cancelled = [0]
    waiting = [0]  # wait: calls in progress now
    healthService = health.HealthServicer()
    healthService.set("", health_pb2.HealthCheckResponse.SERVING)
    healthService.set("test.Echo", health_pb2.HealthCheckResponse.SERVING)

    def unary(request: bytes, context: Any) -> bytes:
        if request.startswith(b"fail:"):
            _, code, text = request.decode().split(":", 2)
            context.abort(getattr(grpc.StatusCode, code), text)
        if request.startswith(b"failon:"):
            _, who, code, text = request.decode().split(":", 3)
            if who == name:
                context.abort(getattr(grpc.StatusCode, code), text)
        if request.startswith(b"sleep:"):
            time.sleep(float(request[6:]))
        if request.startswith(b"wait:"):
            end = time.monotonic() + float(request[5:])
            waiting[0] += 1
            try:
                while time.monotonic() < end:
                    if not context.is_active():
                        cancelled[0] += 1
                        return b""
                    time.sleep(0.01)
            finally:
                waiting[0] -= 1
        context.set_trailing_metadata((("x-served-by", name),))
        return prefix + request

    def serverStream(request: bytes, context: Any) -> Iterator[bytes]:
        for i in range(int(request)):
            yield prefix + b"%d" % i

    def clientStream(requests: Iterator[bytes], context: Any) -> bytes:
        return prefix + b"+".join(requests)

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for message in requests:
            yield prefix + message

    def setHealth(request: bytes, context: Any) -> bytes:
        service, _, status = request.decode().partition("=")
        healthService.set(service, getattr(health_pb2.HealthCheckResponse, status))
        return b"ok"

    handlers = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, _raw, _raw),
        "ServerStream": grpc.unary_stream_rpc_method_handler(serverStream, _raw, _raw),
        "ClientStream": grpc.stream_unary_rpc_method_handler(clientStream, _raw, _raw),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, _raw, _raw),
        "SetHealth": grpc.unary_unary_rpc_method_handler(setHealth, _raw, _raw),
        "Cancelled": grpc.unary_unary_rpc_method_handler(lambda r, c: b"%d" % cancelled[0], _raw, _raw),
        "Waiting": grpc.unary_unary_rpc_method_handler(lambda r, c: b"%d" % waiting[0], _raw, _raw),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handlers,))
    health_pb2_grpc.add_HealthServicer_to_server(healthService, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if not bound:
        print(f"cannot listen on port {port}", flush=True)
        sys.exit(1)
    server.start()
    print(f"ready {bound}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "g1")
