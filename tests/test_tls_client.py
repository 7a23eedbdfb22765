"""
An upstream's TLS policy (txgateway.tls.client) against real TLS handshakes
run in memory: a private CA, mutual TLS, SNI and the checked name, no
verification, the minimum version, and rotation of the files on disk with
an injected clock.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived

from txgateway.config import UpstreamTLS
from txgateway.tls.client import CertificateRejected, ClientTLSPolicy
from txgateway.tls.failures import tlsFailure

from .tlscerts import Authority, handshake, replaceFile, tlsProtocol


class _Origin:
    """A target's side of the handshake: a certificate, and optionally a CA its clients must be signed by."""

    def __init__(self, directory: Path, issued: Any, clientCA: Authority | None = None,
                 maxVersion: int | None = None) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from OpenSSL import crypto

        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.use_certificate(x509.load_pem_x509_certificate(issued.cert))
        self.context.use_privatekey(load_pem_private_key(issued.key, None))  # type: ignore[arg-type]
        if clientCA is not None:
            store = self.context.get_cert_store()
            assert store is not None
            store.add_cert(crypto.X509.from_cryptography(clientCA.certificate))
            self.context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: bool(a[-1]))
        if maxVersion is not None:
            self.context.set_max_proto_version(maxVersion)
        self.seenName: bytes | None = None

    def connection(self) -> SSL.Connection:
        return SSL.Connection(self.context)


class ClientPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.ca = Authority()
        self.caFile = self.dir / "ca.crt"
        self.caFile.write_bytes(self.ca.pem)
        self.clock = Clock()

    def policy(self, **spec: Any) -> ClientTLSPolicy:
        spec.setdefault("ca_file", str(self.caFile))
        return ClientTLSPolicy("models", UpstreamTLS(**spec), self.clock)

    def connect(self, policy: ClientTLSPolicy, origin: _Origin, host: str = "127.0.0.1") -> Any:
        client = policy.creatorFor(host).clientConnectionForTLS(tlsProtocol())
        server = origin.connection()
        got = handshake(client, server)
        origin.seenName = server.get_servername()
        self.lastClient, self.lastServer = client, server
        return got

    def refused(self, policy: ClientTLSPolicy, origin: _Origin, host: str = "127.0.0.1") -> str:
        with self.assertRaises(SSL.Error) as caught:
            self.connect(policy, origin, host)
        return str(caught.exception)

    def test_privateCA(self) -> None:
        """A target whose certificate the configured CA signed is accepted; the client sees that certificate."""
        issued = self.ca.issue()
        got = self.connect(self.policy(), _Origin(self.dir, issued))
        self.assertEqual(got.serial_number, issued.serial)

    def test_wrongCA(self) -> None:
        """A target signed by another CA is refused, saying it is not signed by a trusted CA."""
        why = self.refused(self.policy(), _Origin(self.dir, Authority("other").issue()))
        self.assertIn("certificate verify failed: unable to get local issuer certificate", why)

    def test_expired(self) -> None:
        """An expired target certificate is refused as expired."""
        why = self.refused(self.policy(), _Origin(self.dir, self.ca.issue(expired=True)))
        self.assertIn("certificate has expired", why)

    def test_wrongName(self) -> None:
        """A certificate for other names is refused for this host, and the message names the host."""
        why = self.refused(self.policy(), _Origin(self.dir, self.ca.issue(names=["api.internal"])), "10.0.0.9")
        self.assertIn("is not valid for '10.0.0.9'", why)

    def test_serverNameIsSentAndChecked(self) -> None:
        """server_name goes out as SNI and is the name checked, whatever address the target has."""
        origin = _Origin(self.dir, self.ca.issue(names=["models.internal"]))
        self.connect(self.policy(server_name="models.internal"), origin, "127.0.0.1")
        self.assertEqual(origin.seenName, b"models.internal")
        self.assertIn("not valid for 'other.internal'", self.refused(self.policy(server_name="other.internal"), origin))

    def test_hostNameIsSNIWhenNoServerName(self) -> None:
        """Without server_name a target named by host name gets that name as SNI; an IP address sends none."""
        origin = _Origin(self.dir, self.ca.issue(names=["localhost"]))
        self.connect(self.policy(), origin, "localhost")
        self.assertEqual(origin.seenName, b"localhost")
        byAddress = _Origin(self.dir, self.ca.issue())
        self.connect(self.policy(), byAddress, "127.0.0.1")
        self.assertIsNone(byAddress.seenName)

    def test_verifyFalseAcceptsAnything(self) -> None:
        """verify: false connects to a target no CA vouches for, under a name it does not carry, and warns."""
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        policy = ClientTLSPolicy("dev", UpstreamTLS(verify=False), self.clock)
        issued = Authority("nobody").issue(names=["elsewhere"], expired=True)
        self.assertEqual(self.connect(policy, _Origin(self.dir, issued)).serial_number, issued.serial)
        warnings = [e for e in events if "NOT checked" in e.get("log_format", "")]
        self.assertEqual([e["upstream"] for e in warnings], ["dev"])

    def test_mutualTLS(self) -> None:
        """With cert_file and key_file the client certificate is presented; without, an origin requiring one refuses."""
        clientCA = Authority("clients")
        issued = clientCA.issue(names=[], client=True, commonName="gateway")
        key, cert = issued.write(self.dir, "client")
        origin = _Origin(self.dir, self.ca.issue(), clientCA=clientCA)
        self.connect(self.policy(cert_file=str(cert), key_file=str(key)), origin)
        self.assertEqual(self.lastServer.get_peer_certificate(as_cryptography=True).serial_number, issued.serial)
        self.refused(self.policy(), origin)

    def test_minVersion(self) -> None:
        """min_version 1.3 refuses a target that speaks at most TLS 1.2; 1.2 connects to it."""
        origin = _Origin(self.dir, self.ca.issue(), maxVersion=SSL.TLS1_2_VERSION)
        self.connect(self.policy(min_version="1.2"), origin)
        self.refused(self.policy(min_version="1.3"), origin)

    def test_alpnOffered(self) -> None:
        """The alpn argument (the HTTP/2 client's h2) is offered in the handshake."""
        client = self.policy().creatorFor("127.0.0.1", (b"h2",)).clientConnectionForTLS(tlsProtocol())
        origin = _Origin(self.dir, self.ca.issue())
        origin.context.set_alpn_select_callback(lambda conn, offered: b"h2" if b"h2" in offered else b"")
        handshake(client, origin.connection())
        self.assertEqual(client.get_alpn_proto_negotiated(), b"h2")

    def test_failureDescribedForTheLog(self) -> None:
        """The Agent's wrapped failure of a refused handshake reads as the reason, for the 502's log line."""
        wrapped = Failure(ResponseNeverReceived([Failure(CertificateRejected("certificate verify failed: x"))]))
        self.assertEqual(tlsFailure(wrapped), "TLS handshake failed: certificate verify failed: x")
        alert = Failure(SSL.Error([("SSL routines", "", "tlsv13 alert certificate required")]))
        self.assertEqual(tlsFailure(alert), "TLS handshake failed: tlsv13 alert certificate required")
        self.assertIsNone(tlsFailure(Failure(ConnectionResetError())))


