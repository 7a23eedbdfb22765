# -*- test-case-name: tests.test_auth -*-
"""
Client addresses: CIDR sets and the one X-Forwarded-For (or Forwarded) walk.

Every place that asks "who is the client?" or "is this address allowed?"
(the real client IP of a request, the hops forwarded upstream, ip_allow /
ip_deny, per-address connection caps) uses L{AddressSet} and
L{ForwardedFor}, so the gateway has one set of IP rules and one reading of
X-Forwarded-For.  A primitive module: it imports nothing from txgateway.

RFC 7239's C{Forwarded} is read by the same walk when
C{server.forwarded_header} says so: its C{for=} nodes are the hops (IPv6 in
brackets and quotes, ports after a colon, C{unknown} and obfuscated names
never trusted).  X-Forwarded-For hops written C{ip:port} or C{[v6]:port}
(some proxies do) are read as the bare address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["AddressSet", "peerIP", "ForwardedFor", "bareIP", "forwardedElement", "forwardedNode", "forwardedNodes", "forwardedValue",
           "splitForwarded"]

_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def bareIP(hop: bytes | str) -> str:
    """The address of one hop: C{"[2001:db8::1]:4711"}, C{[::1]}, C{1.2.3.4:80} and C{1.2.3.4} give the address alone."""
    h = (hop.decode("latin-1") if isinstance(hop, bytes) else hop).strip().strip('"')
    if h.startswith("["):
        end = h.find("]")
        return h[1:end] if end != -1 else h
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


def forwardedValue(value: str) -> str:
    """A Forwarded parameter value: a token as is, anything else a quoted-string (RFC 7239 4)."""
    if value and all(ord(c) < 128 and ord(c) in _TCHAR for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def forwardedNode(ip: str) -> str:
    """C{for=}'s node for an address: IPv6 bracketed (and so quoted), RFC 7239 6."""
    return forwardedValue(f"[{ip}]" if ":" in ip else ip)


def forwardedElement(forIP: str, host: str | None, proto: str) -> bytes:
    """This hop's element: C{for=...;host=...;proto=...}."""
    parts = [f"for={forwardedNode(forIP)}"]
    if host:
        parts.append(f"host={forwardedValue(host)}")
    parts.append(f"proto={proto}")
    return ";".join(parts).encode("latin-1")


def splitForwarded(values: Sequence[bytes] | None) -> list[tuple[bytes, dict[str, str]]]:
    """
    C{Forwarded} field values as (raw element, parameters): commas and
    semicolons inside quoted-strings do not split, names are lower-cased.
    """
    out: list[tuple[bytes, dict[str, str]]] = []
    for value in values or ():
        text = value.decode("latin-1")
        i, n = 0, len(text)
        start = 0
        params: dict[str, str] = {}
        name, buf, inName, quoted = "", [], True, False
        while i <= n:
            c = text[i] if i < n else ","
            if quoted:
                if c == "\\" and i + 1 < n:
                    buf.append(text[i + 1])
                    i += 2
                    continue
                if c == '"':
                    quoted = False
                else:
                    buf.append(c)
            elif c == '"':
                quoted = True
            elif c == "=" and inName:
                name, buf, inName = "".join(buf).strip().lower(), [], False
            elif c in ";,":
                if not inName and name:
                    params.setdefault(name, "".join(buf).strip())
                name, buf, inName = "", [], True
                if c == ",":
                    raw = text[start:i].strip()
                    if raw:
                        out.append((raw.encode("latin-1"), params))
                    params, start = {}, i + 1
            else:
                buf.append(c)
            i += 1
    return out


def forwardedNodes(values: Sequence[bytes] | None) -> list[bytes]:
    """The C{for=} nodes of C{Forwarded} values, in order (an element without one counts as C{unknown})."""
    return [p.get("for", "unknown").encode("latin-1") for _, p in splitForwarded(values)]


class AddressSet:
    """CIDR membership with a per-address cache (client addresses repeat)."""

    def __init__(self, networks: Iterable[Any]) -> None:
        self.networks = tuple(networks)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: object) -> bool:
        assert isinstance(ip, str)
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip)
                if addr.version == 6 and addr.ipv4_mapped is not None:  # type: ignore[union-attr]
                    addr = addr.ipv4_mapped  # type: ignore[union-attr]
                hit = any(addr in n for n in self.networks)
            except ValueError:
                hit = False
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


class ForwardedFor:
    """
    C{server.trusted_proxies} and the X-Forwarded-For walk that follows from it.

    The walk goes right to left while the hop is a trusted proxy; the first
    untrusted address is the client.  The leftmost value is never believed
    just because it is there.  L{clientIP} and L{hops} are two readings of
    the same walk.
    """

    __slots__ = ("trusted",)

    def __init__(self, trusted: AddressSet) -> None:
        self.trusted = trusted

    def hops(self, values: Sequence[bytes] | None) -> list[bytes] | None:
        """
        The X-Forwarded-For hops worth passing on: from the client (the
        first untrusted hop, walking right to left) to the nearest proxy.
        Whatever the client claimed left of that is dropped, so a backend
        reading the leftmost value reads the client, not a forgery.
        """
        if not values:
            return None
        hops = [h.strip() for v in values for h in v.split(b",") if h.strip()]
        return self.walk(hops) or None

    def walk(self, hops: list[bytes]) -> list[bytes]:
        """C{hops} from the first untrusted one (right to left) on."""
        trusted = self.trusted
        i = len(hops) - 1
        while i > 0 and bareIP(hops[i]) in trusted:
            i -= 1
        return hops[i:]

    def clientIP(self, peer: str, values: Sequence[bytes] | None) -> str:
        """The real client of a request from C{peer} carrying these X-Forwarded-For C{values}."""
        trusted = self.trusted
        if not trusted or not values or peer not in trusted:
            return peer
        hops = self.hops(values)
        return bareIP(hops[0]) if hops else peer

    def clientIPOf(self, peer: str, headers: Any, mode: str = "x-forwarded") -> str:
        """
        The real client of a request from C{peer} with these C{headers}: read
        from C{Forwarded} (C{mode} C{forwarded}, or C{both} when it is there)
        or from X-Forwarded-For.
        """
        trusted = self.trusted
        if not trusted or peer not in trusted:
            return peer
        if mode != "x-forwarded":
            fwd = headers.getRawHeaders(b"forwarded")
            if fwd or mode == "forwarded":
                hops = self.walk(forwardedNodes(fwd)) if fwd else []
                if not hops:
                    return peer
                ip = bareIP(hops[0])
                return ip if ip in _Parseable else peer
        return self.clientIP(peer, headers.getRawHeaders(b"x-forwarded-for"))


class _ParseableAddresses:
    """C{ip in _Parseable}: whether C{ip} is an address (C{unknown} and C{_hidden} nodes are not)."""

    def __contains__(self, ip: object) -> bool:
        try:
            ipaddress.ip_address(str(ip))
        except ValueError:
            return False
        return True


_Parseable = _ParseableAddresses()


def peerIP(request: Any) -> str:
    """The client's IP address as the connection gives it (\"0.0.0.0\" for a non-IP transport)."""
    addr = request.getClientAddress()
    host = getattr(addr, "host", None)
    return host if isinstance(host, str) else "0.0.0.0"
