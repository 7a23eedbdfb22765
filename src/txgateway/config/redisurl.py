# -*- test-case-name: tests.test_redis_client -*-
"""
What C{stores.redis} names: one Redis (C{redis://}, C{rediss://}, C{unix://})
or a primary found through Redis Sentinel (C{redis+sentinel://}).

Parsed once into a frozen L{RedisAddress}; the config parser calls
L{parseRedisURL} to validate the key, the client reads the result.  Imports
nothing above the standard library, so the config layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["RedisAddress", "parseRedisURL"]


DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class RedisAddress:
    """
    Where Redis is and how to log in.

    For Sentinel, C{sentinels} lists the sentinels to ask (in order) and
    C{primaryName} the monitored primary's name; C{host}/C{port} are then
    unused.  C{username}/C{password} are the primary's (as with redis-py,
    sentinels are asked without credentials).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    unixPath: str | None = None
    tls: bool = False
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    primaryName: str | None = None

    @property
    def display(self) -> str:
        """The address as logs and /health show it: no credentials."""
        if self.unixPath is not None:
            return f"unix:{self.unixPath}"
        if self.sentinels:
            return "sentinel:" + ",".join(_hostPort(h, p) for h, p in self.sentinels) + f"/{self.primaryName}"
        return _hostPort(self.host, self.port)


def _hostPort(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parseRedisURL(text: str) -> RedisAddress:
    """
    Parse C{stores.redis}; raise L{ValueError} saying what is wrong.

    Forms: C{redis://[user:password@]host[:port][/db]}, C{rediss://...}
    (TLS), C{unix:///path/to/socket[?db=N]} and
    C{redis+sentinel://[user:password@]host[:port][,host2[:port]...]/primary-name[/db]}.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError("no scheme")
    scheme = scheme.lower()
    if scheme == "unix":
        parts = urlsplit(text)
        if not parts.path:
            raise ValueError("unix:// needs a socket path")
        query = parse_qs(parts.query)
        db = _db(query.get("db", ["0"])[0])
        return RedisAddress(unixPath=parts.path, db=db, password=_unquoted(parts.password),
                            username=_unquoted(parts.username))
    if scheme in ("redis", "rediss"):
        parts = urlsplit(text)
        if not parts.hostname:
            raise ValueError("no host")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError("bad port") from None
        return RedisAddress(host=parts.hostname, port=port, tls=scheme == "rediss", db=_db(parts.path.strip("/")),
                            username=_unquoted(parts.username), password=_unquoted(parts.password))
    if scheme == "redis+sentinel":
        netloc, _, path = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        username = password = None
        if at:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels = tuple(_sentinelHost(h) for h in hosts.split(","))
        segments = [s for s in path.split("?")[0].split("/") if s]
        if not segments:
            raise ValueError("redis+sentinel:// needs the primary's name: redis+sentinel://host:26379/mymaster/0")
        if len(segments) > 2:
            raise ValueError("expected /primary-name[/db] after the sentinels")
        db = _db(segments[1]) if len(segments) == 2 else 0
        return RedisAddress(sentinels=sentinels, primaryName=unquote(segments[0]), db=db,
                            username=username, password=password)
    raise ValueError(f"unknown scheme {scheme!r}")


def _sentinelHost(text: str) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise ValueError("empty sentinel address")
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        portText = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, portText = text.partition(":")
    if not host:
        raise ValueError(f"no host in sentinel address {text!r}")
    if not portText:
        return host, DEFAULT_SENTINEL_PORT
    if not portText.isdigit() or not 0 < int(portText) < 65536:
        raise ValueError(f"bad port in sentinel address {text!r}")
    return host, int(portText)


def _db(text: str) -> int:
    if text.startswith("db="):
        text = text[3:]
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"database must be a number, not {text!r}")
    return int(text)


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value else None
