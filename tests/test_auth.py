"""
Unit tests for access control: API keys, JWT (HMAC, PEM, JWKS), basic auth, IP rules.

Everything runs in memory on a L{Clock}: tokens are minted relative to the
clock, JWKS documents are served by an in-memory resource through
L{RequestTraversalAgent}, and password checks go through a manual "thread"
runner so a test can see that nothing was verified on the calling thread.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from treq.testing import RequestTraversalAgent
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from txgateway.auth import apikey
from txgateway.auth.apikey import ApiKeyAuthenticator, queryValue, queryWithout
from txgateway.auth.basic import BasicAuthenticator
from txgateway.auth.filter import AuthFilter, AuthResources, authenticatorsFor, authFilter
from txgateway.auth.jwks import JwksKeys, parseJWKS
from txgateway.auth.jwt import JwtAuthenticator
from txgateway.auth.result import SHARED_KEY, KeysUnavailable
from txgateway.config import (
    ApiKeyAuth,
    AuthPolicy,
    BasicAuth,
    ConfigError,
    JwtAuth,
    Target,
    parseConfig,
)
from txgateway.context import LocalResponse, RequestContext
from txgateway.interfaces import IAuthenticator, IRequestFilter
from txgateway.middleware import Deps, IPFilter
from txgateway.observe import Metrics
from txgateway.routing import CompiledRoute

NOW = 1_700_000_000.0
SECRET = b"unit-test-hs256-secret-0123456789abcdef-0123456789"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
BOB_HASH = bcrypt.hashpw(b"bob-password", bcrypt.gensalt(4)).decode()
CAROL_HASH = bcrypt.hashpw(b"carol-password", bcrypt.gensalt(4)).decode()
SHARED = Path("/work/shared")


def sha256(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def makeContext(headers: list[tuple[bytes, bytes]] | None = None, method: bytes = b"GET",
                query: bytes | None = None, clientIP: str = "127.0.0.1") -> RequestContext:
    request = DummyRequest([b""])
    request.method = method
    request.isSecure = lambda: False  # type: ignore[method-assign]
    for k, v in headers or []:
        request.requestHeaders.addRawHeader(k, v)
    return RequestContext(request, NOW, "req-1", clientIP, clientIP, method, "api.example.com", "/p", query)


def jwk(key: Any, kid: str, alg: str | None = None) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        out = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    else:
        out = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    out["kid"] = kid
    if alg is not None:
        out["alg"] = alg
    return out


def mint(claims: dict[str, Any], key: Any = SECRET, alg: str = "HS256", kid: str | None = None) -> bytes:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers).encode()


def bearer(token: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", b"Bearer " + token)]


def basic(user: str, password: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", b"Basic " + base64.b64encode(f"{user}:{password}".encode()))]


class ManualThreads:
    """Stands in for the password threadpool: work waits until the test runs it."""

    def __init__(self) -> None:
        self.queue: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.calls = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.calls += 1
        d: Deferred[Any] = Deferred()
        self.queue.append((f, args, d))
        return d

    def runAll(self) -> None:
        queue, self.queue = self.queue, []
        for f, args, d in queue:
            d.callback(f(*args))


class JWKSResource(Resource):
    """An identity provider's JWKS endpoint, in memory."""

    isLeaf = True

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        super().__init__()
        self.keys = keys
        self.hits = 0
        self.mode = "ok"  # ok | hang | error

    def render_GET(self, request: Any) -> Any:
        self.hits += 1
        if self.mode == "hang":
            return NOT_DONE_YET
        if self.mode == "error":
            request.setResponseCode(500)
            return b"down"
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"keys": self.keys}).encode()


