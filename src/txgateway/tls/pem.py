# -*- test-case-name: tests.test_tls_client,tests.test_tls_config,tests.test_tls_server -*-
"""
Reading and checking PEM files, and telling whether they changed.

The same functions check the files when the config is loaded (a missing,
unreadable or non-PEM file, or a key that does not match its certificate,
is a config error naming the key) and when a rotated file is read again
while running (a bad one is refused and the old material kept): one notion
of "a usable file" for both.

A file's L{stamp} is its inode, size and modification time, read through
symbolic links: cert-manager and Kubernetes secret volumes swap a symlinked
directory atomically, which changes the inode the path resolves to even
when size and time happen to match.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = ["CertificateProblem", "KeyedCertificate", "Observer", "Stamp", "describe", "expiry", "readCertificates",
           "readKeyedCertificate", "stamp"]

# (inode, size, mtime in ns) of each file, None for a file that cannot be stat'ed.
Stamp = tuple[tuple[int, int, int] | None, ...]


# Told (the expiry of the certificate now in use, or None; "loaded" / "refused" after a change on
# disk, or None at start): how the metrics hear of certificates without this package importing them.
Observer = Callable[[float | None, str | None], None]


class CertificateProblem(Exception):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


def stamp(paths: Sequence[str]) -> Stamp:
    """What changes when any of C{paths} is replaced or rewritten."""
    out: list[tuple[int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateProblem(f"cannot read {what} {path!r}: {e.strerror or e}") from None


def readCertificates(path: str, what: str = "certificate file") -> list[x509.Certificate]:
    """Every certificate in the PEM file C{path}, in order; at least one."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise CertificateProblem(f"{what} {path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certs


def _readKey(path: str) -> Any:
    data = _read(path, "key file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateProblem(f"key file {path!r} is encrypted: give the gateway an unencrypted key") from None
    except (ValueError, Exception) as e:  # cryptography raises ValueError, or UnsupportedAlgorithm
        raise CertificateProblem(f"key file {path!r} holds no usable PEM private key ({e})") from None


def _publicBytes(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,  # type: ignore[no-any-return]
                            serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class KeyedCertificate:
    """A certificate, the chain sent after it, and its private key, known to match."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: Any  # a cryptography private key

    def openSSL(self) -> tuple[Any, Any, list[Any]]:
        """
        (key, certificate, chain) for Twisted's C{CertificateOptions}, which
        hands them to pyOpenSSL as they are: C{cryptography} objects, which
        pyOpenSSL takes (its own C{PKey} and C{X509} are deprecated there).
        """
        return self.key, self.certificate, list(self.chain)


def readKeyedCertificate(certPath: str, keyPath: str, chainPath: str | None = None) -> KeyedCertificate:
    """
    The certificate in C{certPath} (any further certificates there are its
    chain, as in cert-manager's C{tls.crt}; C{chainPath} adds more) and the
    key in C{keyPath}, which must be the certificate's.
    """
    certs = readCertificates(certPath)
    key = _readKey(keyPath)
    if _publicBytes(certs[0].public_key()) != _publicBytes(key.public_key()):
        raise CertificateProblem(f"key file {keyPath!r} is not the key of the certificate in {certPath!r}")
    chain = certs[1:] + (readCertificates(chainPath, "chain file") if chainPath else [])
    return KeyedCertificate(certs[0], tuple(chain), key)


def describe(cert: x509.Certificate) -> str:
    """C{serial 1f..., CN=api.internal, expires 2027-01-01 00:00 UTC}: for log lines about a loaded certificate."""
    try:
        subject = cert.subject.rfc4514_string()
    except ValueError:
        subject = "?"
    expires = cert.not_valid_after_utc
    left = expires - datetime.datetime.now(datetime.UTC)
    note = " (EXPIRED)" if left.total_seconds() < 0 else ""
    return f"serial {cert.serial_number:x}, {subject}, expires {expires:%Y-%m-%d %H:%M} UTC{note}"


def expiry(cert: x509.Certificate) -> float:
    """When C{cert} stops being valid, as Unix time."""
    return cert.not_valid_after_utc.timestamp()
