"""
TLS termination: an C{ssl:} listener in front of a plain-HTTP backend.

The gateway's sending shortcut (sending.py) applies to plain TCP sockets
only; a TLS connection's transport is the TLS protocol, which keeps
Twisted's own write path.  These tests run the real gateway with a
self-signed certificate made at test time.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, simpleConfig, waitFor


def selfSigned() -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) for 127.0.0.1, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            # The address as a SAN too: a client that verifies (the gateway towards a wss:// target) needs it.
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            cert.public_bytes(serialization.Encoding.PEM))


class TlsListenerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = Backend("b1").start()
        self.addCleanup(self.backend.stop)
        key, cert = selfSigned()
        config = simpleConfig([self.backend.url]).replace(
            'listen: "tcp:{port}:interface=127.0.0.1"',
            'listen: "ssl:{port}:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem"')
        self.gw = GatewayProcess(config, files={"key.pem": key, "cert.pem": cert})
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)
        self.gw.start(waitReady=False)
        self.gw.waitListening()
        self.context = ssl.create_default_context()
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        waitFor(lambda: self.get(self.connect(), "/ready")[0] == 200, what="gateway /ready over TLS")

    def connect(self) -> http.client.HTTPSConnection:
        conn = http.client.HTTPSConnection("127.0.0.1", self.gw.port, context=self.context, timeout=5)
        self.addCleanup(conn.close)
        return conn

    def get(self, conn: http.client.HTTPSConnection, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        except OSError:
            return 0, {}, b""

    def test_proxiedOverTlsWithForwardedProtoHttps(self) -> None:
        """Requests over TLS are proxied on one kept-alive connection, and the backend is told the client used https."""
        conn = self.connect()
        for i in range(3):
            status, headers, body = self.get(conn, f"/echo/{i}")
            self.assertEqual(status, 200)
            echoed: dict[str, Any] = json.loads(body)
            seen = {k.lower(): v for k, v in echoed["headers"]}
            self.assertEqual(echoed["path"], f"/echo/{i}")
            self.assertEqual(seen["x-forwarded-proto"], "https")

    def test_largeBodyStreamsOverTls(self) -> None:
        """A 4 MiB body arrives whole through the TLS listener."""
        status, _, body = self.get(self.connect(), "/big?bytes=4194304")
        self.assertEqual((status, len(body)), (200, 4194304))
