"""
End to end: access control in the real gateway process, with a config shaped like gw.example.yaml.

The origin (tests/e2e/backend.py) echoes what it received, so these tests
see exactly which headers crossed the gateway; it also plays the identity
provider's JWKS endpoint.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import bcrypt
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, Response, echoed, request, waitFor

HS_SECRET = "e2e-hs256-secret-0123456789abcdef-0123456789abcdef"
ALICE_KEY = "alice-e2e-key-8c1f"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
BOB_HASH = bcrypt.hashpw(b"bob-e2e-password", bcrypt.gensalt(5)).decode()

CONFIG = """\
server:
  listen: "tcp:{port}:interface=127.0.0.1"
  timeouts: {drain: 5s}
  trusted_proxies: [127.0.0.1/32]
logging:
  level: info
  access_log_file: access.log
access:
  ip_deny: [203.0.113.0/24]
auth_policies:
  partners:
    api_key:
      header: X-API-Key
      query_param: api_key
      keys:
        alice: "sha256:ALICE_DIGEST"
    forward_identity: X-Consumer
  staff:
    jwt:
      algorithms: [RS256]
      jwks_url: http://127.0.0.1:BACKEND_PORT/jwks
      jwks_min_refresh: 0s
      jwks_timeout: 2s
      issuer: https://auth.example.com/
      audience: txgateway
    basic:
      htpasswd: htpasswd
      realm: staff
    forward_identity: X-Consumer
  services:
    jwt:
      algorithms: [HS256]
      secret_file: jwt-hs256.secret
      audience: txgateway
    forward_identity: X-Consumer
