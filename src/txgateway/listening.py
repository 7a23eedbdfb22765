# -*- test-case-name: tests.test_lifecycle -*-
"""
Listening sockets: the listen backlog, one listener service per endpoint (or
a socket inherited from the worker supervisor), and the one-line reason a
bind failed.

L{txgateway.service.GatewayService} starts and stops these; the drain stops
accepting by stopping them first.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString

__all__ = ["Listener", "StartupError", "bindProblem", "boundAddress", "listenBacklog", "withBacklog"]


class StartupError(Exception):
    """
    The gateway cannot start (a port in use, a socket it may not bind).

    Raised from C{startService}, so twistd does not run the reactor: in the
    foreground the process exits non-zero (L{txgateway.tap} shows the
    message as one line instead of a traceback), and a daemonising twistd
    reports it to the parent, which exits 1.
    """

    oneLine = True  # shown as one line, not a traceback (txgateway.tap)


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

    def __init__(self, reactor: Any, description: str, factory: Any, inheritedFd: int | None = None) -> None:
        self.reactor = reactor
        self.description = description
        self.factory = factory
        self.inheritedFd = inheritedFd
        self.port: Any = None
        self.listening: Deferred[Any] | None = None

    def startService(self) -> None:
        super().startService()
        if self.inheritedFd is not None:
            # A worker: the supervisor bound the socket (see workers.py).
            self.listening = maybeDeferred(_adopt, self.reactor, self.inheritedFd, self.factory)
        else:
            self.listening = serverFromString(self.reactor, self.description).listen(self.factory)

        def listening(port: Any) -> Any:
            self.port = port
            return port

        self.listening.addCallback(listening)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
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

