# -*- test-case-name: tests.test_config -*-
"""
Converters for the gateway's own kinds of value: target URLs, balancer
names, request-key words, host patterns, origins, endpoint strings.

Like L{txgateway.config.values}, each raises L{Invalid} with a message a
user can act on; these differ in knowing the gateway's vocabulary.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from txgateway.config.errors import Invalid
from txgateway.config.redisurl import parseRedisURL
from txgateway.config.schema import Target
from txgateway.config.values import TOKEN, duration, integer, oneOf, string, urlPath

__all__ = [
    "BALANCERS", "ENDPOINT_KINDS", "balancerName", "endpointBuildProblem", "endpointProblem", "hashOn", "haveArgon2", "hostPattern",
    "httpURL", "isIP", "isPublicKeyPEM", "level", "limitKey", "loopbackOnly", "origin", "port", "redisURL",
    "retryCondition", "routePath", "targetURL", "viaPseudonym", "watchInterval", "workers", "yamlText",
]

def workers(value: Any) -> int:
    if value == "auto":
        return 0  # resolved to the core count when the service starts
    return integer(1)(value)


def viaPseudonym(value: Any) -> str:
    text = string(value)
    if not TOKEN.match(text):
        raise Invalid("must be a single token")
    return text


def level(value: Any) -> str:
    text = string(value).lower()
    if text == "warning":
        text = "warn"
    return oneOf("debug", "info", "warn", "error")(text)


def redisURL(value: Any) -> str:
    text = string(value)
    try:
        parseRedisURL(text)
    except ValueError as e:
        raise Invalid(f"not a Redis URL: {text!r}: {e} (write e.g. redis://127.0.0.1:6379/0 or "
                      "redis+sentinel://127.0.0.1:26379/mymaster/0)") from None
    return text


def httpURL(value: Any) -> str:
    text = string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"not an http(s) URL: {text!r}")
    return text


def targetURL(value: Any) -> Target:
    text = string(value).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise Invalid(f"not a URL: {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"not a URL: {text!r} (write e.g. http://10.0.0.5:8000)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise Invalid(f"a target is scheme://host:port only, without path, query or credentials: {text!r}")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    host = parts.hostname.lower()
    hostInURL = f"[{host}]" if ":" in host else host
    return Target(url=f"{parts.scheme}://{hostInURL}:{port}", scheme=parts.scheme, host=host, port=port)


BALANCERS = ("round_robin", "weighted_round_robin", "least_connections", "consistent_hash", "p2c")


def balancerName(value: Any) -> str:
    text = string(value)
    if text in BALANCERS or re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", text):
        return text
    raise Invalid(f"{text!r} is not one of: {', '.join(BALANCERS)} (or a dotted name of an IBalancer class)")


def hashOn(value: Any) -> str:
    text = string(value)
    if text in ("client_ip", "path") or re.fullmatch(r"(header|cookie):[!#$%&'*+\-.^_`|~0-9A-Za-z]+", text):
        return text
    raise Invalid(f"{text!r} is not one of: client_ip, path, header:NAME, cookie:NAME")


def retryCondition(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 500 <= value <= 599 or value == 429:
            return value
        raise Invalid(f"status {value} is not retryable (use 429 or a 5xx)")
    if isinstance(value, str) and value.startswith("grpc:"):
        from txgateway.http.grpcstatus import NAMES

        if value[5:] not in NAMES[1:]:
            raise Invalid(f"{value!r}: after grpc: name a gRPC status code ({', '.join(NAMES[1:])})")
        return value
    return oneOf("connect_failure", "timeout", "reset", "5xx")(value)


def limitKey(value: Any) -> str:
    text = string(value).strip()
    if text in ("client_ip", "route", "consumer") or re.fullmatch(r"header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+", text):
        return text
    raise Invalid(f"{text!r} is not one of: client_ip, route, consumer, header:NAME (or several joined with +)")


def watchInterval(value: Any) -> float:
    """C{2s}; C{false} or C{0} turns the config file watcher off."""
    if value is False:
        return 0.0
    seconds = duration(value)
    if 0 < seconds < 0.1:
        raise Invalid("check the file at most every 100ms (or write false to turn the watcher off)")
    return seconds


def routePath(value: Any) -> str:
    """A route's path, normalised as request paths are, so that it can match at all."""
    from txgateway.http.paths import PathError, normalizeConfigPath

    text = urlPath(value)
    try:
        return normalizeConfigPath(text)
    except PathError as e:
        raise Invalid(f"{e}: {text!r}") from None


