# -*- test-case-name: tests.test_auth -*-
"""
HTTP basic auth against bcrypt or argon2 hashes, checked off the reactor thread.

Password hashes are deliberately slow (bcrypt ~50-100 ms at cost 10-12,
argon2 similar): run on the reactor thread, a handful of concurrent logins
would stall every request the process is handling.  So checks run on a
small threadpool of our own (not the reactor's, which also resolves host
names), and a successful check is remembered for C{cache_ttl} keyed by a
keyed hash of user, password and stored hash: clients send the same basic
credentials on every request, and paying a bcrypt per request would cap
the route at a few dozen requests per second per core.  Failures are not
cached (they are the rate limiter's business), and changing a user's hash
invalidates its cache entries because the stored hash is part of the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txgateway.auth.result import ABSENT, REFUSE, UNAVAILABLE, AuthResult, admit, printable
from txgateway.context import RequestContext
from txgateway.interfaces import IAuthenticator

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.config import BasicAuth

log = Logger(namespace="txgateway.auth")

def checkPassword(stored: str, password: bytes) -> bool:
    """Verify against a bcrypt or argon2 hash.  Slow on purpose: call it off the reactor thread."""
    if stored.startswith("$argon2"):
        import argon2

        try:
            return bool(argon2.PasswordHasher().verify(stored, password))
        except argon2.exceptions.Argon2Error:
            return False
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, stored.encode()))
    except ValueError:  # longer than bcrypt's 72 bytes, or a damaged hash
        return False


class PasswordChecks:
    """
    Where password hashes are verified: a small threadpool plus a short cache of successes.

    Shared by every basic-auth route and kept across reloads (it lives in
    L{Deps.shared}).  C{maxPending} bounds the queue: beyond it a request gets
    503 at once instead of waiting behind thousands of bcrypt runs.
    """

    maxEntries = 10_000
    maxPending = 64

    def __init__(self, clock: IReactorTime, runInThread: Callable[..., Deferred[Any]]) -> None:
        self.clock = clock
        self.runInThread = runInThread
        self.pending = 0
        self._secret = os.urandom(32)
        self._verified: dict[bytes, float] = {}

    def cacheKey(self, user: str, password: bytes, stored: str) -> bytes:
        return hmac.new(self._secret, b"\0".join((user.encode(), password, stored.encode())), hashlib.sha256).digest()

    def known(self, key: bytes) -> bool:
        expires = self._verified.get(key)
        if expires is None:
            return False
        if expires < self.clock.seconds():
            del self._verified[key]
            return False
        return True

    def remember(self, key: bytes, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._verified) >= self.maxEntries:
            now = self.clock.seconds()
            self._verified = {k: t for k, t in self._verified.items() if t >= now}
            if len(self._verified) >= self.maxEntries:
                self._verified.clear()
        self._verified[key] = self.clock.seconds() + ttl

    def check(self, stored: str, password: bytes) -> Deferred[bool]:
        """
        Fire with the verdict.  Cancelling the returned Deferred (the client
        went away) abandons the wait, but the check keeps its place in
        C{pending} until its thread really finishes, so disconnecting
        clients cannot pile up unbounded work.
        """
        self.pending += 1
        work = self.runInThread(checkPassword, stored, password)
        out: Deferred[bool] = Deferred()

        def done(result: Any) -> None:
            self.pending -= 1
            if not out.called:
                if isinstance(result, Failure):
                    out.errback(result)
                else:
                    out.callback(result)

        work.addBoth(done)
        return out


@implementer(IAuthenticator)
class BasicAuthenticator:
    """
    RFC 7617 Basic credentials against bcrypt / argon2 hashes.

    An unknown user is checked against a real user's hash anyway (and then
    refused), so the answer takes as long as for a known user with a wrong
    password and does not reveal which names exist.
    """

    def __init__(self, config: BasicAuth, checks: PasswordChecks) -> None:
        self.users = dict(config.users)
        self.decoy = config.users[0][1] if config.users else ""
        self.ttl = config.cache_ttl
        self.checks = checks
        self.challenge = f'Basic realm="{config.realm}", charset="UTF-8"'.encode()
        self.absent = AuthResult(ABSENT, challenge=self.challenge)
        self.bad = AuthResult(REFUSE, reason="bad_password", challenge=self.challenge)

    def authenticate(self, context: RequestContext) -> AuthResult | Deferred[AuthResult]:
        value = context.header(b"authorization")
        if value is None:
            return self.absent
        scheme, _, param = value.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return self.absent
        try:
            decoded = base64.b64decode(param.strip(), validate=True)
            userBytes, sep, password = decoded.partition(b":")
            user = userBytes.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return AuthResult(REFUSE, reason="malformed", challenge=self.challenge)
        if not sep or not user or not printable(user):
            return AuthResult(REFUSE, reason="malformed", challenge=self.challenge)
        stored = self.users.get(user)
        key = self.checks.cacheKey(user, password, stored) if stored is not None else b""
        if stored is not None and self.checks.known(key):
            return admit(user)
        if self.checks.pending >= self.checks.maxPending:
            return AuthResult(UNAVAILABLE, reason="busy", challenge=self.challenge)

        def checked(ok: bool) -> AuthResult:
            if ok and stored is not None:
                self.checks.remember(key, self.ttl)
                return admit(user)
            return self.bad

        def failed(failure: Failure) -> AuthResult | Failure:
            if failure.check(CancelledError):
                return failure  # the client went away
            log.failure("password check failed unexpectedly", failure)
            return self.bad

        return self.checks.check(stored if stored is not None else self.decoy, password).addCallbacks(checked, failed)

    def removeCredential(self, context: RequestContext) -> None:
        context.removeHeaders.append(b"authorization")


__all__ = ["BasicAuthenticator", "PasswordChecks", "checkPassword"]
