"""
The gRPC health check's hand-encoded messages, held to grpcio's own
generated protobuf code, and one probe against an in-memory HTTP/2 target.
"""

from __future__ import annotations

import struct

from grpc_health.v1 import health_pb2
from twisted.trial.unittest import SynchronousTestCase

from txgateway.grpchealth import CHECK_PATH, GrpcHealthFailure, GrpcHealthProbe, checkRequest, servingStatus

from .h2target import makeClient


def framed(message: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", len(message)) + message


class MessageTests(SynchronousTestCase):
    def test_requestIsWhatProtobufEncodes(self) -> None:
        """HealthCheckRequest{service} is byte for byte what the generated code writes, empty name included."""
        for service in ("", "inference.GRPCInferenceService", "é" * 100):
            expected = health_pb2.HealthCheckRequest(service=service).SerializeToString()
            self.assertEqual(checkRequest(service), framed(expected))

    def test_statusIsWhatProtobufMeans(self) -> None:
        """Every ServingStatus the generated code writes reads back the same (UNKNOWN when absent)."""
        for status in (0, 1, 2, 3):
            body = framed(health_pb2.HealthCheckResponse(status=status).SerializeToString())  # type: ignore[arg-type]
            self.assertEqual(servingStatus(body), status)

    def test_unknownFieldsSkipped(self) -> None:
        """Fields a newer server adds are skipped, not misread."""
        message = b"\x12\x03abc" + b"\x08\x01" + b"\x1d\x00\x00\x00\x00"
        self.assertEqual(servingStatus(framed(message)), 1)


class ProbeTests(SynchronousTestCase):
    def probe(self, status: int = 0, serving: int = 1, message: bytes = b"") -> object:
        client, wire, _ = makeClient()
        probe = GrpcHealthProbe(client, "my.Model")
        d = probe.request("GET", b"http://app:8000" + CHECK_PATH, headers={}, allow_redirects=False)
        wire.pump()
        target = wire.targets[0]
        sent = target.requests[1]
        self.assertEqual(sent["headers"][b":path"], CHECK_PATH)
        self.assertEqual(sent["headers"][b"content-type"], b"application/grpc")
        self.assertEqual(sent["body"], checkRequest("my.Model"))
        if status:
            target.respond(1, 200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"%d" % status),
                                    (b"grpc-message", message)])
        else:
            body = framed(health_pb2.HealthCheckResponse(status=serving).SerializeToString())  # type: ignore[arg-type]
            target.respond(1, 200, [(b"content-type", b"application/grpc")], body,
                           trailers=[(b"grpc-status", b"0")])
        wire.pump()
        return d

    def test_servingIsA200(self) -> None:
        """A SERVING answer reads as a successful probe, whose body the checker reads (with treq) as empty."""
        import treq

        answer = self.successResultOf(self.probe())  # type: ignore[arg-type]
        self.assertEqual(answer.code, 200)
        read: list[bytes] = []
        self.successResultOf(treq.collect(answer, read.append))
        self.assertEqual(read, [])

    def test_notServingFailsTheProbe(self) -> None:
        """NOT_SERVING fails the probe, saying so."""
        f = self.failureResultOf(self.probe(serving=2), GrpcHealthFailure)  # type: ignore[arg-type]
        self.assertIn("NOT_SERVING", str(f.value))

    def test_noHealthServiceFailsTheProbe(self) -> None:
        """A server without the health service (UNIMPLEMENTED) fails the probe, saying so."""
        f = self.failureResultOf(self.probe(status=12, message=b"Method not found"), GrpcHealthFailure)  # type: ignore[arg-type]
        self.assertIn("UNIMPLEMENTED", str(f.value))
