"""
gRPC through the gateway, in memory: the gateway's own answers to a gRPC
call are gRPC errors, C{grpc-timeout} is the call's deadline, retries
follow C{retries.on: ["grpc:..."]} only, routing on
C{/package.Service/Method}, and the gRPC status is counted and logged.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from txgateway.http.grpcstatus import CODES, codeFor, grpcAnswer, grpcFailure, grpcTimeout, isGrpc

from .support import FakeResponse, InMemoryGateway

GRPC = {"Content-Type": "application/grpc", "TE": "trailers"}
MESSAGE = b"\x00\x00\x00\x00\x02\x08\x01"


def config(upstreamExtra: str = "", routes: str = "") -> str:
    return f"""\
server:
  listen: "tcp:0:interface=127.0.0.1"
upstreams:
  models:
    protocol: grpc
    targets: [http://127.0.0.1:9101, http://127.0.0.1:9102]
{upstreamExtra}
routes:
{routes or '''  - {name: infer, match: {path_prefix: /inference.GRPCInferenceService/}, upstream: models}'''}
"""


def grpcReply(status: int, body: bytes = b"") -> FakeResponse:
    """A gRPC answer as the HTTP/2 client gives it: trailers-only when there is no message."""
    head = [(b"content-type", b"application/grpc")]
    if not body:
        head.append((b"grpc-status", b"%d" % status))
    response = FakeResponse(200, head, body)
    response.trailers = Headers({b"grpc-status": [b"%d" % status]} if body else {})  # type: ignore[attr-defined]
    return response


class ScriptedClient:
    """An upstream client answering each request with the next scripted result (a response, an error, or nothing)."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.sent: list[tuple[bytes, Headers]] = []

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
                ) -> Deferred[Any]:
        self.sent.append((uri, headers or Headers()))
        result = self.results.pop(0) if self.results else None
        if result is None:
            return Deferred()
        if isinstance(result, Exception):
            return fail(result)
        return succeed(result)

    def close(self) -> Deferred[None]:
        return succeed(None)

    def flush(self) -> None:
        pass


class GatewayAnswerTests(SynchronousTestCase):
    def test_noRouteIsUnimplemented(self) -> None:
        """A gRPC method no route serves: HTTP 200, grpc-status UNIMPLEMENTED with the reason; counted."""
        gw = InMemoryGateway(config(), agent=ScriptedClient())
        reply = gw.request("POST", "/other.Service/Call", GRPC, MESSAGE)
        self.assertEqual(reply.status, 200)
        self.assertEqual(reply.headers["content-type"], "application/grpc")
        self.assertEqual(reply.headers["grpc-status"], "12")
        self.assertEqual(reply.headers["grpc-message"], "no route")
        self.assertEqual(reply.body, b"")
        self.assertEqual(gw.value("txgateway_grpc_requests_total", upstream="", code="UNIMPLEMENTED"), 1)

    def test_plainRequestsKeepHttpErrors(self) -> None:
        """A request that is not gRPC still gets the JSON 404."""
        gw = InMemoryGateway(config(), agent=ScriptedClient())
        reply = gw.request("GET", "/other.Service/Call")
        self.assertEqual(reply.status, 404)
        self.assertNotIn("grpc-status", reply.headers)

    def test_targetDownIsUnavailable(self) -> None:
        """Every target refusing connections: UNAVAILABLE, not an HTTP 502."""
        client = ScriptedClient(ConnectionRefusedError("down"), ConnectionRefusedError("down"))
        gw = InMemoryGateway(config("    retries: {attempts: 1, backoff: 0s}"), agent=client)
        reply = gw.request("POST", "/inference.GRPCInferenceService/ModelInfer", GRPC, MESSAGE)
        self.assertEqual((reply.status, reply.headers["grpc-status"]), (200, str(CODES["UNAVAILABLE"])))

    def test_grpcTimeoutIsTheDeadline(self) -> None:
        """grpc-timeout shortens the upstream deadline; when it passes the caller gets DEADLINE_EXCEEDED."""
        client = ScriptedClient(None)
        gw = InMemoryGateway(config(), agent=client)
        proto, transport = gw.send("POST", "/inference.GRPCInferenceService/ModelInfer",
                                   {**GRPC, "grpc-timeout": "250m"}, MESSAGE)
        self.assertEqual(transport.value(), b"")
        gw.clock.advance(0.25)
        reply = gw.reply(transport)
        assert reply is not None
        self.assertEqual((reply.status, reply.headers["grpc-status"]), (200, str(CODES["DEADLINE_EXCEEDED"])))
        # The header still reaches the target, which may stop at the same time.
        self.assertEqual(client.sent[0][1].getRawHeaders(b"grpc-timeout"), [b"250m"])