class FilterHelpers(SynchronousTestCase):
    """Shared set-up: a clock at NOW, own metrics, manual password threads."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.metrics = Metrics(processMetrics=False)
        self.threads = ManualThreads()
        self.resources = AuthResources(MemoryReactorClock(), self.clock, self.idpAgent(), runInThread=self.threads)

    def idpAgent(self) -> IAgent | None:
        """The agent the JWKS fetches go through (None: a real one)."""
        return None

    def makeFilter(self, policy: AuthPolicy, route: str = "r") -> AuthFilter:
        f = AuthFilter(policy, authenticatorsFor(policy, self.resources), self.metrics, route)
        verifyObject(IRequestFilter, f)
        return f

    def apply(self, f: AuthFilter, context: RequestContext) -> LocalResponse | None:
        result = f.filterRequest(context)
        if isinstance(result, Deferred):
            return self.successResultOf(result)  # type: ignore[no-any-return]
        return result

    def failures(self, reason: str, route: str = "r") -> float:
        v = self.metrics.registry.get_sample_value("txgateway_auth_failures_total", {"route": route, "reason": reason})
        return v or 0.0

    def body(self, response: LocalResponse) -> Any:
        return json.loads(response.body)

    def challenges(self, response: LocalResponse) -> list[bytes]:
        return [v for k, v in response.headers if k == b"WWW-Authenticate"]


PARTNERS = AuthPolicy("partners", api_key=ApiKeyAuth(keys=(("alice", "sha256", sha256(b"alice-key")),
                                                             ("bob", "sha256", sha256(b"bob-key")))),
                      forward_identity="X-Consumer")


class ApiKeyTests(FilterHelpers):
    def test_interface(self) -> None:
        """The API key authenticator provides IAuthenticator."""
        verifyObject(IAuthenticator, ApiKeyAuthenticator(PARTNERS.api_key))  # type: ignore[arg-type]

    def test_validKeyAdmitsWithItsNameAsIdentity(self) -> None:
        """A known key passes and its configured name becomes the identity."""
        context = makeContext([(b"X-API-Key", b"bob-key")])
        self.assertIsNone(self.apply(self.makeFilter(PARTNERS), context))
        self.assertEqual(context.identity, "bob")

    def test_invalidKeyIs401WithApiKeyChallenge(self) -> None:
        """An unknown key gets 401, an ApiKey challenge, a JSON body with the request id, and is counted."""
        context = makeContext([(b"X-API-Key", b"guess")])
        response = self.apply(self.makeFilter(PARTNERS, "batch"), context)
        assert response is not None
        self.assertEqual(response.code, 401)
        self.assertEqual(self.challenges(response), [b'ApiKey realm="txgateway", header="X-API-Key"'])
        body = self.body(response)
        self.assertEqual((body["request_id"], body["reason"]), ("req-1", "invalid_key"))
        self.assertNotIn("guess", response.body.decode())
        self.assertEqual(self.failures("invalid_key", "batch"), 1)
        self.assertIsNone(context.identity)

    def test_missingKeyIs401Missing(self) -> None:
        """No key at all is 401 with reason "missing"."""
        response = self.apply(self.makeFilter(PARTNERS), makeContext())
        assert response is not None
        self.assertEqual((response.code, self.body(response)["reason"]), (401, "missing"))
        self.assertEqual(self.failures("missing"), 1)

    def test_keyComparedInConstantTimeAgainstEveryKey(self) -> None:
        """Digests are compared with hmac.compare_digest, and every stored key is compared even after a match."""
        calls: list[tuple[bytes, bytes]] = []
        real = apikey.hmac.compare_digest

        def spy(a: Any, b: Any) -> bool:
            calls.append((a, b))
            return real(a, b)

        self.patch(apikey.hmac, "compare_digest", spy)
        context = makeContext([(b"X-API-Key", b"alice-key")])
        self.assertIsNone(self.apply(self.makeFilter(PARTNERS), context))
        self.assertEqual(len(calls), 2)
        self.assertEqual(calls[0][0], hashlib.sha256(b"alice-key").digest())

    def test_keyHeaderRemovedAndIdentityForwarded(self) -> None:
        """The key never reaches the backend; the identity does, replacing a client-sent copy."""
        context = makeContext([(b"X-API-Key", b"alice-key"), (b"X-Consumer", b"admin")])
        self.assertIsNone(self.apply(self.makeFilter(PARTNERS), context))
        self.assertIn(b"X-API-Key", context.removeHeaders)
        self.assertIn(b"X-Consumer", context.removeHeaders)
        self.assertEqual(context.forwardHeaders, [(b"X-Consumer", b"alice")])
        sent = upstreamHeaders(context)
        self.assertIsNone(sent.getRawHeaders(b"x-api-key"))
        self.assertEqual(sent.getRawHeaders(b"x-consumer"), [b"alice"])

    def test_spoofedIdentityRemovedEvenWhenRefused(self) -> None:
        """The client's own X-Consumer is dropped before anything else is decided."""
        context = makeContext([(b"X-Consumer", b"admin")])
        self.apply(self.makeFilter(PARTNERS), context)
        self.assertIn(b"X-Consumer", context.removeHeaders)

    def test_keepCredentialsForwardsTheKey(self) -> None:
        """With keep_credentials the key header is left for the backend."""
        policy = AuthPolicy("p", api_key=PARTNERS.api_key, keep_credentials=True)
        context = makeContext([(b"X-API-Key", b"alice-key")])
        self.assertIsNone(self.apply(self.makeFilter(policy), context))
        self.assertEqual(upstreamHeaders(context).getRawHeaders(b"x-api-key"), [b"alice-key"])

    def test_keyInQueryParameterAdmitsAndIsStrippedFromTheQuery(self) -> None:
        """A key in the query parameter passes; the parameter is cut out, the rest kept byte for byte."""
        policy = AuthPolicy("p", api_key=ApiKeyAuth(query_param="api_key", keys=PARTNERS.api_key.keys))  # type: ignore[union-attr]
        context = makeContext(query=b"a=1&api_key=alice-key&b=%2F")
        self.assertIsNone(self.apply(self.makeFilter(policy), context))
        self.assertEqual(context.identity, "alice")
        self.assertEqual(context.query, b"a=1&b=%2F")

    def test_queryOnlyKeyLeavesNoQuery(self) -> None:
        """When the key was the only parameter, the forwarded URL has no query at all."""
        policy = AuthPolicy("p", api_key=ApiKeyAuth(query_param="api_key", keys=PARTNERS.api_key.keys))  # type: ignore[union-attr]
        context = makeContext(query=b"api_key=alice-key")
        self.apply(self.makeFilter(policy), context)
        self.assertIsNone(context.query)

    def test_queryHelpersDecodeNames(self) -> None:
        """Parameter names and values are percent-decoded when matched."""
        self.assertEqual(queryValue(b"x=1&api%5Fkey=a%2Bb", b"api_key"), b"a+b")
        self.assertIsNone(queryValue(b"x=1", b"api_key"))
        self.assertEqual(queryWithout(b"api%5Fkey=1&y", b"api_key"), b"y")

    def test_identityNotAllowedIs403(self) -> None:
        """Authenticated but not in allowed_identities: 403, counted as forbidden."""
        policy = AuthPolicy("p", api_key=PARTNERS.api_key, allowed_identities=("alice",))
        response = self.apply(self.makeFilter(policy), makeContext([(b"X-API-Key", b"bob-key")]))
        assert response is not None
        self.assertEqual(response.code, 403)
        self.assertEqual(self.failures("forbidden"), 1)
        self.assertIsNone(self.apply(self.makeFilter(policy), makeContext([(b"X-API-Key", b"alice-key")])))


def upstreamHeaders(context: RequestContext) -> Any:
    """What the forwarder would send upstream for this context."""
    from txgateway.cluster import Endpoint
    from txgateway.config import ServerConfig
    from txgateway.forwarding import Forwarder

    forwarder = Forwarder(MemoryReactorClock(), Clock(), ServerConfig(), Metrics(processMetrics=False))
    endpoint = Endpoint(Target("http://127.0.0.1:9", "http", "127.0.0.1", 9), "app")
    return forwarder.upstreamHeaders(context, endpoint)


