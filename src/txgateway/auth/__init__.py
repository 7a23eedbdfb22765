"""
Access control at the edge: API keys, JWT and basic auth, per route.

A route's C{auth:} policy lists one or more methods; a request passes when
any one of them admits it.  Each method is an L{IAuthenticator} that looks
only at its own kind of credential and says "absent" when there is none, so
a policy can mix them (a Bearer token or an API key) without them
stepping on each other.  The filter then:

  - answers 401 with one C{WWW-Authenticate} challenge per method (so a
    client learns every way in), 403 when the identity is not allowed,
    503 when a credential could not be checked (JWKS not loaded yet,
    password checks saturated);
  - on success sets C{context.identity} (rate limiting by consumer and the
    access log read it), forwards it in the policy's C{forward_identity}
    header after removing any copy the client sent, and removes the
    credentials themselves from what the backend receives.

Credentials are never logged: log lines here name the route, the method and
a reason, never a header value, and the access log has no query string.

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
import json
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import jwt
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txgateway.context import LocalResponse, RequestContext
from txgateway.interfaces import IAuthenticator, IRequestFilter
from txgateway.middleware import jsonResponse

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.iweb import IAgent

    from txgateway.config import ApiKeyAuth, AuthPolicy, BasicAuth, JwtAuth
    from txgateway.middleware import Deps
    from txgateway.observe import Metrics
    from txgateway.routing import CompiledRoute

log = Logger(namespace="txgateway.auth")

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


# --------------------------------------------------------------------------
# API keys


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


# --------------------------------------------------------------------------
# JWT

_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class _Key:
    """One public key from a JWKS document."""

    __slots__ = ("kid", "alg", "kty", "key")

    def __init__(self, kid: str | None, alg: str | None, kty: str, key: Any) -> None:
        self.kid = kid
        self.alg = alg
        self.kty = kty
        self.key = key

    def fits(self, alg: str) -> bool:
        """Only a key of the token's family, and of its exact algorithm when the JWK names one."""
        return (self.alg is None or self.alg == alg) and _FAMILY.get(alg[:2]) == self.kty


