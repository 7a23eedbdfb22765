# -*- test-case-name: tests.test_auth -*-
"""
Access control at the edge: API keys, JWT and basic auth, per route.

A route's C{auth:} policy lists one or more methods; a request passes when
any one of them admits it.  Each method is an L{IAuthenticator} that looks
only at its own kind of credential and says "absent" when there is none, so
a policy can mix them (a Bearer token or an API key) without them
stepping on each other:

  - L{txgateway.auth.apikey}: API keys in a header or the query string;
  - L{txgateway.auth.jwt} and L{txgateway.auth.jwks}: bearer JWTs and the keys they are checked against;
  - L{txgateway.auth.basic}: basic auth against bcrypt or argon2 hashes, off the reactor thread;
  - L{txgateway.auth.filter}: the route's filter (401 / 403 / 503, identity forwarding);
  - L{txgateway.auth.result}: what an authenticator concludes, shared by all of them.

Credentials are never logged: log lines here name the route, the method and
a reason, never a header value, and the access log has no query string.
"""

from __future__ import annotations

from txgateway.auth.apikey import ApiKeyAuthenticator
from txgateway.auth.basic import BasicAuthenticator, PasswordChecks, checkPassword
from txgateway.auth.filter import AuthFilter, AuthResources, authenticatorsFor, authFilter, resourcesFor
from txgateway.auth.jwks import JwksKeys, parseJWKS
from txgateway.auth.jwt import JwtAuthenticator
from txgateway.auth.result import SHARED_KEY, AuthResult, KeysUnavailable

__all__ = ["SHARED_KEY", "ApiKeyAuthenticator", "AuthFilter", "AuthResources", "AuthResult", "BasicAuthenticator",
           "JwksKeys", "JwtAuthenticator", "KeysUnavailable", "PasswordChecks", "authFilter", "authenticatorsFor",
           "checkPassword", "parseJWKS", "resourcesFor"]