HS = AuthPolicy("services", jwt=JwtAuth(algorithms=("HS256",), secret=SECRET, audience="txgateway",
                                        issuer="https://auth.example.com/", leeway=30.0),
                forward_identity="X-Consumer")


def claims(**extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"sub": "svc-1", "aud": "txgateway", "iss": "https://auth.example.com/",
                           "exp": int(NOW) + 300, "iat": int(NOW)}
    out.update(extra)
    return out


class JwtTests(FilterHelpers):
    def refusal(self, policy: AuthPolicy, token: bytes) -> tuple[int, str, list[bytes]]:
        response = self.apply(self.makeFilter(policy), makeContext(bearer(token)))
        assert response is not None, "the token was accepted"
        return response.code, self.body(response)["reason"], self.challenges(response)

    def test_interface(self) -> None:
        """The JWT authenticator provides IAuthenticator."""
        verifyObject(IAuthenticator, JwtAuthenticator(HS.jwt, self.clock))  # type: ignore[arg-type]

    def test_validTokenAdmitsAndForwardsSubject(self) -> None:
        """A good HS256 token passes; sub is the identity; the Authorization header is not forwarded."""
        context = makeContext(bearer(mint(claims())) + [(b"X-Consumer", b"root")])
        self.assertIsNone(self.apply(self.makeFilter(HS), context))
        self.assertEqual(context.identity, "svc-1")
        sent = upstreamHeaders(context)
        self.assertIsNone(sent.getRawHeaders(b"authorization"))
        self.assertEqual(sent.getRawHeaders(b"x-consumer"), [b"svc-1"])

    def test_identityFromConfiguredClaim(self) -> None:
        """identity_claim picks another claim than sub."""
        policy = AuthPolicy("p", jwt=JwtAuth(algorithms=("HS256",), secret=SECRET, identity_claim="client_id"))
        context = makeContext(bearer(mint({"client_id": "app-7"})))
        self.assertIsNone(self.apply(self.makeFilter(policy), context))
        self.assertEqual(context.identity, "app-7")

    def test_expiredTokenRefused(self) -> None:
        """exp in the past beyond the leeway: 401 expired, with an RFC 6750 invalid_token challenge."""
        code, reason, challenges = self.refusal(HS, mint(claims(exp=int(NOW) - 31)))
        self.assertEqual((code, reason), (401, "expired"))
        self.assertEqual(challenges, [b'Bearer realm="txgateway", error="invalid_token", '
                                      b'error_description="token expired"'])
        self.assertEqual(self.failures("expired"), 1)

    def test_expiryWithinLeewayAccepted(self) -> None:
        """A token that expired less than leeway ago still passes (clock skew)."""
        self.assertIsNone(self.apply(self.makeFilter(HS), makeContext(bearer(mint(claims(exp=int(NOW) - 29))))))

    def test_expiryFollowsTheInjectedClock(self) -> None:
        """The same token passes now and is refused once the clock moves past exp + leeway."""
        token = mint(claims(exp=int(NOW) + 10))
        f = self.makeFilter(HS)
        self.assertIsNone(self.apply(f, makeContext(bearer(token))))
        self.clock.advance(41)
        response = self.apply(f, makeContext(bearer(token)))
        assert response is not None
        self.assertEqual(self.body(response)["reason"], "expired")

    def test_notYetValidTokenRefused(self) -> None:
        """nbf in the future beyond the leeway: 401 not_yet_valid."""
        self.assertEqual(self.refusal(HS, mint(claims(nbf=int(NOW) + 60)))[:2], (401, "not_yet_valid"))

    def test_wrongAudienceRefused(self) -> None:
        """A token for another audience is refused."""
        self.assertEqual(self.refusal(HS, mint(claims(aud="other")))[:2], (401, "wrong_audience"))

    def test_missingAudienceRefused(self) -> None:
        """With audience configured, a token without aud is refused."""
        c = claims()
        del c["aud"]
        self.assertEqual(self.refusal(HS, mint(c))[:2], (401, "missing_claim"))

    def test_audienceIgnoredWhenNotConfigured(self) -> None:
        """Without audience in the policy, a token's aud does not matter."""
        policy = AuthPolicy("p", jwt=JwtAuth(algorithms=("HS256",), secret=SECRET))
        self.assertIsNone(self.apply(self.makeFilter(policy), makeContext(bearer(mint(claims(aud="x"))))))

    def test_wrongIssuerRefused(self) -> None:
        """A token from another issuer is refused."""
        self.assertEqual(self.refusal(HS, mint(claims(iss="https://evil.example/")))[:2], (401, "wrong_issuer"))

    def test_wrongSignatureRefused(self) -> None:
        """A token signed with another secret is refused."""
        token = mint(claims(), key=b"another-secret-that-is-long-enough-0123456789")
        self.assertEqual(self.refusal(HS, token)[:2], (401, "bad_signature"))

    def test_tamperedPayloadRefused(self) -> None:
        """Changing the payload of a signed token breaks the signature."""
        head, _, sig = mint(claims()).split(b".")
        forged = base64.urlsafe_b64encode(json.dumps(claims(sub="admin")).encode()).rstrip(b"=")
        self.assertEqual(self.refusal(HS, b".".join((head, forged, sig)))[:2], (401, "bad_signature"))

    def test_algNoneRefused(self) -> None:
        """An unsigned token (alg: none) is refused before any key is used."""
        token = jwt.encode(claims(), None, algorithm="none").encode()
        self.assertEqual(self.refusal(HS, token)[:2], (401, "bad_token"))

    def test_requiredClaimsEnforced(self) -> None:
        """A claim listed in required_claims must be present."""
        policy = AuthPolicy("p", jwt=JwtAuth(algorithms=("HS256",), secret=SECRET, required_claims=("exp", "scope")))
        self.assertEqual(self.refusal(policy, mint(claims()))[:2], (401, "missing_claim"))
        self.assertIsNone(self.apply(self.makeFilter(policy), makeContext(bearer(mint(claims(scope="x"))))))

    def test_missingIdentityClaimRefused(self) -> None:
        """A token without the identity claim cannot pass: there would be no one to forward."""
        c = claims()
        del c["sub"]
        self.assertEqual(self.refusal(HS, mint(c))[:2], (401, "missing_claim"))

    def test_identityWithControlCharactersRefused(self) -> None:
        """An identity that could split the forwarded header is refused."""
        self.assertEqual(self.refusal(HS, mint(claims(sub="a\r\nX-Admin: 1")))[:2], (401, "bad_token"))

    def test_malformedTokenRefused(self) -> None:
        """Garbage after Bearer is 401 bad_token."""
        self.assertEqual(self.refusal(HS, b"not-a-jwt")[:2], (401, "bad_token"))

    def test_otherSchemeIsAbsent(self) -> None:
        """An Authorization header of another scheme counts as no token."""
        response = self.apply(self.makeFilter(HS), makeContext(basic("a", "b")))
        assert response is not None
        self.assertEqual(self.body(response)["reason"], "missing")
        self.assertEqual(self.challenges(response), [b'Bearer realm="txgateway"'])

    def test_rs256WithPemKey(self) -> None:
        """RS256 tokens verify against a PEM public key."""
        policy = AuthPolicy("p", jwt=JwtAuth(algorithms=("RS256",), public_key=RSA_PEM))
        context = makeContext(bearer(mint(claims(), key=RSA_KEY, alg="RS256")))
        self.assertIsNone(self.apply(self.makeFilter(policy), context))
        self.assertEqual(context.identity, "svc-1")

    def test_algorithmConfusionRefused(self) -> None:
        """An HS256 token whose HMAC key is the RS256 public key (PEM) is refused."""
        import hmac as _hmac

        policy = AuthPolicy("p", jwt=JwtAuth(algorithms=("RS256",), public_key=RSA_PEM))

        def b64(data: bytes) -> bytes:
            return base64.urlsafe_b64encode(data).rstrip(b"=")

        signingInput = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims()).encode())
        sig = b64(_hmac.new(RSA_PEM, signingInput, hashlib.sha256).digest())
        self.assertEqual(self.refusal(policy, signingInput + b"." + sig)[:2], (401, "bad_token"))

    def test_wrongKeyTypeRefused(self) -> None:
        """An ES256 token is refused by an RS256-only policy."""
        policy = AuthPolicy("p", jwt=JwtAuth(algorithms=("RS256", "ES256"), public_key=RSA_PEM))
        self.assertEqual(self.refusal(policy, mint(claims(), key=EC_KEY, alg="ES256"))[0], 401)

    def test_customHeaderWithoutScheme(self) -> None:
        """With header: X-Token the raw token (no Bearer prefix) is read from it and removed."""
        policy = AuthPolicy("p", jwt=JwtAuth(algorithms=("HS256",), secret=SECRET, header="X-Token"))
        context = makeContext([(b"X-Token", mint(claims()))])
        self.assertIsNone(self.apply(self.makeFilter(policy), context))
        self.assertIn(b"X-Token", context.removeHeaders)