upstreams:
  app:
    targets: [http://127.0.0.1:BACKEND_PORT]
routes:
  - name: batch
    match: {path: /batch_predict, methods: [POST]}
    upstream: app
    auth: partners
    cors: {allow_origins: ["https://app.example.com"], allow_methods: [POST], allow_headers: [Content-Type, X-API-Key], max_age: 10m}
  - name: users-canary
    match: {path_prefix: /api/, headers: {X-Canary: "1"}}
    upstream: app
    auth: staff
    ip_allow: [10.0.0.0/8, 127.0.0.0/8]
  - name: services
    match: {path_prefix: /svc}
    upstream: app
    auth: {policy: services, keep_credentials: true}
  - name: internal
    match: {path_prefix: /internal}
    upstream: app
    ip_allow: [10.0.0.0/8]
  - name: default
    match: {path_prefix: /}
    upstream: app
"""


def token(claims: dict[str, Any], key: Any = HS_SECRET, alg: str = "HS256", kid: str | None = None) -> str:
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def staffClaims(**extra: Any) -> dict[str, Any]:
    import time

    claims = {"sub": "carol", "iss": "https://auth.example.com/", "aud": "txgateway", "exp": int(time.time()) + 300}
    claims.update(extra)
    return claims


def sentHeader(response: Response, name: str) -> list[str]:
    return [v for k, v in echoed(response)["headers"] if k.lower() == name.lower()]


class AccessControlE2E(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = Backend("b1").start()
        self.addCleanup(self.backend.stop)
        config = CONFIG.replace("BACKEND_PORT", str(self.backend.port)).replace(
            "ALICE_DIGEST", hashlib.sha256(ALICE_KEY.encode()).hexdigest())
        self.gw = GatewayProcess(config, files={"htpasswd": f"bob:{BOB_HASH}\n",
                                                "jwt-hs256.secret": HS_SECRET + "\n"})
        self.addCleanup(self.gw.cleanup)
        self.gw.start()

    def post(self, path: str, headers: list[tuple[str, str]]) -> Response:
        return self.gw.request("POST", path, headers + [("Content-Type", "application/json")], b"{}")

    def test_apiKeyRoute(self) -> None:
        """Valid, invalid and missing keys; identity forwarded; key and spoofed identity never reach the backend."""
        ok = self.post("/batch_predict", [("X-API-Key", ALICE_KEY), ("X-Consumer", "root")])
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(sentHeader(ok, "X-Consumer"), ["alice"])
        self.assertEqual(sentHeader(ok, "X-API-Key"), [])

        bad = self.post("/batch_predict", [("X-API-Key", "wrong")])
        self.assertEqual(bad.status, 401)
        self.assertEqual(bad.header("WWW-Authenticate"), 'ApiKey realm="txgateway", header="X-API-Key", query="api_key"')
        self.assertEqual(bad.json()["request_id"], bad.header("X-Request-ID"))
        self.assertEqual(self.post("/batch_predict", []).json()["reason"], "missing")

        viaQuery = self.post(f"/batch_predict?x=1&api_key={ALICE_KEY}", [])
        self.assertEqual(viaQuery.status, 200, viaQuery)
        self.assertEqual(echoed(viaQuery)["uri"], "/batch_predict?x=1")

        metrics = self.gw.request("GET", "/metrics").body.decode()
        self.assertIn('txgateway_auth_failures_total{reason="invalid_key",route="batch"} 1.0', metrics)
        self.assertIn('txgateway_auth_failures_total{reason="missing",route="batch"} 1.0', metrics)

        self.gw.stop()
        logs = self.gw.log() + (self.gw.dir / "access.log").read_text()
        self.assertNotIn(ALICE_KEY, logs)
        self.assertIn('"identity":"alice"', (self.gw.dir / "access.log").read_text())

    def test_corsPreflightAndActualRequest(self) -> None:
        """The gateway answers the preflight of a POST-only route itself; the actual response carries CORS headers."""
        before = self.backend.count()
        pre = self.gw.request("OPTIONS", "/batch_predict", [
            ("Origin", "https://app.example.com"), ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type,x-api-key")])
        self.assertEqual(pre.status, 204, pre)
        self.assertEqual(pre.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertEqual(pre.header("Access-Control-Allow-Headers"), "Content-Type, X-API-Key")
        self.assertEqual(pre.header("Access-Control-Max-Age"), "600")
        self.assertIsNone(pre.header("Content-Length"))
        self.assertEqual(self.backend.count(), before + 1, "only our own /count call reached the backend")

        evil = self.gw.request("OPTIONS", "/batch_predict", [
            ("Origin", "https://evil.example"), ("Access-Control-Request-Method", "POST")])
        self.assertEqual(evil.status, 403)
        self.assertIsNone(evil.header("Access-Control-Allow-Origin"))

        actual = self.post("/batch_predict", [("Origin", "https://app.example.com"), ("X-API-Key", ALICE_KEY)])
        self.assertEqual(actual.status, 200)
        self.assertEqual(actual.header("Access-Control-Allow-Origin"), "https://app.example.com")
        self.assertIn("Origin", actual.headerList("Vary"))

        own = self.post("/batch_predict?acao=*", [("Origin", "https://app.example.com"), ("X-API-Key", ALICE_KEY)])
        self.assertEqual(own.headerList("Access-Control-Allow-Origin"), ["https://app.example.com"],
                         "the route's CORS policy replaces the backend's own CORS headers")

        refused = self.post("/batch_predict", [("Origin", "https://app.example.com")])
        self.assertEqual(refused.status, 401)
        self.assertEqual(refused.header("Access-Control-Allow-Origin"), "https://app.example.com")

    def test_jwksAndBasicStaffRoute(self) -> None:
        """503 until the JWKS is published, then RS256 tokens pass; rotation works; basic works on real threads."""
        canary = [("X-Canary", "1")]
        first = self.gw.request("GET", "/api/x", canary + [
            ("Authorization", "Bearer " + token(staffClaims(), RSA_KEY, "RS256", "k1"))])
        self.assertEqual(first.status, 503, first)
        self.assertEqual(first.json()["reason"], "jwks_unavailable")

        publicJwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
        publicJwk.update(kid="k1", alg="RS256", use="sig")
        request(self.backend.port, "POST", "/control/jwks", body=json.dumps({"keys": [publicJwk]}).encode())
        ok = self.gw.request("GET", "/api/x", canary + [
            ("Authorization", "Bearer " + token(staffClaims(), RSA_KEY, "RS256", "k1"))])
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(sentHeader(ok, "X-Consumer"), ["carol"])
        self.assertEqual(sentHeader(ok, "Authorization"), [])

        wrongAud = self.gw.request("GET", "/api/x", canary + [
            ("Authorization", "Bearer " + token(staffClaims(aud="other"), RSA_KEY, "RS256", "k1"))])
        self.assertEqual((wrongAud.status, wrongAud.json()["reason"]), (401, "wrong_audience"))
        self.assertIn('error="invalid_token"', wrongAud.header("WWW-Authenticate") or "")

        newKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rotated = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(newKey.public_key()))
        rotated.update(kid="k2", alg="RS256")
        request(self.backend.port, "POST", "/control/jwks", body=json.dumps({"keys": [publicJwk, rotated]}).encode())
        self.assertEqual(self.gw.request("GET", "/api/x", canary + [
            ("Authorization", "Bearer " + token(staffClaims(), newKey, "RS256", "k2"))]).status, 200)

        creds = base64.b64encode(b"bob:bob-e2e-password").decode()
        viaBasic = self.gw.request("GET", "/api/x", canary + [("Authorization", "Basic " + creds)])
        self.assertEqual(viaBasic.status, 200, viaBasic)
        self.assertEqual(sentHeader(viaBasic, "X-Consumer"), ["bob"])
        wrong = self.gw.request("GET", "/api/x", canary + [
            ("Authorization", "Basic " + base64.b64encode(b"bob:nope").decode())])
        self.assertEqual(wrong.status, 401)
        self.assertEqual(wrong.headerList("WWW-Authenticate"),
                         ['Bearer realm="txgateway"', 'Basic realm="staff", charset="UTF-8"'])
        self.assertEqual(self.gw.stop(), 0, "the password threadpool must not keep the process alive")

    def test_hs256KeepCredentials(self) -> None:
        """HS256 with the secret file; this route keeps the Authorization header; algorithm none is refused."""
        good = token({"sub": "svc-1", "aud": "txgateway"})
        ok = self.gw.request("GET", "/svc/run", [("Authorization", "Bearer " + good)])
        self.assertEqual(ok.status, 200, ok)
        self.assertEqual(sentHeader(ok, "Authorization"), ["Bearer " + good])
        self.assertEqual(sentHeader(ok, "X-Consumer"), ["svc-1"])
        unsigned = jwt.encode({"sub": "svc-1", "aud": "txgateway"}, None, algorithm="none")
        self.assertEqual(self.gw.request("GET", "/svc/run", [("Authorization", "Bearer " + unsigned)]).status, 401)

    def test_ipRulesUseTheClientBehindTrustedProxies(self) -> None:
        """access.ip_deny and route ip_allow judge the real client address after trusted_proxies."""
        self.assertEqual(self.gw.request("GET", "/x").status, 200)
        denied = self.gw.request("GET", "/x", [("X-Forwarded-For", "203.0.113.7")])
        self.assertEqual(denied.status, 403)
        self.assertEqual(denied.json()["request_id"], denied.header("X-Request-ID"))
        self.assertEqual(self.gw.request("GET", "/internal/a").status, 403)
        self.assertEqual(self.gw.request("GET", "/internal/a", [("X-Forwarded-For", "10.2.3.4")]).status, 200)
        waitFor(lambda: 'reason="ip"' in self.gw.request("GET", "/metrics").body.decode(), what="ip metric")
