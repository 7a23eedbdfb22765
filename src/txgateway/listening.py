# -*- test-case-name: tests.test_lifecycle -*-
"""
Listening sockets: the listen backlog, one listener service per endpoint (or
a socket inherited from the worker supervisor), and the one-line reason a
bind failed.

An C{ssl:} listener is TLS that the gateway adds itself over a plain TCP
socket (L{txgateway.tls.server}): its certificate files are looked at every
L{CERTIFICATE_CHECK} seconds and a rotated certificate serves the
connections accepted from then on; and a worker wraps the socket the
supervisor bound the same way, so C{server.workers} works with TLS.

L{txgateway.service.GatewayService} starts and stops these; the drain stops
accepting by stopping them first.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["CERTIFICATE_CHECK", "Listener", "StartupError", "bindProblem", "boundAddress", "listenBacklog",
           "withBacklog"]

#: Seconds between looks (a stat per file) at a TLS listener's certificate files.
CERTIFICATE_CHECK = 2.0


class StartupError(Exception):
    """
    The gateway cannot start (a port in use, a socket it may not bind).

    Raised from C{startService}, so twistd does not run the reactor: in the
    foreground the process exits non-zero (L{txgateway.tap} shows the
    message as one line instead of a traceback), and a daemonising twistd
    reports it to the parent, which exits 1.
    """

    oneLine = True  # shown as one line, not a traceback (txgateway.tap)


log = Logger(namespace="txgateway")

_SOMAXCONN = "/proc/sys/net/core/somaxconn"
_BACKLOG_KINDS = ("tcp:", "tcp6:", "ssl:", "unix:")


def listenBacklog(configured: int | None, somaxconn: str = _SOMAXCONN) -> int:
    """
    The listen queue for C{server.backlog}: as configured, else the kernel's
    C{somaxconn} (the most it grants anyway), else 4096.

    Twisted's endpoints default to 50, which a burst of new clients fills at
    once: the rest wait for SYN retransmits or are refused.
    """
    if configured is not None:
        return configured
    try:
        with open(somaxconn, encoding="ascii") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return 4096
    return value if value > 0 else 4096


def withBacklog(description: str, backlog: int) -> str:
    """
    C{description} with C{backlog=} added, for the endpoint kinds that take
    it (tcp, tcp6, ssl, unix); a backlog written in the string itself wins.
    """
    if not description.startswith(_BACKLOG_KINDS) or ":backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


def bindProblem(error: BaseException) -> str:
    """C{"127.0.0.1:8080: Address already in use"}, or the error's own words."""
    socketError = getattr(error, "socketError", None)
    if isinstance(socketError, OSError) and socketError.strerror:
        return f"{getattr(error, 'interface', '') or '*'}:{getattr(error, 'port', '?')}: {socketError.strerror}"
    return str(error)


class Listener(Service):
    """One listening endpoint; remembers its port so the drain can stop accepting."""

    def __init__(self, reactor: Any, description: str, factory: Any, inheritedFd: int | None = None,
                 certificateCheck: float = CERTIFICATE_CHECK, onCertificate: Any = None) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.inheritedFd = inheritedFd
        self.certificateCheck = certificateCheck
        self.onCertificate = onCertificate  # told of the certificate in use (see txgateway.tls.pem.Observer)
        self.port: Any = None
        self.listening: Deferred[Any] | None = None
        self.certificates: Any = None  # an ssl: listener's txgateway.tls.server.ServerCertificates
        self._watch: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        try:
            description, factory = self._withTLS()
        except StartupError as e:
            self.listening = fail(e)  # reported as a bind failure is (GatewayService.startService)
            return
        if self.inheritedFd is not None:
            # A worker: the supervisor bound the socket (see workers.py).
            self.listening = maybeDeferred(_adopt, self.reactor, self.inheritedFd, factory)
        else:
            self.listening = serverFromString(self.reactor, description).listen(factory)

        def listening(port: Any) -> Any:
            self.port = port
            return port

        self.listening.addCallback(listening)

    def _withTLS(self) -> tuple[str, Any]:
        """
        The endpoint string to listen with and the factory to serve: for an
        C{ssl:} listener, C{tcp:} and the site wrapped in TLS whose
        certificate is watched for rotation.  Raises L{StartupError} when
        the certificate cannot be used.
        """
        if not self.description.startswith("ssl:"):
            return self.description, self.factory
        from txgateway.tls.server import ServerCertificates, splitSSL

        split = splitSSL(self.description)
        if split is None:  # options left to Twisted's own ssl: endpoint (unwatched)
            if self.inheritedFd is not None:
                raise StartupError(f"{self.description}: with server.workers, ssl: takes only port, interface, "
                                   "backlog, privateKey, certKey, extraCertChain and dhParameters")
            return self.description, self.factory
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from txgateway.tls.pem import CertificateProblem

        tcp, files = split
        try:
            self.certificates = ServerCertificates(files, observe=self.onCertificate)
        except CertificateProblem as e:
            raise StartupError(f"{self.description}: {e}") from None
        self._watch = LoopingCall(self.certificates.refresh)
        self._watch.clock = self.reactor
        self._watch.start(self.certificateCheck, now=False).addErrback(
            lambda f: log.failure("the certificate watch of {listen} stopped", f, listen=self.description))
        return tcp, TLSMemoryBIOFactory(self.certificates, False, self.factory, clock=self.reactor)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None
        if self.port is not None:
            port, self.port = self.port, None
            return succeed(None).addCallback(lambda _: port.stopListening())
        if self.listening is not None:
            self.listening.cancel()
        return succeed(None)


def boundAddress(port: Any) -> str:
    """C{host:port} (or the socket path) a listening port is bound to: with C{tcp:0}, the port the OS chose."""
    address = port.getHost()
    return f"{address.host}:{address.port}" if hasattr(address, "port") else str(getattr(address, "name", address))


def _adopt(reactor: Any, fd: int, factory: Any) -> Any:
    sock = socket.socket(fileno=fd)
    family = sock.family
    sock.detach()
    port = reactor.adoptStreamPort(fd, family, factory)
    os.close(fd)  # the port holds its own duplicate
    return port