def jwksPolicy(**extra: Any) -> AuthPolicy:
    return AuthPolicy("staff", jwt=JwtAuth(algorithms=("RS256", "ES256"), jwks_url="https://idp.example/jwks",
                                           audience="txgateway", **extra))


class JwksTests(FilterHelpers):
    def idpAgent(self) -> IAgent:
        self.idp = JWKSResource([jwk(RSA_KEY, "k1", "RS256")])
        self.agent = RequestTraversalAgent(self.idp)
        return self.agent

    def check(self, f: AuthFilter, token: bytes) -> LocalResponse | None:
        result = f.filterRequest(makeContext(bearer(token)))
        if isinstance(result, Deferred):
            self.agent.flush()
            return self.successResultOf(result)  # type: ignore[no-any-return]
        return result

    def test_firstRequestWaitsForTheKeysThenPasses(self) -> None:
        """The first token triggers the JWKS fetch; it passes once the keys arrive."""
        f = self.makeFilter(jwksPolicy())
        self.assertIsNone(self.check(f, mint(claims(), RSA_KEY, "RS256", "k1")))
        self.assertEqual(self.idp.hits, 1)
        self.assertIsNone(self.check(f, mint(claims(), RSA_KEY, "RS256", "k1")))
        self.assertEqual(self.idp.hits, 1, "keys are cached")

    def test_rotationPickedUpOnUnknownKid(self) -> None:
        """A token with a new kid makes the gateway refetch, and passes once the IdP publishes the key."""
        f = self.makeFilter(jwksPolicy())
        self.assertIsNone(self.check(f, mint(claims(), RSA_KEY, "RS256", "k1")))
        self.idp.keys = [jwk(RSA_KEY2, "k2", "RS256")]
        self.clock.advance(31)
        self.assertIsNone(self.check(f, mint(claims(), RSA_KEY2, "RS256", "k2")))
        self.assertEqual(self.idp.hits, 2)
        response = self.check(f, mint(claims(), RSA_KEY, "RS256", "k1"))
        assert response is not None, "a retired key must stop working"
        self.assertEqual(self.body(response)["reason"], "unknown_key")

    def test_unknownKidRefreshIsRateLimited(self) -> None:
        """Made-up kids cause at most one refetch per jwks_min_refresh."""
        f = self.makeFilter(jwksPolicy())
        self.check(f, mint(claims(), RSA_KEY, "RS256", "k1"))
        self.clock.advance(31)
        for i in range(5):
            response = self.check(f, mint(claims(), RSA_KEY2, "RS256", f"made-up-{i}"))
            assert response is not None
            self.assertEqual((response.code, self.body(response)["reason"]), (401, "unknown_key"))
        self.assertEqual(self.idp.hits, 2)
        self.clock.advance(30)
        self.check(f, mint(claims(), RSA_KEY2, "RS256", "again"))
        self.assertEqual(self.idp.hits, 3)

    def test_keysRefreshedInTheBackgroundAfterJwksRefresh(self) -> None:
        """After jwks_refresh a request starts a refetch but does not wait for it."""
        f = self.makeFilter(jwksPolicy(jwks_refresh=60.0))
        self.check(f, mint(claims(), RSA_KEY, "RS256", "k1"))
        self.clock.advance(61)
        self.idp.mode = "hang"
        result = f.filterRequest(makeContext(bearer(mint(claims(), RSA_KEY, "RS256", "k1"))))
        self.assertIsNone(result)
        self.assertEqual(self.idp.hits, 2)

    def test_unreachableJwksGives503(self) -> None:
        """While no key was ever loaded, tokens needing one get 503 with Retry-After, not a crash."""
        self.idp.mode = "error"
        f = self.makeFilter(jwksPolicy())
        response = self.check(f, mint(claims(), RSA_KEY, "RS256", "k1"))
        assert response is not None
        self.assertEqual(response.code, 503)
        self.assertIn((b"Retry-After", b"5"), response.headers)
        self.assertEqual(self.body(response)["reason"], "jwks_unavailable")
        self.assertEqual(self.failures("jwks_unavailable"), 1)
        # Within jwks_min_refresh: 503 at once, no new fetch.
        self.assertEqual(self.check(f, mint(claims(), RSA_KEY, "RS256", "k1")).code, 503)  # type: ignore[union-attr]
        self.assertEqual(self.idp.hits, 1)
        self.idp.mode = "ok"
        self.clock.advance(30)
        self.assertIsNone(self.check(f, mint(claims(), RSA_KEY, "RS256", "k1")))
        self.flushLoggedErrors()

    def test_hangingJwksTimesOutWith503(self) -> None:
        """A JWKS URL that never answers is given up after jwks_timeout (on the injected clock)."""
        self.idp.mode = "hang"
        f = self.makeFilter(jwksPolicy(jwks_timeout=2.0))
        result = f.filterRequest(makeContext(bearer(mint(claims(), RSA_KEY, "RS256", "k1"))))
        assert isinstance(result, Deferred)
        self.assertNoResult(result)
        self.clock.advance(2)
        self.assertEqual(self.successResultOf(result).code, 503)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failedRefreshKeepsOldKeys(self) -> None:
        """An IdP outage after a successful load keeps the keys we have."""
        f = self.makeFilter(jwksPolicy(jwks_refresh=60.0))
        self.check(f, mint(claims(), RSA_KEY, "RS256", "k1"))
        self.idp.mode = "error"
        self.clock.advance(61)
        self.check(f, mint(claims(), RSA_KEY, "RS256", "k1"))
        self.assertIsNone(self.check(f, mint(claims(), RSA_KEY, "RS256", "k1")))
        self.assertEqual(self.idp.hits, 2)

    def test_clientGoneDoesNotCancelTheFetch(self) -> None:
        """Cancelling one waiting request leaves the shared fetch running for the others."""
        self.idp.mode = "hang"
        f = self.makeFilter(jwksPolicy())
        first = f.filterRequest(makeContext(bearer(mint(claims(), RSA_KEY, "RS256", "k1"))))
        second = f.filterRequest(makeContext(bearer(mint(claims(), RSA_KEY, "RS256", "k1"))))
        assert isinstance(first, Deferred) and isinstance(second, Deferred)
        first.cancel()
        self.failureResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(self.idp.hits, 1)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(second).code, 503)

    def test_esKeysAndKeyAlgorithmChecked(self) -> None:
        """An EC key verifies ES256; a JWK whose alg differs from the token's is never used."""
        self.idp.keys = [jwk(EC_KEY, "e1", "ES256"), jwk(RSA_KEY, "r1", "RS384")]
        f = self.makeFilter(jwksPolicy())
        self.assertIsNone(self.check(f, mint(claims(), EC_KEY, "ES256", "e1")))
        response = self.check(f, mint(claims(), RSA_KEY, "RS256", "r1"))
        assert response is not None
        self.assertEqual(self.body(response)["reason"], "unknown_key")

    def test_symmetricJwkIgnored(self) -> None:
        """An "oct" (shared secret) key in a JWKS is never used to verify."""
        keys = parseJWKS(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"},
                                                   jwk(RSA_KEY, "k1")]}).encode())
        self.assertEqual([k.kid for k in keys], ["k1"])

    def test_tokenWithoutKidTriesMatchingKeys(self) -> None:
        """Without a kid every key of the right type is tried."""
        self.idp.keys = [jwk(RSA_KEY2, "a"), jwk(RSA_KEY, "b")]
        f = self.makeFilter(jwksPolicy())
        self.assertIsNone(self.check(f, mint(claims(), RSA_KEY, "RS256")))

    def test_jwksSharedAcrossReloads(self) -> None:
        """Filters built from the same deps.shared reuse the fetched keys."""
        deps = Deps(clock=self.clock, reactor=MemoryReactorClock(), metrics=self.metrics,
                    config=None, rng=None, shared={SHARED_KEY: self.resources})  # type: ignore[arg-type]
        route = compiledRoute(jwksPolicy())
        first = authFilter(route, deps)
        assert isinstance(first, AuthFilter)
        self.check(first, mint(claims(), RSA_KEY, "RS256", "k1"))
        second = authFilter(compiledRoute(jwksPolicy()), deps)
        assert isinstance(second, AuthFilter)
        self.assertIsNone(second.filterRequest(makeContext(bearer(mint(claims(), RSA_KEY, "RS256", "k1")))))
        self.assertEqual(self.idp.hits, 1)

    def test_jwksKeysWithoutFetchRaiseUnavailable(self) -> None:
        """A JwksKeys whose fetch failed recently says so at once."""
        self.idp.mode = "error"
        keys = JwksKeys("https://idp.example/jwks", self.clock, lambda: self.agent)
        self.failureResultOf(keys.keysFor("k1", "RS256"), KeysUnavailable)  # type: ignore[arg-type]
        self.assertRaises(KeysUnavailable, keys.keysFor, "k1", "RS256")
        self.flushLoggedErrors()