class FilterAnswerTests(SynchronousTestCase):
    def test_rateLimitIsResourceExhausted(self) -> None:
        """A rate-limited call gets RESOURCE_EXHAUSTED, keeping Retry-After."""
        routes = """\
  - name: infer
    match: {path_prefix: /inference.GRPCInferenceService/}
    upstream: models
    rate_limit: {algorithm: token_bucket, rate: 1/m, burst: 1, key: client_ip}
"""
        gw = InMemoryGateway(config(routes=routes), agent=ScriptedClient(grpcReply(0, MESSAGE)))
        self.assertEqual(gw.request("POST", "/inference.GRPCInferenceService/ModelInfer", GRPC, MESSAGE).status, 200)
        reply = gw.request("POST", "/inference.GRPCInferenceService/ModelInfer", GRPC, MESSAGE)
        self.assertEqual((reply.status, reply.headers["grpc-status"]), (200, str(CODES["RESOURCE_EXHAUSTED"])))
        self.assertIn("retry-after", reply.headers)

    def test_missingCredentialIsUnauthenticated(self) -> None:
        """A call without the route's API key gets UNAUTHENTICATED, with the challenge header."""
        routes = """\
  - name: infer
    match: {path_prefix: /inference.GRPCInferenceService/}
    upstream: models
    auth: {api_key: {keys: {alice: "sha256:3be5405d802a35a0dd6950442e8da53f4b14a37d90982fcabcda39244fbcc455"}}}
"""
        gw = InMemoryGateway(config(routes=routes), agent=ScriptedClient())
        reply = gw.request("POST", "/inference.GRPCInferenceService/ModelInfer", GRPC, MESSAGE)
        self.assertEqual((reply.status, reply.headers["grpc-status"]), (200, str(CODES["UNAUTHENTICATED"])))
        self.assertIn("www-authenticate", reply.headers)


class RetryTests(SynchronousTestCase):
    def test_retriesOnANamedCode(self) -> None:
        """retries.on grpc:UNAVAILABLE: a trailers-only UNAVAILABLE goes to the other target (POST or not)."""
        client = ScriptedClient(grpcReply(CODES["UNAVAILABLE"]), grpcReply(0, MESSAGE))
        gw = InMemoryGateway(config('    retries: {attempts: 1, on: ["grpc:UNAVAILABLE"], backoff: 0s}'),
                             agent=client)
        reply = gw.request("POST", "/inference.GRPCInferenceService/ModelInfer", GRPC, MESSAGE)
        self.assertEqual(len(client.sent), 2)
        self.assertEqual(reply.body, MESSAGE)
        self.assertEqual(gw.value("txgateway_grpc_requests_total", upstream="models", code="OK"), 1)
        # The retried attempt counts against its target, as a retried 5xx does.
        self.assertEqual(gw.value("txgateway_upstream_requests_total", upstream="models",
                                  target="http://127.0.0.1:9101", status="grpc:UNAVAILABLE"), 1)

    def test_noRetryForCodesNotNamed(self) -> None:
        """Without grpc: conditions the target's error goes back as it came, once."""
        client = ScriptedClient(grpcReply(CODES["UNAVAILABLE"]), grpcReply(0, MESSAGE))
        gw = InMemoryGateway(config("    retries: {attempts: 1, backoff: 0s}"), agent=client)
        reply = gw.request("POST", "/inference.GRPCInferenceService/ModelInfer", GRPC, MESSAGE)
        self.assertEqual(len(client.sent), 1)
        self.assertEqual(reply.headers["grpc-status"], "14")
        self.assertEqual(gw.value("txgateway_grpc_requests_total", upstream="models", code="UNAVAILABLE"), 1)

    def test_noRetryAfterAMessage(self) -> None:
        """A status that arrives in the trailers after a message is never retried: the message is on its way."""
        failing = grpcReply(CODES["UNAVAILABLE"], MESSAGE)
        client = ScriptedClient(failing, grpcReply(0, MESSAGE))
        gw = InMemoryGateway(config('    retries: {attempts: 1, on: ["grpc:UNAVAILABLE"], backoff: 0s}'),
                             agent=client)
        gw.request("POST", "/inference.GRPCInferenceService/ModelInfer", GRPC, MESSAGE)
        self.assertEqual(len(client.sent), 1)


