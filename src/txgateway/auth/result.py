# -*- test-case-name: tests.test_auth -*-
"""
What an authenticator concludes about a request, shared by every method and the filter.
"""

from __future__ import annotations

SHARED_KEY = "txgateway.auth"

# Outcomes of one authenticator.
ADMIT = "admit"
ABSENT = "absent"
REFUSE = "refuse"
UNAVAILABLE = "unavailable"


class AuthResult:
    """What one authenticator concluded about one request."""

    __slots__ = ("outcome", "identity", "reason", "challenge")

    def __init__(self, outcome: str, identity: str | None = None, reason: str = "", challenge: bytes = b"") -> None:
        self.outcome = outcome
        self.identity = identity
        # A short fixed word (a metrics label value), never derived from the credential.
        self.reason = reason
        self.challenge = challenge

    def __repr__(self) -> str:
        return f"<AuthResult {self.outcome} {self.identity or self.reason}>"


def admit(identity: str) -> AuthResult:
    return AuthResult(ADMIT, identity)


class KeysUnavailable(Exception):
    """No verification key could be loaded yet (JWKS unreachable)."""


def printable(text: str) -> bool:
    """No control characters: an identity that can go into a header and a log line as it is."""
    return all(c >= " " and c != "\x7f" for c in text)


__all__ = ["ABSENT", "ADMIT", "REFUSE", "SHARED_KEY", "UNAVAILABLE", "AuthResult", "KeysUnavailable", "admit",
           "printable"]