def compiledRoute(policy: AuthPolicy | None, name: str = "r") -> CompiledRoute:
    from txgateway.config import MatchConfig, RouteConfig

    return CompiledRoute(RouteConfig(name=name, index=0, match=MatchConfig(path_prefix="/"), upstream="app",
                                     auth=policy))


STAFF = AuthPolicy("staff", basic=BasicAuth(users=(("bob", BOB_HASH), ("carol", CAROL_HASH)), realm="staff area"),
                   forward_identity="X-Consumer")


class BasicTests(FilterHelpers):
    def test_interface(self) -> None:
        """The basic authenticator provides IAuthenticator."""
        verifyObject(IAuthenticator, BasicAuthenticator(STAFF.basic, self.resources.passwords))  # type: ignore[arg-type]

    def test_validPasswordCheckedOffTheCallingThread(self) -> None:
        """The bcrypt check is handed to the thread runner; the request waits for it, then passes."""
        context = makeContext(basic("bob", "bob-password"))
        result = self.makeFilter(STAFF).filterRequest(context)
        assert isinstance(result, Deferred)
        self.assertNoResult(result)
        self.assertEqual(self.threads.calls, 1)
        self.threads.runAll()
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(context.identity, "bob")
        self.assertIn(b"authorization", context.removeHeaders)

    def test_wrongPasswordIs401WithBasicChallenge(self) -> None:
        """A wrong password: 401 with the configured realm."""
        result = self.makeFilter(STAFF).filterRequest(makeContext(basic("bob", "nope")))
        self.threads.runAll()
        response = self.successResultOf(result)  # type: ignore[arg-type]
        self.assertEqual(response.code, 401)
        self.assertEqual(self.challenges(response), [b'Basic realm="staff area", charset="UTF-8"'])
        self.assertEqual(self.body(response)["reason"], "bad_password")

    def test_unknownUserStillCostsAHashCheck(self) -> None:
        """An unknown user is checked against a real hash too (no timing oracle), then refused."""
        result = self.makeFilter(STAFF).filterRequest(makeContext(basic("mallory", "bob-password")))
        self.assertEqual(self.threads.calls, 1)
        self.threads.runAll()
        self.assertEqual(self.successResultOf(result).code, 401)  # type: ignore[arg-type,union-attr]

    def test_successCachedForCacheTtl(self) -> None:
        """A verified password is remembered for cache_ttl, then checked again."""
        f = self.makeFilter(STAFF)
        f.filterRequest(makeContext(basic("bob", "bob-password")))
        self.threads.runAll()
        self.assertIsNone(f.filterRequest(makeContext(basic("bob", "bob-password"))))
        self.assertEqual(self.threads.calls, 1)
        self.clock.advance(61)
        self.assertIsInstance(f.filterRequest(makeContext(basic("bob", "bob-password"))), Deferred)
        self.assertEqual(self.threads.calls, 2)

    def test_failuresNotCached(self) -> None:
        """Wrong passwords are checked every time."""
        f = self.makeFilter(STAFF)
        for _ in range(2):
            f.filterRequest(makeContext(basic("bob", "wrong")))
            self.threads.runAll()
        self.assertEqual(self.threads.calls, 2)

    def test_changedHashInvalidatesCache(self) -> None:
        """After a reload with a new hash for bob, his old password is checked again (and fails)."""
        self.makeFilter(STAFF).filterRequest(makeContext(basic("bob", "bob-password")))
        self.threads.runAll()
        changed = AuthPolicy("staff", basic=BasicAuth(users=(("bob", CAROL_HASH),)))
        result = self.makeFilter(changed).filterRequest(makeContext(basic("bob", "bob-password")))
        self.threads.runAll()
        self.assertEqual(self.successResultOf(result).code, 401)  # type: ignore[arg-type,union-attr]

    def test_argon2Hash(self) -> None:
        """argon2id hashes verify too."""
        import argon2

        hashed = argon2.PasswordHasher(time_cost=1, memory_cost=1024).hash("dave-pw")
        policy = AuthPolicy("p", basic=BasicAuth(users=(("dave", hashed),)))
        result = self.makeFilter(policy).filterRequest(makeContext(basic("dave", "dave-pw")))
        self.threads.runAll()
        self.assertIsNone(self.successResultOf(result))  # type: ignore[arg-type]
        result = self.makeFilter(policy).filterRequest(makeContext(basic("dave", "wrong")))
        self.threads.runAll()
        self.assertEqual(self.successResultOf(result).code, 401)  # type: ignore[arg-type,union-attr]

    def test_malformedCredentialsRefusedWithoutHashing(self) -> None:
        """Bad base64 or no colon: 401 malformed, no thread work."""
        for value in (b"Basic !!!", b"Basic " + base64.b64encode(b"no-colon")):
            response = self.apply(self.makeFilter(STAFF), makeContext([(b"Authorization", value)]))
            assert response is not None
            self.assertEqual(self.body(response)["reason"], "malformed")
        self.assertEqual(self.threads.calls, 0)

    def test_overlongPasswordRefused(self) -> None:
        """bcrypt's 72-byte limit is a refusal, not a crash."""
        result = self.makeFilter(STAFF).filterRequest(makeContext(basic("bob", "x" * 100)))
        self.threads.runAll()
        self.assertEqual(self.successResultOf(result).code, 401)  # type: ignore[arg-type,union-attr]

    def test_tooManyPendingChecksIs503(self) -> None:
        """Beyond maxPending queued checks a request gets 503 at once."""
        self.patch(self.resources.passwords, "maxPending", 1)
        f = self.makeFilter(STAFF)
        f.filterRequest(makeContext(basic("bob", "a")))
        response = self.apply(f, makeContext(basic("carol", "b")))
        assert response is not None
        self.assertEqual((response.code, self.body(response)["reason"]), (503, "busy"))
        self.threads.runAll()

    def test_clientGoneKeepsTheCheckCounted(self) -> None:
        """A cancelled wait is not logged as an error, and the check counts as pending until its thread ends."""
        result = self.makeFilter(STAFF).filterRequest(makeContext(basic("bob", "bob-password")))
        assert isinstance(result, Deferred)
        result.cancel()
        self.failureResultOf(result)
        self.assertEqual(self.resources.passwords.pending, 1)
        self.threads.runAll()
        self.assertEqual(self.resources.passwords.pending, 0)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_sharedHtpasswdLoads(self) -> None:
        """The shared example htpasswd parses into a bcrypt user."""
        if not (SHARED / "htpasswd").exists():
            raise self.skipTest("no /work/shared/htpasswd here")
        policy = parseConfig((SHARED / "gw.example.yaml").read_text(), baseDir=SHARED).auth_policies["staff"]
        assert policy.basic is not None
        self.assertEqual([u for u, _ in policy.basic.users], ["bob"])