class ClientRotationTests(SynchronousTestCase):
    """cert_file/key_file/ca_file read again when they change, looked at every 2 s of the injected clock."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.ca = Authority()
        (self.dir / "ca.crt").write_bytes(self.ca.pem)
        self.first = self.ca.issue(names=[], client=True)
        self.first.write(self.dir, "client")
        self.clock = Clock()
        self.observed: list[tuple[float | None, str | None]] = []
        self.policy = ClientTLSPolicy("models", UpstreamTLS(
            ca_file=str(self.dir / "ca.crt"), cert_file=str(self.dir / "client.crt"),
            key_file=str(self.dir / "client.key")), self.clock, observe=lambda *a: self.observed.append(a))

    def serial(self) -> int:
        client = self.policy.clientCertificate
        assert client is not None
        return int(client.certificate.serial_number)

    def test_rotatedCertificateUsedAfterTheNextLook(self) -> None:
        """A new certificate on disk is taken at the first look after it changed, not before."""
        second = self.ca.issue(names=[], client=True)
        second.write(self.dir, "client")
        self.policy.creatorFor("127.0.0.1")
        self.assertEqual(self.serial(), self.first.serial)
        self.clock.advance(2)
        self.policy.creatorFor("127.0.0.1")
        self.assertEqual((self.serial(), self.policy.reloads), (second.serial, 1))
        expiries = [x509.load_pem_x509_certificate(i.cert).not_valid_after_utc.timestamp() for i in (self.first, second)]
        self.assertEqual(self.observed, [(expiries[0], None), (expiries[1], "loaded")])

    def test_symlinkSwap(self) -> None:
        """cert-manager's layout: the files are symlinks into a directory swapped atomically."""
        for name in ("a", "b"):
            (self.dir / name).mkdir()
        self.first.write(self.dir / "a", "tls")
        second = self.ca.issue(names=[], client=True)
        second.write(self.dir / "b", "tls")
        os.symlink("a", self.dir / "data")
        policy = ClientTLSPolicy("models", UpstreamTLS(cert_file=str(self.dir / "data" / "tls.crt"),
                                                       key_file=str(self.dir / "data" / "tls.key")), self.clock)
        os.symlink("b", self.dir / "data.new")
        os.replace(self.dir / "data.new", self.dir / "data")
        self.clock.advance(2)
        self.assertTrue(policy.refresh())
        assert policy.clientCertificate is not None
        self.assertEqual(policy.clientCertificate.certificate.serial_number, second.serial)

    def test_badNewFilesKeepTheOldOnes(self) -> None:
        """A key that does not match the new certificate is refused and the old pair stays, once per change."""
        second = self.ca.issue(names=[], client=True)
        replaceFile(self.dir / "client.crt", second.cert)  # the key not yet written
        self.clock.advance(2)
        self.assertFalse(self.policy.refresh())
        self.assertEqual((self.serial(), self.policy.refusals), (self.first.serial, 1))
        self.clock.advance(2)
        self.assertFalse(self.policy.refresh())
        self.assertEqual(self.policy.refusals, 1)
        self.assertEqual(self.observed[1:], [(None, "refused")])
        replaceFile(self.dir / "client.key", second.key)
        self.clock.advance(2)
        self.assertTrue(self.policy.refresh())
        self.assertEqual(self.serial(), second.serial)

    def test_watchLooksWithoutConnections(self) -> None:
        """The upstreams' watch takes a rotation every 2 s of its clock, no connection needed; a failing policy is skipped."""
        from txgateway.tls.watching import CertificateWatch

        class Broken:
            upstream = "broken"

            def refresh(self) -> bool:
                raise RuntimeError("boom")

        watch = CertificateWatch(self.clock, lambda: [Broken(), None, self.policy])
        watch.startService()
        self.addCleanup(watch.stopService)
        second = self.ca.issue(names=[], client=True)
        second.write(self.dir, "client")
        self.clock.advance(2)
        self.assertEqual(self.serial(), second.serial)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.clock.advance(2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)  # the loop goes on

    def test_noWatchWithoutTLS(self) -> None:
        """A config without any upstream tls section starts no watch (no timer for nothing)."""
        from txgateway.config import parseConfig
        from txgateway.tls.watching import upstreamCertificateWatch

        config = parseConfig("upstreams:\n  a: {targets: [http://127.0.0.1:1]}\nroutes:\n  - {match: {path_prefix: /}, "
                             "upstream: a}\n")
        self.assertIsNone(upstreamCertificateWatch(config, self.clock, None))
