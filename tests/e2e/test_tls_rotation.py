"""
A TLS listener against the real C{twistd -n txgateway}: its certificate
rotated on disk while it runs (read back as the serial number a real
handshake presents, before and after), a connection opened before the
rotation kept, a bad rotation refused; and C{server.workers} with an
C{ssl:} listener, every worker answering over TLS.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from ..tlscerts import Authority, replaceFile
from .harness import Backend, GatewayProcess, childEnv, simpleConfig, waitFor

_SSL_LISTEN = 'listen: "ssl:{port}:interface=127.0.0.1:privateKey=tls.key:certKey=tls.crt"'


def tlsGateway(case: SynchronousTestCase, backend: Backend, ca: Authority,
               extra: str = "") -> tuple[GatewayProcess, int]:
    """A gateway on an ssl: listener with a certificate from C{ca}, started; and that certificate's serial."""
    issued = ca.issue()
    config = simpleConfig([backend.url]).replace('listen: "tcp:{port}:interface=127.0.0.1"', _SSL_LISTEN)
    config = config.replace("  timeouts: {drain: 10s}\n", "  timeouts: {drain: 10s}\n" + extra)
    gw = GatewayProcess(config, files={"tls.key": issued.key, "tls.crt": issued.cert})
    case.addCleanup(gw.cleanup)
    case.addCleanup(gw.stop)
    gw.start(waitReady=False)
    gw.waitListening()
    return gw, issued.serial


class _Client:
    """HTTPS to the gateway, trusting only the test's CA; reads back the certificate each connection got."""

    def __init__(self, case: SynchronousTestCase, port: int, caFile: Path) -> None:
        self.case = case
        self.port = port
        self.context = ssl.create_default_context(cafile=str(caFile))

    def connect(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=10)
        self.case.addCleanup(conn.close)
        return conn

    def get(self, conn: http.client.HTTPSConnection, path: str) -> tuple[int, bytes]:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()

    @staticmethod
    def serial(conn: http.client.HTTPSConnection) -> int:
        sock: Any = conn.sock
        return int(x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number)

    def newSerial(self) -> int:
        """The serial a new connection's handshake presents (after one request on it)."""
        conn = self.connect()
        self.get(conn, "/echo/new")
        serial = self.serial(conn)
        conn.close()
        return serial


class ListenerRotationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = Backend("b1").start()
        self.addCleanup(self.backend.stop)
        self.ca = Authority()
        self.gw, self.first = tlsGateway(self, self.backend, self.ca)
        self.caFile = self.gw.dir / "ca.crt"
        self.caFile.write_bytes(self.ca.pem)
        self.client = _Client(self, self.gw.port, self.caFile)
        waitFor(lambda: self._ready(), what="gateway /ready over TLS")

    def _ready(self) -> bool:
        try:
            return self.client.get(self.client.connect(), "/ready")[0] == 200
        except OSError:
            return False

    def test_rotationServesNewConnectionsAndKeepsOpenOnes(self) -> None:
        """A rotated certificate reaches new handshakes within seconds; a connection opened before keeps working."""
        old = self.client.connect()
        self.assertEqual(self.client.get(old, "/echo/before")[0], 200)
        first = self.first
        self.assertEqual(self.client.serial(old), first)
        second = self.ca.issue()
        second.write(self.gw.dir, "tls")
        waitFor(lambda: self.client.newSerial() == second.serial, what="the rotated certificate on a new connection")
        self.assertIn("TLS certificate reloaded; new connections get serial", self.gw.log())
        status, body = self.client.get(old, "/echo/after")
        self.assertEqual((status, json.loads(body)["path"]), (200, "/echo/after"))
        self.assertEqual(self.client.serial(old), first)
        # HTTP/2 by ALPN is offered with the rotated certificate too.
        # (A context of its own: httpx sets its ALPN list on the context it is given.)
        with httpx.Client(http2=True, http1=False, verify=ssl.create_default_context(cafile=str(self.caFile)),
                          timeout=10) as h2:
            self.assertEqual(h2.get(f"https://127.0.0.1:{self.gw.port}/echo/h2").http_version, "HTTP/2")
        metrics = self.client.get(self.client.connect(), "/metrics")[1].decode()
        self.assertIn('txgateway_tls_certificate_reloads_total{kind="listener",name="server.listen",result="loaded"} 1.0',
                      metrics)
        notAfter = x509.load_pem_x509_certificate(second.cert).not_valid_after_utc.timestamp()
        m = re.search(r'^txgateway_tls_certificate_expiry_timestamp_seconds\{kind="listener",name="server.listen"\} '
                      r"(\S+)$", metrics, re.M)
        assert m is not None, metrics
        self.assertEqual(float(m.group(1)), notAfter)

    def test_badRotationKeepsTheCertificate(self) -> None:
        """A rotated file that is not a certificate is refused in the log; the current certificate still serves."""
        replaceFile(self.gw.dir / "tls.crt", b"not a certificate\n")
        waitFor(lambda: "certificate files changed but cannot be used" in self.gw.log(), what="the refusal line")
        self.assertEqual(self.client.newSerial(), self.first)
        self.assertNotIn("Traceback", self.gw.log())


