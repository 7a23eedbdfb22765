"""
A TLS listener's certificate (txgateway.tls.server and listening.Listener):
the ssl: string split into TCP and TLS, the certificate a client gets in a
real handshake before and after a rotation, a bad rotation refused, and the
listener's watch on an injected clock.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from txgateway.listening import Listener, StartupError
from txgateway.tls.client import ClientTLSPolicy
from txgateway.tls.server import ServerCertificates, SSLFiles, splitSSL
from txgateway.workers import WorkerSetupError, parseListen

from .tlscerts import Authority, handshake, tlsProtocol


class SplitTests(SynchronousTestCase):
    def test_split(self) -> None:
        """Port, interface and backlog go to tcp:; the files to TLS; certKey defaults to privateKey, as in Twisted."""
        tcp, files = splitSSL("ssl:8443:interface=127.0.0.1:privateKey=k.pem:certKey=c.pem:backlog=9") or ("", None)
        self.assertEqual(tcp, "tcp:8443:interface=127.0.0.1:backlog=9")
        assert files is not None
        self.assertEqual((files.privateKey, files.certKey), ("k.pem", "c.pem"))
        _, both = splitSSL("ssl:port=0:privateKey=both.pem") or ("", None)
        assert both is not None
        self.assertEqual(both.certKey, "both.pem")

    def test_unknownOptionsLeftToTwisted(self) -> None:
        """An option this module does not handle (sslmethod) leaves the string to Twisted's own endpoint."""
        self.assertIsNone(splitSSL("ssl:8443:privateKey=k.pem:sslmethod=TLSv1_2_METHOD"))
        self.assertIsNone(splitSSL("tcp:8443"))

    def test_workersTakeSSL(self) -> None:
        """server.workers accepts an ssl: listener: the supervisor binds its port, each worker adds TLS."""
        self.assertEqual(parseListen("ssl:8443:interface=127.0.0.1:privateKey=k.pem:certKey=c.pem"),
                         (8443, "127.0.0.1", 512))
        with self.assertRaises(WorkerSetupError) as caught:
            parseListen("ssl:8443:privateKey=k.pem:sslmethod=TLSv1_2_METHOD")
        self.assertIn("takes only port, interface", str(caught.exception))


class RotationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.ca = Authority()
        (self.dir / "ca.crt").write_bytes(self.ca.pem)
        self.first = self.ca.issue()
        self.key, self.cert = self.first.write(self.dir, "tls")
        self.files = SSLFiles(str(self.key), str(self.cert))

    def served(self, certificates: ServerCertificates) -> int:
        """The serial of the certificate a client gets in a real handshake now."""
        from twisted.internet.task import Clock

        from txgateway.config import UpstreamTLS

        client = ClientTLSPolicy("t", UpstreamTLS(ca_file=str(self.dir / "ca.crt")), Clock())
        got = handshake(client.creatorFor("127.0.0.1").clientConnectionForTLS(tlsProtocol()),
                        certificates.serverConnectionForTLS(tlsProtocol()))
        return int(got.serial_number)

    def test_newConnectionsGetTheRotatedCertificate(self) -> None:
        """After a rotation a new handshake gets the new certificate; before the look, the old one."""
        certificates = ServerCertificates(self.files)
        self.assertEqual(self.served(certificates), self.first.serial)
        second = self.ca.issue()
        second.write(self.dir, "tls")
        self.assertEqual(self.served(certificates), self.first.serial)
        self.assertTrue(certificates.refresh())
        self.assertEqual(self.served(certificates), second.serial)
        self.assertFalse(certificates.refresh())  # nothing changed since

    def test_badRotationKeepsServing(self) -> None:
        """A rotated file that is not PEM is refused; the old certificate still serves."""
        certificates = ServerCertificates(self.files)
        self.cert.write_bytes(b"not a certificate\n")
        self.assertFalse(certificates.refresh())
        self.assertEqual((self.served(certificates), certificates.refusals), (self.first.serial, 1))

    def test_listenerWatchesOnItsClock(self) -> None:
        """An ssl: listener serves TLS over tcp: and looks at its files every 2 s of its reactor's clock."""
        reactor = MemoryReactorClock()
        listener = Listener(reactor, f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}",
                            Factory.forProtocol(Protocol))
        listener.startService()
        self.addCleanup(listener.stopService)
        port, factory, backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, interface), (0, "127.0.0.1"))
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        second = self.ca.issue()
        second.write(self.dir, "tls")
        reactor.advance(2)
        self.assertEqual(listener.certificates.reloads, 1)
        self.assertEqual(self.served(listener.certificates), second.serial)

    def test_listenerRefusesABadCertificateAtStart(self) -> None:
        """A key that is not the certificate's fails the listener with one line naming the file."""
        self.key.write_bytes(self.ca.issue().key)
        listener = Listener(MemoryReactorClock(), f"ssl:0:privateKey={self.key}:certKey={self.cert}",
                            Factory.forProtocol(Protocol))
        listener.startService()
        assert listener.listening is not None
        failure = self.failureResultOf(listener.listening, StartupError)
        self.assertIn("is not the key of the certificate", failure.getErrorMessage())
