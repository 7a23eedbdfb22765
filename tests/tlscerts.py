"""
Certificates made at test time with C{cryptography}: a private CA, the server
and client certificates it issues (valid, expired, for other names), and a
self-signed one.

Shared by every test that needs real TLS (unit tests of txgateway.tls, the
TLS listener and HTTP/2 end-to-end tests, the TLS-origin ones): keys are
P-256, quick to make, so each test makes its own and nothing is checked in.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Authority", "Issued", "handshake", "replaceFile", "selfSigned", "tlsProtocol"]

_DAY = datetime.timedelta(days=1)


def _keyPEM(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _altNames(names: Sequence[str]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for n in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            general.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(general)


@dataclass(frozen=True)
class Issued:
    """A key and its certificate, as PEM, and the certificate's serial number."""

    key: bytes
    cert: bytes
    serial: int

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write C{stem}.key and C{stem}.crt under C{directory} (each replaced whole); their paths (key, cert)."""
        keyPath, certPath = directory / f"{stem}.key", directory / f"{stem}.crt"
        replaceFile(keyPath, self.key)
        replaceFile(certPath, self.cert)
        return keyPath, certPath


def replaceFile(path: Path, data: bytes) -> None:
    """
    Write C{path} as a rotation does: a new file renamed over the old (a new
    inode), so a watcher sees the change even when size and time match.
    """
    partial = path.with_name(path.name + ".new")
    partial.write_bytes(data)
    os.replace(partial, path)


class Authority:
    """A private certificate authority that issues server and client certificates."""

    def __init__(self, name: str = "txgateway test CA") -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY).not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256()))

    @property
    def pem(self) -> bytes:
        """The CA certificate: what a C{ca_file} holds."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: Sequence[str] = ("127.0.0.1", "localhost"), client: bool = False,
              expired: bool = False, commonName: str | None = None) -> Issued:
        """
        A leaf certificate for C{names} (IP addresses and DNS names, as
        subjectAltName), for a server or (C{client}) a client; C{expired}
        makes one whose validity ended yesterday.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - 10 * _DAY, now - _DAY) if expired else (now - datetime.timedelta(minutes=5), now + _DAY)
        serial = x509.random_serial_number()
        cn = commonName or (names[0] if names else "client")
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.name).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False))
        if names:
            builder = builder.add_extension(_altNames(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(_keyPEM(key), cert.public_bytes(serialization.Encoding.PEM), serial)


def selfSigned(name: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) for C{name}, self-signed, valid for a day: a listener's certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + _DAY)
            .add_extension(_altNames([name]), critical=False)
            .sign(key, hashes.SHA256()))
    return _keyPEM(key), cert.public_bytes(serialization.Encoding.PEM)


def handshake(client: Any, server: Any, rounds: int = 20) -> Any:
    """
    Run a TLS handshake between two pyOpenSSL connections in memory (no
    sockets, no reactor); the server certificate the client got, as a
    C{cryptography} certificate.  Raises what either side's handshake raised.
    """
    from OpenSSL import SSL

    client.set_connect_state()
    server.set_accept_state()
    for _ in range(rounds):
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                pass
            try:
                b.bio_write(a.bio_read(65536))
            except SSL.WantReadError:
                pass
    return client.get_peer_certificate(as_cryptography=True)


def tlsProtocol() -> Any:
    """Stands for Twisted's TLS protocol where a connection creator asks it for ALPN (no site: none offered)."""
    return SimpleNamespace(factory=SimpleNamespace(wrappedFactory=object()))