def parseJWKS(document: bytes) -> list[_Key]:
    """The usable signing keys of a JWKS document; raises ValueError when it is not one."""
    data = json.loads(document)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("not a JWKS document (no \"keys\" list)")
    keys = []
    for entry in data["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # encryption keys and symmetric ("oct") keys are never used to verify
        try:
            parsed = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue
        kid = entry.get("kid")
        alg = entry.get("alg")
        keys.append(_Key(kid if isinstance(kid, str) else None, alg if isinstance(alg, str) else None,
                         entry["kty"], parsed.key))
    return keys


class JwksKeys:
    """
    The keys published at a JWKS URL, fetched asynchronously and cached.

    Refreshed in the background every C{refreshEvery} seconds (checked
    lazily when a request needs a key), and at once when a token names a
    C{kid} we do not know, which is how a rotation is picked up, but at most
    once per C{minRefresh} seconds so that tokens with made-up kids cannot
    turn the gateway into a flood against the identity provider.  A failed
    fetch keeps the previous keys.  Until a first fetch succeeds, lookups
    raise L{KeysUnavailable} (the filter answers 503).
    """

    maxBytes = 1024 * 1024

    def __init__(self, url: str, clock: IReactorTime, agent: Callable[[], IAgent], timeout: float = 5.0,
                 refreshEvery: float = 300.0, minRefresh: float = 30.0) -> None:
        self.url = url
        self.clock = clock
        self._agentFactory = agent
        self._agent: IAgent | None = None
        self.timeout = timeout
        self.refreshEvery = refreshEvery
        self.minRefresh = minRefresh
        self.keys: list[_Key] | None = None
        self.fetchedAt = float("-inf")
        self.lastAttempt = float("-inf")
        self._pending: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []

    def configure(self, timeout: float, refreshEvery: float, minRefresh: float) -> None:
        self.timeout = timeout
        self.refreshEvery = refreshEvery
        self.minRefresh = minRefresh

    def lookup(self, kid: str | None, alg: str) -> list[_Key]:
        assert self.keys is not None
        return [k for k in self.keys if (kid is None or k.kid == kid) and k.fits(alg)]

    def keysFor(self, kid: str | None, alg: str) -> list[_Key] | Deferred[list[_Key]]:
        """The keys that may have signed a token with this C{kid} and C{alg} (maybe after a fetch)."""
        now = self.clock.seconds()
        if self.keys is None:
            if self._pending is None and now - self.lastAttempt < self.minRefresh:
                raise KeysUnavailable(self.url)
            return self._wait(kid, alg)
        if self._pending is None and now - self.fetchedAt >= self.refreshEvery and \
                now - self.lastAttempt >= self.minRefresh:
            self.refresh()
        found = self.lookup(kid, alg)
        if found or kid is None:
            return found
        if self._pending is not None or now - self.lastAttempt >= self.minRefresh:
            return self._wait(kid, alg)
        return found

    def _wait(self, kid: str | None, alg: str) -> Deferred[list[_Key]]:
        """Wait for the running fetch, starting one if none runs."""
        # Each waiter gets its own Deferred: a client that goes away cancels
        # its wait, never the fetch other requests are waiting on.  The
        # waiter is registered before the fetch starts, as a fetch may finish
        # at once.
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        self.refresh()

        def ready(_: None) -> list[_Key]:
            if self.keys is None:
                raise KeysUnavailable(self.url)
            return self.lookup(kid, alg)

        return d.addCallback(ready)

    def refresh(self) -> Deferred[None]:
        """Start a fetch (unless one is running); the Deferred never fails."""
        if self._pending is not None:
            return self._pending
        self.lastAttempt = self.clock.seconds()
        fetched = ensureDeferred(self._fetch())
        fetched.addTimeout(self.timeout, self.clock)
        d: Deferred[None] = fetched.addCallbacks(self._loaded, self._failed)
        self._pending = d
        d.addBoth(self._settled)
        return d

    async def _fetch(self) -> bytes:
        import treq
        from treq.client import HTTPClient

        if self._agent is None:
            self._agent = self._agentFactory()
        client = HTTPClient(self._agent)
        response = await client.get(self.url, headers=Headers({b"Accept": [b"application/json"]}), unbuffered=True)
        chunks: list[bytes] = []
        size = [0]

        def collect(data: bytes) -> None:
            size[0] += len(data)
            if size[0] > self.maxBytes:
                raise ValueError(f"JWKS document larger than {self.maxBytes} bytes")
            chunks.append(data)

        await treq.collect(response, collect)
        if response.code != 200:
            raise ValueError(f"JWKS URL answered {response.code}")
        return b"".join(chunks)

    def _loaded(self, body: bytes) -> None:
        try:
            keys = parseJWKS(body)
        except ValueError as e:
            log.error("JWKS from {url} rejected, keeping the previous keys: {why}", url=self.url, why=str(e))
            return
        if not keys:
            log.error("JWKS from {url} has no usable signing key, keeping the previous keys", url=self.url)
            return
        self.keys = keys
        self.fetchedAt = self.clock.seconds()
        log.info("loaded {n} key(s) from {url}", n=len(keys), url=self.url)

    def _failed(self, failure: Any) -> None:
        log.error("fetching JWKS from {url} failed, keeping the previous keys: {why}",
                  url=self.url, why=failure.getErrorMessage() or failure.type.__name__)

    def _settled(self, _: Any) -> None:
        self._pending = None
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.called:
                w.callback(None)


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

    def verifyWith(self, token: str, keys: list[_Key]) -> AuthResult:
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
        if not identity or not _printable(identity):
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


def _printable(text: str) -> bool:
    return all(c >= " " and c != "\x7f" for c in text)


# --------------------------------------------------------------------------
# Basic


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
        if not sep or not user or not _printable(user):
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


# --------------------------------------------------------------------------
# Shared resources and the filter


class AuthResources:
    """
    What the access-control filters share across routes and reloads.

    Kept in L{Deps.shared} so a reload keeps JWKS keys already fetched and
    the password threads already started.  Tests put their own instance
    there (an in-memory agent, a synchronous or manual thread runner).
    """

    def __init__(self, reactor: Any, clock: IReactorTime, agent: IAgent | None = None,
                 runInThread: Callable[..., Deferred[Any]] | None = None, threads: int = 2) -> None:
        self.reactor = reactor
        self.clock = clock
        self.agent = agent
        self.threads = threads
        self._run = runInThread
        self._pool: Any = None
        self.passwords = PasswordChecks(clock, self.runInThread)
        self.jwks: dict[str, JwksKeys] = {}

    def threadPool(self) -> Any:
        """Our own pool, started on first use and stopped when the reactor shuts down."""
        if self._pool is None:
            from twisted.python.threadpool import ThreadPool

            self._pool = ThreadPool(0, self.threads, "txgateway-auth")
            self._pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        return self._pool

    def runInThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._run is not None:
            return self._run(f, *args)
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, self.threadPool(), f, *args)

    def makeAgent(self) -> IAgent:
        if self.agent is not None:
            return self.agent
        from twisted.web.client import Agent

        return Agent(self.reactor)

    def jwksFor(self, config: JwtAuth) -> JwksKeys:
        assert config.jwks_url is not None
        keys = self.jwks.get(config.jwks_url)
        if keys is None:
            keys = self.jwks[config.jwks_url] = JwksKeys(config.jwks_url, self.clock, self.makeAgent,
                                                         config.jwks_timeout, config.jwks_refresh,
                                                         config.jwks_min_refresh)
        else:
            keys.configure(config.jwks_timeout, config.jwks_refresh, config.jwks_min_refresh)
        return keys


