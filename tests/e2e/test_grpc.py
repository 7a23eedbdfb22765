"""
gRPC through the real C{twistd -n txgateway}: grpcio test services
(tests/e2e/grpcserver.py) behind an upstream with C{protocol: grpc}, called
by a grpcio client over h2c (C{server.h2c: true}); and a plain HTTP/2
origin behind C{protocol: http2}, called with httpx.
"""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import httpx
from twisted.trial.unittest import SynchronousTestCase

from .harness import GatewayProcess, GrpcServer, deadPort, simpleConfig, startOrigin, waitFor


def _raw(data: bytes) -> bytes:
    return data


def framed(message: bytes) -> bytes:
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2Call(port: int, path: str, headers: list[tuple[str, str]], body: bytes,
           timeout: float = 10.0) -> tuple[dict[bytes, bytes], bytes, dict[bytes, bytes]]:
    """One HTTP/2 request with prior knowledge, read to its end: (head, body, trailers)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"gw"),
                            (b":path", path.encode()), *((k.encode(), v.encode()) for k, v in headers)])
    conn.send_data(sid, body, end_stream=True)
    head: dict[bytes, bytes] = {}
    trailers: dict[bytes, bytes] = {}
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(conn.data_to_send())
        ended = False
        while not ended:
            chunk = s.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    head = dict(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = dict(event.headers)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    ended = True
            s.sendall(conn.data_to_send())
    return head, data, trailers


def grpcConfig(targets: list[str], upstreamExtra: str = "") -> str:
    config = simpleConfig(targets, extra="", upstreamExtra="    protocol: grpc\n" + upstreamExtra)
    config = config.replace("match: {path_prefix: /}", "match: {path_prefix: /test.Echo/}")
    return config.replace("  timeouts: {drain: 10s}\n", "  timeouts: {drain: 10s}\n  h2c: true\n").replace(
        "logging:\n  level: info\n", "logging:\n  level: info\n  access_log: true\n")


class GrpcTests(SynchronousTestCase):
    """Two grpcio servers behind one gateway."""

    def setUp(self) -> None:
        self.servers = [GrpcServer("g1").start(), GrpcServer("g2").start()]
        for s in self.servers:
            self.addCleanup(s.stop)
        self.gw = GatewayProcess(grpcConfig([s.url for s in self.servers], """\
    retries: {attempts: 1, on: [connect_failure, "grpc:UNAVAILABLE"], backoff: 0s}
    health:
      active: {grpc_service: test.Echo, interval: 200ms, timeout: 1s, healthy_after: 1, unhealthy_after: 1}