def yamlText(value: Any) -> Any:
    """YAML reads C{true} as a boolean; a header value means the text C{true}, not C{True}."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def hostPattern(value: Any) -> str:
    text = string(value).strip().lower().rstrip(".")
    if text.startswith("*."):
        rest = text[2:]
    else:
        rest = text
    hostname = re.fullmatch(r"[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*", rest)
    if not rest or (not hostname and not isIP(rest)):
        raise Invalid(f"not a host name or *.wildcard: {value!r}")
    return text


def isIP(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False


def origin(value: Any) -> str:
    text = string(value).strip()
    if text == "*":
        return text
    parts = urlsplit(text.replace("*.", "wildcard-placeholder.", 1))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("",):
        raise Invalid(f"not an origin: {text!r} (write e.g. https://app.example.com or https://*.example.com)")
    return text.lower()


def isPublicKeyPEM(data: bytes) -> bool:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        load_pem_public_key(data)
    except (ValueError, TypeError):
        return False
    return True


def haveArgon2() -> bool:
    try:
        import argon2  # noqa: F401
    except ImportError:
        return False
    return True


def loopbackOnly(description: str) -> bool:
    if description.startswith("unix:"):
        return True
    m = re.search(r"interface=([^:]+)", description)
    if not m:
        return False
    iface = m.group(1).replace("\\", "").strip("[]")
    try:
        return ipaddress.ip_address(iface).is_loopback
    except ValueError:
        return iface == "localhost"



ENDPOINT_KINDS = ("tcp", "ssl", "tcp6", "unix", "systemd")


def port(text: str) -> int:
    """A TCP port: a whole number from 0 (the system picks one) to 65535."""
    text = text.strip()
    if not text.isdigit() or int(text) > 65535:
        raise Invalid(f"not a port number: {text!r} (write a number from 0 to 65535)")
    return int(text)


def endpointProblem(description: str) -> str | None:
    """
    Why C{description} is not a server endpoint string the gateway can listen
    on, or C{None}.

    The port of a C{tcp}, C{tcp6} or C{ssl} endpoint is checked here, so that
    C{txgateway check} refuses what Twisted would refuse only when the
    listener starts (C{tcp:abc}, C{tcp:80000}).
    """
    kind, _, rest = description.partition(":")
    if kind not in ENDPOINT_KINDS:
        return f"not a Twisted server endpoint string: {description!r} (write e.g. tcp:8080)"
    if kind not in ("tcp", "ssl", "tcp6"):
        return None
    fields = re.split(r"(?<!\\):", rest) if rest else []
    given = [f for f in fields if "=" not in f][:1] + [f.split("=", 1)[1] for f in fields if f.startswith("port=")]
    if not given:
        return f"names no port: {description!r} (write e.g. {kind}:8080)"
    try:
        port(given[0])
    except Invalid as e:
        return f"{e} in {description!r}"
    return None


def endpointBuildProblem(description: str) -> str | None:
    """
    Why Twisted cannot build a listener from C{description}, or C{None}.

    Building the endpoint does not listen; it parses every option
    (C{backlog=x}, C{mode=}) and, for C{ssl}, reads the key and certificate
    (relative to the working directory, as twistd does), which is what
    start-up would otherwise fail on with a traceback.  C{systemd} endpoints
    are left alone: they can only be built under systemd.
    """
    if description.partition(":")[0] == "systemd":
        return None
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(None, description)
    except Exception as e:  # Twisted raises ValueError, OSError, IndexError or OpenSSL's errors here
        reason = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.strerror else str(e)
        return f"cannot listen on {description!r}: {reason}"
    return None