class MixedPolicyTests(FilterHelpers):
    POLICY = AuthPolicy("mixed", api_key=PARTNERS.api_key, jwt=HS.jwt, basic=STAFF.basic, forward_identity="X-Consumer")

    def test_anyMethodAdmits(self) -> None:
        """Each of the methods alone is enough."""
        f = self.makeFilter(self.POLICY)
        self.assertIsNone(self.apply(f, makeContext([(b"X-API-Key", b"alice-key")])))
        self.assertIsNone(self.apply(f, makeContext(bearer(mint(claims())))))
        result = f.filterRequest(makeContext(basic("carol", "carol-password")))
        self.threads.runAll()
        self.assertIsNone(self.successResultOf(result))  # type: ignore[arg-type]

    def test_refusalCarriesEveryChallenge(self) -> None:
        """Without credentials the client learns every accepted scheme."""
        response = self.apply(self.makeFilter(self.POLICY), makeContext())
        assert response is not None
        self.assertEqual([c.split(b" ")[0] for c in self.challenges(response)], [b"ApiKey", b"Bearer", b"Basic"])

    def test_oneBadCredentialDoesNotBlockAGoodOne(self) -> None:
        """A wrong API key next to a good token still passes, and both credentials are removed."""
        context = makeContext([(b"X-API-Key", b"wrong")] + bearer(mint(claims())))
        self.assertIsNone(self.apply(self.makeFilter(self.POLICY), context))
        self.assertEqual(context.identity, "svc-1")
        sent = upstreamHeaders(context)
        self.assertIsNone(sent.getRawHeaders(b"x-api-key"))
        self.assertIsNone(sent.getRawHeaders(b"authorization"))