"""))
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)
        self.gw.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.gw.port}")
        self.addCleanup(self.channel.close)

    def unary(self, message: bytes, timeout: float = 10.0, method: str = "/test.Echo/Unary") -> Any:
        return self.channel.unary_unary(method, _raw, _raw).with_call(message, timeout=timeout)

    def accessLines(self, path: str) -> list[dict[str, Any]]:
        lines = []
        for line in self.gw.log().splitlines():
            try:
                entry = json.loads(line[line.index("{"):])
            except ValueError:
                continue
            if entry.get("path") == path:
                lines.append(entry)
        return lines

    def test_unaryWithTrailers(self) -> None:
        """A unary call goes through, answered by one of the servers, its trailers relayed."""
        answer, call = self.unary(b"hello")
        self.assertIn(answer, (b"g1:hello", b"g2:hello"))
        self.assertEqual(call.code(), grpc.StatusCode.OK)
        served = dict(call.trailing_metadata())["x-served-by"]
        self.assertEqual(answer.split(b":")[0].decode(), served)

    def test_serverStreaming(self) -> None:
        """Every message of a server stream arrives, in order."""
        stream = self.channel.unary_stream("/test.Echo/ServerStream", _raw, _raw)(b"5", timeout=10)
        messages = list(stream)
        self.assertEqual([m.split(b":")[1] for m in messages], [b"0", b"1", b"2", b"3", b"4"])

    def test_clientStreamingAndBidiWithAllRequestsSent(self) -> None:
        """Client streaming and bidi calls whose requests are all sent before the answers are read."""
        answer = self.channel.stream_unary("/test.Echo/ClientStream", _raw, _raw)(iter([b"a", b"b", b"c"]), timeout=10)
        self.assertEqual(answer.split(b":", 1)[1], b"a+b+c")
        replies = list(self.channel.stream_stream("/test.Echo/Bidi", _raw, _raw)(iter([b"x", b"y"]), timeout=10))
        self.assertEqual([r.split(b":", 1)[1] for r in replies], [b"x", b"y"])

    def test_interactiveBidi(self) -> None:
        """A bidi call that waits for each answer before sending the next request."""
        import queue
        import threading

        outgoing: queue.Queue[bytes | None] = queue.Queue()

        def requests() -> Any:
            while (item := outgoing.get()) is not None:
                yield item

        replies = self.channel.stream_stream("/test.Echo/Bidi", _raw, _raw)(requests(), timeout=5)
        got: list[bytes] = []
        outgoing.put(b"one")
        done = threading.Event()

        def read() -> None:
            try:
                got.append(next(replies))
            except grpc.RpcError:
                pass
            done.set()

        threading.Thread(target=read, daemon=True).start()
        done.wait(3)
        outgoing.put(None)
        self.assertEqual([g.split(b":", 1)[1] for g in got], [b"one"])

    def test_statusPassesThrough(self) -> None:
        """A server's error status and message reach the client as they were."""
        with self.assertRaises(grpc.RpcError) as cm:
            self.unary(b"fail:NOT_FOUND:no such model")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(cm.exception.details(), "no such model")

    def test_noRouteIsUnimplemented(self) -> None:
        """A method no route serves is UNIMPLEMENTED, said by the gateway."""
        with self.assertRaises(grpc.RpcError) as cm:
            self.unary(b"x", method="/other.Service/Call")
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        self.assertEqual(cm.exception.details(), "no route")

    def test_gatewayErrorsAreStatusesInTrailers(self) -> None:
        """On the wire the gateway's own error is HTTP 200, application/grpc, grpc-status in the trailers."""
        head, body, trailers = h2Call(self.gw.port, "/other.Service/Call",
                                      [("content-type", "application/grpc"), ("te", "trailers")], framed(b"x"))
        self.assertEqual(head[b":status"], b"200")
        self.assertEqual(head[b"content-type"], b"application/grpc")
        self.assertEqual(body, b"")
        self.assertEqual(trailers[b"grpc-status"], b"12")

    def test_grpcTimeoutIsTheDeadline(self) -> None:
        """grpc-timeout shortens the gateway's deadline: a slow call ends DEADLINE_EXCEEDED, said by the gateway."""
        head, _, trailers = h2Call(self.gw.port, "/test.Echo/Unary",
                                   [("content-type", "application/grpc"), ("te", "trailers"),
                                    ("grpc-timeout", "300m")], framed(b"sleep:3"))
        self.assertEqual(trailers[b"grpc-status"], b"4")
        waitFor(lambda: self.accessLines("/test.Echo/Unary"), what="the access log line")
        entry = self.accessLines("/test.Echo/Unary")[-1]
        self.assertEqual((entry["grpc_status"], entry["outcome"]), (4, "timeout"))

    def test_clientGoneCancelsTheTargetsCall(self) -> None:
        """A caller that goes away mid-call: the gateway resets the upstream stream and the server's call is cancelled."""
        with socket.create_connection(("127.0.0.1", self.gw.port), timeout=5) as s:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
            conn.initiate_connection()
            conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"gw"),
                                  (b":path", b"/test.Echo/Unary"), (b"content-type", b"application/grpc"),
                                  (b"te", b"trailers")])
            conn.send_data(1, framed(b"wait:20"), end_stream=True)
            s.sendall(conn.data_to_send())
            # In flight at a server, not only at the gateway: a caller gone before the gateway
            # opened the upstream stream would leave no call to cancel.
            waitFor(lambda: sum(self._count(srv, "Waiting") for srv in self.servers) == 1, what="the call at a server")
        # The socket is closed: the caller has gone.
        waitFor(lambda: sum(self._count(srv, "Cancelled") for srv in self.servers) == 1,
                what="the server's call cancelled")

    def _count(self, server: GrpcServer, counter: str) -> int:
        """A test server's counter: C{Cancelled} (wait: calls cut short) or C{Waiting} (in progress)."""
        with grpc.insecure_channel(server.url[7:]) as channel:
            return int(channel.unary_unary(f"/test.Echo/{counter}", _raw, _raw)(b"", timeout=5))

    def test_retriesOnlyNamedCodes(self) -> None:
        """grpc:UNAVAILABLE from one server is retried on the other; other codes are not retried."""
        for _ in range(4):
            answer, _ = self.unary(b"failon:g1:UNAVAILABLE:going down")
            self.assertTrue(answer.startswith(b"g2:"))
        failures = 0
        for _ in range(4):
            try:
                answer, _ = self.unary(b"failon:g1:INTERNAL:broken")
            except grpc.RpcError as e:
                self.assertEqual(e.code(), grpc.StatusCode.INTERNAL)
                failures += 1
            else:
                self.assertTrue(answer.startswith(b"g2:"))
        self.assertGreater(failures, 0)  # round robin sent some to g1, and INTERNAL was not retried

    def test_metricsCountStatuses(self) -> None:
        """txgateway_grpc_requests_total counts calls by upstream and status name."""
        self.unary(b"a")
        with self.assertRaises(grpc.RpcError):
            self.unary(b"fail:NOT_FOUND:x")

        def counted() -> bool:
            text = self.gw.request("GET", "/metrics").body.decode()
            return ('txgateway_grpc_requests_total{code="OK",upstream="app"}' in text
                    and 'txgateway_grpc_requests_total{code="NOT_FOUND",upstream="app"}' in text)

        waitFor(counted, what="grpc metrics")

    def test_healthCheckTakesANotServingTargetOut(self) -> None:
        """A server whose health service says NOT_SERVING gets no calls until it says SERVING again."""
        setHealth = grpc.insecure_channel(self.servers[1].url[7:])
        self.addCleanup(setHealth.close)
        setHealth.unary_unary("/test.Echo/SetHealth", _raw, _raw)(b"test.Echo=NOT_SERVING", timeout=5)

        def onlyG1() -> bool:
            return all(self.unary(b"h")[0].startswith(b"g1:") for _ in range(4))

        waitFor(onlyG1, what="the NOT_SERVING server out of rotation")
        setHealth.unary_unary("/test.Echo/SetHealth", _raw, _raw)(b"test.Echo=SERVING", timeout=5)
        waitFor(lambda: any(self.unary(b"h")[0].startswith(b"g2:") for _ in range(4)),
                what="the server back in rotation")


