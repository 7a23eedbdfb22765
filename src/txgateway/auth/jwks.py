# -*- test-case-name: tests.test_auth -*-
"""
The public keys a JWT is checked against, fetched from a JWKS URL and refreshed lazily.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from txgateway.auth.result import KeysUnavailable

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.iweb import IAgent

log = Logger(namespace="txgateway.auth")

_FAMILY = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


class JwkKey:
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


def parseJWKS(document: bytes) -> list[JwkKey]:
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
        keys.append(JwkKey(kid if isinstance(kid, str) else None, alg if isinstance(alg, str) else None,
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
        self.keys: list[JwkKey] | None = None
        self.fetchedAt = float("-inf")
        self.lastAttempt = float("-inf")
        self._pending: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []

    def configure(self, timeout: float, refreshEvery: float, minRefresh: float) -> None:
        self.timeout = timeout
        self.refreshEvery = refreshEvery
        self.minRefresh = minRefresh

    def lookup(self, kid: str | None, alg: str) -> list[JwkKey]:
        assert self.keys is not None
        return [k for k in self.keys if (kid is None or k.kid == kid) and k.fits(alg)]

    def keysFor(self, kid: str | None, alg: str) -> list[JwkKey] | Deferred[list[JwkKey]]:
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

    def _wait(self, kid: str | None, alg: str) -> Deferred[list[JwkKey]]:
        """Wait for the running fetch, starting one if none runs."""
        # Each waiter gets its own Deferred: a client that goes away cancels
        # its wait, never the fetch other requests are waiting on.  The
        # waiter is registered before the fetch starts, as a fetch may finish
        # at once.
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        self.refresh()

        def ready(_: None) -> list[JwkKey]:
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


__all__ = ["JwkKey", "JwksKeys", "parseJWKS"]