class FactoryTests(SynchronousTestCase):
    def deps(self) -> Deps:
        return Deps(clock=Clock(), reactor=MemoryReactorClock(), metrics=Metrics(processMetrics=False),
                    config=None, rng=None)  # type: ignore[arg-type]

    def test_noAuthNoFilter(self) -> None:
        """A route without auth: gets no filter."""
        self.assertIsNone(authFilter(compiledRoute(None), self.deps()))

    def test_routeWithPolicyGetsFilter(self) -> None:
        """A route with a policy gets an AuthFilter whose resources live in deps.shared."""
        deps = self.deps()
        f = authFilter(compiledRoute(PARTNERS), deps)
        self.assertIsInstance(f, AuthFilter)
        self.assertIsInstance(deps.shared[SHARED_KEY], AuthResources)

    def test_realThreadRunnerUsesOwnPool(self) -> None:
        """Without an injected runner, checks go to a pool of our own stopped at reactor shutdown."""
        reactor = MemoryReactorClock()
        resources = AuthResources(reactor, Clock())
        self.addCleanup(lambda: resources._pool is not None and resources._pool.stop())
        pool = resources.threadPool()
        self.assertIs(resources.threadPool(), pool)
        self.assertEqual((pool.name, pool.max), ("txgateway-auth", 2))
        self.assertEqual(len(reactor.triggers["during"]["shutdown"]), 1)


class ConfigTests(SynchronousTestCase):
    BASE = """
upstreams:
  app: {targets: [http://127.0.0.1:9000]}
auth_policies:
  partners:
    api_key: {keys: {alice: "sha256:KEYDIGEST"}, query_param: api_key}
    forward_identity: X-Consumer
routes:
  - name: r
    match: {path_prefix: /}
    upstream: app
""".replace("KEYDIGEST", sha256(b"k"))

    def test_exampleConfigPoliciesLoad(self) -> None:
        """The shared example's three policies load with the meaning their comments give."""
        if not (SHARED / "gw.example.yaml").exists():
            raise self.skipTest("no /work/shared here")
        config = parseConfig((SHARED / "gw.example.yaml").read_text(), baseDir=SHARED)
        p = config.auth_policies
        self.assertEqual(p["partners"].api_key.keys[0][0], "alice")  # type: ignore[union-attr]
        self.assertEqual(p["services"].jwt.secret, (SHARED / "jwt-hs256.secret").read_bytes().rstrip(b"\n"))  # type: ignore[union-attr]
        self.assertEqual(p["staff"].jwt.jwks_url, "https://auth.example.com/.well-known/jwks.json")  # type: ignore[union-attr]
        routes = {r.name: r for r in config.routes}
        self.assertIs(routes["batch"].auth, p["partners"])
        self.assertEqual([str(n) for n in routes["users-canary"].ip_allow], ["10.0.0.0/8", "127.0.0.0/8"])

    def test_routeReferenceWithOverrides(self) -> None:
        """auth: {policy: NAME, keep_credentials: true} reuses a policy with a per-route override."""
        text = self.BASE + "    auth: {policy: partners, keep_credentials: true, allowed_identities: [alice]}\n"
        route = parseConfig(text).routes[0]
        assert route.auth is not None
        self.assertTrue(route.auth.keep_credentials)
        self.assertEqual(route.auth.allowed_identities, ("alice",))
        self.assertEqual(route.auth.api_key.query_param, "api_key")  # type: ignore[union-attr]

    def test_unknownPolicyReferenceIsAnError(self) -> None:
        """A reference to a missing policy names the key path."""
        with self.assertRaises(ConfigError) as e:
            parseConfig(self.BASE + "    auth: {policy: nobody}\n")
        self.assertIn("auth.policy: no auth policy named 'nobody'", str(e.exception))

    def test_badPublicKeyIsAnError(self) -> None:
        """public_key_file must hold a PEM public key."""
        text = self.BASE.replace("auth_policies:\n", "auth_policies:\n  rs:\n    jwt: {algorithms: [RS256], "
                                 "public_key_file: key.pem}\n")
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "key.pem").write_text("not a key")
            with self.assertRaises(ConfigError) as e:
                parseConfig(text, baseDir=Path(d))
        self.assertIn("public_key_file: is not a PEM public key", str(e.exception))

    def test_jwksAndBasicKeysParse(self) -> None:
        """jwks_timeout, jwks_min_refresh and basic cache_ttl are read as durations."""
        text = self.BASE.replace("auth_policies:\n", "auth_policies:\n  s:\n    jwt: {jwks_url: 'https://i/j', "
                                 "jwks_timeout: 2s, jwks_min_refresh: 1m}\n    basic: {users: {u: '" + BOB_HASH + "'}, "
                                 "cache_ttl: 5m}\n")
        p = parseConfig(text).auth_policies["s"]
        self.assertEqual((p.jwt.jwks_timeout, p.jwt.jwks_min_refresh), (2.0, 60.0))  # type: ignore[union-attr]
        self.assertEqual(p.basic.cache_ttl, 300.0)  # type: ignore[union-attr]