class TargetDownTests(SynchronousTestCase):
    def test_targetDownIsUnavailable(self) -> None:
        """A target refusing connections reaches a grpcio client as UNAVAILABLE."""
        gw = GatewayProcess(grpcConfig([f"http://127.0.0.1:{deadPort()}"], "    retries: false\n"))
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        gw.start()
        with grpc.insecure_channel(f"127.0.0.1:{gw.port}") as channel, self.assertRaises(grpc.RpcError) as cm:
            channel.unary_unary("/test.Echo/Unary", _raw, _raw)(b"x", timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)


class Http2OriginTests(SynchronousTestCase):
    """httpx -> gateway -> a plain HTTP/2 origin (prior knowledge), built on h2 in a subprocess."""

    def setUp(self) -> None:
        self.origin, self.port = startOrigin(["-c", _ORIGIN], "h2 origin")
        self.addCleanup(self._stopOrigin)
        config = simpleConfig([f"http://127.0.0.1:{self.port}"], upstreamExtra="    protocol: http2\n")
        self.gw = GatewayProcess(config)
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)
        self.gw.start()

    def _stopOrigin(self) -> None:
        self.origin.kill()
        self.origin.wait()
        if self.origin.stdout:
            self.origin.stdout.close()

    def test_requestsReachTheOriginOverHttp2(self) -> None:
        """HTTP/1.1 and HTTP/2 clients' requests go to the origin as HTTP/2 streams; bodies both ways."""
        with httpx.Client(timeout=10) as c:
            r = c.post(f"http://127.0.0.1:{self.gw.port}/echo", content=b"x" * 200_000)
        self.assertEqual(r.status_code, 200)
        seen = r.json()
        self.assertEqual(seen["protocol"], "HTTP/2")
        self.assertEqual(seen["length"], 200_000)
        self.assertEqual(seen["path"], "/echo")
        with httpx.Client(timeout=10) as c:
            big = c.get(f"http://127.0.0.1:{self.gw.port}/big")
        self.assertEqual(len(big.content), 3_000_000)


