# -*- test-case-name: tests.test_auth -*-
"""
API keys, in a header or a query parameter, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from zope.interface import implementer

from txgateway.auth.result import ABSENT, REFUSE, AuthResult, admit
from txgateway.context import RequestContext
from txgateway.interfaces import IAuthenticator

if TYPE_CHECKING:
    from txgateway.config import ApiKeyAuth


@implementer(IAuthenticator)
class ApiKeyAuthenticator:
    """
    Keys stored as sha256 digests, presented in a header or a query parameter.

    The presented key is hashed and compared to every stored digest with
    C{hmac.compare_digest}, without stopping at the first match, so neither
    the comparison nor the position of the matching key shows in the timing.
    """

    def __init__(self, config: ApiKeyAuth) -> None:
        self.header = config.header.encode()
        self.param = config.query_param.encode() if config.query_param else None
        self.keys = tuple((name, bytes.fromhex(digest)) for name, _algo, digest in config.keys)
        where = f'header="{config.header}"' + (f', query="{config.query_param}"' if config.query_param else "")
        self.challenge = f'ApiKey realm="txgateway", {where}'.encode()
        self.absent = AuthResult(ABSENT, challenge=self.challenge)
        self.invalid = AuthResult(REFUSE, reason="invalid_key", challenge=self.challenge)

    def presented(self, context: RequestContext) -> bytes | None:
        value = context.header(self.header)
        if value is not None and value.strip():
            return value.strip()
        if self.param is not None and context.query:
            return queryValue(context.query, self.param)
        return None

    def authenticate(self, context: RequestContext) -> AuthResult:
        key = self.presented(context)
        if not key:
            return self.absent
        digest = hashlib.sha256(key).digest()
        found = None
        for name, stored in self.keys:
            if hmac.compare_digest(digest, stored):
                found = name
        return admit(found) if found is not None else self.invalid

    def removeCredential(self, context: RequestContext) -> None:
        context.removeHeaders.append(self.header)
        if self.param is not None and context.query:
            context.query = queryWithout(context.query, self.param)


def _queryPairs(query: bytes) -> list[tuple[bytes, bytes]]:
    """(decoded name, raw piece) for each C{&}-separated piece."""
    out = []
    for piece in query.split(b"&"):
        name = piece.partition(b"=")[0]
        out.append((unquote_to_bytes(name.replace(b"+", b" ")), piece))
    return out


def queryValue(query: bytes, name: bytes) -> bytes | None:
    """The decoded value of the first parameter C{name}, or None."""
    for decoded, piece in _queryPairs(query):
        if decoded == name:
            return unquote_to_bytes(piece.partition(b"=")[2].replace(b"+", b" "))
    return None


def queryWithout(query: bytes, name: bytes) -> bytes | None:
    """C{query} minus every C{name} parameter, the rest byte for byte; None when nothing is left."""
    kept = [piece for decoded, piece in _queryPairs(query) if decoded != name]
    return b"&".join(kept) if kept else None


__all__ = ["ApiKeyAuthenticator", "queryValue", "queryWithout"]
