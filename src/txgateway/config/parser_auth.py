# -*- test-case-name: tests.test_config -*-
"""
Parsing auth policies: API keys, JWT and Basic, named or written inline on a route.

Secrets are read from their files here, once, and API keys are kept only as
digests, so the running gateway never holds a key in the clear.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from txgateway.config.errors import keyPath
from txgateway.config.fields import haveArgon2, httpURL, isPublicKeyPEM
from txgateway.config.parser_base import ParserBase
from txgateway.config.schema import ApiKeyAuth, AuthPolicy, BasicAuth, JwtAuth
from txgateway.config.source import lines
from txgateway.config.values import boolean, duration, headerName, headerValue, oneOf, positive, string

__all__ = ["AuthSections"]


class AuthSections(ParserBase):
    """C{auth_policies}, and the C{auth} of a route (a policy's name, a reference with overrides, or inline)."""

    def authPolicies(self, value: Any, line: int | None) -> dict[str, AuthPolicy]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem("auth_policies", line, "must be a mapping of policy name to policy")
            return {}
        out = {}
        for name, body in value.items():
            policy = self.authPolicy(body, keyPath("auth_policies", name), lines(value).get(name), str(name))
            if policy is not None:
                out[str(name)] = policy
        return out

    def authPolicy(self, value: Any, path: str, line: int | None, name: str) -> AuthPolicy | None:
        m = self.mapping(value, path, line, ["api_key", "jwt", "basic", "forward_identity", "keep_credentials",
                                             "allowed_identities"])
        if m is None:
            return None
        policy = AuthPolicy(
            name=name,
            api_key=self.apiKey(*self.child(m, "api_key"), keyPath(path, "api_key")) if "api_key" in m else None,
            jwt=self.jwt(*self.child(m, "jwt"), keyPath(path, "jwt")) if "jwt" in m else None,
            basic=self.basic(*self.child(m, "basic"), keyPath(path, "basic")) if "basic" in m else None,
            forward_identity=self.get(m, "forward_identity", path, headerName, None),
            keep_credentials=self.get(m, "keep_credentials", path, boolean, False),
            allowed_identities=self.seq(m, "allowed_identities", path, string),
        )
        if not (policy.api_key or policy.jwt or policy.basic):
            self.problem(path, line, "names no method: give api_key, jwt or basic")
        return policy

    def authReference(self, value: Any, path: str, line: int | None,
                      policies: Mapping[str, AuthPolicy]) -> AuthPolicy | None:
        """C{auth: {policy: NAME, keep_credentials: true}}: a named policy with per-route overrides."""
        m = self.mapping(value, path, line, ["policy", "keep_credentials", "forward_identity", "allowed_identities"])
        if m is None:
            return None
        ref = str(m["policy"])
        base = policies.get(ref)
        if base is None:
            self.problem(keyPath(path, "policy"), m.lines.get("policy"), f"no auth policy named {ref!r}")
            return None
        return replace(
            base,
            keep_credentials=self.get(m, "keep_credentials", path, boolean, base.keep_credentials),
            forward_identity=self.get(m, "forward_identity", path, headerName, base.forward_identity),
            allowed_identities=(self.seq(m, "allowed_identities", path, string) if "allowed_identities" in m
                                else base.allowed_identities),
        )

    def apiKey(self, value: Any, line: int | None, path: str) -> ApiKeyAuth | None:
        m = self.mapping(value, path, line, ["header", "query_param", "keys", "keys_file"])
        if m is None:
            return None
        keys: dict[str, str] = {}
        km = m.get("keys")
        if km is not None:
            if not isinstance(km, dict):
                self.problem(keyPath(path, "keys"), m.lines.get("keys"), "must map a name to sha256:<hex digest>")
            else:
                keys.update({str(k): v for k, v in km.items()})
        raw = self.readFile(m, "keys_file", path)
        if raw is not None:
            for n, text in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
                text = text.strip()
                if not text or text.startswith("#"):
                    continue
                kname, sep, digest = text.partition(":")
                if not sep:
                    self.problem(keyPath(path, "keys_file"), m.lines.get("keys_file"), f"line {n}: expected name:sha256:<hex>")
                    continue
                keys[kname.strip()] = digest.strip()
        parsed = []
        for kname, spec in keys.items():
            algo, sep, digest = str(spec).partition(":")
            if not sep or algo != "sha256" or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                self.problem(keyPath(keyPath(path, "keys"), kname), getattr(km, "lines", {}).get(kname), "must be sha256:<64 hex digits> (the key is stored hashed)")
                continue
            parsed.append((kname, algo, digest.lower()))
        if not parsed:
            self.problem(keyPath(path, "keys"), m.line, "no keys configured")
        return ApiKeyAuth(
            header=self.get(m, "header", path, headerName, "X-API-Key"),
            query_param=self.get(m, "query_param", path, headerName, None),
            keys=tuple(parsed),
        )

    def jwt(self, value: Any, line: int | None, path: str) -> JwtAuth | None:
        m = self.mapping(value, path, line, ["algorithms", "secret", "secret_file", "public_key_file", "jwks_url",
                                             "jwks_refresh", "jwks_timeout", "jwks_min_refresh", "issuer",
                                             "audience", "identity_claim",
                                             "required_claims", "leeway", "header"])
        if m is None:
            return None
        algorithms = self.seq(m, "algorithms", path, oneOf("HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
                                                          "ES256", "ES384", "ES512", "PS256", "EdDSA"))
        secret = None
        if m.get("secret") is not None:
            secret = str(m["secret"]).encode()
        fileSecret = self.readFile(m, "secret_file", path)
        if fileSecret is not None:
            secret = fileSecret.rstrip(b"\r\n")
        publicKey = self.readFile(m, "public_key_file", path)
        if publicKey is not None and not isPublicKeyPEM(publicKey):
            self.problem(keyPath(path, "public_key_file"), m.lines.get("public_key_file"),
                         "is not a PEM public key (-----BEGIN PUBLIC KEY-----)")
            publicKey = None
        jwksURL = self.get(m, "jwks_url", path, httpURL, None)
        symmetric = [a for a in algorithms if a.startswith("HS")]
        asymmetric = [a for a in algorithms if not a.startswith("HS")]
        if symmetric and asymmetric:
            self.problem(keyPath(path, "algorithms"), m.lines.get("algorithms"),
                         "mixes HMAC and public-key algorithms (that invites algorithm confusion); use two policies")
        if symmetric and secret is None:
            self.problem(path, line, "HS* algorithms need secret or secret_file")
        if asymmetric and publicKey is None and jwksURL is None:
            self.problem(path, line, "public-key algorithms need public_key_file or jwks_url")
        return JwtAuth(
            algorithms=algorithms or ("RS256",),
            secret=secret,
            public_key=publicKey,
            jwks_url=jwksURL,
            jwks_refresh=self.get(m, "jwks_refresh", path, positive(duration), 300.0),
            jwks_timeout=self.get(m, "jwks_timeout", path, positive(duration), 5.0),
            jwks_min_refresh=self.get(m, "jwks_min_refresh", path, duration, 30.0),
            issuer=self.get(m, "issuer", path, string, None),
            audience=self.get(m, "audience", path, string, None),
            identity_claim=self.get(m, "identity_claim", path, string, "sub"),
            required_claims=self.seq(m, "required_claims", path, string),
            leeway=self.get(m, "leeway", path, duration, 30.0),
            header=self.get(m, "header", path, headerName, "Authorization"),
        )

    def basic(self, value: Any, line: int | None, path: str) -> BasicAuth | None:
        m = self.mapping(value, path, line, ["htpasswd", "users", "realm", "cache_ttl"])
        if m is None:
            return None
        users: dict[str, str] = {}
        um = m.get("users")
        if um is not None:
            if not isinstance(um, dict):
                self.problem(keyPath(path, "users"), m.lines.get("users"), "must map a user name to a password hash")
            else:
                users.update({str(k): str(v) for k, v in um.items()})
        raw = self.readFile(m, "htpasswd", path)
        if raw is not None:
            for n, text in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
                text = text.strip()
                if not text or text.startswith("#"):
                    continue
                user, sep, hashed = text.partition(":")
                if not sep:
                    self.problem(keyPath(path, "htpasswd"), m.lines.get("htpasswd"), f"line {n}: expected user:hash")
                    continue
                users[user] = hashed
        for user, hashed in users.items():
            if not (hashed.startswith(("$2a$", "$2b$", "$2y$", "$argon2"))):
                self.problem(keyPath(keyPath(path, "users"), user), m.lines.get("users", m.lines.get("htpasswd")),
                             "only bcrypt ($2b$...) or argon2 ($argon2id$...) hashes are accepted")
        if any(h.startswith("$argon2") for h in users.values()) and not haveArgon2():
            self.problem(path, line, "argon2 hashes need the argon2-cffi package (pip install argon2-cffi)")
        if not users:
            self.problem(path, line, "no users configured (give htpasswd or users)")
        realm = self.get(m, "realm", path, headerValue, "txgateway")
        if '"' in realm or "\\" in realm:
            self.problem(keyPath(path, "realm"), m.lines.get("realm"), "must not contain quotes or backslashes")
            realm = "txgateway"
        return BasicAuth(users=tuple(users.items()), realm=realm,
                         cache_ttl=self.get(m, "cache_ttl", path, duration, 60.0))
