# -*- test-case-name: tests.test_tls_server -*-
"""
A TLS listener's certificate, read again when cert-manager rotates it.

An C{ssl:} listener string (C{ssl:8443:privateKey=tls.key:certKey=tls.crt})
is split by L{splitSSL} into the plain C{tcp:} endpoint the gateway listens
(or, in a worker, adopts its socket) on and the files of
L{ServerCertificates}: an C{IOpenSSLServerConnectionCreator} that
Twisted's C{TLSMemoryBIOFactory} asks for every accepted connection.  It
answers from the certificate it holds now, so once L{ServerCertificates.refresh}
has taken a rotated one, new connections get it while open ones keep
theirs; a rotated file that cannot be used is refused with a log line and
the old certificate keeps serving.  ALPN (C{h2}) is Twisted's as before:
the options offer what the wrapped site's C{acceptableProtocols} says.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.ssl import CertificateOptions, DiffieHellmanParameters
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from zope.interface import implementer

from txgateway.tls.pem import (
    CertificateProblem,
    KeyedCertificate,
    Observer,
    describe,
    expiry,
    readKeyedCertificate,
    stamp,
)

__all__ = ["ServerCertificates", "SSLFiles", "splitSSL"]

log = Logger(namespace="txgateway.tls")

# The keys of Twisted's ssl: endpoint this module handles; a string using
# any other (sslmethod=...) is left to Twisted's own endpoint, unwatched.
_TCP_KEYS = ("port", "interface", "backlog")
_TLS_KEYS = ("privateKey", "certKey", "extraCertChain", "dhParameters")


class SSLFiles:
    """The files an C{ssl:} string names (paths as written: relative to the working directory, as twistd reads them)."""

    def __init__(self, privateKey: str, certKey: str | None = None, extraCertChain: str | None = None,
                 dhParameters: str | None = None) -> None:
        self.privateKey = privateKey
        self.certKey = certKey or privateKey  # as Twisted: one PEM file may hold both
        self.extraCertChain = extraCertChain
        self.dhParameters = dhParameters

    @property
    def paths(self) -> list[str]:
        return [p for p in (self.privateKey, self.certKey, self.extraCertChain, self.dhParameters) if p]


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def splitSSL(description: str) -> tuple[str, SSLFiles] | None:
    """
    (the C{tcp:} string to listen with, the TLS files) of an C{ssl:} string;
    None when it is not one, or uses options this module leaves to Twisted.
    """
    kind, _, rest = description.partition(":")
    if kind != "ssl" or not rest:
        return None
    fields = [_unescape(f) for f in re.split(r"(?<!\\):", rest)]
    tcp: list[str] = []
    tls: dict[str, str] = {}
    for i, f in enumerate(fields):
        key, eq, value = f.partition("=")
        if not eq:
            if i != 0:
                return None
            tcp.append(f)  # the port, positional
        elif key in _TCP_KEYS:
            tcp.append(f"{key}={value.replace(':', chr(92) + ':')}")
        elif key in _TLS_KEYS:
            tls[key] = value
        else:
            return None
    return "tcp:" + ":".join(tcp), SSLFiles(tls.get("privateKey", "server.pem"), tls.get("certKey"),
                                            tls.get("extraCertChain"), tls.get("dhParameters"))


def _options(files: SSLFiles, material: KeyedCertificate) -> CertificateOptions:
    key, cert, chain = material.openSSL()
    dh = DiffieHellmanParameters.fromFile(FilePath(files.dhParameters)) if files.dhParameters else None
    options = CertificateOptions(privateKey=key, certificate=cert, extraCertChain=chain, dhParameters=dh)
    try:
        options.getContext()  # builds it now: a key OpenSSL refuses is refused here, not on a client's handshake
    except SSL.Error as e:
        raise CertificateProblem(f"OpenSSL refuses {files.certKey!r} with {files.privateKey!r}: {e}") from None
    return options


@implementer(IOpenSSLServerConnectionCreator)
class ServerCertificates:
    """
    The certificate of one TLS listener, swapped for new connections when its
    files change.  Raises L{CertificateProblem} when the files cannot be used
    at start-up (the gateway then does not start).
    """

    def __init__(self, files: SSLFiles, what: str = "listener", observe: Observer | None = None) -> None:
        self.files = files
        self.what = what
        self.observe = observe
        self._stamp = stamp(files.paths)
        self.material = readKeyedCertificate(files.certKey, files.privateKey, files.extraCertChain)
        self._options = _options(files, self.material)
        self.reloads = 0
        self.refusals = 0
        if observe is not None:
            observe(expiry(self.material.certificate), None)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return self._options.serverConnectionForTLS(tlsProtocol)

    def refresh(self) -> bool:
        """Read the files again if they changed on disk; whether a new certificate was taken."""
        current = stamp(self.files.paths)
        if current == self._stamp:
            return False
        self._stamp = current  # bad files are read again only when they change again
        try:
            material = readKeyedCertificate(self.files.certKey, self.files.privateKey, self.files.extraCertChain)
            options = _options(self.files, material)
        except CertificateProblem as e:
            self._refused()
            log.error("{what}: TLS certificate files changed but cannot be used, keeping the current certificate "
                      "({current}): {reason}", what=self.what, current=describe(self.material.certificate),
                      reason=str(e))
            return False
        except Exception:  # a bug here must not stop the watch (LoopingCall) nor the old certificate
            self._refused()
            log.failure("{what}: reading rotated TLS files failed; keeping the current certificate", what=self.what)
            return False
        self.material, self._options = material, options
        self.reloads += 1
        if self.observe is not None:
            self.observe(expiry(material.certificate), "loaded")
        log.info("{what}: TLS certificate reloaded; new connections get {cert}", what=self.what,
                 cert=describe(material.certificate))
        return True

    def _refused(self) -> None:
        self.refusals += 1
        if self.observe is not None:
            self.observe(None, "refused")