class TlsWorkersTests(SynchronousTestCase):
    def test_twoWorkersOverHttps(self) -> None:
        """server.workers: 2 with an ssl: listener: both workers answer over TLS on the one port, and each takes a rotation."""
        backend = Backend("wb").start()
        self.addCleanup(backend.stop)
        ca = Authority()
        gw, _ = tlsGateway(self, backend, ca, extra="  workers: 2\n")
        caFile = gw.dir / "ca.crt"
        caFile.write_bytes(ca.pem)
        client = _Client(self, gw.port, caFile)
        seen: dict[int, int] = {}

        def both() -> bool:
            try:
                conn = client.connect()
                status, body = client.get(conn, "/ready")
                conn.close()
            except OSError:
                return False
            if status == 200:
                doc = json.loads(body)
                seen[doc["worker"]] = doc["pid"]
            return len(seen) == 2

        waitFor(both, timeout=30, what="both workers answering over TLS")
        self.assertEqual(sorted(seen), [0, 1])
        self.assertEqual(len(set(seen.values())), 2)
        self.assertEqual(client.get(client.connect(), "/echo/w")[0], 200)
        # Each worker watches the files itself: after a rotation both present the new certificate.
        second = ca.issue()
        second.write(gw.dir, "tls")
        waitFor(lambda: gw.log().count("TLS certificate reloaded") == 2, what="both workers' reload lines")
        byWorker: dict[int, int] = {}
        for _ in range(200):
            conn = client.connect()
            doc = json.loads(client.get(conn, "/ready")[1])
            byWorker[doc["worker"]] = client.serial(conn)
            conn.close()
            if len(byWorker) == 2:
                break
        self.assertEqual(byWorker, {0: second.serial, 1: second.serial})


class StartupRefusalTests(SynchronousTestCase):
    """Unusable TLS files stop start-up with one line and a non-zero exit, as operators run twistd."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="txgw-tls-start-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def start(self, config: str) -> tuple[int, list[str]]:
        (self.dir / "gw.yaml").write_text(config.replace("{port}", "0"))
        twistd = Path(sys.executable).parent / "twistd"
        done = subprocess.run([str(twistd), "-n", "--pidfile=", "--logfile=-", "txgateway", "--config", "gw.yaml"],
                              cwd=self.dir, env=childEnv(), capture_output=True, text=True, timeout=60)
        output = done.stdout + done.stderr
        self.assertNotIn("Traceback", output)
        return done.returncode, [line for line in output.splitlines() if line.strip()]

    def test_listenerKeyNotTheCertificates(self) -> None:
        """An ssl: listener whose key is not its certificate's: the config is rejected in one line, exit non-zero."""
        ca = Authority()
        ca.issue().write(self.dir, "tls")
        (self.dir / "tls.key").write_bytes(ca.issue().key)
        config = simpleConfig(["http://127.0.0.1:9"]).replace('listen: "tcp:{port}:interface=127.0.0.1"', _SSL_LISTEN)
        code, lines = self.start(config)
        self.assertNotEqual(code, 0)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("server.listen: cannot listen on 'ssl:0:", lines[0])
        self.assertIn("keys do not match", lines[0])

    def test_upstreamCAMissing(self) -> None:
        """An upstream's ca_file that does not exist: the config is rejected naming the key path and line."""
        config = simpleConfig(["https://127.0.0.1:9"], upstreamExtra="    tls: {ca_file: missing.crt}\n")
        code, lines = self.start(config)
        self.assertNotEqual(code, 0)
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("upstreams.app.tls.ca_file: cannot read CA file", lines[0])
        self.assertIn("missing.crt': No such file or directory", lines[0])