def tlsFiles() -> dict[str, bytes]:
    """A CA and a server certificate for 127.0.0.1 (an IP SAN) it signed, as PEM files."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "txgateway test CA")])
    ca = (x509.CertificateBuilder().subject_name(caName).issuer_name(caName).public_key(caKey.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(caKey, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origin")]))
            .issuer_name(caName).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(caKey, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {"ca.pem": ca.public_bytes(pem), "cert.pem": cert.public_bytes(pem),
            "key.pem": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}


class Http2TlsOriginTests(SynchronousTestCase):
    """An https:// HTTP/2 target: TLS with ALPN h2 (the CA given to OpenSSL through SSL_CERT_FILE)."""

    def startBehindGateway(self, alpn: str) -> GatewayProcess:
        files = tlsFiles()
        tmp = Path(tempfile.mkdtemp(prefix="txgw-h2tls-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        origin, port = startOrigin(["-c", _ORIGIN, str(tmp / "cert.pem"), str(tmp / "key.pem"), alpn], "h2 TLS origin")
        self.addCleanup(lambda: (origin.kill(), origin.wait(), origin.stdout and origin.stdout.close()))
        config = simpleConfig([f"https://127.0.0.1:{port}"], upstreamExtra="    protocol: http2\n    retries: false\n")
        gw = GatewayProcess(config, env={"SSL_CERT_FILE": str(tmp / "ca.pem")})
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        return gw.start()

    def test_alpnH2(self) -> None:
        """The target chooses h2 by ALPN: requests go over HTTP/2 on TLS."""
        gw = self.startBehindGateway("h2,http/1.1")
        r = gw.request("POST", "/echo", body=b"y" * 1000)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), {"protocol": "HTTP/2", "length": 1000, "path": "/echo"})

    def test_targetWithoutH2IsA502WithAClearLogLine(self) -> None:
        """A target that does not choose h2 gets no request: 502, and the log says why."""
        gw = self.startBehindGateway("http/1.1")
        self.assertEqual(gw.request("GET", "/echo").status, 502)
        waitFor(lambda: "did not choose h2" in gw.log(), what="the ALPN log line")


# A minimal HTTP/2 origin on h2: /echo answers JSON about the request, /big 3 MB; prior knowledge, or TLS
# with ALPN when given a certificate, its key and the protocols to offer.
_ORIGIN = r'''
import json, socket, sys, threading
import h2.config, h2.connection, h2.events

def handle(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams, pending = {}, {}
    def flush():
        for sid, data in list(pending.items()):
            while data:
                n = min(len(data), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if n <= 0:
                    break
                conn.send_data(sid, data[:n], end_stream=(n == len(data)))
                data = data[n:]
            if data:
                pending[sid] = data
            else:
                del pending[sid]
        sock.sendall(conn.data_to_send())
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return
        for e in conn.receive_data(chunk):
            if isinstance(e, h2.events.RequestReceived):
                streams[e.stream_id] = [dict(e.headers), 0]
            elif isinstance(e, h2.events.DataReceived):
                streams[e.stream_id][1] += len(e.data)
                conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            elif isinstance(e, h2.events.StreamEnded):
                head, length = streams.pop(e.stream_id)
                path = head[b":path"].decode()
                if path == "/big":
                    body = b"b" * 3_000_000
                else:
                    body = json.dumps({"protocol": "HTTP/2", "length": length, "path": path}).encode()
                conn.send_headers(e.stream_id, [(b":status", b"200"), (b"content-length", b"%d" % len(body))])
                pending[e.stream_id] = body
        flush()

def serve(s):
    if len(sys.argv) > 2:  # TLS: certificate, key, and the ALPN protocols offered
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(sys.argv[1], sys.argv[2])
        ctx.set_alpn_protocols(sys.argv[3].split(","))
        try:
            s = ctx.wrap_socket(s, server_side=True)
        except (ssl.SSLError, OSError):
            return
    handle(s)

server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(16)
print("ready", server.getsockname()[1], flush=True)
while True:
    s, _ = server.accept()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
'''