def resourcesFor(deps: Deps) -> AuthResources:
    res = deps.shared.get(SHARED_KEY)
    if res is None:
        res = deps.shared[SHARED_KEY] = AuthResources(deps.reactor, deps.clock)
    return res  # type: ignore[no-any-return]


_MESSAGES = {"missing": "authentication required"}


@implementer(IRequestFilter)
class AuthFilter:
    """A route's auth policy: any one authenticator admitting is enough."""

    def __init__(self, policy: AuthPolicy, authenticators: Sequence[Any], metrics: Metrics | None = None,
                 routeName: str = "") -> None:
        self.policy = policy
        self.authenticators = tuple(authenticators)
        self.metrics = metrics
        self.routeName = routeName
        self.forwardName = policy.forward_identity.encode() if policy.forward_identity else None
        self.allowed = frozenset(policy.allowed_identities) or None
        self.keep = policy.keep_credentials

    def filterRequest(self, context: RequestContext) -> LocalResponse | None | Deferred[LocalResponse | None]:
        if self.forwardName is not None:
            context.removeHeaders.append(self.forwardName)  # the client's copy never reaches the backend
        results: list[AuthResult] = []
        for i, authenticator in enumerate(self.authenticators):
            r = authenticator.authenticate(context)
            if isinstance(r, Deferred):
                return ensureDeferred(self._resume(context, r, i, results))
            if r.outcome == ADMIT:
                return self.admitted(context, r)
            results.append(r)
        return self.refused(context, results)

    async def _resume(self, context: RequestContext, pending: Deferred[AuthResult], index: int,
                      results: list[AuthResult]) -> LocalResponse | None:
        r = await pending
        while True:
            if r.outcome == ADMIT:
                return self.admitted(context, r)
            results.append(r)
            index += 1
            if index >= len(self.authenticators):
                return self.refused(context, results)
            nxt = self.authenticators[index].authenticate(context)
            r = await nxt if isinstance(nxt, Deferred) else nxt

    def admitted(self, context: RequestContext, result: AuthResult) -> LocalResponse | None:
        identity = result.identity
        assert identity is not None
        if self.allowed is not None and identity not in self.allowed:
            self.count("forbidden")
            log.info("route {route}: identity {identity} not allowed", route=self.routeName, identity=identity)
            return jsonResponse(context, 403, "forbidden: this identity may not use this route", reason="forbidden")
        context.identity = identity
        if self.forwardName is not None:
            context.forwardHeaders.append((self.forwardName, identity.encode("utf-8")))
        if not self.keep:
            for a in self.authenticators:
                a.removeCredential(context)
        return None

    def refused(self, context: RequestContext, results: list[AuthResult]) -> LocalResponse:
        unavailable = [r for r in results if r.outcome == UNAVAILABLE]
        if unavailable:
            reason = unavailable[0].reason
            self.count(reason)
            return jsonResponse(context, 503, "service unavailable: credentials cannot be checked right now",
                                [(b"Retry-After", b"5")], reason=reason)
        refusals = [r for r in results if r.outcome == REFUSE]
        reason = refusals[0].reason if refusals else "missing"
        self.count(reason)
        challenges: list[tuple[bytes, bytes]] = []
        for a, r in zip(self.authenticators, results, strict=True):
            challenges.append((b"WWW-Authenticate", r.challenge or a.challenge))
        message = _MESSAGES.get(reason, "invalid credentials")
        return jsonResponse(context, 401, f"unauthorized: {message}", challenges, reason=reason)

    def count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.authFailures.labels(self.routeName, reason).inc()


def authenticatorsFor(policy: AuthPolicy, resources: AuthResources) -> list[Any]:
    """The policy's methods, cheapest first: a key lookup, a signature check, then a password hash."""
    out: list[Any] = []
    if policy.api_key is not None:
        out.append(ApiKeyAuthenticator(policy.api_key))
    if policy.jwt is not None:
        jwks = resources.jwksFor(policy.jwt) if policy.jwt.jwks_url else None
        out.append(JwtAuthenticator(policy.jwt, resources.clock, jwks))
    if policy.basic is not None:
        out.append(BasicAuthenticator(policy.basic, resources.passwords))
    return out


def authFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    """The route's authentication, or None when the route has no C{auth:}."""
    policy = route.config.auth
    if policy is None:
        return None
    return AuthFilter(policy, authenticatorsFor(policy, resourcesFor(deps)), deps.metrics, route.name)


__all__ = ["AuthFilter", "AuthResources", "AuthResult", "ApiKeyAuthenticator", "BasicAuthenticator",
           "JwksKeys", "JwtAuthenticator", "authFilter"]
