# -*- test-case-name: tests.test_auth -*-
"""
Bearer JWTs, checked against a shared secret, a PEM key or the keys of a JWKS URL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jwt
from twisted.internet.defer import Deferred
from zope.interface import implementer

from txgateway.auth.jwks import JwkKey, JwksKeys
from txgateway.auth.result import ABSENT, REFUSE, UNAVAILABLE, AuthResult, KeysUnavailable, admit, printable
from txgateway.context import RequestContext
from txgateway.interfaces import IAuthenticator

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.config import JwtAuth

_TIME_CLAIMS_OFF = {"verify_exp": False, "verify_nbf": False, "verify_iat": False}
_JWT_REASONS: list[tuple[type[Exception], str]] = [
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
]


@implementer(IAuthenticator)
class JwtAuthenticator:
    """
    Signed tokens, verified with PyJWT against an explicit algorithm list.

    The allowed algorithms come from the config and are always passed to
    PyJWT, so C{alg: none} and an HS256 token "signed" with an RS256 public
    key (algorithm confusion) are refused before any key is touched; a
    config cannot mix HMAC and public-key algorithms.  C{exp} and C{nbf}
    are checked here against the injected clock (PyJWT would read the wall
    clock), with C{leeway} either way.
    """

    def __init__(self, config: JwtAuth, clock: IReactorTime, jwks: JwksKeys | None = None) -> None:
        self.config = config
        self.clock = clock
        self.header = config.header.encode()
        self.bearer = config.header.lower() == "authorization"
        self.algorithms = list(config.algorithms)
        self.symmetric = all(a.startswith("HS") for a in self.algorithms)
        self.secret = config.secret
        self.staticKey: Any = None
        if config.public_key is not None:
            from cryptography.hazmat.primitives.serialization import load_pem_public_key

            self.staticKey = load_pem_public_key(config.public_key)
        self.jwks = jwks
        self.leeway = config.leeway
        required = set(config.required_claims)
        required.add(config.identity_claim)
        # Without a configured audience PyJWT would refuse every token that has an aud.
        self.options: Any = dict(_TIME_CLAIMS_OFF, require=sorted(required),
                                            verify_aud=config.audience is not None)
        self.challenge = b'Bearer realm="txgateway"'
        self.absent = AuthResult(ABSENT, challenge=self.challenge)

    def refused(self, reason: str, description: str) -> AuthResult:
        return AuthResult(REFUSE, reason=reason,
                          challenge=b'Bearer realm="txgateway", error="invalid_token", error_description="%s"'
                          % description.encode())

    def token(self, context: RequestContext) -> bytes | None:
        value = context.header(self.header)
        if value is None:
            return None
        value = value.strip()
        scheme, _, rest = value.partition(b" ")
        if scheme.lower() == b"bearer":
            return rest.strip() or None
        return None if self.bearer else (value or None)

    def authenticate(self, context: RequestContext) -> AuthResult | Deferred[AuthResult]:
        raw = self.token(context)
        if raw is None:
            return self.absent
        try:
            token = raw.decode("ascii")
            header = jwt.get_unverified_header(token)
        except (UnicodeDecodeError, jwt.PyJWTError):
            return self.refused("bad_token", "malformed token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            return self.refused("bad_token", "algorithm not allowed")
        if self.symmetric:
            return self.verify(token, [self.secret])
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        if self.jwks is None:
            return self.verify(token, [self.staticKey])
        try:
            found = self.jwks.keysFor(kid, alg)
        except KeysUnavailable:
            return AuthResult(UNAVAILABLE, reason="jwks_unavailable", challenge=self.challenge)
        if isinstance(found, Deferred):
            return found.addCallbacks(lambda keys: self.verifyWith(token, keys), self._unavailable)
        return self.verifyWith(token, found)

    def _unavailable(self, failure: Any) -> AuthResult:
        failure.trap(KeysUnavailable)
        return AuthResult(UNAVAILABLE, reason="jwks_unavailable", challenge=self.challenge)

    def verifyWith(self, token: str, keys: list[JwkKey]) -> AuthResult:
        candidates = [k.key for k in keys]
        if self.staticKey is not None:
            candidates.append(self.staticKey)
        if not candidates:
            return self.refused("unknown_key", "unknown signing key")
        return self.verify(token, candidates)

    def verify(self, token: str, keys: Sequence[Any]) -> AuthResult:
        c = self.config
        claims = None
        result = self.refused("bad_signature", "invalid signature")
        for key in keys:
            try:
                claims = jwt.decode(token, key, algorithms=self.algorithms, audience=c.audience, issuer=c.issuer,
                                    options=self.options)
                break
            except jwt.InvalidSignatureError:
                continue  # try the next candidate key
            except (jwt.PyJWTError, TypeError, ValueError) as e:
                return self.refused(_reasonFor(e), _describe(e))
        if claims is None:
            return result
        now = self.clock.seconds()
        for name in ("exp", "nbf"):
            value = claims.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return self.refused("bad_token", f"{name} is not a number")
        exp = claims.get("exp")
        if exp is not None and now > exp + self.leeway:
            return self.refused("expired", "token expired")
        nbf = claims.get("nbf")
        if nbf is not None and now < nbf - self.leeway:
            return self.refused("not_yet_valid", "token not yet valid")
        identity = claims.get(c.identity_claim)
        if isinstance(identity, bool) or not isinstance(identity, (str, int)):
            return self.refused("bad_token", f"{c.identity_claim} is not a string")
        identity = str(identity)
        if not identity or not printable(identity):
            return self.refused("bad_token", f"{c.identity_claim} is not printable")
        return admit(identity)

    def removeCredential(self, context: RequestContext) -> None:
        context.removeHeaders.append(self.header)


def _reasonFor(e: Exception) -> str:
    for kind, reason in _JWT_REASONS:
        if isinstance(e, kind):
            return reason
    return "bad_token"


_DESCRIPTIONS = {"wrong_audience": "wrong audience", "wrong_issuer": "wrong issuer",
                 "missing_claim": "missing required claim", "bad_signature": "invalid signature"}


def _describe(e: Exception) -> str:
    """A fixed phrase for the challenge: never PyJWT's message, which may quote token contents."""
    return _DESCRIPTIONS.get(_reasonFor(e), "invalid token")


__all__ = ["JwtAuthenticator"]
