# -*- test-case-name: tests.test_tls_client -*-
"""
Why an attempt's TLS failed, in words: for the log line that goes with the
502 a client gets when a target's certificate is refused (or the target
refuses ours).

Loads nothing: pyOpenSSL's error class is looked up in C{sys.modules}, so a
gateway with no TLS anywhere never imports it for this.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python.failure import Failure

__all__ = ["tlsFailure"]


def _causes(failure: Failure) -> list[Any]:
    """The failure's exception and those it wraps (the Agent's ResponseNeverReceived and kin carry C{reasons})."""
    out = [failure.value]
    for reason in getattr(failure.value, "reasons", None) or ():
        if isinstance(reason, Failure):
            out.append(reason.value)
    return out


def _opensslWords(error: Exception) -> str:
    """OpenSSL's error queue (C{[('SSL routines', '', 'tlsv13 alert certificate required')]}) as its reasons."""
    args = error.args[0] if error.args else None
    if isinstance(args, list):
        words = [str(item[-1]) for item in args if isinstance(item, tuple) and item]
        if words:
            return "; ".join(words)
    return str(error) or type(error).__name__


def tlsFailure(failure: Failure) -> str | None:
    """C{"TLS handshake failed: certificate verify failed: certificate has expired (...)"}, or None if not TLS."""
    ssl = sys.modules.get("OpenSSL.SSL")
    if ssl is None:
        return None
    for cause in _causes(failure):
        if isinstance(cause, ssl.Error):
            return f"TLS handshake failed: {_opensslWords(cause)}"
        if type(cause).__module__.startswith("service_identity"):
            return f"TLS handshake failed: the certificate does not match the name: {cause}"
    return None