class IPRuleTests(SynchronousTestCase):
    CONFIG = """
server:
  trusted_proxies: [10.1.0.0/16]
access:
  ip_deny: [203.0.113.0/24]
upstreams:
  app: {targets: [http://127.0.0.1:9000]}
routes:
  - name: canary
    match: {path_prefix: /internal}
    upstream: app
    ip_allow: [10.0.0.0/8, 127.0.0.0/8]
  - name: default
    match: {path_prefix: /}
    upstream: app
"""

    def setUp(self) -> None:
        from txgateway.building import Gateway, buildRuntime

        self.metrics = Metrics(processMetrics=False)
        self.gateway = Gateway(buildRuntime(parseConfig(self.CONFIG), reactor=MemoryReactorClock(), clock=Clock(),
                                            metrics=self.metrics))

    def send(self, path: bytes, peer: str, xff: bytes | None = None) -> tuple[Any, RequestContext]:
        from twisted.internet.address import IPv4Address

        from txgateway.gateway import GatewayRoot

        request = DummyRequest([b""])
        request.uri = path
        request.client = IPv4Address("TCP", peer, 4000)
        if xff is not None:
            request.requestHeaders.addRawHeader(b"X-Forwarded-For", xff)
        child = GatewayRoot(self.gateway).getChildWithDefault(b"", request)
        return child, request.context

    def answer(self, child: Any) -> int | None:
        response = getattr(child, "response", None)
        if response is None:  # a route leaf: run its chain (the IP filter answers before any forward)
            return None
        return response.code  # type: ignore[no-any-return]

    def chain(self, child: Any, context: RequestContext) -> LocalResponse | None:
        return self.successResultOf(Deferred.fromCoroutine(child.route.chain.run(context)))

    def test_globalDenyUsesRealClientBehindTrustedProxy(self) -> None:
        """A denied client is refused even when it arrives through a trusted proxy."""
        child, context = self.send(b"/x", "10.1.2.3", b"203.0.113.9")
        self.assertEqual(context.clientIP, "203.0.113.9")
        self.assertEqual(self.answer(child), 403)

    def test_untrustedPeerCannotSpoofItsWayOut(self) -> None:
        """X-Forwarded-For from an untrusted peer is ignored: the peer itself is judged."""
        child, context = self.send(b"/x", "203.0.113.9", b"127.0.0.1")
        self.assertEqual(context.clientIP, "203.0.113.9")
        self.assertEqual(self.answer(child), 403)

    def test_rightmostUntrustedHopIsTheClient(self) -> None:
        """Only hops added by trusted proxies are skipped; a client-written leftmost value is not believed."""
        child, context = self.send(b"/x", "10.1.0.1", b"127.0.0.1, 198.51.100.7, 10.1.0.2")
        self.assertEqual(context.clientIP, "198.51.100.7")

    def test_routeAllowListOnClientIP(self) -> None:
        """ip_allow admits the listed networks and gives everyone else 403, counted as reason ip."""
        child, context = self.send(b"/internal/a", "127.0.0.1")
        self.assertIsNone(self.chain(child, context))
        child, context = self.send(b"/internal/a", "10.1.0.1", b"198.51.100.7")
        response = self.chain(child, context)
        assert response is not None
        self.assertEqual(response.code, 403)
        self.assertEqual(json.loads(response.body)["request_id"], context.requestId)
        self.assertEqual(self.metrics.registry.get_sample_value(
            "txgateway_auth_failures_total", {"route": "canary", "reason": "ip"}), 1)

    def test_ipFilterDenyAndIPv4MappedAddresses(self) -> None:
        """ip_deny wins over ip_allow, and ::ffff:a.b.c.d is judged as a.b.c.d."""
        import ipaddress

        f = IPFilter([ipaddress.ip_network("10.0.0.0/8")], [ipaddress.ip_network("10.9.0.0/16")])
        verifyObject(IRequestFilter, f)
        self.assertIsNone(f.filterRequest(makeContext(clientIP="::ffff:10.1.1.1")))
        self.assertEqual(f.filterRequest(makeContext(clientIP="10.9.1.1")).code, 403)  # type: ignore[union-attr]
        self.assertEqual(f.filterRequest(makeContext(clientIP="192.0.2.1")).code, 403)  # type: ignore[union-attr]
        self.assertEqual(f.filterRequest(makeContext(clientIP="garbage")).code, 403)  # type: ignore[union-attr]

