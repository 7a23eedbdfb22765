# -*- test-case-name: tests.test_tls_client -*-
"""
An upstream's TLS policy: what every new connection to one of its
C{https://} targets is made with.

L{ClientTLSPolicy.creatorFor} is asked for each new connection (the
HTTP/1.1 pool's endpoints, and the HTTP/2 client with C{alpn}); it answers
a connection creator for Twisted's TLS layer built from the upstream's
C{tls} section: the CA that signs the targets (else the system store), the
client certificate of mutual TLS, the name sent as SNI and checked in the
target's certificate (C{server_name}, else the target's host), the lowest
TLS version, or (C{verify: false}) no check at all.

Why not C{optionsForClientTLS}: it checks the host name after the
handshake and reports a failed check as a bare C{certificate verify
failed}.  Here the check runs in OpenSSL's verify callback and a refusal
raises L{CertificateRejected} saying why (expired, unknown CA, wrong
name), which reaches the attempt loop's log line and the 502.

Rotation: the files are looked at (a stat each, no read) when a connection
is made, at most every L{CHECK_EVERY} seconds of the injected clock; when
their inode, size or time changed they are read and checked again.  Good
new files serve the connections made from then on (open connections keep
theirs); bad ones are refused with a log line and the old material stays.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, platformTrust, trustRootFromCertificates
from twisted.logger import Logger
from zope.interface import implementer

from txgateway.tls.pem import (
    CertificateProblem,
    KeyedCertificate,
    Observer,
    describe,
    expiry,
    readCertificates,
    readKeyedCertificate,
    stamp,
)

if TYPE_CHECKING:
    from txgateway.config.schema_tls import UpstreamTLS

__all__ = ["CHECK_EVERY", "CertificateRejected", "ClientTLSPolicy"]

log = Logger(namespace="txgateway.tls")

#: Seconds between looks at a policy's files for a rotation.
CHECK_EVERY = 2.0

_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

# OpenSSL's X509_V_ERR_* codes a misconfigured target most often earns, in OpenSSL's words.
_X509_ERRORS = {
    2: "unable to get issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate (not signed by a trusted CA)",
    21: "unable to verify the first certificate",
    26: "unsupported certificate purpose",
}


class CertificateRejected(SSL.Error):
    """
    The target's certificate failed verification; the message says why.

    An C{SSL.Error} shaped as OpenSSL's (an error queue of (library,
    function, reason) as its one argument), so Twisted's TLS layer fails the
    handshake with it as it would with OpenSSL's own error, and reads it the
    same way.
    """

    def __init__(self, reason: str) -> None:
        super().__init__([("txgateway", "verify", reason)])
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def _isIP(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _subject(cert: Any) -> str:
    try:
        return str(cert.to_cryptography().subject.rfc4514_string())
    except Exception:
        return "?"


def _verifier(name: str) -> Any:
    """The verify callback for a target that must present a certificate valid for C{name}."""
    from service_identity import CertificateError, VerificationError
    from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

    byIP = _isIP(name)

    def verify(connection: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            reason = _X509_ERRORS.get(errno, f"X.509 error {errno}")
            raise CertificateRejected(f"certificate verify failed: {reason} ({_subject(cert)}, depth {depth})")
        if depth == 0:
            try:
                if byIP:
                    verify_certificate_ip_address(cert.to_cryptography(), name)
                else:
                    verify_certificate_hostname(cert.to_cryptography(), name)
            except (VerificationError, CertificateError):
                raise CertificateRejected(f"certificate verify failed: the certificate ({_subject(cert)}) is not "
                                          f"valid for {name!r}") from None
        return True

    return verify


@implementer(IOpenSSLClientConnectionCreator)
class _Creator:
    """Connections from one context (per target name and ALPN list), with SNI set."""

    def __init__(self, options: CertificateOptions, sni: bytes | None) -> None:
        self.options = options
        self.sni = sni

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = self.options.clientConnectionForTLS(tlsProtocol)
        if self.sni is not None:
            connection.set_tlsext_host_name(self.sni)
        return connection


class _Material:
    """What the files held when last read: the trust root and the client certificate."""

    def __init__(self, spec: UpstreamTLS | None) -> None:
        self.trust: Any = None
        self.client: KeyedCertificate | None = None
        if spec is None or spec.verify:
            if spec is not None and spec.ca_file is not None:
                cas = readCertificates(spec.ca_file, "CA file")
                self.trust = trustRootFromCertificates([Certificate(crypto.X509.from_cryptography(c)) for c in cas])
            else:
                self.trust = platformTrust()
        if spec is not None and spec.cert_file is not None and spec.key_file is not None:
            self.client = readKeyedCertificate(spec.cert_file, spec.key_file)


class ClientTLSPolicy:
    """
    The TLS of one upstream's connections to its targets (C{upstreams.NAME.tls},
    or the defaults for an C{https://} target without one).

    Raises L{CertificateProblem} when built from files that cannot be used
    (the config was checked when loaded; a file can change after that).
    """

    def __init__(self, upstream: str, spec: UpstreamTLS | None, clock: IReactorTime,
                 checkEvery: float = CHECK_EVERY, observe: Observer | None = None) -> None:
        self.upstream = upstream
        self.observe = observe
        self.spec = spec
        self.clock = clock
        self.checkEvery = checkEvery
        self.paths = [p for p in ((spec.ca_file, spec.cert_file, spec.key_file) if spec else ()) if p]
        self._stamp = stamp(self.paths)
        self._material = _Material(spec)
        self._nextCheck = clock.seconds() + checkEvery
        self._creators: dict[tuple[str, tuple[bytes, ...]], _Creator] = {}
        #: How many times new files were taken, and refused (for tests and the status of rotation).
        self.reloads = 0
        self.refusals = 0
        if spec is not None and not spec.verify:
            log.warn("upstream {upstream}: tls.verify is false: the certificates of its targets are NOT checked, "
                     "so anyone on the network path can read and change its traffic. For development only.",
                     upstream=upstream)
        if self._material.client is not None:
            if observe is not None:
                observe(expiry(self._material.client.certificate), None)
            log.info("upstream {upstream}: client certificate {cert}", upstream=upstream,
                     cert=describe(self._material.client.certificate))

    @property
    def clientCertificate(self) -> KeyedCertificate | None:
        """The client certificate in use (mutual TLS), or None."""
        return self._material.client

    def creatorFor(self, host: str, alpn: tuple[bytes, ...] = ()) -> IOpenSSLClientConnectionCreator:
        """
        What a new TLS connection to C{host} is made with; C{alpn} lists the
        protocols to offer (the HTTP/2 client offers C{h2}).
        """
        self.refresh()
        key = (host, alpn)
        creator = self._creators.get(key)
        if creator is None:
            if len(self._creators) >= 256:  # discovered targets come and go: keep the cache bounded
                self._creators.clear()
            creator = self._creators[key] = self._make(host, alpn)
        return creator

    def _make(self, host: str, alpn: tuple[bytes, ...]) -> _Creator:
        spec = self.spec
        material = self._material
        name = (spec.server_name if spec is not None else None) or host
        kwargs: dict[str, Any] = {}
        if spec is not None and spec.min_version is not None:
            kwargs["raiseMinimumTo"] = _VERSIONS[spec.min_version]
        if material.client is not None:
            key, cert, chain = material.client.openSSL()
            kwargs.update(privateKey=key, certificate=cert, extraCertChain=chain)
        if alpn:
            kwargs["acceptableProtocols"] = list(alpn)
        verify = spec is None or spec.verify
        if verify:
            options = CertificateOptions(trustRoot=material.trust, **kwargs)
            # Our callback replaces Twisted's (which only passes OpenSSL's verdict on):
            # the same checks, plus the host name, each refusal saying why.
            options.getContext().set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verifier(name))
        else:
            options = CertificateOptions(verify=False, **kwargs)
        return _Creator(options, None if _isIP(name) else name.encode("idna"))

    def refresh(self) -> bool:
        """
        Read the files again if they changed (looked at no more than every
        C{checkEvery} seconds); whether new material was taken.
        """
        now = self.clock.seconds()
        if not self.paths or now < self._nextCheck:
            return False
        self._nextCheck = now + self.checkEvery
        current = stamp(self.paths)
        if current == self._stamp:
            return False
        # Noted even when the new files are bad: they are read again only
        # when they change again, not every few seconds with a log line each.
        self._stamp = current
        try:
            material = _Material(self.spec)
        except CertificateProblem as e:
            self.refusals += 1
            if self.observe is not None:
                self.observe(None, "refused")
            log.error("upstream {upstream}: TLS files changed but cannot be used, keeping the previous ones: "
                      "{reason}", upstream=self.upstream, reason=str(e))
            return False
        self._material = material
        self._creators.clear()
        self.reloads += 1
        client = material.client
        if self.observe is not None:
            self.observe(expiry(client.certificate) if client is not None else None, "loaded")
        log.info("upstream {upstream}: TLS files reloaded; new connections use them{cert}", upstream=self.upstream,
                 cert=f" (client certificate {describe(client.certificate)})" if client is not None else "")
        return True