class RoutingTests(SynchronousTestCase):
    def test_routesByServiceAndMethod(self) -> None:
        """/package.Service/Method paths route like any path: by service prefix, or one exact method."""
        routes = """\
  - {name: infer, match: {path: /inference.GRPCInferenceService/ModelInfer}, upstream: models}
  - {name: meta, match: {path_prefix: /inference.GRPCInferenceService/}, upstream: other}
"""
        text = config(routes=routes).replace("routes:", "  other:\n    protocol: grpc\n"
                                                        "    targets: [http://127.0.0.1:9201]\nroutes:")
        client = ScriptedClient(grpcReply(0, MESSAGE), grpcReply(0, MESSAGE))
        gw = InMemoryGateway(text, agent=client)
        gw.request("POST", "/inference.GRPCInferenceService/ModelInfer", GRPC, MESSAGE)
        gw.request("POST", "/inference.GRPCInferenceService/ModelReady", GRPC, MESSAGE)
        self.assertEqual([uri for uri, _ in client.sent],
                         [b"http://127.0.0.1:9101/inference.GRPCInferenceService/ModelInfer",
                          b"http://127.0.0.1:9201/inference.GRPCInferenceService/ModelReady"])


class StatusTableTests(SynchronousTestCase):
    def test_grpcTimeoutUnits(self) -> None:
        """grpc-timeout's units (hours to nanoseconds); a malformed one is ignored."""
        self.assertEqual(grpcTimeout(b"2S"), 2.0)
        self.assertAlmostEqual(grpcTimeout(b"100m") or 0, 0.1)
        self.assertEqual(grpcTimeout(b"1H"), 3600.0)
        self.assertIsNone(grpcTimeout(b"1x"))
        self.assertIsNone(grpcTimeout(b"123456789S"))  # more than 8 digits

    def test_gatewayStatusesAsGrpcCodes(self) -> None:
        """401, 403, 404, 429, 502, 503, 504 map to the gRPC codes a client acts on."""
        self.assertEqual([codeFor(s) for s in (401, 403, 404, 429, 502, 503, 504)],
                         [CODES[n] for n in ("UNAUTHENTICATED", "PERMISSION_DENIED", "UNIMPLEMENTED",
                                             "RESOURCE_EXHAUSTED", "UNAVAILABLE", "UNAVAILABLE",
                                             "DEADLINE_EXCEEDED")])
        self.assertEqual(grpcAnswer(503, "100% busy\n"), [(b"grpc-status", b"14"), (b"grpc-message", b"100%25 busy%0A")])

    def test_contentTypes(self) -> None:
        """application/grpc and its +proto / +json forms are gRPC; grpc-web and others are not."""
        self.assertTrue(isGrpc(b"application/grpc"))
        self.assertTrue(isGrpc(b"application/grpc+proto"))
        self.assertFalse(isGrpc(b"application/grpc-web"))
        self.assertFalse(isGrpc(b"application/json"))

    def test_trailersOnlyFailure(self) -> None:
        """Only a non-OK status in the response head is a retry condition."""
        self.assertEqual(grpcFailure(Headers({b"grpc-status": [b"14"]})), "grpc:UNAVAILABLE")
        self.assertIsNone(grpcFailure(Headers({b"grpc-status": [b"0"]})))
        self.assertIsNone(grpcFailure(Headers()))


class TrailersOnlyRelayTests(SynchronousTestCase):
    def test_statusInTheHeadMovesToTheTrailers(self) -> None:
        """A trailers-only gRPC answer reaches an HTTP/2 client with its status in trailers, which gRPC clients read."""
        from twisted.web.test.requesthelper import DummyRequest

        from txgateway.http.trailers import relayTrailers

        sent: list[Any] = []

        class Stream:
            def writeTrailers(self, fields: list[tuple[bytes, bytes]]) -> None:
                sent.extend(fields)

        request = DummyRequest([b""])
        request.channel = Stream()
        request.startedWriting = 0  # as twisted.web.http.Request before the head goes out
        request.responseHeaders.setRawHeaders(b"grpc-status", [b"5"])
        request.responseHeaders.setRawHeaders(b"grpc-message", [b"no such model"])
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/grpc"])
        self.assertTrue(relayTrailers(request, grpcReply(5)))
        self.assertEqual(sent, [(b"grpc-status", b"5"), (b"grpc-message", b"no such model")])
        self.assertIsNone(request.responseHeaders.getRawHeaders(b"grpc-status"))
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-type"), [b"application/grpc"])
